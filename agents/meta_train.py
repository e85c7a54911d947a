"""Meta-training the PPO tuner on recorded curves (``rlhpo train-agent``), then evaluating it.

stable-baselines3's PPO runs on a ``DummyVecEnv`` of HPOEnvs that share one read-only
:class:`~rlhpo.envs.backends.RecordedBackend` (a step is a few array look-ups, so subprocesses
would cost more than they save), or, with ``backend: surrogate``, one fitted
:class:`~rlhpo.envs.surrogate.SurrogateModel` (each env its own noise seed). The evaluation is
always on the store's recorded curves: a policy is never judged by the model it learned from.
Everything is seeded from ``settings.seed``: PPO's generators and env ``i``'s first reset
(``seed + i``). SB3 logs through our logger into the run folder
(TensorBoard and ``progress.jsonl``), so it leaves nothing in the temp dir.

The evaluation after training is a bench run (:func:`rlhpo.agents.bench.run_bench`): the policy,
the default config and random search on every recorded task, at the training budget, over the
evaluation seeds, reported for the training tasks and the held-out ones apart.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rlhpo.agents.bench import BenchSettings, read_csv, run_bench
from rlhpo.agents.bench_report import CSV_FILE
from rlhpo.agents.callbacks import (
    HPOEpisodeMetrics,
    TqdmProgress,
    checkpoint_callback,
    checkpoint_path,
    latest_checkpoint,
)
from rlhpo.agents.evaluate import FullFidelity, pm, summarise
from rlhpo.agents.learned_list import ConfigLists
from rlhpo.agents.per_config_policy import PerConfigPolicy
from rlhpo.agents.policy import (
    POLICY_FILE,
    DrawnBudget,
    HideMetaFeatures,
    HistoryObservation,
    PolicyInfo,
    PPOTuner,
    one_torch_thread,
    save_policy,
)
from rlhpo.agents.portfolio import (
    PortfolioActions,
    imitate_plan,
    learn_portfolio,
    plan_context,
    portfolio_size,
    shows_small_task,
)
from rlhpo.agents.sb3_logging import run_logger
from rlhpo.agents.settings import TrainAgentSettings, settings_from_dict
from rlhpo.agents.similar_tasks import SimilarTasks, fit_similar_tasks
from rlhpo.envs.backends import Backend, RecordedBackend, SubsetBackend
from rlhpo.envs.hpo_env import HPOEnv, trial_score
from rlhpo.envs.recorder import ROLLOUTS_FILE
from rlhpo.envs.surrogate import SurrogateBackend, SurrogateModel, load_surrogate
from rlhpo.errors import RlhpoError
from rlhpo.files import write_atomic
from rlhpo.runs import interruptible, make_run_dir, runs_root, write_run_files, write_summary
from rlhpo.settings import read_yaml
from rlhpo.space import Config, SearchSpace
from rlhpo.store import CurveStore

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
EVALUATION = "evaluation"  # the run folder's bench folder of the evaluation
EVAL_METHODS = ("ppo", "default", "random")


class FullFidelityReturn(gym.Wrapper):
    """At an episode's end, the reward also pays what the incumbent config scores at full fidelity.

    HPOEnv's return is the final incumbent's score *as trained*, but a tuner is judged (and
    ``rlhpo tune`` ends) by the incumbent config trained in full (:mod:`rlhpo.agents.evaluate`). A
    one-epoch screen ends with a one-epoch incumbent that scores less than one config trained in
    full, even where the screen's pick is the better config in full, so PPO is paid to undo
    screens that the benchmark rewards. With ``full_fidelity_return: true`` the episode's last
    reward gains ``max(0, s_full) − incumbent``, ``s_full`` the incumbent config's score after the
    largest epochs choice as the backend answers it (a look-up on recorded curves, a prediction on a
    surrogate): the undiscounted return is then that full-fidelity score less the costs. The
    correction is 0 when the incumbent was trained in full. Meta-training only: live, the backend
    would have to train it.
    """

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        result = info["result"]
        if (terminated or truncated) and result.incumbent_config is not None:
            hpo: HPOEnv = self.env.unwrapped  # type: ignore[assignment]
            epochs = hpo.space.max_epochs
            if result.incumbent_config.epochs < epochs:
                trial = hpo.backend.run(hpo.record.task, result.incumbent_config.with_epochs(epochs), epochs)
                reward += max(0.0, trial_score(trial)) - result.incumbent
        return obs, float(reward), terminated, truncated, info


def make_vec_env(
    settings: TrainAgentSettings,
    backend: RecordedBackend | SurrogateModel,
    space: SearchSpace,
    portfolio: ConfigLists | None = None,
    similar: SimilarTasks | None = None,
) -> DummyVecEnv:
    """``ppo.n_envs`` HPOEnvs (sharing one recorded backend or surrogate), each in SB3's Monitor.

    On a surrogate, env ``i`` draws its episodes' noise from seed ``seed + i``; ``config_fraction``
    does not apply (every config answers, with noise, so there is no lookup to recall). With a
    ``portfolio`` (configs by modality), the policy's actions pick among its configs (:class:`PortfolioActions`),
    in each task's order with ``similar`` (``portfolio_order: similar``).
    """
    budget = settings.budget_epochs(space)

    def make(i: int) -> Callable[[], Monitor]:
        def build() -> Monitor:
            answers: Backend
            if isinstance(backend, SurrogateModel):
                answers = SurrogateBackend(
                    backend,
                    space,
                    seed=settings.seed + i,
                    exclude_datasets=settings.exclude_datasets,
                    train_seed=settings.train_seed,
                )
            else:
                answers = backend
            if isinstance(backend, RecordedBackend) and settings.config_fraction < 1.0:
                answers = SubsetBackend(backend, settings.config_fraction, seed=settings.seed + i)
            env: gym.Env = HPOEnv(
                answers,
                space=space,
                budget_epochs=budget,
                train_seed=settings.train_seed,
                reward=settings.reward,
                incumbent=settings.incumbent,
            )
            if settings.full_fidelity_return:
                env = FullFidelityReturn(env)
            if settings.budget_fte_range is not None:
                env = DrawnBudget(env, *settings.budget_fte_range, seed=settings.seed + i)
            if settings.history:
                env = HistoryObservation(env, settings.history)
            if portfolio:
                small = shows_small_task(settings.imitation_plan)
                env = PortfolioActions(env, portfolio, ranks=settings.portfolio_ranks, similar=similar, small=small)
            return Monitor(env if settings.meta_features else HideMetaFeatures(env))

        return build

    return DummyVecEnv([make(i) for i in range(settings.ppo.n_envs)])


def new_model(settings: TrainAgentSettings, venv: DummyVecEnv) -> PPO:
    p = settings.ppo
    policy: Any = "MlpPolicy"
    kwargs: dict[str, Any] = {"net_arch": list(p.net_arch)}
    if settings.portfolio_net == "per_config":
        policy = PerConfigPolicy
        size = int(venv.action_space.nvec[0])  # type: ignore[attr-defined]
        epochs = venv.get_attr("space")[0].choices["epochs"]
        fractions = [e / epochs[-1] for e in epochs]
        kwargs.update(
            portfolio_size=size,
            entries=3 if settings.portfolio_ranks else 2,
            fractions=fractions,
            plan_context=plan_context(settings.imitation_plan),
        )
    return PPO(
        policy,
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
        policy_kwargs=kwargs,
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
    answers: RecordedBackend | SurrogateModel = backend
    if settings.backend == "surrogate":
        assert settings.surrogate is not None
        answers = _surrogate(settings.surrogate, settings)
        train_tasks = SurrogateBackend(answers, space, exclude_datasets=settings.exclude_datasets).default_tasks()
    if resume is None:
        run_dir = _new_run_dir(run_name, settings.seed, runs_dir)
        write_run_files(run_dir, settings.to_dict(), argv)
    log.info(
        "train-agent: %d training tasks from %s (%s backend), run folder %s",
        len(train_tasks),
        settings.surrogate if settings.backend == "surrogate" else store,
        settings.backend,
        run_dir,
    )

    portfolio: dict[str, tuple[Config, ...]] = {}
    fallback: tuple[Config, ...] = ()
    if settings.portfolio:  # learned from the meta-training tasks only, like the learned list it starts from
        portfolio, fallback = learn_portfolio(
            backend.store,
            space,
            settings.portfolio,
            train_seed=settings.train_seed,
            exclude_datasets=settings.exclude_datasets,
        )
        log.info(
            "train-agent: a portfolio of %d configs per modality (%s; the learned lists' first)",
            portfolio_size(portfolio),
            ", ".join(portfolio),
        )
    similar = None
    if settings.portfolio_order == "similar":
        similar = fit_similar_tasks(backend, portfolio)  # the tasks meta-training plays, records loaded once
        log.info(
            "train-agent: each task's portfolio in the order of the tasks most like it (kernel widths %s)",
            ", ".join(f"{m} {w:g}" for m, w in similar.widths.items()),
        )
    venv = make_vec_env(settings, answers, space, portfolio, similar)
    model, start_steps = _model(settings, venv, run_dir, resume is not None)
    imitation_seconds = 0.0
    if settings.imitation_episodes and resume is None:
        started = time.perf_counter()
        loss = imitate_plan(model, venv, settings.imitation_episodes, plan=settings.imitation_plan, seed=settings.seed)
        log.info(
            "train-agent: the policy imitates the %s plan (%d episodes; last losses: action %.3f, value %.4f)",
            settings.imitation_plan,
            settings.imitation_episodes,
            loss.action,
            loss.value,
        )
        imitation_seconds = time.perf_counter() - started
    logger = run_logger(run_dir, resume_step=start_steps if resume is not None else None)
    model.set_logger(logger)
    oracle = FullFidelity(backend.store, space, settings.train_seed)
    started = time.perf_counter()
    metrics = HPOEpisodeMetrics(oracle, None if resume else hparams(settings, store))
    with interruptible(run_dir, "train-agent", f"rlhpo train-agent --resume {run_dir}"):
        _learn(model, settings, run_dir, metrics, progress)
    train_seconds = time.perf_counter() - started
    # The policy file says what space its actions index and how it was trained.
    info = PolicyInfo(
        space=space,
        budget_epochs=budget,
        settings=settings.to_dict(),
        portfolio=portfolio,
        fallback=fallback,
        similar=similar,
    )
    save_policy(model, checkpoint_path(run_dir / CHECKPOINTS, model.num_timesteps), info)
    save_policy(model, run_dir / POLICY_FILE, info)

    with interruptible(run_dir, "train-agent", f"rlhpo train-agent --resume {run_dir}"):
        evaluation = _evaluate(settings, PPOTuner(model, info, run_dir / POLICY_FILE), store, run_dir)
    _log_evaluation(logger, evaluation, model.num_timesteps)
    logger.close()
    venv.close()
    summary = {
        "command": "train-agent",
        "run_dir": str(run_dir),
        "policy": str(run_dir / POLICY_FILE),
        "store": str(store),
        "backend": settings.backend,
        "surrogate": settings.surrogate,
        "space": settings.space,
        "budget_epochs": budget,
        "budget_fte": settings.budget_fte,
        "train_tasks": [t.key() for t in train_tasks],
        "exclude_datasets": list(settings.exclude_datasets),
        "total_steps": settings.total_steps,
        "num_timesteps": int(model.num_timesteps),
        "resumed_from": start_steps if resume is not None else None,
        "imitation_seconds": imitation_seconds,  # behaviour cloning before PPO (0 without imitation_episodes)
        "train_seconds": train_seconds,  # the PPO steps
        "evaluation": evaluation,
    }
    write_summary(run_dir, summary)
    return summary


def _surrogate(path: str, settings: TrainAgentSettings) -> SurrogateModel:
    """The surrogate file, checked: it must not have seen a held-out dataset, nor other training seeds' runs."""
    model = load_surrogate(path)
    seen = sorted({model.records[k].task.dataset for k in model.fit_tasks} & set(settings.exclude_datasets))
    if seen:
        raise RlhpoError(
            f"Surrogate {path!r} was fit on the held-out datasets {seen}: meta-training would learn from them. "
            f"Fit one without them: rlhpo surrogate fit --exclude-datasets {','.join(settings.exclude_datasets)} ..."
        )
    if model.settings.train_seed != settings.train_seed:
        raise RlhpoError(
            f"Surrogate {path!r} was fit on runs of train_seed={model.settings.train_seed}, but the settings say "
            f"train_seed={settings.train_seed}."
        )
    return model


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
    model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=fresh, log_interval=1)


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


def _evaluate(settings: TrainAgentSettings, tuner: PPOTuner, store: Path, run_dir: Path) -> dict[str, Any]:
    """PPO, the default config and random search on the training tasks and the held-out ones: a bench run.

    The bench's folder is ``evaluation/`` in the run folder; the policy's episodes are recorded
    in the run folder's ``rollouts.jsonl``.
    """
    with CurveStore(store, readonly=True) as recorded:
        tasks = tuple(r.key for r in recorded.tasks(with_runs=True, seed=settings.train_seed))
    bench = BenchSettings(
        tasks=tasks,
        methods=EVAL_METHODS,
        budgets=(settings.budget_fte,),
        seeds=settings.evaluation.episodes,
        first_seed=settings.evaluation.first_seed,
        store=str(store),
        space=settings.space,
        train_seed=settings.train_seed,
        reference_budget=settings.budget_fte,
    )
    summary = run_bench(
        bench, run_dir / EVALUATION, policy=tuner, reward=settings.reward, rollouts=run_dir / ROLLOUTS_FILE
    )
    rows = read_csv(run_dir / EVALUATION / CSV_FILE)
    out: dict[str, Any] = {
        "seeds": bench.seed_list,
        "budget_epochs": tuner.info.budget_epochs,
        "bench": summary["run_dir"],
        "groups": {},
    }
    for group, heldout in (("train", False), ("heldout", True)):
        mine = [r for r in rows if r["heldout"] == heldout]
        if mine:
            out["groups"][group] = {"tasks": sorted({r["task"] for r in mine}), "methods": summarise(mine)}
    return out


def report_lines(summary: dict[str, Any]) -> list[str]:
    """What ``rlhpo train-agent`` prints once it is done: the training and the evaluation's table."""
    ev = summary["evaluation"]
    lines = [
        f"trained {summary['num_timesteps']} steps in {summary['train_seconds']:.1f}s on "
        f"{len(summary['train_tasks'])} tasks; policy {summary['policy']}",
        f"evaluation at {ev['budget_epochs']} epochs, {len(ev['seeds'])} seeds per task "
        "(score: validation accuracy rescaled so that chance is 0; regret: best known full-fidelity score less the "
        "chosen config's):",
        f"{'tasks':<8} {'method':<8} {'incumbent':<15} {'full fidelity':<15} {'regret':<15}",
    ]
    for group, result in ev["groups"].items():
        for method, row in result["methods"].items():
            lines.append(
                f"{group:<8} {method:<8} {pm((row['incumbent_score'], row['incumbent_score_se'])):<15} "
                f"{pm((row['full_fidelity_score'], row['full_fidelity_score_se'])):<15} "
                f"{pm((row['regret'], row['regret_se'])):<15}"
            )
    lines += [
        f"run folder {summary['run_dir']} (evaluation bench: {ev['bench']})",
        f"next: rlhpo tune --policy {summary['policy']}; rlhpo replay {summary['run_dir']}; "
        f"tensorboard --logdir {summary['run_dir']}",
    ]
    return lines
