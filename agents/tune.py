"""``rlhpo tune``: tune one task live with the PPO policy, then train the chosen config at full fidelity.

One live episode on a live :class:`~rlhpo.envs.hpo_env.HPOEnv` whose curve store sits in the
run folder (``store.sqlite``: every trial's curve), wrapped in a
:class:`~rlhpo.envs.recorder.RolloutRecorder` (``rollouts.jsonl``, with a header that lets
``rlhpo replay --verify`` rebuild the env). Each trial's curve goes to TensorBoard under
``trials/`` at steps counted in epochs spent, with ``hpo/`` scalars at the end of each trial;
the final full-fidelity training goes under ``final/``, and the settings with the final test
figures to the HParams tab. The task seed, every trial's training seed and the episode seed are
all ``seed``.

Scores are normalised validation accuracy: ``(acc − 1/k) / (1 − 1/k)`` for ``k`` classes, so 0
is chance and 1 is perfect on every task.

An interrupted tune (Ctrl-C) leaves a summary marked ``interrupted``; ``tune(resume=RUN_DIR)``
plays the same episode again in that folder. Every trial finished before the interruption is in
the folder's store, so it is answered from there at once, and the policy, which is deterministic,
proposes the same trials again: the tune ends as an uninterrupted one would.

With ``storage`` and ``study_name``, every trial also lands in that Optuna study
(:class:`~rlhpo.agents.optuna_interop.StudyWriter`; a study of that name is continued); a
resumed tune adds only the trials it had not added before the interruption.

With ``method="ppo_tpe"`` (``rlhpo tune --method ppo_tpe``), the policy plays its
meta-training budget (3 FTE), then the learned list's configs fill Optuna TPE's startup trials,
then TPE samples (:class:`~rlhpo.agents.optuna_interop.PPOTPETuner`): the same trials as the
policy alone up to 3 FTE, and the better tuner from about 10 full trainings on
(``docs/benchmarks/ppo_tpe_list.md``). Its list is learned from the policy's meta-training store
(the shipped meta-dataset for the shipped policy). TPE, seeded, asks for the same trials given
the same scores, so such a tune resumes as the policy's does; it plays one trial at a time.

With ``workers`` > 1 (``rlhpo tune --workers N``), the episode is played in rounds: the policy's
N most likely new configs at once, trained concurrently on local processes or Ray, fed to the
env in a fixed order (:mod:`rlhpo.agents.tune_batches`); the budget is accounted as above, and
the tune is as repeatable and resumable as a sequential one for the same N.

The config trained in full is the kept trial's (:func:`kept_trial`: the earliest of the
longest-trained trials within one standard error of the best of them). By default it is trained
again on the training and validation splits together (``refit``, as scikit-learn's
``GridSearchCV(refit=True)``): validation has chosen, and the final model learns from its examples
too (``docs/benchmarks/refit.md``). Its validation figures each epoch are then on examples it
trained on, so the summary's ``val_accuracy`` and ``val_loss`` are the kept trial's. With
``refit=False`` (``--no-refit``) the final model is trained on the training split only; when the
kept trial already ran at full fidelity (with the same seed, as every trial does) and the backend
still holds its model, that model is tested instead of training the same thing again
(``summary["reused_trial"]``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from stable_baselines3.common.logger import HParam

from rlhpo.agents.base import Tuner, TuneResult, run_tuner
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.sb3_logging import tensorboard_logger
from rlhpo.agents.settings import TUNE_METHODS
from rlhpo.collect import Executor, make_executor
from rlhpo.envs.backends import LiveBackend
from rlhpo.envs.hpo_env import HPOEnv, StepResult
from rlhpo.envs.recorder import ROLLOUTS_FILE, RolloutRecorder, write_rollouts_header
from rlhpo.envs.reward import RewardSettings
from rlhpo.errors import RlhpoError, unknown
from rlhpo.runs import (
    MetricLogger,
    config_text,
    interruptible,
    log_curve,
    make_run_dir,
    result_summary,
    test_metrics_line,
    write_run_files,
    write_summary,
)
from rlhpo.settings import SHIPPED_STORE, read_yaml, shipped_file
from rlhpo.space import DEFAULT_BUDGET_FTE, Config, SearchSpace, load_search_space
from rlhpo.tasks import Task, load_task
from rlhpo.training import Curve, resolve_device, reusable, train_final

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
SCORE_NOTE = "score: validation accuracy rescaled so that chance is 0 and perfect is 1"


def tune(
    task: Task | None = None,
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
    resume: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    method: str = "ppo",
    refit: bool = True,
) -> dict[str, Any]:
    """Tune ``task`` with the policy within ``budget_fte`` full trainings, then train the chosen config.

    Args:
        task: the task (its seed also seeds the trials' training and the episode).
        budget_fte: the tuning budget in full-training equivalents (× the largest epochs choice).
        policy: a ``policy.zip`` (or a run folder holding one); default: the shipped policy.
        space: a search-space YAML, which must have the policy's numbers of choices; default: the
            space saved with the policy (else the shipped one).
        seed: task seed, training seed of every trial and of the final training, episode seed.
        on_trial: called with each trial's record (see ``trials`` in the summary) as it finishes.
        resume: the run folder of an interrupted tune: it is continued with its own settings
            (``task`` and the options above are then left out).
        storage: an Optuna storage (a database URL, or a journal file's path) to add every trial to,
            in the study ``study_name`` (created if missing, else continued).
        workers: trials per round: the policy's ``workers`` most likely new configs, trained at
            once (:mod:`rlhpo.agents.tune_batches`); 1 with the local executor is the sequential tune.
        executor: where a round's trials train, ``local`` processes or ``ray`` tasks (on the
            cluster at ``address``, else on a local Ray instance with ``workers`` CPUs).
        method: ``ppo``, the policy; or ``ppo_tpe``, the policy for its meta-training budget, then
            the learned list and TPE (one trial at a time).
        refit: train the chosen config on the training and validation splits together (the default),
            not on the training split alone.

    Returns:
        The summary (also in the run folder's ``summary.json``): the keys of ``rlhpo train
        --json`` for the final training of the chosen config, plus ``trials``, the kept trial
        (``kept_trial``, its step; ``kept_score``, ``kept_epochs``; see :func:`kept_trial`),
        ``incumbent_score``, ``tuning_epochs``, ``tuning_seconds``, ``policy_seconds``,
        ``budget_epochs``, ``retrain_seconds``, ``refit`` and ``reused_trial``.
    """
    started = time.perf_counter()
    if resume is not None:
        if task is not None:
            raise RlhpoError("--resume continues a tune with its own settings; leave the task out.")
        run_dir, settings = _resume_settings(Path(resume), argv)
        task = Task(**settings["task"])
        budget_fte, policy, space = settings["budget_fte"], settings["policy"], settings["space"]
        seed, device, data_dir = settings["seed"], settings["device"], settings["data_dir"]
        storage, study_name = settings.get("storage"), settings.get("study_name")  # absent before Optuna storage
        workers = settings.get("workers", 1)  # absent before --workers; the rounds depend on it, so it is kept
        executor, address = settings.get("executor", "local"), settings.get("address")
        method = settings.get("method", "ppo")  # absent before --method
        refit = settings.get("refit", False)  # absent before refit: those tunes trained on the training split
    elif task is None:
        raise RlhpoError("tune needs a task, or resume=RUN_DIR.")
    if (storage is None) != (study_name is None):
        raise RlhpoError(
            f"An Optuna study needs both a storage and a study name, but got {storage=} and {study_name=}."
        )
    if workers < 1:
        raise RlhpoError(f"workers must be at least 1, but got {workers=}.")
    if method not in TUNE_METHODS:
        raise unknown("method", method, TUNE_METHODS)
    rounds = workers > 1 or executor != "local"
    if rounds and method != "ppo":
        raise RlhpoError(
            f"--method {method} plays one trial at a time (TPE asks for the next trial once it has the last "
            "one's score); leave out --workers and --executor, or use --method ppo."
        )
    if rounds and device != "cpu":
        raise RlhpoError(f"Trials on workers train on CPU, but got --device {device!r} with --workers {workers}.")
    # A missing Ray fails here. The workers last from round to round (keep), with the tasks they loaded.
    runner = make_executor(executor, workers, address, keep=True) if rounds else None
    ppo = PPOTuner.load(policy)
    search_space = _space(ppo, space)
    tuner = _tuner(method, ppo, search_space)
    budget = search_space.budget_epochs(budget_fte)
    resolve_device(device)
    data = load_task(task, data_dir=data_dir)  # a bad task fails here, before a run folder exists
    task = data.task
    if resume is None:
        run_dir = make_run_dir("tune", task.dataset, seed, runs_dir)
        settings = {
            "task": dataclasses.asdict(task),
            "budget_fte": budget_fte,
            "budget_epochs": budget,
            "policy": str(ppo.path),
            "method": method,
            "space": str(space) if space else None,
            "seed": seed,
            "device": device,
            "data_dir": str(data_dir) if data_dir else None,
            "storage": storage,
            "study_name": study_name,
            "workers": workers,
            "executor": executor,
            "address": address,
            "refit": refit,
        }
        write_run_files(run_dir, settings, argv)
    reward = RewardSettings()
    backend = LiveBackend(
        run_dir / STORE_FILE, search_space, train_seed=seed, data_dir=data_dir, device=device, loaded=[data]
    )
    env = HPOEnv(backend, space=search_space, budget_epochs=budget, train_seed=seed, reward=reward)
    header = {
        **settings,
        "command": "tune",
        "method": tuner.name,
        "backend": "live",
        "store": str(run_dir / STORE_FILE),
        "space": search_space.to_dict(),
        "train_seed": seed,
        "reward": dataclasses.asdict(reward),
    }
    logger = tensorboard_logger(run_dir)
    resume_hint = f"rlhpo tune --resume {run_dir}"
    logged = _steps_recorded(run_dir / ROLLOUTS_FILE) if resume is not None else 0
    to_study = None
    if storage is not None and study_name is not None:
        from rlhpo.agents.optuna_interop import StudyWriter, open_study

        to_study = StudyWriter(open_study(storage, study_name), search_space, data.modality)
    with interruptible(run_dir, "tune", resume_hint):
        held: dict[str, Curve] = {}  # rounds: the models of the last trials workers trained at full fidelity
        play = _player(runner, workers, data_dir, held)
        result, trials = _episode(tuner, env, task, seed, run_dir, header, logger, on_trial, logged, to_study, play)
        kept = kept_trial(trials, len(data.y_val))
        chosen = Config(**kept["config"])
        config = chosen.with_epochs(search_space.max_epochs)
        held_run = None if refit else backend.held_run(task, config) or held.get(config.key())
        reused = chosen.epochs == config.epochs and held_run is not None and reusable(held_run, config)
        retrain_started = time.perf_counter()
        final_data = data.with_validation_trained() if refit else data
        curve = train_final(final_data, config, seed=seed, device=device, reuse=held_run if reused else None)
        retrain_seconds = time.perf_counter() - retrain_started
    log_curve(logger, curve, prefix="final/", step_offset=result.epochs_used)
    _log_hparams(logger, settings, curve, result.epochs_used)
    logger.close()
    env.close()
    summary = {
        **result_summary(task, data, config, curve, seed=seed, device=device),
        "seconds": time.perf_counter() - started,
        "run_dir": str(run_dir),
        "policy": str(ppo.path),
        "method": method,
        "budget_fte": budget_fte,
        "budget_epochs": budget,
        "trials": trials,
        "incumbent_score": result.incumbent_score,
        "kept_trial": kept["step"],
        "kept_score": kept["score"],
        "kept_epochs": kept["epochs"],
        "tuning_epochs": result.epochs_used,
        "tuning_seconds": result.tuning_seconds,
        "policy_seconds": result.policy_seconds,
        "retrain_seconds": retrain_seconds,
        "reused_trial": reused,
        "refit": refit,
        "train_examples": len(final_data.y_train),
        "workers": workers,
        "study": {"storage": storage, "study_name": study_name} if storage else None,
        "next": [f"rlhpo replay {run_dir} --verify", f"tensorboard --logdir {run_dir}"],
    }
    if refit:  # the final curve's validation examples were trained on: the kept trial's are the held-out figures
        summary["val_accuracy"], summary["val_loss"] = kept["val_accuracy"], kept["val_loss"]
    write_summary(run_dir, summary)
    return summary


def kept_trial(trials: list[dict[str, Any]], n_val: int) -> dict[str, Any]:
    """The trial whose config ``tune`` trains in full: the earliest good one among the longest trained.

    Two rules, each about what validation can tell:

    - **The longest-trained trials compete** (Hyperband's rule: the best of the top rung). A config's
      one-epoch score can beat the nine-epoch scores of better configs; on the shipped store, kept from
      the top rung, successive halving's regret at 3 FTE is 0.026 against 0.029 kept at any fidelity
      (imdb 0.029 against 0.043; ``docs/benchmarks/plans_offline.md``).
    - **Among them, the earliest within one standard error** of the best one's validation accuracy,
      ``sqrt(acc * (1 - acc) / n_val)`` (Breiman's one-standard-error rule). The policy plays its configs
      in the order it trusts them, so an earlier trial is its prior's favourite; with 500-1,000
      validation examples, a later trial that beats it by less than that (0.01 of accuracy at 0.89 and
      1,000 examples) is as likely a lucky one (``docs/benchmarks/tune_text.md``, session 22).

    The episode's incumbent (HPOEnv's, what the recorded benchmarks judge) is the best trial at any
    fidelity; on recorded curves it is judged by the same validation split, where the best trial is
    right by definition. Diverged trials never compete; if every trial diverged, the incumbent is kept.
    """
    finished = [t for t in trials if not t["diverged"] and t["val_accuracy"] is not None]
    if not finished:
        return max(trials, key=lambda t: t["score"])
    longest = max(t["epochs"] for t in finished)
    top = [t for t in finished if t["epochs"] == longest]
    best = max(top, key=lambda t: t["score"])  # the first of equal scores, as HPOEnv keeps its incumbent
    margin = math.sqrt(best["val_accuracy"] * (1 - best["val_accuracy"]) / max(n_val, 1))
    return next(t for t in top if t["val_accuracy"] >= best["val_accuracy"] - margin)


def _tuner(method: str, ppo: PPOTuner, space: SearchSpace) -> Tuner:
    """What plays the episode: the policy, or ``ppo_tpe`` on it with the list of its meta-training store."""
    if method == "ppo":
        return ppo
    from rlhpo.agents.tuners import make_tuners

    store = ppo.info.settings.get("store") or shipped_file(SHIPPED_STORE)
    if not Path(store).is_file():
        raise RlhpoError(
            f"--method {method} learns its list from the policy's meta-training store {str(store)!r}, "
            "which is not here; tune where that store is, or use --method ppo."
        )
    seed, held_out = int(ppo.info.settings.get("train_seed") or 0), ppo.info.exclude_datasets
    (tuner,) = make_tuners([method], space=space, policy=ppo, store=store, train_seed=seed, exclude_datasets=held_out)
    return tuner


def _episode(
    tuner: Tuner,
    env: HPOEnv,
    task: Task,
    seed: int,
    run_dir: Path,
    header: dict[str, Any],
    logger: MetricLogger,
    on_trial: Callable[[dict[str, Any]], None] | None,
    logged: int,
    to_study: Callable[[StepResult], None] | None = None,
    play: Player = run_tuner,
) -> tuple[TuneResult, list[dict[str, Any]]]:
    """Play the live episode, recording it (rollouts.jsonl, TensorBoard, ``to_study``) and reporting each trial.

    The first ``logged`` trials are recorded already (a resumed tune): they are not recorded again.
    """
    trials: list[dict[str, Any]] = []

    def on_step(step: StepResult) -> None:
        record = trial_record(step)
        trials.append(record)
        if step.step > logged:
            _log_trial(logger, step)
            if to_study is not None:
                to_study(step)
        if on_trial is not None:
            on_trial(record)

    write_rollouts_header(run_dir / ROLLOUTS_FILE, header)
    recorder = RolloutRecorder(env, run_dir / ROLLOUTS_FILE)
    try:
        result = play(tuner, recorder, seed, task=task, on_step=on_step)
    finally:
        recorder.close()
    if result.incumbent_config is None:
        raise RlhpoError(f"The policy proposed no trial within {env.budget_epochs} epochs: nothing to retrain.")
    return result, trials


class Player(Protocol):
    """Plays the episode: :func:`run_tuner` (one trial at a time), or rounds of trials on an executor."""

    def __call__(
        self, tuner: Tuner, env: Any, seed: int, *, task: Task, on_step: Callable[[StepResult], None]
    ) -> TuneResult: ...


def _player(executor: Executor | None, workers: int, data_dir: str | Path | None, held: dict[str, Curve]) -> Player:
    """How the episode is played: one trial at a time here, or rounds of ``workers`` trials on ``executor``.

    Rounds put the incumbent's model in ``held`` when a worker trained it at full fidelity.
    """
    if executor is None:
        return run_tuner
    from rlhpo.agents.tune_batches import run_rounds

    where = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None  # workers elsewhere: absolute

    def rounds(tuner: Tuner, env: Any, seed: int, *, task: Task, on_step: Callable[[StepResult], None]) -> TuneResult:
        assert isinstance(tuner, PPOTuner)  # rounds are the policy's N most likely configs (tune refuses others)
        try:
            return run_rounds(tuner, env, seed, task, executor, workers, data_dir=where, on_step=on_step, held=held)
        finally:
            executor.shutdown()  # on Ctrl-C too: stops the trials in flight; the finished ones are in the store

    return rounds


def trial_record(step: StepResult) -> dict[str, Any]:
    """One trial as ``tune`` reports it."""
    last = step.curve[-1] if step.curve else None
    return {
        "step": step.step,
        "config": step.answered_config.to_dict(),  # as trained: its epochs are those trained to
        "epochs": step.epochs,
        "paid_epochs": step.paid_epochs,  # fewer when the trial continued an earlier one
        "score": step.score,
        "val_accuracy": last.val_accuracy if last else None,
        "val_macro_f1": last.val_macro_f1 if last else None,
        "val_loss": last.val_loss if last else None,
        "diverged": step.diverged,
        "seconds": step.seconds,
        "incumbent": step.incumbent,
        "budget_used": step.budget_used,
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


def _log_trial(logger: MetricLogger, step: StepResult) -> None:
    """The trial's curve at steps counted in epochs spent, then the hpo/ scalars after it."""
    new = step.curve[step.resumed_from :]  # a continued trial logs only its new epochs
    start = step.budget_used - step.paid_epochs - step.resumed_from
    log_curve(logger, Curve(epochs=list(new), diverged=step.diverged), prefix="trials/", step_offset=start)
    logger.record("hpo/score", step.score)
    logger.record("hpo/incumbent_score", step.incumbent)
    logger.record("hpo/epochs_spent", step.budget_used)
    logger.record("hpo/diverged", int(step.diverged))
    logger.dump(step=step.budget_used)


def _log_hparams(logger: MetricLogger, settings: dict[str, Any], curve: Curve, step: int) -> None:
    """The tune's settings in TensorBoard's HParams tab, judged by the final training's test figures."""
    hparams = {k: v if isinstance(v, bool | int | float | str) else json.dumps(v) for k, v in settings.items()}
    metrics = {"hparam/test_accuracy": 0.0, "hparam/test_macro_f1": 0.0}
    logger.record("hparams", HParam(hparams, metrics), exclude=("stdout", "log", "json", "csv"))
    if curve.test is not None:
        logger.record("hparam/test_accuracy", curve.test.accuracy)
        logger.record("hparam/test_macro_f1", curve.test.macro_f1)
    logger.dump(step=step)


def _resume_settings(run_dir: Path, argv: list[str] | None) -> tuple[Path, dict[str, Any]]:
    """The settings of the interrupted tune in ``run_dir`` (its ``config.yaml``)."""
    config = run_dir / "config.yaml"
    if not config.is_file() or not (run_dir / STORE_FILE).is_file():
        raise RlhpoError(f"{str(run_dir)!r} is not the run folder of a tune: it lacks config.yaml or {STORE_FILE}.")
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status", "complete") == "complete":
        raise RlhpoError(f"The tune in {str(run_dir)!r} is complete; there is nothing to resume.")
    with (run_dir / "command.txt").open("a") as f:
        f.write(shlex.join(argv if argv is not None else sys.argv) + "\n")
    return run_dir, read_yaml(config)


def _steps_recorded(rollouts: Path) -> int:
    """How many steps an interrupted tune's rollouts file holds (its trials are in TensorBoard already)."""
    from rlhpo.agents.replay import read_rollouts

    if not rollouts.is_file():
        return 0
    return sum(len(ep.steps) for ep in read_rollouts(rollouts).episodes)


def trial_line(t: dict[str, Any]) -> str:
    """One finished trial, as ``rlhpo tune`` shows it while it runs (the config with the epochs trained)."""
    acc = "-" if t["val_accuracy"] is None else f"{t['val_accuracy']:.4f}"
    paid = "" if t["paid_epochs"] == t["epochs"] else f" (continued: {t['paid_epochs']} new)"
    return (
        f"trial {t['step']:>2}  {config_text(t['config'])}  {t['epochs']} epochs{paid}  val_acc {acc}  "
        f"score {t['score']:.4f}  {t['seconds']:.1f}s{'  diverged' if t['diverged'] else ''}  "
        f"incumbent {t['incumbent']:.4f}"
    )


def report_lines(s: dict[str, Any]) -> list[str]:
    """What ``rlhpo tune`` prints once it is done."""
    rounds = f" in rounds of {s['workers']} trials" if s.get("workers", 1) > 1 else ""
    by = " by ppo_tpe (the policy, then the list and TPE)" if s.get("method") == "ppo_tpe" else ""
    if s["reused_trial"]:
        final = "reused the kept trial's model (it ran at full fidelity with this seed)"
    else:
        on = "the training and validation splits" if s.get("refit") else "the training split"
        final = (
            f"on {on} ({s['train_examples']} examples), {s['config']['epochs']} epochs in {s['retrain_seconds']:.1f}s"
        )
    best = max(s["trials"], key=lambda t: t["score"])
    earlier = (
        f"; kept over trial {best['step']} (score {best['score']:.4f}): only the longest-trained trials compete, "
        "and a later one must beat an earlier one by a standard error"
        if best["step"] != s["kept_trial"]
        else ""
    )
    return [
        f"task {s['task_key']} ({s['model']}, {s['source']})",
        f"chosen config {config_text(s['config'])}: trial {s['kept_trial']}, {s['kept_epochs']} epochs "
        f"(score {s['kept_score']:.4f}){earlier}; final training {final}",
        test_metrics_line(s),
        f"tuning {s['tuning_epochs']}/{s['budget_epochs']} epochs{by}{rounds} in {s['tuning_seconds']:.1f}s "
        f"(policy {s['policy_seconds']:.2f}s); run folder {s['run_dir']}",
        "next: " + "; ".join(s["next"]),
    ]
