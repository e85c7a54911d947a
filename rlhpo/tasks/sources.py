"""Where a dataset's raw rows come from: a local folder, the Hugging Face hub, or a bundled package.

Each source knows a cheap *fingerprint* (no data read) that keys the preprocessing cache, and
reads the raw splits as Arrow tables in the hub schema (images as ``{bytes, path}`` structs).

The hub is asked only when it can answer: in offline mode (``HF_DATASETS_OFFLINE``, else
``HF_HUB_OFFLINE``) ``datasets`` reads its own cache and fails at once; otherwise one quick connect
(:class:`HubProbe`) first checks that the hub can be reached, since ``datasets`` would retry for
half a minute before giving up.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

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
PROBE_TIMEOUT_S = 2.5  # a reachable hub accepts a connection in well under a second
_TRUE = ("1", "ON", "YES", "TRUE")  # what huggingface_hub and datasets read as a true flag


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
    """Read one parquet or CSV file, with the ClassLabel names of its hub metadata if any.

    Raises:
        RlhpoError: when the file is empty, cannot be parsed, or holds no rows.
    """
    if path.suffix == ".csv" and path.stat().st_size == 0:
        raise RlhpoError(
            f"{path} is empty (0 bytes), but a CSV file needs a header line naming the columns, "
            "then one line per example."
        )
    try:
        if path.suffix == ".csv":  # an empty field is a missing value, in a column of strings too
            table, names = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(strings_can_be_null=True)), {}
        else:
            table = pq.read_table(path)
            names = _class_label_names(table.schema.metadata or {})
    except pa.ArrowInvalid as e:
        raise RlhpoError(f"Cannot read {path} as {path.suffix[1:]}: {e}") from e
    if table.num_rows == 0:
        raise RlhpoError(
            f"{path} has columns ({', '.join(table.column_names)}) but no rows; expected one row per example."
        )
    return table, names


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
        if not offline_by_env() and (reason := HUB.unreachable) is not None:
            raise SourceUnavailable(
                f"hub {self.path!r}: the Hugging Face hub cannot be reached ({reason}); "
                "with HF_HUB_OFFLINE=1, datasets reads only its local cache"
            )
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


def offline_by_env() -> bool:
    """Whether ``datasets`` runs offline: ``HF_DATASETS_OFFLINE`` if set, else ``HF_HUB_OFFLINE``, is true."""
    return os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "")).upper() in _TRUE


class HubProbe:
    """Whether the Hugging Face hub can be reached from here: one quick connect, remembered per process.

    It opens a TCP connection to the host of the hub endpoint (``HF_ENDPOINT``, default
    ``https://huggingface.co``), or to the proxy that requests to it would go through, and gives up
    after ``timeout_s`` seconds, name lookup included.
    """

    def __init__(self, endpoint: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    @functools.cached_property
    def unreachable(self) -> str | None:
        """Why the hub cannot be reached (the first time asked), or ``None`` when it answered."""
        host, port = self._target()
        outcome: list[str | None] = []

        def connect() -> None:
            try:
                socket.create_connection((host, port), timeout=self.timeout_s).close()
                outcome.append(None)
            except OSError as e:
                outcome.append(f"cannot connect to {host}:{port}: {e}")

        # In a thread, because a name lookup ignores the socket timeout and may hang far longer.
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        return outcome[0] if outcome else f"no answer from {host}:{port} within {self.timeout_s:g} s"

    def _target(self) -> tuple[str, int]:
        """The host and port that a request to the hub connects to first."""
        from huggingface_hub import constants

        url = urlsplit(self.endpoint or constants.ENDPOINT)
        proxy = getproxies().get(url.scheme)
        if proxy and not proxy_bypass(url.hostname or ""):
            url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


HUB = HubProbe()  # probes nothing until a hub dataset is first read


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
        sources.append(LocalSource(data_dir / spec.data_folder))
    if spec.hub_path:
        sources.append(HubSource(spec.hub_path))
    if spec.bundled:
        sources.append(BundledSource(spec.bundled))
    return sources
