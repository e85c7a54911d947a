"""`pip install .` from another directory installs envs/, agents/ and configs/ under rlhpo only."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_from_another_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (target / "rlhpo" / "envs" / "__init__.py").is_file()
    assert (target / "rlhpo" / "agents" / "__init__.py").is_file()
    assert (target / "rlhpo" / "configs" / "search_space.yaml").is_file()
    assert not (target / "envs").exists() and not (target / "agents").exists() and not (target / "configs").exists()
    # The installed copy (not the source tree) imports and reads its shipped config.
    code = (
        "import rlhpo, rlhpo.envs, rlhpo.agents; from rlhpo.space import load_search_space; "
        "print(rlhpo.__file__); print(load_search_space().max_epochs)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[0].startswith(str(target)) and int(out[1]) >= 1
