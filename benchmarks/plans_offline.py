"""Hand-written plans over the similar order, leaving one dataset out, on a store's recorded curves (no PPO).

A portfolio policy is cloned from a plan (``agents/portfolio.py``: the list's plan, successive halving)
and then refined by PPO. This script asks which plan is worth cloning before any policy is trained:
for each held-out dataset it learns the portfolio and the similar-tasks table from the other datasets
(as ``benchmarks/leave_one_out.py`` does for a policy), puts the portfolio in each held-out task's
order (``portfolio_order: similar``), and replays plans on the task's recorded curves. Training has no
learning-rate schedule, so a config's first ``e`` epochs are its recorded run's first ``e``.

Plans at 1 FTE (9 epochs):

- ``first``: the first config of the order for 9 epochs (the list's plan; what the shipped policy plays);
- ``screen``: the first nine for 1 epoch, the best kept (successive halving's first rung);
- ``transfer screen``: the same nine for 1 epoch, but the one kept is the one of best *predicted* final
  score: its mean final score on the meta-training tasks (weighed as the order weighs them), plus how
  far its one-epoch score is above its mean one-epoch score there. A config known to start slow is then
  not dropped for a low first epoch (Swersky et al.'s freeze-thaw idea, with the prior from similar tasks);
- ``gated screen``: ``screen`` on text tasks under :data:`GATE_N_TRAIN` training examples, ``first``
  on the others (live at full size, text's winners start slow: ``docs/benchmarks/hpo.md``, session 20).

Plans at 3 FTE (27 epochs):

- ``list``: the first three for 9 epochs, the best kept;
- ``list, kept as tune keeps``: the same three, but the one kept is ``rlhpo tune``'s (``agents/tune.py``
  ``kept_trial``: the earliest within one standard error of the best in validation accuracy). The judge
  here is the validation split that chooses, so this can only be worse than ``list``; what it costs there
  is the figure;
- ``halving``: nine for 1 epoch, the best three to 3 epochs, the best two of those to 9
  (``agents/portfolio.HALVING_RUNGS``); kept at any fidelity (as HPOEnv keeps its incumbent), or
  from the top rung (Hyperband's rule);
- ``protected halving``: halving, but the order's first config is always promoted;
- ``transfer halving``: halving promoting by predicted final score, as ``transfer screen``;
- ``oracle: the portfolio's best``: no plan, a floor: the best of the portfolio's configs at 9 epochs, as if
  known in advance. No plan over the portfolio keeps a config of less regret, at any budget.

Regret: the best full-fidelity score recorded on the task less the kept config's (normalised accuracy),
as the leave-one-out bench judges an episode. Plans are deterministic, so one episode per task.
The distance of each task to its nearest meta-training task (in the similarity features) is printed
per task in the JSON file, to test gates by distance.

    python benchmarks/plans_offline.py --out docs/benchmarks/plans_offline.md --json docs/benchmarks/plans_offline.json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rlhpo.agents.evaluate import FullFidelity, mean_se, pm
from rlhpo.agents.portfolio import HALVING_RUNGS, learn_portfolio
from rlhpo.agents.similar_tasks import SIMILARITY_FEATURES, fit_similar_tasks, weights
from rlhpo.agents.tune import kept_trial
from rlhpo.envs.backends import RecordedBackend, runs_in_space, trial_from_curve
from rlhpo.envs.hpo_env import trial_score
from rlhpo.metrics import chance_accuracy
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.space import Config, SearchSpace, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.registry import data_source
from rlhpo.tasks.splits import MAX_VAL, VAL_FRACTION

EPOCHS = (1, 3, 9)  # the epochs choices HALVING_RUNGS index
# training splits under 6,667 examples; the others give 1,000 (digits is smaller, but never replayed: see main)
SPLIT_SIZES = {"trec": 5452, "trec_fine": 5452}
GATE_N_TRAIN = 4000  # gated screen: text tasks under this many examples are screened (none has 2,001-4,249)
PLANS_1 = ("first", "screen", "transfer screen", "gated screen")
PLANS_3 = ("list", "list, kept as tune keeps", "halving", "halving, top rung", "protected halving",
           "protected halving, top rung", "transfer halving, top rung", "gated: halving / list",
           "gated: halving top rung / list", "oracle: the portfolio's best")  # fmt: skip

Scores = list[dict[int, float]]  # per config of the order: epochs -> score


def curves(store: CurveStore, space: SearchSpace, record: TaskRecord, configs: Sequence[Config]) -> Scores:
    """Each config's recorded score after 1, 3 and 9 epochs (0 past a divergence, NaN if not recorded)."""
    runs = {r.config.key(): r for r in runs_in_space(store.runs(record.key, 0), space, record)}
    out = []
    for config in configs:
        run = runs.get(config.with_epochs(space.max_epochs).key())
        scores = {}
        for e in EPOCHS:
            if run is None:
                scores[e] = math.nan
            elif run.horizon >= e:
                trial = trial_from_curve(run.at(e), run.config, e, record.n_classes, exact=True, distance=0.0)
                scores[e] = trial_score(trial)
            else:
                scores[e] = 0.0
        out.append(scores)
    return out


def halving(
    candidates: Sequence[int],
    score: Callable[[int, int], float],
    key: Callable[[int, int], float] | None = None,
    protect: bool = False,
) -> tuple[int, int]:
    """Successive halving (:data:`HALVING_RUNGS`) over ``candidates``, the first nine configs of the order.

    ``score(i, epochs)``: config ``i``'s validation score after ``epochs``; each rung promotes by
    ``key`` (default ``score``), and with ``protect`` config 0 is always promoted. Returns the config
    kept at any fidelity (as HPOEnv keeps its incumbent) and the one kept from the top rung
    (Hyperband's rule); ties go to the earlier trial. ``benchmarks/plan_on_ceiling.py`` replays it too.
    """
    key = key or score
    pool = list(candidates)
    trials: list[tuple[float, int]] = []
    for (_, e), (k_next, _) in zip(HALVING_RUNGS, HALVING_RUNGS[1:] + ((0, 0),)):
        epochs = EPOCHS[e]
        trials += [(score(i, epochs), i) for i in pool]
        if not k_next:
            return max(trials, key=lambda t: t[0])[1], max(pool, key=lambda i: score(i, epochs))
        ranked = sorted(pool, key=lambda i: -key(i, epochs))
        if protect and 0 in pool:
            ranked = [0] + [i for i in ranked if i != 0]
        pool = ranked[:k_next]
    raise AssertionError("unreachable")


def n_val(dataset: str) -> int:
    """The validation split's size of every instance of ``dataset`` (``rlhpo/tasks/splits.py``: it does not
    depend on ``n_train``): 15% of the dataset's training split, at most 1,000."""
    return min(round(VAL_FRACTION * SPLIT_SIZES.get(dataset, MAX_VAL / VAL_FRACTION)), MAX_VAL)


def kept_as_tune(cv: Scores, first: int, n_classes: int, dataset: str) -> int:
    """Which of the first ``first`` configs, each trained for 9 epochs, ``rlhpo tune`` keeps."""
    chance = chance_accuracy(n_classes)  # a score is normalised_score(accuracy): undone here
    trials = [
        {"step": i + 1, "score": cv[i][EPOCHS[-1]], "epochs": EPOCHS[-1], "diverged": False,
         "val_accuracy": chance + cv[i][EPOCHS[-1]] * (1 - chance)}
        for i in range(first)
    ]  # fmt: skip
    return kept_trial(trials, n_val(dataset))["step"] - 1


def plan_regrets(
    cv: Scores, best: float, prior: dict[int, np.ndarray], gated: bool, n_classes: int, dataset: str
) -> dict[str, float]:
    """Each plan's regret on one task, from its curves in the task's order and the prior means."""

    def regret(i: int) -> float:
        return best - cv[i][EPOCHS[-1]]

    def observed(i: int, e: int) -> float:
        return cv[i][e]

    def predicted(i: int, e: int) -> float:
        return prior[EPOCHS[-1]][i] + cv[i][e] - prior[e][i]

    nine = [i for i in range(min(HALVING_RUNGS[0][0], len(cv))) if not math.isnan(cv[i][1])]
    out = {
        "first": regret(0),
        "screen": regret(max(nine, key=lambda i: cv[i][1])),
        "transfer screen": regret(max(nine, key=lambda i: predicted(i, 1))),
        "list": regret(max(range(3), key=lambda i: cv[i][EPOCHS[-1]])),
        "list, kept as tune keeps": regret(kept_as_tune(cv, 3, n_classes, dataset)),
    }
    out["gated screen"] = out["screen"] if gated else out["first"]
    any_fid, top = halving(nine, observed)
    out["halving"], out["halving, top rung"] = regret(any_fid), regret(top)
    any_fid, top = halving(nine, observed, protect=True)
    out["protected halving"], out["protected halving, top rung"] = regret(any_fid), regret(top)
    out["transfer halving, top rung"] = regret(halving(nine, observed, predicted)[1])
    out["gated: halving / list"] = out["halving"] if gated else out["list"]
    out["gated: halving top rung / list"] = out["halving, top rung"] if gated else out["list"]
    out["oracle: the portfolio's best"] = min(regret(i) for i in range(len(cv)) if not math.isnan(cv[i][EPOCHS[-1]]))
    return out


def held_out_rows(store: CurveStore, space: SearchSpace, held: str, datasets: Sequence[str]) -> list[dict]:
    """One row per task of ``held``: its size, distance to the nearest meta-training task and each plan's regret."""
    excluded = tuple(sorted({held} | {d for d in datasets if data_source(d) == data_source(held)}))
    backend = RecordedBackend(store, space, train_seed=0, exclude_datasets=excluded)
    portfolio, _ = learn_portfolio(store, space, 16, exclude_datasets=excluded)
    similar = fit_similar_tasks(backend, portfolio)
    # the meta-training tasks' curves, in the similar table's row order (both follow default_tasks)
    train: dict[str, list[Scores]] = collections.defaultdict(list)
    for task in backend.default_tasks():
        record = backend.describe(task)
        if record.modality in portfolio:
            train[record.modality].append(curves(store, space, record, portfolio[record.modality]))
    oracle = FullFidelity(store, space, 0)
    rows = []
    for record in (r for r in store.tasks(with_runs=True) if r.task.dataset == held):
        modality = record.modality
        if modality not in portfolio:  # no meta-training task of its modality: the policy plays the fallback list
            continue
        configs = portfolio[modality]
        table = similar.tasks.get(modality, ())
        order = similar.order(modality, record.meta_features) or tuple(range(len(configs)))
        cv = curves(store, space, record, [configs[i] for i in order])
        x = np.array([record.meta_features[name] for name in SIMILARITY_FEATURES])
        if table:
            w = weights(table, x, similar.widths[modality])
            mats = {e: np.array([[c[i][e] for i in order] for c in train[modality]]) for e in EPOCHS}
            prior = {
                e: np.ma.average(np.ma.masked_invalid(m), axis=0, weights=w).filled(np.nan) for e, m in mats.items()
            }
            nearest = float(np.sqrt(((np.array([r.features for r in table]) - x) ** 2).sum(axis=1).min()))
        else:  # a modality no meta-training task has: no prior, the screen as it is
            prior = {e: np.zeros(len(cv)) for e in EPOCHS}
            nearest = math.inf
        gated = modality == "text" and record.n_train < GATE_N_TRAIN
        regrets = plan_regrets(cv, oracle.best(record.key), prior, gated, record.n_classes, held)
        rows.append({"dataset": held, "task": record.key, "n_train": record.n_train, "modality": modality,
                     "nearest": nearest, "width": similar.widths.get(modality, math.inf), **regrets})  # fmt: skip
    return rows


def table(rows: Sequence[dict], plans: Sequence[str], datasets: Sequence[str]) -> list[str]:
    lines = ["| held-out dataset | tasks | " + " | ".join(plans) + " |", "| --- | ---: |" + " ---: |" * len(plans)]
    for held in [*datasets, "pooled"]:
        mine = [r for r in rows if held in ("pooled", r["dataset"])]
        cells = [pm(mean_se([r[p] for r in mine])) for p in plans]
        lines.append(f"| {held} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="curve store (default: the shipped meta-dataset)")
    parser.add_argument("--out", required=True, help="Markdown page to write")
    parser.add_argument("--json", default=None, help="also write every task's row here")
    args = parser.parse_args()
    store = CurveStore(args.store or shipped_file(SHIPPED_STORE), readonly=True)
    space = load_search_space()
    datasets = sorted({r.task.dataset for r in store.tasks(with_runs=True)})
    rows = [row for held in datasets for row in held_out_rows(store, space, held, datasets)]
    skipped = [d for d in datasets if not any(r["dataset"] == d for r in rows)]
    datasets = [d for d in datasets if d not in skipped]
    lines = [
        "# Hand-written plans over the similar order, leaving one dataset out (recorded curves, no PPO)",
        "",
        f"Made by `python benchmarks/plans_offline.py --out {args.out}` on the store "
        f"`{'the shipped meta-dataset' if args.store is None else args.store}`: {len(rows)} held-out tasks, "
        "one episode each (the plans are deterministic). Regret at full fidelity (normalised accuracy), "
        "mean ± s.e. over the held-out dataset's tasks. What each plan does: the script's docstring. "
        f"Not here: {', '.join(skipped) or 'none'} (no other dataset of its modality, so no portfolio of its own).",
        "",
        "## 1 FTE",
        "",
        *table(rows, PLANS_1, datasets),
        "",
        "## 3 FTE",
        "",
        *table(rows, PLANS_3, datasets),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
