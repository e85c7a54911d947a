"""Run folders: ``runs/<stamp>__<command>__<task>__s<seed>/`` and what goes in them.

Each run folder holds what reproduces and explains it: ``config.yaml`` (the settings),
``command.txt`` (the command line), TensorBoard events, ``summary.json`` (the results).
Metrics are written through any logger with SB3's ``record(key, value)`` / ``dump(step)``
interface; the CLI passes SB3's own, so the core needs no stable-baselines3 import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import yaml

from rlhpo.training import Curve


class MetricLogger(Protocol):
    """The part of ``stable_baselines3.common.logger.Logger`` that rlhpo writes to."""

    def record(self, key: str, value: Any, exclude: Any = None) -> None: ...

    def dump(self, step: int = 0) -> None: ...

    def close(self) -> None: ...


def runs_root(root: str | Path | None = None) -> Path:
    """The folder that holds run folders: ``root``, else ``$RLHPO_RUNS_DIR``, else ``./runs``."""
    return Path(root or os.environ.get("RLHPO_RUNS_DIR") or "runs")


def make_run_dir(command: str, task_name: str, seed: int, root: str | Path | None = None) -> Path:
    """Create and return a new, uniquely named run folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task_name).strip("-") or "task"
    base = runs_root(root) / f"{stamp}__{command}__{slug}__s{seed}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; run files are for everyone to read
    os.replace(tmp, path)


def write_run_files(run_dir: Path, config: dict[str, Any], argv: list[str] | None = None) -> None:
    """Write ``config.yaml`` and ``command.txt`` (the command line that started the run)."""
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_atomic(run_dir / "command.txt", shlex.join(argv if argv is not None else sys.argv) + "\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def log_curve(logger: MetricLogger, curve: Curve, prefix: str = "", step_offset: int = 0) -> None:
    """Write one scalar per metric and epoch (TensorBoard step = epoch + ``step_offset``)."""
    for e in curve.epochs:
        logger.record(f"{prefix}train/loss", e.train_loss)
        logger.record(f"{prefix}val/loss", e.val_loss)
        logger.record(f"{prefix}val/accuracy", e.val_accuracy)
        logger.record(f"{prefix}val/macro_f1", e.val_macro_f1)
        logger.record(f"{prefix}time/epoch_seconds", e.seconds)
        logger.dump(step=step_offset + e.epoch)


def curve_summary(curve: Curve) -> dict[str, Any]:
    """The headline figures of a curve, as ``rlhpo train --json`` reports them.

    ``val_loss`` is the last completed epoch's validation loss (``None`` if none completed).
    """
    last = curve.epochs[-1] if curve.epochs else None
    return {
        "curve": curve.to_dict()["epochs"],
        "test_accuracy": curve.test.accuracy if curve.test else None,
        "test_macro_f1": curve.test.macro_f1 if curve.test else None,
        "test_loss": curve.test.loss if curve.test else None,
        "val_loss": last.val_loss if last else None,
        "val_accuracy": last.val_accuracy if last else None,
        "diverged": curve.diverged,
    }


def result_summary(
    task: Any, data: Any, config: Any, curve: Curve, *, epochs: int, seed: int, device: str
) -> dict[str, Any]:
    """What ``rlhpo train --json`` reports of a finished training (``tune`` reports its final one so)."""
    return {
        "task": task.dataset,
        "task_key": task.key(),
        "model": data.family,
        "source": data.source,
        "config": config.to_dict(),
        "epochs": epochs,
        "seed": seed,
        "device": device,
        **curve_summary(curve),
    }


def train_run(
    task: Any,
    config: Any,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    make_logger: Callable[[Path], MetricLogger] | None = None,
    on_epoch: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train one config on one task into a new run folder and return its summary.

    Args:
        task: the :class:`~rlhpo.tasks.Task`.
        config: the :class:`~rlhpo.space.Config`; ``epochs`` overrides its epochs.
        make_logger: builds the metric logger for the run folder (the CLI passes SB3's
            TensorBoard logger); ``None`` writes no events.
        on_epoch: called with each :class:`~rlhpo.training.EpochRecord` as it completes.
    """
    from rlhpo.tasks import load_task
    from rlhpo.training import train

    epochs = epochs or config.epochs
    data = load_task(task, data_dir=data_dir)
    run_dir = make_run_dir("train", task.dataset, seed, runs_dir)
    settings = {
        "task": dataclasses.asdict(task),
        "model": data.family,
        "config": config.to_dict(),
        "epochs": epochs,
        "seed": seed,
        "device": device,
    }
    write_run_files(run_dir, settings)
    started = time.perf_counter()
    curve = train(data, config, epochs=epochs, seed=seed, device=device, evaluate_test=True, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    if make_logger is not None:
        logger = make_logger(run_dir)
        log_curve(logger, curve)
        logger.close()
    summary = {
        **result_summary(task, data, config, curve, epochs=epochs, seed=seed, device=device),
        "seconds": seconds,
        "run_dir": str(run_dir),
    }
    write_summary(run_dir, summary)
    return summary
