"""Draw many small, diverse task instances from a few datasets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from rlhpo.errors import RlhpoError, unknown
from rlhpo.tasks.registry import DatasetSpec, get_spec
from rlhpo.tasks.task import FAMILIES_BY_MODALITY, Task

SEED_RANGE = 2**31 - 1


@dataclass(frozen=True)
class TaskSampler:
    """Draws tasks: a dataset, a model family, a training-set size, maybe a class subset, a seed.

    All randomness comes from the generator passed to :meth:`sample`.

    Attributes:
        datasets: the dataset names to draw from, uniformly.
        families: the families to draw from, by dataset; a dataset not named here draws from all
            the families of its modality (or takes its default one when its modality is unknown
            before loading, as for a user's dataset).
        n_train_choices: the training-set sizes to draw from, uniformly; ``None``: the whole
            training split.
        p_subset: the probability that a task keeps only a random subset of the classes.
        min_classes: the fewest classes a subset keeps (a subset always drops at least one class).
    """

    datasets: tuple[str, ...]
    families: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    n_train_choices: tuple[int | None, ...] = (250, 500, 1000, 2000)
    p_subset: float = 0.3
    min_classes: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "n_train_choices", tuple(self.n_train_choices))
        object.__setattr__(self, "families", MappingProxyType({k: tuple(v) for k, v in self.families.items()}))
        if not self.datasets:
            raise RlhpoError("A TaskSampler needs at least one dataset, but got datasets=().")
        specs = {name: get_spec(name) for name in self.datasets}
        for name, families in self.families.items():
            if name not in specs:
                raise unknown("dataset in families:", name, specs)
            modality = specs[name].modality
            for family in families:
                if modality is not None and family not in FAMILIES_BY_MODALITY[modality]:
                    raise unknown(f"family for {name!r} ({modality} data)", family, FAMILIES_BY_MODALITY[modality])
            if not families:
                raise RlhpoError(f"families[{name!r}] is empty; give at least one family or leave {name!r} out.")
        if not self.n_train_choices or any(n is not None and n < 1 for n in self.n_train_choices):
            raise RlhpoError(f"n_train_choices must be positive sizes, but got {self.n_train_choices=}.")
        if not 0.0 <= self.p_subset <= 1.0:
            raise RlhpoError(f"p_subset must be between 0 and 1 inclusive, but got {self.p_subset=}.")
        if self.min_classes < 2:
            raise RlhpoError(f"min_classes must be at least 2, but got {self.min_classes=}.")

    def sample(self, rng: np.random.Generator) -> Task:
        """Draw one task."""
        dataset = self.datasets[rng.integers(len(self.datasets))]
        spec = get_spec(dataset)
        families = self._families(spec)
        return Task(
            dataset=dataset,
            family=families[rng.integers(len(families))],
            n_train=self.n_train_choices[rng.integers(len(self.n_train_choices))],
            classes=self._classes(spec, rng),
            seed=int(rng.integers(SEED_RANGE)),
        )

    def draw(self, n: int, rng: np.random.Generator) -> list[Task]:
        """``n`` tasks, balanced: each dataset and each training-set size ``n / k`` times (±1).

        The datasets and the sizes are each dealt out evenly, then paired in a seeded random
        order; family, class subset and seed are drawn as :meth:`sample` draws them. The same
        generator state gives the same tasks.
        """
        datasets = _dealt(self.datasets, n, rng)
        sizes = _dealt(self.n_train_choices, n, rng)
        out = []
        for dataset, n_train in zip(datasets, sizes):
            spec = get_spec(dataset)
            families = self._families(spec)
            out.append(
                Task(
                    dataset=dataset,
                    family=families[rng.integers(len(families))],
                    n_train=n_train,
                    classes=self._classes(spec, rng),
                    seed=int(rng.integers(SEED_RANGE)),
                )
            )
        return out

    def _families(self, spec: DatasetSpec) -> tuple[str | None, ...]:
        if spec.name in self.families:
            return self.families[spec.name]
        return FAMILIES_BY_MODALITY[spec.modality] if spec.modality else (None,)

    def _classes(self, spec: DatasetSpec, rng: np.random.Generator) -> tuple[int, ...] | None:
        """A sorted random class subset, or ``None`` (all classes)."""
        n = spec.n_classes
        if rng.random() >= self.p_subset or n is None or n <= self.min_classes:
            return None
        k = int(rng.integers(self.min_classes, n))  # min_classes .. n-1
        return tuple(sorted(int(c) for c in rng.choice(n, size=k, replace=False)))


def _dealt(choices: tuple, n: int, rng: np.random.Generator) -> list:
    """``n`` values that take each choice ``n / len(choices)`` times (±1), in a seeded random order."""
    order = [choices[i] for i in rng.permutation(len(choices))]  # which choices get the extra ones
    dealt = [order[i % len(order)] for i in range(n)]
    return [dealt[i] for i in rng.permutation(n)]
