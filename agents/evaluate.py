"""How an episode is judged: the full-fidelity score of its incumbent config, and its regret.

The score a user gets from a tuner is its incumbent config trained at full fidelity (the largest
epochs choice), not the low-fidelity score that made it the incumbent. A judge gives that score
and the regret against the best full-fidelity score known for the task; there is one judge per
backend, with one interface (:class:`Judge`):

- :class:`RecordedJudge`: from the store, where every recorded run reaches full fidelity.
- :class:`LiveJudge`: each incumbent is trained again at full fidelity (with test metrics);
  the best known is the best full-fidelity validation score of any config so trained or
  recorded in the bench's store.

Scores are normalised validation accuracy (0 at chance, 1 perfect; :mod:`rlhpo.metrics`).
Also here: mean ± standard error, and the per-method summary of bench rows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from rlhpo.agents.base import TuneResult
from rlhpo.envs.backends import LiveBackend, runs_in_space, trial_from_curve
from rlhpo.envs.hpo_env import trial_score
from rlhpo.metrics import normalised_score
from rlhpo.space import Config, SearchSpace
from rlhpo.store import CurveStore
from rlhpo.tasks.task import Task
from rlhpo.training import train_final


class FullFidelity:
    """What a store knows of each task at full fidelity: each recorded config's score, and the best.

    A run answers full fidelity when it was recorded at the largest epochs choice (or diverged
    before it). Its score is the one HPOEnv would give a trial of that config at that fidelity.
    """

    def __init__(self, store: CurveStore, space: SearchSpace, train_seed: int) -> None:
        self.store = store
        self.space = space
        self.train_seed = train_seed
        self._scores: dict[str, dict[str, float]] = {}
        self.configs: dict[str, Config] = {}  # config key -> a recorded config (at full fidelity)

    def scores(self, task_key: str) -> dict[str, float]:
        """Full-fidelity score of each config recorded on the task, by config key."""
        if task_key not in self._scores:
            record = self.store.task(task_key)
            out: dict[str, float] = {}
            if record is not None:
                epochs = self.space.max_epochs
                for run in runs_in_space(self.store.runs(task_key, self.train_seed), self.space, record):
                    if run.horizon >= epochs:
                        trial = trial_from_curve(
                            run.at(epochs), run.config, epochs, record.n_classes, exact=True, distance=0.0
                        )
                        out[run.config.key()] = trial_score(trial)
                        self.configs.setdefault(run.config.key(), run.config.with_epochs(epochs))
            self._scores[task_key] = out
        return self._scores[task_key]

    def score(self, task_key: str, config: Config | None) -> float | None:
        """The full-fidelity score of ``config`` on the task, or ``None`` if the store lacks it."""
        return None if config is None else self.scores(task_key).get(config.key())

    def best(self, task_key: str) -> float | None:
        """The best full-fidelity score recorded on the task, or ``None`` if none is."""
        scores = self.scores(task_key)
        return max(scores.values()) if scores else None

    def regret(self, task_key: str, config: Config | None) -> float | None:
        """Best recorded full-fidelity score less that of ``config``; ``None`` when either is unknown."""
        score, best = self.score(task_key, config), self.best(task_key)
        return None if score is None or best is None else best - score


class Judge(Protocol):
    """Scores an episode's incumbent at full fidelity; one implementation per backend."""

    def judge(self, task: Task, config: Config) -> dict[str, Any]:
        """The incumbent's ``full_fidelity_score`` and ``regret`` (``None`` where unknown yet), and
        whatever else the judge measured (a live judge: test metrics)."""
        ...

    def anytime(self, task: Task, result: TuneResult) -> list[dict[str, Any]]:
        """The episode's regret after each trial, as points ``{"epochs", "regret"}``; none where unknown."""
        ...

    def finish(self, rows: list[dict[str, Any]]) -> None:
        """Complete the rows once every episode has run (a live judge knows the best only then)."""
        ...


class RecordedJudge:
    """Judges by the store's recorded full-fidelity scores (see :class:`FullFidelity`)."""

    def __init__(self, oracle: FullFidelity) -> None:
        self.oracle = oracle

    def judge(self, task: Task, config: Config) -> dict[str, Any]:
        return {
            "full_fidelity_score": self.oracle.score(task.key(), config),
            "regret": self.oracle.regret(task.key(), config),
        }

    def anytime(self, task: Task, result: TuneResult) -> list[dict[str, Any]]:
        points = [{"epochs": 0, "regret": self.oracle.best(task.key())}]  # no incumbent: the score of chance, 0
        for t in result.trials:
            points.append({"epochs": t.budget_used, "regret": self.oracle.regret(task.key(), t.incumbent_config)})
        return points

    def finish(self, rows: list[dict[str, Any]]) -> None:
        """Nothing: every row was complete when it was judged."""


class LiveJudge:
    """Trains each incumbent again at full fidelity, with test metrics, on the live backend's data.

    Regret is known only at :meth:`finish`: against the best full-fidelity score of any config
    trained again here or recorded at full fidelity in the backend's store.
    """

    def __init__(self, backend: LiveBackend, space: SearchSpace, train_seed: int, device: str) -> None:
        self.backend = backend
        self.space = space
        self.train_seed = train_seed
        self.device = device
        self._done: dict[tuple[str, str], dict[str, Any]] = {}

    def judge(self, task: Task, config: Config) -> dict[str, Any]:
        config = config.with_epochs(self.space.max_epochs)
        slot = (task.key(), config.key())
        if slot not in self._done:
            data = self.backend.data(task)
            curve = train_final(data, config, seed=self.train_seed, device=self.device)
            val = curve.epochs[-1].val_accuracy if curve.epochs else 1.0 / data.n_classes
            assert curve.test is not None
            self._done[slot] = {
                "full_fidelity_score": normalised_score(val, data.n_classes),
                "regret": None,
                "test_accuracy": curve.test.accuracy,
                "test_macro_f1": curve.test.macro_f1,
                "test_loss": curve.test.loss,
            }
        return dict(self._done[slot])

    def anytime(self, task: Task, result: TuneResult) -> list[dict[str, Any]]:
        return []  # the full-fidelity scores of the incumbents along the way are not trained

    def finish(self, rows: list[dict[str, Any]]) -> None:
        oracle = FullFidelity(self.backend.store, self.space, self.train_seed)
        for task_key in {r["task"] for r in rows}:
            mine = [r for r in rows if r["task"] == task_key and r.get("full_fidelity_score") is not None]
            known = [r["full_fidelity_score"] for r in mine]
            recorded = oracle.best(task_key)
            best = max(known + ([recorded] if recorded is not None else []), default=None)
            for r in mine:
                r["regret"] = best - float(r["full_fidelity_score"])


# ------------------------------------------------------------------ statistics


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error; the error is ``None`` for one value (unknown), both are for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return mean, se


def pm(ms: Any, digits: int = 3) -> str:
    """``mean ± se`` of a :func:`mean_se` pair; ``± n/a`` when the error is unknown, ``-`` for no mean."""
    if ms is None or ms[0] is None:
        return "-"
    se = "n/a" if ms[1] is None else f"{ms[1]:.{digits}f}"
    return f"{ms[0]:.{digits}f} ± {se}"


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method (in order of first appearance): episodes, mean ± standard error of the incumbent
    score, the full-fidelity score and the regret.

    A mean over episodes whose full-fidelity figure is unknown leaves them out (``known`` counts
    the rest); it is ``None`` when none is known.
    """
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        row: dict[str, Any] = {"episodes": len(mine)}
        for name in ("incumbent_score", "full_fidelity_score", "regret"):
            values = [r[name] for r in mine if r.get(name) is not None]
            row[name], row[f"{name}_se"] = mean_se(values)
        row["known"] = sum(r.get("regret") is not None for r in mine)
        row["epochs_used"] = mean_se([r["epochs_used"] for r in mine])[0]
        out[method] = row
    return out
