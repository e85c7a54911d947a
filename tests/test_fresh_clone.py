"""A fresh clone without the datasets: tests that need them skip with one how-to line, or fail in CI.

Each case runs pytest in a subprocess on a generated three-test module, with this suite's
conftest.py loaded as a plugin (``-p conftest``) and nothing of the caller's data settings.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HOW_TO = "RLHPO_DATA_DIR=/path/to/data make test"
CALLERS_SETTINGS = ("RLHPO_DATA_DIR", "RLHPO_REQUIRE_DATA", "PYTEST_ADDOPTS")
MODULE = """\
import pytest


def test_reads_the_data_folder(data_dir):
    assert data_dir.is_dir()


@pytest.mark.needs_data
def test_marked_as_needing_data():
    pass


def test_needs_nothing():
    pass
"""


@pytest.fixture
def pytest_here(tmp_path):
    """Run pytest -q on the generated module with these environment changes; (exit code, output)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no setup.cfg options from above
    (tmp_path / "test_module.py").write_text(MODULE)

    def run(**env_changes: str) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k not in CALLERS_SETTINGS}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
        env.update(env_changes)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "test_module.py"]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    return run


def test_without_data_the_data_tests_skip_and_one_line_says_how_to_run_them(pytest_here):
    code, output = pytest_here()
    assert code == 0, output
    assert "1 passed, 2 skipped" in output
    assert [line for line in output.splitlines() if HOW_TO in line] == [
        "2 tests that need the real datasets skipped; run them with "
        "RLHPO_DATA_DIR=/path/to/data make test (a folder of <name>/{train,test}.parquet in the "
        "Hugging Face hub schema)."
    ]


def test_require_data_turns_those_skips_into_failures(pytest_here):
    code, output = pytest_here(RLHPO_REQUIRE_DATA="1")
    assert code == 1, output
    assert "1 passed, 2 errors" in output and "skipped" not in output
    assert "needs the real datasets and RLHPO_DATA_DIR is not set (RLHPO_REQUIRE_DATA=1)" in output


def test_with_a_data_folder_every_test_runs(pytest_here, tmp_path):
    (tmp_path / "data").mkdir()
    code, output = pytest_here(RLHPO_DATA_DIR=str(tmp_path / "data"), RLHPO_REQUIRE_DATA="1")
    assert code == 0 and "3 passed" in output and HOW_TO not in output, output


def test_a_data_folder_that_does_not_exist_is_an_error_not_a_skip(pytest_here, tmp_path):
    code, output = pytest_here(RLHPO_DATA_DIR=str(tmp_path / "nowhere"))
    assert code == pytest.ExitCode.USAGE_ERROR, output
    assert f"RLHPO_DATA_DIR='{tmp_path / 'nowhere'}' is not a folder" in output
