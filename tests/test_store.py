"""The curve store: round trips, fidelities, divergence, concurrent writers, export, old and foreign files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import rlhpo
from rlhpo.collect import design_configs
from rlhpo.errors import RlhpoError
from rlhpo.space import Config, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks import load_task
from rlhpo.tasks.features import META_FEATURES
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

SPACE = load_search_space()
TASK = Task("digits", family="mlp", n_train=200)
SHIPPED = Path(rlhpo.__file__).parent / "assets" / "meta_dataset.sqlite"


def record(task: Task = TASK) -> TaskRecord:
    meta = {f: round(0.05 * i, 3) for i, f in enumerate(META_FEATURES)}
    return TaskRecord(task=task, family="mlp", n_train=160, n_classes=10, meta_features=meta)


def curve(n: int, *, diverged: bool = False, offset: float = 0.0) -> Curve:
    return Curve(
        epochs=[
            EpochRecord(e, 2.0 / e + offset, 2.1 / e, 0.1 + 0.09 * e + offset, 0.08 * e, 0.01 * e)
            for e in range(1, n + 1)
        ],
        diverged=diverged,
    )


def configs(n: int) -> list[Config]:
    return design_configs(SPACE, n, seed=0)


@pytest.fixture
def store(tmp_path):
    s = CurveStore(tmp_path / "store.sqlite")
    s.put_task(record())
    yield s
    s.close()


def test_a_run_round_trips_and_answers_every_smaller_fidelity(store):
    config = SPACE.default
    assert store.put_run(TASK.key(), config, 0, curve(9))
    run = store.get_run(TASK.key(), config.with_epochs(1), 0)  # the key leaves epochs out
    assert run is not None and run.max_epochs == 9 and run.config == config
    assert run.curve == curve(9)
    assert run.at(3).epochs == curve(9).epochs[:3] and not run.at(3).diverged
    assert store.has_run(TASK.key(), config.with_epochs(3), 0)
    assert not store.has_run(TASK.key(), config, 1)  # another training seed
    assert store.get_run(TASK.key(), config, 1) is None


def test_a_shorter_run_is_replaced_by_a_longer_one_and_never_the_reverse(store):
    config = SPACE.default
    assert store.put_run(TASK.key(), config, 0, curve(3), max_epochs=3)
    assert not store.has_run(TASK.key(), config, 0, 9)
    assert store.put_run(TASK.key(), config, 0, curve(9, offset=0.01))
    assert not store.put_run(TASK.key(), config, 0, curve(3), max_epochs=3)  # kept: it answers more
    assert store.get_run(TASK.key(), config, 0).curve == curve(9, offset=0.01)
    assert store.count() == {"tasks": 1, "runs": 1, "epochs": 9}


def test_a_diverged_run_answers_beyond_its_last_epoch_as_diverged(store):
    config = SPACE.default
    store.put_run(TASK.key(), config, 0, curve(2, diverged=True), max_epochs=3)
    run = store.get_run(TASK.key(), config, 0)
    assert store.has_run(TASK.key(), config, 0, 9)  # deterministic: a 9-epoch run diverges too
    assert not run.at(1).diverged and len(run.at(2).epochs) == 2 and not run.at(2).diverged
    assert run.at(9).diverged and len(run.at(9).epochs) == 2


def test_bad_runs_are_refused_with_a_clear_error(store):
    with pytest.raises(RlhpoError, match="must hold 9 epochs"):
        store.put_run(TASK.key(), SPACE.default, 0, curve(4))
    with pytest.raises(RlhpoError, match="not in the store"):
        store.put_run("mnist/cnn/nall/call/s0", SPACE.default, 0, curve(9))
    assert store.count()["runs"] == 0


def test_a_missing_or_foreign_store_opened_for_reading_is_a_clear_error(tmp_path):
    with pytest.raises(RlhpoError, match="does not exist.*rlhpo collect"):
        CurveStore(tmp_path / "nope.sqlite", readonly=True)
    (tmp_path / "text.sqlite").write_text("not a database, just some text" * 10)
    with pytest.raises(RlhpoError, match=r"is not an rlhpo curve store \(SQLite\): file is not a database"):
        CurveStore(tmp_path / "text.sqlite", readonly=True).count()
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(RlhpoError, match=r"is not an rlhpo curve store .*something else \(tables t\)"):
        CurveStore(tmp_path / "other.sqlite", readonly=True).count()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_no_curve_store_is_refused_by_name_and_left_as_it_was(tmp_path, readonly):
    text = tmp_path / "README.md"
    text.write_text("# rlhpo\n\nMeta-learned hyperparameter tuning.\n")
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(SHIPPED.read_bytes()[: SHIPPED.stat().st_size // 2])  # a download cut short
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE places (url)").connection.close()
    for path, why in [
        (text, "file is not a database"),
        (truncated, "database disk image is malformed"),
        (other, r"it is an SQLite database of something else \(tables places\)"),
    ]:
        before = _digest(path)
        with pytest.raises(RlhpoError, match=rf"{path.name}' is not an rlhpo curve store \(SQLite\): {why}\. Pass"):
            CurveStore(path, readonly=readonly).count()
        assert _digest(path) == before  # nothing written into someone else's file
        assert not Path(f"{path}-wal").exists()


def _old_store(path: Path) -> None:
    """A store as rlhpo wrote it at schema version 1, with ``runs.status``: one task, one run."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE tasks (task_key TEXT PRIMARY KEY, dataset TEXT NOT NULL, family TEXT NOT NULL,
            n_train INTEGER NOT NULL, n_classes INTEGER NOT NULL, meta_json TEXT NOT NULL, task_json TEXT NOT NULL);
        CREATE TABLE runs (task_key TEXT NOT NULL REFERENCES tasks(task_key), config_key TEXT NOT NULL,
            seed INTEGER NOT NULL, max_epochs INTEGER NOT NULL, config_json TEXT NOT NULL,
            diverged INTEGER NOT NULL, status TEXT NOT NULL, PRIMARY KEY (task_key, config_key, seed));
        CREATE TABLE epochs (task_key TEXT NOT NULL, config_key TEXT NOT NULL, seed INTEGER NOT NULL,
            epoch INTEGER NOT NULL, train_loss REAL NOT NULL, val_loss REAL NOT NULL, val_accuracy REAL NOT NULL,
            val_macro_f1 REAL NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (task_key, config_key, seed, epoch));
        PRAGMA user_version=1;
        """
    )
    conn.close()
    # Rows as version 1 wrote them, through this rlhpo's JSON encoders (unchanged since).
    rec = record()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rec.key, "digits", "mlp", 160, 10, json.dumps(rec.meta_features), json.dumps(dataclasses.asdict(TASK))),
        )
        config = SPACE.default.with_epochs(9)
        conn.execute(
            "INSERT INTO runs VALUES (?, ?, 0, 9, ?, 0, 'complete')",
            (TASK.key(), config.key(), json.dumps(config.to_dict())),
        )
        conn.executemany(
            "INSERT INTO epochs VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
            [
                (TASK.key(), config.key(), e.epoch, e.train_loss, e.val_loss, e.val_accuracy, e.val_macro_f1, e.seconds)
                for e in curve(9).epochs
            ],
        )
    conn.close()


def test_a_version_1_store_with_runs_status_reads_as_it_is_and_upgrades_when_written(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_store(path)
    before = _digest(path)
    old = CurveStore(path, readonly=True)
    assert old.tasks() == [record()]
    assert old.get_run(TASK.key(), SPACE.default, 0).curve == curve(9)
    assert len(pd.read_parquet(old.export(tmp_path / "export")["runs"])) == 1
    old.close()
    assert _digest(path) == before  # reading changes nothing

    store = CurveStore(path)
    assert store.put_run(TASK.key(), configs(2)[1], 0, curve(9))
    assert store.count() == {"tasks": 1, "runs": 2, "epochs": 18}
    assert store.get_run(TASK.key(), SPACE.default, 0).curve == curve(9)
    assert not store.put_run(TASK.key(), SPACE.default, 0, curve(9))  # still keyed: the first writer wins
    columns = [r[1] for r in store.conn.execute("PRAGMA table_info(runs)")]
    assert "status" not in columns and store.conn.execute("PRAGMA user_version").fetchone()[0] == 2
    store.close()


def test_the_shipped_meta_dataset_still_opens_and_reads(tmp_path):
    before = _digest(SHIPPED)
    with CurveStore(SHIPPED, readonly=True) as store:
        records = store.tasks(with_runs=True)
        assert records and all(set(r.meta_features) == set(META_FEATURES) for r in records)
        runs = store.runs(records[0].key, 0)
        assert runs and all(r.curve.epochs for r in runs)
        assert store.count()["runs"] >= len(runs)
        curves = pd.read_parquet(store.export(tmp_path / "export")["curves"])
        counts = store.count()
        assert len(curves) == counts["epochs"]
    assert _digest(SHIPPED) == before
    copy = tmp_path / "copy.sqlite"
    shutil.copy(SHIPPED, copy)
    with CurveStore(copy) as writable:  # opened for writing: upgraded, every row kept
        assert writable.count() == counts and writable.runs(records[0].key, 0) == runs


def test_a_task_record_describes_the_data_as_loaded():
    data = load_task(Task("digits", n_train=120))
    rec = TaskRecord.from_data(data)
    assert (rec.task, rec.family, rec.n_train, rec.n_classes) == (data.task, "mlp", 120, 10)
    assert list(rec.meta_features) == list(META_FEATURES)
    # Asked for more rows than digits holds: a loader whose data.task says the size it got makes
    # the record say, and be keyed by, that size.
    data = load_task(Task("digits", n_train=5000))
    rows = data.x_train.shape[0]
    got = TaskRecord.from_data(dataclasses.replace(data, task=data.task.replace(n_train=rows)))
    assert got.n_train == rows < 5000 and got.key == f"digits/default/n{rows}/call/s0"


def test_the_store_uses_wal_and_records_tasks_with_their_meta_features(store, tmp_path):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = Task("digits", family="mlp", n_train=300, seed=1)
    store.put_task(record(other))
    got = CurveStore(store.path, readonly=True).task(other.key())
    assert got == record(other)
    store.put_run(TASK.key(), SPACE.default, 0, curve(9))
    assert [r.key for r in store.tasks(with_runs=True)] == [TASK.key()]
    assert len(store.tasks()) == 2


def test_keys_are_stable_across_machines():
    # Changing either key orphans every recorded curve: these literals must never change.
    assert TASK.key() == "digits/mlp/n200/call/s0"
    assert SPACE.default.key() == SPACE.default.with_epochs(1).key()
    assert SPACE.default.key() == "4f9271354afa7ec1"


def _write_runs(path: str, task_key: str, config_dicts: list[dict], start: multiprocessing.Event) -> None:
    from rlhpo.space import Config

    store = CurveStore(path)
    start.wait(30)
    for i, c in enumerate(config_dicts):
        store.put_run(task_key, Config(**c), 0, curve(9, offset=0.001 * i))
    store.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "store.sqlite")
    store = CurveStore(path)
    store.put_task(record())
    cs = configs(60)
    halves = [[c.to_dict() for c in cs[:40]], [c.to_dict() for c in cs[20:]]]  # 20 written by both
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_write_runs, args=(path, TASK.key(), h, start)) for h in halves]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert store.count() == {"tasks": 1, "runs": 60, "epochs": 540}
    for c in cs:
        assert len(store.get_run(TASK.key(), c, 0).curve.epochs) == 9


def test_export_writes_parquet_tables_with_one_row_per_epoch(store, tmp_path):
    cs = configs(3)
    for c in cs[:2]:
        store.put_run(TASK.key(), c, 0, curve(9))
    store.put_run(TASK.key(), cs[2], 0, curve(4, diverged=True))
    paths = store.export(tmp_path / "export")
    curves = pd.read_parquet(paths["curves"])
    assert len(curves) == 22
    assert {"task_key", "config_key", "epoch", "val_accuracy", "learning_rate", "dataset", "val_score"} <= set(
        curves.columns
    )
    first = curves[(curves.config_key == cs[0].key()) & (curves.epoch == 1)].iloc[0]
    assert first.val_score == pytest.approx((0.19 - 0.1) / 0.9)
    runs = pd.read_parquet(paths["runs"])
    assert runs.diverged.tolist().count(True) == 1 and len(runs) == 3
    tasks = pd.read_parquet(paths["tasks"])
    assert tasks.loc[0, "meta_log_n_train"] == record().meta_features["log_n_train"]


def test_a_writer_killed_inside_put_run_leaves_no_half_written_run(tmp_path):
    path = tmp_path / "store.sqlite"
    store = CurveStore(path)
    store.put_task(record())
    store.put_run(TASK.key(), configs(2)[1], 0, curve(9))
    # The child is SIGKILLed after the run row is written, before its epochs: mid-transaction.
    code = textwrap.dedent(
        f"""
        import os, signal
        from rlhpo.space import load_search_space
        from rlhpo.store import CurveStore
        from rlhpo.training import Curve, EpochRecord

        class KillOnEpochs:
            def __init__(self, conn):
                self.conn = conn
            def __getattr__(self, name):
                return getattr(self.conn, name)
            def executemany(self, *args):
                os.kill(os.getpid(), signal.SIGKILL)

        store = CurveStore({str(path)!r})
        store._conn = KillOnEpochs(store.conn)
        curve = Curve([EpochRecord(e, 1.0, 1.0, 0.5, 0.5, 0.1) for e in range(1, 10)])
        store.put_run({TASK.key()!r}, load_search_space().default, 0, curve)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    reopened = CurveStore(path)
    assert reopened.count() == {"tasks": 1, "runs": 1, "epochs": 9}
    assert reopened.get_run(TASK.key(), SPACE.default, 0) is None


def test_drop_family_deletes_the_runs_of_one_family_and_their_epochs(store, tmp_path):
    """A run's family is its config's, else its task's; the other runs stay as they were."""
    from click.testing import CliRunner

    from rlhpo.cli import main

    own, bow = configs(3), configs(4)[3].with_family("bow")
    for config in own:
        store.put_run(record().key, config, 0, curve(9))
    store.put_run(record().key, bow, 0, curve(9))
    assert store.drop_family("bow") == 1
    assert store.count() == {"tasks": 1, "runs": 3, "epochs": 27}
    assert store.get_run(record().key, bow, 0) is None and store.get_run(record().key, own[0], 0) is not None
    store.close()

    result = CliRunner().invoke(main, ["store", "drop-family", "mlp", "--store", str(store.path)])
    assert result.exit_code == 0, result.output
    assert "dropped 3 runs of family 'mlp'; 0 runs left" in result.output
    with CurveStore(store.path, readonly=True) as again:
        assert again.count() == {"tasks": 1, "runs": 0, "epochs": 0}
    missing = CliRunner().invoke(main, ["store", "drop-family", "bow", "--store", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 1 and "No curve store" in missing.output
