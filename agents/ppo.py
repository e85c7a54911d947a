"""The PPO tuner: meta-training it on recorded curves (:func:`train_agent`) and playing it (:class:`PPOTuner`).

Meta-training runs stable-baselines3's PPO on a ``DummyVecEnv`` of recorded HPOEnvs that share
one read-only :class:`~rlhpo.envs.backends.RecordedBackend` (a step is a few array look-ups, so
subprocesses would cost more than they save). Everything is seeded from ``settings.seed``: PPO's
generators and env ``i``'s first reset (``seed + i``). SB3 logs through our logger into the run
folder (TensorBoard and ``progress.jsonl``), so it leaves nothing in the temp dir.

A saved policy carries the search space it was trained in (the model attribute ``rlhpo``), so
its actions always decode in that space, whatever ``configs/search_space.yaml`` says now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rlhpo.agents.base import DefaultTuner, RandomTuner, Tuner
from rlhpo.agents.callbacks import (
    HPOEpisodeMetrics,
    TqdmProgress,
    checkpoint_callback,
    checkpoint_path,
    latest_checkpoint,
)
from rlhpo.agents.evaluate import FullFidelity, evaluate, summarise
from rlhpo.agents.sb3_logging import run_logger
from rlhpo.agents.settings import (
    SHIPPED_POLICY,
    TrainAgentSettings,
    settings_from_dict,
    shipped_asset,
    space_from_dict,
    space_to_dict,
)
from rlhpo.envs.backends import Backend, RecordedBackend, SubsetBackend
from rlhpo.envs.hpo_env import HPOEnv, fidelity
from rlhpo.envs.recorder import RolloutRecorder
from rlhpo.errors import RlhpoError
from rlhpo.runs import make_run_dir, runs_root, write_atomic, write_run_files, write_summary
from rlhpo.settings import read_yaml
from rlhpo.space import Config, SearchSpace
from rlhpo.store import TaskRecord
from rlhpo.tasks.features import META_FEATURES

log = logging.getLogger(__name__)

POLICY_FILE = "policy.zip"
ROLLOUTS_FILE = "rollouts.jsonl"
CHECKPOINTS = "checkpoints"
MAX_CANDIDATES = 10_000  # most likely actions looked at to replace a repeated trial


# ------------------------------------------------------------------ the tuner


def default_policy_path() -> Path:
    """Where the shipped policy lives: ``rlhpo/assets/policy.zip``."""
    return shipped_asset(SHIPPED_POLICY)


class PPOTuner(Tuner):
    """A trained PPO policy proposing whole configs; deterministic (the most likely action).

    Args:
        model: the SB3 PPO model.
        space: the search space its actions index; default: the one saved with the policy.
    """

    name = "ppo"

    def __init__(self, model: PPO, space: SearchSpace | None = None) -> None:
        self.model = model
        saved = getattr(model, "rlhpo", None) or {}
        self.policy_space = space or (space_from_dict(saved["space"]) if "space" in saved else None)
        self.meta_features = bool((saved.get("settings") or {}).get("meta_features", True))
        self.path: Path | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> PPOTuner:
        """Load a policy saved by ``rlhpo train-agent`` (a ``policy.zip``, or a run folder holding one).

        Raises:
            RlhpoError: when the file is missing, is not a policy, or is not one of ours.
        """
        policy = _policy_file(path)
        try:
            model = PPO.load(policy, device="cpu")
        except Exception as e:  # a foreign or damaged file can fail anywhere inside SB3's loader
            raise RlhpoError(
                f"Policy file {str(policy)!r} could not be read as a stable-baselines3 PPO policy "
                f"({type(e).__name__}: {e}); pass the policy.zip of a `rlhpo train-agent` run."
            ) from None
        tuner = cls(model)
        tuner.path = policy
        return tuner

    def start(self, space: SearchSpace, reset_info: dict[str, Any], seed: int) -> None:
        super().start(space, reset_info, seed)
        nvec = list(getattr(self.model.action_space, "nvec", []))
        if [int(n) for n in nvec] != space.nvec:
            raise RlhpoError(
                f"The policy chooses among {[int(n) for n in nvec]} choices per hyperparameter, but the "
                f"environment's search space has {space.nvec}; use the space the policy was trained in."
            )
        self._trained: dict[str, int] = {}  # config key (epochs left out) -> most epochs run this episode
        self._remaining = int(reset_info["budget_epochs"])
        self._epochs_choices = sorted(space.choices["epochs"])

    def propose(self, obs: np.ndarray) -> np.ndarray:
        """The policy's most likely action that is not a repeat of a trial already run this episode.

        A repeated trial (a config already trained this episode to at least the epochs asked)
        gives the same curve again and only spends budget, so the most likely action is replaced
        by the next most likely one that is new (:func:`most_likely_first`).
        """
        expected = self.model.observation_space.shape
        if np.shape(obs) != expected:
            raise RlhpoError(f"The policy observes vectors of shape {expected}, but got {np.shape(obs)}.")
        if not self.meta_features:
            obs = hide_meta_features(obs)
        with one_torch_thread():
            action, _ = self.model.predict(obs, deterministic=True)
            action = np.asarray(action, dtype=np.int64)
            if self._is_repeat(action):
                action = self._most_likely_new(obs, action)
        return action

    def observe(self, action: np.ndarray, info: dict[str, Any]) -> None:
        self._remaining = int(info["budget_remaining"])
        # With recorded curves a new action may be answered by another config: both are now known.
        for config in (info["config"], info["answered_config"]):
            key = Config(**config).key()
            self._trained[key] = max(self._trained.get(key, 0), int(info["epochs"]))

    def _is_repeat(self, action: np.ndarray) -> bool:
        """Whether the env would train ``action``'s config no further than it has been (HPOEnv's rule)."""
        config = self.space.decode(action)
        done = self._trained.get(config.key(), 0)
        epochs, _ = fidelity(self._epochs_choices, config.epochs, done, self._remaining)
        return epochs <= done

    def _most_likely_new(self, obs: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        obs_tensor, _ = self.model.policy.obs_to_tensor(obs)
        with torch.no_grad():
            dist = self.model.policy.get_distribution(obs_tensor)
        log_probs = [d.logits[0].double().log_softmax(-1).numpy() for d in dist.distribution]
        for action in itertools.islice(most_likely_first(log_probs), MAX_CANDIDATES):
            if not self._is_repeat(action):
                return action
        return fallback  # every candidate looked at is a repeat: the budget will end the episode


def most_likely_first(log_probs: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Every action of independent categoricals (one ``log_probs`` per dimension), most likely first.

    Best-first search over per-dimension ranks: from the all-most-likely action, each successor
    takes the next most likely choice in one dimension. A max-heap on the joint log-probability
    pops the actions in exactly decreasing order.
    """
    orders = [np.argsort(-lp, kind="stable") for lp in log_probs]

    def logp(ranks: tuple[int, ...]) -> float:
        return float(sum(lp[order[r]] for lp, order, r in zip(log_probs, orders, ranks)))

    start = (0,) * len(orders)
    heap, seen = [(-logp(start), start)], {start}
    while heap:
        _, ranks = heapq.heappop(heap)
        yield np.array([order[r] for order, r in zip(orders, ranks)], dtype=np.int64)
        for d in range(len(ranks)):
            if ranks[d] + 1 < len(orders[d]):
                nxt = ranks[:d] + (ranks[d] + 1,) + ranks[d + 1 :]
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (-logp(nxt), nxt))


def hide_meta_features(obs: np.ndarray) -> np.ndarray:
    """The observation with the task's meta-features zeroed (what a ``meta_features: false`` policy sees)."""
    out = np.array(obs, dtype=np.float32, copy=True)
    out[..., : len(META_FEATURES)] = 0.0
    return out


class HideMetaFeatures(gym.ObservationWrapper):
    """Zeroes the meta-features of every observation (``meta_features: false``)."""

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return hide_meta_features(observation)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside, restoring the count after.

    The policy's tensors are tiny: more threads only add synchronisation, which on a busy
    machine costs milliseconds per operation (a 2x4 softmax measured 11 ms on 2 threads, 1 µs on one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _policy_file(path: str | Path | None) -> Path:
    if path is None:
        policy = default_policy_path()
        if not policy.is_file():
            raise RlhpoError(
                f"The shipped policy {str(policy)!r} is not installed; train one with `rlhpo train-agent` "
                "and pass --policy RUN_DIR/policy.zip."
            )
        return policy
    policy = Path(path)
    if policy.is_dir():
        policy = policy / POLICY_FILE
    if not policy.is_file():
        raise RlhpoError(
            f"Policy file {str(policy)!r} does not exist; pass the policy.zip of a `rlhpo train-agent` run."
        )
    return policy


# ------------------------------------------------------------- meta-training


def make_vec_env(settings: TrainAgentSettings, backend: RecordedBackend, space: SearchSpace) -> DummyVecEnv:
    """``ppo.n_envs`` recorded HPOEnvs (sharing one backend), each in SB3's Monitor."""
    budget = settings.budget_epochs(space)

    def make(i: int) -> Callable[[], Monitor]:
        def build() -> Monitor:
            answers: Backend = backend
            if settings.config_fraction < 1.0:
                answers = SubsetBackend(backend, settings.config_fraction, seed=settings.seed + i)
            env = HPOEnv(
                answers, space=space, budget_epochs=budget, train_seed=settings.train_seed, reward=settings.reward
            )
            return Monitor(env if settings.meta_features else HideMetaFeatures(env))

        return build

    return DummyVecEnv([make(i) for i in range(settings.ppo.n_envs)])


def new_model(settings: TrainAgentSettings, venv: DummyVecEnv) -> PPO:
    p = settings.ppo
    return PPO(
        "MlpPolicy",
        venv,
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        learning_rate=p.learning_rate,
        gamma=p.gamma,
        gae_lambda=p.gae_lambda,
        clip_range=p.clip_range,
        ent_coef=p.ent_coef,
        vf_coef=p.vf_coef,
        max_grad_norm=p.max_grad_norm,
        policy_kwargs={"net_arch": list(p.net_arch)},
        seed=settings.seed,
        device="cpu",
        verbose=0,
    )


def hparams(settings: TrainAgentSettings, store: Path) -> dict[str, Any]:
    """The settings as flat scalars for TensorBoard's HParams tab."""
    flat: dict[str, Any] = {}
    for key, value in settings.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": _scalar(v) for k, v in value.items()})
        else:
            flat[key] = _scalar(value)
    flat["store"] = str(store)
    return flat


def _scalar(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


def train_agent(
    settings: TrainAgentSettings | None = None,
    *,
    resume: str | Path | None = None,
    run_name: str | None = None,
    seed: int | None = None,
    total_steps: int | None = None,
    runs_dir: str | Path | None = None,
    argv: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-train a PPO tuner on recorded curves, then evaluate it; return the run's summary.

    Args:
        settings: what to do (``configs/train_agent.yaml``); ignored with ``resume``, which reads
            the run folder's ``config.yaml``.
        resume: a run folder of this command: training continues from its last checkpoint, with
            the same step counter, TensorBoard events and ``progress.jsonl``.
        run_name: the run folder's name under the runs folder (default: stamp, command, seed).
        seed / total_steps: override the settings' (``total_steps`` may extend a resumed run).
        argv: the command line, for ``command.txt`` (default ``sys.argv``).
        progress: show a progress bar on stderr.

    The run folder gets ``config.yaml``, ``command.txt``, TensorBoard events, ``progress.jsonl``,
    ``checkpoints/ppo_<step>_steps.zip``, ``policy.zip``, ``rollouts.jsonl`` (the policy's
    evaluation episodes) and ``summary.json``.
    """
    with one_torch_thread():
        return _train_agent(settings, resume, run_name, seed, total_steps, runs_dir, argv, progress)


def _train_agent(
    settings: TrainAgentSettings | None,
    resume: str | Path | None,
    run_name: str | None,
    seed: int | None,
    total_steps: int | None,
    runs_dir: str | Path | None,
    argv: list[str] | None,
    progress: bool,
) -> dict[str, Any]:
    if resume is not None:
        run_dir = Path(resume)
        settings = _resume_settings(run_dir, seed, total_steps, argv)
    else:
        settings = settings or TrainAgentSettings()
        changes = {k: v for k, v in (("seed", seed), ("total_steps", total_steps)) if v is not None}
        settings = dataclasses.replace(settings, **changes)
    store = settings.store_path()
    space = settings.search_space()
    budget = settings.budget_epochs(space)
    backend = RecordedBackend(store, space, train_seed=settings.train_seed, exclude_datasets=settings.exclude_datasets)
    train_tasks = backend.default_tasks()  # fails now, not mid-run, on an empty store
    if resume is None:
        run_dir = _new_run_dir(run_name, settings.seed, runs_dir)
        write_run_files(run_dir, settings.to_dict(), argv)
    log.info("train-agent: %d training tasks from %s, run folder %s", len(train_tasks), store, run_dir)

    venv = make_vec_env(settings, backend, space)
    model, start_steps = _model(settings, venv, run_dir, resume is not None)
    # Saved with the model (checkpoints too): the space its actions index, and how it was trained.
    model.rlhpo = {"space": space_to_dict(space), "budget_epochs": budget, "settings": settings.to_dict()}
    logger = run_logger(run_dir, resume_step=start_steps if resume is not None else None)
    model.set_logger(logger)
    oracle = FullFidelity(backend.store, space, settings.train_seed)
    started = time.perf_counter()
    _learn(model, settings, run_dir, HPOEpisodeMetrics(oracle, None if resume else hparams(settings, store)), progress)
    train_seconds = time.perf_counter() - started
    model.save(checkpoint_path(run_dir / CHECKPOINTS, model.num_timesteps))
    model.save(run_dir / POLICY_FILE)

    evaluation = _evaluate(settings, model, backend, oracle, space, store, run_dir)
    _log_evaluation(logger, evaluation, model.num_timesteps)
    logger.close()
    venv.close()
    summary = {
        "command": "train-agent",
        "run_dir": str(run_dir),
        "policy": str(run_dir / POLICY_FILE),
        "store": str(store),
        "space": settings.space,
        "budget_epochs": budget,
        "budget_fte": settings.budget_fte,
        "train_tasks": [t.key() for t in train_tasks],
        "exclude_datasets": list(settings.exclude_datasets),
        "total_steps": settings.total_steps,
        "num_timesteps": int(model.num_timesteps),
        "resumed_from": start_steps if resume is not None else None,
        "train_seconds": train_seconds,
        "evaluation": evaluation,
    }
    write_summary(run_dir, summary)
    return summary


def _learn(model: PPO, settings: TrainAgentSettings, run_dir: Path, metrics: HPOEpisodeMetrics, progress: bool) -> None:
    """Train up to ``settings.total_steps``, from wherever the model's step counter is."""
    remaining = settings.total_steps - model.num_timesteps
    if remaining <= 0:
        log.warning("%s is already trained for %d steps; evaluating only.", run_dir, model.num_timesteps)
        return
    callbacks = CallbackList(
        [
            metrics,
            checkpoint_callback(run_dir / CHECKPOINTS, settings.checkpoint_every, settings.ppo.n_envs),
            TqdmProgress(settings.total_steps, disable=not progress),
        ]
    )
    fresh = model.num_timesteps == 0
    try:
        model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=fresh, log_interval=1)
    except KeyboardInterrupt:
        log.warning("Interrupted; continue from the last checkpoint with `rlhpo train-agent --resume %s`.", run_dir)
        raise


def _log_evaluation(logger: Any, evaluation: dict[str, Any], step: int) -> None:
    """The evaluation's means as ``eval/<tasks>/<method>/<figure>`` scalars at the last step."""
    for group, result in evaluation["groups"].items():
        for method, row in result["methods"].items():
            for name in ("incumbent_score", "full_fidelity_score", "regret"):
                if row[name] is not None:
                    logger.record(f"eval/{group}/{method}/{name}", row[name])
    logger.dump(step=step)


def _new_run_dir(run_name: str | None, seed: int, runs_dir: str | Path | None) -> Path:
    if run_name is None:
        return make_run_dir("train-agent", "meta", seed, runs_dir)
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise RlhpoError(f"--run-name must be a folder name without '/', but got {run_name!r}.")
    path = runs_root(runs_dir) / run_name
    if path.exists():
        raise RlhpoError(f"Run folder {str(path)!r} exists; continue it with --resume {path}, or pick another name.")
    path.mkdir(parents=True)
    return path


def _resume_settings(
    run_dir: Path, seed: int | None, total_steps: int | None, argv: list[str] | None
) -> TrainAgentSettings:
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise RlhpoError(f"{str(run_dir)!r} is not a train-agent run folder: it has no config.yaml to resume.")
    settings = settings_from_dict(read_yaml(config), str(config))
    if seed is not None and seed != settings.seed:
        raise RlhpoError(f"--seed {seed} differs from the resumed run's seed {settings.seed}; leave it out.")
    if latest_checkpoint(run_dir / CHECKPOINTS) is None:
        raise RlhpoError(f"Run folder {str(run_dir)!r} has no checkpoint to resume from (checkpoints/ppo_*.zip).")
    if total_steps is not None:
        settings = dataclasses.replace(settings, total_steps=total_steps)
        write_atomic(config, yaml.safe_dump(settings.to_dict(), sort_keys=False))
    with (run_dir / "command.txt").open("a") as f:
        f.write(shlex.join(argv if argv is not None else sys.argv) + "\n")
    return settings


def _model(settings: TrainAgentSettings, venv: DummyVecEnv, run_dir: Path, resume: bool) -> tuple[PPO, int]:
    """A new model, or the last checkpoint's (re-seeded by its step, so a resumed run draws new tasks)."""
    if not resume:
        return new_model(settings, venv), 0
    found = latest_checkpoint(run_dir / CHECKPOINTS)
    assert found is not None
    steps, path = found
    model = PPO.load(path, env=venv, device="cpu")
    model.set_random_seed(settings.seed + steps)
    log.info("resuming %s from %s (%d steps)", run_dir, path.name, model.num_timesteps)
    return model, steps


def _evaluate(
    settings: TrainAgentSettings,
    model: PPO,
    backend: RecordedBackend,
    oracle: FullFidelity,
    space: SearchSpace,
    store: Path,
    run_dir: Path,
) -> dict[str, Any]:
    """PPO, the default config and random search on the training tasks and on the held-out ones."""
    budget = settings.budget_epochs(space)
    records = list(backend.records.values())
    groups: dict[str, list[TaskRecord]] = {
        "train": [r for r in records if r.task.dataset not in settings.exclude_datasets],
        "heldout": [r for r in records if r.task.dataset in settings.exclude_datasets],
    }
    rollouts = run_dir / ROLLOUTS_FILE
    write_rollouts_header(
        rollouts,
        {
            "command": "train-agent",
            "method": "ppo",
            "backend": "recorded",
            "store": str(store),
            "space": space_to_dict(space),
            "budget_epochs": budget,
            "train_seed": settings.train_seed,
            "reward": dataclasses.asdict(settings.reward),
        },
    )

    def make_env(method: str) -> Any:
        env = HPOEnv(backend, space=space, budget_epochs=budget, train_seed=settings.train_seed, reward=settings.reward)
        return RolloutRecorder(env, rollouts) if method == PPOTuner.name else env

    tuners = [PPOTuner(model, space), DefaultTuner(), RandomTuner()]
    seeds = settings.evaluation.seeds
    scores = evaluate(tuners, make_env, groups["train"] + groups["heldout"], seeds, oracle)
    out: dict[str, Any] = {"seeds": seeds, "budget_epochs": budget, "groups": {}, "episodes": []}
    for group, tasks in groups.items():
        keys = {r.key for r in tasks}
        mine = [s for s in scores if s.task in keys]
        if mine:
            out["groups"][group] = {"tasks": sorted(keys), "methods": summarise(mine)}
            out["episodes"] += [{"group": group, **s.to_dict()} for s in mine]
    return out


def write_rollouts_header(path: Path, header: dict[str, Any]) -> None:
    """Start ``rollouts.jsonl`` afresh with its header line: what a replay needs to rebuild the env."""
    path.write_text(json.dumps({"header": header}) + "\n")
