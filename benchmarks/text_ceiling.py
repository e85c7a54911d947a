"""How far can a tuner that chooses among the shipped text portfolio go at full size? A ceiling probe.

For each text task and seed, every config of the shipped policy's text portfolio (plus the configs of
``EXTRA``, e.g. fastText's recipe) is trained on the tune pool of ``rlhpo tune --seed S`` for the
full epochs, with validation and test accuracy after every epoch (the trainer's own steps, as in
``best_epoch_probe.py``). The report gives, per task (means over seeds):

- each config's test accuracy, and the **fixed-config ceiling**: the one config of best mean test
  accuracy (no tuner choosing among these configs can be expected to beat it on average);
- the **per-seed oracle**: the best test accuracy of any config at each seed (an upper bound);
- **validation's pick among all of them**: what a tuner that trained every config and kept the best
  last-epoch validation score would test (a budget of as many FTE as configs);
- **budget 3**: for every set of three configs, the test accuracy of validation's pick among them
  (what a tuner that plays those three at budget 3 ends with): the shipped policy's three, the best
  set, and how many sets reach ``--targets`` (e.g. the TF-IDF + LinearSVC baseline of the same pools).

    RLHPO_DATA_DIR=<data folder> python benchmarks/text_ceiling.py --tasks trec,ag_news --seeds 0,1,2 \\
        --out runs/text_ceiling.jsonl     # resumable: (task, seed, config) already in --out are skipped
    python benchmarks/text_ceiling.py --report --out runs/text_ceiling.jsonl
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from best_epoch_probe import epoch_accuracies, read

from rlhpo.agents.policy import policy_file, read_policy_info
from rlhpo.space import Config
from rlhpo.tasks import Task, load_task

# The three text configs the shipped policy plays at budget 3 (tune_text.md, session 17).
SHIPPED_TRIPLE = ("list 0", "list 9", "list 5")
# Configs known from earlier probes to do well on full-size text (linear_baseline.md): fastText's
# recipe and its lr 0.03 variant, and Galke & Scherp's wide TF-IDF MLP.
EXTRA = {
    "fasttext recipe": dict(
        learning_rate=0.1, batch_size=16, dropout=0.0, optimizer="sgd", weight_decay=0.0, num_layers=1, units=64
    ),
    "sgd lr 0.03": dict(
        learning_rate=0.03, batch_size=16, dropout=0.0, optimizer="sgd", weight_decay=0.0, num_layers=1, units=64
    ),
    "wide mlp": dict(
        learning_rate=0.001, batch_size=64, dropout=0.5, optimizer="adam", weight_decay=0.0, num_layers=1, units=256
    ),
}


def portfolio_configs(families: set[str]) -> list[tuple[str, Config]]:
    """The shipped policy's text portfolio, in list order, restricted to ``families``."""
    configs = read_policy_info(policy_file(None)).portfolio["text"]
    return [(f"list {i}", c) for i, c in enumerate(configs) if c.family in families]


def extra_configs() -> list[tuple[str, Config]]:
    return [(name, Config(epochs=9, family="bow", **values)) for name, values in EXTRA.items()]


def probe(tasks: list[str], seeds: list[int], families: set[str], out: Path, epochs: int, skip: set[str]) -> None:
    done = {(r["task"], r["seed"], r["name"]) for r in read(out)}
    configs = [(label, c) for label, c in portfolio_configs(families) + extra_configs() if label not in skip]
    for name in tasks:
        for seed in seeds:
            data = None
            for label, config in configs:
                if (name, seed, label) in done:
                    continue
                data = data or load_task(Task(name, seed=seed))
                start = time.perf_counter()
                curve = epoch_accuracies(data, config.with_epochs(epochs), seed)
                row = {
                    "task": name,
                    "seed": seed,
                    "name": label,
                    "config": config.to_dict(),
                    "epochs": curve,
                    "seconds": time.perf_counter() - start,
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                final = f"{curve[-1]['test']:.4f}" if curve else "diverged"
                print(f"{name} seed {seed} {label}: test {final} ({row['seconds']:.0f} s)", flush=True)


def final(row: dict[str, Any], key: str) -> float:
    return row["epochs"][-1][key] if row["epochs"] else 0.0


def picked(by_seed: dict[int, dict[str, dict[str, Any]]], names: tuple[str, ...]) -> float:
    """Mean over seeds of the test accuracy of the config that validation keeps among ``names``."""
    return float(
        np.mean([final(runs[max(names, key=lambda n: final(runs[n], "val"))], "test") for runs in by_seed.values()])
    )


def report(path: Path, targets: dict[str, float]) -> None:
    runs: dict[str, dict[int, dict[str, dict[str, Any]]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict)
    )
    for row in read(path):
        runs[row["task"]][row["seed"]][row["name"]] = row
    per_task: dict[str, dict[tuple[str, ...], float]] = {}
    for task, by_seed in runs.items():
        names = sorted(
            set.intersection(*(set(r) for r in by_seed.values())),
            key=lambda n: (not n.startswith("list"), int(n.split()[1]) if n.startswith("list") else 0, n),
        )
        seeds = sorted(by_seed)
        print(f"\n### {task} (seeds {', '.join(map(str, seeds))}; {len(names)} configs)\n")
        print("| config | test acc. per seed | mean | val (last epoch) mean | seconds |")
        print("| --- | --- | ---: | ---: | ---: |")
        means = {}
        for n in names:
            tests = [final(by_seed[s][n], "test") for s in seeds]
            means[n] = float(np.mean(tests))
            c = by_seed[seeds[0]][n]["config"]
            desc = (
                f"{n}: {c['family']} {c['optimizer']} lr {c['learning_rate']:g} bs {c['batch_size']} "
                f"do {c['dropout']:g} wd {c['weight_decay']:g} {c['num_layers']}x{c['units']}"
            )
            vals = np.mean([final(by_seed[s][n], "val") for s in seeds])
            secs = np.mean([by_seed[s][n]["seconds"] for s in seeds])
            print(f"| {desc} | {' / '.join(f'{t:.3f}' for t in tests)} | {means[n]:.4f} | {vals:.4f} | {secs:.0f} |")
        best = max(means, key=means.get)
        oracle = np.mean([max(final(by_seed[s][n], "test") for n in names) for s in seeds])
        print(f"\n- fixed-config ceiling: {best} at {means[best]:.4f}")
        print(f"- per-seed oracle: {oracle:.4f}")
        print(f"- validation's pick among all {len(names)}: {picked(by_seed, tuple(names)):.4f}")
        triples = {t: picked(by_seed, t) for t in itertools.combinations(names, 3)}
        if not triples:
            continue
        per_task[task] = triples
        shipped = tuple(n for n in names if n in SHIPPED_TRIPLE)
        if len(shipped) == 3:
            print(f"- budget 3, the shipped policy's three ({', '.join(shipped)}): {triples[shipped]:.4f}")
        top = max(triples, key=triples.get)
        print(f"- budget 3, the best of {len(triples)} sets of three ({', '.join(top)}): {triples[top]:.4f}")
        if task in targets:
            reach = sum(v >= targets[task] for v in triples.values())
            print(f"- sets of three at or above {targets[task]:.3f}: {reach} of {len(triples)}")
    joint = [t for t in per_task if t in targets]
    if len(joint) > 1:
        common = set.intersection(*(set(per_task[t]) for t in joint))
        margin = {s: min(per_task[t][s] - targets[t] for t in joint) for s in common}
        top = max(margin, key=margin.get)
        print(f"\n### One set of three for {', '.join(joint)}\n")
        print(f"- sets at or above every target: {sum(m >= 0 for m in margin.values())} of {len(margin)}")
        cells = ", ".join(f"{t} {per_task[t][top]:.4f}" for t in joint)
        print(f"- the set nearest to them all ({', '.join(top)}): {cells}; worst margin {margin[top]:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="trec,ag_news,imdb")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--families", default="bow,textcnn", help="portfolio families to train (lstm/gru are slow)")
    parser.add_argument("--skip", default="", help="configs not to train, by name (e.g. 'list 2,list 8': slow on imdb)")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/text_ceiling.jsonl"))
    parser.add_argument(
        "--targets",
        default="trec=0.877,ag_news=0.887,imdb=0.891",
        help="task=accuracy to count sets of three against (default: TF-IDF + LinearSVC, same pools)",
    )
    parser.add_argument("--report", action="store_true", help="only print the tables of what --out holds")
    args = parser.parse_args()
    if not args.report:
        torch.set_num_threads(args.threads)
        probe(
            args.tasks.split(","),
            [int(s) for s in args.seeds.split(",")],
            set(args.families.split(",")),
            args.out,
            args.epochs,
            set(filter(None, args.skip.split(","))),
        )
    report(args.out, {k: float(v) for k, v in (t.split("=") for t in args.targets.split(",") if t)})


if __name__ == "__main__":
    main()
