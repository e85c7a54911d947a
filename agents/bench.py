"""``rlhpo bench``: every tuner on every task, seed and budget, scored by full-fidelity regret.

The protocol is written down in ``docs/protocol.md``. In short:

- Every method plays the same episodes: each task, each evaluation seed (``first_seed`` on,
  disjoint from meta-training's seeds 0..n_envs) and each budget, in its own episode (so a
  method that plans by its budget, like top-k or the policy, sees the budget it is scored at).
- **Regret** is the best full-fidelity score known for the task less the full-fidelity score of
  the incumbent config, in normalised accuracy (0 at chance, 1 perfect). The backend's judge
  (:mod:`rlhpo.agents.evaluate`) gives both: from the store (recorded), or by training each
  incumbent again at full fidelity, with test metrics (live).
- The **anytime curve** of an episode is the regret of its incumbent after each trial, against
  the epochs spent, read from the episodes at the largest budget (recorded only). Its **area**
  is the mean regret over log-budget between the smallest and the largest budget.
- The **speedup** of a baseline is the budget it needs (on its mean anytime curve) to reach
  the policy's mean regret at the reference budget (3 FTE), divided by that budget.

The full-fidelity regret of an incumbent picked at low fidelity can rise when a new trial
displaces it (a 1-epoch score beats the old incumbent's, but the config is worse fully
trained); the anytime curves show it as it is.

Outputs, in the bench folder: ``bench.csv`` (a row per task, method, seed and budget, appended
as each episode ends, so an interrupted bench resumes where it stopped), ``anytime.csv``,
``bench.md``, ``bench.png``, ``config.yaml``, ``command.txt`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhpo.agents.base import TuneResult, run_tuner
from rlhpo.agents.bench_report import ANYTIME_FILE, CSV_FILE, PLOT_FILE, markdown, plot, summarise
from rlhpo.agents.evaluate import FullFidelity, Judge, LiveJudge, RecordedJudge
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.settings import BenchSettings
from rlhpo.agents.tuners import make_tuners
from rlhpo.collect import make_executor
from rlhpo.envs.backends import LiveBackend, RecordedBackend
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.envs.recorder import RolloutRecorder, write_rollouts_header
from rlhpo.envs.reward import RewardSettings
from rlhpo.errors import RlhpoError, closest
from rlhpo.files import write_atomic
from rlhpo.runs import interruptible, make_run_dir, write_run_files, write_summary
from rlhpo.settings import SHIPPED_POLICY, SHIPPED_STORE, shipped_file
from rlhpo.space import SearchSpace, load_search_space
from rlhpo.store import CurveStore, StoredRun, TaskRecord
from rlhpo.tasks.task import Task
from rlhpo.training import resolve_device

log = logging.getLogger(__name__)

MARKDOWN_FILE = "bench.md"
STORE_FILE = "store.sqlite"  # live backend: every curve trained in the bench
COLUMNS = (
    "task", "dataset", "method", "seed", "budget_fte", "budget_epochs", "epochs_used", "trials", "heldout",
    "incumbent_score", "full_fidelity_score", "regret", "test_accuracy", "test_macro_f1", "test_loss",
    "tuning_seconds", "policy_seconds", "train_seconds", "incumbent_config",
)  # fmt: skip
ANYTIME_COLUMNS = ("task", "method", "seed", "epochs", "fte", "regret")


def run_bench(
    settings: BenchSettings,
    out_dir: str | Path | None = None,
    *,
    policy: PPOTuner | None = None,
    reward: RewardSettings | None = None,
    rollouts: Path | None = None,
    argv: list[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the bench into ``out_dir`` (default: a new run folder) and return its summary.

    An ``out_dir`` that holds a ``bench.csv`` of the same settings is resumed: its episodes are
    kept and only the missing ones run. ``progress`` is called with each new row.

    Args:
        policy: the policy to play as ``ppo`` (default: ``settings.policy``, loaded). It also
            defines the search space (its own) and the held-out datasets, even when it does not play.
        reward: the envs' reward weights (default: the defaults); they change no tuner's choices,
            only the rewards recorded in ``rollouts``.
        rollouts: where to record the ``ppo`` episodes (``rollouts.jsonl``, for ``rlhpo replay``).
    """
    if settings.backend == "live":
        resolve_device(settings.device)  # before a run folder exists
    if rollouts is not None and len(settings.budgets) > 1:
        raise RlhpoError(f"A bench records rollouts at one budget only, but got budgets={settings.budgets}.")
    if rollouts is not None and settings.parallel:
        raise RlhpoError("A bench records rollouts only with its episodes in this process (--workers 1).")
    # Before a run folder exists: a missing Ray or a cluster that does not answer fails here.
    executor = make_executor(settings.executor, settings.workers, settings.address) if settings.parallel else None
    policy = policy or PPOTuner.load(settings.policy)
    space = _space(settings, policy)
    excluded = policy.info.exclude_datasets
    recorded_store = _recorded_store(settings)
    if settings.backend == "recorded":
        tasks = _recorded_tasks(settings, recorded_store)  # a bad task name fails before a run folder exists
    else:
        tasks = [Task(name, family=settings.family, n_train=settings.n_train) for name in settings.tasks]
    run_dir = Path(out_dir) if out_dir is not None else make_run_dir("bench", "-".join(settings.tasks), 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = _resume(run_dir, settings)
    write_run_files(run_dir, settings.to_dict(), argv)
    # One backend for every episode: the recorded runs are loaded, or the live data preprocessed, once.
    # On an executor, each worker process has its own; the live store here gets every curve they train.
    backend, judge = _backend_and_judge(settings, space, recorded_store, run_dir / STORE_FILE)
    reward = reward or RewardSettings()
    started = time.perf_counter()
    rows = list(done.values())
    largest = max(settings.budgets)
    # Anytime points of an episode whose row was never written (interrupted in between) are redone.
    finished = {(k[0], k[1], k[2]) for k in done if k[3] == float(largest)}
    anytime = [p for p in _read_anytime(run_dir) if (p["task"], p["method"], p["seed"]) in finished] if done else []
    csv_path = run_dir / CSV_FILE
    _write_csv(csv_path, rows, COLUMNS)  # resumed: the rows so far under today's columns (a new one left empty)
    _write_csv(run_dir / ANYTIME_FILE, anytime, ANYTIME_COLUMNS)
    if rollouts is not None:
        write_rollouts_header(rollouts, rollouts_header(backend, space, settings, reward))
    episodes = [
        Episode(task, method, seed, float(budget))
        for method in settings.methods
        for budget in settings.budgets
        for task in tasks
        for seed in settings.seed_list
    ]
    todo = [e for e in episodes if e.key() not in done]
    heldout = frozenset(t.key() for t in tasks if t.dataset in excluded)
    if executor is not None:
        play = PlayEpisode(_portable(settings), _policy_path(policy), reward, heldout)
        outcomes: Iterator[EpisodeOutcome] = executor.map_unordered(play, todo)
    else:
        player = Player(settings, space, policy, backend, judge, reward, heldout, rollouts)
        outcomes = (player.play(e) for e in todo)
    with interruptible(run_dir, "bench", f"run the same command with --out {run_dir}"):
        try:
            for outcome in outcomes:
                _keep_runs(backend, outcome)
                for point in outcome.anytime:
                    _append_csv(run_dir / ANYTIME_FILE, point, ANYTIME_COLUMNS)
                anytime += outcome.anytime
                rows.append(outcome.row)  # the row last: a resumed bench redoes an episode without one
                _append_csv(csv_path, outcome.row, COLUMNS)
                if progress is not None:
                    progress(outcome.row)
        except KeyboardInterrupt:
            if executor is not None:
                executor.shutdown()
            raise
        finally:
            if executor is None:
                player.close()
            else:
                backend.close()
    # Episodes end in any order on an executor: the files list them in the bench's own order.
    order = {e.key(): i for i, e in enumerate(episodes)}
    rows.sort(key=lambda r: order[_row_key(r)])
    anytime.sort(key=lambda p: order[(p["task"], p["method"], p["seed"], float(largest))])
    _write_csv(run_dir / ANYTIME_FILE, anytime, ANYTIME_COLUMNS)
    judge.finish(rows)
    _write_csv(csv_path, rows, COLUMNS)
    report = summarise(rows, anytime, settings)
    write_atomic(run_dir / MARKDOWN_FILE, markdown(report, settings, run_dir))
    plot(report, settings, run_dir / PLOT_FILE)
    summary = {
        "command": "bench",
        "status": "complete",
        "run_dir": str(run_dir),
        "settings": settings.to_dict(),
        "policy": str(policy.path),
        "policy_excluded_datasets": list(excluded),
        "tasks": [t.key() for t in tasks],
        "episodes": len(rows),
        "seconds": time.perf_counter() - started,
        "report": report,
    }
    write_summary(run_dir, summary)
    return summary


def rollouts_header(
    backend: Any, space: SearchSpace, settings: BenchSettings, reward: RewardSettings
) -> dict[str, Any]:
    """What ``rlhpo replay`` needs to rebuild the bench's envs (recorded backend)."""
    return {
        "command": "bench",
        "method": PPOTuner.name,
        "backend": settings.backend,
        "store": str(backend.store.path),
        "space": space.to_dict(),
        "budget_epochs": space.budget_epochs(max(settings.budgets)),
        "train_seed": settings.train_seed,
        "reward": dataclasses.asdict(reward),
        "incumbent": settings.incumbent,
    }


# ------------------------------------------------------------------ episodes


@dataclass(frozen=True)
class Episode:
    """One episode of the bench, its unit of work: a method on a task with an evaluation seed at a budget."""

    task: Task
    method: str
    seed: int
    budget: float  # FTE

    def key(self) -> tuple[str, str, int, float]:
        """What identifies its row in ``bench.csv`` (task key, method, seed, budget)."""
        return (self.task.key(), self.method, self.seed, float(self.budget))


@dataclass(frozen=True)
class EpisodeOutcome:
    """An episode's row and anytime points; from a worker's live backend, also the curves it trained."""

    episode: Episode
    row: dict[str, Any]
    anytime: list[dict[str, Any]]
    record: TaskRecord | None = None  # the task as the curves below are keyed (live, in a worker)
    runs: tuple[StoredRun, ...] = ()


class Player:
    """Plays bench episodes in one process: every tuner, over one backend and judge, an env per budget.

    A bench without an executor has one, in this process. On an executor, each worker process
    builds its own from the same settings (:class:`PlayEpisode`), and an episode depends on
    nothing but its seed and the recorded curves, so its row is the same wherever it ran.
    ``report_runs``: the backend is a worker's live one, whose curves the driver must store.
    """

    def __init__(
        self,
        settings: BenchSettings,
        space: SearchSpace,
        policy: PPOTuner,
        backend: RecordedBackend | LiveBackend,
        judge: Judge,
        reward: RewardSettings,
        heldout: frozenset[str],
        rollouts: Path | None = None,
        report_runs: bool = False,
    ) -> None:
        self.tuners = {
            t.name: t
            for t in make_tuners(
                settings.methods,
                space=space,
                policy=policy,
                store=_recorded_store(settings),
                train_seed=settings.train_seed,
                exclude_datasets=policy.info.exclude_datasets,
            )
        }
        self.settings, self.space, self.backend, self.judge, self.reward = settings, space, backend, judge, reward
        self.heldout = heldout
        self.rollouts = rollouts
        self.report_runs = report_runs
        self.largest = float(max(settings.budgets))
        self._envs: dict[tuple[float, bool], Any] = {}

    def play(self, episode: Episode) -> EpisodeOutcome:
        task = episode.task
        before = self._runs(task) if self.report_runs else {}
        result = run_tuner(self.tuners[episode.method], self._env(episode), episode.seed, task=task)
        epochs = self.space.budget_epochs(episode.budget)
        row = _row(task, result, episode.budget, epochs, task.key() in self.heldout, self.judge)
        anytime = _anytime_points(task, result, self.judge, self.space) if episode.budget == self.largest else []
        if not self.report_runs:
            return EpisodeOutcome(episode, row, anytime)
        after = self._runs(task)
        new = tuple(run for key, run in after.items() if key not in before)
        return EpisodeOutcome(episode, row, anytime, self.backend.describe(task), new)

    def close(self) -> None:
        """Close the envs (and so the backend's store connection, and a rollouts file)."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    def _env(self, episode: Episode) -> Any:
        recorded = self.rollouts is not None and episode.method == PPOTuner.name
        slot = (episode.budget, recorded)
        if slot not in self._envs:
            env: Any = HPOEnv(
                self.backend,
                space=self.space,
                budget_epochs=self.space.budget_epochs(episode.budget),
                train_seed=self.settings.train_seed,
                reward=self.reward,
                incumbent=self.settings.incumbent,
            )
            self._envs[slot] = RolloutRecorder(env, self.rollouts) if recorded and self.rollouts else env
        return self._envs[slot]

    def _runs(self, task: Task) -> dict[tuple[str, int, bool], StoredRun]:
        key = self.backend.describe(task).key
        runs = self.backend.store.runs(key, self.settings.train_seed)
        return {(r.config.key(), r.max_epochs, r.curve.diverged): r for r in runs}


_PLAYERS: dict[PlayEpisode, Player] = {}  # this worker process's players, by what they play


@dataclass(frozen=True)
class PlayEpisode:
    """Plays one episode in a worker process (an executor's picklable ``fn``), with that process's :class:`Player`.

    Paths are absolute (see :func:`_portable`); ``policy`` ``None`` is the shipped policy, found
    where the worker's rlhpo is installed. A live player keeps its curves in memory and sends
    them back with each row: the driver stays the only writer of the bench's store.
    """

    settings: BenchSettings
    policy: str | None
    reward: RewardSettings
    heldout: frozenset[str]

    def __call__(self, episode: Episode) -> EpisodeOutcome:
        player = _PLAYERS.get(self)
        if player is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study and trial otherwise
            policy = PPOTuner.load(self.policy)
            space = _space(self.settings, policy)
            backend, judge = _backend_and_judge(self.settings, space, _recorded_store(self.settings), None)
            live = self.settings.backend == "live"
            player = Player(self.settings, space, policy, backend, judge, self.reward, self.heldout, report_runs=live)
            _PLAYERS[self] = player
        return player.play(episode)


def _portable(settings: BenchSettings) -> BenchSettings:
    """The settings with every path given made absolute: workers need not share this process's directory."""
    paths = {
        name: str(Path(value).expanduser().resolve())
        for name in ("store", "space", "data_dir")
        if (value := getattr(settings, name)) is not None
    }
    return dataclasses.replace(settings, policy=None, **paths)


def _policy_path(policy: PPOTuner) -> str | None:
    """The policy file a worker loads (``None``: the shipped one, wherever the worker's rlhpo is installed)."""
    if policy.path is None:
        raise RlhpoError("A bench on an executor needs a policy loaded from a file, but got one without a path.")
    path = Path(policy.path).resolve()
    return None if path == shipped_file(SHIPPED_POLICY).resolve() else str(path)


def _keep_runs(backend: RecordedBackend | LiveBackend, outcome: EpisodeOutcome) -> None:
    """Write the curves a worker's episode trained into the bench's store (the live judge reads them at the end)."""
    if outcome.record is None:
        return
    store = backend.store
    if store.task(outcome.record.key) is None:
        store.put_task(outcome.record)
    for run in outcome.runs:
        store.put_run(outcome.record.key, run.config, run.seed, run.curve, max_epochs=run.max_epochs)


def _row_key(row: dict[str, Any]) -> tuple[str, str, int, float]:
    return (row["task"], row["method"], row["seed"], float(row["budget_fte"]))


# ------------------------------------------------------------------ scoring


def _backend_and_judge(
    settings: BenchSettings, space: SearchSpace, recorded_store: Path, live_store: Path | None
) -> tuple[RecordedBackend | LiveBackend, Judge]:
    """The bench's backend and its judge; a live one writes its curves to ``live_store`` (``None``: memory)."""
    if settings.backend == "recorded":
        recorded = RecordedBackend(recorded_store, space, train_seed=settings.train_seed)
        return recorded, RecordedJudge(FullFidelity(recorded.store, space, settings.train_seed))
    live = LiveBackend(
        live_store,
        space,
        train_seed=settings.train_seed,
        data_dir=settings.data_dir,
        device=settings.device,
    )
    return live, LiveJudge(live, space, settings.train_seed, settings.device)


def _row(task: Task, result: TuneResult, budget: float, epochs: int, heldout: bool, judge: Judge) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task": task.key(),
        "dataset": task.dataset,
        "method": result.method,
        "seed": result.seed,
        "budget_fte": float(budget),
        "budget_epochs": epochs,
        "epochs_used": result.epochs_used,
        "trials": len(result.trials),
        "heldout": heldout,
        "incumbent_score": result.incumbent_score,
        "tuning_seconds": round(result.tuning_seconds, 4),
        "policy_seconds": round(result.policy_seconds, 4),
        "train_seconds": round(sum(t.seconds for t in result.trials), 3),
        "incumbent_config": result.incumbent_config.to_dict() if result.incumbent_config else None,
    }
    if result.incumbent_config is not None:
        row.update(judge.judge(task, result.incumbent_config))
    return row


def _anytime_points(task: Task, result: TuneResult, judge: Judge, space: SearchSpace) -> list[dict[str, Any]]:
    return [
        {"task": task.key(), "method": result.method, "seed": result.seed, **p, "fte": p["epochs"] / space.max_epochs}
        for p in judge.anytime(task, result)
    ]


# ------------------------------------------------------------------ plumbing


def _space(settings: BenchSettings, policy: PPOTuner) -> SearchSpace:
    if settings.space is not None:
        return load_search_space(settings.space)
    return policy.policy_space or load_search_space()


def _recorded_store(settings: BenchSettings) -> Path:
    """The recorded curves: what the recorded backend plays and the learned list learns from."""
    path = Path(settings.store) if settings.store else shipped_file(SHIPPED_STORE)
    if not path.is_file():
        raise RlhpoError(f"Curve store {str(path)!r} does not exist; record one with `rlhpo collect`.")
    return path


def _recorded_tasks(settings: BenchSettings, store_path: Path) -> list[Task]:
    """Task keys of the store, or dataset names (all their tasks)."""
    with CurveStore(store_path, readonly=True) as store:
        records = store.tasks(with_runs=True, seed=settings.train_seed)
    out: list[Task] = []
    for name in settings.tasks:
        found = [r.task for r in records if r.key == name or r.task.dataset == name]
        if not found:
            known = sorted({r.task.dataset for r in records} | {r.key for r in records})
            raise RlhpoError(f"No task {name!r} is recorded in {str(store_path)!r}.{closest(name, known)}")
        out += [t for t in found if t not in out]
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})


def _append_csv(path: Path, row: dict[str, Any], columns: Sequence[str]) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore").writerow(
            {k: _cell(row.get(k)) for k in columns}
        )


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def _parse(value: str, column: str) -> Any:
    if value == "":
        return None
    if column in ("task", "dataset", "method"):
        return value
    if column == "heldout":
        return value == "True"
    if column == "incumbent_config":
        return json.loads(value)
    number = float(value)
    return int(number) if column in ("seed", "budget_epochs", "epochs_used", "trials", "epochs") else number


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return [{k: _parse(v, k) for k, v in row.items()} for row in csv.DictReader(f)]


def _read_anytime(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / ANYTIME_FILE
    return read_csv(path) if path.is_file() else []


def _resume(run_dir: Path, settings: BenchSettings) -> dict[tuple, dict[str, Any]]:
    """The finished episodes of an interrupted bench in ``run_dir`` with the same settings."""
    from rlhpo.settings import read_yaml

    csv_path, config = run_dir / CSV_FILE, run_dir / "config.yaml"
    if not csv_path.is_file():
        return {}
    placement = set(BenchSettings.PLACEMENT)  # another --workers or executor gives the same rows
    # A setting added after the bench was written ran at its default (incumbent: best).
    written = {**BenchSettings().what(), **read_yaml(config)} if config.is_file() else {}
    if not written or {k: v for k, v in written.items() if k not in placement} != settings.what():
        raise RlhpoError(
            f"{str(run_dir)!r} holds a bench with other settings (config.yaml); "
            "pick another --out, or use the same settings."
        )
    rows = read_csv(csv_path)
    log.info("resuming the bench in %s: %d episodes done", run_dir, len(rows))
    return {(r["task"], r["method"], r["seed"], float(r["budget_fte"])): r for r in rows}
