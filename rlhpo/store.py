"""The curve store: every recorded training curve, in one SQLite file.

Three tables (WAL mode, so readers never block the writer and several processes can write):

- ``tasks(task_key, dataset, family, n_train, n_classes, meta_json, task_json)``: each task
  instance with its meta-features, so meta-training needs no data loading;
- ``runs(task_key, config_key, seed, max_epochs, config_json, diverged)``: one training run of
  one config (keyed without its epochs) on one task with one training seed;
- ``epochs(task_key, config_key, seed, epoch, train_loss, val_loss, val_accuracy,
  val_macro_f1, seconds)``: one row per completed epoch.

A run and all its epochs are written in one transaction, so a process killed at any moment
leaves either the whole run or none of it. A run trained for ``max_epochs`` answers any
fidelity up to that from its first epochs; a diverged run holds the epochs it completed, and any
fidelity beyond them is "diverged" (training is deterministic for one seed, so a longer run
would diverge at the same epoch).

One ``rlhpo collect`` at a time writes to a store: it holds :meth:`CurveStore.exclusive`.
Stores recorded on different machines are combined into a new one by :func:`merge_stores`
(``rlhpo store merge``), one run per (task, config, training seed).

Keys are stable across machines: :meth:`rlhpo.tasks.Task.key` and :meth:`rlhpo.space.Config.key`.
Each process opens its own connection (objects of this class can be pickled to worker
processes; the connection is reopened there).

Schema versions (SQLite's ``user_version``): 1 had a ``runs.status`` column, always
``'complete'``; 2 drops it. A version-1 store (the shipped meta-dataset is one) opens and reads
as it is; opening it for writing upgrades it in place.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhpo.errors import RlhpoError
from rlhpo.space import Config
from rlhpo.tasks.features import meta_features
from rlhpo.tasks.task import MODALITIES, Task, TaskData
from rlhpo.training import Curve, EpochRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 60_000
_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "seconds")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_key TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    family TEXT NOT NULL,
    n_train INTEGER NOT NULL,
    n_classes INTEGER NOT NULL,
    meta_json TEXT NOT NULL,
    task_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    task_key TEXT NOT NULL REFERENCES tasks(task_key),
    config_key TEXT NOT NULL,
    seed INTEGER NOT NULL,
    max_epochs INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    diverged INTEGER NOT NULL,
    PRIMARY KEY (task_key, config_key, seed)
);
CREATE TABLE IF NOT EXISTS epochs (
    task_key TEXT NOT NULL,
    config_key TEXT NOT NULL,
    seed INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss REAL NOT NULL,
    val_loss REAL NOT NULL,
    val_accuracy REAL NOT NULL,
    val_macro_f1 REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (task_key, config_key, seed, epoch)
);
"""


@dataclass(frozen=True)
class TaskRecord:
    """A task as the store knows it: enough for the recorded backend, with no data loaded."""

    task: Task
    family: str  # the resolved model family (the task's may be None: the dataset's default)
    n_train: int  # the number of training examples actually used
    n_classes: int
    meta_features: dict[str, float]

    @property
    def key(self) -> str:
        return self.task.key()

    @property
    def modality(self) -> str:
        """The task's modality, from its meta-features' one-hot."""
        return next(m for m in MODALITIES if self.meta_features.get(f"modality_{m}"))

    @classmethod
    def from_data(cls, data: TaskData) -> TaskRecord:
        """Describe a loaded task: the resolved family, the sizes and the meta-features.

        The task is ``data.task``, the task as loaded, so the record says the size actually used.
        """
        return cls(
            task=data.task,
            family=data.family,
            n_train=int(data.x_train.shape[0]),
            n_classes=data.n_classes,
            meta_features={k: float(v) for k, v in meta_features(data).items()},
        )


@dataclass(frozen=True)
class StoredRun:
    """One recorded run: its config (at ``max_epochs``) and the epochs it completed."""

    task_key: str
    config: Config
    seed: int
    max_epochs: int
    curve: Curve

    @property
    def horizon(self) -> float:
        """The largest fidelity this run answers: any, once it diverged; else ``max_epochs``."""
        return float("inf") if self.curve.diverged else float(self.max_epochs)

    def at(self, epochs: int) -> Curve:
        """The curve a run of ``epochs`` epochs would have given (its first ``epochs`` epochs)."""
        if epochs > self.horizon:
            raise RlhpoError(f"This run was recorded for {self.max_epochs} epochs, but {epochs} were asked.")
        # Divergence stops training before the epoch it happens in is recorded: a run that
        # completed n epochs and then diverged answers fidelity n as a normal run.
        kept = self.curve.epochs[:epochs]
        return Curve(epochs=list(kept), diverged=self.curve.diverged and len(self.curve.epochs) < epochs)


def task_to_json(task: Task) -> str:
    return json.dumps(dataclasses.asdict(task), sort_keys=True)


def task_from_json(text: str) -> Task:
    d = json.loads(text)
    if d.get("classes") is not None:
        d["classes"] = tuple(d["classes"])
    return Task(**d)


def config_to_json(config: Config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def config_from_json(text: str) -> Config:
    return Config(**json.loads(text))


class CurveStore:
    """A SQLite curve store at ``path`` (created on first use; ``":memory:"`` keeps nothing).

    Args:
        path: the database file.
        readonly: open an existing store for reading only (a missing file is an error).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = str(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        if readonly and (self.path == ":memory:" or not Path(self.path).is_file()):
            raise RlhpoError(
                f"Curve store {self.path!r} does not exist; record curves first with `rlhpo collect --store "
                f"{self.path}`, or pass the path of an existing store."
            )

    def __repr__(self) -> str:
        return f"CurveStore({self.path!r})"

    # A connection belongs to the process that opened it: pickling sends only the path.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "readonly": self.readonly}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], readonly=state["readonly"])  # type: ignore[misc]

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if not self.readonly and self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
        conn = sqlite3.connect(
            f"file:{self.path}?mode=ro" if self.readonly else self.path,
            uri=self.readonly,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
        )
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check that ``conn`` is a curve store of this rlhpo; for writing, create or upgrade it.

        A file that is not one is refused before anything is written to it.
        """
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        version, tables = self._inspect(conn)
        if version > SCHEMA_VERSION:
            raise RlhpoError(
                f"Curve store {self.path!r} has schema version {version}, newer than this rlhpo's "
                f"{SCHEMA_VERSION}; upgrade rlhpo."
            )
        if version == 0 and tables:  # every store this rlhpo made has a version
            raise self._not_a_store(f"it is an SQLite database of something else (tables {', '.join(tables)})")
        if self.readonly:
            if version == 0:
                raise self._not_a_store("it is an empty SQLite file")
            return
        if self.path != ":memory:":
            self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=FULL")  # a committed run survives a power cut too
        if version == SCHEMA_VERSION:
            return
        with self._transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # again: another process may have done it
            if version == 1:  # drop runs.status by copying: ALTER TABLE ... DROP COLUMN needs SQLite 3.35
                conn.execute("ALTER TABLE runs RENAME TO runs_v1")
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if version == 1:
                columns = "task_key, config_key, seed, max_epochs, config_json, diverged"
                conn.execute(f"INSERT INTO runs ({columns}) SELECT {columns} FROM runs_v1")
                conn.execute("DROP TABLE runs_v1")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _inspect(self, conn: sqlite3.Connection) -> tuple[int, list[str]]:
        """The file's schema version and its tables, in one read (the first: a text file fails here)."""
        try:
            conn.execute("BEGIN")  # a failure leaves it open: _open closes the connection
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            raise  # locked, or unable to open: not a question of what the file holds
        except sqlite3.DatabaseError as e:
            raise self._not_a_store(str(e)) from None
        return version, [r[0] for r in rows]

    def _not_a_store(self, why: str) -> RlhpoError:
        return RlhpoError(
            f"{self.path!r} is not an rlhpo curve store (SQLite): {why}. Pass the path of a curve store "
            "made by `rlhpo collect`, or a path that does not exist yet to record a new one."
        )

    @staticmethod
    def _retry(fn: Any, attempts: int = 50) -> Any:
        # Switching to WAL needs a moment with no other connection; busy_timeout does not cover it.
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or i == attempts - 1:
                    raise
                time.sleep(0.05 * (i + 1))
        return None

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        conn = conn or self.conn
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> CurveStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's lock file, ``<path>.lock``, for the block; fail at once if another process holds it.

        ``rlhpo collect`` holds it for its whole run, so two collects never plan and train the
        same runs. It is an advisory ``flock``: other writers (the live backend) do not take it,
        and the OS releases it when its holder exits, however it exits (Ctrl-C, ``kill -9``), so
        there is never a stale lock to remove. The file stays, holding the last holder's PID.
        """
        if self.path == ":memory:":
            yield
            return
        _ = self.conn  # open the store first: a file that is no store gets no lock file
        lock_path = self.path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
                raise RlhpoError(
                    f"Curve store {self.path!r} is in use by another `rlhpo collect` (PID {pid}, holding "
                    f"{lock_path}); wait for it to finish, or pass another --store."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ---------------------------------------------------------------- tasks

    def put_task(self, record: TaskRecord) -> None:
        """Record a task and its meta-features (replacing what was there for its key)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.key,
                    record.task.dataset,
                    record.family,
                    record.n_train,
                    record.n_classes,
                    json.dumps(record.meta_features, sort_keys=True),
                    task_to_json(record.task),
                ),
            )

    def task(self, task_key: str) -> TaskRecord | None:
        row = self.conn.execute(
            "SELECT family, n_train, n_classes, meta_json, task_json FROM tasks WHERE task_key = ?", (task_key,)
        ).fetchone()
        return _task_record(row) if row else None

    def tasks(self, *, with_runs: bool = False, seed: int | None = None) -> list[TaskRecord]:
        """All recorded tasks, by key; ``with_runs`` keeps those with a run (for ``seed``, if given)."""
        sql = "SELECT family, n_train, n_classes, meta_json, task_json FROM tasks"
        args: tuple[Any, ...] = ()
        if with_runs:
            sql += " WHERE task_key IN (SELECT task_key FROM runs" + (" WHERE seed = ?)" if seed is not None else ")")
            args = (seed,) if seed is not None else ()
        rows = self.conn.execute(sql + " ORDER BY task_key", args).fetchall()
        return [_task_record(r) for r in rows]

    # ----------------------------------------------------------------- runs

    def put_run(self, task_key: str, config: Config, seed: int, curve: Curve, *, max_epochs: int | None = None) -> bool:
        """Record a run and all its epochs in one transaction; return whether it was written.

        ``max_epochs`` is the number of epochs the run was asked for (default ``config.epochs``).
        A run already recorded that answers as many epochs is kept (the first writer wins); a
        shorter one is replaced.
        """
        max_epochs = max_epochs or config.epochs
        if len(curve.epochs) > max_epochs or (not curve.diverged and len(curve.epochs) != max_epochs):
            raise RlhpoError(
                f"A run asked for {max_epochs} epochs must hold {max_epochs} epochs unless it diverged, "
                f"but got {len(curve.epochs)} (diverged={curve.diverged})."
            )
        key = config.key()
        horizon = float("inf") if curve.diverged else max_epochs
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM tasks WHERE task_key = ?", (task_key,)).fetchone() is None:
                raise RlhpoError(f"Task {task_key!r} is not in the store {self.path!r}; record it with put_task first.")
            old = conn.execute(
                "SELECT max_epochs, diverged FROM runs WHERE task_key = ? AND config_key = ? AND seed = ?",
                (task_key, key, seed),
            ).fetchone()
            if old is not None:
                if (float("inf") if old[1] else old[0]) >= horizon:
                    return False
                conn.execute(
                    "DELETE FROM epochs WHERE task_key = ? AND config_key = ? AND seed = ?", (task_key, key, seed)
                )
            conn.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                (task_key, key, seed, max_epochs, config_to_json(config.with_epochs(max_epochs)), int(curve.diverged)),
            )
            conn.executemany(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(task_key, key, seed, e.epoch, *(float(getattr(e, m)) for m in _METRICS)) for e in curve.epochs],
            )
        return True

    def has_run(self, task_key: str, config: Config, seed: int, epochs: int | None = None) -> bool:
        """Whether a recorded run answers ``config`` at ``epochs`` (default ``config.epochs``)."""
        run = self.conn.execute(
            "SELECT max_epochs, diverged FROM runs WHERE task_key = ? AND config_key = ? AND seed = ?",
            (task_key, config.key(), seed),
        ).fetchone()
        if run is None:
            return False
        max_epochs, diverged = run
        return bool(diverged) or max_epochs >= (epochs or config.epochs)

    def get_run(self, task_key: str, config: Config | str, seed: int) -> StoredRun | None:
        """The recorded run of a config (or config key) on a task with a seed, or ``None``."""
        key = config if isinstance(config, str) else config.key()
        runs = self.runs(task_key, seed, config_key=key)
        return runs[0] if runs else None

    def runs(self, task_key: str, seed: int, *, config_key: str | None = None) -> list[StoredRun]:
        """All recorded runs on a task for one training seed, ordered by config key."""
        where = "r.task_key = ? AND r.seed = ?" + (" AND r.config_key = ?" if config_key else "")
        args: tuple[Any, ...] = (task_key, seed, config_key) if config_key else (task_key, seed)
        # One read transaction, so the runs and their epochs are one consistent snapshot.
        conn = self.conn
        conn.execute("BEGIN")
        try:
            heads = conn.execute(
                f"SELECT r.config_key, r.max_epochs, r.config_json, r.diverged FROM runs r WHERE {where} "
                "ORDER BY r.config_key",
                args,
            ).fetchall()
            rows = conn.execute(
                f"SELECT e.config_key, e.epoch, {', '.join('e.' + m for m in _METRICS)} FROM epochs e "
                f"JOIN runs r USING (task_key, config_key, seed) WHERE {where} ORDER BY e.config_key, e.epoch",
                args,
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        epochs: dict[str, list[EpochRecord]] = {}
        for ck, ep, *metrics in rows:
            epochs.setdefault(ck, []).append(EpochRecord(ep, *metrics))
        return [
            StoredRun(task_key, config_from_json(cj), seed, me, Curve(epochs=epochs.get(ck, []), diverged=bool(dv)))
            for ck, me, cj, dv in heads
        ]

    def family_runs(self, family: str) -> list[tuple[str, Config, int]]:
        """``(task_key, config, seed)`` of every run that trained ``family`` (the config's family, else
        the task's), each config at the epochs the run was asked for."""
        rows = self.conn.execute(
            "SELECT r.task_key, r.seed, r.max_epochs, r.config_json, t.family "
            "FROM runs r JOIN tasks t USING (task_key) ORDER BY r.task_key, r.config_key, r.seed"
        ).fetchall()
        runs = [(tk, config_from_json(cj).with_epochs(me), sd, tf) for tk, sd, me, cj, tf in rows]
        return [(tk, config, sd) for tk, config, sd, tf in runs if (config.family or tf) == family]

    def drop_family(self, family: str) -> int:
        """Delete every run (and its epochs) that trained ``family``: the config's family, else the task's.

        For when a family's model changes and its recorded curves no longer describe it: collect
        then records those runs again. Returns the number of runs deleted; one transaction.
        """
        with self._transaction() as conn:
            keys = [(tk, config.key(), sd) for tk, config, sd in self.family_runs(family)]
            for table in ("epochs", "runs"):
                conn.executemany(f"DELETE FROM {table} WHERE task_key = ? AND config_key = ? AND seed = ?", keys)
        return len(keys)

    def count(self) -> dict[str, int]:
        """Number of rows per table."""
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("tasks", "runs", "epochs")}

    def size_mb(self) -> float:
        """The store's size on disk in MB (10^6 bytes): its file and, while writers are at work, its WAL."""
        if self.path == ":memory:":
            return 0.0
        files = (Path(self.path), Path(self.path + "-wal"))
        return sum(f.stat().st_size for f in files if f.is_file()) / 1e6

    # --------------------------------------------------------------- export

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the store as Parquet for analysis: ``tasks``, ``runs`` and ``curves``.

        ``curves.parquet`` is one row per epoch joined with its run and task (dataset, family,
        n_train, n_classes, the config's hyperparameters as columns, and the normalised score).
        Returns the paths written.
        """
        import pandas as pd

        from rlhpo.metrics import normalised_score

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        conn = self.conn
        conn.execute("BEGIN")
        try:
            tasks = pd.read_sql_query("SELECT * FROM tasks ORDER BY task_key", conn)
            # Named columns: a version-1 store also has runs.status.
            runs = pd.read_sql_query(
                "SELECT task_key, config_key, seed, max_epochs, config_json, diverged FROM runs "
                "ORDER BY task_key, config_key, seed",
                conn,
            )
            epochs = pd.read_sql_query("SELECT * FROM epochs ORDER BY task_key, config_key, seed, epoch", conn)
        finally:
            conn.execute("COMMIT")
        meta = pd.DataFrame([json.loads(m) for m in tasks["meta_json"]], index=tasks.index).add_prefix("meta_")
        tasks_flat = pd.concat([tasks.drop(columns=["meta_json"]), meta], axis=1)
        configs = pd.DataFrame([json.loads(c) for c in runs["config_json"]], index=runs.index)
        runs_flat = pd.concat([runs.drop(columns=["config_json"]), configs], axis=1)
        runs_flat["diverged"] = runs_flat["diverged"].astype(bool)
        curves = epochs.merge(runs_flat, on=["task_key", "config_key", "seed"]).merge(
            tasks[["task_key", "dataset", "family", "n_train", "n_classes"]], on="task_key"
        )
        curves["val_score"] = [normalised_score(a, int(k)) for a, k in zip(curves["val_accuracy"], curves["n_classes"])]
        paths = {}
        for name, frame in (("tasks", tasks_flat), ("runs", runs_flat), ("curves", curves)):
            paths[name] = out / f"{name}.parquet"
            frame.to_parquet(paths[name], index=False)
        log.info("exported %s to %s", {k: len(v) for k, v in (("runs", runs), ("epochs", epochs))}, out)
        return paths


def _task_record(row: Sequence[Any]) -> TaskRecord:
    family, n_train, n_classes, meta_json, task_json = row
    meta: Mapping[str, float] = json.loads(meta_json)
    return TaskRecord(
        task=task_from_json(task_json),
        family=family,
        n_train=int(n_train),
        n_classes=int(n_classes),
        meta_features={k: float(v) for k, v in meta.items()},
    )


def export_store(store_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Export the store at ``store_path`` to Parquet files in ``out_dir`` (``rlhpo store export``)."""
    with CurveStore(store_path, readonly=True) as store:
        return store.export(out_dir)


def store_rows(path: str | Path) -> tuple[list, list]:
    """Every row of a store but the wall-clock seconds: what two collects of the same runs share.

    Runs in (task, config, seed) order, then their epochs; the one field left out, ``seconds``,
    is the only one that differs between two trainings of one run.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        runs = conn.execute("SELECT * FROM runs ORDER BY task_key, config_key, seed").fetchall()
        epochs = conn.execute(
            "SELECT task_key, config_key, seed, epoch, train_loss, val_loss, val_accuracy, val_macro_f1 FROM epochs "
            "ORDER BY task_key, config_key, seed, epoch"
        ).fetchall()
    finally:
        conn.close()
    return runs, epochs


def stored_runs(path: str | Path) -> int:
    """How many runs a store holds, read while another process may be writing it; 0 before it exists."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:  # not created yet
        return 0
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.OperationalError:  # created, but its tables not yet
        return 0
    finally:
        conn.close()


# ---------------------------------------------------------------- merge

# Two trainings of one run agree to float noise (another BLAS, another CPU): figures this close are one figure.
_REL_TOL = 1e-6
_ABS_TOL = 1e-9
_TASK_COLUMNS = ("task_key", "dataset", "family", "n_train", "n_classes", "meta_json", "task_json")
_RUN_COLUMNS = ("config_key", "seed", "max_epochs", "config_json", "diverged")  # named: version 1 also has status
_FIGURES = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")  # seconds differ between any two trainings


@dataclass
class MergeSource:
    """What one source store gave a merge.

    ``runs`` counts the runs written from this source, ``replaced`` of them in place of a
    shorter run an earlier source gave; ``duplicates`` the runs the output already held as far
    (the earlier one kept); ``conflicts`` the runs whose epochs differ beyond float noise from
    the run already held under their key (either of the above).
    """

    path: str
    schema_version: int
    tasks: int = 0
    runs: int = 0
    replaced: int = 0
    duplicates: int = 0
    conflicts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MergeConflict:
    """One run key held by two sources whose figures differ: which one was kept, and the first difference."""

    task_key: str
    config_key: str
    seed: int
    kept: str  # the path of the source whose run the output holds
    other: str
    difference: str

    def line(self) -> str:
        return (
            f"conflict {self.task_key} config {self.config_key} seed {self.seed}: {self.difference}; "
            f"kept {self.kept}'s, not {self.other}'s"
        )


@dataclass
class MergeReport:
    """What :func:`merge_stores` wrote: per source, and the output's rows and size after ``VACUUM``."""

    out: str
    sources: list[MergeSource]
    conflicts: list[MergeConflict] = field(default_factory=list)
    tasks: int = 0
    runs: int = 0
    epochs: int = 0
    size_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "tasks": self.tasks,
            "runs": self.runs,
            "epochs": self.epochs,
            "size_mb": round(self.size_mb, 3),
            "sources": [s.to_dict() for s in self.sources],
            "conflicts": [dataclasses.asdict(c) for c in self.conflicts],
        }

    def lines(self, max_conflicts: int = 10) -> list[str]:
        out = [
            f"{s.path} (schema {s.schema_version}): took {s.tasks} tasks and {s.runs} runs ({s.replaced} "
            f"replacing a shorter run); {s.duplicates} duplicates, {s.conflicts} conflicts"
            for s in self.sources
        ]
        out.append(
            f"merged into {self.out}: {self.tasks} tasks, {self.runs} runs, {self.epochs} epochs, "
            f"{self.size_mb:.1f} MB; {len(self.conflicts)} conflicts"
        )
        out += [c.line() for c in self.conflicts[:max_conflicts]]
        if len(self.conflicts) > max_conflicts:
            out.append(f"... and {len(self.conflicts) - max_conflicts} more conflicts (--json lists them all)")
        return out


def merge_stores(sources: Sequence[str | Path], out: str | Path) -> MergeReport:
    """Merge curve stores, recorded on different machines or sessions, into the new store ``out``.

    Tasks are keyed by task key, runs by (task key, config key, training seed). A task held by
    two sources must be described alike (dataset, family, sizes, meta-features and task, to float
    noise); otherwise they hold different data under one key, and the merge stops with an error
    naming the task. Of two runs under one key the output keeps the one that answers more
    epochs (a longer ``max_epochs``, or diverged), and of two as long the first source's: the
    other counts as a duplicate, and as a conflict too if its figures differ beyond float noise.

    Sources (schema version 1 or 2) are only read; ``out`` is written at the current schema, in
    one transaction under :meth:`CurveStore.exclusive`, then vacuumed. It must not exist: a merge
    never overwrites a store. If the merge fails, nothing is left at ``out``. A store merged
    with itself gives its own rows.
    """
    if not sources:
        raise RlhpoError("A merge needs at least one source store, but got none.")
    out = Path(out)
    inputs = [CurveStore(s, readonly=True) for s in sources]  # a missing source fails here, before out exists
    try:
        versions = [s.conn.execute("PRAGMA user_version").fetchone()[0] for s in inputs]  # and a foreign file here
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # ours from now on, or an error
        except FileExistsError:
            raise RlhpoError(
                f"The merge output {str(out)!r} already exists; a merge writes a new store and never overwrites "
                "one. Pass a path that does not exist yet, or delete that file first."
            ) from None
        report = MergeReport(str(out), [MergeSource(s.path, v) for s, v in zip(inputs, versions)])
        try:
            _merge_into(inputs, out, report)
        except BaseException:
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{out}{suffix}").unlink(missing_ok=True)
            raise
    finally:
        for s in inputs:
            s.close()
    log.info("merged %d stores into %s: %d runs, %d conflicts", len(inputs), out, report.runs, len(report.conflicts))
    return report


def _merge_into(inputs: Sequence[CurveStore], out: Path, report: MergeReport) -> None:
    with CurveStore(out) as dest, dest.exclusive():
        # Per key, who holds it: tasks (row, source index); runs (horizon, source index).
        tasks: dict[str, tuple[tuple[Any, ...], int]] = {}
        runs: dict[tuple[str, str, int], tuple[float, int]] = {}
        with dest._transaction() as conn:
            for i, (src, got) in enumerate(zip(inputs, report.sources)):
                src.conn.execute("BEGIN")  # one snapshot of each source, even while a collect writes it
                try:
                    _merge_source(src, i, conn, tasks, runs, inputs, got, report)
                finally:
                    src.conn.execute("COMMIT")
        conn.execute("VACUUM")  # the output was written once, but its size should be what it holds
        counts = dest.count()
    report.tasks, report.runs, report.epochs = counts["tasks"], counts["runs"], counts["epochs"]
    report.size_mb = dest.size_mb()  # closed: the WAL is checkpointed into the file


def _merge_source(
    src: CurveStore,
    index: int,
    conn: sqlite3.Connection,
    tasks: dict[str, tuple[tuple[Any, ...], int]],
    runs: dict[tuple[str, str, int], tuple[float, int]],
    inputs: Sequence[CurveStore],
    got: MergeSource,
    report: MergeReport,
) -> None:
    task_rows = src.conn.execute(f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks ORDER BY task_key").fetchall()
    for row in task_rows:
        held = tasks.get(row[0])
        if held is None:
            conn.execute(f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({', '.join('?' * 7)})", row)
            tasks[row[0]] = (tuple(row), index)
            got.tasks += 1
        elif differ := _task_differences(held[0], row):
            raise RlhpoError(
                f"Task {row[0]!r} is described differently in {inputs[held[1]].path!r} and {src.path!r} "
                f"({', '.join(differ)} differ): they hold different data under one key and cannot be merged. "
                "Merge stores whose task keys mean the same data (recorded by the same rlhpo version)."
            )
    keys = [r[0] for r in src.conn.execute("SELECT task_key FROM tasks UNION SELECT task_key FROM runs ORDER BY 1")]
    for task_key in keys:
        epochs: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        for row in src.conn.execute(
            f"SELECT config_key, seed, epoch, {', '.join(_METRICS)} FROM epochs WHERE task_key = ? "
            "ORDER BY config_key, seed, epoch",
            (task_key,),
        ):
            epochs.setdefault((row[0], row[1]), []).append(row[2:])
        for config_key, seed, max_epochs, config_json, diverged in src.conn.execute(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE task_key = ? ORDER BY config_key, seed", (task_key,)
        ).fetchall():
            key = (task_key, config_key, seed)
            mine = epochs.get((config_key, seed), [])
            horizon = float("inf") if diverged else float(max_epochs)
            held = runs.get(key)
            if held is not None:
                theirs_diverged, theirs = _held_run(conn, key)
                difference = _run_difference(mine, bool(diverged), theirs, theirs_diverged)
                longer = horizon > held[0]
                if difference:
                    got.conflicts += 1
                    kept, other = (src.path, inputs[held[1]].path) if longer else (inputs[held[1]].path, src.path)
                    report.conflicts.append(MergeConflict(task_key, config_key, seed, kept, other, difference))
                if not longer:
                    got.duplicates += 1
                    continue
                conn.execute("DELETE FROM epochs WHERE task_key = ? AND config_key = ? AND seed = ?", key)
                conn.execute("DELETE FROM runs WHERE task_key = ? AND config_key = ? AND seed = ?", key)
                got.replaced += 1
            conn.execute(
                f"INSERT INTO runs (task_key, {', '.join(_RUN_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                (task_key, config_key, seed, max_epochs, config_json, diverged),
            )
            conn.executemany(
                f"INSERT INTO epochs (task_key, config_key, seed, epoch, {', '.join(_METRICS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(task_key, config_key, seed, *e) for e in mine],
            )
            runs[key] = (horizon, index)
            got.runs += 1


def _held_run(conn: sqlite3.Connection, key: tuple[str, str, int]) -> tuple[bool, list[tuple[Any, ...]]]:
    """The run the output holds under ``key``: whether it diverged, and its epochs as a source gives them."""
    diverged = conn.execute(
        "SELECT diverged FROM runs WHERE task_key = ? AND config_key = ? AND seed = ?", key
    ).fetchone()[0]
    rows = conn.execute(
        f"SELECT epoch, {', '.join(_METRICS)} FROM epochs WHERE task_key = ? AND config_key = ? AND seed = ? "
        "ORDER BY epoch",
        key,
    ).fetchall()
    return bool(diverged), rows


def _run_difference(
    mine: list[tuple[Any, ...]], mine_diverged: bool, theirs: list[tuple[Any, ...]], theirs_diverged: bool
) -> str:
    """How two recordings of one run disagree ('' if they do not): on an epoch both hold, or where one diverged.

    Epoch rows are ``(epoch, *_METRICS)``; seconds are left out.
    """
    for a, b in zip(mine, theirs):
        for name, x, y in zip(_FIGURES, a[1:], b[1:]):
            if not math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=_ABS_TOL):
                return f"epoch {a[0]} {name} {x!r} vs {y!r}"
    # Training is deterministic: a run that diverged after n epochs cannot have trained further elsewhere.
    if mine_diverged and len(theirs) > len(mine):
        return f"diverged after epoch {len(mine)}, but trained {len(theirs)} epochs in the other"
    if theirs_diverged and len(mine) > len(theirs):
        return f"trained {len(mine)} epochs, but diverged after epoch {len(theirs)} in the other"
    return ""


def _task_differences(a: Sequence[Any], b: Sequence[Any]) -> list[str]:
    """The columns in which two rows of one task differ (the JSON ones parsed, numbers to float noise)."""
    names = {"meta_json": "meta-features", "task_json": "task"}
    out = []
    for name, x, y in zip(_TASK_COLUMNS[1:], a[1:], b[1:]):
        if name in names:
            x, y = json.loads(x), json.loads(y)  # version 1 wrote them without sorted keys
        if not _same(x, y):
            out.append(names.get(name, name))
    return out


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if type(x) in (int, float) and type(y) in (int, float):  # not bool: True is no number here
        return math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
    return x == y
