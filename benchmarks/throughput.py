"""Throughput of rlhpo's trainer against a bare torch loop, and dataset load times.

For each model family, ``rlhpo.training.train`` and a bare torch loop train the same model
(same seed, same initial weights) on the same batches (same seeded permutation) with the same
optimizer, and both evaluate on the validation split after each epoch, in this process with the
same torch thread count. Runs alternate (trainer, bare, trainer, bare, ...) after an untimed
warm-up of each on 64 examples; the best of the repeats counts. Throughput is training examples
× epochs per wall-clock second of the whole call (model construction and validation included).
The last column checks that the two loops really did the same work: their mean training losses
must be equal.

Load times: cold is ``load_task`` with a fresh, empty ``RLHPO_CACHE_DIR`` (reading parquet,
decoding, tokenizing, writing the cache); cached is the next load from that disk cache, as a new
process would see it (the loader's in-process memo is cleared first).

Usage::

    RLHPO_DATA_DIR=<data folder> python benchmarks/throughput.py --out docs/benchmarks/throughput.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhpo.models import model_for
from rlhpo.space import Config, load_search_space
from rlhpo.tasks import Task, load_task, loader
from rlhpo.tasks.task import TaskData
from rlhpo.training import EVAL_BATCH_SIZE, make_optimizer, train

DATASET_OF = {"cnn": "mnist", "mlp": "digits", "gru": "trec", "lstm": "trec", "transformer": "ag_news"}
DIGITS_MAX_TRAIN = 1000  # digits has 1,797 examples in all


def bare_loop(data: TaskData, config: Config, epochs: int, seed: int) -> float:
    """The same training as ``train`` written as a plain torch loop; returns the last mean train loss."""
    torch.manual_seed(seed)
    model = model_for(data, config)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.learning_rate, config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    x, y, n = data.x_train, data.y_train, len(data.y_train)
    mean_loss = float("nan")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=order)
        total, batches = 0.0, 0
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        mean_loss = total / batches
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(data.y_val), EVAL_BATCH_SIZE):
                logits = model(data.x_val[start : start + EVAL_BATCH_SIZE])
                F.cross_entropy(logits, data.y_val[start : start + EVAL_BATCH_SIZE]).item()
                (logits.argmax(1) == data.y_val[start : start + EVAL_BATCH_SIZE]).sum().item()
    return mean_loss


def trainer_loop(data: TaskData, config: Config, epochs: int, seed: int) -> float:
    return train(data, config, epochs=epochs, seed=seed).epochs[-1].train_loss


def measure(data: TaskData, config: Config, epochs: int, repeats: int) -> dict[str, float]:
    """Samples/s of the trainer and the bare loop, alternating, after a warm-up.

    ``trainer`` and ``bare`` are best-of-``repeats``; ``paired`` is the median over repeats of
    bare time / trainer time within one (trainer, bare) pair, which holds up better when other
    processes load the machine in bursts; ``cpu`` is the ratio of the best process CPU times.
    """
    loops = {"trainer": trainer_loop, "bare": bare_loop}
    warm_up = _head(data, 64)  # imports, allocator and first-call costs, paid before timing
    losses = {name: loop(warm_up, config, 1, 0) for name, loop in loops.items()}
    times: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            losses[name] = loop(data, config, epochs, 0)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    samples = len(data.y_train) * epochs
    return {
        "trainer": samples / min(times["trainer"]),
        "bare": samples / min(times["bare"]),
        "paired": statistics.median(b / t for t, b in zip(times["trainer"], times["bare"])),
        "cpu": min(cpu["bare"]) / min(cpu["trainer"]),
        "same_loss": float(losses["trainer"] == losses["bare"]),
    }


def _forget_in_memory() -> None:
    """Drop the loader's in-process memo, so that the next load reads the disk cache."""
    memo = getattr(loader.load_prepared, "cache_clear", None)
    if memo is not None:
        memo()


def _head(data: TaskData, n: int) -> TaskData:
    """The first ``n`` training and validation examples of a task."""
    return dataclasses.replace(
        data, x_train=data.x_train[:n], y_train=data.y_train[:n], x_val=data.x_val[:n], y_val=data.y_val[:n]
    )


def load_times(datasets: list[str]) -> dict[str, tuple[float, float]]:
    """(cold, cached) seconds of ``load_task`` per dataset, with a fresh temporary cache."""
    old = os.environ.get("RLHPO_CACHE_DIR")
    out = {}
    with tempfile.TemporaryDirectory(prefix="rlhpo-bench-cache-") as tmp:
        os.environ["RLHPO_CACHE_DIR"] = tmp
        try:
            for name in datasets:
                times = []
                for _ in range(2):
                    _forget_in_memory()
                    start = time.perf_counter()
                    load_task(Task(name))
                    times.append(time.perf_counter() - start)
                out[name] = (times[0], times[1])
        finally:
            if old is None:
                os.environ.pop("RLHPO_CACHE_DIR", None)
            else:
                os.environ["RLHPO_CACHE_DIR"] = old
    return out


def _load_average(when: str) -> str:
    """The one-minute load average: other processes on the machine slow both loops alike."""
    return f"; load average {when} {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    load = _load_average("at start")
    python = platform.python_version()
    return f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; Python {python}{load}"


def report(args: argparse.Namespace, config: Config, rows: list[tuple], loads: dict[str, tuple[float, float]]) -> str:
    lines = [
        "# Trainer throughput",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/throughput.py --families {','.join(args.families)} --n {args.n} "
        f"--epochs {args.epochs} --threads {torch.get_num_threads()} --repeats {args.repeats}`.",
        f"Config: the default ({config.optimizer}, lr {config.learning_rate}, batch {config.batch_size}, "
        f"{config.num_layers} layers × {config.units} units, dropout {config.dropout}); "
        f"{args.epochs} epoch(s), best of {args.repeats} alternating runs.",
        "Both loops train and validate each epoch; samples/s counts training examples × epochs and is the "
        "best of the runs; ratio = trainer / bare of those; paired = median over the repeats of "
        "bare time / trainer time within one alternating pair (robust to bursts of load from other processes); "
        "CPU-time = best bare / best trainer process CPU time.",
        "",
        "| family | task | n_train | n_val | trainer samples/s | bare samples/s | ratio | paired | CPU-time |"
        " same losses |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for family, dataset, n, n_val, m in rows:
        same = "yes" if m["same_loss"] else "no"
        lines.append(
            f"| {family} | {dataset} | {n} | {n_val} | {m['trainer']:,.0f} | {m['bare']:,.0f} | "
            f"{m['trainer'] / m['bare']:.2f} | {m['paired']:.2f} | {m['cpu']:.2f} | {same} |"
        )
    lines += ["", "| dataset | cold load (s) | cached load, disk (s) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {cold:.2f} | {cached:.2f} |" for name, (cold, cached) in loads.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(DATASET_OF), help="Comma-separated model families.")
    parser.add_argument("--n", type=int, default=500, help="Training examples per task (digits: at most 1000).")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs per timed run.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both loops (default: torch's).")
    parser.add_argument("--repeats", type=int, default=7, help="Timed runs of each loop; the best counts.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown report here.")
    args = parser.parse_args()
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown_families = sorted(set(args.families) - set(DATASET_OF))
    if unknown_families:
        parser.error(f"unknown families {unknown_families}; expected some of {', '.join(DATASET_OF)}")

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = load_search_space().default
    datasets = list(dict.fromkeys(DATASET_OF[f] for f in args.families))
    loads = load_times(datasets)
    rows = []
    for family in args.families:
        dataset = DATASET_OF[family]
        n = min(args.n, DIGITS_MAX_TRAIN) if dataset == "digits" else args.n
        data = load_task(Task(dataset, family, n_train=n))
        rows.append(
            (family, dataset, len(data.y_train), len(data.y_val), measure(data, config, args.epochs, args.repeats))
        )
        print(f"{family}: done", flush=True)
    text = report(args, config, rows, loads)
    text += f"\nWall time {time.perf_counter() - started:.0f} s{_load_average('at end')}.\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
