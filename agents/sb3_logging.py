"""SB3's logger, the one path for metrics: TensorBoard events in a run folder."""

from __future__ import annotations

from pathlib import Path

from stable_baselines3.common.logger import Logger, configure


def tensorboard_logger(run_dir: Path) -> Logger:
    """A logger that writes TensorBoard events into ``run_dir`` (and nothing to stdout)."""
    return configure(str(run_dir), ["tensorboard"])
