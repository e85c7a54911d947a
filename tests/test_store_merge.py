"""Merging curve stores recorded on different machines: one row per key, none lost, old stores too."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlhpo.cli import main
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore, TaskRecord, merge_stores
from rlhpo.tasks.features import META_FEATURES
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

SPACE = load_search_space()
TASK = Task("digits", family="mlp", n_train=200)
ONLY_A = Task("digits", family="mlp", n_train=300)
ONLY_B = Task("digits", family="mlp", n_train=400)
CONFIGS = [
    dataclasses.replace(SPACE.default, learning_rate=lr, batch_size=bs)
    for lr, bs in itertools.islice(itertools.product(SPACE.choices["learning_rate"], SPACE.choices["batch_size"]), 9)
]


def record(task: Task = TASK) -> TaskRecord:
    meta = {f: round(0.05 * i, 3) for i, f in enumerate(META_FEATURES)}
    return TaskRecord(task=task, family="mlp", n_train=160, n_classes=10, meta_features=meta)


def curve(n: int, *, diverged: bool = False, offset: float = 0.0) -> Curve:
    return Curve(
        [EpochRecord(e, 2.0 / e + offset, 2.1 / e, 0.1 + 0.09 * e, 0.08 * e, 0.01 * e) for e in range(1, n + 1)],
        diverged=diverged,
    )


def slower(c: Curve) -> Curve:
    """The same run trained on another machine: the figures agree, the seconds do not."""
    return Curve([dataclasses.replace(e, seconds=e.seconds * 3 + 1) for e in c.epochs], diverged=c.diverged)


def make_store(path: Path, tasks: list[Task], runs: list[tuple[int, int, Curve]]) -> Path:
    """A store of ``tasks`` and runs on TASK given as (config index, seed, curve)."""
    with CurveStore(path) as store:
        for task in tasks:
            store.put_task(record(task))
        for i, seed, c in runs:
            store.put_run(TASK.key(), CONFIGS[i], seed, c, max_epochs=len(c.epochs))
    return path


@pytest.fixture
def overlapping(tmp_path) -> tuple[Path, Path]:
    """A holds configs 0-5 and a second seed of config 0; B holds configs 3-8 on seed 0.

    Of the three they share, B's config 3 is longer, config 4 is the same run (other seconds),
    config 5 differs in its figures.
    """
    a = make_store(
        tmp_path / "a.sqlite",
        [TASK, ONLY_A],
        [(0, 0, curve(9)), (1, 0, curve(9)), (2, 0, curve(9)), (3, 0, curve(3)), (4, 0, curve(9))]
        + [(5, 0, curve(9)), (0, 1, curve(9, offset=0.02))],
    )
    b = make_store(
        tmp_path / "b.sqlite",
        [ONLY_B, TASK],
        [(3, 0, curve(9)), (4, 0, slower(curve(9))), (5, 0, curve(9, offset=0.05))]
        + [(6, 0, curve(9)), (7, 0, curve(2, diverged=True)), (8, 0, curve(9))],
    )
    return a, b


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def as_version_1(path: Path) -> Path:
    """Turn a store into one as rlhpo wrote it at schema version 1: ``runs.status``, unsorted meta-features."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("ALTER TABLE runs ADD COLUMN status TEXT NOT NULL DEFAULT 'complete'")
        for key, meta in conn.execute("SELECT task_key, meta_json FROM tasks").fetchall():
            unsorted = json.dumps(dict(reversed(json.loads(meta).items())))
            conn.execute("UPDATE tasks SET meta_json = ? WHERE task_key = ?", (unsorted, key))
        conn.execute("PRAGMA user_version=1")
    conn.execute("PRAGMA journal_mode=DELETE")  # version 1 left no WAL behind either
    conn.close()
    return path


def keys(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT task_key, config_key, seed FROM runs ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


def all_rows(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {
            "tasks": conn.execute("SELECT * FROM tasks ORDER BY task_key").fetchall(),
            "runs": conn.execute(
                "SELECT task_key, config_key, seed, max_epochs, config_json, diverged FROM runs ORDER BY 1, 2, 3"
            ).fetchall(),
            "epochs": conn.execute("SELECT * FROM epochs ORDER BY 1, 2, 3, 4").fetchall(),
        }
    finally:
        conn.close()


def test_two_overlapping_stores_merge_to_one_row_per_key_and_lose_none(overlapping, tmp_path):
    a, b = overlapping
    out = tmp_path / "merged" / "c.sqlite"
    report = merge_stores([a, b], out)

    union = sorted(set(keys(a)) | set(keys(b)))
    assert keys(out) == union and len(union) == 10  # configs 0-8 on seed 0, config 0 on seed 1
    with CurveStore(out, readonly=True) as merged:
        assert {r.key for r in merged.tasks()} == {TASK.key(), ONLY_A.key(), ONLY_B.key()}
        assert merged.count() == {"tasks": 3, "runs": 10, "epochs": 8 * 9 + 2 + 9}
        got = {(i, s): merged.get_run(TASK.key(), CONFIGS[i], s) for i, s in [(0, 1), (3, 0), (4, 0), (5, 0), (7, 0)]}
    assert got[0, 1].curve == curve(9, offset=0.02)  # the second training seed is its own key
    assert got[3, 0].max_epochs == 9 and got[3, 0].curve == curve(9)  # the longer run wins
    assert got[4, 0].curve == curve(9)  # the same run twice: the first store's, seconds and all
    assert got[5, 0].curve == curve(9)  # a conflict: the first store's kept
    assert got[7, 0].curve == curve(2, diverged=True)

    first, second = report.sources
    assert (first.tasks, first.runs, first.replaced, first.duplicates, first.conflicts) == (2, 7, 0, 0, 0)
    assert (second.tasks, second.runs, second.replaced, second.duplicates, second.conflicts) == (1, 4, 1, 2, 1)
    assert report.runs == first.runs + second.runs - second.replaced == 10
    [conflict] = report.conflicts
    assert (conflict.task_key, conflict.config_key, conflict.seed) == (TASK.key(), CONFIGS[5].key(), 0)
    assert conflict.kept == str(a) and conflict.other == str(b) and "epoch 1 train_loss" in conflict.difference
    assert CONFIGS[5].key() in "\n".join(report.lines())


def test_a_store_merged_with_itself_gives_its_own_rows_exactly(overlapping, tmp_path):
    a, _ = overlapping
    report = merge_stores([a, a], tmp_path / "aa.sqlite")
    assert all_rows(tmp_path / "aa.sqlite") == all_rows(a)
    assert report.sources[1].duplicates == 7 and report.sources[1].runs == 0 and not report.conflicts


def test_the_merged_store_is_vacuumed_and_reports_its_size(tmp_path):
    # Every run of A replaced by B's longer one: the pages of A's epochs are freed in the output.
    many = [
        dataclasses.replace(SPACE.default, learning_rate=lr, batch_size=bs, units=u)
        for lr, bs, u in itertools.product(*(SPACE.choices[h] for h in ("learning_rate", "batch_size", "units")))
    ]
    stores = []
    for name, n in (("a", 3), ("b", 9)):
        with CurveStore(tmp_path / f"{name}.sqlite") as store:
            store.put_task(record())
            for c in many:
                store.put_run(TASK.key(), c, 0, curve(n), max_epochs=n)
        stores.append(tmp_path / f"{name}.sqlite")
    out = tmp_path / "c.sqlite"
    report = merge_stores(stores, out)
    assert report.sources[1].replaced == len(many) > 100
    assert not Path(f"{out}-wal").exists()  # closed and checkpointed: the file is all of it
    assert report.size_mb == out.stat().st_size / 1e6 > 0
    conn = sqlite3.connect(out)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0  # vacuumed: no free pages
    conn.close()


def test_a_version_1_store_opens_and_merges_into_a_current_one(overlapping, tmp_path):
    old = as_version_1(make_store(tmp_path / "old.sqlite", [TASK], [(0, 0, curve(9)), (2, 0, curve(4))]))
    before = digest(old)
    newer = make_store(tmp_path / "new.sqlite", [TASK], [(1, 0, curve(9)), (2, 0, curve(9))])
    out = tmp_path / "c.sqlite"
    report = merge_stores([old, newer], out)
    assert digest(old) == before  # sources are only read
    assert [s.schema_version for s in report.sources] == [1, 2]
    with CurveStore(out, readonly=True) as merged:
        assert merged.tasks() == [record()]  # one task: both describe it alike
        assert merged.count() == {"tasks": 1, "runs": 3, "epochs": 27}
        assert merged.get_run(TASK.key(), CONFIGS[0], 0).curve == curve(9)
        assert merged.get_run(TASK.key(), CONFIGS[2], 0).max_epochs == 9  # the newer store's longer run
        assert merged.conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "status" not in [r[1] for r in merged.conn.execute("PRAGMA table_info(runs)")]


def test_a_task_described_differently_in_two_stores_is_an_error_and_leaves_nothing(overlapping, tmp_path):
    a, _ = overlapping
    other = tmp_path / "other.sqlite"
    with CurveStore(other) as store:
        store.put_task(dataclasses.replace(record(), n_train=170, meta_features={**record().meta_features, "x": 1.0}))
    out = tmp_path / "c.sqlite"
    with pytest.raises(
        RlhpoError,
        match=rf"Task '{TASK.key()}' is described differently in .*a.sqlite' and "
        r".*other.sqlite' \(n_train, meta-features differ\)",
    ):
        merge_stores([a, other], out)
    assert not list(tmp_path.glob("c.sqlite*"))  # a failed merge leaves no store to refuse next time


def test_an_existing_output_is_never_overwritten(overlapping, tmp_path):
    a, b = overlapping
    before = digest(b)
    with pytest.raises(RlhpoError, match=r"merge output .*b.sqlite' already exists; .*never overwrites"):
        merge_stores([a], b)
    assert digest(b) == before
    with pytest.raises(RlhpoError, match="does not exist"):
        merge_stores([a, tmp_path / "missing.sqlite"], tmp_path / "c.sqlite")
    assert not (tmp_path / "c.sqlite").exists()


def test_the_cli_merges_reports_each_source_and_refuses_an_existing_output(overlapping, tmp_path):
    a, b = overlapping
    out = tmp_path / "c.sqlite"
    runner = CliRunner()
    result = runner.invoke(main, ["store", "merge", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{b} (schema 2): took 1 tasks and 4 runs (1 replacing a shorter run); 2 duplicates, 1 conflicts" in (
        result.output
    )
    assert f"merged into {out}: 3 tasks, 10 runs, 83 epochs" in result.output
    assert f"conflict {TASK.key()} config {CONFIGS[5].key()} seed 0" in result.output

    result = runner.invoke(main, ["store", "info", "--store", str(out)])
    assert result.exit_code == 0 and f"3 tasks, 10 runs, 83 epochs, {out.stat().st_size / 1e6:.1f} MB" in result.output

    result = runner.invoke(main, ["store", "merge", str(b), str(a), "--out", str(tmp_path / "d.sqlite"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["runs"] == 10 and [s["runs"] for s in summary["sources"]] == [6, 4]
    assert summary["conflicts"][0]["kept"] == str(b)  # the first store named wins a tie

    result = runner.invoke(main, ["store", "merge", str(a), "-o", str(out)])
    assert result.exit_code == 1 and "already exists" in result.output
