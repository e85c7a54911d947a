"""``rlhpo tune --workers N``: the policy's N most likely new configs at each step, trained at once.

A round looks at one observation and plans up to N trials: the policy's actions most likely
first (:meth:`PPOTuner.ranked`), each kept if the env would learn something new from it, its
config is not already in the round, and the budget left after the round's earlier trials still
pays for it. The trials that the run folder's store cannot answer yet go to an executor
(collect's: local processes or Ray tasks), and each curve is written to that store as it comes
back (the driver is its only writer). Then the env steps through the round in the planned order:
every step is answered from the store, pays its epochs and moves the incumbent exactly as a
sequential step would, and is recorded and reported as one. The next round starts from the
observation after the last step.

Why this is exact and repeatable. Which trials a round plans depends only on the observation
and the episode so far; the env's answers depend only on the configs, the seed and the epochs
(a curve is the same whether trained in one go, continued, or cut from a longer run, on CPU).
So a tune with N workers ends the same every time, resumes like a sequential one (the finished
trials are in the store, the same rounds are planned again), and with N = 1 plays the very
trials of a sequential tune. The budget is never exceeded: the plan pays each trial what the env
will charge it, with the env's own fidelity rule (:func:`~rlhpo.envs.hpo_env.fidelity`), and a
step that did anything else is an error, not a silent difference.

A trial that continues one of the episode's earlier trials is trained from scratch in its
worker (the earlier model stayed in another process); the env charges only its new epochs, as
it would have. Workers train on CPU with one torch thread each. A trial at full fidelity sends
its model back with its curve, so that when tune keeps it the final training tests that
model instead of training the same config again, as the sequential tune does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlhpo.agents.base import TuneResult
from rlhpo.agents.policy import PPOTuner
from rlhpo.collect import Executor, WorkItem, load_in_worker
from rlhpo.envs.backends import RESUMABLE_RUNS, LiveBackend
from rlhpo.envs.hpo_env import HPOEnv, StepResult, fidelity
from rlhpo.errors import RlhpoError
from rlhpo.space import Config
from rlhpo.tasks.task import Task
from rlhpo.training import Curve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a round: the action, its config as asked, and what the env will train and charge."""

    action: np.ndarray
    config: Config
    epochs: int  # the env trains it to this many epochs
    resumed_from: int  # of which the episode trained these before (the step pays the rest)

    @property
    def paid_epochs(self) -> int:
        return self.epochs - self.resumed_from


def plan_round(
    tuner: PPOTuner, env: HPOEnv, obs: np.ndarray, n: int, steps: Sequence[StepResult]
) -> list[PlannedTrial]:
    """Up to ``n`` new trials in the policy's best-first order that the budget left pays for, in order.

    ``steps`` are the episode's steps so far: the epochs each config was trained to (the live
    backend answers a config with its own curve, so the config asked is the one known). The
    first trial is the one :meth:`PPOTuner.propose` picks; fewer than ``n`` come back when the
    budget runs out first, none when it is spent.
    """
    choices = sorted(env.space.choices["epochs"])
    done: dict[str, int] = {}
    for step in steps:
        done[step.config.key()] = max(step.epochs, done.get(step.config.key(), 0))
    remaining = env.budget_remaining
    planned: list[PlannedTrial] = []
    for action in tuner.ranked(obs):
        if len(planned) == n or remaining < choices[0]:
            break
        config = env.decode(action)
        if any(p.config.key() == config.key() for p in planned):
            continue  # one trial per config in a round: a second would only continue the first
        before = done.get(config.key(), 0)
        epochs, resumed_from = fidelity(choices, config.epochs, before, remaining)
        if epochs <= before:
            continue  # a repeat (HPOEnv.is_repeat, at the budget this trial would have left)
        planned.append(PlannedTrial(np.asarray(action, dtype=np.int64), config, epochs, resumed_from))
        remaining -= epochs - resumed_from
    return planned


@dataclass(frozen=True)
class TrainTrial:
    """Trains one trial in a worker (on CPU, with the worker's cache of loaded tasks); an exception reaches the driver.

    A trial of ``keep_epochs`` epochs (full fidelity) comes back with its model (``Curve.state``).
    """

    keep_epochs: int

    def __call__(self, item: WorkItem) -> tuple[WorkItem, Curve]:
        from rlhpo.training import train

        data = load_in_worker(item.task, item.data_dir)
        curve = train(data, item.config, seed=item.seed, keep_state=item.config.epochs == self.keep_epochs)
        return item, curve


def train_round(
    planned: Sequence[PlannedTrial],
    backend: LiveBackend,
    task: Task,
    executor: Executor,
    data_dir: str | None,
    held: dict[str, Curve],
) -> int:
    """Train the round's trials that the backend's store cannot answer yet; return how many were trained.

    Each curve is written to the store as it comes back, so a Ctrl-C keeps the finished ones; a
    full-fidelity curve with its model goes to ``held``, by config key.
    """
    record = backend.describe(task)
    seed = backend.train_seed
    todo = [
        WorkItem(task=record.task, config=p.config.with_epochs(p.epochs), seed=seed, data_dir=data_dir)
        for p in planned
        if not backend.store.has_run(record.key, p.config, seed, p.epochs)
    ]
    for item, curve in executor.map_unordered(TrainTrial(backend.space.max_epochs), todo):
        backend.store.put_run(record.key, item.config, seed, curve, max_epochs=item.config.epochs)
        if curve.state is not None:
            held[item.config.key()] = curve
    return len(todo)


def run_rounds(
    tuner: PPOTuner,
    env: gym.Env,
    seed: int,
    task: Task,
    executor: Executor,
    workers: int,
    data_dir: str | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    held: dict[str, Curve] | None = None,
) -> TuneResult:
    """Play one live episode in rounds of up to ``workers`` trials (as :func:`~rlhpo.agents.base.run_tuner` plays one).

    ``env`` is a live HPOEnv, possibly wrapped (a rollout recorder); ``on_step`` is called with
    each step's result in the planned order, as soon as the env has taken it. ``held`` gets the
    curves with their models, by config key, of the last trials workers trained at full fidelity (at
    most :data:`~rlhpo.envs.backends.RESUMABLE_RUNS`, the incumbent's always among them): what
    :meth:`LiveBackend.held_run` gives a sequential tune, so the final training can reuse the kept one.
    """
    held = {} if held is None else held
    hpo: HPOEnv = env.unwrapped
    if not isinstance(hpo.backend, LiveBackend):
        raise RlhpoError(f"Trials in rounds train on workers: they need the live backend, not {hpo.backend.name!r}.")
    started = time.perf_counter()
    obs, info = env.reset(seed=seed, options={"task": task})
    policy_seconds = 0.0
    t = time.perf_counter()
    tuner.start(hpo, seed)
    policy_seconds += time.perf_counter() - t
    result = TuneResult(method=tuner.name, task=info["task"], seed=seed, budget_epochs=hpo.budget_epochs)
    terminated = False
    while not terminated:
        t = time.perf_counter()
        planned = plan_round(tuner, hpo, obs, workers, result.trials)
        policy_seconds += time.perf_counter() - t
        if not planned:
            break  # every action the policy ranks is a repeat: as a sequential tune, stop
        trained = train_round(planned, hpo.backend, task, executor, data_dir, held)
        log.info("round of %d trials: %d trained on workers, %d found in the store", len(planned), trained,
                 len(planned) - trained)  # fmt: skip
        for p in planned:
            obs, _, terminated, truncated, info = env.step(p.action)
            step: StepResult = info["result"]
            if (step.epochs, step.resumed_from) != (p.epochs, p.resumed_from):
                raise RlhpoError(
                    f"Step {step.step} trained {step.config} to {step.epochs} epochs from {step.resumed_from}, but "
                    f"its round planned {p.epochs} from {p.resumed_from}; the plan no longer follows HPOEnv's rule."
                )
            t = time.perf_counter()
            tuner.observe(p.action, step)
            policy_seconds += time.perf_counter() - t
            result.add(step)
            if on_step is not None:
                on_step(step)
            terminated = terminated or truncated
        incumbent = result.incumbent_config.key() if result.incumbent_config is not None else None
        for key in [k for k in held if k != incumbent][: max(0, len(held) - RESUMABLE_RUNS)]:
            del held[key]  # the oldest first, as the live backend lets its runs go
    result.tuning_seconds = time.perf_counter() - started
    result.policy_seconds = policy_seconds
    return result
