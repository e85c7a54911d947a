"""Where a dataset's raw rows come from: a local folder, the Hugging Face hub, or a bundled package.

Each source knows a cheap *fingerprint* (no data read) that keys the preprocessing cache, and
reads the raw splits as Arrow tables in the hub schema (images as ``{bytes, path}`` structs).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rlhpo.errors import RlhpoError
from rlhpo.tasks.registry import DatasetSpec

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "RLHPO_DATA_DIR"
SUFFIXES = (".parquet", ".csv")


class SourceUnavailable(Exception):
    """This source cannot provide the dataset here; the next source is tried."""


@dataclass
class RawDataset:
    """Raw splits as read from a source.

    Attributes:
        train / test: the rows; ``test`` is ``None`` when the source has no test split.
        label_names: class names of the ``ClassLabel`` columns, by column name.
        source: ``local:<dir>``, ``hub:<name>`` or ``bundled:<package>``.
    """

    train: pa.Table
    test: pa.Table | None
    label_names: dict[str, list[str]]
    source: str


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The data folder: the argument, else ``$RLHPO_DATA_DIR``, else ``None``.

    Raises:
        RlhpoError: when the folder named does not exist.
    """
    origin = "data_dir"
    if data_dir is None:
        data_dir, origin = os.environ.get(DATA_DIR_ENV) or None, DATA_DIR_ENV
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise RlhpoError(f"Data folder {str(path)!r} (from {origin}) does not exist.")
    return path.resolve()


def find_split(folder: Path, split: str) -> Path | None:
    """``folder/<split>.parquet`` or ``folder/<split>.csv``, whichever exists first."""
    for suffix in SUFFIXES:
        path = folder / f"{split}{suffix}"
        if path.is_file():
            return path
    return None


class LocalSource:
    """A folder holding ``train.parquet`` / ``train.csv`` and optionally ``test.*``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"local:{folder}"

    def available(self) -> bool:
        return find_split(self.folder, "train") is not None

    def fingerprint(self) -> str:
        parts = [self.name]
        for split in ("train", "test"):
            path = find_split(self.folder, split)
            if path is not None:
                stat = path.stat()
                parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)

    def read(self) -> RawDataset:
        train_path = find_split(self.folder, "train")
        if train_path is None:
            raise SourceUnavailable(f"{self.folder}: no train.parquet or train.csv")
        test_path = find_split(self.folder, "test")
        train, names = _read_file(train_path)
        test, test_names = _read_file(test_path) if test_path else (None, {})
        return RawDataset(train, test, {**test_names, **names}, self.name)


def _read_file(path: Path) -> tuple[pa.Table, dict[str, list[str]]]:
    """Read one parquet or CSV file, with the ClassLabel names of its hub metadata if any."""
    if path.suffix == ".csv":
        return pa_csv.read_csv(path), {}
    table = pq.read_table(path)
    return table, _class_label_names(table.schema.metadata or {})


def _class_label_names(schema_metadata: dict[bytes, bytes]) -> dict[str, list[str]]:
    """ClassLabel names from the ``huggingface`` schema metadata that ``datasets`` writes."""
    raw = schema_metadata.get(b"huggingface")
    if not raw:
        return {}
    features = json.loads(raw).get("info", {}).get("features", {})
    return {
        column: list(feature["names"])
        for column, feature in features.items()
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel"
    }


class HubSource:
    """A Hugging Face hub dataset, read with ``datasets.load_dataset`` (needs internet or the HF cache)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"hub:{path}"

    def fingerprint(self) -> str:
        return self.name

    def read(self) -> RawDataset:
        import datasets  # slow to import; only needed here

        try:
            splits = datasets.load_dataset(self.path)
        # load_dataset raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError,
        # ValueError...) when offline or when the name is wrong; any of them means "not here".
        except Exception as e:
            raise SourceUnavailable(f"hub {self.path!r}: {type(e).__name__}: {e}") from e
        if "train" not in splits:
            raise RlhpoError(f"Hub dataset {self.path!r} has no 'train' split; it has {', '.join(splits)}.")
        test_split = next((s for s in ("test", "validation") if s in splits), None)
        train, names = _hub_table(splits["train"])
        test = _hub_table(splits[test_split])[0] if test_split else None
        return RawDataset(train, test, names, self.name)


def _hub_table(split: datasets.Dataset) -> tuple[pa.Table, dict[str, list[str]]]:
    """An Arrow table of a ``datasets.Dataset`` with images left as ``{bytes, path}`` structs."""
    import datasets

    names = {}
    for column, feature in split.features.items():
        if isinstance(feature, datasets.Image):
            split = split.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, datasets.ClassLabel):
            names[column] = list(feature.names)
    return split.with_format("arrow")[:], names


class BundledSource:
    """Data shipped with an installed package: scikit-learn's ``digits`` (8x8 images as 64 features)."""

    def __init__(self, package: str) -> None:
        if package != "sklearn":
            raise ValueError(f"Bundled data comes from 'sklearn' only, but got {package=}.")
        self.name = f"bundled:{package}"

    def fingerprint(self) -> str:
        return f"{self.name}-{metadata.version('scikit-learn')}"

    def read(self) -> RawDataset:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        # The fixed 80/20 stratified split that is this dataset's test split for every task.
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
        return RawDataset(_digits_table(x_train, y_train), _digits_table(x_test, y_test), {}, self.name)


def _digits_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    columns = {f"pixel_{i}": x[:, i].astype(np.float32) for i in range(x.shape[1])}
    return pa.table({**columns, "label": y.astype(np.int64)})


Source = LocalSource | HubSource | BundledSource


def candidate_sources(spec: DatasetSpec, data_dir: Path | None) -> list[Source]:
    """The sources to try for ``spec``, in order: local folder, hub, bundled package."""
    if spec.local_path is not None:
        return [LocalSource(spec.local_path)]
    sources: list[Source] = []
    if data_dir is not None:  # <data_dir>/<name>/, or <data_dir>/<owner>/<name>/ for a hub name
        sources.append(LocalSource(data_dir / spec.name))
    if spec.hub_path:
        sources.append(HubSource(spec.hub_path))
    if spec.bundled:
        sources.append(BundledSource(spec.bundled))
    return sources
