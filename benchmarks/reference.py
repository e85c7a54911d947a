"""Reference: the default config on each of the five datasets at full local size.

Prints, per dataset, the test accuracy and macro-F1 that ``rlhpo train`` reaches with the default
config (``configs/search_space.yaml``), next to what a quick hand-written loop reached on the same
data when the project started. Far below that neighbourhood means something is broken.

    python benchmarks/reference.py --data-dir <data folder> --out docs/benchmarks/reference.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from rlhpo.space import load_search_space
from rlhpo.tasks import Task, load_task
from rlhpo.training import train

# Test accuracy of a quick hand-written loop on this data (issue 2), by dataset and model.
HAND_WRITTEN = {
    ("mnist", "cnn"): 0.977,
    ("cifar10", "cnn"): 0.61,
    ("imdb", "gru"): 0.825,
    ("ag_news", "gru"): 0.79,
    ("trec", "gru"): 0.84,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--datasets", default="mnist,cifar10,imdb,ag_news,trec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the table to this Markdown file.")
    args = parser.parse_args()

    space = load_search_space()
    config = space.default
    lines = [
        f"# Reference: the default config at full local size ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"Config: `{config.to_dict()}`; seed {args.seed}; {torch.get_num_threads()} torch threads on "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        "",
        "| dataset | model | n_train | test accuracy | test macro-F1 | hand-written loop | minutes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for name in args.datasets.split(","):
        data = load_task(Task(name, seed=args.seed), data_dir=args.data_dir)
        started = time.perf_counter()
        curve = train(data, config, seed=args.seed, evaluate_test=True)
        minutes = (time.perf_counter() - started) / 60
        assert curve.test is not None
        ref = HAND_WRITTEN.get((name, data.family))
        row = (
            f"| {name} | {data.family} | {len(data.y_train)} | {curve.test.accuracy:.3f} | {curve.test.macro_f1:.3f} "
            f"| {ref if ref is not None else '–'} | {minutes:.1f} |"
        )
        if curve.diverged:
            row += " diverged"
        lines.append(row)
        print(row, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
