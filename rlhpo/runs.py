"""Run folders: ``runs/<stamp>__<command>__<task>__s<seed>/`` and what goes in them.

Each run folder holds what reproduces and explains it: ``config.yaml`` (the settings),
``command.txt`` (the command line), TensorBoard events, ``summary.json`` (the results; its
``status`` says ``complete`` or ``interrupted``). Metrics are written through any logger with
SB3's ``record(key, value)`` / ``dump(step)`` interface: in the core, :class:`TensorBoardLogger`
(``torch.utils.tensorboard``); in agents, SB3's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import yaml

from rlhpo.errors import RunInterrupted
from rlhpo.files import write_atomic
from rlhpo.training import Curve


class MetricLogger(Protocol):
    """The part of ``stable_baselines3.common.logger.Logger`` that rlhpo writes to."""

    def record(self, key: str, value: Any, exclude: Any = None) -> None: ...

    def dump(self, step: int = 0) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """A :class:`MetricLogger` over ``torch.utils.tensorboard.SummaryWriter`` (the core's TensorBoard path)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self._values: dict[str, Any] = {}

    def record(self, key: str, value: Any, exclude: Any = None) -> None:
        self._values[key] = value

    def dump(self, step: int = 0) -> None:
        for key, value in self._values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self._values.clear()

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's settings in TensorBoard's HParams tab, with the figures that judge it."""
        flat = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(flat, metrics, run_name=".")

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def interruptible(run_dir: Path, command: str, resume: str | None = None) -> Iterator[None]:
    """Turn a Ctrl-C inside into :class:`RunInterrupted`, leaving ``summary.json`` marked ``interrupted``.

    ``resume`` is the command that continues the run, if there is one; the summary and the
    message say it.
    """
    try:
        yield
    except KeyboardInterrupt:
        write_summary(run_dir, {"command": command, "status": "interrupted", "run_dir": str(run_dir), "resume": resume})
        raise RunInterrupted(run_dir, resume) from None


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


def write_run_files(run_dir: Path, config: dict[str, Any], argv: list[str] | None = None) -> None:
    """Write ``config.yaml`` and ``command.txt`` (the command line that started the run)."""
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_atomic(run_dir / "command.txt", shlex.join(argv if argv is not None else sys.argv) + "\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json``; a summary without a ``status`` gets ``complete`` (in the caller's dict too)."""
    summary.setdefault("status", "complete")
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


def result_summary(task: Any, data: Any, config: Any, curve: Curve, *, seed: int, device: str) -> dict[str, Any]:
    """What ``rlhpo train --json`` reports of a finished training (``tune`` reports its final one so).

    ``config`` is the config trained; ``epochs`` the epochs it completed (fewer if it diverged).
    """
    return {
        "task": task.dataset,
        "task_key": task.key(),
        "model": data.family,
        "source": data.source,
        "config": config.to_dict(),
        "epochs": len(curve.epochs),
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
    on_epoch: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train one config on one task into a new run folder and return its summary.

    Bad input (a task, a device) fails before the run folder exists. The folder gets TensorBoard
    events (``train/``, ``val/``, ``time/`` per epoch, and the config in the HParams tab).

    Args:
        task: the :class:`~rlhpo.tasks.Task`.
        config: the :class:`~rlhpo.space.Config`; ``epochs`` overrides its epochs (and the config
            reported is the one trained, with those epochs).
        on_epoch: called with each :class:`~rlhpo.training.EpochRecord` as it completes.
    """
    from rlhpo.models import model_family
    from rlhpo.tasks import load_task
    from rlhpo.training import resolve_device, train_final

    config = config.with_epochs(epochs or config.epochs)
    resolve_device(device)
    data = load_task(task, data_dir=data_dir)
    model_family(data, config)  # a family the task cannot train fails here, before a run folder exists
    task = data.task
    run_dir = make_run_dir("train", task.dataset, seed, runs_dir)
    settings = {
        "task": dataclasses.asdict(task),
        "model": data.family,
        "config": config.to_dict(),
        "seed": seed,
        "device": device,
    }
    write_run_files(run_dir, settings)
    started = time.perf_counter()
    with interruptible(run_dir, "train"):
        curve = train_final(data, config, seed=seed, device=device, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    logger = TensorBoardLogger(run_dir)
    log_curve(logger, curve)
    summary = {
        **result_summary(task, data, config, curve, seed=seed, device=device),
        "seconds": seconds,
        "run_dir": str(run_dir),
    }
    final = {k: summary[k] for k in ("test_accuracy", "test_macro_f1") if summary[k] is not None}
    logger.hparams({"model": data.family, **config.to_dict()}, {f"hparam/{k}": v for k, v in final.items()})
    logger.close()
    write_summary(run_dir, summary)
    return summary


def test_metrics_line(summary: dict[str, Any]) -> str:
    """The final training's test accuracy, macro-F1 and validation loss (``train`` and ``tune`` reports)."""
    val_loss = "-" if summary["val_loss"] is None else f"{summary['val_loss']:.4f}"
    diverged = f"diverged after {len(summary['curve'])} completed epochs; " if summary["diverged"] else ""
    return (
        f"{diverged}test accuracy {summary['test_accuracy']:.4f}  "
        f"test macro-F1 {summary['test_macro_f1']:.4f}  val loss {val_loss}"
    )


def config_text(config: dict[str, Any]) -> str:
    """A config in one short line, e.g. ``lr=0.001 bs=32 ep=9 do=0.5 adam wd=0.0001 L3x64``."""
    c = config
    return (
        f"lr={c['learning_rate']:g} bs={c['batch_size']} ep={c['epochs']} do={c['dropout']:g} "
        f"{c['optimizer']} wd={c['weight_decay']:g} L{c['num_layers']}x{c['units']}"
    )


def train_report_lines(summary: dict[str, Any]) -> list[str]:
    """What ``rlhpo train`` prints once the training is done."""
    return [
        f"task {summary['task_key']} ({summary['model']}, {summary['source']}), "
        f"config {config_text(summary['config'])}",
        test_metrics_line(summary),
        f"{summary['seconds']:.1f}s; run folder {summary['run_dir']}",
        f"next: tensorboard --logdir {summary['run_dir']}",
    ]


def epoch_line(e: Any) -> str:
    """One epoch of a training, as ``rlhpo train`` shows it while it runs."""
    return (
        f"epoch {e.epoch:>3}  train_loss {e.train_loss:.4f}  val_loss {e.val_loss:.4f}  "
        f"val_acc {e.val_accuracy:.4f}  val_f1 {e.val_macro_f1:.4f}  {e.seconds:.1f}s"
    )
