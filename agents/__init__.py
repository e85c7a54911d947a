"""Tuners: the PPO agent and the baselines (installed as rlhpo.agents)."""
