"""How well the surrogate predicts curves it never saw, against the recorded backend's nearest neighbour.

Three ways of hiding curves from the fit, each a fit of the score model (``targets: [score]``):

- **half**: each task instance's configs split in two halves; fit on every instance's first
  halves, predict the second halves, and the other way round. This is how the surrogate is used
  (unrecorded configs on instances it was fit on) and it is the nearest neighbour's setting: the
  recorded backend answers each held-out config with the nearest config of the other half
  (L2 over the normalised encoding, epochs left out, as ``RecordedBackend`` does).
- **leave one instance out**: fit on every other instance, predict all of the held-out one.
  Instances on the same data subsample (``trec/gru`` and the open-family ``trec/default``) share
  copied runs, so they are held out together (and split into halves by the same config key).
- **leave one dataset out**: fit on the other datasets, predict every instance of this one.

Figures: per task instance and per dataset (mean over its instances), the Spearman correlation
of predicted and recorded final scores across configs, for the surrogate and the nearest
neighbour; the mean absolute error of the normalised score at each epoch; and whether the
ensemble's spread, scaled by the out-of-bag noise scale, is the size of the errors.

Usage::

    nice python benchmarks/surrogate_quality.py --out docs/benchmarks/surrogate.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from rlhpo.envs.backends import config_vector
from rlhpo.envs.surrogate import TARGETS, CurveData, SurrogateSettings, data_key, fit_ensemble, spearman
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore

_S = TARGETS.index("score")
MEMBERS = 5  # bootstrap fits per fold (``rlhpo surrogate fit`` fits 8; 5 keeps the 106 folds affordable)


def data_group(data: CurveData, key: str) -> str:
    """The task key with the family left open: instances that train on the same data subsample."""
    return data_key(data.records[key].task)


def halves(data: CurveData, seed: int) -> np.ndarray:
    """Per run: 0 or 1, by a hash of (data subsample, config key): twins split alike, about half each."""
    out = np.empty(data.n_runs, dtype=np.int64)
    for i, (key, config) in enumerate(zip(data.run_task, data.run_config)):
        h = hashlib.sha1(f"{seed}|{data_group(data, key)}|{config.key()}".encode()).digest()
        out[i] = h[0] & 1
    return out


class Predictions:
    """Per held-out run's rows: the ensemble's mean and spread of the score."""

    def __init__(self, data: CurveData) -> None:
        self.mean = np.full(len(data.x), np.nan)
        self.spread = np.full(len(data.x), np.nan)
        self.noise_scale: list[float] = []

    def fill(self, data: CurveData, train: np.ndarray, settings: SurrogateSettings) -> None:
        """Fit on the runs ``train`` (a mask), predict every other run's rows."""
        fit = data.subset(train)
        members, counts = fit_ensemble(fit, settings)
        rows = ~train[data.run]
        preds = np.stack([m["score"].predict(data.x[rows]) for m in members])
        self.mean[rows] = np.clip(preds.mean(axis=0), 0.0, 1.0)
        self.spread[rows] = preds.std(axis=0)
        # The fit's own out-of-bag noise scale (what fit_surrogate would store), to test on held-out rows.
        oob = np.stack([m["score"].predict(fit.x) for m in members])
        unseen = counts[:, fit.run] == 0
        n = unseen.sum(axis=0)
        ok = n > 0
        oob_mean = np.where(unseen, oob, 0.0).sum(axis=0)[ok] / n[ok]
        ratio = np.sqrt(np.mean((fit.y[ok, _S] - oob_mean) ** 2) / np.mean(oob.std(axis=0)[ok] ** 2))
        self.noise_scale.append(max(1.0, float(ratio)))


def held_out(
    data: CurveData, labels: np.ndarray, settings: SurrogateSettings, folds: Sequence[str] | None = None
) -> Predictions:
    """Each run predicted by a fit on the runs of other labels (``labels``: one per run); ``folds``: only these."""
    predictions = Predictions(data)
    for fold in dict.fromkeys(labels) if folds is None else folds:
        predictions.fill(data, labels != fold, settings)
    return predictions


def nearest_neighbour(data: CurveData, split: np.ndarray, space) -> np.ndarray:
    """Per row: the score at that epoch of the nearest recorded config of the other half (same instance)."""
    out = np.full(len(data.x), np.nan)
    tasks = np.array(data.run_task)
    score = {(int(r), int(e)): y for r, e, y in zip(data.run, data.epoch, data.y[:, _S])}
    for key in dict.fromkeys(data.run_task):
        record = data.records[key]
        runs = np.flatnonzero(tasks == key)
        vec = np.stack([config_vector(space, data.run_config[i], record.modality) for i in runs])
        for half in (0, 1):
            asked, recorded = runs[split[runs] == half], runs[split[runs] != half]
            if not len(recorded):
                continue
            rec_vec = vec[split[runs] != half]
            for i in asked:
                d2 = np.square(rec_vec - vec[runs == i][0]).sum(axis=1)
                d2[data.run_completed[recorded] == 0] = np.inf
                j = int(recorded[int(np.argmin(d2))])
                for row in np.flatnonzero(data.run == i):
                    e = min(int(data.epoch[row]), int(data.run_completed[j]))
                    out[row] = score[(j, e)]
    return out


def final_rows(data: CurveData) -> np.ndarray:
    return data.epoch == data.run_completed[data.run]


def rank_table(data: CurveData, predictions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per task instance: Spearman of predicted against recorded final scores, for each predictor."""
    final = final_rows(data)
    tasks = np.array(data.run_task)[data.run]
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(data.run_task):
        rows = final & (tasks == key)
        out[key] = {name: spearman(p[rows], data.y[rows, _S]) for name, p in predictions.items()}
    return out


def mae_by_epoch(data: CurveData, pred: np.ndarray) -> list[float]:
    err = np.abs(pred - data.y[:, _S])
    return [float(np.nanmean(err[data.epoch == e])) for e in range(1, int(data.epoch.max()) + 1)]


def calibration(data: CurveData, p: Predictions) -> dict[str, float]:
    ok = np.isfinite(p.mean)
    res = data.y[ok, _S] - p.mean[ok]
    spread = p.spread[ok]
    scale = statistics.fmean(p.noise_scale)
    z = np.abs(res) / np.maximum(scale * spread, 1e-9)
    return {
        "rms_error": float(np.sqrt(np.mean(res**2))),
        "rms_spread": float(np.sqrt(np.mean(spread**2))),
        "noise_scale": scale,
        "within_1": float(np.mean(z <= 1)),
        "within_2": float(np.mean(z <= 2)),
        "error_spread_corr": float(np.corrcoef(np.abs(res), spread)[0, 1]),
    }


def run(data: CurveData, settings: SurrogateSettings, seed: int, log: Callable[[str], None]) -> dict:
    space = load_search_space()
    split = halves(data, seed)
    groups = np.array([data_group(data, k) for k in data.run_task])
    datasets = np.array([data.records[k].task.dataset for k in data.run_task])
    folds = {  # each scheme: what it holds out, and each run's fold
        "half": ("half split", split),
        "loio": ("leave one instance out (data subsamples)", groups),
        "lodo": ("leave one dataset out", datasets),
    }
    results = {}
    for name, (what, labels) in folds.items():
        t = time.perf_counter()
        predictions = held_out(data, labels, settings)
        log(f"{what}, {len(set(labels))} folds: {time.perf_counter() - t:.0f}s")
        results[name] = predictions
    nn = nearest_neighbour(data, split, space)
    return {"nn": nn, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="curve store (default: the shipped meta-dataset)")
    parser.add_argument("--members", type=int, default=MEMBERS)
    parser.add_argument("--max-iter", type=int, default=SurrogateSettings.max_iter)
    parser.add_argument("--max-leaf-nodes", type=int, default=SurrogateSettings.max_leaf_nodes)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/surrogate.md")
    args = parser.parse_args()
    started = time.perf_counter()
    store_path = args.store or str(shipped_file(SHIPPED_STORE))
    with CurveStore(store_path, readonly=True) as store:
        data = CurveData.from_store(store)
        second = CurveData.from_store(store, train_seed=1)  # the runs recorded again with another training seed
    data = data.subset(data.run_completed > 0)  # a run with no epoch has no score to rank
    settings = SurrogateSettings(
        members=args.members,
        max_iter=args.max_iter,
        max_leaf_nodes=args.max_leaf_nodes,
        seed=args.seed,
        targets=("score",),
    )
    with threadpool_limits(limits=1, user_api="openmp"):
        res = run(data, settings, args.seed, print)
    seconds = time.perf_counter() - started
    page = report(data, res, settings, store_path, seconds, second)
    Path(args.out).write_text(page)
    print(page)


def final_scores(data: CurveData) -> dict[tuple[str, str], tuple[int, float]]:
    """(task key, config key) -> (its final row, its final score), for every run with an epoch."""
    rows = np.flatnonzero(final_rows(data))
    return {(data.run_task[data.run[r]], data.run_config[data.run[r]].key()): (int(r), data.y[r, _S]) for r in rows}


def seed_ceiling(data: CurveData, second: CurveData, preds: dict[str, np.ndarray], res: dict) -> dict[str, dict]:
    """Per dataset, on the configs recorded with both training seeds: how well each predictor ranks seed 1's
    final scores, against how well seed 0's own scores do (the ceiling that seed-to-seed noise leaves).

    Every predictor saw only seed 0 (or, held out, not even that). Spearman per instance with at least
    five such configs, then the mean over the dataset's instances. Also the seed-to-seed spread of a final
    score (the standard deviation of the two seeds' difference over the square root of 2) and the spread
    the surrogate backend draws there (the folds' mean noise scale times the ensemble's spread, instance
    held out, as :func:`calibration` scales it).
    """
    first = final_scores(data)
    paired: dict[str, list[tuple[int, float]]] = {}
    for (task, config), (_, y1) in final_scores(second).items():
        if (task, config) in first:
            paired.setdefault(task, []).append((first[(task, config)][0], y1))
    out: dict[str, dict] = {}
    for task, pairs in paired.items():
        rows = np.array([r for r, _ in pairs])
        y1 = np.array([y for _, y in pairs])
        d = out.setdefault(data.records[task].task.dataset, {"configs": 0, "diff": [], "drawn": [], "rho": {}})
        d["configs"] += len(rows)
        d["diff"] += list(data.y[rows, _S] - y1)
        d["drawn"] += list(statistics.fmean(res["loio"].noise_scale) * res["loio"].spread[rows])
        if len(rows) >= 5:
            for name, p in {"seed 0": data.y[:, _S], **preds}.items():
                d["rho"].setdefault(name, []).append(spearman(p[rows], y1))
    return out


def command_args(settings: SurrogateSettings) -> str:
    """The command line's options that made ``settings``, those that differ from the defaults."""
    defaults = {
        "members": MEMBERS,
        "max_iter": SurrogateSettings.max_iter,
        "max_leaf_nodes": SurrogateSettings.max_leaf_nodes,
    }
    return "".join(
        f" --{name.replace('_', '-')} {getattr(settings, name)}"
        for name, default in defaults.items()
        if getattr(settings, name) != default
    )


def report(
    data: CurveData, res: dict, settings: SurrogateSettings, store_path: str, seconds: float, second: CurveData
) -> str:
    preds = {"nn": res["nn"], "half": res["half"].mean, "loio": res["loio"].mean, "lodo": res["lodo"].mean}
    table = rank_table(data, preds)
    datasets = sorted({data.records[k].task.dataset for k in table})
    by_dataset = {
        d: {n: float(np.nanmean([v[n] for k, v in table.items() if k.startswith(d + "/")])) for n in preds}
        for d in datasets
    }
    names = {
        "nn": "nearest recorded neighbour (half)",
        "half": "surrogate, half held out",
        "loio": "surrogate, instance held out",
        "lodo": "surrogate, dataset held out",
    }
    lines = [
        "# The curve surrogate: how well it predicts curves it never saw",
        "",
        f"Made by `nice python benchmarks/surrogate_quality.py{command_args(settings)} "
        "--out docs/benchmarks/surrogate.md` "
        f"({seconds:.0f} s on {os.cpu_count()} cores, one thread; {platform.platform(terse=True)}).",
        f"Store: `{Path(store_path).name}`: {len(table)} task instances, {data.n_runs} runs with at least one "
        f"epoch, {len(data.x)} epoch rows. Score model: {settings.members} bootstrap "
        f"`HistGradientBoostingRegressor` fits (max_iter {settings.max_iter}, learning_rate "
        f"{settings.learning_rate}, max_leaf_nodes {settings.max_leaf_nodes}, min_samples_leaf "
        f"{settings.min_samples_leaf}), seed {settings.seed} (`rlhpo surrogate fit` fits 8, and four more targets).",
        "",
        "Scores are normalised validation accuracy, (acc - chance) / (1 - chance); a run's final score is "
        "its last completed epoch's (epoch 9 unless it diverged). The nearest neighbour is the recorded "
        "backend's answer: with half of each instance's configs recorded, each config of the other half "
        "gets the curve of the nearest recorded one (both halves in turn, so every config is ranked once). "
        "Halves are drawn by a hash of the config and the data subsample, so twin instances (a pinned "
        "family and the open-family instance on the same data share copied runs) split alike; for the "
        "same reason leave-one-instance-out holds out all instances of one data subsample together.",
        "",
        "## Rank correlation of final scores across configs (Spearman), per dataset",
        "",
        "Mean over the dataset's instances. Goal: the surrogate >= 0.85 on every dataset.",
        "",
        "| dataset | " + " | ".join(names[n] for n in preds) + " |",
        "| --- | " + " | ".join("---:" for _ in preds) + " |",
    ]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(f"{by_dataset[d][n]:.3f}" for n in preds) + " |")
    means = {n: float(np.nanmean([by_dataset[d][n] for d in datasets])) for n in preds}
    lines.append("| **mean** | " + " | ".join(f"**{means[n]:.3f}**" for n in preds) + " |")
    lines += [
        "",
        "## Per task instance",
        "",
        "| task instance | configs | " + " | ".join(names[n] for n in preds) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in preds) + " |",
    ]
    for key, row in table.items():
        n = data.run_task.count(key)
        lines.append(f"| `{key}` | {n} | " + " | ".join(f"{row[m]:.3f}" for m in preds) + " |")
    lines += [
        "",
        "## Mean absolute error of the normalised score, by epoch",
        "",
        "| predictor | " + " | ".join(f"ep {e}" for e in range(1, int(data.epoch.max()) + 1)) + " | all |",
        "| --- | " + " | ".join("---:" for _ in range(int(data.epoch.max()) + 1)) + " |",
    ]
    for n, p in preds.items():
        by_epoch = mae_by_epoch(data, p)
        overall = float(np.nanmean(np.abs(p - data.y[:, _S])))
        lines.append(f"| {names[n]} | " + " | ".join(f"{v:.3f}" for v in by_epoch) + f" | {overall:.3f} |")
    lines += [
        "",
        "## Noise: is the ensemble's spread the size of the errors?",
        "",
        "The backend draws each episode's curves with a total spread of `noise_scale` x the ensemble's "
        "spread, `noise_scale` being the fit's out-of-bag RMS error over its RMS spread. Here each "
        "fold's own out-of-bag `noise_scale` is tested on the curves it never saw: a calibrated noise "
        "puts 68% of the errors within 1 and 95% within 2 scaled spreads.",
        "",
        "| held out | RMS error | RMS spread | error / spread | noise_scale (out-of-bag) | within 1 | within 2 "
        "| corr(abs error, spread) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in ("half", "loio", "lodo"):
        c = calibration(data, res[n])
        lines.append(
            f"| {names[n].removeprefix('surrogate, ')} | {c['rms_error']:.3f} | {c['rms_spread']:.3f} | "
            f"{c['rms_error'] / c['rms_spread']:.2f} | {c['noise_scale']:.2f} | {c['within_1']:.2f} | "
            f"{c['within_2']:.2f} | {c['error_spread_corr']:.2f} |"
        )
    ceiling = seed_ceiling(data, second, preds, res)
    lines += [
        "",
        "## The ceiling that seed-to-seed noise leaves",
        "",
        "Some runs are recorded with a second training seed. On those configs, each predictor's Spearman "
        "correlation with the **second** seed's final scores (mean over instances with at least five such "
        "configs), next to the first seed's own scores: a predictor that ranks the second seed as well as "
        "the first seed does is at the ceiling, whatever its correlation with the first. Spreads: the "
        "seed-to-seed standard deviation of a final score (sd of the two seeds' difference / sqrt 2), and "
        "the standard deviation the surrogate backend draws there (RMS of noise scale x spread, instance held out).",
        "",
        "| dataset | configs (instances) | seed 0 | " + " | ".join(names[n] for n in preds) + " | seed-to-seed sd "
        "| drawn sd |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in preds) + " | ---: | ---: |",
    ]
    for d, c in sorted(ceiling.items()):
        rho = {n: float(np.nanmean(v)) for n, v in c["rho"].items()}
        n_inst = len(c["rho"].get("seed 0", []))
        cells = " | ".join(f"{rho[n]:.3f}" if n in rho else "-" for n in ("seed 0", *preds))
        seed_sd = float(np.std(c["diff"]) / np.sqrt(2))
        drawn_sd = float(np.sqrt(np.mean(np.square(c["drawn"]))))
        lines.append(f"| {d} | {c['configs']} ({n_inst}) | {cells} | {seed_sd:.3f} | {drawn_sd:.3f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
