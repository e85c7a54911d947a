"""What a portfolio plan would test live at full size, replayed on the ceiling probe's recorded curves.

``benchmarks/text_ceiling.py`` trained every text config of the portfolio for 9 epochs on the tune pool
of ``rlhpo tune --seed S`` and recorded validation and test accuracy after every epoch. Training has
no learning-rate schedule, so a config trained for ``e`` epochs is the first ``e`` epochs of that run,
and a plan that plays these configs can be replayed from the records without training. For each
policy, each text task and seed, the policy's portfolio is put in the task's order as ``rlhpo tune``
would (``portfolio_order: similar``: by the tune pool's meta-features), and two plans are replayed:

- **list**: the first three configs of the order for 9 epochs; the one of best validation is kept
  (what a list-plan policy plays at budget 3);
- **halving** (``agents/portfolio.halving_action``): the first nine for 1 epoch, the best three by
  validation continued to 3, the best two of those to 9; the kept config is the trial of best
  validation at any fidelity (as ``rlhpo tune`` keeps it), or the best of the top rung (Hyperband's rule).

Reported: the test accuracy after 9 epochs of the kept config (``rlhpo tune`` retrains it in full),
per seed and the mean. A config of the first nine that the probe did not train is reported, and the
plan then skips it.

    RLHPO_DATA_DIR=<data folder> python benchmarks/plan_on_ceiling.py --ceiling runs/text_ceiling.jsonl \\
        --policies runs/loo/policy-ag_news,runs/loo-halving/policy-ag_news
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Any

import numpy as np
from best_epoch_probe import read
from plans_offline import halving
from text_ceiling import final

from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.portfolio import HALVING_RUNGS
from rlhpo.space import Config
from rlhpo.tasks import Task, load_task
from rlhpo.tasks.features import meta_features

TEXT = "text"
EPOCHS = (1, 3, 9)  # the epochs choices that HALVING_RUNGS index


def val(run: dict[str, Any], epochs: int) -> float:
    """Validation accuracy after ``epochs`` (0 for a run that diverged)."""
    return run["epochs"][epochs - 1]["val"] if len(run["epochs"]) >= epochs else 0.0


def test(run: dict[str, Any]) -> float:
    """Test accuracy after the run's last epoch (0 for a run that diverged)."""
    return final(run, "test")


def first_in_full(order: list[dict[str, Any]]) -> float:
    """Budget 1, the list plan: the first config for 9 epochs."""
    return test(order[0])


def screen(order: list[dict[str, Any]]) -> float:
    """Budget 1, halving's first rung: the first nine for 1 epoch, the best by validation kept."""
    return test(max(order[: HALVING_RUNGS[0][0]], key=lambda r: val(r, EPOCHS[HALVING_RUNGS[0][1]])))


def list_plan(order: list[dict[str, Any]]) -> float:
    """Budget 3, the list plan: the first three for 9 epochs, the best by validation kept."""
    return test(max(order[:3], key=lambda r: val(r, 9)))


def halving_plan(order: list[dict[str, Any]]) -> tuple[float, float]:
    """Budget 3, halving: the kept config's test accuracy, kept at any fidelity and from the top rung."""
    nine = range(min(HALVING_RUNGS[0][0], len(order)))
    any_fidelity, top_rung = halving(nine, lambda i, epochs: val(order[i], epochs))
    return test(order[any_fidelity]), test(order[top_rung])


PLANS = {  # name: the test accuracy of the config it keeps, from the configs in the task's order
    "budget 1: the first config in full (list plan)": first_in_full,
    "budget 1: nine for one epoch (halving's screen)": screen,
    "budget 3: the first three in full (list plan)": list_plan,
    "budget 3: halving, kept at any fidelity (as `tune` keeps it)": lambda order: halving_plan(order)[0],
    "budget 3: halving, kept from the top rung": lambda order: halving_plan(order)[1],
}


def task_order(policy: PPOTuner, task: str, seed: int, features: dict) -> list[Config]:
    """The policy's text portfolio in the order ``rlhpo tune --task task --seed seed`` plays it."""
    portfolio = policy.info.portfolio
    if policy.info.similar is not None:
        if (task, seed) not in features:
            features[(task, seed)] = meta_features(load_task(Task(task, seed=seed)))
        portfolio = policy.info.similar.reorder(portfolio, TEXT, features[(task, seed)])
    return list(portfolio[TEXT])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ceiling", required=True, help="the JSON lines text_ceiling.py wrote")
    parser.add_argument("--policies", required=True, help="comma-separated policy folders or files")
    args = parser.parse_args()
    runs: dict[tuple[str, int], dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for row in read(Path(args.ceiling)):
        runs[(row["task"], row["seed"])][Config(**row["config"]).key()] = row
    features: dict[tuple[str, int], dict[str, float]] = {}
    tasks = sorted({t for t, _ in runs})
    for path in args.policies.split(","):
        policy = PPOTuner.load(Path(path))
        orders, missing = {}, []
        for task, seed in sorted(runs):
            recorded = runs[(task, seed)]
            order = [c.key() for c in task_order(policy, task, seed, features)]
            missing += [f"{task} seed {seed} #{i}" for i, k in enumerate(order[:9]) if k not in recorded]
            orders[(task, seed)] = [recorded[k] for k in order if k in recorded]
        print(f"\n{path}: test accuracy of the config kept, per seed (mean)\n")
        print("| plan | " + " | ".join(tasks) + " |")
        print("| --- |" + " --- |" * len(tasks))
        for name, plan in PLANS.items():
            cells = []
            for task in tasks:
                accs = [plan(orders[(t, s)]) for t, s in sorted(orders) if t == task]
                cells.append(" / ".join(f"{a:.3f}" for a in accs) + f" ({np.mean(accs):.4f})")
            print(f"| {name} | " + " | ".join(cells) + " |")
        if missing:
            print(f"\nOf the first nine, not probed (skipped by the plans): {', '.join(missing)}")


if __name__ == "__main__":
    main()
