"""Gymnasium environments over the rlhpo core (installed as rlhpo.envs)."""
