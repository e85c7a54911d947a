"""The learned list: the configs that did best across the meta-training tasks, in greedy order.

No RL and no adaptation: a meta-learned portfolio ("learning multiple defaults"). From the
full-fidelity scores recorded on the meta-training tasks, the list starts with the config of
least mean regret over the tasks; each next config is the one that most lowers the mean over
tasks of the best regret in the list so far. Only configs recorded on every meta-training
task (of the modality) compete, so every candidate is judged on the same tasks. The tuner trains the list in
order, each at full fidelity; past its end it draws uniformly random configs.

One list is learned per modality (image, text, tabular), from the meta-training tasks of that
modality, and a task plays its modality's list. Families differ by modality, so in the matched
design (:func:`rlhpo.collect.design_configs`) no config is recorded on tasks of two modalities;
and what works on text need not work on images. A modality without meta-training tasks (digits,
when it is held out, is the only tabular dataset) plays the list of the family-less configs
recorded on every meta-training task (:data:`ANY_MODALITY`): on the shipped store an MLP config
that did well on images and text; where no config is on every task (the matched design), the
space's default config, then random configs. A list given as one sequence is played on every modality.

In a space that searches the model family, how configs are compared depends on the instances.
Where every instance of the modality leaves the family to the config (the matched design), a
config is compared with its family. Where some pin a family (``trec/gru``, ``trec/lstm``: older
stores), a config is compared without it, on each task's own family, so that tasks pinning
different families still share configs; such a config is played with the task's own family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rlhpo.agents.base import Tuner
from rlhpo.agents.evaluate import FullFidelity
from rlhpo.envs.backends import RecordedBackend
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import HYPERPARAMETERS, Config, SearchSpace
from rlhpo.store import CurveStore
from rlhpo.tasks.task import Task

ANY_MODALITY = "*"  # the key of a list learned from the tasks of every modality

ConfigLists = Mapping[str, Sequence[Config]]  # modality (or ANY_MODALITY) -> configs in order


def as_lists(configs: ConfigLists | Sequence[Config]) -> dict[str, list[Config]]:
    """Configs by modality as given, or one list (a plain sequence) for every modality."""
    if isinstance(configs, Mapping):
        return {modality: list(listed) for modality, listed in configs.items()}
    return {ANY_MODALITY: list(configs)} if configs else {}


def for_modality(lists: ConfigLists, modality: str) -> list[Config]:
    """The list a task of ``modality`` plays: its modality's, else the one of every modality, else none."""
    return list(lists.get(modality) or lists.get(ANY_MODALITY) or ())


def full_fidelity_action(env: HPOEnv, config: Config) -> np.ndarray:
    """The env's action for a listed ``config`` at full fidelity, as the task trains it (:meth:`HPOEnv.on_task`)."""
    return env.space.indices(env.on_task(config.with_epochs(env.space.max_epochs)), env.modality)


def learn_list(oracle: FullFidelity, task_keys: Sequence[str], weights: Sequence[float] | None = None) -> list[Config]:
    """Every config recorded at full fidelity on all of ``task_keys``, in greedy portfolio order.

    ``weights`` (one per task; default equal) weigh the tasks in the mean regret the greedy order lowers.
    """
    scores = {t: oracle.scores(t) for t in task_keys}
    if not scores or not all(scores.values()):
        raise RlhpoError(f"No full-fidelity runs on some of the tasks {list(task_keys)}: nothing to learn a list from.")
    common = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not common:
        raise RlhpoError("No config is recorded on every meta-training task: nothing to learn a list from.")
    regret = np.array([[max(s.values()) - s[c] for c in common] for s in scores.values()])  # tasks x configs
    held = np.array([max(s.values()) for s in scores.values()])  # regret with no config yet (incumbent 0)
    order = greedy_order(regret, held, np.ones(len(held)) if weights is None else weights)
    return [oracle.configs[common[i]] for i in order]  # ties: the first in key order


def greedy_order(regret: np.ndarray, held: np.ndarray, weights: Sequence[float] | np.ndarray) -> list[int]:
    """Config indices in greedy order: each next the one that most lowers the weighted mean best regret.

    ``regret``: tasks x configs; ``held``: each task's regret with no config yet; ``weights``: one per
    task (normalised here). Ties: the lower index.
    """
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    order: list[int] = []
    left = list(range(regret.shape[1]))
    while left:
        best = left.pop(int(np.argmin([(w * np.minimum(held, regret[:, c])).sum() for c in left])))
        order.append(best)
        held = np.minimum(held, regret[:, best])
    return order


class LearnedListTuner(Tuner):
    """Trains the learned list in order, at full fidelity; random configs once it runs out."""

    name = "learned_list"

    def __init__(self, lists: ConfigLists | Sequence[Config]) -> None:
        """``lists``: configs by modality (:data:`ConfigLists`), or one list for every modality."""
        self.lists = as_lists(lists)

    @classmethod
    def fit(
        cls,
        store: CurveStore | str | Path,
        space: SearchSpace,
        *,
        train_seed: int = 0,
        exclude_datasets: Sequence[str] = (),
    ) -> LearnedListTuner:
        """One list per modality, from the store's tasks less ``exclude_datasets`` (the meta-training tasks)."""
        flat = dataclasses.replace(space, families=None, default_families=None)  # see the module docstring
        backend = RecordedBackend(store, flat, train_seed=train_seed, exclude_datasets=exclude_datasets)
        by_modality: dict[str, list[Task]] = {}
        for task in backend.default_tasks():
            by_modality.setdefault(backend.describe(task).modality, []).append(task)
        lists = {}
        for modality, tasks in sorted(by_modality.items()):
            open_family = bool(space.families) and all(t.family is None for t in tasks)
            oracle = FullFidelity(backend.store, space if open_family else flat, train_seed)
            lists[modality] = learn_list(oracle, [t.key() for t in tasks])
        try:  # for a modality without meta-training tasks: the family-less configs every task shares
            every = [t.key() for tasks in by_modality.values() for t in tasks]
            lists[ANY_MODALITY] = learn_list(FullFidelity(backend.store, flat, train_seed), every)
        except RlhpoError:
            pass  # no config on every task (the matched design's families differ): random configs there
        return cls(lists)

    def configs_for(self, modality: str) -> list[Config]:
        """The configs a task of ``modality`` trains, in order (:func:`for_modality`)."""
        return for_modality(self.lists, modality)

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self._next = 0
        # A modality without a list (no meta-training task of it): the default config, as a user would.
        self._configs = self.configs_for(env.modality) or [self.space.default_config(env.modality)]

    def propose(self, obs: np.ndarray) -> np.ndarray:
        if self._next < len(self._configs):
            self._next += 1
            return full_fidelity_action(self.env, self._configs[self._next - 1])
        action = self.env.sample_action(self.rng)
        action[HYPERPARAMETERS.index("epochs")] = self.space.choices["epochs"].index(self.space.max_epochs)
        return action
