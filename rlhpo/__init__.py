"""rlhpo: meta-learned hyperparameter tuning.

The core (this package: tasks, models, training, store, space, metrics) imports neither
gymnasium nor stable-baselines3; ``rlhpo.envs`` adapts it to Gymnasium, ``rlhpo.agents`` to SB3.
``rlhpo.suggest_to_study`` (from ``rlhpo.agents.optuna_interop``) is imported on first use, so
``import rlhpo`` stays free of them.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["suggest_to_study"]


def __getattr__(name: str) -> Any:
    if name == "suggest_to_study":
        from rlhpo.agents.optuna_interop import suggest_to_study

        return suggest_to_study
    raise AttributeError(f"module 'rlhpo' has no attribute {name!r}")
