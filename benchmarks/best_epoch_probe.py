"""Would early stopping lift what ``rlhpo tune`` ends with? A probe on the shipped policy's live tunes.

For each task and seed: the shipped policy's live tune (budget 3), then every config it trained,
retrained for the full epochs with the same seed and task instance, with the test split scored
after every epoch. The report puts side by side, per task (mean over seeds):

- ``tune``: the test accuracy ``rlhpo tune`` reported (its final model);
- ``last``: each trial scored by its last epoch's validation accuracy, the best trial's last model
  (tune's rule, recomputed from the retrained curves: it must equal ``tune``);
- ``early stopping``: each trial scored by its best validation epoch, the best trial's model at that epoch;
- ``best of the trials``: the best test accuracy among the trials' last models (what a perfect
  choice among the configs played would give).

It reuses the trainer's own epoch and evaluation steps (private helpers of :mod:`rlhpo.training`),
so the curves are those of :func:`rlhpo.training.train`, bit for bit on CPU.

    RLHPO_DATA_DIR=<data folder> python benchmarks/best_epoch_probe.py --tasks trec,ag_news,imdb --seeds 0,1,2 \\
        --out runs/best_epoch.jsonl          # resumable: tasks and seeds already in --out are skipped
    python benchmarks/best_epoch_probe.py --report --out runs/best_epoch.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhpo.agents.tune import tune
from rlhpo.models import model_for
from rlhpo.space import Config
from rlhpo.tasks import Task, load_task
from rlhpo.tasks.task import TaskData
from rlhpo.training import _evaluate, _seeded_rng, _train_epoch, make_optimizer, resolve_device


def epoch_accuracies(data: TaskData, config: Config, seed: int) -> list[dict[str, float]]:
    """Validation and test accuracy after each epoch of :func:`rlhpo.training.train`'s run (CPU)."""
    dev = resolve_device("cpu")
    out: list[dict[str, float]] = []
    with _seeded_rng(seed, dev):
        model = model_for(data, config)
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.learning_rate, config.weight_decay)
        order = torch.Generator().manual_seed(seed)
        for _ in range(config.epochs):
            if _train_epoch(model, optimizer, data.x_train, data.y_train.long(), config.batch_size, order) is None:
                break  # diverged
            val = _evaluate(model, data.x_val, data.y_val.long(), data.n_classes)
            test = _evaluate(model, data.x_test, data.y_test.long(), data.n_classes)
            if val is None or test is None:
                break
            out.append({"val": val[1], "test": test[1]})
    return out


def probe(tasks: list[str], seeds: list[int], out: Path, max_epochs: int) -> None:
    done = {(r["task"], r["seed"]) for r in read(out)}
    for seed in seeds:
        for name in tasks:
            if (name, seed) in done:
                continue
            task = Task(name, seed=seed)
            data = load_task(task)
            with tempfile.TemporaryDirectory() as runs:
                summary = tune(task, seed=seed, runs_dir=runs)
            trials = [
                {
                    "config": t["config"],
                    "epochs": epoch_accuracies(data, Config(**t["config"]).with_epochs(max_epochs), seed),
                }
                for t in summary["trials"]
            ]
            with out.open("a") as f:
                f.write(
                    json.dumps({"task": name, "seed": seed, "tune": summary["test_accuracy"], "trials": trials}) + "\n"
                )
            print(f"{name} seed {seed}: tune {summary['test_accuracy']:.4f}", flush=True)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rules(row: dict[str, Any]) -> dict[str, float]:
    """The test accuracy each rule ends with on one tune (module docstring)."""
    trials = [t["epochs"] for t in row["trials"] if t["epochs"]]
    last = max(trials, key=lambda e: e[-1]["val"])
    stopped = max((max(e, key=lambda r: r["val"]) for e in trials), key=lambda r: r["val"])
    return {
        "tune": row["tune"],
        "last": last[-1]["test"],
        "early stopping": stopped["test"],
        "best of the trials": max(e[-1]["test"] for e in trials),
    }


def report(path: Path) -> None:
    by_task: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for row in read(path):
        by_task[row["task"]].append(rules(row))
    columns = ["tune", "last", "early stopping", "best of the trials"]
    print("| task | seeds | " + " | ".join(columns) + " |")
    print("| --- | ---: |" + " ---: |" * len(columns))
    for task, rows in by_task.items():
        cells = [f"{np.mean([r[c] for r in rows]):.4f}" for c in columns]
        print(f"| {task} | {len(rows)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="trec,ag_news,imdb")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=9, help="the largest epochs choice (the shipped space's)")
    parser.add_argument("--out", type=Path, default=Path("runs/best_epoch.jsonl"))
    parser.add_argument("--report", action="store_true", help="only print the table of what --out holds")
    args = parser.parse_args()
    if not args.report:
        probe(args.tasks.split(","), [int(s) for s in args.seeds.split(",")], args.out, args.epochs)
    report(args.out)


if __name__ == "__main__":
    main()
