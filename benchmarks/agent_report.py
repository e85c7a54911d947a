"""Report a ``rlhpo train-agent`` run: its training curve, how long it took, and its evaluation.

Reads the run folder (``command.txt``, ``config.yaml``, ``progress.jsonl``, ``summary.json``),
writes a Markdown page and a PNG of the training curve: per PPO rollout, the mean over the
episodes that ended in it of the incumbent score and of the regret against the best recorded
full-fidelity score, and SB3's mean episode return.

Usage::

    python benchmarks/agent_report.py runs/<train-agent run> --out docs/benchmarks/train_agent.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from rlhpo.agents.evaluate import pm
from rlhpo.agents.sb3_logging import read_progress
from rlhpo.settings import SHIPPED_STORE, shipped_file

CURVE = ("hpo/incumbent_score", "hpo/regret", "rollout/ep_rew_mean")


def curve_rows(progress: list[dict[str, Any]], points: int = 12) -> list[dict[str, Any]]:
    """About ``points`` evenly spaced rollouts (the last included) that carry the hpo/ scalars."""
    rows = [p for p in progress if "hpo/incumbent_score" in p]
    if len(rows) <= points:
        return rows
    every = len(rows) / points
    picked = [rows[int(i * every)] for i in range(points)]
    return picked if picked[-1] is rows[-1] else [*picked, rows[-1]]


def plot(progress: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [p for p in progress if "hpo/incumbent_score" in p]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in CURVE:
        points = [(p["step"], p[key]) for p in rows if key in p]
        if points:
            ax.plot(*zip(*points), label=key, linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("per rollout, mean over its episodes")
    ax.set_title("train-agent: training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def store_name(path: str) -> str:
    """The store as a page may name it: the shipped one by its place in the package, another relative to here."""
    store = Path(path).resolve()
    if store == shipped_file(SHIPPED_STORE).resolve():
        return "`rlhpo/assets/meta_dataset.sqlite` (the shipped meta-dataset)"
    return f"`{os.path.relpath(store)}`" if store.is_relative_to(Path.cwd()) else f"`{store.name}`"


def report(run_dir: Path, png: Path | None, out_dir: Path | None) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    progress = read_progress(run_dir)
    commands = (run_dir / "command.txt").read_text().strip().splitlines()
    ev = summary["evaluation"]
    resumed = f", resumed from step {summary['resumed_from']}" if summary.get("resumed_from") is not None else ""
    lines = [
        "# The shipped policy: meta-training",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; train-agent runs "
        "PPO on one torch thread.",
        "",
        "Made by " + "; then ".join(f"`{c}`" for c in commands) + f" (run folder `{run_dir.name}`).",
        "",
        f"- {summary['num_timesteps']} environment steps in {summary['train_seconds'] / 60:.1f} minutes of "
        f"training{resumed} ({summary['num_timesteps'] / max(summary['train_seconds'], 1e-9):.0f} steps/s); "
        "the evaluation after it is not included.",
        f"- {len(summary['train_tasks'])} meta-training task instances from {store_name(summary['store'])}; held out: "
        f"{', '.join(summary['exclude_datasets']) or 'none'}.",
        f"- Budget {summary['budget_fte']} FTE = {summary['budget_epochs']} epochs per episode. Settings: "
        "`config.yaml` of the run (shipped next to the policy).",
        "",
        "## Training curve",
        "",
        "Per PPO rollout: mean over the episodes that ended in it (SB3's episode return: over the last 100 "
        "episodes). Regret: best recorded full-fidelity score "
        "of the task less the full-fidelity score of the episode's incumbent config (normalised accuracy).",
        "",
    ]
    if png is not None:
        plot(progress, png)
        rel = os.path.relpath(png, out_dir) if out_dir else str(png)
        lines += [f"![training curve]({rel})", ""]
    lines += ["| step | incumbent score | regret | episode return |", "| --- | --- | --- | --- |"]
    for p in curve_rows(progress):
        cells = [f"{p[k]:.4f}" if k in p else "-" for k in CURVE]
        lines.append(f"| {p['step']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Evaluation",
        "",
        f"Recorded backend, {len(ev['seeds'])} seeds per task (seeds {ev['seeds'][0]}..{ev['seeds'][-1]}, "
        f"disjoint from training's), same budget for every method. Mean ± standard error over episodes. "
        "Full fidelity: the incumbent config's recorded score at the largest epochs.",
        "",
        "| tasks | method | incumbent score | full-fidelity score | regret |",
        "| --- | --- | --- | --- | --- |",
    ]
    for group, result in ev["groups"].items():
        for method, row in result["methods"].items():
            cells = [pm((row[k], row[f"{k}_se"])) for k in ("incumbent_score", "full_fidelity_score", "regret")]
            lines.append(f"| {group} ({len(result['tasks'])}) | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="The train-agent run folder.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown here (and the PNG next to it).")
    args = parser.parse_args()
    png = args.out.with_suffix(".png") if args.out else None
    text = report(args.run_dir, png, args.out.parent if args.out else None)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
