"""Describe a curve store: instances, runs, the seed-to-seed noise floor, where the best configs lie, throughput.

    python benchmarks/meta_dataset_report.py --store rlhpo/assets/meta_dataset.sqlite \
        [--held-out ag_news] > tables.md

Reads only the store (no training). Scores are normalised validation accuracy at the last
recorded epoch, (acc - 1/k) / (1 - 1/k). Throughput is from the recorded training seconds of
each run (one torch thread per run), so it is what one worker gets, not wall time.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from rlhpo.metrics import normalised_score
from rlhpo.store import CurveStore, StoredRun, TaskRecord


def final_score(run: StoredRun, n_classes: int) -> float:
    epochs = run.curve.epochs
    return normalised_score(epochs[-1].val_accuracy, n_classes) if epochs else 0.0


SIZE_BOUNDS = (250, 500, 1000, 2000)


def size_bucket(n: int) -> int:
    """The smallest of SIZE_BOUNDS that holds ``n`` (a class subset or a small dataset gives fewer), else 0: more."""
    return next((bound for bound in SIZE_BOUNDS if n <= bound), 0)


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def report(store_path: Path, held_out: tuple[str, ...]) -> list[str]:
    store = CurveStore(store_path, readonly=True)
    records: list[TaskRecord] = store.tasks(with_runs=True)
    runs = {r.key: store.runs(r.key, 0) for r in records}
    second = {r.key: {s.config.key(): s for s in store.runs(r.key, 1)} for r in records}
    counts = store.count()
    n_seed1 = sum(len(v) for v in second.values())
    meta = [r for r in records if r.task.dataset not in held_out]
    out = [
        f"Store `{store_path.name}`: {len(records)} task instances with runs ({len(meta)} for meta-training, "
        f"{len(records) - len(meta)} held out: {', '.join(held_out)}), {counts['runs']:,} runs "
        f"({n_seed1:,} of them a second training seed), {counts['epochs']:,} epoch rows, "
        f"{store.size_mb():.1f} MB. Tables count the seed-0 runs.",
        "",
        "## Instances by dataset",
        "",
    ]
    rows = []
    for dataset in sorted({r.task.dataset for r in records}):
        rs = [r for r in records if r.task.dataset == dataset]
        sizes = Counter(size_bucket(r.n_train) for r in rs)
        rows.append(
            [
                dataset,
                len(rs),
                ", ".join(
                    f"{'<=' + str(k) if k else '>2000'}: {v}"
                    for k, v in sorted(sizes.items(), key=lambda kv: kv[0] or 1e9)
                ),
                f"{min(r.n_classes for r in rs)}-{max(r.n_classes for r in rs)}",
                sum(1 for r in rs if r.task.classes),
                sum(len(runs[r.key]) for r in rs),
                f"{statistics.median(len(runs[r.key]) for r in rs):.0f}",
            ]
        )
    out += table(
        ["dataset", "instances", "training-set sizes", "classes", "class subsets", "runs", "median runs per instance"],
        rows,
    )

    out += ["", "## Runs by family", ""]
    by_family: dict[str, list[float]] = defaultdict(list)
    diverged: Counter[str] = Counter()
    for r in records:
        for run in runs[r.key]:
            family = run.config.family or r.family
            by_family[family].append(sum(e.seconds for e in run.curve.epochs))
            diverged[family] += run.curve.diverged
    rows = [
        [
            f,
            len(s),
            diverged[f],
            f"{statistics.median(s):.1f}",
            f"{statistics.mean(s):.1f}",
            f"{3600 / statistics.mean(s):.0f}",
        ]
        for f, s in sorted(by_family.items())
    ]
    out += table(
        ["family", "runs", "diverged", "median s/run", "mean s/run", "runs per hour per worker"],
        rows,
    )

    out += ["", "## Noise floor (the same config and task, training seeds 0 and 1)", ""]
    rows = []
    all_sd = []
    for dataset in sorted({r.task.dataset for r in records}):
        sds = []
        for r in records:
            if r.task.dataset != dataset:
                continue
            for run in runs[r.key]:
                twin = second[r.key].get(run.config.key())
                if twin is not None and not run.curve.diverged and not twin.curve.diverged:
                    a, b = final_score(run, r.n_classes), final_score(twin, r.n_classes)
                    sds.append(abs(a - b) / math.sqrt(2))  # the sd of two draws
        if sds:
            all_sd += sds
            rows.append([dataset, len(sds), f"{statistics.mean(sds):.3f}", f"{max(sds):.3f}"])
    if rows:
        rows.append(["all", len(all_sd), f"{statistics.mean(all_sd):.3f}", f"{max(all_sd):.3f}"])
        out += table(["dataset", "config pairs", "mean sd of final score", "largest"], rows)
        out += [
            "",
            "A difference in normalised score (or in regret) smaller than the mean sd is within seed-to-seed noise.",
        ]
    else:
        out += ["No config is recorded with two training seeds yet."]

    out += ["", "## Where the best configs lie (design configs, mean final score over a dataset's instances)", ""]
    rows = []
    for dataset in sorted({r.task.dataset for r in records}):
        rs = [r for r in records if r.task.dataset == dataset]
        by_config: dict[str, list[float]] = defaultdict(list)
        configs = {}
        for r in rs:
            for run in runs[r.key]:
                by_config[run.config.key()].append(final_score(run, r.n_classes))
                configs[run.config.key()] = run.config
        shared = {k: v for k, v in by_config.items() if len(v) >= max(2, len(rs) // 2)}
        if not shared:
            continue
        ranked = sorted(shared, key=lambda k: -statistics.mean(shared[k]))
        top = ranked[: max(1, len(ranked) // 10)]
        best = configs[ranked[0]]
        family_share = Counter(configs[k].family or rs[0].family for k in top)
        rows.append(
            [
                dataset,
                len(shared),
                f"{statistics.mean(shared[ranked[0]]):.3f}",
                f"{best.family or rs[0].family}, lr {best.learning_rate:g}, bs {best.batch_size}, "
                f"{best.optimizer}, {best.num_layers}x{best.units}, dropout {best.dropout:g}, wd {best.weight_decay:g}",
                ", ".join(f"{f} {n}" for f, n in family_share.most_common()),
            ]
        )
    out += table(
        ["dataset", "configs on half its instances", "best mean score", "best config", "families of the top 10%"], rows
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("rlhpo/assets/meta_dataset.sqlite"))
    parser.add_argument("--held-out", default="ag_news", help="Comma-separated datasets held out of meta-training.")
    args = parser.parse_args()
    held_out = tuple(d for d in args.held_out.split(",") if d)
    print("\n".join(report(args.store, held_out)))


if __name__ == "__main__":
    main()
