"""SB3 callbacks of meta-training: hpo/ scalars per episode, the HParams tab, checkpoints, a progress bar."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import HParam

from rlhpo.agents.evaluate import FullFidelity
from rlhpo.envs.hpo_env import StepResult

CHECKPOINT_PREFIX = "ppo"
EPISODES_ATTRIBUTE = "hpo_episodes"  # a model attribute, so SB3 saves it with the model
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)_steps\.zip$")


class HPOEpisodeMetrics(BaseCallback):
    """At each episode end, adds the episode's figures to SB3's logger under ``hpo/``.

    Per episode (from the last step's result): ``hpo/incumbent_score``, ``hpo/epochs_spent``,
    ``hpo/trials``, ``hpo/divergences`` (trials that diverged), and ``hpo/regret`` where the
    store knows the incumbent's full-fidelity score. They are recorded with ``record_mean``,
    so SB3 writes, with its own ``rollout/`` scalars at the end of each rollout, their mean over
    the episodes that ended in it; ``hpo/episodes`` counts the episodes so far (across resumes).

    Args:
        oracle: full-fidelity scores of the store, for the regret; ``None`` records no regret.
        hparams: the run's settings for TensorBoard's HParams tab, written at training start;
            ``None`` writes none (a resumed run has them already).
    """

    def __init__(self, oracle: FullFidelity | None = None, hparams: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.oracle = oracle
        self.hparams = dict(hparams) if hparams else None
        self.episodes = 0
        self._divergences: np.ndarray = np.zeros(0)

    def _on_training_start(self) -> None:
        self._divergences = np.zeros(self.training_env.num_envs, dtype=np.int64)
        self.episodes = int(getattr(self.model, EPISODES_ATTRIBUTE, 0))  # saved in checkpoints: resumes count on
        if self.hparams:
            metrics = {"hpo/incumbent_score": 0.0, "hpo/regret": 0.0, "rollout/ep_rew_mean": 0.0}
            self.logger.record("hparams", HParam(self.hparams, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        for i, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"])):
            result: StepResult = info["result"]
            self._divergences[i] += bool(result.diverged)
            if done:
                self._episode_end(result, int(self._divergences[i]))
                self._divergences[i] = 0
        return True

    def _episode_end(self, result: StepResult, divergences: int) -> None:
        self.episodes += 1
        self.logger.record_mean("hpo/incumbent_score", result.incumbent)
        self.logger.record_mean("hpo/epochs_spent", result.budget_used)
        self.logger.record_mean("hpo/trials", result.step)
        self.logger.record_mean("hpo/divergences", divergences)
        if self.oracle is not None:
            regret = self.oracle.regret(result.task, result.incumbent_config)
            if regret is not None:
                self.logger.record_mean("hpo/regret", regret)
        self.logger.record("hpo/episodes", self.episodes)
        setattr(self.model, EPISODES_ATTRIBUTE, self.episodes)

    def _on_training_end(self) -> None:
        # SB3 dumps before each update, so the last update's train/ scalars would be lost.
        self.logger.dump(step=self.num_timesteps)


class TqdmProgress(BaseCallback):
    """A tqdm progress bar over environment steps (on stderr), starting where a resumed run stopped."""

    def __init__(self, total_steps: int, disable: bool = False) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.disable = disable
        self.bar: Any = None

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total_steps,
            initial=self.model.num_timesteps,
            desc="train-agent",
            unit="step",
            file=sys.stderr,
            disable=self.disable,
            dynamic_ncols=True,
            mininterval=1.0,  # a log file gets one line a second, not ten
        )

    def _on_step(self) -> bool:
        self.bar.update(min(self.num_timesteps, self.total_steps) - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def checkpoint_callback(checkpoint_dir: Path, every_steps: int, n_envs: int) -> CheckpointCallback:
    """SB3's CheckpointCallback: ``ppo_<step>_steps.zip`` every ``every_steps`` environment steps."""
    return CheckpointCallback(
        save_freq=max(every_steps // n_envs, 1), save_path=str(checkpoint_dir), name_prefix=CHECKPOINT_PREFIX
    )


def checkpoint_path(checkpoint_dir: Path, steps: int) -> Path:
    """Where the checkpoint at ``steps`` goes (the name CheckpointCallback gives it)."""
    return Path(checkpoint_dir) / f"{CHECKPOINT_PREFIX}_{steps}_steps.zip"


def latest_checkpoint(checkpoint_dir: Path) -> tuple[int, Path] | None:
    """The checkpoint with the most steps in ``checkpoint_dir``, as (steps, path), or ``None``."""
    found = []
    if Path(checkpoint_dir).is_dir():
        for path in Path(checkpoint_dir).iterdir():
            match = _CHECKPOINT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return max(found) if found else None
