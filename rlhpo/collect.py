"""``rlhpo collect``: record the curves of one matched design of configs on many task instances.

Before the design, each instance that leaves the family to the config records its modality's
*recipes* (``recipes`` in ``configs/collect.yaml``): known-good configs from the literature that a
random design rarely holds, so that the learned list and the policy can choose them.

Every config is trained at the largest epochs choice, so every smaller fidelity is recorded too
(the store answers ``k`` epochs from a run's first ``k``). Work runs in worker processes behind
the small :class:`Executor` interface (local processes by default, or Ray tasks:
:mod:`rlhpo.ray_executor`). The parent process writes each finished run to the store in one
transaction, so a kill at any moment loses only the runs in flight, and running the same
command again skips every run already recorded. A collect holds the store's lock for its whole
run, so a second collect on the same store is refused rather than training the same runs again.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from rlhpo.errors import RlhpoError, unknown
from rlhpo.models import FAMILIES
from rlhpo.settings import from_dict, read_yaml, shipped_file
from rlhpo.space import HYPERPARAMETERS, Config, SearchSpace, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.loader import LoadedTasks, family_before_loading
from rlhpo.tasks.sampler import TaskSampler
from rlhpo.tasks.task import MODALITIES, Task, TaskData
from rlhpo.training import Curve

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class InstanceGroup:
    """Task instances: every combination of the listed datasets, sizes, families and seeds, or ``draw`` of them.

    With ``draw``, the group is a distribution, not a list: :class:`~rlhpo.tasks.sampler.TaskSampler`
    draws ``draw`` instances from it (each dataset and each size equally often, a random class
    subset with probability ``p_subset``, a random task seed), deterministically from the
    collect's seed.
    """

    datasets: list[str]
    n_train: list[int | None] = field(default_factory=lambda: [None])  # None: the whole training set
    families: list[str | None] = field(default_factory=lambda: [None])  # None: left to the config
    seeds: list[int] = field(default_factory=lambda: [0])  # the task seed: validation split, subsample
    configs: int | None = None  # configs per instance of this group; None: the settings' number
    max_length: int | None = None  # text only: keep the first max_length tokens (cheap instances)
    # Families each config is recorded with, on instances that leave the family to the config
    # (families: [null]); None: the family is the design's (design_configs), or the task's own.
    config_families: list[str] | None = None
    # Deeper prefixes for cheap families: {family: N} also records the configs of that family among
    # the design's first N (N above ``configs``); the other families stop at ``configs``.
    family_configs: dict[str, int] | None = None
    draw: int | None = None  # instances drawn from the group (seeds ignored); None: every combination
    p_subset: float = 0.0  # with draw: the probability that an instance keeps a random class subset

    def tasks(self, rng: np.random.Generator | None = None) -> list[Task]:
        """The group's instances; a drawn group needs ``rng``."""
        if self.draw is None:
            return [
                Task(dataset=d, family=f, n_train=n, seed=s, max_length=self.max_length)
                for d in self.datasets
                for n in self.n_train
                for f in self.families
                for s in self.seeds
            ]
        if rng is None:
            raise RlhpoError("A group that draws its instances needs a random generator.")
        open_family = None in self.families
        listed = {} if open_family else {d: tuple(self.families) for d in self.datasets}
        sampler = TaskSampler(tuple(self.datasets), listed, tuple(self.n_train), self.p_subset)
        drawn = sampler.draw(self.draw, rng)
        return [t.replace(family=None if open_family else t.family, max_length=self.max_length) for t in drawn]


@dataclass(frozen=True)
class CollectSettings:
    """What ``rlhpo collect`` records (``configs/collect.yaml``)."""

    instances: list[InstanceGroup]
    configs: int = 96  # configs per task instance, the default config included
    seed: int = 0  # seeds the config design (one design, shared by every instance) and the drawn instances
    train_seed: int = 0  # training seed of every run; HPOEnv's train_seed must match to replay them
    # Every ``noise_every``-th config of the design (the default first) is also trained with
    # ``train_seed + 1``: the seed-to-seed noise floor. None: one seed only.
    noise_every: int | None = None
    # Known-good configs, by modality, recorded on every instance of that modality that leaves the
    # family to the config, before the design: each a mapping of the hyperparameters but epochs,
    # and the family (:meth:`recipe_configs`).
    recipes: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in [self.configs] + [g.configs for g in self.instances if g.configs is not None]:
            if n < 1:
                raise RlhpoError(f"collect needs at least 1 config per task, but got configs={n}.")
        if self.noise_every is not None and self.noise_every < 1:
            raise RlhpoError(f"noise_every must be at least 1 (or null), but got noise_every={self.noise_every}.")

    def groups(self) -> Iterator[tuple[InstanceGroup, list[Task]]]:
        """Each group with its instances; drawn groups draw from ``(seed, group index)``."""
        for i, group in enumerate(self.instances):
            yield group, group.tasks(np.random.default_rng([self.seed, i]))

    def plan(self, datasets: Sequence[str] | None = None) -> dict[Task, int]:
        """Each task instance, in file order, with its number of configs; ``datasets`` keeps only those.

        A task listed by several groups takes the largest number.
        """
        out: dict[Task, int] = {}
        for group, tasks in self.groups():
            for task in tasks:
                out[task] = max(out.get(task, 0), group.configs or self.configs)
        if datasets:
            known = {t.dataset for t in out}
            for d in datasets:
                if d not in known:
                    listed = ", ".join(sorted(known))
                    raise RlhpoError(f"Dataset {d!r} is not in the collect settings; they list {listed}.")
            out = {t: n for t, n in out.items() if t.dataset in datasets}
        return out

    def tasks(self, datasets: Sequence[str] | None = None) -> list[Task]:
        """The task instances, in file order, without repeats; ``datasets`` keeps only those."""
        return list(self.plan(datasets))

    def family_depths(self, datasets: Sequence[str] | None = None) -> dict[Task, dict[str, int]]:
        """Per task instance, the families recorded beyond its ``configs`` and how far (``family_configs``).

        A task listed by several groups takes the largest number for each family.
        """
        out: dict[Task, dict[str, int]] = {}
        for group, tasks in self.groups():
            for task in tasks:
                if group.family_configs and (not datasets or task.dataset in datasets):
                    depths = out.setdefault(task, {})
                    for family, n in group.family_configs.items():
                        depths[family] = max(depths.get(family, 0), n)
        return out

    def families(self) -> dict[Task, tuple[str | None, ...]]:
        """The families each task instance records every config with; ``(None,)``: its own family."""
        out: dict[Task, tuple[str | None, ...]] = {}
        for group, tasks in self.groups():
            for task in tasks:
                listed = tuple(group.config_families) if group.config_families else (None,)
                out[task] = tuple(dict.fromkeys(out.get(task, ()) + listed))
        return out

    def recipe_configs(self, space: SearchSpace, modality: str) -> list[Config]:
        """The recipes of ``modality`` as configs at the largest epochs; one outside ``space`` is an error."""
        out = []
        names = [h for h in HYPERPARAMETERS if h != "epochs"] + ["family"]
        for i, raw in enumerate(self.recipes.get(modality, ())):
            where = f"recipes.{modality}[{i}]"
            if not isinstance(raw, dict) or sorted(raw) != sorted(names):
                raise RlhpoError(f"{where} must give exactly {', '.join(names)}, but got {raw!r}.")
            config = Config(epochs=space.max_epochs, **raw)
            try:
                space.indices(config, modality)
            except RlhpoError as e:
                raise RlhpoError(f"{where} is not in the search space for {modality}: {e}") from None
            out.append(config)
        return out

    def with_configs(self, n: int) -> CollectSettings:
        """The same instances with ``n`` configs each (the CLI's ``--configs``)."""
        groups = [dataclasses.replace(g, configs=None) for g in self.instances]
        return dataclasses.replace(self, instances=groups, configs=n)


def load_collect_settings(path: str | Path | None = None) -> CollectSettings:
    """Read the collect settings (the shipped ``configs/collect.yaml`` by default)."""
    where = str(path or "configs/collect.yaml")
    data = read_yaml(path or shipped_file("configs/collect.yaml"))
    groups = data.get("instances")
    if not isinstance(groups, list) or not groups:
        raise RlhpoError(f"{where} needs 'instances': a list of groups with datasets, n_train, families, seeds.")
    parsed = []
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise RlhpoError(f"{where}: instances[{i}] must be a mapping, but got {g!r}.")
        group = from_dict(InstanceGroup, g, f"{where} instances[{i}]")
        for name in ("datasets", "n_train", "families", "seeds"):
            value = getattr(group, name)
            if not isinstance(value, list) or not value:
                raise RlhpoError(f"{where}: instances[{i}].{name} must be a non-empty list, but got {value!r}.")
        if group.draw is not None and group.draw < 1:
            raise RlhpoError(f"{where}: instances[{i}].draw must be at least 1 (or absent), but got {group.draw!r}.")
        if not 0.0 <= group.p_subset <= 1.0 or (group.p_subset and group.draw is None):
            raise RlhpoError(
                f"{where}: instances[{i}].p_subset must be between 0 and 1, on a group that draws its instances, "
                f"but got p_subset={group.p_subset!r} with draw={group.draw!r}."
            )
        if group.config_families is not None and (not group.config_families or group.families != [None]):
            raise RlhpoError(
                f"{where}: instances[{i}].config_families must be a non-empty list on instances that leave the "
                f"family to the config (families: [null]), but got config_families={group.config_families!r} "
                f"with families={group.families!r}."
            )
        if group.family_configs is not None:
            known = set(FAMILIES)
            if not isinstance(group.family_configs, dict) or not all(
                f in known and isinstance(n, int) and n >= 1 for f, n in group.family_configs.items()
            ):
                raise RlhpoError(
                    f"{where}: instances[{i}].family_configs must map model families ({', '.join(sorted(known))}) "
                    f"to a number of design configs (at least 1), but got {group.family_configs!r}."
                )
        parsed.append(group)
    recipes = data.get("recipes") or {}
    if not isinstance(recipes, dict) or not all(m in MODALITIES and isinstance(v, list) for m, v in recipes.items()):
        raise RlhpoError(
            f"{where}: recipes must map a modality ({', '.join(MODALITIES)}) to a list of configs, but got {recipes!r}."
        )
    return from_dict(CollectSettings, {**data, "instances": parsed, "recipes": recipes}, where)


# ------------------------------------------------------------- config design


def design_configs(space: SearchSpace, n: int, seed: int, modality: str | None = None) -> list[Config]:
    """The matched design: ``n`` distinct configs at the largest epochs, the default first, then Sobol.

    After the default config come the points of one scrambled Sobol sequence
    (``scipy.stats.qmc.Sobol``, seeded) over the unit cube of the eight hyperparameters but
    epochs, plus one coordinate for the family; coordinate ``u`` of a hyperparameter with ``k``
    choices picks choice ``floor(u * k)``. The family coordinate picks among the space's families
    of ``modality`` (for an instance that leaves the family to the config; the default config
    takes the modality's default family); ``modality=None`` leaves the family to the task.

    Every instance walks the same sequence, so instances of one modality record the same
    configs in the same order (a "matched" design, as in HPO-B and PD1): an instance with ``n``
    configs records a prefix of one with more, raising ``configs`` only adds runs, and every
    instance answers every config of the common prefix exactly. Duplicates after rounding are
    skipped.
    """
    from scipy.stats import qmc

    dims = [h for h in HYPERPARAMETERS if h != "epochs"]
    families = space.family_choices(modality) if modality is not None else None
    n_distinct = math.prod(len(space.choices[h]) for h in dims) * len(families or [None])
    if n > n_distinct:
        raise RlhpoError(f"The search space holds only {n_distinct} distinct configs, but {n} were asked.")
    default = (space.default_config(modality) if families else space.default).with_epochs(space.max_epochs)
    out = {default.key(): default}
    m = 7
    while len(out) < n:
        # The first 2**m points of a seeded scrambled Sobol sequence are a prefix of the first 2**(m+1).
        points = qmc.Sobol(d=len(dims) + 1, scramble=True, seed=seed).random_base2(m)
        for row in points:
            values = {
                h: space.choices[h][min(int(u * len(space.choices[h])), len(space.choices[h]) - 1)]
                for h, u in zip(dims, row)
            }
            family = families[min(int(row[-1] * len(families)), len(families) - 1)] if families else None
            config = Config(epochs=space.max_epochs, family=family, **values)
            out.setdefault(config.key(), config)
            if len(out) == n:
                break
        m += 1
    return list(out.values())


# ------------------------------------------------------------------- executor


class Executor(Protocol):
    """Runs independent work items, here or elsewhere (local processes, or Ray tasks: :mod:`rlhpo.ray_executor`)."""

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """Yield ``fn(item)`` for every item, in completion order. ``fn`` must be picklable."""
        ...

    def shutdown(self) -> None:
        """Stop at once: cancel what has not started, stop what is running."""
        ...


class InlineExecutor:
    """Runs items one after the other in this process (for debugging and small jobs).

    Like a worker process, it trains with one torch thread (restored afterwards), so its
    curves are the same as :class:`LocalExecutor`'s.
    """

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for item in items:
                yield fn(item)
        finally:
            torch.set_num_threads(threads)

    def shutdown(self) -> None:
        pass


class LocalExecutor:
    """Runs items in ``workers`` local processes (spawned; one torch thread each).

    Workers ignore SIGINT (the parent handles Ctrl-C and stops them) and exit by themselves
    when the parent dies, so a killed ``collect`` leaves no orphan training on. With ``keep``,
    workers outlive a ``map_unordered`` that finished (and keep their loaded tasks) until
    :meth:`shutdown`: ``tune --workers`` maps a round at a time.
    """

    def __init__(self, workers: int, keep: bool = False) -> None:
        if workers < 1:
            raise RlhpoError(f"workers must be at least 1, but got {workers=}.")
        self.workers = workers
        self.keep = keep
        self._pool: cf.ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        if not items:
            return
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers if self.keep else min(self.workers, len(items)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
        finished = False
        try:
            futures = [self._pool.submit(fn, item) for item in items]
            for future in cf.as_completed(futures):
                yield future.result()
            finished = True
        finally:
            if not (self.keep and finished):  # an error or Ctrl-C stops the workers all the same
                self.shutdown()

    def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop running work before Python 3.14.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)


EXECUTORS = ("local", "ray")


def make_executor(kind: str = "local", workers: int = 1, address: str | None = None, keep: bool = False) -> Executor:
    """The executor ``rlhpo collect --executor`` names: ``workers`` local processes, or Ray tasks.

    ``ray`` without ``address`` starts a local Ray instance with ``workers`` CPUs; with it
    (``auto`` or ``HOST:PORT``), it connects to that cluster and uses all its CPUs. ``keep``:
    the workers (or the Ray connection) last from one ``map_unordered`` to the next, until ``shutdown``.
    """
    if kind == "ray":
        from rlhpo.ray_executor import RayExecutor

        return RayExecutor(address=address, num_cpus=workers, keep=keep)
    if kind != "local":
        raise unknown("executor", kind, EXECUTORS)
    if address is not None:
        raise RlhpoError(f"--address is for --executor ray, but got --executor {kind} with --address {address!r}.")
    return LocalExecutor(workers, keep=keep)


def _init_worker(parent_pid: int) -> None:
    import torch

    torch.set_num_threads(1)  # K workers on K cores: no oversubscription, repeatable numerics
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


# ---------------------------------------------------------------- the work


@dataclass(frozen=True)
class WorkItem:
    task: Task
    config: Config
    seed: int
    data_dir: str | None = None


@dataclass(frozen=True)
class WorkResult:
    item: WorkItem
    curve: Curve | None
    seconds: float
    error: str | None = None


_LOADED: dict[str | None, LoadedTasks] = {}  # this worker process's loaded tasks, by data folder


def load_in_worker(task: Task, data_dir: str | None) -> TaskData:
    """A task loaded in this worker process, cached (collect's and ``tune --workers``' trainings)."""
    if data_dir not in _LOADED:
        _LOADED[data_dir] = LoadedTasks(data_dir)  # items go round-robin over the tasks: it keeps 16
    return _LOADED[data_dir].get(task)


def train_item(item: WorkItem) -> WorkResult:
    """Train one config on one task (in a worker, on CPU); an exception becomes the result's error."""
    from rlhpo.training import train

    started = time.perf_counter()
    try:
        data = load_in_worker(item.task, item.data_dir)
        curve = train(data, item.config, seed=item.seed)
        return WorkResult(item, curve, time.perf_counter() - started)
    except Exception as e:  # one bad run must not stop an hour of collecting; it is retried next time
        text = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        return WorkResult(item, None, time.perf_counter() - started, error=text)


def task_record(task: Task, data_dir: str | Path | None = None) -> TaskRecord:
    """Load a task and describe it for the store (:meth:`TaskRecord.from_data`)."""
    from rlhpo.tasks import load_task

    return TaskRecord.from_data(load_task(task, data_dir=data_dir))


def record_tasks(store: CurveStore, plan: dict[Task, int], data_dir: str | Path | None = None) -> dict[Task, Task]:
    """Put every planned task in the store; return each planned task's task as recorded.

    A task is recorded as loaded (``data.task``): one that asks for more training examples than
    its dataset holds is recorded with the size it got, and its runs go under that key. Loading
    here checks every task before any worker starts.

    A recorded task whose family is not the one it resolves to today (its dataset's default family
    changed since) is described again, so that its ``family_*`` meta-features say what a live task
    of it says; its runs are kept (each names its family). One whose runs name no family (they
    trained the recorded family) is left as it is.
    """
    out: dict[Task, Task] = {}
    for task in plan:
        record = store.task(task.key())
        family = family_before_loading(task)
        if record is not None and family is not None and record.family != family:
            if any(r.config.family is None for r in store.runs(record.key, 0)):  # they trained record.family
                log.warning("task %s was described with family %s and loads with %s today; its runs name no "
                            "family, so it is left as it is", task.key(), record.family, family)  # fmt: skip
            else:
                log.warning("task %s was described with family %s; it loads with %s today: describing it again",
                            task.key(), record.family, family)  # fmt: skip
                record = None
        if record is None:
            log.info("describing task %s", task.key())
            record = task_record(task, data_dir)
            store.put_task(record)
        out[task] = record.task
    return out


def copy_pinned_runs(
    store: CurveStore,
    designs: dict[Task, list[Config]],
    seed: int,
    families: dict[Task, tuple[str | None, ...]],
) -> int:
    """Copy the runs that an open-family instance shares with the same instance pinned to a family.

    ``trec`` with its family left open, trained with a gru config, is the very training that
    ``trec`` pinned to gru does with that config (the same data, config and seed): when the
    pinned instance has recorded it, it is copied, not trained again. Returns how many were.
    """
    copied = 0
    for task, configs in designs.items():
        if task.family is not None:
            continue
        for family in families.get(task, (None,)):
            twin = task.replace(family=family).key() if family else None
            if twin is None or store.task(twin) is None:
                continue
            for config in configs:
                run = config.with_family(family)
                if store.has_run(task.key(), run, seed, run.epochs):
                    continue
                stored = store.get_run(twin, config, seed)
                if stored is not None and stored.horizon >= config.epochs:
                    store.put_run(task.key(), run, seed, stored.curve, max_epochs=stored.max_epochs)
                    copied += 1
    return copied


def plan_items(
    store: CurveStore,
    designs: dict[Task, list[Config]],
    seed: int,
    data_dir: str | None = None,
    families: dict[Task, tuple[str | None, ...]] | None = None,
    noise_every: int | None = None,
    only_families: Sequence[str] | None = None,
    counts: dict[Task, int] | None = None,
    family_depths: dict[Task, dict[str, int]] | None = None,
) -> tuple[list[WorkItem], set[tuple[str, str, int]]]:
    """The runs still to record, breadth first across tasks, and those recorded already (task key, config key, seed).

    ``designs`` maps each task to its configs (a prefix of the design), each recorded with every
    family of ``families[task]`` (default: the config's own). Items go round-robin over the
    tasks (config 1 of every task, then config 2, ...), so a collect stopped at any moment leaves
    every instance with about the same number of configs, and the expensive tasks spread over
    the whole collect. Every ``noise_every``-th config is also trained with seed ``seed + 1``.
    ``only_families``: plan only the runs that train one of these families (the config's, else
    the task's as recorded); the design is the same, the other runs are left for later.
    ``counts[task]``: the task records every family's configs among the first ``counts[task]``
    of its design (default: all of it), and beyond them only those of the families in
    ``family_depths[task]``, each up to its own number.
    """
    items: list[WorkItem] = []
    recorded: set[tuple[str, str, int]] = set()
    needs_family = only_families is not None or family_depths
    own_family = {task: store.task(task.key()).family for task in designs} if needs_family else {}
    for i in range(max((len(c) for c in designs.values()), default=0)):
        seeds = (seed, seed + 1) if noise_every and i % noise_every == 0 else (seed,)
        for task, configs in designs.items():
            if i >= len(configs):
                continue
            deeper = i >= (counts or {}).get(task, len(configs))
            for family in (families or {}).get(task, (None,)):
                run = configs[i].with_family(family) if family else configs[i]
                run_family = run.family or own_family.get(task)
                if only_families is not None and run_family not in only_families:
                    continue
                if deeper and i >= (family_depths or {}).get(task, {}).get(run_family, 0):
                    continue
                for run_seed in seeds:
                    if store.has_run(task.key(), run, run_seed, run.epochs):
                        recorded.add((task.key(), run.key(), run_seed))
                    else:
                        items.append(WorkItem(task=task, config=run, seed=run_seed, data_dir=data_dir))
    return items, recorded


def task_designs(
    store: CurveStore,
    plan: dict[Task, int],
    space: SearchSpace,
    seed: int,
    families: dict[Task, tuple[str | None, ...]],
) -> dict[Task, list[Config]]:
    """Each recorded task's configs: the first ``plan[task]`` of the design for its modality.

    An instance that leaves the family to the config, with no ``config_families``, takes the
    family from the design (:func:`design_configs`); any other records configs without one.
    """
    n = max(plan.values(), default=0)
    by_modality: dict[str | None, list[Config]] = {}
    out = {}
    for task, count in plan.items():
        open_design = task.family is None and families.get(task, (None,)) == (None,) and space.families
        modality = store.task(task.key()).modality if open_design else None
        if modality not in by_modality:
            by_modality[modality] = design_configs(space, n, seed, modality)
        out[task] = by_modality[modality][:count]
    return out


def recipe_designs(
    store: CurveStore,
    recipes: dict[str, list[Config]],
    families: dict[Task, tuple[str | None, ...]],
) -> dict[Task, list[Config]]:
    """Each recorded task that leaves the family to the config (no ``config_families``), with its
    modality's ``recipes`` (:meth:`CollectSettings.recipe_configs`); tasks of modalities without any are left out."""
    out = {}
    for task, listed in families.items():
        if task.family is None and listed == (None,):
            modality = store.task(task.key()).modality
            if recipes.get(modality):
                out[task] = recipes[modality]
    return out


@dataclass(frozen=True)
class CollectResult:
    tasks: int
    runs: int  # planned: the configs of every task
    trained: int
    skipped: int  # already recorded before this call
    failed: list[str]  # "task_key config_key: error" per run that raised
    seconds: float
    store: str


def record_runs(
    store: CurveStore, items: Sequence[WorkItem], executor: Executor, what: str, skipped: int, progress: bool
) -> tuple[int, list[str]]:
    """Train ``items`` on ``executor`` and put each finished run in ``store`` as it comes, with a
    progress bar; return how many were written and a line per failed run. Ctrl-C keeps every run
    written so far, stops the workers and re-raises."""
    from tqdm import tqdm

    trained, failed = 0, []
    bar = tqdm(total=len(items), desc=what, unit="run", file=sys.stderr, disable=not progress, smoothing=0.0)
    if skipped:
        bar.set_postfix_str(f"{skipped} already recorded", refresh=False)
    try:
        for result in executor.map_unordered(train_item, items):
            item = result.item
            if result.curve is None:
                failed.append(f"{item.task.key()} {item.config.key()}: {result.error}")
                log.warning("run failed on %s with %s: %s", item.task.key(), item.config, result.error)
            else:
                store.put_run(item.task.key(), item.config, item.seed, result.curve)
                trained += 1
            bar.update(1)
    except KeyboardInterrupt:
        executor.shutdown()
        log.warning("%s interrupted: %d runs written to %s; run the same command to resume", what, trained, store.path)
        raise
    finally:
        bar.close()
    return trained, failed


def collect(
    settings: CollectSettings,
    store_path: str | Path,
    *,
    workers: int = 1,
    datasets: Sequence[str] | None = None,
    space: SearchSpace | None = None,
    data_dir: str | Path | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    only_families: Sequence[str] | None = None,
) -> CollectResult:
    """Record the recipes, then a prefix of the matched config design, on every task instance of ``settings``.

    ``only_families`` records only the design's runs of these families (e.g. the cheap ones
    first, or a family whose runs were dropped); a later collect without it records the rest.

    Resumable: runs already in the store are skipped. Ctrl-C stops the workers, keeps every run
    written so far, and re-raises :class:`KeyboardInterrupt`. One collect at a time per store: a
    second one on the same store raises :class:`RlhpoError` at once (:meth:`CurveStore.exclusive`).
    """
    started = time.perf_counter()
    space = space or load_search_space()
    recipes = {m: settings.recipe_configs(space, m) for m in settings.recipes}  # a bad one fails before any training
    plan = settings.plan(datasets)
    depths = settings.family_depths(datasets)
    data_dir_text = str(data_dir) if data_dir is not None else None
    executor = executor or LocalExecutor(workers)
    families = settings.families()
    with CurveStore(store_path) as store, store.exclusive():  # one collect per store: no run trained twice
        recorded = record_tasks(store, plan, data_dir)
        planned: dict[Task, int] = {}
        recorded_depths: dict[Task, dict[str, int]] = {}
        recorded_families: dict[Task, tuple[str | None, ...]] = {}
        for task, n in plan.items():
            as_recorded = recorded[task]
            planned[as_recorded] = max(planned.get(as_recorded, 0), n)
            for family, depth in depths.get(task, {}).items():
                deepest = recorded_depths.setdefault(as_recorded, {})
                deepest[family] = max(deepest.get(family, 0), depth)
            recorded_families[as_recorded] = tuple(
                dict.fromkeys(recorded_families.get(as_recorded, ()) + families[task])
            )
        plan = planned
        lengths = {task: max([n, *recorded_depths.get(task, {}).values()]) for task, n in plan.items()}
        designs = task_designs(store, lengths, space, settings.seed, recorded_families)
        copied = copy_pinned_runs(store, designs, settings.train_seed, recorded_families)
        if copied:
            log.info("collect: %d runs copied from the same instances pinned to their family", copied)
        items, recorded = plan_items(
            store,
            designs,
            settings.train_seed,
            data_dir_text,
            recorded_families,
            settings.noise_every,
            only_families,
            counts=plan,
            family_depths=recorded_depths,
        )
        recipe_items, recipes_recorded = plan_items(
            store,
            recipe_designs(store, recipes, recorded_families),
            settings.train_seed,
            data_dir_text,
            only_families=only_families,
        )
        # A recipe that is also a design config trains once, as a recipe.
        planned_recipes = {(i.task, i.config.key(), i.seed) for i in recipe_items}
        items = recipe_items + [i for i in items if (i.task, i.config.key(), i.seed) not in planned_recipes]
        skipped = len(recorded | recipes_recorded)  # a recorded recipe that is also a design config counts once
        log.info(
            "collect: %d tasks, %d runs; %d recorded, %d to train", len(plan), skipped + len(items), skipped, len(items)
        )
        trained, failed = record_runs(store, items, executor, "collect", skipped, progress)
    return CollectResult(
        tasks=len(plan),
        runs=skipped + len(items),
        trained=trained,
        skipped=skipped,
        failed=failed,
        seconds=time.perf_counter() - started,
        store=str(store_path),
    )


def retrain_family(
    source: str | Path,
    out: str | Path,
    family: str,
    *,
    workers: int = 1,
    data_dir: str | Path | None = None,
    executor: Executor | None = None,
    progress: bool = True,
) -> CollectResult:
    """Write ``out``: the store ``source`` with every run of ``family`` trained again.

    For a store whose collect plan is gone (e.g. the shipped meta-dataset) after ``family``'s
    model changed: each of its runs is trained again on the same task instance with the same
    config, seed and epochs, and its task instance is described again as loaded today; every other
    run and task is copied as it is. ``source`` is only read. The
    first call creates ``out`` (a merge of ``source`` without the family's runs); a call on an
    existing ``out`` resumes, training the family's runs of ``source`` that ``out`` lacks, so
    Ctrl-C loses only the runs in flight.
    """

    from rlhpo.store import merge_stores

    started = time.perf_counter()
    out = Path(out)
    with CurveStore(source, readonly=True) as src:
        runs = src.family_runs(family)
        tasks = {key: src.task(key) for key in {key for key, _, _ in runs}}
    if not out.exists():
        merge_stores([source], out)
        with CurveStore(out) as fresh:
            fresh.drop_family(family)
    executor = executor or LocalExecutor(workers)
    data_dir_text = str(data_dir) if data_dir is not None else None
    with CurveStore(out) as store, store.exclusive():
        for record in tasks.values():  # described as loaded today (e.g. a changed default family's one-hot)
            fresh = task_record(record.task, data_dir)
            if fresh.key != record.key:
                raise RlhpoError(f"Task {record.key!r} now loads as {fresh.key!r}; its runs cannot be trained again.")
            store.put_task(fresh)
        items = [
            WorkItem(task=tasks[key].task, config=config, seed=seed, data_dir=data_dir_text)
            for key, config, seed in runs
            if not store.has_run(key, config, seed, config.epochs)
        ]
        log.info("retrain %s: %d runs in %s, %d to train into %s", family, len(runs), source, len(items), out)
        trained, failed = record_runs(store, items, executor, f"retrain {family}", len(runs) - len(items), progress)
    return CollectResult(
        tasks=len(tasks),
        runs=len(runs),
        trained=trained,
        skipped=len(runs) - len(items),
        failed=failed,
        seconds=time.perf_counter() - started,
        store=str(out),
    )
