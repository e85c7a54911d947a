"""Raw rows to compact arrays, once per dataset: decode images, tokenize text, read tabular features.

Text is tokenized by a BPE tokenizer trained here on the train split only (lowercased, ``<br />``
tags removed, split on spaces and punctuation; id 0 is ``[PAD]``, id 1 ``[UNK]``), then padded with 0
or truncated to the dataset's sequence length: the 90th percentile of the training texts' token
counts, capped by the spec's ``max_len``. BPE rather than WordPiece because the ``tokenizers``
WordPiece trainer is not deterministic (huggingface/tokenizers#1794: its ``##`` tokens get ids in
hash-map order), so a rebuilt cache or another machine would give other token ids.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from rlhpo.errors import RlhpoError
from rlhpo.tasks.cache import PreparedArrays
from rlhpo.tasks.registry import DatasetSpec
from rlhpo.tasks.sources import RawDataset
from rlhpo.tasks.splits import stratified_choice

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence")
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
SPECIAL_TOKENS = ("[PAD]", "[UNK]")  # ids 0 and 1
LENGTH_PERCENTILE = 90
TEST_FRACTION = 0.2  # carved from train when a dataset has no test split
# A label column with more distinct values than max(MIN_CLASS_LIMIT, rows / 2) is not a set of
# classes: each class would average fewer than two rows, too few to train, validate and test on.
# Free text or a continuous target in the label column (swapped columns, say) trips it; a
# dataset of a few hundred rows may still have up to 100 classes.
MIN_CLASS_LIMIT = 100
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class ColumnOverrides(NamedTuple):
    """Column names a user gave (``--text-column``...); ``None`` means "find it"."""

    text: str | None = None
    image: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Columns:
    """The columns a dataset is read from: one image or text column, or numeric features."""

    modality: str
    label: str
    input: str | None = None
    features: tuple[str, ...] = ()


def resolve_columns(schema: pa.Schema, spec: DatasetSpec, overrides: ColumnOverrides) -> Columns:
    """Pick the label and input columns: overrides first, then the spec, then the usual names.

    Raises:
        RlhpoError: when a named column is missing or none can be found; the message lists the
            dataset's columns.
    """
    names = schema.names

    def check(column: str, flag: str) -> str:
        if column not in names:
            raise RlhpoError(
                f"Column {column!r} ({flag}) is not in dataset {spec.name!r}; its columns are: {', '.join(names)}."
            )
        return column

    label = overrides.label or spec.label_column or _first(LABEL_COLUMNS, names)
    if label is None:
        raise RlhpoError(
            f"Dataset {spec.name!r} has no column named {' or '.join(LABEL_COLUMNS)}; its columns are: "
            f"{', '.join(names)}. Name the label column with --label-column."
        )
    check(label, "--label-column")
    if overrides.image:
        return Columns("image", label, check(overrides.image, "--image-column"))
    if overrides.text:
        return Columns("text", label, check(overrides.text, "--text-column"))
    if spec.modality is not None and spec.input_column is not None:
        return Columns(spec.modality, label, check(spec.input_column, "input column"))
    if spec.modality != "tabular":
        if image := _first(IMAGE_COLUMNS, names):
            return Columns("image", label, image)
        if text := _first(TEXT_COLUMNS, names):
            return Columns("text", label, text)
    features = tuple(c for c in names if c != label)
    non_numeric = [c for c in features if not _is_numeric(schema.field(c).type)]
    if not features or non_numeric:
        raise RlhpoError(
            f"Cannot tell the input of dataset {spec.name!r}: no column named "
            f"{'/'.join(TEXT_COLUMNS + IMAGE_COLUMNS)}, and not all other columns are numeric; its columns are: "
            f"{', '.join(names)}. Name the input with --text-column or --image-column."
        )
    return Columns("tabular", label, None, features)


def _first(candidates: tuple[str, ...], names: list[str]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def prepare(raw: RawDataset, spec: DatasetSpec, overrides: ColumnOverrides) -> tuple[PreparedArrays, str | None]:
    """Preprocess a raw dataset; returns the arrays and, for text, the tokenizer as JSON.

    Raises:
        RlhpoError: when the test split lacks a column of train, no train row has a label, the
            splits hold labels of different types, or the label column has too many distinct
            values to be classes (see :data:`MIN_CLASS_LIMIT`).
    """
    columns = resolve_columns(raw.train.schema, spec, overrides)
    if raw.test is not None:
        _check_test_columns(raw.test, columns, spec.name)
    label_names = raw.label_names.get(columns.label)
    train = _labelled(raw.train, columns.label, "train", spec.name)
    if len(train) == 0:
        raise RlhpoError(
            f"The train split of dataset {spec.name!r} has no labelled rows: all {len(raw.train)} have an empty "
            f"(or negative) label in column {columns.label!r}. Name the label column with --label-column."
        )
    test = _labelled(raw.test, columns.label, "test", spec.name) if raw.test is not None else None
    if test is not None and len(test) == 0:
        test = None
    if test is not None:
        _check_label_types(train.column(columns.label), test.column(columns.label), columns.label, spec.name)
    y_train, y_test, class_names = encode_labels(
        train.column(columns.label), test.column(columns.label) if test is not None else None, label_names
    )
    _check_n_classes(len(class_names), len(train) + (len(test) if test is not None else 0), columns, spec.name)
    if test is None or y_test is None:
        train, test, y_train, y_test = _carve_test(train, y_train)
        logger.warning(
            "Dataset %r has no labelled test split; a fixed, stratified %.0f%% of its train split (%d of %d rows) "
            "is its test split.",
            spec.name,
            100 * TEST_FRACTION,
            len(test),
            len(train) + len(test),
        )
    arrays = PreparedArrays(columns.modality, _empty(), y_train, _empty(), y_test, class_names, raw.source)
    tokenizer_json = None
    if columns.modality == "image":
        arrays.x_train = decode_images(train.column(columns.input))
        arrays.x_test = decode_images(test.column(columns.input), size_and_mode(arrays.x_train))
        arrays.mean, arrays.std = _stats(arrays.x_train, axis=(0, 2, 3))
    elif columns.modality == "text":
        tokenizer, arrays.x_train, arrays.x_test = tokenize(
            _texts(train, columns.input, "train", spec.name), _texts(test, columns.input, "test", spec.name), spec
        )
        arrays.vocab_size = tokenizer.get_vocab_size()
        tokenizer_json = tokenizer.to_str()
    else:
        arrays.x_train, arrays.x_test = (_features(t, columns.features) for t in (train, test))
        arrays.mean, arrays.std = _stats(arrays.x_train, axis=(0,))
    return arrays, tokenizer_json


def _check_test_columns(test: pa.Table, columns: Columns, dataset: str) -> None:
    needed = (columns.label, columns.input) if columns.input else (columns.label, *columns.features)
    missing = [c for c in needed if c not in test.column_names]
    if missing:
        raise RlhpoError(
            f"The test split of dataset {dataset!r} lacks the column(s) {', '.join(missing)} that train has; its "
            f"columns are: {', '.join(test.column_names)}. Give both splits the same columns, or leave the test "
            "file out to carve a test split from train."
        )


def _check_label_types(train: pa.ChunkedArray, test: pa.ChunkedArray, column: str, dataset: str) -> None:
    kinds = _label_kind(train.type), _label_kind(test.type)
    if kinds[0] != kinds[1]:
        raise RlhpoError(
            f"The label column {column!r} of dataset {dataset!r} must hold the same type of label in train and "
            f"test, but got train {kinds[0]} ({train.type}) and test {kinds[1]} ({test.type}). Write the labels "
            "the same way in both files: all class names, or all integer ids."
        )


def _label_kind(dtype: pa.DataType) -> str:
    if pa.types.is_integer(dtype):
        return "integers"
    if pa.types.is_floating(dtype):
        return "decimals"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "strings"
    return str(dtype)


def _check_n_classes(n_classes: int, n_rows: int, columns: Columns, dataset: str) -> None:
    limit = max(MIN_CLASS_LIMIT, n_rows // 2)
    if n_classes <= limit:
        return
    source = f"{columns.modality} column {columns.input!r}" if columns.input else f"{len(columns.features)} features"
    raise RlhpoError(
        f"The label column {columns.label!r} of dataset {dataset!r} holds {n_classes} distinct values in {n_rows} "
        f"rows, but a classification task has at most max({MIN_CLASS_LIMIT}, rows / 2) = {limit} classes: the "
        f"column may hold free text or a continuous target. The input was taken from the {source}. If the "
        "columns are swapped or misnamed, name them with --label-column and --text-column (or --image-column)."
    )


def _carve_test(train: pa.Table, y: np.ndarray) -> tuple[pa.Table, pa.Table, np.ndarray, np.ndarray]:
    """Split a fixed, stratified 20% test split off ``train`` (seed 0: the same for every task)."""
    test_pos = np.sort(stratified_choice(y, round(TEST_FRACTION * len(y)), np.random.default_rng(0)))
    train_pos = np.setdiff1d(np.arange(len(y)), test_pos)
    return train.take(train_pos), train.take(test_pos), y[train_pos], y[test_pos]


def _empty() -> np.ndarray:
    return np.zeros(0, np.float32)


def _labelled(table: pa.Table, label: str, split: str, dataset: str) -> pa.Table:
    """Drop rows without a label (nulls, and the ``-1`` the hub uses for unlabelled rows), with a warning."""
    column = table.column(label)
    keep = pc.is_valid(column)
    if pa.types.is_integer(column.type):
        keep = pc.and_(keep, pc.greater_equal(column, 0))
    kept = table.filter(keep)
    if len(kept) < len(table):
        logger.warning(
            "Dataset %r: dropped %d of %d %s rows that have no label (empty, or a negative id) in column %r.",
            dataset,
            len(table) - len(kept),
            len(table),
            split,
            label,
        )
    return kept


def encode_labels(
    train: pa.ChunkedArray, test: pa.ChunkedArray | None, names: list[str] | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Label ids (int64) and class names.

    Integer labels with ``ClassLabel`` names are ids already. Other labels (strings, or integers
    without names) are mapped to ids in sorted order of the values seen in train and test.
    """
    y_train = train.to_numpy(zero_copy_only=False)
    y_test = test.to_numpy(zero_copy_only=False) if test is not None else None
    if names is not None and pa.types.is_integer(train.type):
        return y_train.astype(np.int64), (y_test.astype(np.int64) if y_test is not None else None), tuple(names)
    seen = y_train if y_test is None else np.concatenate([y_train, y_test])
    values = np.unique(seen)
    to_id = {value: i for i, value in enumerate(values.tolist())}
    ids = [np.array([to_id[v] for v in y.tolist()], np.int64) if y is not None else None for y in (y_train, y_test)]
    return ids[0], ids[1], tuple(str(v) for v in values.tolist())


def size_and_mode(images: np.ndarray) -> tuple[tuple[int, int], str]:
    """PIL ``(width, height)`` and mode of a stack of ``(N, C, H, W)`` images."""
    return (images.shape[3], images.shape[2]), "L" if images.shape[1] == 1 else "RGB"


def decode_images(column: pa.ChunkedArray, like: tuple[tuple[int, int], str] | None = None) -> np.ndarray:
    """Decode an image column (``{bytes, path}`` structs, raw bytes or paths) to uint8 ``(N, C, H, W)``.

    All images take the size and mode (grey ``L`` or ``RGB``) of ``like``, or else of the first image.
    """
    items = _image_items(column)
    if not items:
        raise RlhpoError("The image column is empty.")
    if like is None:
        first = _open(items[0])
        like = first.size, "L" if first.mode in _GREY_MODES else "RGB"
    size, mode = like
    out = np.empty((len(items), size[1], size[0], 1 if mode == "L" else 3), np.uint8)
    resized = 0
    for i, item in enumerate(items):
        image = _open(item).convert(mode)
        if image.size != size:
            image, resized = image.resize(size, Image.Resampling.BILINEAR), resized + 1
        out[i] = np.asarray(image).reshape(out.shape[1:])
    if resized:
        logger.warning("Resized %d of %d images to %dx%d.", resized, len(items), *size)
    # A copy, not np.ascontiguousarray: with one channel the transposed view already counts as
    # contiguous and would keep strides (H*W, 1, W, 1). torch then takes the images as channels-last,
    # and its convolutions compute another curve than on the same images read back from the cache
    # (mnist, default config, seed 0: test accuracy 0.961 against 0.958).
    return out.transpose(0, 3, 1, 2).copy()


def _image_items(column: pa.ChunkedArray) -> list[bytes | str]:
    if pa.types.is_struct(column.type):
        fields = [column.type.field(i).name for i in range(column.type.num_fields)]
        data = pc.struct_field(column, "bytes").to_pylist() if "bytes" in fields else [None] * len(column)
        paths = pc.struct_field(column, "path").to_pylist() if "path" in fields else [None] * len(column)
        return [b if b is not None else p for b, p in zip(data, paths)]
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type) or pa.types.is_string(column.type):
        return column.to_pylist()
    raise RlhpoError(f"An image column must hold images, bytes or file paths, but it holds {column.type}.")


def _open(item: bytes | str | None) -> Image.Image:
    if item is None:
        raise RlhpoError("An image has neither bytes nor a path.")
    return Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)


def _stats(x: np.ndarray, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over ``axis`` (float32, kept dims so they broadcast); a std of 0 becomes 1."""
    mean = np.nanmean(x, axis=axis, dtype=np.float64, keepdims=True)
    std = np.nanstd(x, axis=axis, dtype=np.float64, keepdims=True)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _texts(table: pa.Table, column: str, split: str, dataset: str) -> list[str]:
    """The texts of ``column``; a missing or blank one becomes "" (all padding), with a warning."""
    texts = ["" if t is None else str(t) for t in table.column(column).to_pylist()]
    blank = sum(not t.strip() for t in texts)
    if blank:
        logger.warning(
            "Dataset %r: %d of %d %s rows have no text in column %r; each becomes an empty (all-padding) sequence.",
            dataset,
            blank,
            len(texts),
            split,
            column,
        )
    return texts


def _features(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    arrays = [table.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in columns]
    return np.stack(arrays, axis=1) if arrays else np.zeros((len(table), 0), np.float32)


def new_tokenizer() -> Tokenizer:
    """An untrained BPE tokenizer: lowercases, drops ``<br />``, splits on spaces and punctuation."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.BertNormalizer(lowercase=True)]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a BPE tokenizer of at most ``vocab_size`` tokens on ``texts`` (deterministic)."""
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return tokenizer


def tokenize(train: list[str], test: list[str], spec: DatasetSpec) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    """Train a tokenizer on ``train`` and encode both splits as int32 ``(N, L)``, padded with 0."""
    tokenizer = train_tokenizer(train, spec.vocab_size or 10_000)
    train_ids = [e.ids for e in tokenizer.encode_batch(train)]
    lengths = np.array([len(ids) for ids in train_ids])
    seq_len = max(1, min(spec.max_len or 128, math.ceil(np.percentile(lengths, LENGTH_PERCENTILE))))
    logger.info(
        "Dataset %s: vocabulary %d, sequence length %d (p%d of train lengths, cap %s).",
        spec.name,
        tokenizer.get_vocab_size(),
        seq_len,
        LENGTH_PERCENTILE,
        spec.max_len,
    )
    test_ids = [e.ids for e in tokenizer.encode_batch(test)]
    return tokenizer, _pad(train_ids, seq_len), _pad(test_ids, seq_len)


def _pad(sequences: list[list[int]], length: int) -> np.ndarray:
    """Left-aligned ids, truncated to ``length`` and padded with 0."""
    out = np.zeros((len(sequences), length), np.int32)
    for i, ids in enumerate(sequences):
        ids = ids[:length]
        out[i, : len(ids)] = ids
    return out
