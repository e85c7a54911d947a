"""Collect on Ray against local workers: the overhead, a two-node cluster, and a worker killed mid-collect.

1. Timing. The same ``rlhpo collect`` (digits and trec instances), each into a fresh store, with
   ``--executor ray --workers 2`` (a local Ray instance with 2 CPUs, started and stopped by the
   command) and with ``--workers 2`` (2 local worker processes), alternating, ``--repeats`` times
   each. Each timing is the whole command (Python start-up, Ray's start and stop included), after
   one untimed pass that fills the dataset cache; the time to its first recorded run shows the
   start-up apart. The aim: Ray at most 10% slower.
2. Two nodes. A Ray cluster of two nodes on this machine (``ray start --head --num-cpus 1`` and a
   second ``ray start --address ... --num-cpus 1`` with its own ``--temp-dir``); the same collect
   with ``--address`` must record the rows of the local workers, with work on both nodes.
3. Fault. On that cluster, one Ray worker is killed (SIGKILL) while it trains; the collect must
   still finish with the rows of the local workers, each run trained and written once.

Every store's rows (all but the wall-clock seconds) are compared with the first local store's.
Timed parts wait until no other benchmark, bench, collect, leave-one-out or pytest runs here
(``--no-wait`` skips the check): Ray's workers run at niceness 15, so other load slows them
first, and the ratio would measure that instead. The cluster is stopped by the PIDs of the processes it started
(not ``ray stop``, which stops every Ray instance on the machine).

    python benchmarks/ray_collect.py --data-dir <data folder> [--configs 24] [--repeats 3] \\
        [--out docs/benchmarks/ray_collect.md]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from rlhpo.collect import CollectSettings, InstanceGroup, task_record
from rlhpo.ray_executor import BATCHES_PER_CPU, MAX_BATCH, batch_size
from rlhpo.store import store_rows, stored_runs

log = logging.getLogger("ray_collect")

# Small instances like collect.yaml's: an MLP on digits and a GRU on trec.
WORK = [
    {"datasets": ["digits"], "families": ["mlp"], "n_train": [1000]},
    {"datasets": ["trec"], "families": ["gru"], "n_train": [500]},
]
# What a timed part waits for. Tests too: Ray starts its workers at niceness 15 (RAY_worker_niceness),
# so any other load takes the CPU from them first, and not from local workers (the command's niceness).
BUSY = "benchmarks/|rlhpo bench|rlhpo collect|leave_one_out|pytest"
CLI = [sys.executable, "-c", "from rlhpo.cli import main; main()"]
RAY = str(Path(sys.executable).with_name("ray"))


# ----------------------------------------------------------------- helpers


def others_busy() -> list[str]:
    """Other benchmarks, benches and collects running here now (not this script or its children)."""
    out = subprocess.run(["pgrep", "-af", BUSY], capture_output=True, text=True).stdout.splitlines()
    mine = {os.getpid(), *descendants(os.getpid())}
    return [line for line in out if int(line.split()[0]) not in mine and "pgrep" not in line]


def wait_until_quiet(max_wait: float) -> list[str]:
    """Wait (up to ``max_wait`` seconds) until :func:`others_busy` is empty; return what was seen at first."""
    seen = others_busy()
    deadline = time.monotonic() + max_wait
    while (busy := others_busy()) and time.monotonic() < deadline:
        log.warning("waiting for %d other jobs to finish: %s", len(busy), "; ".join(b[:80] for b in busy))
        time.sleep(30)
    if busy:
        log.warning("still busy after %.0fs; timing anyway", max_wait)
    return seen


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent, todo = todo[0], todo[1:]
        try:
            children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            children = []
        out += children
        todo += children
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- collect


@dataclass
class Timing:
    executor: str
    seconds: float  # the whole command
    first: float  # to its first recorded run
    trained: int
    stderr: str
    others: int = 0  # other jobs (BUSY) seen when it started or ended


def run_collect(
    instances: Path,
    store: Path,
    executor: str,
    data_dir: str,
    extra: list[str],
    on_poll: Callable[[int], None] | None = None,
    env: dict[str, str] | None = None,
) -> Timing:
    """One ``rlhpo collect`` into ``store``, timed; ``on_poll(runs recorded)`` is called while it runs."""
    cmd = CLI + ["collect", "--instances", str(instances), "--store", str(store), "--data-dir", data_dir]
    cmd += ["--executor", executor] + extra
    started = time.perf_counter()
    first = None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})})
        while proc.poll() is None:
            runs = stored_runs(store)
            if runs and first is None:
                first = time.perf_counter() - started
            if on_poll:
                on_poll(runs)
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        out = proc.stdout.read()
        proc.stdout.close()
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}\n{stderr[-3000:]}")
    trained = int(re.search(r"trained (\d+)", out).group(1))
    return Timing(executor, seconds, first or seconds, trained, stderr)


# ------------------------------------------------------------ the cluster


class Node:
    """One ``ray start --block`` in a session of its own; stopped by the PIDs it started."""

    def __init__(self, args: list[str], temp_dir: Path, env: dict[str, str]) -> None:
        cmd = [RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", str(temp_dir)]
        cmd += ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port())]
        cmd += ["--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        self.log = temp_dir.with_suffix(".log")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd + args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
            )
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{' '.join(cmd + args)} failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def busy_workers(self) -> list[int]:
        """Its Ray workers that are running a batch now (their process title is ``ray::run_batch``)."""
        return [p for p in descendants(self.proc.pid) if cmdline(p).startswith("ray::run_batch")]

    def stop(self) -> None:
        pids = self.pids()
        self.proc.terminate()  # `ray start --block` stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{p}").exists() and cmdline(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        for p in pids:  # what outlived it: only processes this node started
            if cmdline(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)


# ------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=24, help="Configs per task instance.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed collects per executor.")
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--no-wait", action="store_true", help="Time without waiting for other jobs to end.")
    parser.add_argument("--max-wait", type=float, default=3600, help="Seconds to wait for other jobs at most.")
    parser.add_argument("--out", type=Path, default=None, help="Write the result as Markdown here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.data_dir:
        raise SystemExit("trec needs the data folder: pass --data-dir or set RLHPO_DATA_DIR")
    data_dir = str(Path(args.data_dir).resolve())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tmp = Path(tempfile.mkdtemp(prefix="ray_collect_"))
    instances = tmp / "collect.yaml"
    instances.write_text(yaml.safe_dump({"instances": WORK, "configs": args.configs}))
    settings = CollectSettings(instances=[InstanceGroup(**g) for g in WORK], configs=args.configs)
    runs = len(settings.tasks()) * args.configs
    for task in settings.tasks():
        task_record(task, data_dir)  # fills the dataset cache: no timing pays for it
    stores = iter(range(1000))

    def store() -> Path:
        return tmp / f"store{next(stores)}.sqlite"

    # 1. Timing, alternating (local, ray, ray, local, ...), after one untimed pass of each.
    seen = [] if args.no_wait else wait_until_quiet(args.max_wait)
    load_before = os.getloadavg()
    reference = store()
    warm = [run_collect(instances, reference, "local", data_dir, ["--workers", "2"])]
    warm.append(run_collect(instances, store(), "ray", data_dir, ["--workers", "2"]))
    expected = store_rows(reference)
    timings: list[Timing] = []
    same = True
    for r in range(args.repeats):
        order = ["local", "ray"] if r % 2 == 0 else ["ray", "local"]
        for executor in order:
            path = store()
            before = len(others_busy())
            t = run_collect(instances, path, executor, data_dir, ["--workers", "2"])
            t.others = max(before, len(others_busy()))
            same &= store_rows(path) == expected and t.trained == runs
            log.info("%s: %.1fs (first run at %.1fs)", executor, t.seconds, t.first)
            timings.append(t)
    load_after = os.getloadavg()
    busy_after = others_busy()

    # 2 and 3. A two-node cluster on this machine; a clean collect, then one whose worker is killed.
    head_port = free_port()
    address = f"127.0.0.1:{head_port}"
    # Ray 2.59+ authenticates with a token on local clusters: every node and the driver share one.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    nodes = []
    try:
        head_args = ["--head", "--port", str(head_port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false"]
        nodes.append(Node(head_args + ["--ray-client-server-port", str(free_port())], tmp / "ray-head", auth))
        nodes.append(Node(["--address", address, "--node-ip-address", "127.0.0.1"], tmp / "ray-node2", auth))
        used: set[int] = set()

        def watch(n: int) -> None:
            used.update(i for i, node in enumerate(nodes) if node.busy_workers())

        path = store()
        two = run_collect(instances, path, "ray", data_dir, ["--address", address], on_poll=watch, env=auth)
        two_same = store_rows(path) == expected and two.trained == runs
        log.info("two nodes: %.1fs, nodes used %s, same rows: %s", two.seconds, sorted(used), two_same)

        killed: list[tuple[int, int, int]] = []  # (node, pid, runs recorded then)

        def kill_one(n: int) -> None:
            if killed or n < runs // 4:
                return
            for i, node in enumerate(nodes):
                busy = node.busy_workers()
                if busy:
                    os.kill(busy[0], signal.SIGKILL)
                    killed.append((i, busy[0], n))
                    log.info("killed worker %d on node %d with %d runs recorded", busy[0], i, n)
                    return

        path = store()
        fault = run_collect(instances, path, "ray", data_dir, ["--address", address], on_poll=kill_one, env=auth)
        fault_rows = store_rows(path)
        fault_same = fault_rows == expected and fault.trained == runs and len(fault_rows[0]) == runs
        log.info("fault: %.1fs, killed %s, same rows: %s", fault.seconds, killed, fault_same)
    finally:
        for node in reversed(nodes):
            node.stop()

    # Report.
    local = [t for t in timings if t.executor == "local"]
    ray = [t for t in timings if t.executor == "ray"]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    ratios = [b.seconds / a.seconds for a, b in zip(local, ray)]
    ratio = mean([t.seconds for t in ray]) / mean([t.seconds for t in local])
    size = batch_size(runs, 2)
    cmd = f"python benchmarks/ray_collect.py --data-dir DATA --configs {args.configs} --repeats {args.repeats}"
    lines = [
        "# Collect on Ray",
        "",
        f"`{cmd}` on {datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} CPUs ({platform.machine()}, "
        f"Python {platform.python_version()}). Load average {load_before[0]:.1f} before the timings and "
        f"{load_after[0]:.1f} after; other jobs seen before: {len(seen)}, after: {len(busy_after)}.",
        f"Work: {runs} runs at 9 epochs ({', '.join(t.key() for t in settings.tasks())}), each collect into a "
        f"fresh store; Ray sends them in tasks of {size} (at least {BATCHES_PER_CPU} per CPU, at most {MAX_BATCH} "
        "runs each). Each timing is the whole command: Python, Ray's start and stop, the workers' start-up.",
        "",
        "## Ray (2 CPUs) against 2 local worker processes",
        "",
        "| executor | round | seconds | first run at (s) | runs / min | other jobs seen |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, t in enumerate(timings):
        lines.append(
            f"| {t.executor} | {i // 2 + 1} | {t.seconds:.1f} | {t.first:.1f} | {60 * runs / t.seconds:.1f} "
            f"| {t.others} |"
        )
    lines += [
        "",
        f"Ray / local, mean seconds: **{ratio:.3f}** (per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"aim: at most 1.10). First run recorded after {mean([t.first for t in local]):.1f}s (local) and "
        f"{mean([t.first for t in ray]):.1f}s (Ray) on average; the rest: "
        f"{mean([t.seconds - t.first for t in local]):.1f}s and {mean([t.seconds - t.first for t in ray]):.1f}s.",
        "Ray starts its workers at niceness 15 (its default, `RAY_worker_niceness`) and local workers run at the "
        "command's, so other load on the machine slows Ray's workers first: the timings wait for a quiet machine, "
        "and the last column counts the other jobs seen at the start or end of each.",
        f"Every store holds the rows of the first local one (all but seconds): {'yes' if same else '**no**'}. "
        f"Untimed first passes: local {warm[0].seconds:.1f}s, Ray {warm[1].seconds:.1f}s.",
        "",
        "## Two nodes on this machine",
        "",
        "`ray start --head --num-cpus 1 --port P` and `ray start --address 127.0.0.1:P --num-cpus 1 --temp-dir "
        "<its own>`, then `rlhpo collect --executor ray --address 127.0.0.1:P`; the nodes and the driver share "
        "`RAY_AUTH_MODE=token` and one `RAY_AUTH_TOKEN` (Ray 2.59+ asks for a token). Both stopped by PID after.",
        "",
        f"- Clean: {two.seconds:.1f}s, trained {two.trained} of {runs}, batches ran on nodes "
        f"{sorted(used)} (0: head), rows the same as local: {'yes' if two_same else '**no**'}.",
        f"- Fault: worker PID {killed[0][1] if killed else '-'} on node {killed[0][0] if killed else '-'} killed "
        f"(SIGKILL) while it trained a batch, with {killed[0][2] if killed else '-'} runs recorded; Ray ran that "
        f"batch again and the collect finished in {fault.seconds:.1f}s with trained {fault.trained} of {runs} (the "
        f"CLI counts each result it writes, so no run was written twice), {len(fault_rows[0])} runs in the store, "
        f"rows the same as local: {'yes' if fault_same else '**no**'}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
