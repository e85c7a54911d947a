"""``ppo_tpe`` (the policy, then the learned list enqueued, then TPE) against its parts, leaving one dataset out.

For each held-out dataset, ``rlhpo bench`` (recorded backend) on that dataset's tasks with its
leave-one-out policy (``<policies>/policy-<dataset>``, or ``policy-trec+trec_fine`` for datasets
held out together, as ``benchmarks/leave_one_out.py`` trains them): methods ppo, tpe, ppo_tpe
and learned_list, the learned list learned from the same meta-training tasks as the policy
(``exclude_datasets: [<dataset>]``, which ``rlhpo bench`` takes from the policy). A bench folder
that already exists is resumed. Prints the regret (mean ± s.e.) per dataset and pooled, and the
issue's goal per dataset: at 3 FTE ``ppo_tpe`` no worse than ``ppo``, at 30 FTE no worse than the
better of ``tpe`` and ``learned_list``.

``--previous`` names the runs folder of an earlier leave-one-out bench (``leave_one_out.py``'s
``--runs-dir``, same policies): its ``ppo_tpe`` rows, from an earlier ``ppo_tpe``, are shown as
``--previous-label`` (default ``ppo_tpe (no list)``: from before the list was enqueued), and its
rows of the other methods are checked to be the same as here.

Usage::

    python benchmarks/ppo_tpe_list.py --policies runs/loo-recorded --runs-dir runs/ppo_tpe_list \\
        --previous runs/loo-recorded
    python benchmarks/ppo_tpe_list.py --policies runs/loo-v3-s14 --runs-dir runs/ppo_tpe_s14 \\
        --datasets ag_news,cifar10,digits,imdb,mnist,trec,trec_fine \\
        --previous runs/loo-v3-s13h --previous-label "ppo_tpe (whole list)"
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import optuna

from rlhpo.agents.bench import BenchSettings, read_csv, run_bench
from rlhpo.agents.evaluate import mean_se, pm
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.store import CurveStore

sys.path.insert(0, str(Path(__file__).parent))
from leave_one_out import policy_folder  # noqa: E402

METHODS = ("ppo", "tpe", "ppo_tpe", "learned_list")
NO_LIST = "ppo_tpe (no list)"
DATASETS = "ag_news,cifar10,digits,imdb,mnist,trec"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="runs/loo-recorded", help="folder of policy-<dataset>/ runs")
    parser.add_argument("--datasets", default=DATASETS)
    parser.add_argument("--budgets", default="1,3,10,30")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--store", default=None, help="recorded curves (default: the shipped meta-dataset)")
    parser.add_argument("--runs-dir", default="runs/ppo_tpe_list")
    parser.add_argument("--previous", default=None, help="an earlier leave-one-out runs folder (bench-<dataset>/)")
    parser.add_argument("--previous-label", default=NO_LIST, help="the name of --previous's ppo_tpe rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    datasets = args.datasets.split(",")
    with CurveStore(args.store or shipped_file(SHIPPED_STORE), readonly=True) as store:
        in_store = sorted({r.task.dataset for r in store.tasks(with_runs=True)})
    budgets = tuple(float(b) for b in args.budgets.split(","))
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        out = Path(args.runs_dir) / f"bench-{dataset}"
        settings = BenchSettings(
            tasks=(dataset,),
            methods=METHODS,
            budgets=budgets,
            seeds=args.seeds,
            policy=str(policy_folder(Path(args.policies), dataset, in_store)),
            store=args.store,
        )
        run_bench(settings, out, argv=["benchmarks/ppo_tpe_list.py"])
        rows += read_csv(out / "bench.csv")
        print(f"{dataset}: done", flush=True)
    methods = list(METHODS)
    if args.previous:
        rows += previous_rows(Path(args.previous), datasets, rows, args.previous_label)
        methods.insert(methods.index("ppo_tpe"), args.previous_label)
    print("\n".join(tables(rows, datasets, budgets, methods)))


def previous_rows(folder: Path, datasets: list[str], rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The earlier bench's ``ppo_tpe`` rows as ``label``, once its rows of the other methods match."""
    ours = {_key(r): r["regret"] for r in rows if r["method"] != "ppo_tpe"}
    out: list[dict[str, Any]] = []
    for dataset in datasets:
        for row in read_csv(folder / f"bench-{dataset}" / "bench.csv"):
            if row["method"] == "ppo_tpe":
                if (row["task"], "ppo", row["seed"], float(row["budget_fte"])) in ours:  # an episode benched here
                    out.append({**row, "method": label})
            elif _key(row) in ours and ours[_key(row)] != row["regret"]:
                raise SystemExit(f"{folder}: {_key(row)} has regret {row['regret']}, here {ours[_key(row)]}")
    return out


def _key(row: dict[str, Any]) -> tuple[str, str, int, float]:
    return (row["task"], row["method"], row["seed"], float(row["budget_fte"]))


def tables(
    rows: list[dict[str, Any]], datasets: list[str], budgets: tuple[float, ...], methods: list[str]
) -> list[str]:
    """Markdown: pooled regret, regret per dataset, and the goal per dataset and pooled."""

    def regret(method: str, budget: float, dataset: str | None = None) -> tuple[float | None, float | None]:
        return mean_se(
            [
                r["regret"]
                for r in rows
                if r["method"] == method and r["budget_fte"] == budget and dataset in (None, r["dataset"])
            ]
        )

    head = "| method | " + " | ".join(f"@ {b:g} FTE" for b in budgets) + " |"
    rule = "| --- |" + " --- |" * len(budgets)
    lines = ["## Pooled regret (every held-out dataset's tasks and seeds)", "", head, rule]
    lines += [f"| {m} | " + " | ".join(pm(regret(m, b)) for b in budgets) + " |" for m in methods]
    lines += ["", "## Regret per held-out dataset", "", "| dataset | " + head[2:], "| --- " + rule]
    for d in datasets:
        lines += [f"| {d} | {m} | " + " | ".join(pm(regret(m, b, d)) for b in budgets) + " |" for m in methods]
    lines += [
        "",
        "## The goal: ppo_tpe at 3 FTE less ppo, at 30 FTE less the better of tpe and learned_list",
        "",
        "Mean regret differences (negative: ppo_tpe is better); met: the difference is at most 0.",
        "",
        "| dataset | 3 FTE: ppo_tpe − ppo | met | 30 FTE: ppo_tpe − min(tpe, learned_list) | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in [*datasets, None]:
        at3 = _mean(regret("ppo_tpe", 3.0, d)) - _mean(regret("ppo", 3.0, d))
        best30 = min(_mean(regret("tpe", 30.0, d)), _mean(regret("learned_list", 30.0, d)))
        at30 = _mean(regret("ppo_tpe", 30.0, d)) - best30
        lines.append(f"| {d or 'pooled'} | {at3:+.3f} | {_met(at3)} | {at30:+.3f} | {_met(at30)} |")
    return lines


def _mean(ms: tuple[float | None, float | None]) -> float:
    assert ms[0] is not None, "no rows at this budget"
    return ms[0]


def _met(difference: float) -> str:
    return "yes" if difference <= 1e-12 else "no"


if __name__ == "__main__":
    main()
