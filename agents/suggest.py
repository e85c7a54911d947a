"""``rlhpo suggest``: zero-shot configs for a task from its meta-features alone, before any training.

The policy observes the task at the start of an episode (its meta-features; no trial yet) and
its distribution over actions there ranks every config. The suggestions are the policy's first
proposal, then its next most likely configs (:func:`~rlhpo.agents.policy.most_likely_first`)
that differ once decoded, each at full fidelity (the largest epochs choice): configs that differ
only in their epochs are one suggestion.

The observation is built by :class:`~rlhpo.envs.hpo_env.HPOEnv` on a live backend with a curve
store in memory: ``reset`` loads the task to compute its meta-features and trains nothing.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhpo.agents.policy import MAX_CANDIDATES, PPOTuner
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import Config, load_search_space
from rlhpo.tasks.task import Task


@dataclass(frozen=True)
class Suggestions:
    """A task's zero-shot configs, best first, and how to train each."""

    task: Task  # as loaded (its real training-set size)
    task_key: str
    policy: str  # the policy file that ranked them
    configs: tuple[Config, ...]

    def command(self, config: Config) -> str:
        """The ``rlhpo train`` command line that trains ``config`` on the task (the data folder left to the user's)."""
        t = self.task
        args = ["rlhpo", "train", "--task", t.dataset]
        for flag, value in (
            ("--model", t.family),
            ("--n-train", t.n_train),
            ("--text-column", t.text_column),
            ("--image-column", t.image_column),
            ("--label-column", t.label_column),
        ):
            if value is not None:
                args += [flag, str(value)]
        if t.seed:
            args += ["--seed", str(t.seed)]
        for name, value in config.to_dict().items():
            args += ["--set", f"{name}={value}"]
        return shlex.join(args)

    def to_dict(self) -> dict[str, Any]:
        """What ``rlhpo suggest --json`` prints: each suggestion's config (Optuna's params) and command."""
        return {
            "task": self.task_key,
            "policy": self.policy,
            "suggestions": [
                {"rank": i + 1, "config": c.to_dict(), "command": self.command(c)} for i, c in enumerate(self.configs)
            ],
        }

    def lines(self) -> list[str]:
        """What ``rlhpo suggest`` prints: one ``rlhpo train`` line per suggestion, best first."""
        return [self.command(c) for c in self.configs]


def suggest(
    task: Task | str,
    n: int = 5,
    *,
    policy: PPOTuner | str | Path | None = None,
    data_dir: str | Path | None = None,
) -> Suggestions:
    """The policy's ``n`` best configs for ``task``, from its meta-features alone (no training).

    Args:
        task: the task (or a dataset name); it is loaded to compute its meta-features.
        n: how many distinct configs.
        policy: a loaded policy, a ``policy.zip`` (or run folder holding one); default: the shipped one.
        data_dir: where local datasets are (see :func:`rlhpo.tasks.load_task`).
    """
    if n < 1:
        raise RlhpoError(f"suggest gives at least one config, but got n={n}.")
    task = Task(task) if isinstance(task, str) else task
    tuner = policy if isinstance(policy, PPOTuner) else PPOTuner.load(policy)
    space = tuner.policy_space or load_search_space()
    env = HPOEnv("live", None, tasks=[task], space=space, data_dir=data_dir)
    try:
        obs, info = env.reset(options={"task": task})
        configs = ranked_configs(tuner, env, obs, n)
        loaded = env.backend.describe(task).task
    finally:
        env.close()
    return Suggestions(
        task=loaded,
        task_key=info["task"],
        policy=str(tuner.path),
        configs=tuple(configs),
    )


def ranked_configs(tuner: PPOTuner, env: HPOEnv, obs: np.ndarray, n: int) -> list[Config]:
    """The first ``n`` distinct configs (at full fidelity) the policy ranks at ``obs`` of the just-reset ``env``.

    The first is the policy's own first proposal (:meth:`PPOTuner.propose`).
    """
    tuner.start(env, seed=0)
    first = tuner.propose(obs)
    out: list[Config] = []
    for action in itertools.islice(itertools.chain([first], tuner.ranked(obs)), MAX_CANDIDATES):
        config = env.decode(action).with_epochs(env.space.max_epochs)
        if config not in out:
            out.append(config)
            if len(out) == n:
                break
    return out
