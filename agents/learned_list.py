"""The learned list: the configs that did best across the meta-training tasks, in greedy order.

No RL and no adaptation: a meta-learned portfolio ("learning multiple defaults"). From the
full-fidelity scores recorded on the meta-training tasks, the list starts with the config of
least mean regret over the tasks; each next config is the one that most lowers the mean over
tasks of the best regret in the list so far. Only configs recorded on every meta-training
task compete, so every candidate is judged on the same tasks. The tuner trains the list in
order, each at full fidelity; past its end it draws uniformly random configs.

In a space that searches the model family, the list is still learned from each task's own
family (the family-less space: a config is compared across tasks of different modalities), and
played with the task's own family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlhpo.agents.base import Tuner
from rlhpo.agents.evaluate import FullFidelity
from rlhpo.envs.backends import RecordedBackend
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import HYPERPARAMETERS, Config, SearchSpace
from rlhpo.store import CurveStore


def learn_list(oracle: FullFidelity, task_keys: Sequence[str]) -> list[Config]:
    """Every config recorded at full fidelity on all of ``task_keys``, in greedy portfolio order."""
    scores = {t: oracle.scores(t) for t in task_keys}
    if not scores or not all(scores.values()):
        raise RlhpoError(f"No full-fidelity runs on some of the tasks {list(task_keys)}: nothing to learn a list from.")
    common = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not common:
        raise RlhpoError("No config is recorded on every meta-training task: nothing to learn a list from.")
    regret = np.array([[max(s.values()) - s[c] for c in common] for s in scores.values()])  # tasks x configs
    held = np.array([max(s.values()) for s in scores.values()])  # regret with no config yet (incumbent 0)
    order: list[int] = []
    left = list(range(len(common)))
    while left:
        gains = [np.minimum(held, regret[:, c]).mean() for c in left]
        best = left.pop(int(np.argmin(gains)))  # ties: the first in key order
        order.append(best)
        held = np.minimum(held, regret[:, best])
    return [oracle.configs[common[i]] for i in order]


class LearnedListTuner(Tuner):
    """Trains the learned list in order, at full fidelity; random configs once it runs out."""

    name = "learned_list"

    def __init__(self, configs: Sequence[Config]) -> None:
        self.configs = list(configs)

    @classmethod
    def fit(
        cls,
        store: CurveStore | str | Path,
        space: SearchSpace,
        *,
        train_seed: int = 0,
        exclude_datasets: Sequence[str] = (),
    ) -> LearnedListTuner:
        """Learn the list on the store's tasks less ``exclude_datasets`` (the policy's meta-training tasks)."""
        space = dataclasses.replace(space, families=None, default_families=None)  # see the class docstring
        backend = RecordedBackend(store, space, train_seed=train_seed, exclude_datasets=exclude_datasets)
        tasks = [t.key() for t in backend.default_tasks()]
        return cls(learn_list(FullFidelity(backend.store, space, train_seed), tasks))

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self._next = 0

    def propose(self, obs: np.ndarray) -> np.ndarray:
        if self._next < len(self.configs):
            self._next += 1
            config = self.configs[self._next - 1].with_epochs(self.space.max_epochs)
            if self.space.families:
                config = config.with_family(self.env.task_family)
            return self.space.indices(config, self.env.modality)
        action = self.env.sample_action(self.rng)
        action[HYPERPARAMETERS.index("epochs")] = self.space.choices["epochs"].index(self.space.max_epochs)
        return action
