"""RolloutRecorder: append every step of an environment to ``rollouts.jsonl``.

One JSON object per line, append-only and flushed per step (like Optuna's journal storage), so
a run killed at any moment leaves every completed step readable. The file starts with a header
line, ``{"header": {...}}`` (:func:`write_rollouts_header`): what a replay needs to rebuild the
environment, and the numeric environment the steps ran in (:func:`numeric_environment`). Each
step line holds the episode and step numbers, the episode's reset seed, the task and its
meta-features, the action, the decoded config, a summary of the trial's curve, the reward and
the incumbent.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlhpo.envs.hpo_env import StepResult

ROLLOUTS_FILE = "rollouts.jsonl"


def numeric_environment() -> dict[str, Any]:
    """What decides a live curve's last bits besides the seed: torch's build, its threads, the CPU's kernels.

    Training is deterministic within one of these; across them, float rounding differs, and a config
    whose training amplifies it (a high learning rate) can end on another curve. ``rlhpo replay
    --verify`` names the difference when a live step does not match.
    """
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def write_rollouts_header(path: Path, header: dict[str, Any]) -> None:
    """Start a rollouts file afresh with its header line: what a replay needs to rebuild the env.

    The header gains ``environment`` (:func:`numeric_environment`) unless it has one.
    """
    header = {"environment": numeric_environment(), **header}
    path.write_text(json.dumps({"header": header}) + "\n")


def curve_summary(result: StepResult) -> dict[str, Any]:
    """The headline of a step's curve: epochs completed and paid, final and best accuracy, divergence, cost."""
    accs = [e.val_accuracy for e in result.curve]
    return {
        "epochs_completed": len(result.curve),
        "epochs_paid": result.paid_epochs,
        "final_val_accuracy": accs[-1] if accs else None,
        "best_val_accuracy": max(accs) if accs else None,
        "final_val_loss": result.curve[-1].val_loss if result.curve else None,
        "diverged": result.diverged,
        "score": result.score,
        "seconds": result.seconds,
        "compute_fte": result.compute_fte,
    }


class RolloutRecorder(gym.Wrapper):
    """Appends each step of the wrapped HPOEnv to a JSONL file (created with its folder if needed).

    Args:
        env: the environment (its ``info`` must be HPOEnv's).
        path: the JSONL file, e.g. ``runs/<run>/rollouts.jsonl``; lines are appended.
    """

    def __init__(self, env: gym.Env, path: str | Path) -> None:
        super().__init__(env)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._episode = -1
        self._seed: int | None = None
        self._reset_info: dict[str, Any] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode += 1
        self._seed = seed
        self._reset_info = info
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        result: StepResult = info["result"]
        line = {
            "episode": self._episode,
            "seed": self._seed,  # the reset seed: with the actions, what a replay needs
            "step": result.step,
            "task": result.task,
            "meta_features": self._reset_info.get("meta_features"),
            "action": np.asarray(action).reshape(-1).tolist(),
            "config": result.config.to_dict(),
            "answered_config": result.answered_config.to_dict(),
            "exact": result.trial.exact,
            "distance": result.trial.distance,
            "curve": curve_summary(result),
            "reward": float(reward),
            "incumbent": result.incumbent,
            "incumbent_config": result.incumbent_config.to_dict() if result.incumbent_config else None,
            "budget_used": result.budget_used,
            "terminated": bool(terminated),
            "truncated": bool(truncated),
        }
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        super().close()
