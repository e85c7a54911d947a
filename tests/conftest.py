"""Shared test setup: offline, repo-local caches, and the shared data folder.

The environment defaults are set when this file is imported, before any test module imports
``datasets`` or ``huggingface_hub`` (they read the offline flags at import). A variable that is
already set is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

for _name, _value in {
    "RLHPO_DATA_DIR": str(REPO.parent / "shared" / "data"),
    "RLHPO_CACHE_DIR": str(REPO / ".cache" / "rlhpo"),
    "HF_HOME": str(REPO / ".cache" / "hf"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
}.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder (``$RLHPO_DATA_DIR``): ``<name>/{train,test}.parquet`` per dataset."""
    path = Path(os.environ["RLHPO_DATA_DIR"])
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is missing")
    return path
