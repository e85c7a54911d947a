"""What ``rlhpo bench`` reports from its rows: regret per budget, anytime curves, area, rank, speedup.

See :mod:`rlhpo.agents.bench` for the protocol; this module only summarises rows (plain dicts
with the columns of ``bench.csv``) and anytime points, and draws the table and the plot.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhpo.agents.evaluate import mean_se, pm

if TYPE_CHECKING:
    from rlhpo.agents.bench import BenchSettings

REFERENCE_METHOD = "ppo"  # the method whose regret at the reference budget the speedup is measured to
CSV_FILE, ANYTIME_FILE, PLOT_FILE = "bench.csv", "anytime.csv", "bench.png"  # the bench folder's files


def _grid(points: list[dict[str, Any]], grid: np.ndarray) -> np.ndarray:
    """An episode's regret at each grid budget (FTE): that of its last trial within the budget."""
    fte = np.array([p["fte"] for p in points])
    regret = np.array([p["regret"] for p in points], dtype=float)
    idx = np.searchsorted(fte, grid + 1e-9, side="right") - 1
    return regret[np.clip(idx, 0, len(regret) - 1)]


def summarise(rows: list[dict[str, Any]], anytime: list[dict[str, Any]], settings: BenchSettings) -> dict[str, Any]:
    """Per method: regret at each budget, anytime curve, area, final regret, mean rank and speedup."""
    methods = [m for m in settings.methods if any(r["method"] == m for r in rows)]
    budgets = sorted(settings.budgets)
    out: dict[str, Any] = {"methods": {}, "budgets": budgets, "grid": [], "reference_budget": settings.reference_budget}
    known = [r for r in rows if r.get("regret") is not None]
    ranks = mean_ranks(known)
    grid = np.geomspace(min(budgets), max(budgets), 60) if len(budgets) > 1 else np.array(budgets, dtype=float)
    out["grid"] = grid.tolist()
    for m in methods:
        mine = [r for r in known if r["method"] == m]
        entry: dict[str, Any] = {"regret": {}, "mean_rank": ranks.get(m)}
        for b in budgets:
            at = [r["regret"] for r in mine if r["budget_fte"] == b]
            entry["regret"][b] = mean_se(at) if at else None
            for metric in ("test_accuracy", "test_macro_f1"):
                vals = [r[metric] for r in mine if r["budget_fte"] == b and r.get(metric) is not None]
                if vals:
                    entry.setdefault(metric, {})[b] = mean_se(vals)
        curves = _episode_curves([p for p in anytime if p["method"] == m], grid)
        if curves:
            c = np.array(curves)
            entry["anytime_mean"] = c.mean(axis=0).tolist()
            entry["anytime_se"] = (c.std(axis=0, ddof=1) / math.sqrt(len(c)) if len(c) > 1 else 0 * c[0]).tolist()
            log_grid = np.log(grid)
            areas = [_log_area(x, log_grid) for x in c]
            entry["area"] = mean_se(areas)
        out["methods"][m] = entry
    ref = out["methods"].get(REFERENCE_METHOD, {}).get("regret", {}).get(settings.reference_budget)
    for m, entry in out["methods"].items():
        entry["speedup"] = None
        if ref is not None and m != REFERENCE_METHOD and "anytime_mean" in entry:
            entry["speedup"] = budget_to_reach(grid, np.array(entry["anytime_mean"]), ref[0], settings.reference_budget)
    return out


def _log_area(regret: np.ndarray, log_grid: np.ndarray) -> float:
    """Mean of ``regret`` over the log-budget range (trapezoids); the value itself on a one-point grid."""
    if len(log_grid) < 2:
        return float(regret[0])
    widths = np.diff(log_grid)
    return float(((regret[1:] + regret[:-1]) / 2 * widths).sum() / widths.sum())


def _episode_curves(points: list[dict[str, Any]], grid: np.ndarray) -> list[np.ndarray]:
    episodes: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for p in points:
        episodes.setdefault((p["task"], int(p["seed"])), []).append(p)
    return [_grid(sorted(ps, key=lambda p: p["fte"]), grid) for _, ps in sorted(episodes.items())]


def budget_to_reach(grid: np.ndarray, mean: np.ndarray, target: float, reference: float) -> dict[str, Any]:
    """The smallest grid budget where ``mean`` regret is at most ``target``, and its ratio to ``reference``."""
    hit = np.nonzero(mean <= target + 1e-12)[0]
    if len(hit) == 0:
        return {"budget_fte": None, "ratio": None, "beyond": float(grid[-1] / reference)}
    budget = float(grid[hit[0]])
    return {"budget_fte": budget, "ratio": budget / reference, "beyond": None}


def seconds_to_reach(points: list[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """Recorded seconds at which a method's mean regret reaches ``target``, from its per-budget means.

    ``points``: (mean seconds, mean regret) of its episodes at each budget, smallest budget first.
    Between two budgets, log-seconds are interpolated linearly in regret. Returns (seconds, exact):
    ``exact`` False means the smallest budget already reaches it (the seconds are an upper bound);
    (None, False) that no budget does.
    """
    for i, (seconds, regret) in enumerate(points):
        if regret <= target + 1e-12:
            if i == 0:
                return seconds, False
            (s0, r0), (s1, r1) = points[i - 1], points[i]
            share = (r0 - target) / (r0 - r1)
            return float(math.exp(math.log(s0) + share * (math.log(s1) - math.log(s0)))), True
    return None, False


def mean_ranks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over (task, seed, budget) of each method's rank by regret (1 best; ties share the mean rank)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["seed"], r["budget_fte"]), []).append(r)
    ranks: dict[str, list[float]] = {}
    for group in groups.values():
        values = sorted(r["regret"] for r in group)
        for r in group:
            lo = values.index(r["regret"]) + 1
            hi = len(values) - values[::-1].index(r["regret"])
            ranks.setdefault(r["method"], []).append((lo + hi) / 2)
    return {m: statistics.fmean(v) for m, v in ranks.items()}


def speedup_text(s: Any) -> str:
    if s is None:
        return "-"
    if s["budget_fte"] is None:
        return f"> {s['beyond']:.1f}× (not reached)"
    return f"{s['ratio']:.2f}× ({s['budget_fte']:.1f} FTE)"


def _speedup_note(report: dict[str, Any], settings: BenchSettings) -> str:
    """What the speedup column means here, or why it is empty."""
    ref = report["reference_budget"]
    if REFERENCE_METHOD not in settings.methods:
        return f"Speedup: not measured ({REFERENCE_METHOD} did not play)."
    if ref not in report["budgets"]:
        return f"Speedup: not measured (its reference budget, {ref:g} FTE, was not run)."
    if settings.backend != "recorded":
        return "Speedup: not measured (a live bench has no anytime curves)."
    return f"Speedup: the budget a method needs to reach {REFERENCE_METHOD}'s regret at {ref:g} FTE, over {ref:g}."


def markdown(report: dict[str, Any], settings: BenchSettings, run_dir: Path) -> str:
    budgets = report["budgets"]
    lines = [
        f"# rlhpo bench: {', '.join(settings.tasks)} ({settings.backend} backend)",
        "",
        f"Seeds {settings.first_seed}..{settings.first_seed + settings.seeds - 1}; budgets in full-training "
        "equivalents (FTE: times the largest epochs choice). Regret: best known full-fidelity score of the task less "
        "that of the incumbent config (normalised accuracy); mean ± standard error over tasks and seeds. "
        f"Area: mean regret over log-budget from {budgets[0]:g} to {budgets[-1]:g} FTE (anytime curves at the "
        f"largest budget). {_speedup_note(report, settings)}",
        "",
        "| method | "
        + " | ".join(f"regret @ {b:g}" for b in budgets)
        + " | area | final regret | mean rank | speedup |",
        "| --- | " + " | ".join("---" for _ in budgets) + " | --- | --- | --- | --- |",
    ]
    for m, e in report["methods"].items():
        cells = [pm(e["regret"].get(b)) for b in budgets]
        rank = "-" if e["mean_rank"] is None else f"{e['mean_rank']:.2f}"
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {pm(e.get('area'))} | {pm(e['regret'].get(budgets[-1]))} | "
            f"{rank} | {speedup_text(e['speedup'])} |"
        )
    if any("test_accuracy" in e for e in report["methods"].values()):
        lines += ["", "Incumbents retrained at full fidelity, on the test split:", ""]
        lines += ["| method | budget | test accuracy | test macro-F1 |", "| --- | --- | --- | --- |"]
        for m, e in report["methods"].items():
            for b in budgets:
                if b in e.get("test_accuracy", {}):
                    lines.append(f"| {m} | {b:g} | {pm(e['test_accuracy'][b], 4)} | {pm(e['test_macro_f1'][b], 4)} |")
    lines += ["", f"![anytime regret]({PLOT_FILE})", "", f"Rows: `{CSV_FILE}`; anytime points: `{ANYTIME_FILE}`.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], settings: BenchSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.array(report["grid"])
    for m, e in report["methods"].items():
        if "anytime_mean" in e and len(grid) > 1:
            mean, se = np.array(e["anytime_mean"]), np.array(e["anytime_se"])
            (line,) = ax.plot(grid, mean, label=m)
            ax.fill_between(grid, mean - se, mean + se, alpha=0.2, color=line.get_color())
        else:
            bs = [b for b in report["budgets"] if e["regret"].get(b) is not None]
            ax.errorbar(
                bs,
                [e["regret"][b][0] for b in bs],
                yerr=[e["regret"][b][1] or 0.0 for b in bs],  # one seed: no error bar
                marker="o",
                capsize=3,
                label=m,
            )
    ax.set_xscale("log")
    ax.set_xlabel("budget (full-training equivalents)")
    ax.set_ylabel("regret at full fidelity (normalised accuracy)")
    ax.set_title(f"{', '.join(settings.tasks)} ({settings.backend}): mean ± s.e. over seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def console_lines(summary: dict[str, Any]) -> list[str]:
    """What ``rlhpo bench`` prints once it is done: regret at the reference budget, area and rank per method."""
    report, budgets = summary["report"], summary["report"]["budgets"]
    b = report["reference_budget"] if report["reference_budget"] in budgets else max(budgets)
    lines = [f"{'method':<14} {'regret @ ' + format(b, 'g') + ' FTE':<18} {'area':<16} {'mean rank':<9}"]
    for m, e in report["methods"].items():
        rank = "-" if e["mean_rank"] is None else f"{e['mean_rank']:.2f}"
        lines.append(f"{m:<14} {pm(e['regret'].get(b)):<18} {pm(e.get('area')):<16} {rank:<9}")
    lines.append(f"bench folder {summary['run_dir']} ({CSV_FILE}, bench.md, {PLOT_FILE})")
    return lines
