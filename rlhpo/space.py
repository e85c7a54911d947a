"""The search space: the choices of the eight hyperparameters, and configs drawn from them.

The space is data (``configs/search_space.yaml``), read once into a frozen :class:`SearchSpace`.
A :class:`Config` is one choice for each hyperparameter. Configs are encoded two ways:
as choice indices (the environment's ``MultiDiscrete`` action) and as a normalised vector in
[0, 1]^8 (observations and nearest-config look-ups).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhpo.errors import RlhpoError, unknown
from rlhpo.settings import SHIPPED_SPACE, check_keys, read_yaml, shipped_file

HYPERPARAMETERS = (
    "learning_rate",
    "batch_size",
    "epochs",
    "dropout",
    "optimizer",
    "weight_decay",
    "num_layers",
    "units",
)
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
DEFAULT_BUDGET_FTE = 3.0  # a tuning budget of three full trainings: what tune, bench and meta-training use by default
# Choices spread on a log scale are encoded by their log, so 1e-4..1e-1 is evenly spaced.
_LOG_SCALE = {"learning_rate", "batch_size", "epochs", "units"}


@dataclass(frozen=True)
class Config:
    """One choice for each of the eight hyperparameters."""

    learning_rate: float
    batch_size: int
    epochs: int
    dropout: float
    optimizer: str
    weight_decay: float
    num_layers: int
    units: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable identifier of the config *without* its epochs (the fidelity).

        A run trained for 9 epochs also records the 1- and 3-epoch results of the same
        config, so curves are keyed by everything but the epochs.
        """
        d = self.to_dict()
        d.pop("epochs")
        text = json.dumps({k: _canonical(v) for k, v in sorted(d.items())}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def with_epochs(self, epochs: int) -> Config:
        return dataclasses.replace(self, epochs=epochs)


def _canonical(value: Any) -> Any:
    # repr of a float is exact and the same on every machine; ints and strings are themselves.
    return repr(float(value)) if isinstance(value, float) else value


@dataclass(frozen=True)
class SearchSpace:
    """The choices of each hyperparameter and the default config."""

    choices: dict[str, tuple[Any, ...]]
    default: Config

    @property
    def nvec(self) -> list[int]:
        """Number of choices per hyperparameter, in :data:`HYPERPARAMETERS` order."""
        return [len(self.choices[h]) for h in HYPERPARAMETERS]

    @property
    def max_epochs(self) -> int:
        """The largest epochs choice: one full-training equivalent (FTE)."""
        return max(self.choices["epochs"])

    def size(self) -> int:
        return math.prod(self.nvec)

    def to_dict(self) -> dict[str, Any]:
        """The space as plain JSON values (floats round-trip exactly): what policy and rollout files carry,
        so that an action always decodes in the space it was chosen in."""
        return {"choices": {h: list(self.choices[h]) for h in HYPERPARAMETERS}, "default": self.default.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """The inverse of :meth:`to_dict`."""
        try:
            choices = {h: tuple(data["choices"][h]) for h in HYPERPARAMETERS}
            space = cls(choices=choices, default=Config(**data["default"]))
            space.indices(space.default)
        except (KeyError, TypeError) as e:
            raise RlhpoError(
                f"A recorded search space must list the choices of {', '.join(HYPERPARAMETERS)}: {e}"
            ) from None
        return space

    def budget_epochs(self, budget_fte: float = DEFAULT_BUDGET_FTE) -> int:
        """A budget in full-training equivalents (FTE) as epochs; at least the smallest epochs choice."""
        epochs = round(budget_fte * self.max_epochs) if math.isfinite(budget_fte) else 0
        smallest = min(self.choices["epochs"])
        if epochs < smallest:
            raise RlhpoError(
                f"A budget of {budget_fte} FTE is {epochs} epochs, less than the smallest trial ({smallest} epochs); "
                f"give at least {smallest / self.max_epochs:.3g} FTE."
            )
        return epochs

    def decode(self, indices: Any) -> Config:
        """Config for one choice index per hyperparameter (an environment action)."""
        idx = np.asarray(indices).reshape(-1)
        if idx.shape != (len(HYPERPARAMETERS),):
            raise RlhpoError(f"An action needs {len(HYPERPARAMETERS)} indices, but got shape {idx.shape}.")
        values = {}
        for h, i, n in zip(HYPERPARAMETERS, idx, self.nvec):
            if not 0 <= int(i) < n:
                raise RlhpoError(f"Index {int(i)} for {h} is outside the {n} choices {list(self.choices[h])}.")
            values[h] = self.choices[h][int(i)]
        return Config(**values)

    def indices(self, config: Config) -> np.ndarray:
        """Choice indices of a config (the inverse of :meth:`decode`)."""
        out = []
        for h in HYPERPARAMETERS:
            value = getattr(config, h)
            if value not in self.choices[h]:
                raise RlhpoError(f"{h}={value!r} is not one of the choices {list(self.choices[h])}.")
            out.append(self.choices[h].index(value))
        return np.asarray(out, dtype=np.int64)

    def encode(self, config: Config) -> np.ndarray:
        """Normalised vector in [0, 1]^8: each choice's position on its (log) scale."""
        return np.asarray([self._unit(h, getattr(config, h)) for h in HYPERPARAMETERS], dtype=np.float32)

    def _unit(self, h: str, value: Any) -> float:
        choices = self.choices[h]
        if len(choices) == 1:
            return 0.0
        if h not in _LOG_SCALE:  # optimizer, dropout, weight decay (may hold 0): by rank
            ordered = list(choices) if h == "optimizer" else sorted(choices)
            return ordered.index(value) / (len(choices) - 1)
        lo, hi = math.log(min(choices)), math.log(max(choices))
        return (math.log(value) - lo) / (hi - lo)

    def sample(self, rng: np.random.Generator) -> Config:
        return self.decode([rng.integers(n) for n in self.nvec])

    def override(self, config: Config, assignments: dict[str, str]) -> Config:
        """Config with ``name=value`` strings applied (the CLI's ``--set``), each checked."""
        values = config.to_dict()
        for name, text in assignments.items():
            if name not in self.choices:
                raise unknown("hyperparameter", name, HYPERPARAMETERS)
            values[name] = self._parse(name, text)
        return Config(**values)

    def _parse(self, name: str, text: str) -> Any:
        choices = self.choices[name]
        for choice in choices:
            if isinstance(choice, str) and text == choice:
                return choice
            if not isinstance(choice, str):
                try:
                    if math.isclose(float(text), float(choice), rel_tol=1e-9, abs_tol=0.0):
                        return choice
                except ValueError:
                    break
        raise RlhpoError(
            f"{name}={text} is not one of the choices {list(choices)} (edit configs/search_space.yaml to add one)."
        )


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read and validate a search-space YAML (the shipped one by default)."""
    where = str(path or "configs/search_space.yaml")
    data = read_yaml(path or shipped_file(SHIPPED_SPACE))
    check_keys(where, data, ["choices", "default"])
    raw = data.get("choices")
    if not isinstance(raw, dict):
        raise RlhpoError(f"{where} needs a 'choices' mapping of the hyperparameters {', '.join(HYPERPARAMETERS)}.")
    check_keys(f"{where} choices", raw, list(HYPERPARAMETERS))
    missing = [h for h in HYPERPARAMETERS if h not in raw]
    if missing:
        raise RlhpoError(f"{where} lacks choices for {', '.join(missing)}.")
    choices: dict[str, tuple[Any, ...]] = {}
    for h in HYPERPARAMETERS:
        values = raw[h]
        if not isinstance(values, list) or not values:
            raise RlhpoError(f"{where}: {h} must be a non-empty list, but got {values!r}.")
        choices[h] = tuple(_typed(h, v, where) for v in values)
    default_raw = data.get("default")
    if not isinstance(default_raw, dict):
        raise RlhpoError(f"{where} needs a 'default' config with all of {', '.join(HYPERPARAMETERS)}.")
    check_keys(f"{where} default", default_raw, list(HYPERPARAMETERS))
    missing = [h for h in HYPERPARAMETERS if h not in default_raw]
    if missing:
        raise RlhpoError(f"{where} default lacks {', '.join(missing)}.")
    default = Config(**{h: _typed(h, default_raw[h], where) for h in HYPERPARAMETERS})
    space = SearchSpace(choices=choices, default=default)
    space.indices(default)  # the default must be one of the choices
    return space


def _typed(h: str, value: Any, where: str) -> Any:
    try:
        if h == "optimizer":
            if value not in OPTIMIZERS:
                raise unknown(f"optimizer in {where}:", str(value), OPTIMIZERS)
            return str(value)
        if h in ("batch_size", "epochs", "num_layers", "units"):
            if int(value) != value or int(value) < 1:
                raise ValueError
            return int(value)
        v = float(value)
        if not math.isfinite(v) or v < 0 or (h == "dropout" and v >= 1) or (h == "learning_rate" and v <= 0):
            raise ValueError
        return v
    except (TypeError, ValueError):
        raise RlhpoError(f"{where}: {h} has an invalid value {value!r}.") from None
