"""``rlhpo tune``: tune one task live with the PPO policy, then retrain the incumbent at full fidelity.

One live episode on a live :class:`~rlhpo.envs.hpo_env.HPOEnv` whose curve store sits in the
run folder (``store.sqlite``: every trial's curve), wrapped in a
:class:`~rlhpo.envs.recorder.RolloutRecorder` (``rollouts.jsonl``, with a header that lets
``rlhpo replay --verify`` rebuild the env). Each trial's curve goes to TensorBoard under
``trials/`` at steps counted in epochs spent, with ``hpo/`` scalars at the end of each trial;
the final full-fidelity training goes under ``final/``. The task seed, every trial's training
seed and the episode seed are all ``seed``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhpo.agents.base import TuneResult, run_tuner
from rlhpo.agents.ppo import ROLLOUTS_FILE, PPOTuner, write_rollouts_header
from rlhpo.agents.sb3_logging import tensorboard_logger
from rlhpo.agents.settings import budget_epochs, space_to_dict
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.envs.recorder import RolloutRecorder
from rlhpo.envs.reward import RewardSettings
from rlhpo.errors import RlhpoError
from rlhpo.runs import MetricLogger, log_curve, make_run_dir, result_summary, write_run_files, write_summary
from rlhpo.space import Config, SearchSpace, load_search_space
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
DEFAULT_BUDGET_FTE = 3.0


def tune(
    task: Task,
    *,
    budget_fte: float = DEFAULT_BUDGET_FTE,
    policy: str | Path | None = None,
    space: str | Path | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    runs_dir: str | Path | None = None,
    argv: list[str] | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Tune ``task`` with the policy within ``budget_fte`` full trainings, then retrain the incumbent.

    Args:
        task: the task (its seed also seeds the trials' training and the episode).
        budget_fte: the tuning budget in full-training equivalents (× the largest epochs choice).
        policy: a ``policy.zip`` (or a run folder holding one); default: the shipped policy.
        space: a search-space YAML, which must have the policy's numbers of choices; default: the
            space saved with the policy (else the shipped one).
        seed: task seed, training seed of every trial and of the final training, episode seed.
        on_trial: called with each trial's record (see ``trials`` in the summary) as it finishes.

    Returns:
        The summary (also in the run folder's ``summary.json``): the keys of ``rlhpo train
        --json`` for the final training of the chosen config, plus ``trials``, ``tuning_epochs``,
        ``tuning_seconds``, ``policy_seconds``, ``budget_epochs`` and ``retrain_seconds``.
    """
    started = time.perf_counter()
    tuner = PPOTuner.load(policy)
    search_space = _space(tuner, space)
    budget = budget_epochs(budget_fte, search_space)
    data = _load(task, data_dir)  # a bad task fails here, before a run folder exists
    run_dir = make_run_dir("tune", task.dataset, seed, runs_dir)
    settings = {
        "task": dataclasses.asdict(task),
        "budget_fte": budget_fte,
        "budget_epochs": budget,
        "policy": str(tuner.path),
        "space": str(space) if space else None,
        "seed": seed,
        "device": device,
        "data_dir": str(data_dir) if data_dir else None,
    }
    write_run_files(run_dir, settings, argv)
    reward = RewardSettings()
    env = HPOEnv(
        "live",
        run_dir / STORE_FILE,
        tasks=[task],
        space=search_space,
        budget_epochs=budget,
        train_seed=seed,
        reward=reward,
        data_dir=data_dir,
        device=device,
    )
    header = {
        **settings,
        "command": "tune",
        "method": tuner.name,
        "backend": "live",
        "store": str(run_dir / STORE_FILE),
        "space": space_to_dict(search_space),
        "train_seed": seed,
        "reward": dataclasses.asdict(reward),
    }
    logger = tensorboard_logger(run_dir)
    result, trials = _episode(tuner, env, task, seed, run_dir, header, logger, on_trial)

    config = Config(**result.incumbent_config).with_epochs(search_space.max_epochs)
    retrain_started = time.perf_counter()
    curve = _retrain(data, config, seed, device)
    retrain_seconds = time.perf_counter() - retrain_started
    log_curve(logger, curve, prefix="final/", step_offset=result.epochs_used)
    logger.close()
    summary = {
        **result_summary(task, data, config, curve, epochs=config.epochs, seed=seed, device=device),
        "seconds": time.perf_counter() - started,
        "run_dir": str(run_dir),
        "policy": str(tuner.path),
        "budget_fte": budget_fte,
        "budget_epochs": budget,
        "trials": trials,
        "incumbent_score": result.incumbent_score,
        "tuning_epochs": result.epochs_used,
        "tuning_seconds": result.tuning_seconds,
        "policy_seconds": result.policy_seconds,
        "retrain_seconds": retrain_seconds,
    }
    write_summary(run_dir, summary)
    return summary


def _episode(
    tuner: PPOTuner,
    env: HPOEnv,
    task: Task,
    seed: int,
    run_dir: Path,
    header: dict[str, Any],
    logger: MetricLogger,
    on_trial: Callable[[dict[str, Any]], None] | None,
) -> tuple[TuneResult, list[dict[str, Any]]]:
    """Play the live episode, recording it (rollouts.jsonl, TensorBoard) and reporting each trial."""
    trials: list[dict[str, Any]] = []

    def on_step(info: dict[str, Any]) -> None:
        record = trial_record(info)
        trials.append(record)
        _log_trial(logger, info)
        if on_trial is not None:
            on_trial(record)

    write_rollouts_header(run_dir / ROLLOUTS_FILE, header)
    recorder = RolloutRecorder(env, run_dir / ROLLOUTS_FILE)
    try:
        result = run_tuner(tuner, recorder, seed, task=task, on_step=on_step)
    finally:
        recorder.close()
    if result.incumbent_config is None:
        raise RlhpoError(f"The policy proposed no trial within {env.budget_epochs} epochs: nothing to retrain.")
    return result, trials


def trial_record(info: dict[str, Any]) -> dict[str, Any]:
    """One trial as ``tune`` reports it, from the env's step ``info``."""
    last = info["curve"][-1] if info["curve"] else None
    return {
        "step": info["step"],
        "config": info["answered_config"],  # as trained: its epochs are those trained to
        "epochs": info["epochs"],
        "paid_epochs": info["paid_epochs"],  # fewer when the trial continued an earlier one
        "score": info["score"],
        "val_accuracy": last["val_accuracy"] if last else None,
        "val_macro_f1": last["val_macro_f1"] if last else None,
        "val_loss": last["val_loss"] if last else None,
        "diverged": info["diverged"],
        "seconds": info["seconds"],
        "incumbent": info["incumbent"],
        "budget_used": info["budget_used"],
    }


def _space(tuner: PPOTuner, path: str | Path | None) -> SearchSpace:
    if path is None:
        return tuner.policy_space or load_search_space()
    space = load_search_space(path)
    if tuner.policy_space is not None and space.nvec != tuner.policy_space.nvec:
        raise RlhpoError(
            f"The space {str(path)!r} has {space.nvec} choices per hyperparameter, but the policy was trained "
            f"with {tuner.policy_space.nvec}; leave --space out to use the policy's own space."
        )
    return space


def _log_trial(logger: MetricLogger, info: dict[str, Any]) -> None:
    """The trial's curve at steps counted in epochs spent, then the hpo/ scalars after it."""
    new = info["curve"][info["resumed_from"] :]  # a continued trial logs only its new epochs
    start = info["budget_used"] - info["paid_epochs"] - info["resumed_from"]
    curve = Curve(epochs=[EpochRecord(**e) for e in new], diverged=info["diverged"])
    log_curve(logger, curve, prefix="trials/", step_offset=start)
    logger.record("hpo/score", info["score"])
    logger.record("hpo/incumbent_score", info["incumbent"])
    logger.record("hpo/epochs_spent", info["budget_used"])
    logger.record("hpo/diverged", int(info["diverged"]))
    logger.dump(step=info["budget_used"])


def _load(task: Task, data_dir: str | Path | None) -> Any:
    from rlhpo.tasks import load_task

    return load_task(task, data_dir=data_dir)


def _retrain(data: Any, config: Config, seed: int, device: str) -> Curve:
    from rlhpo.training import train

    log.info("retraining %s at %d epochs", config, config.epochs)
    return train(data, config, seed=seed, device=device, evaluate_test=True)
