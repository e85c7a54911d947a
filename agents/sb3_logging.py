"""SB3's logger, the one path for metrics: TensorBoard events (and a JSONL copy) in a run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat, configure, filter_excluded_keys
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

PROGRESS_FILE = "progress.jsonl"


def tensorboard_logger(run_dir: Path) -> Logger:
    """A logger that writes TensorBoard events into ``run_dir`` (and nothing to stdout)."""
    return configure(str(run_dir), ["tensorboard"])


class JSONLinesFormat(KVWriter):
    """Appends one JSON object per ``dump``: ``{"step": ..., key: value, ...}`` (scalars only).

    Unlike SB3's ``json`` and ``csv`` formats, it appends, so a resumed run keeps the lines of
    the run it continues: the learning curve stays one file with one step counter. Keys
    excluded for ``json`` are left out.
    """

    def __init__(self, path: str | Path) -> None:
        self.file = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 (open until close())

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        values = filter_excluded_keys(key_values, key_excluded, "json")
        line: dict[str, Any] = {"step": int(step)}
        for key, value in values.items():
            if hasattr(value, "dtype") and getattr(value, "shape", None) == ():
                value = value.item()
            if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
                line[key] = value
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def run_logger(run_dir: Path, resume_step: int | None = None) -> Logger:
    """TensorBoard events plus ``progress.jsonl`` (the same scalars, appended) in ``run_dir``.

    With ``resume_step`` (a run continued from its checkpoint at that step), whatever the
    interrupted run logged after that step is dropped: from ``progress.jsonl`` here, and from
    TensorBoard's view by a session-start event (what ``SummaryWriter(purge_step=...)`` writes),
    so the resumed run's curve continues the old one without doubled steps.
    """
    tensorboard = TensorBoardOutputFormat(str(run_dir))
    if resume_step is not None:
        _trim_progress(run_dir, resume_step)
        purge = resume_step + 1
        tensorboard.writer.file_writer.add_event(Event(step=purge, file_version="brain.Event:2"))
        tensorboard.writer.file_writer.add_event(Event(step=purge, session_log=SessionLog(status=SessionLog.START)))
    return Logger(folder=str(run_dir), output_formats=[tensorboard, JSONLinesFormat(run_dir / PROGRESS_FILE)])


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of a run's ``progress.jsonl``, in order (for reports; TensorBoard holds the same)."""
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trim_progress(run_dir: Path, last_step: int) -> None:
    path = Path(run_dir) / PROGRESS_FILE
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(x for x in lines if x.strip() and json.loads(x)["step"] <= last_step))
