"""``rlhpo bench``: every tuner on every task, seed and budget, scored by full-fidelity regret.

Protocol (``../shared/DESIGN.md``, "Benchmark protocol"):

- Every method plays the same episodes: each task, each evaluation seed (``first_seed`` on,
  disjoint from meta-training's seeds 0..n_envs) and each budget, in its own episode (so a
  method that plans by its budget, like top-k or the policy, sees the budget it is scored at).
- **Regret** is the best full-fidelity score known for the task less the full-fidelity score of
  the incumbent config, in normalised accuracy (0 at chance, 1 perfect; see HPOEnv). Full
  fidelity is the config trained at the largest epochs choice: what the user gets when the
  chosen config is retrained. Recorded backend: both come from the store (every recorded run
  reaches full fidelity). Live backend: each incumbent is retrained at full fidelity with test
  metrics, and the best known is the best full-fidelity validation score of any config trained
  on the task in this bench (its store).
- The **anytime curve** of an episode is the regret of its incumbent after each trial, against
  the epochs spent, read from the episodes at the largest budget. Its **area** is the mean
  regret over log-budget between the smallest and the largest budget.
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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhpo.agents.base import TuneResult, run_tuner
from rlhpo.agents.bench_report import ANYTIME_FILE, CSV_FILE, PLOT_FILE, markdown, plot, summarise
from rlhpo.agents.evaluate import FullFidelity
from rlhpo.agents.ppo import PPOTuner
from rlhpo.agents.settings import SHIPPED_STORE, budget_epochs, shipped_asset
from rlhpo.agents.tuners import METHODS, make_tuners, policy_exclusions
from rlhpo.envs.backends import BACKENDS, make_backend
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError, closest, unknown
from rlhpo.runs import make_run_dir, write_atomic, write_run_files, write_summary
from rlhpo.space import Config, SearchSpace, load_search_space
from rlhpo.store import CurveStore
from rlhpo.tasks.task import Task

log = logging.getLogger(__name__)

MARKDOWN_FILE = "bench.md"
STORE_FILE = "store.sqlite"  # live backend: every curve trained in the bench
COLUMNS = (
    "task", "dataset", "method", "seed", "budget_fte", "budget_epochs", "epochs_used", "trials", "heldout",
    "incumbent_score", "full_fidelity_score", "regret", "test_accuracy", "test_macro_f1", "test_loss",
    "tuning_seconds", "policy_seconds", "incumbent_config",
)  # fmt: skip
ANYTIME_COLUMNS = ("task", "method", "seed", "epochs", "fte", "regret")


@dataclass(frozen=True)
class BenchSettings:
    """What ``rlhpo bench`` runs (its options)."""

    tasks: tuple[str, ...] = ("ag_news",)
    methods: tuple[str, ...] = METHODS
    budgets: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)  # full-training equivalents
    seeds: int = 5
    first_seed: int = 10000
    backend: str = "recorded"
    store: str | None = None  # recorded: the curve store (default: the shipped meta-dataset)
    policy: str | None = None  # default: the shipped policy
    space: str | None = None  # default: the policy's space
    train_seed: int = 0
    reference_budget: float = 3.0
    family: str | None = None  # live: the model family (default: the dataset's)
    n_train: int | None = None  # live: training-set size (default: the whole train split)
    data_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise unknown("backend", self.backend, BACKENDS)
        for m in self.methods:
            if m not in METHODS:
                raise unknown("method", m, METHODS)
        if not self.tasks or not self.methods or not self.budgets or self.seeds < 1:
            raise RlhpoError("bench needs at least one task, method and budget, and --seeds of at least 1.")
        if any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise RlhpoError(f"Budgets must be positive numbers of full-training equivalents, but got {self.budgets}.")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def run_bench(
    settings: BenchSettings,
    out_dir: str | Path | None = None,
    *,
    argv: list[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the bench into ``out_dir`` (default: a new run folder) and return its summary.

    An ``out_dir`` that holds a ``bench.csv`` of the same settings is resumed: its episodes are
    kept and only the missing ones run. ``progress`` is called with each new row.
    """
    # The policy defines the search space (its own) and the held-out datasets, even when it does not play.
    policy = PPOTuner.load(settings.policy)
    space = _space(settings, policy)
    excluded = policy_exclusions(policy)
    recorded_store = _recorded_store(settings)
    if settings.backend == "recorded":
        tasks = _tasks(settings, recorded_store)  # a bad task name fails before a run folder exists
    run_dir = Path(out_dir) if out_dir is not None else make_run_dir("bench", "-".join(settings.tasks), 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = _resume(run_dir, settings)
    write_run_files(run_dir, settings.to_dict(), argv)
    if settings.backend == "live":
        store_path = run_dir / STORE_FILE
        tasks = _tasks(settings, store_path)
    else:
        store_path = recorded_store
    tuners = make_tuners(
        settings.methods,
        space=space,
        policy=policy,
        store=recorded_store,
        train_seed=settings.train_seed,
        exclude_datasets=excluded,
    )
    judge = _Judge(settings, space, store_path)
    # One backend for every episode: the recorded runs are loaded, or the live data preprocessed, once.
    backend = make_backend(
        settings.backend,
        store_path,
        space,
        tasks=tasks,
        train_seed=settings.train_seed,
        data_dir=settings.data_dir,
        device=settings.device,
    )
    started = time.perf_counter()
    rows = list(done.values())
    largest = max(settings.budgets)
    # Anytime points of an episode whose row was never written (interrupted in between) are redone.
    finished = {(k[0], k[1], k[2]) for k in done if k[3] == float(largest)}
    anytime = [p for p in _read_anytime(run_dir) if (p["task"], p["method"], p["seed"]) in finished] if done else []
    csv_path = run_dir / CSV_FILE
    if not done:
        _write_csv(csv_path, [], COLUMNS)
    _write_csv(run_dir / ANYTIME_FILE, anytime, ANYTIME_COLUMNS)
    for task in tasks:
        for tuner in tuners:
            for budget in settings.budgets:
                epochs = budget_epochs(budget, space)
                env = HPOEnv(backend, space=space, budget_epochs=epochs, train_seed=settings.train_seed)
                try:
                    for seed in settings.seed_list:
                        key = (task.key(), tuner.name, seed, float(budget))
                        if key in done:
                            continue
                        result = run_tuner(tuner, env, seed, task=task if settings.backend == "live" else task.key())
                        row = judge.row(task, result, budget, epochs, task.dataset in excluded)
                        if budget == largest and settings.backend == "recorded":
                            curve = judge.anytime(task, result)
                            anytime += curve
                            for point in curve:
                                _append_csv(run_dir / ANYTIME_FILE, point, ANYTIME_COLUMNS)
                        rows.append(row)  # the row last: a resumed bench redoes an episode without one
                        _append_csv(csv_path, row, COLUMNS)
                        if progress is not None:
                            progress(row)
                finally:
                    env.close()  # closes the store connection; the backend reopens it when next used
    if settings.backend == "live":
        judge.finish_live(rows)
        _write_csv(csv_path, rows, COLUMNS)
    report = summarise(rows, anytime, settings)
    write_atomic(run_dir / MARKDOWN_FILE, markdown(report, settings, run_dir))
    plot(report, settings, run_dir / PLOT_FILE)
    summary = {
        "command": "bench",
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


# ------------------------------------------------------------------ scoring


class _Judge:
    """Full-fidelity scores and regrets: from the store (recorded) or by retraining (live)."""

    def __init__(self, settings: BenchSettings, space: SearchSpace, store_path: Path) -> None:
        self.settings = settings
        self.space = space
        self.store_path = store_path
        self.oracle = (
            FullFidelity(CurveStore(store_path, readonly=True), space, settings.train_seed)
            if settings.backend == "recorded"
            else None
        )
        self._retrained: dict[tuple[str, str], dict[str, float]] = {}
        self._data: dict[str, Any] = {}

    def row(self, task: Task, result: TuneResult, budget: float, epochs: int, heldout: bool) -> dict[str, Any]:
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
            "incumbent_config": Config(**result.incumbent_config).to_dict() if result.incumbent_config else None,
        }
        if self.oracle is not None:
            row["full_fidelity_score"] = self.oracle.score(task.key(), result.incumbent_config)
            row["regret"] = self.oracle.regret(task.key(), result.incumbent_config)
        elif result.incumbent_config is not None:
            row.update(self._retrain(task, Config(**result.incumbent_config)))
        return row

    def anytime(self, task: Task, result: TuneResult) -> list[dict[str, Any]]:
        """The episode's regret after each trial: (epochs spent, regret of the incumbent then)."""
        assert self.oracle is not None
        best = self.oracle.best(task.key())
        points = [{"epochs": 0, "regret": best}]  # no incumbent: the score of chance, 0
        for t in result.trials:
            points.append({"epochs": t["budget_used"], "regret": self.oracle.regret(task.key(), t["incumbent_config"])})
        return [
            {
                "task": task.key(),
                "method": result.method,
                "seed": result.seed,
                **p,
                "fte": p["epochs"] / self.space.max_epochs,
            }
            for p in points
        ]

    def _retrain(self, task: Task, config: Config) -> dict[str, float]:
        from rlhpo.envs.backends import normalised_scores
        from rlhpo.tasks import load_task
        from rlhpo.training import train

        config = config.with_epochs(self.space.max_epochs)
        slot = (task.key(), config.key())
        if slot not in self._retrained:
            if task.key() not in self._data:
                self._data[task.key()] = load_task(task, data_dir=self.settings.data_dir)
            data = self._data[task.key()]
            curve = train(data, config, seed=self.settings.train_seed, device=self.settings.device, evaluate_test=True)
            val = curve.epochs[-1].val_accuracy if curve.epochs else 1.0 / data.n_classes
            assert curve.test is not None
            self._retrained[slot] = {
                "full_fidelity_score": float(normalised_scores([val], data.n_classes)[0]),
                "test_accuracy": curve.test.accuracy,
                "test_macro_f1": curve.test.macro_f1,
                "test_loss": curve.test.loss,
            }
        return dict(self._retrained[slot])

    def finish_live(self, rows: list[dict[str, Any]]) -> None:
        """Regret against the best full-fidelity score of any config trained on the task in this bench."""
        store = CurveStore(self.store_path, readonly=True)
        oracle = FullFidelity(store, self.space, self.settings.train_seed)
        for task_key in {r["task"] for r in rows}:
            known = [
                r["full_fidelity_score"]
                for r in rows
                if r["task"] == task_key and r.get("full_fidelity_score") is not None
            ]
            recorded = oracle.best(task_key)
            best = max(known + ([recorded] if recorded is not None else []), default=None)
            for r in rows:
                if r["task"] == task_key and r.get("full_fidelity_score") is not None and best is not None:
                    r["regret"] = best - float(r["full_fidelity_score"])
        store.close()


# ------------------------------------------------------------------ plumbing


def _space(settings: BenchSettings, policy: PPOTuner) -> SearchSpace:
    if settings.space is not None:
        return load_search_space(settings.space)
    if policy.policy_space is not None:
        return policy.policy_space
    return load_search_space()


def _recorded_store(settings: BenchSettings) -> Path:
    """The recorded curves: what the recorded backend plays and the learned list learns from."""
    path = Path(settings.store) if settings.store else shipped_asset(SHIPPED_STORE)
    if not path.is_file():
        raise RlhpoError(f"Curve store {str(path)!r} does not exist; record one with `rlhpo collect`.")
    return path


def _tasks(settings: BenchSettings, store_path: Path) -> list[Task]:
    """Recorded: task keys of the store, or dataset names (all their tasks). Live: datasets."""
    if settings.backend == "live":
        return [Task(name, family=settings.family, n_train=settings.n_train) for name in settings.tasks]
    store = CurveStore(store_path, readonly=True)
    try:
        records = store.tasks(with_runs=True, seed=settings.train_seed)
    finally:
        store.close()
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
    if not config.is_file() or read_yaml(config) != settings.to_dict():
        raise RlhpoError(
            f"{str(run_dir)!r} holds a bench with other settings (config.yaml); "
            "pick another --out, or use the same settings."
        )
    rows = read_csv(csv_path)
    log.info("resuming the bench in %s: %d episodes done", run_dir, len(rows))
    return {(r["task"], r["method"], r["seed"], float(r["budget_fte"])): r for r in rows}
