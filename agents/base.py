"""One interface for every tuner: propose a config, observe its result, under one budget.

A tuner never trains anything itself: it proposes actions (one choice index per
hyperparameter) to an :class:`~rlhpo.envs.hpo_env.HPOEnv`, which trains or looks up the trial,
pays its epochs out of the budget and keeps the incumbent. So every tuner shares the trainer,
the store, the search space and the budget accounting. :func:`run_tuner` plays one episode.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import gymnasium as gym
import numpy as np

from rlhpo.envs.hpo_env import HPOEnv, StepResult
from rlhpo.space import Config, SearchSpace
from rlhpo.tasks.task import Task


@dataclass
class TuneResult:
    """One tuning episode: its trials (the env's step results) and the incumbent."""

    method: str
    task: str
    seed: int
    budget_epochs: int
    trials: list[StepResult] = field(default_factory=list)
    incumbent_config: Config | None = None
    incumbent_score: float = 0.0
    epochs_used: int = 0
    tuning_seconds: float = 0.0  # wall time of the episode, the tuner's own time included
    policy_seconds: float = 0.0  # time the tuner spent deciding

    def add(self, step: StepResult) -> None:
        """Take one step's result: its trial, and the incumbent and budget after it."""
        self.trials.append(step)
        self.incumbent_score = step.incumbent
        self.incumbent_config = step.incumbent_config
        self.epochs_used = step.budget_used


class Tuner(ABC):
    """Proposes configs for one episode at a time.

    Subclasses set ``name`` and implement :meth:`propose`; :meth:`start` is called after each
    ``reset`` and :meth:`observe` after each step. All randomness comes from ``seed``. What the
    episode knows (the budget left, whether a config would repeat a trial) is the env's: a tuner
    asks ``self.env`` rather than keeping a copy.
    """

    name: ClassVar[str]
    env: HPOEnv
    space: SearchSpace

    def start(self, env: HPOEnv, seed: int) -> None:
        """Begin an episode of ``env`` (just reset, unwrapped)."""
        self.env = env
        self.space = env.space
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def propose(self, obs: np.ndarray) -> np.ndarray | None:
        """The next action (choice indices), or ``None`` to stop before the budget is spent."""

    def observe(self, action: np.ndarray, result: StepResult) -> None:  # noqa: B027 (optional hook)
        """Learn from the step that ``action`` led to."""


def run_tuner(
    tuner: Tuner,
    env: gym.Env,
    seed: int,
    task: Task | str | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> TuneResult:
    """Play one episode of ``tuner`` on ``env`` (an HPOEnv, possibly wrapped) and return what it found.

    ``on_step`` is called with each step's result as soon as the trial is done (its time counts
    in ``tuning_seconds``, not in ``policy_seconds``).
    """
    started = time.perf_counter()
    obs, reset_info = env.reset(seed=seed, options={"task": task} if task is not None else None)
    policy_seconds = 0.0
    t = time.perf_counter()
    tuner.start(env.unwrapped, seed)
    policy_seconds += time.perf_counter() - t
    result = TuneResult(
        method=tuner.name, task=reset_info["task"], seed=seed, budget_epochs=env.unwrapped.budget_epochs
    )
    terminated = False
    while not terminated:
        t = time.perf_counter()
        action = tuner.propose(obs)
        policy_seconds += time.perf_counter() - t
        if action is None:
            break
        obs, _, terminated, truncated, info = env.step(action)
        step: StepResult = info["result"]
        t = time.perf_counter()
        tuner.observe(np.asarray(action), step)
        policy_seconds += time.perf_counter() - t
        result.add(step)
        if on_step is not None:
            on_step(step)
        terminated = terminated or truncated
    result.tuning_seconds = time.perf_counter() - started
    result.policy_seconds = policy_seconds
    return result


class DefaultTuner(Tuner):
    """The default config (``configs/search_space.yaml``), trained once at full fidelity."""

    name = "default"

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self._done = False

    def propose(self, obs: np.ndarray) -> np.ndarray | None:
        if self._done:
            return None
        self._done = True
        return self.env.default_action()


class RandomTuner(Tuner):
    """Uniform random search over the whole space, fidelity (epochs) included; the family among the task's."""

    name = "random"

    def propose(self, obs: np.ndarray) -> np.ndarray:
        return self.env.sample_action(self.rng)
