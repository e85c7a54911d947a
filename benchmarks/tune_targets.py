"""``rlhpo tune`` against the default config on the target tasks: test accuracy, minutes, policy time.

For each task, two runs on the same task instance (same seed, same data): ``rlhpo train`` with
the default config (the search space's default, trained at full fidelity) and ``rlhpo tune``
with the policy at the budget (default 3 full-training equivalents), which then retrains its
chosen config at full fidelity. Reported: test accuracy of each, wall-clock minutes of each
(training only for the default; tuning plus the final training for tune), the epochs tune spent,
and the policy's share of tune's minutes (its own decisions). The dataset is preprocessed once
before either run, so neither pays for it. Both run in this process, one after the other, with
torch's default thread count.

Usage (the whole datasets take hours on 2 cores; ``--n-train`` subsamples for a quick look)::

    RLHPO_DATA_DIR=<data folder> python benchmarks/tune_targets.py --out docs/benchmarks/tune.md

``--no-refit`` trains tune's final model on the training split only (``rlhpo tune --no-refit``).
``--method ppo_tpe`` tunes with ``rlhpo tune --method ppo_tpe`` (the policy, then the learned
list and TPE) instead of the policy alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlhpo.agents.settings import TUNE_METHODS
from rlhpo.agents.tune import tune
from rlhpo.runs import config_text as short_config
from rlhpo.runs import train_run
from rlhpo.space import load_search_space
from rlhpo.tasks import Task, load_task

TARGETS = ("ag_news", "mnist", "cifar10", "imdb", "trec")
FINAL_DATA = {True: "on the training and validation splits", False: "on the training split"}


def show_trial(t: dict[str, Any]) -> None:
    print(f"  trial {t['step']}: {short_config(t['config'])} {t['epochs']} epochs, score {t['score']:.4f}", flush=True)


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The default config's run and tune's run on one task."""
    task = Task(name, n_train=args.n_train, seed=args.seed)
    load_task(task, data_dir=args.data_dir)  # preprocess (and cache) once, untimed, before either run
    print(f"{name}: training the default config", flush=True)
    default = train_run(
        task,
        load_search_space().default,
        seed=args.seed,
        data_dir=args.data_dir,
        runs_dir=args.runs_dir,
    )
    print(f"{name}: tuning at {args.budget} FTE ({args.method})", flush=True)
    tuned = tune(
        task,
        budget_fte=args.budget,
        policy=args.policy,
        seed=args.seed,
        data_dir=args.data_dir,
        runs_dir=args.runs_dir,
        on_trial=show_trial,
        method=args.method,
        refit=args.refit,
    )
    return {"task": name, "default": default, "tune": tuned}


def report(args: argparse.Namespace, rows: list[dict[str, Any]], seconds: float) -> str:
    lines = [
        "# `rlhpo tune` on the target tasks",
        "",
        f"Made by `python benchmarks/tune_targets.py {' '.join(args.argv)}` on {platform.node()} "
        f"({os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads), "
        f"{time.strftime('%Y-%m-%d')}, in {seconds / 60:.0f} minutes.",
        "",
        f"Budget {args.budget} full-training equivalents; method {args.method}; seed {args.seed}; training set "
        f"{'whole' if args.n_train is None else f'{args.n_train} examples'}. Default: the search space's default "
        "config at full fidelity (`rlhpo train`); its minutes are its training. Tune: the policy's episode, then its "
        f"chosen config retrained at full fidelity ({FINAL_DATA[args.refit]}); its minutes are both, "
        "and the policy's share is its own "
        "decision time over them.",
        "",
        "| task | model | default test acc. | default min | tune test acc. | tune min | tuning epochs "
        "| policy share | chosen config |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d, t = r["default"], r["tune"]
        tune_seconds = t["tuning_seconds"] + t["retrain_seconds"]
        lines.append(
            f"| {r['task']} | {t['model']} | {d['test_accuracy']:.4f} | {d['seconds'] / 60:.1f} "
            f"| {t['test_accuracy']:.4f} | {tune_seconds / 60:.1f} | {t['tuning_epochs']}/{t['budget_epochs']} "
            f"| {t['policy_seconds'] / tune_seconds:.2%} | `{short_config(t['config'])}` |"
        )
    lines += ["", "Run folders: " + ", ".join(f"`{r['tune']['run_dir']}`" for r in rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TARGETS), help="Comma-separated built-in tasks.")
    parser.add_argument("--budget", type=float, default=3.0, help="Tuning budget in full-training equivalents.")
    parser.add_argument("--policy", type=Path, default=None, help="policy.zip (default: the shipped policy).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=TUNE_METHODS, default="ppo", help="What tunes: rlhpo tune --method.")
    parser.add_argument(
        "--no-refit", dest="refit", action="store_false", help="Final training on the training split only."
    )
    parser.add_argument("--n-train", type=int, default=None, help="Subsample each training set (a quick look).")
    parser.add_argument("--data-dir", type=Path, default=None, help="Default: $RLHPO_DATA_DIR.")
    parser.add_argument("--runs-dir", type=Path, default=None, help="Where run folders go (default: ./runs).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown report here.")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    started = time.perf_counter()
    rows = [run_task(name.strip(), args) for name in args.tasks.split(",") if name.strip()]
    text = report(args, rows, time.perf_counter() - started)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
