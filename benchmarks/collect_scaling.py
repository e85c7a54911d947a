"""Collect scaling: the same collect with 2 worker processes against 1, as a speed-up (aim: >= 1.6x).

Each timing is a whole ``collect`` into a fresh store (worker start-up included), after one
untimed pass that fills the dataset cache. Run it on a quiet machine: other load on the cores
shows up directly in the ratio, so the report also gives the parallelism that two plain Python
processes got from the machine just before and after.

    python benchmarks/collect_scaling.py [--configs 12] [--out docs/benchmarks/collect_scaling.md]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rlhpo.collect import CollectSettings, InstanceGroup, collect, task_record

# Instances like collect.yaml's (MLPs and a GRU), small enough for a few minutes in all.
WORK = [
    InstanceGroup(datasets=["digits"], families=["mlp"], n_train=[1000]),
    InstanceGroup(datasets=["mnist"], families=["mlp"], n_train=[2000]),
    InstanceGroup(datasets=["trec"], families=["gru"], n_train=[500]),
]


def _burn(n: int) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - started


def machine_parallelism(workers: int = 2, n: int = 20_000_000) -> float:
    """How many cores this machine gives ``workers`` processes now: pure-Python work, K at once vs one."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_burn, [1000] * workers)  # start-up out of the timing
        one = pool.apply(_burn, (n,))
        started = time.perf_counter()
        pool.map(_burn, [n] * workers, chunksize=1)
        together = time.perf_counter() - started
    return workers * one / together


def timed_collect(settings: CollectSettings, workers: int, data_dir: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = collect(settings, Path(tmp) / "store.sqlite", workers=workers, data_dir=data_dir, progress=False)
        seconds = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"{len(result.failed)} runs failed: {result.failed[0]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=12, help="Configs per task instance.")
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=None, help="Write the result as Markdown here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = CollectSettings(instances=WORK, configs=args.configs)
    for task in settings.tasks():
        task_record(task, args.data_dir)  # fills the dataset cache: neither timing pays for it
    load = os.getloadavg()[0]
    before = machine_parallelism()
    one = timed_collect(settings, 1, args.data_dir)
    two = timed_collect(settings, 2, args.data_dir)
    after = machine_parallelism()
    runs = len(settings.tasks()) * args.configs
    lines = [
        "# Collect scaling",
        "",
        f"`python benchmarks/collect_scaling.py --configs {args.configs}` on {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}); load average "
        f"{load:.1f} before the timings.",
        f"Work: {runs} runs at 9 epochs ({', '.join(t.key() for t in settings.tasks())}), each collect into "
        "a fresh store, worker start-up included.",
        "",
        "| workers | seconds | runs / min |",
        "|---:|---:|---:|",
        f"| 1 | {one:.1f} | {60 * runs / one:.1f} |",
        f"| 2 | {two:.1f} | {60 * runs / two:.1f} |",
        "",
        f"Speed-up, 2 workers against 1: **{one / two:.2f}x** (aim: at least 1.6x).",
        "",
        f"For scale, the parallelism the machine gave two pure-Python processes at the same time: "
        f"{before:.2f}x before the timings and {after:.2f}x after (2.00x on two idle cores). Other load on "
        "the cores lowers both figures alike.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
