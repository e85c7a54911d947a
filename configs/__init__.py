"""Shipped YAML configs (installed as rlhpo.configs)."""
