"""The reward of one HPOEnv step, and every weight in it.

A trial's **score** is its normalised validation accuracy, ``(acc − 1/k) / (1 − 1/k)`` for ``k``
classes, at its last completed epoch: 0 at chance, 1 when perfect, the same scale on every task
(slightly negative is possible; a trial with no completed epoch scores 0). The **incumbent** is
the best trial score of the episode so far; it starts at 0 (chance: what no tuning gives).

The reward of a step that paid ``epochs`` of the budget::

    r = (incumbent_after − incumbent_before)
        − cost_per_fte × epochs / max_epochs
        − divergence_penalty × diverged

The first term is dense and telescopes: the undiscounted return is the final incumbent less the
costs, so the agent is paid for the score the user ends with, not for any single lucky trial.

Why these defaults:

- ``cost_per_fte = 0.01``: one full training (the largest epochs choice) must buy at least one
  point of normalised accuracy to pay for itself. Small against typical improvements (0.05–0.5),
  so the budget, not the cost, limits search; large enough to break ties toward cheap trials.
  The budget itself is already a hard limit, so a larger cost would only double-count it.
- ``divergence_penalty = 0.1``: a diverged run wastes its epochs and says little; 0.1 is about
  what a typical good trial gains, so proposing unstable learning rates is clearly worse than a
  mediocre trial, yet one divergence does not swamp an episode's return (1 at most).

Bounds: ``r`` lies in ``[−cost_per_fte − divergence_penalty, 1]``: the incumbent lies in
``[0, 1]`` and never falls, and a step pays at most one full-training equivalent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlhpo.errors import RlhpoError


@dataclass(frozen=True)
class RewardSettings:
    """Weights of the reward; see the module docstring for why these defaults."""

    cost_per_fte: float = 0.01  # subtracted per full-training equivalent of epochs spent
    divergence_penalty: float = 0.1  # subtracted when the trial diverged

    def __post_init__(self) -> None:
        for name in ("cost_per_fte", "divergence_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise RlhpoError(f"Reward weight {name} must be finite and >= 0, but got {name}={value!r}.")

    @property
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest reward a step can give."""
        return (-self.cost_per_fte - self.divergence_penalty, 1.0)


def step_reward(
    settings: RewardSettings,
    *,
    incumbent_before: float,
    incumbent_after: float,
    epochs: int,
    max_epochs: int,
    diverged: bool,
) -> float:
    """The reward of one step (see the module docstring)."""
    return (
        (incumbent_after - incumbent_before)
        - settings.cost_per_fte * epochs / max_epochs
        - settings.divergence_penalty * float(diverged)
    )
