"""Turn a :class:`Task` into :class:`TaskData`: find the dataset, preprocess it once, carve the splits.

A dataset is preprocessed once and cached on disk (:mod:`rlhpo.tasks.cache`); within a process
the last few datasets are also kept in memory, normalised, so that many tasks drawn from one
dataset load in milliseconds.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhpo.errors import RlhpoError, unknown
from rlhpo.files import write_atomic
from rlhpo.tasks.cache import PreparedArrays, cache_dir, cache_path, read_cached, write_cached
from rlhpo.tasks.preprocess import ColumnOverrides, prepare
from rlhpo.tasks.registry import BUILTINS, DEFAULT_FAMILY, DatasetSpec, get_spec
from rlhpo.tasks.sources import (
    DATA_DIR_ENV,
    BundledSource,
    LocalSource,
    Source,
    SourceUnavailable,
    candidate_sources,
    resolve_data_dir,
)
from rlhpo.tasks.splits import split_indices
from rlhpo.tasks.task import FAMILIES_BY_MODALITY, Task, TaskData

logger = logging.getLogger(__name__)

MEMO_SIZE = 8  # preprocessed datasets kept in memory (CIFAR-10 as float32 is ~150 MB)


@dataclass(frozen=True)
class PreparedDataset:
    """A whole preprocessed dataset in memory: normalised tensors of its train and test splits."""

    modality: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    source: str
    vocab_size: int | None


@dataclass(frozen=True)
class DatasetStatus:
    """A built-in dataset and where :func:`load_task` would read it from here, now."""

    name: str
    modality: str
    family: str
    source: str  # "local:<dir>", "hub:<name>" or "bundled:<package>"
    available: bool  # False: only the hub has it, and it is not cached here
    hint: str = ""  # how to make it available when it is not: the three ways, in one line


class LoadedTasks:
    """Loaded tasks kept in memory (the least recently used are let go): the one cache of a process.

    The live backend keeps one; so does each of collect's worker processes. A task asked for
    with more training examples than there are loads as the real size (see :func:`load_task`);
    both keys then find it.
    """

    def __init__(self, data_dir: str | Path | None = None, size: int = 16, loaded: Iterable[TaskData] = ()) -> None:
        self.data_dir = data_dir
        self.size = size
        self._data: OrderedDict[str, TaskData] = OrderedDict()
        for data in loaded:
            self._keep(data.task.key(), data)

    def get(self, task: Task) -> TaskData:
        """The task's data, loaded now if it is not held."""
        key = task.key()
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        data = load_task(task, data_dir=self.data_dir)
        self._keep(data.task.key(), data)
        self._keep(key, data)
        return data

    def _keep(self, key: str, data: TaskData) -> None:
        self._data[key] = data
        while len(self._data) > self.size:
            self._data.popitem(last=False)


def load_task(task: Task, data_dir: str | Path | None = None) -> TaskData:
    """Load a task's train / validation / test tensors.

    Args:
        task: the task.
        data_dir: a folder holding ``<dataset>/{train,test}.parquet``; default ``$RLHPO_DATA_DIR``.

    Returns:
        The task's data. The validation split, ``min(15%, 1000)`` of the dataset's train split, is
        drawn with ``task.seed``; the training set is ``task.n_train`` of the rest; the test set is
        the dataset's whole test split. With ``task.classes``, only those classes are kept and
        class ``task.classes[i]`` becomes label ``i``. When fewer than ``task.n_train`` examples
        are left, all of them are used, with a warning, and ``TaskData.task`` says so: its
        ``n_train`` is the real size, so its ``key()`` names the data actually loaded.

    Raises:
        RlhpoError: for an unknown dataset or family, bad task values, missing columns, an empty
            or unreadable data file, labels that are not classes (see :func:`~rlhpo.tasks.preprocess.prepare`),
            or a dataset that no source can provide here (the hub is asked only when it can be reached).
    """
    spec = get_spec(task.dataset)
    _check_values(task)
    family_before_loading(task)  # fail before any slow loading
    overrides = ColumnOverrides(task.text_column, task.image_column, task.label_column)
    dataset = load_prepared(spec, overrides, resolve_data_dir(data_dir), cache_dir())
    family = resolve_family(task.family, dataset.modality, spec.family)
    rows, test_rows = torch.arange(len(dataset.y_train)), torch.arange(len(dataset.y_test))
    relabel = torch.arange(len(dataset.class_names))  # old label id -> new one; -1: dropped
    class_names = dataset.class_names
    if task.classes is not None:
        relabel = _class_lookup(task.classes, class_names, task.dataset)
        rows = torch.nonzero(relabel[dataset.y_train] >= 0).flatten()
        test_rows = torch.nonzero(relabel[dataset.y_test] >= 0).flatten()
        class_names = tuple(class_names[c] for c in task.classes)
    train_pos, val_pos = split_indices(relabel[dataset.y_train[rows]].numpy(), task.seed, task.n_train)
    if task.n_train is not None and task.n_train > len(train_pos):
        logger.warning(
            "%s: n_train=%d, but only %d training examples are left beside the validation split; using them all, "
            "and the loaded task says n_train=%d.",
            task.key(),
            task.n_train,
            len(train_pos),
            len(train_pos),
        )
        task = task.replace(n_train=len(train_pos))
    train_rows, val_rows = rows[torch.from_numpy(train_pos)], rows[torch.from_numpy(val_pos)]
    x_train, x_test = dataset.x_train, dataset.x_test
    if task.max_length is not None:
        if dataset.modality != "text":
            raise RlhpoError(f"max_length applies to text tasks only, but {task.dataset!r} is {dataset.modality}.")
        x_train, x_test = x_train[:, : task.max_length], x_test[:, : task.max_length]
    return TaskData(
        task=task,
        modality=dataset.modality,
        family=family,
        x_train=x_train[train_rows],
        y_train=relabel[dataset.y_train[train_rows]],
        x_val=x_train[val_rows],
        y_val=relabel[dataset.y_train[val_rows]],
        x_test=x_test[test_rows],
        y_test=relabel[dataset.y_test[test_rows]],
        class_names=class_names,
        source=dataset.source,
        vocab_size=dataset.vocab_size,
    )


def _check_values(task: Task) -> None:
    if task.n_train is not None and (not isinstance(task.n_train, int) or task.n_train < 1):
        raise RlhpoError(f"n_train must be a positive integer or None, but got {task.n_train=}.")
    if task.max_length is not None and (not isinstance(task.max_length, int) or task.max_length < 1):
        raise RlhpoError(f"max_length must be a positive integer or None, but got {task.max_length=}.")
    if task.classes is not None and (len(task.classes) < 2 or len(set(task.classes)) != len(task.classes)):
        raise RlhpoError(f"classes must hold at least 2 distinct label ids, but got {task.classes=}.")


def _class_lookup(classes: tuple[int, ...], class_names: tuple[str, ...], dataset: str) -> torch.Tensor:
    """A map from old label ids to new ones (``-1``: dropped)."""
    bad = [c for c in classes if not (isinstance(c, int | np.integer) and 0 <= c < len(class_names))]
    if bad:
        raise RlhpoError(
            f"classes must be label ids in 0..{len(class_names) - 1} of {dataset!r} "
            f"({', '.join(class_names)}), but got {bad}."
        )
    lookup = torch.full((len(class_names),), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    return lookup


def family_before_loading(task: Task) -> str | None:
    """The family ``task`` resolves to, without loading its data (None: only its data can say).

    Raises:
        RlhpoError: for a family that does not fit the dataset's modality.
    """
    spec = get_spec(task.dataset)
    if spec.modality is None or task.text_column or task.image_column:
        return None
    return resolve_family(task.family, spec.modality, spec.family)


def resolve_family(family: str | None, modality: str, default: str | None = None) -> str:
    """The model family: ``family`` if it fits the modality, else an error naming those that do."""
    valid = FAMILIES_BY_MODALITY[modality]
    if family is None:
        return default if default in valid else DEFAULT_FAMILY[modality]
    if family not in valid:
        raise unknown(f"family for {modality} data", family, valid)
    return family


@functools.lru_cache(maxsize=MEMO_SIZE)
def load_prepared(
    spec: DatasetSpec, overrides: ColumnOverrides, data_dir: Path | None, cache_root: Path
) -> PreparedDataset:
    """A preprocessed dataset, normalised, from memory, the disk cache, or its first working source.

    ``cache_root`` is only part of the memo key, so that a changed ``$RLHPO_CACHE_DIR`` is honoured.
    """
    del cache_root
    arrays = _prepared_arrays(spec, overrides, data_dir)
    x_train, x_test = (_to_tensor(x, arrays) for x in (arrays.x_train, arrays.x_test))
    return PreparedDataset(
        modality=arrays.modality,
        x_train=x_train,
        y_train=torch.from_numpy(arrays.y_train).long(),
        x_test=x_test,
        y_test=torch.from_numpy(arrays.y_test).long(),
        class_names=arrays.class_names,
        source=arrays.source,
        vocab_size=arrays.vocab_size,
    )


def _to_tensor(x: np.ndarray, arrays: PreparedArrays) -> torch.Tensor:
    """Token ids as int64; images and tabular features as float32, standardised."""
    if arrays.modality == "text":
        return torch.from_numpy(x.astype(np.int64))
    assert arrays.mean is not None and arrays.std is not None
    out = torch.from_numpy(x).float().sub_(torch.from_numpy(arrays.mean)).div_(torch.from_numpy(arrays.std))
    return torch.nan_to_num_(out) if arrays.modality == "tabular" else out  # a missing value becomes the mean


def _readable_name(spec: DatasetSpec) -> str:
    """The start of the cache file name: the dataset, or the folder's own name for a local path."""
    return spec.local_path.name if spec.local_path is not None else spec.name


def _params(spec: DatasetSpec, overrides: ColumnOverrides) -> dict[str, object]:
    """Everything besides the source that changes what preprocessing writes."""
    return {
        "modality": spec.modality,
        "input_column": spec.input_column,
        "label_column": spec.label_column,
        "max_len": spec.max_len,
        "vocab_size": spec.vocab_size,
        "overrides": overrides._asdict(),
    }


def _prepared_arrays(spec: DatasetSpec, overrides: ColumnOverrides, data_dir: Path | None) -> PreparedArrays:
    """From the disk cache, or preprocessed from the first source that can provide the dataset."""
    tried = []
    for source in candidate_sources(spec, data_dir):
        if isinstance(source, LocalSource) and not source.available():
            tried.append(f"{source.folder}: no train.parquet or train.csv")
            continue
        path = cache_path(_readable_name(spec), source.fingerprint(), _params(spec, overrides))
        cached = read_cached(path)
        if cached is not None:
            logger.debug("Dataset %s from cache %s", spec.name, path)
            return cached
        start = time.perf_counter()
        try:
            raw = source.read()
        except SourceUnavailable as e:
            logger.info("Dataset %s is not available from %s: %s", spec.name, source.name, e)
            tried.append(str(e))
            continue
        arrays, tokenizer = prepare(raw, spec, overrides)
        if tokenizer is not None:
            write_atomic(path.with_suffix(".tokenizer.json"), tokenizer)
        write_cached(path, arrays)
        logger.info("Preprocessed %s from %s in %.1f s", spec.name, source.name, time.perf_counter() - start)
        return arrays
    raise _unavailable(spec, tried)


def _unavailable(spec: DatasetSpec, tried: list[str]) -> RlhpoError:
    if spec.local_path is not None:
        return RlhpoError(f"Dataset folder {str(spec.local_path)!r} holds no train.parquet or train.csv.")
    return RlhpoError(
        f"Dataset {spec.name!r} is not available here. Provide it in one of three ways: {how_to_provide(spec)}. "
        "For your own data, give a local folder path as the task (--task /path/to/folder) holding train.csv or "
        "train.parquet (and test.*), with --text-column/--image-column/--label-column if the columns are not the "
        f"usual ones. Tried: {'; '.join(tried) or 'nothing'}."
    )


def how_to_provide(spec: DatasetSpec) -> str:
    """The three ways to make a dataset available here, in one line."""
    hub = spec.hub_path or spec.name
    return (
        f"(1) --data-dir DIR or {DATA_DIR_ENV}=DIR, with DIR/{spec.data_folder}/train.parquet and "
        f"DIR/{spec.data_folder}/test.parquet in the Hugging Face hub schema of {hub!r}; "
        f"(2) internet access to the Hugging Face hub, which serves {hub!r}; "
        "(3) the bundled offline task 'digits' instead"
    )


def list_datasets(data_dir: str | Path | None = None) -> list[DatasetStatus]:
    """The built-in datasets, each with the source it would come from and whether it is here now.

    Cheap: it looks for local files and cache files only, never calls the hub.
    """
    folder = resolve_data_dir(data_dir)
    statuses = []
    for spec in BUILTINS.values():
        sources = candidate_sources(spec, folder)
        found = next((s for s in sources if _available_now(s, spec)), None)
        source = found or next((s for s in sources if not isinstance(s, LocalSource)), sources[0])
        assert spec.modality is not None and spec.family is not None
        hint = "" if found else how_to_provide(spec)
        statuses.append(DatasetStatus(spec.name, spec.modality, spec.family, source.name, found is not None, hint))
    return statuses


def _available_now(source: Source, spec: DatasetSpec) -> bool:
    if isinstance(source, LocalSource):
        return source.available()
    if isinstance(source, BundledSource):
        return True
    return cache_path(_readable_name(spec), source.fingerprint(), _params(spec, ColumnOverrides())).is_file()
