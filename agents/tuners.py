"""Every tuner by name, built alike: what ``rlhpo bench`` and the contract tests iterate over."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlhpo.agents.base import DefaultTuner, RandomTuner, Tuner
from rlhpo.agents.learned_list import LearnedListTuner
from rlhpo.agents.optuna_interop import PPOTPETuner
from rlhpo.agents.optuna_tuners import HyperbandTuner, TPETuner
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.settings import METHODS
from rlhpo.agents.top_k import TopKTuner
from rlhpo.errors import unknown
from rlhpo.space import SearchSpace
from rlhpo.store import CurveStore


def make_tuners(
    methods: Sequence[str],
    *,
    space: SearchSpace,
    policy: PPOTuner | None = None,
    store: CurveStore | str | Path | None = None,
    train_seed: int = 0,
    exclude_datasets: Sequence[str] = (),
) -> list[Tuner]:
    """The tuners named ``methods``, in that order.

    ``ppo`` plays ``policy``; ``learned_list`` learns its list from ``store`` less ``exclude_datasets`` (give it
    the policy's, so both learn from the same tasks); ``ppo_tpe`` plays ``policy``, then enqueues that same
    list as TPE's startup trials, then runs TPE (:class:`PPOTPETuner`).
    """
    out: list[Tuner] = []
    listed: LearnedListTuner | None = None  # fitted once, for the first method that needs it

    def learned_list(method: str) -> LearnedListTuner:
        nonlocal listed
        if listed is None:
            listed = _learned_list(method, store, space, train_seed, exclude_datasets)
        return listed

    for method in methods:
        if method == "ppo":
            if policy is None:
                raise ValueError("make_tuners needs a policy for 'ppo'")
            out.append(policy)
        elif method == "ppo_tpe":
            if policy is None:
                raise ValueError("make_tuners needs a policy for 'ppo_tpe'")
            out.append(PPOTPETuner(policy, configs=learned_list(method).lists))
        elif method == "learned_list":
            out.append(learned_list(method))
        elif method in SIMPLE:
            out.append(SIMPLE[method]())
        else:
            raise unknown("method", method, METHODS)
    return out


def _learned_list(
    method: str,
    store: CurveStore | str | Path | None,
    space: SearchSpace,
    train_seed: int,
    exclude_datasets: Sequence[str],
) -> LearnedListTuner:
    """The learned list of ``store`` less ``exclude_datasets``: ``learned_list`` plays it, ``ppo_tpe`` enqueues it."""
    if store is None:
        raise ValueError(f"make_tuners needs a store for {method!r}")
    return LearnedListTuner.fit(store, space, train_seed=train_seed, exclude_datasets=exclude_datasets)


SIMPLE: dict[str, type[Tuner]] = {t.name: t for t in (DefaultTuner, RandomTuner, TPETuner, HyperbandTuner, TopKTuner)}
