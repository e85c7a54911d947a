"""``rlhpo tune --workers N`` against the sequential tune: wall-clock, and what it costs in accuracy.

The same ``rlhpo tune`` (task, budget, seed, policy) runs as the user would run it, once
sequentially and once with ``--workers N``, alternating, ``--repeats`` times each; each timing is
the whole command (Python start-up, the data loading, the workers' start, the final training).
From each command's ``--json`` summary it reports the tuning and final-training seconds, the
trials, the epochs spent, the chosen config's validation score and its test accuracy. A tune
is deterministic, so repeats measure the time only; the accuracy is the same in every repeat.

The sequential tune trains with torch's default threads; the workers train with one thread each
(as collect's do). Timed runs wait until no other benchmark, bench, collect or pytest runs here
(``--no-wait`` skips the check), since the comparison is of wall-clock on a shared machine.

    python benchmarks/tune_workers.py --data-dir <data folder> [--task ag_news] [--budget 3] \\
        [--workers 2] [--repeats 1] [--out docs/benchmarks/tune_workers.md]
    python benchmarks/tune_workers.py --task digits --n-train 300 --budget 1 --no-wait   # a quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("tune_workers")

CLI = [sys.executable, "-c", "from rlhpo.cli import main; main()"]
BUSY = "benchmarks/|rlhpo bench|rlhpo collect|leave_one_out|pytest"


@dataclass(frozen=True)
class Timing:
    """One ``rlhpo tune`` command: its settings, wall-clock, and the figures of its ``--json`` summary."""

    workers: int
    round: int
    seconds: float
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return "sequential" if self.workers == 1 else f"--workers {self.workers}"


def others_busy() -> list[str]:
    """Other benchmarks, benches, collects and test runs on this machine (not this script)."""
    out = subprocess.run(["pgrep", "-af", BUSY], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if int(line.split()[0]) != os.getpid() and "pgrep" not in line]


def wait_until_quiet(max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while (busy := others_busy()) and time.monotonic() < deadline:
        log.warning("waiting for %d other jobs to finish: %s", len(busy), "; ".join(b[:80] for b in busy))
        time.sleep(30)


def run_tune(args: argparse.Namespace, workers: int, round_: int, runs_dir: Path) -> Timing:
    """One whole ``rlhpo tune --json`` command, timed."""
    cmd = [*CLI, "tune", "--task", args.task, "--budget", str(args.budget), "--seed", str(args.seed), "--json"]
    cmd += ["--runs-dir", str(runs_dir)]
    if args.n_train is not None:
        cmd += ["--n-train", str(args.n_train)]
    if args.policy is not None:
        cmd += ["--policy", str(args.policy)]
    if args.data_dir is not None:
        cmd += ["--data-dir", str(args.data_dir)]
    if workers > 1:
        cmd += ["--workers", str(workers), "--executor", args.executor]
    log.info("round %d: %s", round_, " ".join(cmd[3:]))
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"rlhpo tune failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return Timing(workers, round_, seconds, summary)


def report(args: argparse.Namespace, timings: list[Timing]) -> str:
    """The Markdown report: each command's figures, then the ratio of the mean wall-clock times."""
    first = timings[0].summary
    lines = [
        "# tune with workers against the sequential tune",
        "",
        f"`python benchmarks/tune_workers.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} CPUs ({platform.machine()}, "
        f"Python {platform.python_version()}).",
        f"Task {first['task_key']} ({first['model']}), budget {args.budget} FTE ({first['budget_epochs']} epochs), "
        f"seed {args.seed}, policy {first['policy']}.",
        "",
        "| tune | round | seconds | tuning s | final training s | trials | epochs | val score | test accuracy "
        "| test macro-F1 | final reused a trial |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in timings:
        s = t.summary
        lines.append(
            f"| {t.label} | {t.round} | {t.seconds:.1f} | {s['tuning_seconds']:.1f} | {s['retrain_seconds']:.1f} "
            f"| {len(s['trials'])} | {s['tuning_epochs']}/{s['budget_epochs']} | {s['incumbent_score']:.4f} "
            f"| {s['test_accuracy']:.4f} | {s['test_macro_f1']:.4f} | {'yes' if s['reused_trial'] else 'no'} |"
        )
    sequential = [t for t in timings if t.workers == 1]
    parallel = [t for t in timings if t.workers > 1]
    ratio = (sum(t.seconds for t in parallel) / len(parallel)) / (sum(t.seconds for t in sequential) / len(sequential))
    gap = sequential[0].summary["test_accuracy"] - parallel[0].summary["test_accuracy"]
    lines += [
        "",
        f"Wall-clock, --workers {args.workers} / sequential (mean seconds): **{ratio:.3f}**. "
        f"Test accuracy, sequential less --workers {args.workers}: **{gap:+.4f}**.",
        "Configs chosen: sequential "
        f"`{json.dumps(sequential[0].summary['config'], sort_keys=True)}`, --workers {args.workers} "
        f"`{json.dumps(parallel[0].summary['config'], sort_keys=True)}`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ag_news")
    parser.add_argument("--n-train", type=int, default=None, help="Training examples (default: the whole set).")
    parser.add_argument("--budget", type=float, default=3.0, help="Tuning budget in FTE.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", type=Path, default=None, help="Default: the shipped policy.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Default: $RLHPO_DATA_DIR.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=None, help="Default: a temporary folder, removed after.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown report here.")
    parser.add_argument("--no-wait", action="store_true", help="Do not wait for other jobs to finish first.")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error(f"--workers must be at least 2 to compare with the sequential tune, but got {args.workers}.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="tune_workers_") as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        timings: list[Timing] = []
        for round_ in range(1, args.repeats + 1):
            order = (1, args.workers) if round_ % 2 else (args.workers, 1)  # alternate: drift hits both alike
            for workers in order:
                if not args.no_wait:
                    wait_until_quiet(max_wait=6 * 3600)
                timings.append(run_tune(args, workers, round_, runs_dir))
                log.info("%s: %.1fs", timings[-1].label, timings[-1].seconds)
    text = report(args, timings)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
