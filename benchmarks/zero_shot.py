"""Zero-shot regret: ``rlhpo suggest``'s first config against the default config and the learned list's first.

Each is one trial at full fidelity on every recorded task instance of each dataset, answered by
the recorded backend (a config that was not recorded is answered by the nearest recorded one, as
in ``rlhpo bench``; the exact/distance columns say how often) and judged by its full-fidelity
regret. ``--policies DIR`` takes one policy per held-out dataset (``DIR/policy-<dataset>/``, or
``DIR/policy-trec+trec_fine/`` for datasets held out together, as ``benchmarks/leave_one_out.py``
leaves them); without it, the shipped policy plays every dataset
(held out only on ag_news). The learned list learns from the same tasks as the policy.

    python benchmarks/zero_shot.py [--policies runs/loo] [--out docs/benchmarks/zero_shot.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rlhpo.agents.evaluate import FullFidelity
from rlhpo.agents.learned_list import LearnedListTuner
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.suggest import ranked_configs
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.store import CurveStore

sys.path.insert(0, str(Path(__file__).parent))
from leave_one_out import policy_folder  # noqa: E402

METHODS = ("suggest", "default", "learned_list")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="recorded curves (default: the shipped meta-dataset)")
    parser.add_argument("--policies", default=None, help="folder of policy-<dataset>/ (default: the shipped policy)")
    parser.add_argument("--out", default=None, help="also write the per-task rows as JSON here")
    args = parser.parse_args()
    store = CurveStore(args.store or shipped_file(SHIPPED_STORE), readonly=True)
    datasets = sorted({r.task.dataset for r in store.tasks(with_runs=True)})
    out: dict[str, Any] = {}
    print(f"| dataset | tasks | {' | '.join(METHODS)} | suggest exact |")
    print("| --- | ---: |" + " ---: |" * (len(METHODS) + 1))
    for dataset in datasets:
        path = policy_folder(Path(args.policies), dataset, datasets) if args.policies else None
        if path is not None and not path.exists():
            continue
        rows = regrets(store, dataset, PPOTuner.load(path))
        if not rows:
            print(f"| {dataset} | - | no meta-training task of its modality: nothing learned to suggest |")
            continue
        out[dataset] = rows
        means = [statistics.fmean(r[m] for r in rows) for m in METHODS]
        exact = sum(r["suggest_exact"] for r in rows)
        print(f"| {dataset} | {len(rows)} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {exact}/{len(rows)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


def regrets(store: CurveStore, dataset: str, policy: PPOTuner) -> list[dict[str, Any]]:
    """Each method's one-trial regret on every task instance of ``dataset``."""
    space = policy.policy_space
    assert space is not None, "the policy file must say its space"
    oracle = FullFidelity(store, space, 0)
    lists = LearnedListTuner.fit(store, space, exclude_datasets=policy.info.exclude_datasets)
    env = HPOEnv("recorded", store, space=space, budget_epochs=space.max_epochs)
    rows = []
    for record in store.tasks(with_runs=True):
        if record.task.dataset != dataset:
            continue
        row: dict[str, Any] = {"task": record.key}
        env.reset(options={"task": record.key})
        if not lists.configs_for(env.modality):
            return []  # e.g. digits held out: the only tabular dataset
        for method in METHODS:
            obs, _ = env.reset(options={"task": record.key})
            if method == "suggest":
                action = space.indices(ranked_configs(policy, env, obs, 1)[0], env.modality)
            elif method == "default":
                action = env.default_action()
            else:
                first = env.on_task(lists.configs_for(env.modality)[0].with_epochs(space.max_epochs))
                action = space.indices(first, env.modality)
            result = env.step(action)[4]["result"]
            row[method] = oracle.regret(record.key, result.answered_config)
            row[f"{method}_exact"] = result.exact
            row[f"{method}_distance"] = result.distance
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
