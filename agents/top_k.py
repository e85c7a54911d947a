"""Top-k after one epoch: screen many configs at the smallest fidelity, continue the best k to full.

The budget ``B`` (epochs) is split by a fixed rule: one full training per 3 full-training
equivalents, ``k = max(1, B // (3 × max_epochs))`` (0 when a full training does not fit), and
the rest screens distinct random configs at the smallest epochs choice. The k best screened
configs are then continued to the largest epochs choice; the env charges only the new epochs.
"""

from __future__ import annotations

import numpy as np

from rlhpo.agents.base import Tuner
from rlhpo.envs.hpo_env import HPOEnv, StepResult
from rlhpo.space import HYPERPARAMETERS

SCREENING_DRAWS = 100  # draws per screened config to find one not screened yet


class TopKTuner(Tuner):
    """Uniform random configs at the smallest fidelity, then the best k continued to the largest."""

    name = "top_k"

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        budget = env.budget_epochs
        low, high = min(self.space.choices["epochs"]), self.space.max_epochs
        self.k = max(1, budget // (3 * high)) if budget >= high else 0
        n_screen = max(1, (budget - self.k * (high - low)) // low)
        self.queue = [self._with_epochs(a, low) for a in self._distinct_actions(n_screen)]
        self.screened: list[tuple[float, int, np.ndarray]] = []  # (score, order, action)
        self._phase = "screen"

    def propose(self, obs: np.ndarray) -> np.ndarray | None:
        if not self.queue and self._phase == "screen":
            self._phase = "continue"
            best = sorted(self.screened, key=lambda s: (-s[0], s[1]))[: self.k]
            self.queue = [self._with_epochs(a, self.space.max_epochs) for _, _, a in best]
        return self.queue.pop(0) if self.queue else None

    def observe(self, action: np.ndarray, result: StepResult) -> None:
        if self._phase == "screen":
            self.screened.append((result.score, len(self.screened), np.asarray(action)))

    def _distinct_actions(self, n: int) -> list[np.ndarray]:
        seen: set[tuple[int, ...]] = set()
        out = []
        for _ in range(n * SCREENING_DRAWS):
            if len(out) == n:
                break
            a = self.env.sample_action(self.rng)
            key = tuple(np.delete(a, HYPERPARAMETERS.index("epochs")))
            if key not in seen:
                seen.add(key)
                out.append(a)
        return out

    def _with_epochs(self, action: np.ndarray, epochs: int) -> np.ndarray:
        a = np.asarray(action, dtype=np.int64).copy()
        a[HYPERPARAMETERS.index("epochs")] = self.space.choices["epochs"].index(epochs)
        return a
