"""The trainer: train one model with one config on one task, and return its curve."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpochRecord:
    """Metrics after one epoch. ``seconds`` is that epoch's wall time (training + validation)."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    seconds: float


@dataclass(frozen=True)
class TestMetrics:
    accuracy: float
    macro_f1: float
    loss: float


@dataclass
class Curve:
    """A training run: one record per completed epoch.

    When a loss or weight becomes non-finite, training stops and ``diverged`` is True; the
    epochs completed before stay in ``epochs`` (possibly none). No metric is ever NaN.
    """

    epochs: list[EpochRecord] = field(default_factory=list)
    diverged: bool = False
    test: TestMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [asdict(e) for e in self.epochs],
            "diverged": self.diverged,
            "test": asdict(self.test) if self.test else None,
        }
