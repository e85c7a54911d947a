"""The on-disk cache of preprocessed datasets: one uncompressed ``.npz`` per dataset and source.

Files live under ``$RLHPO_CACHE_DIR/datasets`` (default ``~/.cache/rlhpo/datasets``), named by the
dataset and a digest of its source fingerprint, the column overrides and :data:`PREPROCESS_VERSION`.
Every write goes to a temporary file that replaces the target at once, so a killed process never
leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhpo.files import write_atomic

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "RLHPO_CACHE_DIR"
# Bump when preprocessing changes what it writes: older files are then ignored.
PREPROCESS_VERSION = 2


@dataclass
class PreparedArrays:
    """A preprocessed dataset as stored: compact dtypes, not yet normalised.

    Images are uint8 ``(N, C, H, W)``, text int32 token ids ``(N, L)`` padded with 0, tabular
    float32 ``(N, D)``. ``mean`` and ``std`` (images and tabular) come from the train split and
    broadcast against ``x``; labels are int64 ids into ``class_names``.
    """

    modality: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    vocab_size: int | None = None


def cache_dir() -> Path:
    """``$RLHPO_CACHE_DIR/datasets``, default ``~/.cache/rlhpo/datasets``."""
    root = os.environ.get(CACHE_DIR_ENV) or "~/.cache/rlhpo"
    return Path(root).expanduser() / "datasets"


def cache_path(name: str, fingerprint: str, params: dict[str, object]) -> Path:
    """The cache file of dataset ``name`` read from the source ``fingerprint`` with ``params``."""
    key = json.dumps({"fingerprint": fingerprint, "params": params, "version": PREPROCESS_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    readable = re.sub(r"[^\w.-]+", "_", name).strip("_")[-40:] or "dataset"
    return cache_dir() / f"{readable}-{digest}.npz"


def write_cached(path: Path, arrays: PreparedArrays) -> None:
    """Store ``arrays`` at ``path`` (atomically)."""
    meta = {"modality": arrays.modality, "source": arrays.source, "vocab_size": arrays.vocab_size}
    content = {
        "x_train": arrays.x_train,
        "y_train": arrays.y_train,
        "x_test": arrays.x_test,
        "y_test": arrays.y_test,
        "class_names": np.array(arrays.class_names, dtype=str),
        "meta": np.array(json.dumps(meta)),
    }
    if arrays.mean is not None and arrays.std is not None:
        content.update(mean=arrays.mean, std=arrays.std)
    write_atomic(path, lambda f: np.savez(f, **content))
    logger.info("Cached preprocessed dataset at %s", path)


def read_cached(path: Path) -> PreparedArrays | None:
    """The arrays stored at ``path``, or ``None`` when there is no readable file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            return PreparedArrays(
                modality=meta["modality"],
                x_train=npz["x_train"],
                y_train=npz["y_train"],
                x_test=npz["x_test"],
                y_test=npz["y_test"],
                class_names=tuple(str(n) for n in npz["class_names"]),
                source=meta["source"],
                mean=npz.get("mean"),
                std=npz.get("std"),
                vocab_size=meta["vocab_size"],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        logger.warning("Ignoring unreadable cache file %s (%s); preprocessing again.", path, e)
        return None
