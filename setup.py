"""Lists every sub-package so that envs/, agents/ and configs/ install as rlhpo.envs, rlhpo.agents
and rlhpo.configs under both ``pip install .`` and ``pip install -e .``; the rest is in setup.cfg."""

from setuptools import find_packages, setup

PACKAGE_DIR = {"rlhpo": "rlhpo", "rlhpo.envs": "envs", "rlhpo.agents": "agents", "rlhpo.configs": "configs"}


def packages() -> list[str]:
    found = []
    for name, folder in PACKAGE_DIR.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


setup(package_dir=PACKAGE_DIR, packages=packages())
