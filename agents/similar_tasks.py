"""The portfolio in the order that did best on the meta-training tasks most like the task at hand.

A portfolio policy (:mod:`rlhpo.agents.portfolio`) picks among its modality's portfolio by index,
and the learned list's order makes index 0 the config of least mean regret over *all* the
meta-training tasks of the modality. On text those are mostly small instances, and what wins
there is not what wins on a full-size dataset or on one with many classes (``docs/benchmarks/hpo.md``,
session 19). With ``portfolio_order: similar`` each task gets its own order of the same configs:
the greedy order of the learned list (:func:`~rlhpo.agents.learned_list.learn_list`), with each
meta-training task weighed by how like the task at hand it is, ``exp(-d^2 / 2w^2)``, ``d`` the
Euclidean distance between the two tasks' :data:`SIMILARITY_FEATURES` (the meta-features that
describe the data, each in [0, 1]). Index ``i`` then means "the ``i``-th best for tasks like this
one"; the policy's observation lists the configs in that order too. This is the warm start by
meta-feature similarity of Feurer, Springenberg and Hutter (AAAI 2015), on a learned portfolio.

The width ``w`` is chosen per modality when the policy is trained, from the meta-training tasks
alone: leave one of their datasets out at a time (with the datasets read from the same data),
order the portfolio for its tasks from the others' at each width of :data:`WIDTHS`, and keep the
width whose first config has the least mean regret (each dataset weighing the same; ties go to
the wider). An infinite width weighs every task the same: the learned list's order, the portfolio
as it is. A modality with tasks of one dataset only keeps it.

In meta-training each task's order is computed without the tasks of its own dataset (nor of any
read from the same data), so the policy learns the orders it will see on a dataset it never saw.
At tune time nothing is left out: a task of a meta-training dataset is ordered by its own
dataset's instances too. The table (each meta-training task's features and each portfolio
config's regret on it, a few kB) is saved in the policy file (:class:`~rlhpo.agents.policy.PolicyInfo`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhpo.agents.evaluate import FullFidelity
from rlhpo.agents.learned_list import ConfigLists, greedy_order
from rlhpo.envs.backends import RecordedBackend
from rlhpo.errors import RlhpoError
from rlhpo.space import Config
from rlhpo.store import TaskRecord
from rlhpo.tasks.registry import data_source

# The meta-features that describe the data (rlhpo.tasks.features); the modality and family one-hots are left out.
SIMILARITY_FEATURES = ("log_n_train", "log_n_classes", "class_entropy", "log_input_size", "log_vocab_size")
WIDTHS = (0.03, 0.05, 0.1, 0.2, 0.3, math.inf)  # kernel widths tried, in meta-feature units


@dataclass(frozen=True)
class TaskRow:
    """One meta-training task: where its data comes from, its features, and each portfolio config's regret on it."""

    source: str  # tasks of one source are left out together (rlhpo.tasks.registry.data_source)
    features: tuple[float, ...]  # SIMILARITY_FEATURES
    best: float  # the best full-fidelity score recorded on the task (any config): the regret of no config
    regret: tuple[float, ...]  # per portfolio config, in portfolio order: best less its score


@dataclass(frozen=True)
class SimilarTasks:
    """Per modality, the kernel width and the meta-training tasks the portfolio is ordered by."""

    widths: dict[str, float]
    tasks: dict[str, tuple[TaskRow, ...]]

    def order(self, modality: str, features: Mapping[str, float], leave_out: str | None = None) -> tuple[int, ...]:
        """Portfolio indices of ``modality`` in the order for a task of these meta-features.

        ``leave_out``: a data source whose tasks do not count (meta-training's own dataset). Empty
        where the modality has no table (a modality the policy never saw: no reordering).
        """
        rows = [r for r in self.tasks.get(modality, ()) if r.source != leave_out]
        if not rows:
            return ()
        x = np.array([features[name] for name in SIMILARITY_FEATURES])
        return order_by(rows, weights(rows, x, self.widths.get(modality, math.inf)))

    def reorder(
        self, portfolio: ConfigLists, modality: str, features: Mapping[str, float], leave_out: str | None = None
    ) -> dict[str, tuple[Config, ...]]:
        """``portfolio`` with ``modality``'s configs in this task's order (the others as they are)."""
        out = {m: tuple(configs) for m, configs in portfolio.items()}
        order = self.order(modality, features, leave_out)
        if order and modality in out:
            out[modality] = tuple(out[modality][i] for i in order)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": {m: (None if math.isinf(w) else w) for m, w in self.widths.items()},
            "tasks": {
                m: [{"source": r.source, "features": r.features, "best": r.best, "regret": r.regret} for r in rows]
                for m, rows in self.tasks.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimilarTasks:
        return cls(
            widths={m: (math.inf if w is None else float(w)) for m, w in data.get("widths", {}).items()},
            tasks={
                m: tuple(
                    TaskRow(r["source"], tuple(r["features"]), float(r["best"]), tuple(float(v) for v in r["regret"]))
                    for r in rows
                )
                for m, rows in data.get("tasks", {}).items()
            },
        )


def weights(rows: Sequence[TaskRow], x: Sequence[float] | np.ndarray, width: float) -> np.ndarray:
    """Each row's weight around features ``x``: ``exp(-d^2 / 2w^2)``, the nearest row weighing 1; all 1 at width inf."""
    if math.isinf(width):
        return np.ones(len(rows))
    d2 = ((np.array([r.features for r in rows]) - np.asarray(x)) ** 2).sum(axis=1)
    return np.exp(-(d2 - d2.min()) / (2 * width * width))


def order_by(rows: Sequence[TaskRow], w: Sequence[float] | np.ndarray) -> tuple[int, ...]:
    """Portfolio indices in the learned list's greedy order over ``rows`` weighed by ``w`` (ties: the lower index)."""
    regret = np.array([r.regret for r in rows])  # tasks x configs
    return tuple(greedy_order(regret, np.array([r.best for r in rows]), w))


def first_regret(rows: Sequence[TaskRow], width: float) -> float:
    """Mean over sources of the regret of the first config each source's tasks get with that source left out."""
    by_source: dict[str, list[float]] = {}
    for source in sorted({r.source for r in rows}):
        others = [r for r in rows if r.source != source]
        for r in (r for r in rows if r.source == source):
            first = order_by(others, weights(others, np.array(r.features), width))[0]
            by_source.setdefault(source, []).append(r.regret[first])
    return float(np.mean([np.mean(v) for v in by_source.values()]))


def choose_width(rows: Sequence[TaskRow]) -> float:
    """The width of :data:`WIDTHS` of least :func:`first_regret` (ties: the wider); inf with under two sources."""
    if len({r.source for r in rows}) < 2:
        return math.inf
    scores = {w: first_regret(rows, w) for w in WIDTHS}
    least = min(scores.values())
    return max(w for w, s in scores.items() if s <= least + 1e-12)


def task_row(record: TaskRecord, oracle: FullFidelity, configs: Sequence[Config]) -> TaskRow:
    """A meta-training task's row: its portfolio configs' regret from the store's full-fidelity scores."""
    scores = oracle.scores(record.key)
    keys = [c.with_epochs(oracle.space.max_epochs).key() for c in configs]
    missing = [c for c, key in zip(configs, keys) if key not in scores]
    if missing:
        raise RlhpoError(f"Portfolio config {missing[0]} is not recorded at full fidelity on {record.key}.")
    best = max(scores.values())
    return TaskRow(
        source=data_source(record.task.dataset),
        features=tuple(record.meta_features[name] for name in SIMILARITY_FEATURES),
        best=best,
        regret=tuple(best - scores[key] for key in keys),
    )


def fit_similar_tasks(backend: RecordedBackend, portfolio: ConfigLists) -> SimilarTasks:
    """The table of ``backend``'s meta-training tasks (its default tasks) and each modality's width."""
    oracle = FullFidelity(backend.store, backend.space, backend.train_seed)
    tasks: dict[str, list[TaskRow]] = {}
    for task in backend.default_tasks():
        record = backend.describe(task)
        if record.modality in portfolio:
            tasks.setdefault(record.modality, []).append(task_row(record, oracle, portfolio[record.modality]))
    return SimilarTasks(
        widths={m: choose_width(rows) for m, rows in tasks.items()},
        tasks={m: tuple(rows) for m, rows in tasks.items()},
    )
