"""Test accuracy of the fast text families at full local size, on a few hand-picked configs.

    python benchmarks/text_family_probe.py --data-dir <data folder> [--datasets ag_news,trec,imdb]

Each config trains for 9 epochs on the whole local training split (less the validation split)
with one torch thread, then is tested once. It answers "how close do bow and textcnn get to
TF-IDF + LinearSVC at full size?", not "what does tuning reach" (that is `rlhpo tune`).
"""

from __future__ import annotations

import argparse
import time

import torch

from rlhpo.space import Config
from rlhpo.tasks import load_task
from rlhpo.tasks.task import Task
from rlhpo.training import train_final

# (family, learning_rate, batch_size, dropout, optimizer, weight_decay, num_layers, units)
GRID = [
    ("bow", 3e-2, 64, 0.25, "adamw", 1e-5, 1, 64),
    ("bow", 1e-2, 64, 0.5, "adam", 0.0, 1, 128),
    ("bow", 3e-2, 128, 0.5, "adam", 0.0, 2, 64),
    ("bow", 3e-3, 32, 0.25, "adam", 0.0, 1, 64),
    ("textcnn", 1e-3, 32, 0.5, "adam", 0.0, 1, 128),
    ("textcnn", 3e-3, 64, 0.5, "adam", 1e-5, 1, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="ag_news,trec,imdb")
    parser.add_argument("--families", default="bow,textcnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    families = args.families.split(",")
    print("| dataset | family | config | best val acc (epoch) | test accuracy | seconds |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for dataset in args.datasets.split(","):
        data = load_task(Task(dataset, seed=0), data_dir=args.data_dir)
        for family, lr, bs, dropout, opt, wd, layers, units in GRID:
            if family not in families:
                continue
            config = Config(lr, bs, 9, dropout, opt, wd, layers, units, family=family)
            started = time.perf_counter()
            curve = train_final(data, config, seed=0)
            seconds = time.perf_counter() - started
            accs = [e.val_accuracy for e in curve.epochs]
            best = max(range(len(accs)), key=accs.__getitem__)
            text = f"lr {lr:g}, bs {bs}, {opt}, wd {wd:g}, {layers}x{units}, dropout {dropout:g}"
            print(
                f"| {dataset} | {family} | {text} | {accs[best]:.3f} ({best + 1}) | {curve.test.accuracy:.3f} "
                f"| {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
