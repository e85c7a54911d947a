"""Bring-your-own data and offline use: each mistake is one clear error, each surprise a warning.

Every dataset here is a small CSV written into ``tmp_path``; no test needs the real datasets.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from rlhpo.errors import RlhpoError
from rlhpo.tasks import Task, load_task, sources
from rlhpo.tasks.sources import HubProbe

WORDS = ("river", "stone", "cloud", "lamp", "forest", "engine", "violin", "paper", "garden", "signal")


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private preprocessing cache, so that each test preprocesses its own files."""
    monkeypatch.setenv("RLHPO_CACHE_DIR", str(tmp_path / "cache"))


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=6)) for _ in range(n)]


def _labels(n: int) -> list[str]:
    return [("alpha", "beta", "gamma")[i % 3] for i in range(n)]


def _write_csv(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pa_csv.write_csv(pa.table(columns), path)
    return path


def _load_error(dataset: str | Path) -> str:
    """The message of the error that loading ``dataset`` raises."""
    with pytest.raises(RlhpoError) as error:
        load_task(Task(str(dataset)))
    return str(error.value)


@pytest.mark.parametrize("empty", ["train", "test"])
def test_an_empty_csv_file_is_a_clear_error(tmp_path: Path, empty: str) -> None:
    for split in ("train", "test"):
        _write_csv(tmp_path / "data" / f"{split}.csv", {"text": _texts(30), "label": _labels(30)})
    (tmp_path / "data" / f"{empty}.csv").write_bytes(b"")

    message = _load_error(tmp_path / "data")

    assert f"{tmp_path / 'data' / empty}.csv is empty (0 bytes)" in message
    assert "needs a header line naming the columns" in message


def test_a_header_only_csv_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\n")

    message = _load_error(tmp_path / "data")

    assert "train.csv has columns (text, label) but no rows; expected one row per example" in message


def test_a_malformed_csv_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\nhello,a\nhello,a,extra\n")

    message = _load_error(tmp_path / "data")

    assert "Cannot read" in message and "train.csv as csv" in message and "Expected 2 columns, got 3" in message


def test_labels_of_another_type_in_test_than_in_train_are_a_clear_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data" / "train.csv", {"text": _texts(60), "label": _labels(60)})
    _write_csv(tmp_path / "data" / "test.csv", {"text": _texts(20, seed=1), "label": [i % 3 for i in range(20)]})

    message = _load_error(tmp_path / "data")

    assert "label column 'label'" in message
    assert "same type of label in train and test, but got train strings (string) and test integers (int64)" in message


def test_a_test_file_without_the_label_column_is_a_clear_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data" / "train.csv", {"text": _texts(60), "label": _labels(60)})
    _write_csv(tmp_path / "data" / "test.csv", {"text": _texts(20, seed=1)})

    message = _load_error(tmp_path / "data")

    assert "test split of dataset" in message and "lacks the column(s) label that train has" in message


def test_free_text_in_the_label_column_is_refused(tmp_path: Path) -> None:
    # Swapped columns: the class names sit in "text", a distinct sentence per row in "label".
    sentences = [f"{t} {i}" for i, t in enumerate(_texts(3000))]
    _write_csv(tmp_path / "data" / "train.csv", {"text": _labels(3000), "label": sentences})

    message = _load_error(tmp_path / "data")

    assert "label column 'label'" in message and "holds 3000 distinct values in 3000 rows" in message
    assert "at most max(100, rows / 2) = 1500 classes" in message
    assert "text column 'text'" in message and "--label-column and --text-column" in message


def test_the_class_limit_is_half_the_rows(tmp_path: Path) -> None:
    x = np.arange(300, dtype=float).tolist()
    _write_csv(tmp_path / "ok" / "train.csv", {"x": x, "label": [i // 2 for i in range(300)]})  # 150 classes
    _write_csv(tmp_path / "bad" / "train.csv", {"x": x, "label": [min(i, 150) for i in range(300)]})  # 151

    assert load_task(Task(str(tmp_path / "ok"))).n_classes == 150
    assert "holds 151 distinct values in 300 rows" in _load_error(tmp_path / "bad")


def test_missing_texts_unlabelled_rows_and_a_missing_test_split_are_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts, labels = _texts(200), _labels(200)
    texts[3] = texts[7] = None  # empty fields in the CSV
    labels[5] = labels[11] = labels[13] = None
    _write_csv(tmp_path / "data" / "train.csv", {"text": texts, "label": labels})

    with caplog.at_level(logging.WARNING, logger="rlhpo.tasks"):
        data = load_task(Task(str(tmp_path / "data")))

    warnings = " | ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "dropped 3 of 200 train rows that have no label (empty, or a negative id) in column 'label'" in warnings
    assert "no labelled test split; a fixed, stratified 20% of its train split (39 of 197 rows)" in warnings
    assert "rows have no text in column 'text'; each becomes an empty (all-padding) sequence" in warnings
    assert len(data.y_test) == 39 and data.class_names == ("alpha", "beta", "gamma")


def test_a_dataset_with_no_labelled_row_is_a_clear_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data" / "train.csv", {"text": _texts(20), "label": [None] * 20})

    assert "has no labelled rows: all 20 have an empty (or negative) label in column 'label'" in _load_error(
        tmp_path / "data"
    )


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variables, so that a probe connects where the test says."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


THREE_WAYS = ("--data-dir DIR or RLHPO_DATA_DIR=DIR", "internet access to the Hugging Face hub", "'digits'")


def test_offline_mode_with_no_data_folder_lists_the_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)  # it would take precedence
    monkeypatch.setenv("RLHPO_DATA_DIR", str(tmp_path))  # no mnist/ in it

    message = _load_error("mnist")

    assert all(way in message for way in THREE_WAYS), message
    assert "DIR/mnist/train.parquet" in message and "'ylecun/mnist'" in message


def test_an_unreachable_hub_fails_at_once_without_asking_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy: None
) -> None:
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setenv("RLHPO_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(sources, "HUB", HubProbe(f"https://127.0.0.1:{_closed_port()}"))
    calls: list[str] = []
    fake = types.ModuleType("datasets")
    fake.load_dataset = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)

    message = _load_error("mnist")

    assert calls == []  # datasets would retry for half a minute
    assert "the Hugging Face hub cannot be reached (cannot connect to 127.0.0.1" in message
    assert all(way in message for way in THREE_WAYS), message


def test_hub_probe_connects_once_and_goes_through_the_proxy(monkeypatch: pytest.MonkeyPatch, no_proxy: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        direct = HubProbe(f"https://127.0.0.1:{port}")
        assert direct.unreachable is None
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert HubProbe("https://hub.invalid").unreachable is None  # only the proxy is asked
    assert direct.unreachable is None  # remembered: the server is gone now
    monkeypatch.delenv("HTTPS_PROXY")
    assert "cannot connect to 127.0.0.1" in str(HubProbe(f"https://127.0.0.1:{port}").unreachable)


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]
