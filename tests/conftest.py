"""Shared test setup: offline, repo-local caches, and the real datasets when there are some.

The environment defaults are set when this file is imported, before any test module imports
``datasets`` or ``huggingface_hub`` (they read the offline flags at import). A variable that is
already set is left alone.

Data. Tests that read the real datasets (mnist, cifar10, imdb, ag_news, trec) find them in
``$RLHPO_DATA_DIR``, a folder of ``<name>/{train,test}.parquet`` in the Hugging Face hub schema.
There is no default folder: without ``RLHPO_DATA_DIR`` those tests skip, one line at the end of
the run says how to point them at data, and everything else (digits, the CLI, the env on digits)
runs. A test needs data when it requests the ``data_dir`` fixture, directly or through another
fixture, or carries ``@pytest.mark.needs_data``; ``pytest -m needs_data`` lists them.
``RLHPO_REQUIRE_DATA=1`` turns each of those skips into a failure, so CI (``.ci/run``) cannot go
green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "RLHPO_DATA_DIR"
REQUIRE_ENV = "RLHPO_REQUIRE_DATA"
DATA_FOLDER = "a folder of <name>/{train,test}.parquet in the Hugging Face hub schema"
HOW_TO = f"run them with {DATA_ENV}=/path/to/data make test ({DATA_FOLDER})"

for _name, _value in {
    "RLHPO_CACHE_DIR": str(REPO / ".cache" / "rlhpo"),
    "HF_HOME": str(REPO / ".cache" / "hf"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
}.items():
    os.environ.setdefault(_name, _value)


def _data_folder() -> Path | None:
    """``$RLHPO_DATA_DIR`` as an absolute path, or ``None`` when it is unset or empty."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _data_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


DATA = _data_folder()
if DATA is not None and DATA.is_dir():
    os.environ[DATA_ENV] = str(DATA)  # absolute, so a test that changes directory still finds it


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"needs_data: reads the real datasets from ${DATA_ENV}; skipped without it ({REQUIRE_ENV}=1: fails)"
    )
    if DATA is not None and not DATA.is_dir():
        raise pytest.UsageError(
            f"{DATA_ENV}={os.environ[DATA_ENV]!r} is not a folder; expected {DATA_FOLDER}, "
            "or leave it unset to skip the tests that need data."
        )


def pytest_report_header(config: pytest.Config) -> str:
    if DATA is not None:
        return f"rlhpo data: {DATA} (${DATA_ENV})"
    return f"rlhpo data: none, tests that need it skip; {HOW_TO}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test whose fixtures include ``data_dir``, so ``-m needs_data`` selects it."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()) and item.get_closest_marker("needs_data") is None:
            item.add_marker(pytest.mark.needs_data)


_MISSED = pytest.StashKey[int]()  # how many tests needed data that was not there


def _no_data(config: pytest.Config) -> None:
    """Skip (or, with ``RLHPO_REQUIRE_DATA``, fail) a test that needs data when there is none."""
    config.stash[_MISSED] = config.stash.get(_MISSED, 0) + 1
    if _data_required():
        pytest.fail(f"needs the real datasets and {DATA_ENV} is not set ({REQUIRE_ENV}=1); {HOW_TO}", pytrace=False)
    pytest.skip(f"needs the real datasets and {DATA_ENV} is not set; {HOW_TO}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if DATA is None and item.get_closest_marker("needs_data") is not None:
        _no_data(item.config)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    missed = config.stash.get(_MISSED, 0)
    if missed:
        what = "failed" if _data_required() else "skipped"
        terminalreporter.write_line(f"{missed} tests that need the real datasets {what}; {HOW_TO}.")


@pytest.fixture(scope="session")
def data_dir(pytestconfig: pytest.Config) -> Path:
    """The data folder (``$RLHPO_DATA_DIR``): ``<name>/{train,test}.parquet`` per dataset."""
    if DATA is None:
        _no_data(pytestconfig)
    return DATA
