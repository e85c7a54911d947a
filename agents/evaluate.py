"""Evaluate tuners on recorded tasks at one budget, over seeds: the honest comparison.

Every tuner plays the same episodes (the same tasks, seeds and budget) through :func:`run_tuner`.
An episode reports the tuner's incumbent score (the low-fidelity score that made the incumbent)
and, where the store knows it, the score the user would get: the incumbent config retrained at
full fidelity (the largest epochs choice), and its regret against the best full-fidelity score
recorded for the task. Scores are normalised validation accuracy (0 at chance, 1 perfect).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym

from rlhpo.agents.base import Tuner, run_tuner
from rlhpo.envs.backends import trial_from_curve
from rlhpo.envs.hpo_env import trial_score
from rlhpo.space import Config, SearchSpace
from rlhpo.store import CurveStore, TaskRecord

log = logging.getLogger(__name__)


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
                for run in self.store.runs(task_key, self.train_seed):
                    if run.horizon >= epochs:
                        trial = trial_from_curve(
                            run.at(epochs),
                            run.config,
                            epochs,
                            record.n_classes,
                            exact=True,
                            distance=0.0,
                            trained=False,
                        )
                        out[run.config.key()] = trial_score(trial)
                        self.configs.setdefault(run.config.key(), run.config.with_epochs(epochs))
            self._scores[task_key] = out
        return self._scores[task_key]

    def score(self, task_key: str, config: Config | Mapping[str, Any] | None) -> float | None:
        """The full-fidelity score of ``config`` on the task, or ``None`` if the store lacks it."""
        if config is None:
            return None
        config = config if isinstance(config, Config) else Config(**config)
        return self.scores(task_key).get(config.key())

    def best(self, task_key: str) -> float | None:
        """The best full-fidelity score recorded on the task, or ``None`` if none is."""
        scores = self.scores(task_key)
        return max(scores.values()) if scores else None

    def regret(self, task_key: str, config: Config | Mapping[str, Any] | None) -> float | None:
        """Best recorded full-fidelity score less that of ``config``; ``None`` when either is unknown."""
        score, best = self.score(task_key, config), self.best(task_key)
        return None if score is None or best is None else best - score


@dataclass(frozen=True)
class EpisodeScore:
    """One evaluation episode of one tuner."""

    method: str
    task: str
    dataset: str
    seed: int
    incumbent_score: float
    full_fidelity_score: float | None
    regret: float | None
    epochs_used: int
    policy_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    tuners: Sequence[Tuner],
    make_env: Callable[[str], gym.Env],
    tasks: Sequence[TaskRecord],
    seeds: Sequence[int],
    oracle: FullFidelity | None = None,
) -> list[EpisodeScore]:
    """Play every tuner on every task with every seed.

    Args:
        tuners: the tuners; each plays in its own env, ``make_env(tuner.name)`` (a recorded HPOEnv,
            possibly wrapped in a :class:`~rlhpo.envs.recorder.RolloutRecorder`), closed afterwards.
        tasks: the tasks (records of the env's store).
        seeds: the episode seeds.
        oracle: full-fidelity scores of the store; ``None`` leaves them unknown.
    """
    out = []
    for tuner in tuners:
        env = make_env(tuner.name)
        try:
            for record in tasks:
                for seed in seeds:
                    result = run_tuner(tuner, env, seed, task=record.key)
                    full = oracle.score(record.key, result.incumbent_config) if oracle else None
                    regret = oracle.regret(record.key, result.incumbent_config) if oracle else None
                    out.append(
                        EpisodeScore(
                            method=tuner.name,
                            task=record.key,
                            dataset=record.task.dataset,
                            seed=seed,
                            incumbent_score=result.incumbent_score,
                            full_fidelity_score=full,
                            regret=regret,
                            epochs_used=result.epochs_used,
                            policy_seconds=result.policy_seconds,
                        )
                    )
        finally:
            env.close()
        log.info("evaluated %s on %d tasks x %d seeds", tuner.name, len(tasks), len(seeds))
    return out


def summarise(scores: Sequence[EpisodeScore]) -> dict[str, dict[str, Any]]:
    """Per method: episodes, mean ± standard error of the incumbent score, full-fidelity score and regret.

    A mean over episodes whose full-fidelity figure is unknown leaves them out (``known`` counts
    the rest); it is ``None`` when none is known.
    """
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(s.method for s in scores):
        mine = [s for s in scores if s.method == method]
        row: dict[str, Any] = {"episodes": len(mine)}
        for name in ("incumbent_score", "full_fidelity_score", "regret"):
            values = [getattr(s, name) for s in mine if getattr(s, name) is not None]
            row[name], row[f"{name}_se"] = mean_se(values)
        row["known"] = sum(s.regret is not None for s in mine)
        row["epochs_used"] = mean_se([s.epochs_used for s in mine])[0]
        out[method] = row
    return out


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (0 for one value); ``(None, None)`` for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se


def pm(ms: Any, digits: int = 3) -> str:
    """``mean ± se`` of a :func:`mean_se` pair, ``-`` for none."""
    return "-" if ms is None or ms[0] is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"
