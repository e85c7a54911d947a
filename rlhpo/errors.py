"""Errors that rlhpo raises for bad input: the CLI shows their message without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class RlhpoError(Exception):
    """Bad input or an unavailable resource, with a message that says what was expected."""


def closest(name: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest valid name, or '' when none is close."""
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def unknown(kind: str, name: str, valid: Iterable[str]) -> RlhpoError:
    """An error for an unknown name that lists the valid ones and the closest match."""
    valid = sorted(valid)
    return RlhpoError(f"Unknown {kind} {name!r}; expected one of {', '.join(valid)}.{closest(name, valid)}")


class RunInterrupted(RlhpoError):
    """A command was stopped (Ctrl-C); its run folder has a summary marked ``interrupted``."""

    def __init__(self, run_dir: Path, resume: str | None, what: str = "run folder") -> None:
        self.run_dir = run_dir
        self.resume = resume
        hint = f"; to continue: {resume}" if resume else ""
        super().__init__(f"interrupted; {what} {run_dir}{hint}")
