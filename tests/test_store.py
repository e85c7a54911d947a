"""The curve store: round trips, fidelities, divergence, concurrent writers, export."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from rlhpo.collect import space_filling_configs
from rlhpo.errors import RlhpoError
from rlhpo.space import Config, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.features import META_FEATURES
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

SPACE = load_search_space()
TASK = Task("digits", family="mlp", n_train=200)


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
    return space_filling_configs(SPACE, n, seed=0)


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
    with pytest.raises(RlhpoError, match="is not a curve store"):
        CurveStore(tmp_path / "text.sqlite", readonly=True).count()
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(RlhpoError, match="is not a curve store of this rlhpo"):
        CurveStore(tmp_path / "other.sqlite", readonly=True).count()


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
