"""Classification metrics from predicted and true labels, and the per-task normalised score.

Predictions and labels may be torch tensors (on any device) or numpy arrays of class ids.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhpo.errors import RlhpoError

ArrayLike = torch.Tensor | np.ndarray


def _as_ids(values: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(values).reshape(-1).long()


def _check(preds: torch.Tensor, labels: torch.Tensor) -> None:
    if preds.shape != labels.shape:
        raise RlhpoError(
            f"Predictions and labels must have the same length, but got {preds.numel()=} and {labels.numel()=}."
        )
    if preds.numel() == 0:
        raise RlhpoError("Metrics need at least one prediction, but got none.")


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the labels."""
    p, y = _as_ids(preds), _as_ids(labels)
    _check(p, y)
    return (p == y.to(p.device)).double().mean().item()


def macro_f1(preds: ArrayLike, labels: ArrayLike, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    Per class, F1 = 2·TP / (2·TP + FP + FN); a class that is predicted but never true (or true
    but never predicted) scores 0. A class absent from both does not count. This equals
    ``sklearn.metrics.f1_score(labels, preds, average="macro")``.
    """
    p, y = _as_ids(preds), _as_ids(labels)
    _check(p, y)
    y = y.to(p.device)
    if min(p.min().item(), y.min().item()) < 0 or max(p.max().item(), y.max().item()) >= n_classes:
        raise RlhpoError(f"Class ids must lie in 0..{n_classes - 1} for {n_classes=}.")
    true_pos = torch.bincount(y[p == y], minlength=n_classes).double()
    # 2TP + FP + FN = (number predicted) + (number true), per class.
    denom = (torch.bincount(p, minlength=n_classes) + torch.bincount(y, minlength=n_classes)).double()
    present = denom > 0
    return (2 * true_pos[present] / denom[present]).mean().item()


def chance_accuracy(n_classes: int) -> float:
    """Accuracy of guessing uniformly at random: 1 / n_classes."""
    if n_classes < 2:
        raise RlhpoError(f"A classification task needs at least 2 classes, but got {n_classes=}.")
    return 1.0 / n_classes


def normalised_score(accuracy: float, n_classes: int) -> float:
    """(accuracy − chance) / (1 − chance): 0 at chance, 1 when perfect, the same scale on every task."""
    chance = chance_accuracy(n_classes)
    return (accuracy - chance) / (1.0 - chance)


def normalised_scores(accuracy: ArrayLike, n_classes: int) -> np.ndarray:
    """:func:`normalised_score` elementwise, as float64."""
    chance = chance_accuracy(n_classes)
    return (np.asarray(accuracy, dtype=np.float64) - chance) / (1.0 - chance)
