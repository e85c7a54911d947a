"""``rlhpo replay``: read a run's ``rollouts.jsonl``, summarise it, plot it, and re-execute it.

A rollouts file (written by ``train-agent`` and ``tune``) starts with a header line,
``{"header": {...}}``, that says how to rebuild the environment (backend, store, search space,
budget, training seed, reward weights, and for a live run the task), followed by one line per
step from :class:`~rlhpo.envs.recorder.RolloutRecorder` (episode, reset seed, task, action,
config, curve summary, reward, incumbent). :func:`verify` replays each episode's actions in a
fresh environment from the recorded seed and compares every step: recorded runs are looked up
again in their store, live runs are trained again (in memory; nothing is written).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.envs.recorder import ROLLOUTS_FILE, numeric_environment
from rlhpo.envs.reward import RewardSettings
from rlhpo.errors import RlhpoError
from rlhpo.runs import config_text
from rlhpo.space import HYPERPARAMETERS, SearchSpace
from rlhpo.store import task_from_json
from rlhpo.tasks.features import FAMILIES
from rlhpo.tasks.task import MODALITIES

# What verify compares per step: the name, and where the recorded line keeps it.
CHECKED = {
    "epochs": ("curve", "epochs_paid"),
    "score": ("curve", "score"),
    "reward": ("reward",),
    "incumbent": ("incumbent",),
    "budget_used": ("budget_used",),
    "answered_config": ("answered_config",),
}
TOLERANCE = 1e-9  # absolute, on scores and rewards


@dataclass
class Episode:
    """One recorded episode: its index in the file, reset seed, task key, and step lines."""

    index: int
    seed: int | None
    task: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def group(self) -> str:
        """``modality/family`` of the task, from its meta-features."""
        meta = (self.steps[0].get("meta_features") or {}) if self.steps else {}
        modality = next((m for m in MODALITIES if meta.get(f"modality_{m}")), "?")
        family = next((f for f in FAMILIES if meta.get(f"family_{f}")), "?")
        return f"{modality}/{family}"


@dataclass
class Rollouts:
    path: Path
    header: dict[str, Any]
    episodes: list[Episode]

    def episode(self, index: int) -> Episode:
        for ep in self.episodes:
            if ep.index == index:
                return ep
        raise RlhpoError(
            f"{str(self.path)!r} has no episode {index}; it holds episodes "
            f"{', '.join(str(e.index) for e in self.episodes) or 'none'}."
        )


def read_rollouts(run_dir: str | Path) -> Rollouts:
    """Read a run folder's ``rollouts.jsonl`` (or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / ROLLOUTS_FILE
    elif not path.exists():
        raise RlhpoError(f"Run folder {str(run_dir)!r} does not exist.")
    if not path.is_file():
        raise RlhpoError(
            f"Run folder {str(path.parent)!r} has no {ROLLOUTS_FILE}; runs of `rlhpo train-agent` and "
            "`rlhpo tune` write one."
        )
    header: dict[str, Any] = {}
    episodes: dict[int, Episode] = {}
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise RlhpoError(f"{str(path)!r} line {n} is not JSON ({e.msg}); the file is damaged.") from None
        if "header" in line:
            header = line["header"]
            continue
        try:
            index = int(line["episode"])
            ep = episodes.setdefault(index, Episode(index, line.get("seed"), line["task"]))
        except (KeyError, TypeError, ValueError):
            raise RlhpoError(f"{str(path)!r} line {n} is not a recorded step (no episode or task).") from None
        ep.steps.append(line)
    return Rollouts(path, header, sorted(episodes.values(), key=lambda e: e.index))


# ------------------------------------------------------------------ summaries


def episode_rows(episode: Episode) -> list[dict[str, Any]]:
    """The table of one episode: step, config (with the epochs asked), epochs paid, score, reward, incumbent."""
    return [
        {
            "step": s.get("step"),
            "config": config_text(s["config"]),
            "epochs": (s.get("curve") or {}).get("epochs_paid"),
            "score": (s.get("curve") or {}).get("score"),
            "reward": s.get("reward"),
            "incumbent": s.get("incumbent"),
            "exact": s.get("exact"),
        }
        for s in episode.steps
    ]


def choice_counts(rollouts: Rollouts) -> dict[str, dict[str, Counter]]:
    """How often each value of each hyperparameter was picked, by task ``modality/family``."""
    out: dict[str, dict[str, Counter]] = {h: defaultdict(Counter) for h in HYPERPARAMETERS}
    for ep in rollouts.episodes:
        for s in ep.steps:
            for h in HYPERPARAMETERS:
                out[h][ep.group][s["config"][h]] += 1
    return {h: dict(groups) for h, groups in out.items()}


def report_lines(rollouts: Rollouts, episodes: list[Episode], with_choices: bool) -> list[str]:
    """What ``rlhpo replay`` prints: each episode's table, then (``with_choices``) the choices by task group."""
    lines = []
    for ep in episodes:
        lines.append(f"episode {ep.index}  task {ep.task}  seed {ep.seed}")
        lines.append(f"  {'step':>4}  {'config':<48} {'epochs':>6} {'score':>7} {'reward':>7} {'incumbent':>9}")
        for r in episode_rows(ep):
            score = "-" if r["score"] is None else f"{r['score']:.4f}"
            lines.append(
                f"  {r['step']:>4}  {r['config']:<48} {r['epochs']:>6} {score:>7} {r['reward']:>7.4f} "
                f"{r['incumbent']:>9.4f}"
            )
    if with_choices:
        lines.append("choices by task modality/family (share of trials):")
        for h, groups in choice_counts(rollouts).items():
            for group, counts in sorted(groups.items()):
                total = sum(counts.values())
                shares = ", ".join(f"{v} {n / total:.0%}" for v, n in counts.most_common())
                lines.append(f"  {h:<14} {group:<18} {shares}")
    return lines


def verify_lines(checks: list[StepCheck], header: dict[str, Any] | None = None) -> list[str]:
    """What ``rlhpo replay --verify`` prints: a line per step, then the verdict.

    When steps differ and ``header`` (the rollouts' header) says the run was recorded in another
    numeric environment than this process's, a last line names what differs.
    """
    lines = []
    for c in checks:
        status = (
            "match"
            if c.ok
            else "MISMATCH " + "; ".join(f"{k}: recorded {a!r}, replayed {b!r}" for k, (a, b) in c.differences.items())
        )
        lines.append(f"verify episode {c.episode} step {c.step}: {status}")
    bad = sum(not c.ok for c in checks)
    n_eps = len({c.episode for c in checks})
    lines.append(f"verified {len(checks)} steps of {n_eps} episodes: " + ("all match" if not bad else f"{bad} differ"))
    if bad and header and header.get("backend") == "live":
        lines.append(environment_note(header.get("environment")))
    return lines


def environment_note(recorded: dict[str, Any] | None) -> str:
    """Why live steps may differ: the numeric environment they were recorded in, against this one."""
    here = numeric_environment()
    if recorded is None:
        return "note: the rollouts do not say which torch, threads or CPU they were recorded with."
    changed = [f"{k} {recorded.get(k)!r} then, {v!r} now" for k, v in here.items() if recorded.get(k) != v]
    if not changed:
        return (
            "note: recorded with this torch, these threads and these CPU kernels, so the difference is not float "
            "rounding across machines: look at the data and the code."
        )
    return (
        "note: recorded in another numeric environment ("
        + "; ".join(changed)
        + "): float rounding differs, and training can amplify it."
    )


# ----------------------------------------------------------------------- plot


def plot(rollouts: Rollouts, out: str | Path, episodes: list[Episode] | None = None) -> Path:
    """Anytime curves (incumbent against epochs spent) and the chosen values of each hyperparameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = episodes if episodes is not None else rollouts.episodes
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.2]})
    colours: dict[str, str] = {}
    for ep in episodes:
        x = [0] + [s["budget_used"] for s in ep.steps]
        y = [0.0] + [s["incumbent"] for s in ep.steps]
        dataset = ep.task.split("/")[0]
        first = dataset not in colours
        colour = colours.setdefault(dataset, f"C{len(colours) % 10}")
        ax.step(x, y, where="post", color=colour, alpha=0.6, label=dataset if first else None)
    ax.set_xlabel("epochs spent")
    ax.set_ylabel("incumbent score (normalised val. accuracy)")
    ax.set_title("anytime curves")
    if colours:
        ax.legend(fontsize=8)

    counts = _choice_matrix(rollouts, episodes)
    width = max((len(v) for v in counts.values()), default=1)
    for row, h in enumerate(HYPERPARAMETERS):
        values = counts[h]
        total = sum(values.values()) or 1
        for col, (value, n) in enumerate(values.items()):
            share = n / total
            ax2.add_patch(plt.Rectangle((col, row), 1, 1, color=plt.cm.Blues(share)))
            ink = "white" if share > 0.5 else "black"
            ax2.text(
                col + 0.5, row + 0.5, f"{_label(value)}\n{share:.0%}", ha="center", va="center", fontsize=7, color=ink
            )
    ax2.set_xlim(0, width)
    ax2.set_ylim(len(HYPERPARAMETERS), 0)
    ax2.set_yticks([i + 0.5 for i in range(len(HYPERPARAMETERS))], HYPERPARAMETERS)
    ax2.set_xticks([])
    ax2.set_title("chosen configs: share of trials per value")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _choice_matrix(rollouts: Rollouts, episodes: list[Episode]) -> dict[str, dict[Any, int]]:
    space = SearchSpace.from_dict(rollouts.header["space"]) if "space" in rollouts.header else None
    out: dict[str, dict[Any, int]] = {}
    for h in HYPERPARAMETERS:
        seen = Counter(s["config"][h] for ep in episodes for s in ep.steps)
        values = list(space.choices[h]) if space else sorted(seen, key=str)
        out[h] = {v: seen.get(v, 0) for v in values}
    return out


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------- verify


@dataclass(frozen=True)
class StepCheck:
    """One replayed step: whether it matches the recording, and what differs (recorded, replayed)."""

    episode: int
    step: int
    ok: bool
    differences: dict[str, tuple[Any, Any]]


def verify(rollouts: Rollouts, episode: int | None = None, data_dir: str | Path | None = None) -> list[StepCheck]:
    """Re-execute the recorded actions in a fresh env with each episode's seed; compare every step.

    Args:
        rollouts: what :func:`read_rollouts` read.
        episode: only this episode (default: all).
        data_dir: where a live run's local datasets are now (default: as recorded).
    """
    header = rollouts.header
    if not header:
        raise RlhpoError(f"{str(rollouts.path)!r} has no header line, so its environment cannot be rebuilt.")
    episodes = [rollouts.episode(episode)] if episode is not None else rollouts.episodes
    if not any(ep.steps for ep in episodes):
        raise RlhpoError(f"{str(rollouts.path)!r} holds no recorded step: there is nothing to verify.")
    env = _fresh_env(header, data_dir)
    checks = []
    try:
        for ep in episodes:
            checks += _replay_episode(env, header, ep)
    finally:
        env.close()
    return checks


def _fresh_env(header: dict[str, Any], data_dir: str | Path | None) -> HPOEnv:
    try:
        backend = header["backend"]
        space = SearchSpace.from_dict(header["space"])
        common = {
            "space": space,
            "budget_epochs": int(header["budget_epochs"]),
            "train_seed": int(header["train_seed"]),
            # Runs made before the reward charged compute and distance lack those weights: theirs were 0.
            "reward": RewardSettings(**{"compute_cost": 0.0, "distance_penalty": 0.0, **header.get("reward", {})}),
            "incumbent": header.get("incumbent", "best"),  # runs made before the rule could be chosen: best
        }
        if backend == "recorded":
            return HPOEnv("recorded", header["store"], **common)
        if backend == "live":
            task = task_from_json(json.dumps(header["task"]))
            return HPOEnv(
                "live",
                None,  # an in-memory store: every trial trains again
                tasks=[task],
                data_dir=data_dir or header.get("data_dir"),
                device=header.get("device", "cpu"),
                **common,
            )
    except KeyError as e:
        raise RlhpoError(f"The rollouts header lacks {e}, so the environment cannot be rebuilt.") from None
    raise RlhpoError(f"The rollouts header names backend {backend!r}; replay knows 'recorded' and 'live'.")


def _replay_episode(env: HPOEnv, header: dict[str, Any], ep: Episode) -> list[StepCheck]:
    if ep.seed is None:
        raise RlhpoError(f"Episode {ep.index} has no recorded seed, so it cannot be replayed.")
    task: Any = ep.task
    if header["backend"] == "live":
        task = task_from_json(json.dumps(header["task"]))
        if task.key() != ep.task:
            raise RlhpoError(f"Episode {ep.index} ran on {ep.task!r}, but the header's task is {task.key()!r}.")
    env.reset(seed=ep.seed, options={"task": task})
    checks = []
    for line in ep.steps:
        _, reward, _, _, info = env.step(line["action"])
        result = info["result"]
        replayed = {
            "reward": reward,
            **result.to_dict(),
            "curve": {"epochs_paid": result.paid_epochs, "score": result.score},
        }
        differences = {}
        for name, where in CHECKED.items():
            want, got = _get(line, where), _get(replayed, where)
            if not _same(want, got):
                differences[name] = (want, got)
        checks.append(StepCheck(ep.index, int(line.get("step") or 0), not differences, differences))
    return checks


def _get(d: dict[str, Any], where: tuple[str, ...]) -> Any:
    for key in where:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=0.0, abs_tol=TOLERANCE)
    return a == b
