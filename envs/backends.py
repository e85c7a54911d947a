"""Where HPOEnv's trials come from: trained now (``live``) or looked up (``recorded``).

(The third, ``surrogate``, a model fit on a store, is :mod:`rlhpo.envs.surrogate`.)

Both answer the same question behind one small interface, :class:`Backend`: "what curve does
this config give on this task at this many epochs?", as a :class:`Trial`.

- :class:`LiveBackend` trains for real and writes every curve into the store; a config already
  recorded for the task and training seed (at as many epochs) is answered from the store instead.
  It keeps the end state of its last few runs, so a trial continued to more epochs
  (``resume_from``) trains only the new ones.
- :class:`RecordedBackend` answers from the store only. A config that is not recorded for the
  task gets the nearest recorded one (L2 distance over the normalised encoding, epochs left
  out), and the trial says which and how far. A task's runs are loaded into arrays on first use,
  so a step runs no SQL.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rlhpo.envs import BACKENDS
from rlhpo.errors import RlhpoError, closest, unknown
from rlhpo.metrics import normalised_scores
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.space import HYPERPARAMETERS, Config, SearchSpace
from rlhpo.store import CurveStore, StoredRun, TaskRecord
from rlhpo.tasks.loader import LoadedTasks
from rlhpo.tasks.task import Task, TaskData
from rlhpo.training import Curve, EpochRecord

log = logging.getLogger(__name__)

RESUMABLE_RUNS = 8  # end states the live backend keeps, to continue trials (a small model each)
_EPOCHS_DIM = HYPERPARAMETERS.index("epochs")


@dataclass(frozen=True)
class Trial:
    """One trial's answer: the curve of ``config`` trained for ``epochs``.

    ``scores`` holds the normalised validation accuracy of each completed epoch; ``curve`` the
    completed epochs. ``config`` is the config whose curve this is, at the epochs trained: the
    one asked, or (recorded backend) the nearest recorded one, ``distance`` away in the
    normalised encoding.
    """

    config: Config
    epochs: int
    scores: np.ndarray
    train_loss: float  # of the last completed epoch; 0 when none
    val_loss: float
    diverged: bool
    curve: tuple[EpochRecord, ...]
    seconds: float  # training seconds of the epochs after ``resume_from`` (what this trial cost), as recorded
    exact: bool
    distance: float


class Backend(Protocol):
    name: str

    def default_tasks(self) -> list[Task]:
        """The tasks an episode samples from when the env was given none."""
        ...

    def describe(self, task: Task | str) -> TaskRecord:
        """The task (or task key) with its meta-features and number of classes."""
        ...

    def run(self, task: Task, config: Config, epochs: int, resume_from: int = 0) -> Trial:
        """The trial of ``config`` on ``task`` at ``epochs`` epochs.

        ``resume_from`` > 0 continues a trial of the same config already trained for that many
        epochs: the curve is the same, and ``seconds`` counts only the epochs after it.
        """
        ...

    def close(self) -> None:
        """Close the store connection (it reopens if used again)."""
        ...


def config_vector(space: SearchSpace, config: Config, modality: str | None = None) -> np.ndarray:
    """The normalised encoding without epochs: what identifies a recorded run."""
    return np.delete(space.encode(config, modality).astype(np.float64), _EPOCHS_DIM)


def runs_in_space(runs: Sequence[StoredRun], space: SearchSpace, record: TaskRecord) -> list[StoredRun]:
    """The task's runs as configs of ``space``.

    A run recorded before families were searched trained the task's own family: in a space with
    a family dimension its config says so. In a space without one, only runs of the task's own
    family answer, and their configs leave the family out (as the space's configs do).
    """
    if space.families:
        return [
            r if r.config.family else dataclasses.replace(r, config=r.config.with_family(record.family)) for r in runs
        ]
    return [
        dataclasses.replace(r, config=r.config.with_family(None))
        for r in runs
        if r.config.family in (None, record.family)
    ]


def trial_from_curve(
    curve: Curve,
    config: Config,
    epochs: int,
    n_classes: int,
    *,
    exact: bool,
    distance: float,
    resume_from: int = 0,
) -> Trial:
    last = curve.epochs[-1] if curve.epochs else None
    return Trial(
        config=config.with_epochs(epochs),
        epochs=epochs,
        scores=normalised_scores([e.val_accuracy for e in curve.epochs], n_classes),
        train_loss=float(last.train_loss) if last else 0.0,
        val_loss=float(last.val_loss) if last else 0.0,
        diverged=curve.diverged,
        curve=tuple(curve.epochs),
        seconds=float(sum(e.seconds for e in curve.epochs[resume_from:])),
        exact=exact,
        distance=distance,
    )


def _store_of(store: CurveStore | str | Path | None, readonly: bool) -> CurveStore:
    """The store given; when none is: the shipped meta-dataset (read-only) or a new one in memory."""
    if isinstance(store, CurveStore):
        return store
    if store is None:
        return CurveStore(shipped_file(SHIPPED_STORE), readonly=True) if readonly else CurveStore(":memory:")
    return CurveStore(store, readonly=readonly)


# ------------------------------------------------------------------------ live


class LiveBackend:
    """Trains every trial for real; every curve goes into the store.

    Args:
        store: the curve store (a path or a :class:`CurveStore`); ``None`` keeps curves in memory.
        space: the search space.
        tasks: the tasks to sample episodes from; live training needs them named.
        train_seed: the training seed of every trial.
        data_dir: where local datasets are (see :func:`rlhpo.tasks.load_task`).
        device: the torch device to train on.
        loaded: tasks the caller has loaded already (their data is used, not loaded again).
    """

    name = "live"

    def __init__(
        self,
        store: CurveStore | str | Path | None,
        space: SearchSpace,
        *,
        tasks: Sequence[Task] = (),
        train_seed: int = 0,
        data_dir: str | Path | None = None,
        device: str = "cpu",
        loaded: Sequence[TaskData] = (),
    ) -> None:
        self.store = _store_of(store, readonly=False)
        self.store.count()  # open (and create) it now: a bad path fails here, not mid-episode
        self.space = space
        self.tasks = list(tasks)
        self.train_seed = train_seed
        self.data_dir = data_dir
        self.device = device
        self._loaded = LoadedTasks(data_dir, loaded=loaded)
        self._resumable: OrderedDict[tuple[str, str], Curve] = OrderedDict()  # last runs, with their state
        self.trained = 0  # trials this backend trained (the others were found in the store)
        self._records: dict[str, TaskRecord] = {}

    def close(self) -> None:
        self.store.close()

    def default_tasks(self) -> list[Task]:
        if not self.tasks:
            raise RlhpoError("The live backend needs tasks: pass tasks=[Task(...)] or options={'task': Task(...)}.")
        return self.tasks

    def data(self, task: Task) -> TaskData:
        """The task's data, loaded once and kept (:class:`~rlhpo.tasks.LoadedTasks`)."""
        return self._loaded.get(task)

    def held_run(self, task: Task, config: Config) -> Curve | None:
        """The curve, with its trained model, of the last run of ``config`` on ``task``, if still held.

        The backend keeps the end state of its last few trainings (to continue trials); a caller
        that wants the model of a trial it just ran (``tune``'s final evaluation) finds it here.
        """
        return self._resumable.get((task.key(), config.key()))

    def describe(self, task: Task | str) -> TaskRecord:
        if isinstance(task, str):
            record = self.store.task(task)
            if record is None:
                raise RlhpoError(f"The live backend needs a Task, or the key of a task in the store; got {task!r}.")
            task = record.task
        key = task.key()
        if key not in self._records:
            record = self.store.task(key)
            if record is None:
                record = TaskRecord.from_data(self.data(task))  # its task has the real size (see load_task)
                if self.store.task(record.key) is None:
                    self.store.put_task(record)
            self._records[key] = record
        return self._records[key]

    def run(self, task: Task, config: Config, epochs: int, resume_from: int = 0) -> Trial:
        from rlhpo.training import train

        record = self.describe(task)
        key = record.key
        stored = self.store.get_run(key, config, self.train_seed)
        if stored is not None and stored.horizon >= epochs:
            return trial_from_curve(
                stored.at(epochs),
                config,
                epochs,
                record.n_classes,
                exact=True,
                distance=0.0,
                resume_from=resume_from,
            )
        # Continue the last run of this config if it is still held and not longer than asked.
        slot = (key, config.key())
        previous = self._resumable.pop(slot, None)
        if previous is not None and len(previous.epochs) > epochs:
            previous = None
        done = len(previous.epochs) if previous is not None else 0
        curve = train(
            self.data(task),
            config,
            epochs=epochs,
            seed=self.train_seed,
            device=self.device,
            resume=previous,
            keep_state=True,
        )
        if curve.state is not None:
            self._resumable[slot] = curve
            while len(self._resumable) > RESUMABLE_RUNS:
                self._resumable.popitem(last=False)
        self.store.put_run(key, config, self.train_seed, curve, max_epochs=epochs)
        self.trained += 1
        log.debug("trained %s on %s for epochs %d..%d", config.key(), key, done + 1, epochs)
        # The cost is what was trained now: from the held state on, or from scratch if none was held.
        return trial_from_curve(
            curve,
            config,
            epochs,
            record.n_classes,
            exact=True,
            distance=0.0,
            resume_from=done,
        )


# -------------------------------------------------------------------- recorded


class _RunTable:
    """One task's recorded runs as arrays: a step is a few array look-ups."""

    def __init__(self, runs: Sequence[StoredRun], space: SearchSpace, record: TaskRecord) -> None:
        runs = runs_in_space(runs, space, record)
        n_classes = record.n_classes
        width = max((len(r.curve.epochs) for r in runs), default=0)
        self.modality = record.modality
        self.configs = [r.config for r in runs]
        self.index = {r.config.key(): i for i, r in enumerate(runs)}
        self.vectors = np.stack([config_vector(space, r.config, self.modality) for r in runs])
        self.horizon = np.array([r.horizon for r in runs], dtype=np.float64)
        self.n_done = np.array([len(r.curve.epochs) for r in runs], dtype=np.int64)
        self.diverged = np.array([r.curve.diverged for r in runs], dtype=bool)
        acc = np.zeros((len(runs), width))
        self.train_loss = np.zeros((len(runs), width))
        self.val_loss = np.zeros((len(runs), width))
        self.cum_seconds = np.zeros((len(runs), width + 1))
        for i, r in enumerate(runs):
            n = len(r.curve.epochs)
            acc[i, :n] = [e.val_accuracy for e in r.curve.epochs]
            self.train_loss[i, :n] = [e.train_loss for e in r.curve.epochs]
            self.val_loss[i, :n] = [e.val_loss for e in r.curve.epochs]
            self.cum_seconds[i, 1 : n + 1] = np.cumsum([e.seconds for e in r.curve.epochs])
        self.scores = normalised_scores(acc, n_classes)
        self.epochs = [tuple(r.curve.epochs) for r in runs]
        self._configs_at: dict[tuple[int, int], Config] = {}

    def config_at(self, i: int, epochs: int) -> Config:
        key = (i, epochs)
        if key not in self._configs_at:
            self._configs_at[key] = self.configs[i].with_epochs(epochs)
        return self._configs_at[key]


class RecordedBackend:
    """Answers every trial from the store; a config not recorded gets the nearest recorded one.

    Args:
        store: the curve store made by ``rlhpo collect`` (a path or a :class:`CurveStore`);
            ``None``: the meta-dataset shipped with the package.
        space: the search space the actions decode in.
        train_seed: the training seed whose runs answer (``rlhpo collect``'s ``train_seed``).
        exclude_datasets: datasets left out of the default task list (leave-one-dataset-out).
    """

    name = "recorded"

    def __init__(
        self,
        store: CurveStore | str | Path | None,
        space: SearchSpace,
        *,
        train_seed: int = 0,
        exclude_datasets: Sequence[str] = (),
    ) -> None:
        self.store = _store_of(store, readonly=True)
        self.space = space
        self.train_seed = train_seed
        self.exclude_datasets = tuple(exclude_datasets)
        self._records: dict[str, TaskRecord] | None = None
        self._tables: dict[str, _RunTable] = {}

    def close(self) -> None:
        self.store.close()

    @property
    def records(self) -> dict[str, TaskRecord]:
        """Every task of the store that has runs for ``train_seed``, by key."""
        if self._records is None:
            self._records = {r.key: r for r in self.store.tasks(with_runs=True, seed=self.train_seed)}
        return self._records

    def default_tasks(self) -> list[Task]:
        tasks = [r.task for r in self.records.values() if r.task.dataset not in self.exclude_datasets]
        if not tasks:
            excluded = f" once {', '.join(self.exclude_datasets)} are excluded" if self.exclude_datasets else ""
            raise RlhpoError(
                f"Curve store {self.store.path!r} has no task with recorded curves for train_seed="
                f"{self.train_seed}{excluded}; record some with `rlhpo collect`."
            )
        return tasks

    def describe(self, task: Task | str) -> TaskRecord:
        key = task if isinstance(task, str) else task.key()
        record = self.records.get(key)
        if record is None:
            known = list(self.records)
            if not known:
                raise RlhpoError(
                    f"Curve store {self.store.path!r} has no recorded curves for train_seed={self.train_seed}; "
                    "record some with `rlhpo collect`."
                )
            raise RlhpoError(
                f"Task {key!r} has no recorded curves (train_seed={self.train_seed}) in {self.store.path!r}; "
                f"it has {len(known)} tasks.{closest(key, known)}"
            )
        return record

    def _table(self, key: str) -> _RunTable:
        table = self._tables.get(key)
        if table is None:
            record = self.describe(key)
            runs = self.store.runs(key, self.train_seed)
            table = self._tables[key] = _RunTable(runs, self.space, record)
        return table

    def n_runs(self, task_key: str) -> int:
        """How many runs are recorded for the task (the length of ``run``'s ``allowed`` mask)."""
        return len(self._table(task_key).configs)

    def run(
        self, task: Task, config: Config, epochs: int, resume_from: int = 0, allowed: np.ndarray | None = None
    ) -> Trial:
        """The trial, answered by ``config``'s run or the nearest; only runs ``allowed`` (a mask) may answer."""
        table = self._table(task.key())
        i = table.index.get(config.key())
        exact = i is not None and bool(table.horizon[i] >= epochs) and (allowed is None or bool(allowed[i]))
        if exact:
            distance = 0.0
        else:
            d2 = np.square(table.vectors - config_vector(self.space, config, table.modality)).sum(axis=1)
            d2[table.horizon < epochs] = np.inf
            if allowed is not None:
                d2[~allowed] = np.inf
            i = int(np.argmin(d2))
            if not math.isfinite(d2[i]):
                raise RlhpoError(
                    f"No run recorded on {task.key()!r} reaches {epochs} epochs; record it at the largest epochs "
                    "choice with `rlhpo collect`."
                )
            distance = float(math.sqrt(d2[i]))
        assert i is not None
        n = min(epochs, int(table.n_done[i]))
        return Trial(
            config=table.config_at(i, epochs),
            epochs=epochs,
            scores=table.scores[i, :n],
            train_loss=float(table.train_loss[i, n - 1]) if n else 0.0,
            val_loss=float(table.val_loss[i, n - 1]) if n else 0.0,
            diverged=bool(table.diverged[i]) and n < epochs,
            curve=table.epochs[i][:n],
            seconds=float(table.cum_seconds[i, n] - table.cum_seconds[i, min(resume_from, n)]),
            exact=exact,
            distance=distance,
        )


class SubsetBackend:
    """A recorded backend whose episodes each see a random subset of every task's recorded runs.

    Meta-training augmentation (``config_fraction`` in ``configs/train_agent.yaml``): at each
    ``describe`` (each ``reset``) a new subset of the task's runs, each kept with probability
    ``fraction`` (at least one), answers the episode. The best answerable config moves from one
    episode to the next, so a policy cannot score by recalling one config per task: it has to
    try, observe and adapt. Several envs may share one ``inner`` backend, each with its own subset.
    """

    name = "recorded"

    def __init__(self, inner: RecordedBackend, fraction: float, seed: int) -> None:
        if not 0.0 < fraction <= 1.0:
            raise RlhpoError(f"The fraction of recorded configs must be in (0, 1], but got {fraction}.")
        self.inner = inner
        self.fraction = fraction
        self.rng = np.random.default_rng(seed)
        self._allowed: dict[str, np.ndarray] = {}

    def default_tasks(self) -> list[Task]:
        return self.inner.default_tasks()

    def describe(self, task: Task | str) -> TaskRecord:
        record = self.inner.describe(task)
        keep = self.rng.random(self.inner.n_runs(record.key)) < self.fraction
        if not keep.any():
            keep[self.rng.integers(len(keep))] = True
        self._allowed[record.key] = keep
        return record

    def run(self, task: Task, config: Config, epochs: int, resume_from: int = 0) -> Trial:
        return self.inner.run(task, config, epochs, resume_from, allowed=self._allowed.get(task.key()))

    def close(self) -> None:
        """Nothing: the inner backend is shared, and closed by its owner."""


def make_backend(
    backend: str,
    store: CurveStore | str | Path | None,
    space: SearchSpace,
    *,
    tasks: Sequence[Task] = (),
    train_seed: int = 0,
    exclude_datasets: Sequence[str] = (),
    data_dir: str | Path | None = None,
    device: str = "cpu",
) -> Backend:
    """The backend named ``backend`` (``live``, ``recorded`` or ``surrogate``).

    For ``surrogate``, ``store`` is the surrogate file (``rlhpo surrogate fit``), not a curve store.
    """
    if backend == "surrogate":
        from rlhpo.envs.surrogate import SurrogateBackend

        if store is None or isinstance(store, CurveStore):
            raise RlhpoError("The surrogate backend needs a surrogate file (`rlhpo surrogate fit`) as its store.")
        return SurrogateBackend(store, space, train_seed=train_seed, exclude_datasets=exclude_datasets)
    if backend == "live":
        return LiveBackend(store, space, tasks=tasks, train_seed=train_seed, data_dir=data_dir, device=device)
    if backend == "recorded":
        return RecordedBackend(store, space, train_seed=train_seed, exclude_datasets=exclude_datasets)
    raise unknown("backend", backend, BACKENDS)
