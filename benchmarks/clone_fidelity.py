"""Where a cloned portfolio policy leaves the plan it imitates, on the datasets it never saw.

A policy cloned from a plan (``imitation_plan`` in ``configs/train_agent.yaml``) is judged on its
held-out dataset by the regret of what it plays, which mixes two things: how good the plan is there
(``benchmarks/plans_offline.py`` replays the plans alone) and how faithfully the policy plays it.
This script measures the second. Each held-out task's episode (recorded backend, one seed: the
policy is deterministic) is played by the policy; at every step its greedy action (what
``PPOTuner`` plays unless it is a repeat) is set against the plan's action on the same observation.
Per dataset: the tasks whose whole episode follows the plan, and where the others first leave it
(halving plans: the one-epoch screen of the first nine configs, or the promotions to 3 and 9 epochs;
the list's plan: in order, in full).

    python benchmarks/clone_fidelity.py --policies runs/loo [--budget 3] [--out page.md]

``--policies``: a ``benchmarks/leave_one_out.py`` runs folder (``policy-<dataset>/``).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rlhpo.agents.base import run_tuner
from rlhpo.agents.learned_list import for_modality
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.portfolio import HALVING_RUNGS, PLAN_ACTIONS, halving_rows, portfolio_size
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.store import CurveStore

sys.path.insert(0, str(Path(__file__).parent))
from leave_one_out import policy_folder  # noqa: E402

SEED = 10000  # the bench's first evaluation seed
SCREEN = HALVING_RUNGS[0][0]  # a halving episode's first steps screen this many configs for an epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", required=True, help="leave_one_out.py runs folder (policy-<dataset>/)")
    parser.add_argument("--store", default=None, help="recorded curves (default: the shipped meta-dataset)")
    parser.add_argument("--budget", type=float, default=3.0, help="episode budget in full trainings")
    parser.add_argument("--datasets", default=None, help="comma-separated (default: every dataset with a policy)")
    parser.add_argument("--out", default=None, help="also write the page here")
    args = parser.parse_args()
    store_path = Path(args.store) if args.store else shipped_file(SHIPPED_STORE)
    with CurveStore(store_path, readonly=True) as store:
        records = store.tasks(with_runs=True, seed=0)
    datasets = sorted({r.task.dataset for r in records})
    wanted = args.datasets.split(",") if args.datasets else datasets
    lines = [
        f"# How faithfully cloned policies play their plan, budget {args.budget:g} FTE",
        "",
        f"Made by `python benchmarks/clone_fidelity.py {' '.join(sys.argv[1:])}`. One episode per held-out task "
        f"(seed {SEED}), each dataset played by the policy that never saw it.",
        "",
        "| held-out dataset | plan | tasks | follows the plan | first leaves it: screen | promotion to 3 epochs "
        "| promotion to 9 epochs | list order |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    examples: list[str] = []
    for dataset in wanted:
        path = policy_folder(Path(args.policies), dataset, datasets)
        if not path.exists():
            continue
        tuner = PPOTuner.load(path)
        plan = str(tuner.info.settings.get("imitation_plan", "list"))
        tasks = [r.task for r in records if r.task.dataset == dataset]
        counts: collections.Counter[str] = collections.Counter()
        space = tuner.info.space
        assert space is not None
        budget = round(args.budget * space.max_epochs)
        incumbent = str(tuner.info.settings.get("incumbent", "best"))  # as the bench plays it
        env = HPOEnv("recorded", store_path, space=space, budget_epochs=budget, incumbent=incumbent)
        try:
            for task in tasks:
                where, example = first_departure(tuner, env, task, plan)
                counts[where] += 1
                if example and len(examples) < 12:
                    examples.append(f"- {dataset}, {task.key()}: {example}")
        finally:
            env.close()
        lines.append(
            f"| {dataset} | {plan} | {len(tasks)} | {counts['none']} | {counts['screen']} | {counts['rung 2']} "
            f"| {counts['rung 3']} | {counts['list']} |"
        )
    lines += ["", "First departures (portfolio actions `[config index in the task's order, epochs index]`):", ""]
    lines += examples
    page = "\n".join(lines) + "\n"
    print(page)
    if args.out:
        Path(args.out).write_text(page)


def first_departure(tuner: PPOTuner, env: HPOEnv, task: Any, plan: str) -> tuple[str, str]:
    """Where the policy's episode on ``task`` in ``env`` first leaves ``plan`` ('none' if never), and what it did."""
    space = env.space
    size = portfolio_size(tuner.info.portfolio)
    fractions = [c / space.max_epochs for c in space.choices["epochs"]]
    steps: list[tuple[list[int], list[int], bool]] = []
    wanted: list[np.ndarray] = []  # the plan's action at the step being proposed
    predict, propose = tuner.model.predict, tuner.propose

    def facts() -> tuple[np.ndarray, np.ndarray]:  # the episode's budget (FTE) and its task's size
        return np.array([env.budget_epochs / space.max_epochs]), np.array([env.record.n_train])

    def spy_predict(obs: np.ndarray, deterministic: bool = True) -> Any:
        wanted[:] = [PLAN_ACTIONS[plan](obs, size, fractions, *facts())[0]]
        return predict(obs, deterministic=deterministic)

    def spy_propose(obs: np.ndarray) -> Any:
        action = propose(obs)  # what is played: the greedy action, or the most likely new one if that repeats
        if wanted and action is not None:
            halving = bool(halving_rows(plan, 1, *facts())[0])
            steps.append((portfolio_index(env, tuner, action), wanted[0].tolist(), halving))
        wanted.clear()
        return action

    tuner.model.predict, tuner.propose = spy_predict, spy_propose  # type: ignore[method-assign]
    try:
        run_tuner(tuner, env, SEED, task=task)
    finally:
        tuner.model.predict, tuner.propose = predict, propose  # type: ignore[method-assign]
    for i, (got, wanted, halving) in enumerate(steps):
        if got != wanted:
            if not halving:
                where = "list"
            elif i < SCREEN:
                where = "screen"
            else:
                where = "rung 2" if wanted[1] == 1 else "rung 3"
            return where, f"step {i}: played {got}, the plan {wanted}"
    return "none", ""


def portfolio_index(env: HPOEnv, tuner: PPOTuner, action: np.ndarray) -> list[int]:
    """The portfolio action ``[i, e]`` (in the task's order) of an env action; ``[-1, e]``: off the portfolio."""
    config = env.decode(action)
    listed = [env.on_task(c.with_epochs(config.epochs)) for c in for_modality(tuner.portfolio, env.modality)]
    return [listed.index(config) if config in listed else -1, env.space.choices["epochs"].index(config.epochs)]


if __name__ == "__main__":
    main()
