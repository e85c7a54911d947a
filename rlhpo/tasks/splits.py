"""Seeded, stratified index selection: the validation split and the training subsample."""

from __future__ import annotations

import numpy as np

VAL_FRACTION = 0.15
MAX_VAL = 1000


def stratified_choice(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``n`` items of ``y``, drawn without replacement, keeping class proportions.

    Each class gets ``floor(n * share)`` items; the few left over go to the classes with the
    largest remainders (ties broken at random). The positions come back in random order.
    """
    if not 0 <= n <= len(y):
        raise ValueError(f"Cannot choose {n} of {len(y)} items.")
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n / max(len(y), 1))
    take = np.floor(quota).astype(np.int64)
    left = n - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))
    take[order[:left]] += 1
    picked = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, take)]
    return rng.permutation(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def split_indices(y: np.ndarray, seed: int, n_train: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Carve (train, validation) positions from a train split with labels ``y``.

    The validation split, ``min(15% of the split, 1000)`` items, is drawn first, so it depends on
    ``seed`` only, not on ``n_train``; the training set is ``n_train`` items of the rest (all of
    them when ``n_train`` is ``None`` or larger). Both are stratified and disjoint.
    """
    rng = np.random.default_rng(seed)
    n_val = min(round(VAL_FRACTION * len(y)), MAX_VAL)
    val = stratified_choice(y, n_val, rng)
    pool = np.setdiff1d(np.arange(len(y)), val)
    if n_train is None or n_train >= len(pool):
        return rng.permutation(pool), val
    return pool[stratified_choice(y[pool], n_train, rng)], val
