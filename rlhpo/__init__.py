"""rlhpo: meta-learned hyperparameter tuning.

The core (this package: tasks, models, training, store, space, metrics) imports neither
gymnasium nor stable-baselines3; ``rlhpo.envs`` adapts it to Gymnasium, ``rlhpo.agents`` to SB3.
"""

__version__ = "0.1.0"
