"""Gymnasium environments over the rlhpo core (installed as rlhpo.envs).

Importing this package registers ``rlhpo/HPO-v0`` (a string entry point: nothing heavy is
imported until an environment is made), so ``gymnasium.make("rlhpo/HPO-v0", ...)`` works after
``import rlhpo.envs``; without that import, ``gymnasium.make("rlhpo.envs:rlhpo/HPO-v0", ...)``
imports it first.
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "rlhpo/HPO-v0"
BACKENDS = ("live", "recorded", "surrogate")  # where HPOEnv's trials come from (rlhpo.envs.backends, .surrogate)
REAL_BACKENDS = ("live", "recorded")  # those whose curves are real trainings: what evaluations are judged on
INCUMBENT_RULES = ("best", "top_rung")  # which trial is HPOEnv's incumbent (its docstring, Rewards)

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="rlhpo.envs.hpo_env:HPOEnv")

__all__ = ["BACKENDS", "ENV_ID", "INCUMBENT_RULES", "REAL_BACKENDS"]
