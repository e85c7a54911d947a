"""rlhpo collect on Ray: the rows of local workers, a killed worker's batch run again and written once, Ctrl-C.

The tests that run Ray share one local instance (2 CPUs, no dashboard). Without Ray installed
they skip with one how-to line; ``RLHPO_REQUIRE_RAY=1`` makes that a failure (CI sets it in
``.ci/run``), as ``RLHPO_REQUIRE_DATA`` does for the real datasets. The missing-extra error needs
no Ray and always runs. The Ctrl-C test starts a Ray instance of its own: it is marked slow, and
``.ci/run`` runs it too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest
import yaml
from click.testing import CliRunner
from helpers import one_torch_thread, tiny_space_path  # noqa: F401 (an autouse fixture)
from test_bench import rows_but_seconds

import rlhpo.ray_executor
from rlhpo.agents.bench import BenchSettings, run_bench
from rlhpo.agents.tune import tune
from rlhpo.cli import main
from rlhpo.collect import CollectSettings, InstanceGroup, LocalExecutor, WorkItem, WorkResult, collect
from rlhpo.errors import RlhpoError
from rlhpo.ray_executor import RayExecutor, batch_size
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore, store_rows, stored_runs

REQUIRE_ENV = "RLHPO_REQUIRE_RAY"
INSTALL = "install it with pip install 'rlhpo[ray]'"
SETTINGS = CollectSettings(instances=[InstanceGroup(datasets=["digits"], n_train=[200], seeds=[0, 1])], configs=4)
RUNS = 8  # 2 tasks x 4 configs


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """A local Ray instance with 2 CPUs for this module; skipped (or failed) where Ray is missing."""
    try:
        import ray
    except ImportError:
        ray = None
    if ray is None:
        if os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"needs Ray, which is not installed, and {REQUIRE_ENV}=1; {INSTALL}", pytrace=False)
        pytest.skip(f"needs Ray; {INSTALL} ({REQUIRE_ENV}=1 makes this a failure)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    # The test module is no package the workers can import: send its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    return load_search_space(tiny_space_path(tmp_path_factory))  # 3 epochs at most: quick runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, space) -> tuple[list, list]:
    """The rows of the collect with 2 local worker processes (the default executor)."""
    path = tmp_path_factory.mktemp("local") / "s.sqlite"
    result = collect(SETTINGS, path, space=space, executor=LocalExecutor(2), progress=False)
    assert (result.trained, result.failed) == (RUNS, [])
    return store_rows(path)


def _key(item: WorkItem) -> str:
    return f"{item.task.key()} {item.config.key()}"


def test_batches_are_small_and_many_per_cpu():
    assert batch_size(8, 2) == 1  # fewer items than 16 batches per CPU: one item per task
    assert batch_size(64, 2) == 2
    assert batch_size(10_000, 2) == 8  # at most 8: a dead worker costs at most 8 reruns
    assert batch_size(10_000, 1000) == 1


def test_ray_records_the_rows_of_local_workers_and_the_cli_uses_it(ray_cluster, reference, space, tmp_path):
    path = tmp_path / "ray.sqlite"
    result = collect(SETTINGS, path, space=space, executor=RayExecutor(), progress=False)
    assert (result.trained, result.failed) == (RUNS, [])
    assert store_rows(path) == reference
    assert ray_cluster.is_initialized()  # someone else's instance: used, not shut down

    instances = tmp_path / "collect.yaml"
    instances.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"], "n_train": [150]}], "configs": 2}))
    cmd = ["collect", "--instances", str(instances), "--store", str(tmp_path / "cli.sqlite"), "--executor", "ray"]
    out = CliRunner().invoke(main, cmd)
    assert out.exit_code == 0, out.output
    assert "trained 2" in out.output


def test_a_cluster_address_that_does_not_answer_is_one_clear_error_at_once(ray_cluster):
    with pytest.raises(RlhpoError, match=r"Nothing answers at --address '127.0.0.1:1' .*ray start --head"):
        RayExecutor(address="127.0.0.1:1")
    with pytest.raises(RlhpoError, match=r"'auto' or HOST:PORT .* but got 'headnode'"):
        RayExecutor(address="headnode")


def test_workers_of_a_cluster_get_the_drivers_rlhpo_and_hugging_face_variables(ray_cluster, monkeypatch):
    # Set after the cluster started, so only the executor's runtime_env can bring them to its workers.
    monkeypatch.setenv("RLHPO_CACHE_DIR", "/elsewhere/cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept here")
    names = ["RLHPO_CACHE_DIR", "HF_HUB_OFFLINE", "UNRELATED_VARIABLE"]
    assert Counter(RayExecutor().map_unordered(os.getenv, names)) == Counter(["/elsewhere/cache", "1", None])


@dataclass(frozen=True)
class KillOnce:
    """``fn``, but the first time the run ``victim`` starts, its worker process dies (SIGKILL).

    Every start is logged to ``attempts`` (the run and the worker's PID); ``marker`` is made just
    before the kill, so the batch's next attempt trains the victim.
    """

    fn: Callable[[WorkItem], WorkResult]
    victim: str
    marker: str
    attempts: str

    def __call__(self, item: WorkItem) -> WorkResult:
        with open(self.attempts, "a") as f:
            f.write(f"{_key(item)}\t{os.getpid()}\n")
        if _key(item) == self.victim and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.fn(item)


class KillingRayExecutor(RayExecutor):
    """A :class:`RayExecutor` whose worker dies once in the middle of a batch; it counts what reaches the driver."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.tmp = tmp
        self.yielded: list[str] = []
        self.batches: list[list[str]] = []

    def map_unordered(self, fn: Callable, items: Sequence[WorkItem]) -> Iterator[WorkResult]:
        size = batch_size(len(items), 2)
        self.batches = [[_key(i) for i in items[k : k + size]] for k in range(0, len(items), size)]
        victim = self.batches[0][1]  # the second run of the first batch: the first has trained by then
        kill = KillOnce(fn, victim, str(self.tmp / "killed"), str(self.tmp / "attempts.tsv"))
        for result in super().map_unordered(kill, items):
            self.yielded.append(_key(result.item))
            yield result


def test_a_killed_worker_has_its_batch_run_again_and_no_run_is_written_twice(
    ray_cluster, reference, space, tmp_path, monkeypatch
):
    monkeypatch.setattr(rlhpo.ray_executor, "BATCHES_PER_CPU", 1)  # batches of 4 runs: kill in the middle of one
    path = tmp_path / "ray.sqlite"
    executor = KillingRayExecutor(tmp_path)
    result = collect(SETTINGS, path, space=space, executor=executor, progress=False)
    assert (result.trained, result.failed) == (RUNS, [])
    assert [len(b) for b in executor.batches] == [4, 4]
    killed_pid = int((tmp_path / "killed").read_text())
    attempts = Counter(line.split("\t")[0] for line in (tmp_path / "attempts.tsv").read_text().splitlines())
    first, victim = executor.batches[0][:2]
    assert attempts[first] == 2 and attempts[victim] == 2  # trained, then lost with its worker: run again
    assert sum(attempts.values()) == RUNS + 2
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)  # that worker is gone
    # Each run reached the driver once, and the store holds the rows of the uninterrupted collect.
    assert sorted(executor.yielded) == sorted(k for b in executor.batches for k in b)
    assert store_rows(path) == reference
    with CurveStore(path) as store:  # were a run to come back twice, the store keeps the first
        run = store.runs(first.split(" ")[0], 0)[0]
        assert not store.put_run(first.split(" ")[0], run.config, 0, run.curve)
        assert store.count()["runs"] == RUNS


def test_a_bench_on_ray_writes_the_rows_of_the_sequential_bench(ray_cluster, tmp_path_factory, data_dir, tmp_path):
    tiny = {
        "store": str(helpers.tiny_store(tmp_path_factory)),
        "policy": str(helpers.tiny_policy_run(tmp_path_factory)),
        "space": str(helpers.tiny_space_path(tmp_path_factory)),
    }
    settings = BenchSettings(
        tasks=("trec",), methods=("ppo", "tpe", "top_k", "learned_list"), budgets=(1.0, 4.0), seeds=2, **tiny
    )
    here = run_bench(settings, tmp_path / "here")
    on_ray = run_bench(dataclasses.replace(settings, executor="ray"), tmp_path / "ray")
    assert on_ray["episodes"] == here["episodes"] == 16 and on_ray["report"] == here["report"]
    assert rows_but_seconds(tmp_path / "ray") == rows_but_seconds(tmp_path / "here")
    assert (tmp_path / "ray" / "anytime.csv").read_text() == (tmp_path / "here" / "anytime.csv").read_text()
    assert ray_cluster.is_initialized()  # someone else's instance: used, not shut down


def test_tune_with_workers_on_ray_plays_the_trials_of_local_workers(ray_cluster, tmp_path_factory, data_dir, tmp_path):
    policy = helpers.tiny_policy_run(tmp_path_factory) / "policy.zip"
    local, on_ray = (
        tune(helpers.DIGITS, budget_fte=3.0, policy=policy, workers=2, executor=executor, runs_dir=tmp_path / executor)
        for executor in ("local", "ray")
    )
    same = ("config", "epochs", "paid_epochs", "score", "incumbent")
    assert len(on_ray["trials"]) >= 3
    assert [{k: t[k] for k in same} for t in on_ray["trials"]] == [{k: t[k] for k in same} for t in local["trials"]]
    assert (on_ray["config"], on_ray["test_accuracy"]) == (local["config"], local["test_accuracy"])


def test_without_ray_the_ray_executor_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    instances = tmp_path / "collect.yaml"
    instances.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"], "n_train": [150]}], "configs": 2}))
    store = tmp_path / "s.sqlite"
    out = CliRunner().invoke(
        main, ["collect", "--instances", str(instances), "--store", str(store), "--executor", "ray"]
    )
    assert out.exit_code == 1, out.output
    assert "--executor ray needs Ray, which is not installed" in out.output
    assert "pip install 'rlhpo[ray]'" in out.output and "Traceback" not in out.output
    assert not store.exists()  # refused before anything was recorded
    out = CliRunner().invoke(
        main, ["collect", "--instances", str(instances), "--store", str(store), "--address", "auto"]
    )
    assert out.exit_code == 1 and "--address is for --executor ray" in out.output
    for command in (["bench", "--out", str(tmp_path / "bench")], ["tune", "--workers", "2"]):
        out = CliRunner().invoke(main, [*command, "--executor", "ray"], env={"RLHPO_RUNS_DIR": str(tmp_path / "runs")})
        assert out.exit_code == 1, out.output
        assert "--executor ray needs Ray, which is not installed" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "bench").exists() and not (tmp_path / "runs").exists()  # refused before any run folder


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        try:
            children = Path(f"/proc/{todo[0]}/task/{todo[0]}/children").read_text().split()
        except FileNotFoundError:
            children = []
        todo = todo[1:] + [int(c) for c in children]
        out += [int(c) for c in children]
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow  # a Ray instance of its own starts in ~15 s; .ci/run runs it all the same
def test_ctrl_c_stops_the_ray_instance_it_started_keeps_finished_runs_and_a_rerun_resumes(ray_cluster, tmp_path):
    instances = tmp_path / "collect.yaml"
    group = {"datasets": ["digits"], "n_train": [300], "seeds": [0, 1]}
    instances.write_text(yaml.safe_dump({"instances": [group], "configs": 6}))
    settings = CollectSettings(instances=[InstanceGroup(**group)], configs=6)
    reference, path = tmp_path / "reference.sqlite", tmp_path / "ray.sqlite"
    collect(settings, reference, executor=RayExecutor(), progress=False)  # on the module's instance
    cmd = [sys.executable, "-c", "from rlhpo.cli import main; main()", "collect", "--instances", str(instances)]
    cmd += ["--store", str(path), "--executor", "ray", "--workers", "2"]
    # Its own session, SIGINT to the whole group: what a terminal's Ctrl-C does to a foreground job.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while stored_runs(path) < 2:
            assert proc.poll() is None, f"collect ended before it was interrupted: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ray_processes = _descendants(proc.pid)  # its Ray instance: GCS, raylet, workers
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        stderr = proc.stderr.read().decode()
        assert code == 130, stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    assert "run the same command again (finished runs are kept)" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in ray_processes if _alive(p)]
    assert ray_processes and not left, f"the Ray instance outlived its collect: {left}"
    kept = stored_runs(path)
    assert 2 <= kept < 12
    again = collect(settings, path, executor=RayExecutor(), progress=False)
    assert (again.skipped, again.trained, again.failed) == (kept, 12 - kept, [])
    assert store_rows(path) == store_rows(reference)
