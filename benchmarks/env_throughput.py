"""Recorded-backend throughput: HPOEnv steps per second on one core (target: at least 2,000).

By default it builds a synthetic store shaped like the meta-dataset (tasks x configs x 9 epochs
of made-up curves; a step's cost does not depend on the numbers), or measures a real one with
``--store``. Random actions, so most steps take the nearest-config path, episodes reset as they
end (task drawn from every task in the store), and the process is pinned to one CPU.

    python benchmarks/env_throughput.py [--store runs/store.sqlite] [--steps 20000]
        [--out docs/benchmarks/env_throughput.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np

import rlhpo.envs
from rlhpo.collect import design_configs
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.features import META_FEATURES
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord


def synthetic_store(path: Path, n_tasks: int, n_configs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    space = load_search_space()
    configs = design_configs(space, n_configs, seed)
    store = CurveStore(path)
    for t in range(n_tasks):
        task = Task("digits", family="mlp", n_train=500 + t, seed=t)
        meta = {f: float(rng.random()) for f in META_FEATURES}
        store.put_task(TaskRecord(task, "mlp", task.n_train, int(rng.integers(2, 11)), meta))
        for c in configs:
            diverge_at = int(rng.integers(1, 10)) if rng.random() < 0.1 else None
            n = 9 if diverge_at is None else diverge_at - 1
            acc = np.sort(rng.random(n))
            epochs = [EpochRecord(e + 1, 1.0 / (e + 1), 1.1 / (e + 1), acc[e], acc[e], 0.1) for e in range(n)]
            store.put_run(task.key(), c, 0, Curve(epochs, diverged=diverge_at is not None))
    store.close()


def steps_per_second(env: gym.Env, steps: int, seed: int = 0) -> float:
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    env.reset(seed=seed)
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None, help="A real store (default: a synthetic one).")
    parser.add_argument("--tasks", type=int, default=40, help="Tasks in the synthetic store.")
    parser.add_argument("--configs", type=int, default=128, help="Configs per task in the synthetic store.")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="Best of this many timings.")
    parser.add_argument("--out", type=Path, default=None, help="Write the result as Markdown here.")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "synthetic.sqlite"
            synthetic_store(store, args.tasks, args.configs)
        counts = CurveStore(store, readonly=True).count()
        load = os.getloadavg()[0]
        results = {}
        for name, make in (
            ("HPOEnv (unwrapped)", lambda: HPOEnv("recorded", store)),
            (
                "gymnasium.make (checker + order wrappers)",
                lambda: gym.make(rlhpo.envs.ENV_ID, backend="recorded", store=store),
            ),
        ):
            env = make()
            steps_per_second(env, min(2000, args.steps))  # warm up: loads every task's runs once
            results[name] = max(steps_per_second(env, args.steps, seed=r) for r in range(args.repeats))

    lines = [
        "# Recorded-backend throughput",
        "",
        f"`python benchmarks/env_throughput.py` on {datetime.now(timezone.utc):%Y-%m-%d}, one CPU core "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()}); load average "
        f"{load:.1f} on {os.cpu_count()} CPUs before the timings.",
        f"Store: {'synthetic' if args.store is None else args.store} with {counts['tasks']} tasks, "
        f"{counts['runs']} runs, {counts['epochs']} epochs. {args.steps} random actions (mostly answered by "
        f"the nearest recorded config), best of {args.repeats}; episodes reset as they end.",
        "",
        "| env | steps / s | target |",
        "|---|---:|---:|",
        *(f"| {name} | {sps:,.0f} | 2,000 |" for name, sps in results.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
