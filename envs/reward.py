"""The reward of one HPOEnv step, and every weight in it.

A trial's **score** is its normalised validation accuracy, ``(acc − 1/k) / (1 − 1/k)`` for ``k``
classes, at its last completed epoch: 0 at chance, 1 when perfect, the same scale on every task
(slightly negative is possible; a trial with no completed epoch scores 0). The **incumbent** is
the best trial score of the episode so far; it starts at 0 (chance: what no tuning gives).

The reward of a step that paid ``epochs`` of the budget with a model of relative compute
``compute`` (:func:`relative_compute`: its per-epoch compute over the default config's)::

    r = (incumbent_after − incumbent_before)
        − cost_per_fte × epochs / max_epochs
        − compute_cost × compute × epochs / max_epochs
        − distance_penalty × distance
        − divergence_penalty × diverged

``distance`` is how far the config that answered lies from the config asked (the recorded
backend answers with the nearest recorded config; a trained trial is exact, distance 0).

The first term is dense and telescopes: the undiscounted return is the final incumbent less the
costs, so the agent is paid for the score the user ends with, not for any single lucky trial.

Why these defaults:

- ``cost_per_fte = 0.01``: one full training (the largest epochs choice) must buy at least one
  point of normalised accuracy to pay for itself. Small against typical improvements (0.05–0.5),
  so the budget, not the cost, limits search; large enough to break ties toward cheap trials.
  The budget itself is already a hard limit, so a larger cost would only double-count it.
- ``compute_cost = 0.002``: the budget counts epochs, but an epoch of a 4-layer, 256-unit model
  costs about 20 times one of the default config (3 × 64), so a policy charged for epochs only
  learns to pick the biggest models: on cifar10 at full size its first trial ran for over 16
  minutes where the default config trains in 2. This term charges compute, in full trainings of
  the default config. At 0.002 a 3-FTE episode of the largest models costs about 0.13, of 1 × 128
  models 0.008: the largest models must win about 0.1 of normalised accuracy to be chosen.
- ``distance_penalty = 0.05``: meta-training answers a config with its nearest recorded neighbour,
  often 0.5–0.8 away in the normalised encoding (32–64 recorded configs per task in 7
  dimensions). Uncharged, a policy learns to ask for configs whose nearest recorded neighbour
  happens to be good rather than configs that are good: one asked a learning rate of 0.1 for
  GRUs, answered by a 0.01 run 0.8 away, and at full size that 0.1 trained to 12% normalised
  accuracy where the default config reaches 77%. At 0.05 an answer 0.8 away costs 0.04, about
  what a typical trial gains, so the policy keeps to configs the meta-dataset can vouch for.
- ``divergence_penalty = 0.1``: a diverged run wastes its epochs and says little; 0.1 is about
  what a typical good trial gains, so proposing unstable learning rates is clearly worse than a
  mediocre trial, yet one divergence does not swamp an episode's return (1 at most).

Bounds: ``r`` lies in ``[−cost_per_fte − compute_cost × largest compute − distance_penalty ×
largest distance − divergence_penalty, 1]``: the incumbent lies in ``[0, 1]`` and never falls
(with HPOEnv's default incumbent rule; with ``top_rung`` it can, and the first term can reach -1),
and a step pays at most one full-training equivalent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlhpo.errors import RlhpoError
from rlhpo.space import Config


@dataclass(frozen=True)
class RewardSettings:
    """Weights of the reward; see the module docstring for why these defaults."""

    cost_per_fte: float = 0.01  # subtracted per full-training equivalent of epochs spent
    compute_cost: float = 0.002  # subtracted per full training's compute of the default config
    distance_penalty: float = 0.05  # subtracted per unit of distance from the asked config to the answering one
    divergence_penalty: float = 0.1  # subtracted when the trial diverged

    def __post_init__(self) -> None:
        for name in ("cost_per_fte", "compute_cost", "distance_penalty", "divergence_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise RlhpoError(f"Reward weight {name} must be finite and >= 0, but got {name}={value!r}.")


def relative_compute(config: Config, reference: Config) -> float:
    """Per-epoch training compute of ``config``'s model relative to ``reference``'s.

    A proxy that holds across families: ``num_layers × units²``, the multiply-adds of the hidden
    layers (conv, recurrent or attention blocks all grow with depth and width squared). It
    leaves out input and output layers and the batch size, so it is a ratio, not a FLOP count.
    """
    return (config.num_layers * config.units**2) / (reference.num_layers * reference.units**2)


def step_reward(
    settings: RewardSettings,
    *,
    incumbent_before: float,
    incumbent_after: float,
    epochs: int,
    max_epochs: int,
    compute: float,
    distance: float,
    diverged: bool,
) -> float:
    """The reward of one step (see the module docstring)."""
    fte = epochs / max_epochs
    return (
        (incumbent_after - incumbent_before)
        - settings.cost_per_fte * fte
        - settings.compute_cost * compute * fte
        - settings.distance_penalty * distance
        - settings.divergence_penalty * float(diverged)
    )
