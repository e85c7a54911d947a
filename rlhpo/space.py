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
FAMILY = "family"  # the model family: a dimension of a space that lists families per modality
# Choices spread on a log scale are encoded by their log, so 1e-4..1e-1 is evenly spaced.
_LOG_SCALE = {"learning_rate", "batch_size", "epochs", "units"}


@dataclass(frozen=True)
class Config:
    """One choice for each of the eight hyperparameters, and the model family.

    ``family`` is ``None`` in a space without a family dimension (the task's family is trained);
    the key of such a config is what it was before families were searched, so older stores and
    policies keep their meaning.
    """

    learning_rate: float
    batch_size: int
    epochs: int
    dropout: float
    optimizer: str
    weight_decay: float
    num_layers: int
    units: int
    family: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.family is None:
            del d[FAMILY]
        return d

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

    def with_family(self, family: str | None) -> Config:
        return dataclasses.replace(self, family=family)


def _canonical(value: Any) -> Any:
    # repr of a float is exact and the same on every machine; ints and strings are themselves.
    return repr(float(value)) if isinstance(value, float) else value


@dataclass(frozen=True)
class SearchSpace:
    """The choices of each hyperparameter and the default config; and, when searched, the families.

    ``families`` lists the model families a task of each modality may train (``None``: the space
    has no family dimension and a task trains its own family). The family's action index is read
    within the task's modality's list, modulo its length (see :meth:`decode`).
    """

    choices: dict[str, tuple[Any, ...]]
    default: Config  # family None; :meth:`default_config` adds the modality's default family
    families: dict[str, tuple[str, ...]] | None = None
    default_families: dict[str, str] | None = None

    @property
    def dims(self) -> tuple[str, ...]:
        """The action's dimensions, in order: the eight hyperparameters, then ``family`` if searched."""
        return HYPERPARAMETERS + (FAMILY,) if self.families else HYPERPARAMETERS

    @property
    def nvec(self) -> list[int]:
        """Number of choices per dimension; the family's is that of the modality with the most."""
        out = [len(self.choices[h]) for h in HYPERPARAMETERS]
        if self.families:
            out.append(max(len(f) for f in self.families.values()))
        return out

    @property
    def max_epochs(self) -> int:
        """The largest epochs choice: one full-training equivalent (FTE)."""
        return max(self.choices["epochs"])

    def size(self) -> int:
        return math.prod(self.nvec)

    def family_choices(self, modality: str | None) -> tuple[str, ...]:
        """The families a task of ``modality`` may train in this space."""
        if not self.families:
            raise RlhpoError("This search space has no family dimension.")
        if modality not in self.families:
            raise unknown("modality of the family choices", str(modality), self.families)
        return self.families[modality]

    def default_config(self, modality: str | None = None) -> Config:
        """The default config; with a family dimension, with the modality's default family."""
        if not self.families:
            return self.default
        assert self.default_families is not None
        return self.default.with_family(self.default_families[str(modality)])

    def check_default(self) -> None:
        """Raise unless the default config (with each modality's default family) is one of the choices."""
        for modality in self.families or (None,):
            self.indices(self.default_config(modality), modality)

    def to_dict(self) -> dict[str, Any]:
        """The space as plain JSON values (floats round-trip exactly): what policy and rollout files carry,
        so that an action always decodes in the space it was chosen in."""
        out: dict[str, Any] = {
            "choices": {h: list(self.choices[h]) for h in HYPERPARAMETERS},
            "default": self.default.to_dict(),
        }
        if self.families:
            out["choices"][FAMILY] = {m: list(f) for m, f in self.families.items()}
            out["default"][FAMILY] = dict(self.default_families or {})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """The inverse of :meth:`to_dict` (a space saved before families were searched has none)."""
        try:
            choices = {h: tuple(data["choices"][h]) for h in HYPERPARAMETERS}
            default = {h: data["default"][h] for h in HYPERPARAMETERS}
            families = data["choices"].get(FAMILY)
            space = cls(
                choices=choices,
                default=Config(**default),
                families={m: tuple(f) for m, f in families.items()} if families else None,
                default_families=dict(data["default"][FAMILY]) if families else None,
            )
            space.check_default()
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

    def decode(self, indices: Any, modality: str | None = None, family: str | None = None) -> Config:
        """Config for one choice index per dimension (an environment action).

        With a family dimension, the family index is read in ``modality``'s list, modulo its
        length, so every index names a family the task can train; a task whose family is pinned
        (``family``) trains that one whatever the index.
        """
        idx = np.asarray(indices).reshape(-1)
        if idx.shape != (len(self.dims),):
            raise RlhpoError(f"An action needs {len(self.dims)} indices, but got shape {idx.shape}.")
        values: dict[str, Any] = {}
        for h, i, n in zip(self.dims, idx, self.nvec):
            if not 0 <= int(i) < n:
                raise RlhpoError(f"Index {int(i)} for {h} is outside the {n} choices {self._choice_list(h)}.")
            if h == FAMILY:
                listed = self.family_choices(modality)
                values[h] = family or listed[int(i) % len(listed)]
            else:
                values[h] = self.choices[h][int(i)]
        return Config(**values)

    def indices(self, config: Config, modality: str | None = None) -> np.ndarray:
        """Choice indices of a config (the inverse of :meth:`decode`)."""
        out = []
        for h in self.dims:
            value = getattr(config, h)
            listed = self.family_choices(modality) if h == FAMILY else self.choices[h]
            if value not in listed:
                raise RlhpoError(f"{h}={value!r} is not one of the choices {list(listed)}.")
            out.append(listed.index(value))
        return np.asarray(out, dtype=np.int64)

    def encode(self, config: Config, modality: str | None = None) -> np.ndarray:
        """Normalised vector in [0, 1]^dims: each choice's position on its (log) scale.

        The family is its position in the modality's list (its order in ``search_space.yaml``).
        """
        out = [self._unit(h, getattr(config, h)) for h in HYPERPARAMETERS]
        if self.families:
            listed = self.family_choices(modality)
            out.append(listed.index(config.family) / (len(listed) - 1) if len(listed) > 1 else 0.0)
        return np.asarray(out, dtype=np.float32)

    def _unit(self, h: str, value: Any) -> float:
        choices = self.choices[h]
        if len(choices) == 1:
            return 0.0
        if h not in _LOG_SCALE:  # optimizer, dropout, weight decay (may hold 0): by rank
            ordered = list(choices) if h == "optimizer" else sorted(choices)
            return ordered.index(value) / (len(choices) - 1)
        lo, hi = math.log(min(choices)), math.log(max(choices))
        return (math.log(value) - lo) / (hi - lo)

    def sample_indices(self, rng: np.random.Generator, modality: str | None = None) -> np.ndarray:
        """Uniformly random choice indices; the family uniform over the modality's list."""
        out = [int(rng.integers(len(self.choices[h]))) for h in HYPERPARAMETERS]
        if self.families:
            out.append(int(rng.integers(len(self.family_choices(modality)))))
        return np.asarray(out, dtype=np.int64)

    def sample(self, rng: np.random.Generator, modality: str | None = None) -> Config:
        return self.decode(self.sample_indices(rng, modality), modality)

    def override(self, config: Config, assignments: dict[str, str]) -> Config:
        """Config with ``name=value`` strings applied (the CLI's ``--set``), each checked."""
        values = dataclasses.asdict(config)
        for name, text in assignments.items():
            if name not in self.dims:
                raise unknown("hyperparameter", name, self.dims)
            values[name] = self._parse(name, text)
        return Config(**values)

    def _choice_list(self, name: str) -> list[Any]:
        if name == FAMILY:
            return list(dict.fromkeys(f for listed in (self.families or {}).values() for f in listed))
        return list(self.choices[name])

    def _parse(self, name: str, text: str) -> Any:
        choices = self._choice_list(name)
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
            f"{name}={text} is not one of the choices {choices} (edit configs/search_space.yaml to add one)."
        )


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read and validate a search-space YAML (the shipped one by default).

    ``choices`` lists the eight hyperparameters and, optionally, ``family``: a mapping from each
    modality to the families its tasks may train; ``default`` then names a family per modality.
    """
    where = str(path or "configs/search_space.yaml")
    data = read_yaml(path or shipped_file(SHIPPED_SPACE))
    check_keys(where, data, ["choices", "default"])
    names = [*HYPERPARAMETERS, FAMILY]
    raw = data.get("choices")
    if not isinstance(raw, dict):
        raise RlhpoError(f"{where} needs a 'choices' mapping of the hyperparameters {', '.join(HYPERPARAMETERS)}.")
    check_keys(f"{where} choices", raw, names)
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
    check_keys(f"{where} default", default_raw, names)
    missing = [h for h in HYPERPARAMETERS if h not in default_raw]
    if missing:
        raise RlhpoError(f"{where} default lacks {', '.join(missing)}.")
    default = Config(**{h: _typed(h, default_raw[h], where) for h in HYPERPARAMETERS})
    families, default_families = _families(raw.get(FAMILY), default_raw.get(FAMILY), where)
    space = SearchSpace(choices=choices, default=default, families=families, default_families=default_families)
    space.check_default()
    return space


def _families(raw: Any, default: Any, where: str) -> tuple[dict[str, tuple[str, ...]] | None, dict[str, str] | None]:
    """The family choices per modality and the default family of each, checked against the models."""
    from rlhpo.tasks.task import FAMILIES_BY_MODALITY

    if raw is None and default is None:
        return None, None
    if not isinstance(raw, dict) or not isinstance(default, dict):
        raise RlhpoError(
            f"{where}: family needs a mapping of modality to families under choices, and of modality to "
            f"one family under default, but got choices {raw!r} and default {default!r}."
        )
    check_keys(f"{where} family choices", raw, list(FAMILIES_BY_MODALITY))
    families = {}
    for modality, listed in raw.items():
        valid = FAMILIES_BY_MODALITY[modality]
        if not isinstance(listed, list) or not listed:
            raise RlhpoError(f"{where}: family choices of {modality} must be a non-empty list, but got {listed!r}.")
        for family in listed:
            if family not in valid:
                raise unknown(f"family for {modality} data in {where}:", str(family), valid)
        families[modality] = tuple(str(f) for f in listed)
    if set(default) != set(families):
        raise RlhpoError(
            f"{where}: default family must name one family for each modality of the choices {sorted(families)}, "
            f"but got {default!r}."
        )
    for modality, family in default.items():
        if family not in families[modality]:
            raise RlhpoError(f"{where}: the default {modality} family {family!r} is not one of {families[modality]}.")
    return families, {m: str(f) for m, f in default.items()}


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
