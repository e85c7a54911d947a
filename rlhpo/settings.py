"""Read YAML mappings into frozen, typed dataclasses: an unknown key is an error, never ignored."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhpo.errors import RlhpoError, unknown

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file holding a mapping."""
    path = Path(path)
    if not path.is_file():
        raise RlhpoError(f"Config file {str(path)!r} does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise RlhpoError(f"Config file {str(path)!r} must hold a mapping, but got {type(data).__name__}.")
    return data


# Files shipped inside the package, as ``<folder>/<name>`` under ``rlhpo/`` (see :func:`shipped_file`).
SHIPPED_SPACE = "configs/search_space.yaml"
SHIPPED_STORE = "assets/meta_dataset.sqlite"  # the meta-dataset the shipped policy was trained on
SHIPPED_POLICY = "assets/policy.zip"


def shipped_file(path: str) -> Path:
    """Where a file shipped with the package is, e.g. ``shipped_file("configs/collect.yaml")``.

    ``configs/`` and ``assets/`` are packages of their own (``rlhpo.configs``, ``rlhpo.assets``),
    so they are found the same way in a wheel and in an editable install.
    """
    folder, _, name = path.partition("/")
    return Path(str(resources.files(f"rlhpo.{folder}").joinpath(name)))


def check_keys(where: str, data: dict[str, Any], valid: list[str]) -> None:
    """Raise for the first key of ``data`` that is not in ``valid``, naming the valid ones."""
    for key in data:
        if key not in valid:
            raise unknown(f"key in {where}:", str(key), valid)


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are errors, missing keys take defaults."""
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    check_keys(where, data, fields)
    try:
        return cls(**data)
    except TypeError as e:  # a required field is missing
        raise RlhpoError(f"{where}: {e}") from None
