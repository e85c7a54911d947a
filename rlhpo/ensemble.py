"""An ensemble of a tune's best trials: their models' class probabilities, averaged.

A tune trains several configs in full; it keeps one. With 500-1,000 validation examples the one it
keeps is sometimes a lucky winner, and two good models of different configs often err on different
examples. Averaging the softmax outputs of the best few (Caruana et al. 2004, "Ensemble selection
from libraries of models"; auto-sklearn's default) uses what the tune already trained, at the cost of
one prediction pass per member.

The rule: the candidates are the trials trained in full whose models are still held, ranked by their
validation accuracy; the ensemble is the prefix of that ranking (the best one, the best two, ... up to
``max_members``) whose averaged probabilities score the highest validation accuracy, the smaller prefix
on a tie. A prefix, not any subset, so that the validation split chooses among few options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlhpo.metrics import accuracy, macro_f1
from rlhpo.training import EVAL_BATCH_SIZE, TestMetrics

MAX_MEMBERS = 3  # members at most: a budget of 3 full trainings trains three


@dataclass(frozen=True)
class Prefix:
    """The first ``size`` candidates averaged: validation and test figures."""

    size: int
    val_accuracy: float
    val_loss: float
    test: TestMetrics


@dataclass(frozen=True)
class EnsembleResult:
    """The prefixes tried, and which one the validation split chose (``chosen``, a size)."""

    prefixes: list[Prefix]
    chosen: int

    @property
    def best(self) -> Prefix:
        return self.prefixes[self.chosen - 1]

    def to_dict(self) -> dict[str, object]:
        return {
            "chosen": self.chosen,
            "val_accuracy": self.best.val_accuracy,
            "test_accuracy": self.best.test.accuracy,
            "test_macro_f1": self.best.test.macro_f1,
            "test_loss": self.best.test.loss,
            "prefixes": [
                {
                    "size": p.size,
                    "val_accuracy": p.val_accuracy,
                    "val_loss": p.val_loss,
                    "test_accuracy": p.test.accuracy,
                    "test_macro_f1": p.test.macro_f1,
                    "test_loss": p.test.loss,
                }
                for p in self.prefixes
            ],
        }


@torch.inference_mode()
def probabilities(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The model's softmax outputs on ``x``, in batches, as float64 on the CPU."""
    model.eval()
    parts = [
        F.softmax(model(x[start : start + EVAL_BATCH_SIZE].to(device)).double(), dim=1).cpu()
        for start in range(0, len(x), EVAL_BATCH_SIZE)
    ]
    return torch.cat(parts)


def _figures(probs: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[float, float, float]:
    """(accuracy, macro-F1, mean negative log-likelihood) of averaged probabilities."""
    pred = probs.argmax(dim=1)
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), y.long()).item()
    return accuracy(pred, y), macro_f1(pred, y, n_classes), loss


def select(
    val_probs: Sequence[torch.Tensor],
    test_probs: Sequence[torch.Tensor],
    y_val: torch.Tensor,
    y_test: torch.Tensor,
    n_classes: int,
    max_members: int = MAX_MEMBERS,
) -> EnsembleResult:
    """Choose the ensemble among prefixes of candidates ranked best first (see the module docstring).

    ``val_probs[i]`` and ``test_probs[i]`` are candidate ``i``'s probabilities; the test split only
    reports, it never chooses.
    """
    if not val_probs or len(val_probs) != len(test_probs):
        raise ValueError(f"need as many test as validation predictions, and some: {len(val_probs)}, {len(test_probs)}")
    prefixes = []
    val_sum, test_sum = torch.zeros_like(val_probs[0]), torch.zeros_like(test_probs[0])
    for size, (val, test) in enumerate(zip(val_probs[:max_members], test_probs[:max_members], strict=True), start=1):
        val_sum, test_sum = val_sum + val, test_sum + test
        val_acc, _, val_loss = _figures(val_sum / size, y_val, n_classes)
        test_acc, test_f1, test_loss = _figures(test_sum / size, y_test, n_classes)
        prefixes.append(Prefix(size, val_acc, val_loss, TestMetrics(test_acc, test_f1, test_loss)))
    chosen = max(prefixes, key=lambda p: (p.val_accuracy, -p.size)).size
    return EnsembleResult(prefixes, chosen)
