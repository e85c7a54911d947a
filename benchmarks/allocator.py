"""One training epoch with glibc's default allocator and with freed memory kept (``keep_freed_memory``).

The setting is per process, so each mode runs in a fresh Python process, one after the other, in
this command: wall, user and system seconds of the epoch, the process's peak memory, and the
epoch's training loss and validation accuracy (equal in both modes: the setting changes no result).

The default case is the one that showed the problem: ``bow`` on the whole imdb training split at
128 tokens (the meta-dataset's full-size imdb instance), 1 x 256 units, batch 16, Adam.

Usage::

    RLHPO_DATA_DIR=<data folder> python benchmarks/allocator.py --out docs/benchmarks/allocator.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch
import rlhpo.training as training
from rlhpo.space import Config
from rlhpo.tasks import Task, load_task

args = json.loads(sys.argv[1])
torch.set_num_threads(1)
if args["mode"] == "default allocator":
    training.keep_freed_memory = lambda: False
task = Task(args["dataset"], seed=args["task_seed"], max_length=args["max_length"])
data = load_task(task, data_dir=args["data_dir"])
config = Config(learning_rate=0.003, batch_size=args["batch_size"], epochs=1, dropout=0.0, optimizer="adam",
                weight_decay=0.0, num_layers=1, units=args["units"], family="bow")
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
epoch = training.train(data, config, seed=0).epochs[0]
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - started, "user": after.ru_utime - before.ru_utime,
                  "sys": after.ru_stime - before.ru_stime, "peak_mb": after.ru_maxrss / 1024,
                  "loss": epoch.train_loss, "val": epoch.val_accuracy, "n_train": len(data.y_train)}))
"""

MODES = ("default allocator", "freed memory kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imdb")
    parser.add_argument("--task-seed", type=int, default=1921939325, help="the full-size imdb instance's seed")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("needs --data-dir or RLHPO_DATA_DIR: the local parquet copies of the datasets")
    rows = {}
    for mode in MODES:
        child_args = {k: getattr(args, k) for k in ("dataset", "task_seed", "max_length", "units", "batch_size")}
        child_args |= {"mode": mode, "data_dir": args.data_dir}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(child_args)], capture_output=True, text=True, check=True
        )
        rows[mode] = json.loads(done.stdout.splitlines()[-1])
        print(mode, rows[mode], flush=True)
    base, kept = (rows[m] for m in MODES)
    lines = [
        "# One epoch of `bow` with glibc's default allocator and with freed memory kept",
        "",
        f"Made by `python benchmarks/allocator.py` on {platform.node()} ({os.cpu_count()} CPU cores, "
        f"{platform.libc_ver()[0]} {platform.libc_ver()[1]}), {time.strftime('%Y-%m-%d')}: {args.dataset}, whole "
        f"training split ({base['n_train']} examples), {args.max_length} tokens, task seed {args.task_seed}; `bow` "
        f"1 x {args.units}, batch {args.batch_size}, Adam; one torch thread; each mode in a fresh process.",
        "",
        "| allocator | wall s | user s | system s | peak memory MB | train loss | val acc. |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
        *(
            f"| {m} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | {r['peak_mb']:.0f} | {r['loss']!r} | "
            f"{r['val']:.4f} |"
            for m, r in rows.items()
        ),
        "",
        f"Freed memory kept: {base['wall'] / kept['wall']:.2f}x faster, {kept['peak_mb'] / base['peak_mb']:.2f}x the "
        f"peak memory; the same loss and accuracy: {base['loss'] == kept['loss'] and base['val'] == kept['val']}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
