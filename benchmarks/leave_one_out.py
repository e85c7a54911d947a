"""Leave one dataset out: one policy per held-out dataset, each benched on the dataset it never saw.

For each dataset of the store, train a policy with ``rlhpo train-agent``'s settings less that
dataset (``exclude_datasets: [<dataset>]``), then run ``rlhpo bench`` (recorded backend) on that
dataset's tasks with every method; the learned list learns from the same meta-training tasks as
the policy. Datasets read from the same data (``trec`` and ``trec_fine``: the same questions,
coarse and fine labels) are held out together, so a held-out dataset's texts are never seen. A
dataset whose policy or bench folder already exists is reused, so an interrupted run goes on
where it stopped. Writes one Markdown page with the table of every dataset.

One PPO run per held-out dataset can be a lucky or an unlucky one (on the final store, the
mnist-held-out policy went from the learned list's plan to a regret 20 times higher between two
runs of the same recipe). ``--train-seeds K`` trains K policies per held-out dataset (PPO seeds
``seed``, ``seed + 1``, ...; the first is the one every method's table uses) and benches ``ppo``
with each; the page then gives ppo's regret per training seed, their mean and its standard error
over the seeds, and the budget TPE, the learned list and top-k need to reach that mean.

Usage::

    python benchmarks/leave_one_out.py --total-steps 100000 --runs-dir runs/loo \\
        --out docs/benchmarks/leave_one_out.md
    python benchmarks/leave_one_out.py --total-steps 100000 --no-meta-features \\
        --runs-dir runs/loo-masked --out docs/benchmarks/leave_one_out_masked.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from rlhpo.agents.bench import BenchSettings, read_csv, run_bench
from rlhpo.agents.bench_report import budget_to_reach, plot, seconds_to_reach, speedup_text, summarise
from rlhpo.agents.evaluate import mean_se, pm
from rlhpo.agents.meta_train import train_agent
from rlhpo.agents.settings import METHODS, load_train_agent_settings
from rlhpo.envs.surrogate import SurrogateSettings, fit_surrogate
from rlhpo.store import CurveStore
from rlhpo.tasks.registry import data_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="train-agent settings (default: the shipped ones)")
    parser.add_argument("--store", default=None, help="curve store to meta-train and judge on (default: the config's)")
    parser.add_argument("--total-steps", type=int, default=None, help="PPO steps per policy (default: the config's)")
    parser.add_argument("--no-meta-features", action="store_true", help="train blind policies (meta_features: false)")
    parser.add_argument("--config-fraction", type=float, default=None, help="override config_fraction")
    parser.add_argument(
        "--backend", choices=("recorded", "surrogate"), default=None, help="meta-training backend (default: config's)"
    )
    parser.add_argument("--history", type=int, default=None, help="best trials the policy observes (override)")
    parser.add_argument("--budget-fte-range", default=None, help="LOW,HIGH: a budget drawn per episode (override)")
    parser.add_argument("--first-trial-top", type=int, default=None, help="override first_trial_top")
    parser.add_argument("--portfolio", type=int, default=None, help="portfolio policy of N configs (override)")
    parser.add_argument("--imitation-episodes", type=int, default=None, help="override imitation_episodes")
    parser.add_argument("--imitation-plan", default=None, help="override imitation_plan (as the settings)")
    parser.add_argument("--full-fidelity-return", action="store_true", help="set full_fidelity_return: true")
    parser.add_argument("--portfolio-ranks", action="store_true", help="set portfolio_ranks: true")
    parser.add_argument("--portfolio-order", default=None, help="override portfolio_order (list or similar)")
    parser.add_argument("--portfolio-net", default=None, help="override portfolio_net (mlp or per_config)")
    parser.add_argument("--incumbent", default=None, help="the env's incumbent rule, best or top_rung (override)")
    parser.add_argument("--compute-cost", type=float, default=None, help="override reward.compute_cost")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated tuners to bench")
    parser.add_argument("--datasets", default=None, help="comma-separated (default: every dataset of the store)")
    parser.add_argument("--budgets", default="1,3,10,30")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--train-seeds",
        type=int,
        default=1,
        help="PPO training seeds per held-out dataset; seeds past the first add a ppo-only bench (see the docstring)",
    )
    parser.add_argument("--runs-dir", default="runs/loo")
    parser.add_argument("--out", default="docs/benchmarks/leave_one_out.md")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    base = load_train_agent_settings(args.config)
    if args.store:
        base = dataclasses.replace(base, store=args.store)
    if args.total_steps:
        base = dataclasses.replace(base, total_steps=args.total_steps)
    if args.no_meta_features:
        base = dataclasses.replace(base, meta_features=False)
    if args.config_fraction is not None:
        base = dataclasses.replace(base, config_fraction=args.config_fraction)
    if args.history is not None:
        base = dataclasses.replace(base, history=args.history)
    if args.budget_fte_range:
        low, high = (float(x) for x in args.budget_fte_range.split(","))
        base = dataclasses.replace(base, budget_fte_range=(low, high))
    if args.first_trial_top is not None:
        base = dataclasses.replace(base, first_trial_top=args.first_trial_top)
    if args.portfolio is not None:
        base = dataclasses.replace(base, portfolio=args.portfolio)
    if args.compute_cost is not None:
        base = dataclasses.replace(base, reward=dataclasses.replace(base.reward, compute_cost=args.compute_cost))
    if args.incumbent is not None:
        base = dataclasses.replace(base, incumbent=args.incumbent)
    if args.imitation_episodes is not None:
        base = dataclasses.replace(base, imitation_episodes=args.imitation_episodes)
    if args.imitation_plan is not None:
        base = dataclasses.replace(base, imitation_plan=args.imitation_plan)
    if args.portfolio_ranks:
        base = dataclasses.replace(base, portfolio_ranks=True)
    if args.full_fidelity_return:
        base = dataclasses.replace(base, full_fidelity_return=True)
    if args.portfolio_order is not None:
        base = dataclasses.replace(base, portfolio_order=args.portfolio_order)
    if args.portfolio_net is not None:
        base = dataclasses.replace(base, portfolio_net=args.portfolio_net)
    methods = tuple(args.methods.split(","))
    if args.train_seeds < 1 or (args.train_seeds > 1 and "ppo" not in methods):
        parser.error(f"--train-seeds {args.train_seeds}: give at least 1, and more than 1 only with ppo in --methods.")
    backend = args.backend or base.backend
    store = CurveStore(base.store_path(), readonly=True)
    in_store = sorted({r.task.dataset for r in store.tasks(with_runs=True)})
    store.close()
    datasets = args.datasets.split(",") if args.datasets else in_store
    runs = Path(args.runs_dir)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    rows: list[dict[str, Any]] = []
    anytime: list[dict[str, Any]] = []
    seeded_rows: list[dict[str, Any]] = []  # ppo of training seeds past the first (--train-seeds)
    timings: dict[str, tuple[float | None, float]] = {}  # imitation, PPO seconds per held-out dataset
    kept = Path(args.out).with_suffix("")  # each dataset's table, plot and rows are kept beside the report
    for dataset in datasets:
        held_out = same_data(dataset, in_store)
        policy_dir = policy_folder(runs, dataset, in_store)
        if not (policy_dir / "summary.json").exists():
            settings = dataclasses.replace(base, exclude_datasets=held_out)
            if backend == "surrogate":  # fit without the held-out dataset: it must never see it
                surrogate = runs / f"surrogate-{'+'.join(held_out)}.joblib"
                if not surrogate.exists():
                    fit = SurrogateSettings(train_seed=base.train_seed, exclude_datasets=held_out)
                    fit_surrogate(base.store_path(), fit, space=base.search_space()).save(surrogate)
                settings = dataclasses.replace(settings, backend="surrogate", surrogate=str(surrogate))
            train_agent(settings, run_name=policy_dir.name, runs_dir=runs, argv=["benchmarks/leave_one_out.py"])
        trained = json.loads((policy_dir / "summary.json").read_text())
        timings[dataset] = (trained.get("imitation_seconds"), trained["train_seconds"])  # None: made before it was kept
        bench = BenchSettings(
            tasks=(dataset,),
            methods=methods,
            budgets=budgets,
            seeds=args.seeds,
            policy=str(policy_dir),
            store=base.store,
            incumbent=base.incumbent,
        )
        run_bench(bench, runs / f"bench-{dataset}", argv=["benchmarks/leave_one_out.py"])
        rows += read_csv(runs / f"bench-{dataset}" / "bench.csv")
        anytime += read_csv(runs / f"bench-{dataset}" / "anytime.csv")
        (kept / dataset).mkdir(parents=True, exist_ok=True)
        for name in ("bench.md", "bench.png", "bench.csv"):
            shutil.copy(runs / f"bench-{dataset}" / name, kept / dataset / name)
        for k in range(1, args.train_seeds):  # more PPO training seeds: ppo only
            seeded = policy_folder(runs, dataset, in_store, k)
            if not (seeded / "summary.json").exists():
                settings = dataclasses.replace(base, exclude_datasets=held_out, seed=base.seed + k)
                train_agent(settings, run_name=seeded.name, runs_dir=runs, argv=["benchmarks/leave_one_out.py"])
            bench_k = dataclasses.replace(bench, methods=("ppo",), policy=str(seeded))
            run_bench(bench_k, runs / f"bench-{dataset}-t{k}", argv=["benchmarks/leave_one_out.py"])
            for r in read_csv(runs / f"bench-{dataset}-t{k}" / "bench.csv"):
                seeded_rows.append({**r, "train_seed": k})
        print(f"{dataset}: done", flush=True)
    pooled = BenchSettings(tasks=tuple(datasets), methods=methods, budgets=budgets, seeds=args.seeds)
    report = summarise(rows, anytime, pooled)
    plot(report, pooled, Path(args.out).with_suffix(".png"))
    seeds_section = train_seeds_section(rows, seeded_rows, report, datasets, budgets)
    write_report(Path(args.out), rows, report, datasets, methods, budgets, base, args, timings, backend, seeds_section)


def train_seeds_section(
    rows: list[dict[str, Any]], seeded_rows: list[dict[str, Any]], report: dict[str, Any], datasets: list[str],
    budgets: tuple[float, ...],
) -> list[str]:  # fmt: skip
    """ppo's regret per PPO training seed and over them (``--train-seeds``); no lines for one seed."""
    if not seeded_rows:
        return []
    by_seed = [[r for r in rows if r["method"] == "ppo"]]
    for k in sorted({r["train_seed"] for r in seeded_rows}):
        by_seed.append([r for r in seeded_rows if r["train_seed"] == k])
    ref = 3.0 if 3.0 in budgets else budgets[0]

    def mean_at(seed_rows: list[dict[str, Any]], b: float, dataset: str | None = None) -> float:
        return statistics.fmean(
            r["regret"] for r in seed_rows if r["budget_fte"] == b and dataset in (None, r["dataset"])
        )

    n = len(by_seed)
    lines = [
        "",
        f"## ppo over {n} PPO training seeds",
        "",
        "The tables above use the first training seed. Here each seed's policy is benched the same way; cells are "
        "each seed's mean regret, then the mean over seeds ± its standard error over seeds.",
        "",
        f"Per held-out dataset, regret at {ref:g} FTE:",
        "",
        "| held-out dataset | " + " | ".join(f"seed {k}" for k in range(n)) + " | mean over seeds |",
        "| --- | " + " | ".join("---" for _ in range(n)) + " | --- |",
    ]
    for d in datasets:
        per = [mean_at(s, ref, d) for s in by_seed]
        lines.append(f"| {d} | " + " | ".join(f"{v:.3f}" for v in per) + f" | {pm(mean_se(per))} |")
    lines += [
        "",
        "Pooled over every held-out dataset:",
        "",
        "| budget | " + " | ".join(f"seed {k}" for k in range(n)) + " | mean over seeds |",
        "| --- | " + " | ".join("---" for _ in range(n)) + " | --- |",
    ]
    for b in budgets:
        per = [mean_at(s, b) for s in by_seed]
        lines.append(f"| {b:g} FTE | " + " | ".join(f"{v:.3f}" for v in per) + f" | {pm(mean_se(per))} |")
    target = statistics.fmean(mean_at(s, ref) for s in by_seed)
    grid = np.array(report["grid"])
    speedups = []
    for m in ("tpe", "learned_list", "top_k"):
        entry = report["methods"].get(m)
        if entry and "anytime_mean" in entry:
            reach = budget_to_reach(grid, np.array(entry["anytime_mean"]), target, ref)
            speedups.append(f"{m} {speedup_text(reach)}")
    if speedups:
        lines += [
            "",
            f"Budget each method needs to reach ppo's mean over seeds at {ref:g} FTE ({target:.3f}), over "
            f"{ref:g}: " + ", ".join(speedups) + ".",
        ]
    return lines


def policy_folder(runs: Path, dataset: str, datasets: list[str], train_seed_index: int = 0) -> Path:
    """The folder of the policy that held ``dataset`` out (with the datasets among ``datasets`` read
    from the same data): ``policy-<them, joined by +>``, with ``-t<k>`` for the k-th further PPO seed."""
    name = f"policy-{'+'.join(same_data(dataset, datasets))}"
    return runs / (f"{name}-t{train_seed_index}" if train_seed_index else name)


def same_data(dataset: str, datasets: list[str]) -> tuple[str, ...]:
    """``dataset`` and the datasets among ``datasets`` read from the same data (:func:`data_source`)."""
    return tuple(sorted({dataset} | {d for d in datasets if data_source(d) == data_source(dataset)}))


def write_report(
    out: Path, rows: list[dict[str, Any]], report: dict[str, Any], datasets: list[str], methods: tuple[str, ...],
    budgets: tuple[float, ...], base: Any, args: Any, timings: dict[str, tuple[float | None, float]], backend: str,
    seeds_section: list[str],
) -> None:  # fmt: skip
    ref = 3.0 if 3.0 in budgets else budgets[0]
    lines = [
        "# Leave one dataset out: each dataset benched with a policy that never saw it",
        "",
        f"Made by `python benchmarks/leave_one_out.py {' '.join(_argv(args))}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, torch {torch.__version__}). Policies: `train-agent` settings "
        f"{'shipped' if args.config is None else args.config}, {base.total_steps} PPO steps each, "
        f"meta_features={str(base.meta_features).lower()}, config_fraction={base.config_fraction}, "
        f"meta-trained on the {backend} backend, history={base.history}, budget_fte_range={base.budget_fte_range}, "
        f"first_trial_top={base.first_trial_top}, portfolio={base.portfolio}, "
        f"imitation_episodes={base.imitation_episodes}, imitation_plan={base.imitation_plan}, "
        f"portfolio_ranks={str(base.portfolio_ranks).lower()}, portfolio_order={base.portfolio_order}, "
        f"portfolio_net={base.portfolio_net}, "
        f"reward={dataclasses.asdict(base.reward)}, full_fidelity_return={str(base.full_fidelity_return).lower()}, "
        f"incumbent={base.incumbent}, "
        "the held-out dataset excluded (with any dataset read from the same data; from the surrogate's fit too); "
        "the learned list learns from the same tasks. Judged on the recorded curves of the held-out dataset, "
        f"{args.seeds} seeds per task (10000..), regret at full fidelity (normalised accuracy), mean ± s.e.",
        "",
        f"## Regret at {ref:g} FTE, per held-out dataset",
        "",
        "| held-out dataset | tasks | " + " | ".join(methods) + " |",
        "| --- | --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for d in datasets:
        mine = [r for r in rows if r["dataset"] == d and r["budget_fte"] == ref]
        n_tasks = len({r["task"] for r in mine})
        best = min(methods, key=lambda m: statistics.fmean([r["regret"] for r in mine if r["method"] == m] or [9]))
        cells = []
        for m in methods:
            text = pm(mean_se([r["regret"] for r in mine if r["method"] == m]))
            cells.append(f"**{text}**" if m == best else text)
        lines.append(f"| {d} | {n_tasks} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Over all held-out datasets (each dataset's tasks and seeds pooled)",
        "",
        "Area: mean regret over log-budget (anytime curves of the largest budget's episodes). Speedup: the "
        f"budget a method needs on its mean anytime curve to reach ppo's mean regret at {ref:g} FTE, over "
        f"{ref:g} (below 1x: it gets there sooner than ppo).",
        "",
        "| method | " + " | ".join(f"regret @ {b:g}" for b in budgets) + " | area | mean rank | speedup |",
        "| --- | " + " | ".join("---" for _ in budgets) + " | --- | --- | --- |",
    ]
    for m in methods:
        e = report["methods"][m]
        cells = [pm(e["regret"].get(b)) for b in budgets]
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {pm(e.get('area'))} | {e['mean_rank']:.2f} | "
            f"{speedup_text(e['speedup'])} |"
        )
    lines += [
        "",
        "Recorded training seconds of the epochs each method paid for (pooled mean per episode; the budget is in "
        "epochs, and a method that picks smaller models spends fewer seconds on the same budget):",
        "",
        "| method | " + " | ".join(f"seconds @ {b:g}" for b in budgets) + " |",
        "| --- | " + " | ".join("---" for _ in budgets) + " |",
    ]
    for m in methods:
        cells = []
        for b in budgets:
            spent = [r["train_seconds"] for r in rows if r["method"] == m and r["budget_fte"] == b]
            cells.append(f"{statistics.fmean(spent):.0f}" if spent and None not in spent else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += seconds_section(rows, methods, datasets, budgets, ref)
    lines += seeds_section
    lines += ["", f"![pooled anytime regret]({out.with_suffix('.png').name})"]
    if timings:
        minutes = ", ".join(
            f"{d} {'?' if imitation is None else f'{imitation / 60:.1f}'} + {ppo / 60:.1f}"
            for d, (imitation, ppo) in timings.items()
        )
        lines += ["", f"Policy training, wall minutes (imitation + PPO steps; ?: not recorded): {minutes}."]
    lines += ["", f"Each dataset's bench (table, plot, rows): `{Path(args.out).with_suffix('').name}/<dataset>/`.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(out.read_text())


def seconds_section(
    rows: list[dict[str, Any]], methods: tuple[str, ...], datasets: list[str], budgets: tuple[float, ...], ref: float
) -> list[str]:
    """Speedup at equal recorded seconds: the seconds each method needs to reach ppo's regret at ``ref`` FTE."""
    if "ppo" not in methods or ref not in budgets:
        return []

    def means(m: str, dataset: str | None) -> list[tuple[float, float]]:
        out = []
        for b in budgets:
            mine = [r for r in rows if r["method"] == m and r["budget_fte"] == b and dataset in (None, r["dataset"])]
            if not mine or any(r["train_seconds"] is None for r in mine):
                return []
            out.append(
                (statistics.fmean(r["train_seconds"] for r in mine), statistics.fmean(r["regret"] for r in mine))
            )
        return out

    def cell(m: str, dataset: str | None, ppo: dict[float, tuple[float, float]]) -> str:
        points = means(m, dataset)
        if ref not in ppo or not points:
            return "-"
        ppo_seconds, target = ppo[ref]
        seconds, exact = seconds_to_reach(points, target)
        if seconds is None:
            return f"not reached (> {points[-1][0] / ppo_seconds:.1f}×)"
        bound = "" if exact else "≤ "
        return f"{bound}{seconds / ppo_seconds:.1f}× ({bound}{seconds:.{0 if seconds >= 10 else 1}f} s)"

    others = [m for m in methods if m != "ppo"]
    if not others:  # nothing to compare ppo with; its seconds are in the table above
        return []
    lines = [
        "",
        f"Speedup at equal recorded seconds: the training seconds each method needs to reach ppo's mean regret at "
        f"{ref:g} FTE, over ppo's seconds at {ref:g} FTE (from each method's per-budget means; log-seconds "
        "interpolated in regret between budgets; ≤: its smallest budget already reaches it):",
        "",
        "| held-out dataset | ppo s @ " + f"{ref:g} | " + " | ".join(others) + " |",
        "| --- | --- | " + " | ".join("---" for _ in others) + " |",
    ]
    for d in [*datasets, None]:
        ppo = dict(zip(budgets, means("ppo", d)))
        seconds = f"{ppo[ref][0]:.{0 if ppo[ref][0] >= 10 else 1}f}" if ref in ppo else "-"
        name = d if d is not None else "**pooled**"
        lines.append(f"| {name} | {seconds} | " + " | ".join(cell(m, d, ppo) for m in others) + " |")
    return lines


def _argv(args: Any) -> list[str]:
    out = []
    for k, v in vars(args).items():
        if v is True:
            out.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


if __name__ == "__main__":
    main()
