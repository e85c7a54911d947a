"""The ``surrogate`` backend: a regressor fit on a curve store answers any config with a whole curve.

The recorded backend answers an unrecorded config with the nearest recorded one, so a policy
meta-trained on it can learn the lookup (which configs happen to be recorded) instead of the
response surface. The surrogate answers *every* valid config on every task instance of the
store, from the instance's meta-features, the config and the epoch, with per-epoch normalised
validation score, macro-F1, train and validation loss and seconds, and whether (and when) the
run diverges. It is for meta-training only: everything reported is judged on real curves.

Why this model:

- **Gradient-boosted trees** (scikit-learn's ``HistGradientBoostingRegressor``): the store is a
  few thousand epoch rows of mixed inputs (log learning rate, optimizer and family one-hot,
  meta-features) with sharp interactions (a learning rate that suits adam diverges sgd); trees
  take these as they are, need no scaling, handle categories natively and fit in seconds on two
  cores. A neural surrogate would need more data than 18 instances give.
- **The epoch is an input**: one model predicts the score at every epoch, so a curve's epochs
  come from one function of (task, config, epoch) and a config's 3-epoch trial is the first three
  epochs of its 9-epoch trial, as with real training.
- **An ensemble of bootstrap fits over runs** (``members`` fits, each on the runs of every
  data subsample resampled with replacement, all epochs of a run kept together since they are
  correlated, and a config's copies on twin instances too: :func:`bootstrap_counts`): the
  members disagree where the data say little, so their spread is the model's uncertainty;
  out-of-bag runs (those a member did not see) measure the real error at no extra cost, and set
  ``noise_scale``, the factor that makes the spread match it.
- **Noise that a policy cannot memorise**: each episode draws one member (one plausible response
  surface, coherent across configs) and each config a curve offset ~ N(0, extra²), with
  ``extra = sqrt(noise_scale² − 1) × spread``, so the total predictive spread is
  ``noise_scale × spread``, the out-of-bag error's size. All of it is drawn from the backend's
  seed and the config's key: deterministic given the seed, and the same config answers the same
  curve within an episode at any fidelity.
- **Divergence** is rare (24 of the shipped 11,255 runs, all sgd at learning rate 0.03 or 0.1): a logistic
  regression on the run's inputs gives its probability, and a diverging run stops after a number
  of completed epochs drawn from those the store recorded.

The file (:meth:`SurrogateModel.save`) is a joblib pickle in a small versioned wrapper that
records the store's path and fingerprint, the search space, the feature names, the fit settings
(seed included) and the quality figures. Load only files you made: a pickle runs code.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlhpo.envs.backends import Trial, _store_of
from rlhpo.errors import RlhpoError, closest
from rlhpo.metrics import chance_accuracy, normalised_scores
from rlhpo.space import OPTIMIZERS, Config, SearchSpace
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.task import FAMILIES_BY_MODALITY, Task
from rlhpo.training import EpochRecord

log = logging.getLogger(__name__)

FORMAT = "rlhpo-surrogate"
FORMAT_VERSION = 1
FAMILIES = tuple(dict.fromkeys(f for fs in FAMILIES_BY_MODALITY.values() for f in fs))
META_INPUTS = (
    "modality_image",
    "modality_text",
    "modality_tabular",
    "log_n_train",
    "log_n_classes",
    "class_entropy",
    "log_input_size",
    "log_vocab_size",
)  # the task's meta-features less its family one-hot: the config's family is an input of its own
FAMILY_INPUTS = tuple(f"family_{f}" for f in FAMILIES)  # the config's family, one-hot
CONFIG_INPUTS = (
    "log10_learning_rate",
    "log2_batch_size",
    "dropout",
    "log10_weight_decay",  # of weight_decay + 1e-6, so 0 is a value
    "num_layers",
    "log2_units",
)
OPTIMIZER_INPUTS = tuple(f"optimizer_{o}" for o in OPTIMIZERS)  # one-hot
FEATURES = META_INPUTS + FAMILY_INPUTS + CONFIG_INPUTS + OPTIMIZER_INPUTS + ("epoch",)
# What each member predicts at each epoch; losses and seconds on a log scale (always positive back).
TARGETS = ("score", "val_macro_f1", "log1p_train_loss", "log1p_val_loss", "log_seconds")
_S, _F1, _TL, _VL, _SEC = range(len(TARGETS))
CACHE_SIZE = 4096  # (task, config) predictions kept by a backend: a policy asks the same configs often


@dataclass(frozen=True)
class SurrogateSettings:
    """How ``rlhpo surrogate fit`` fits (each tree setting is scikit-learn's of the same name)."""

    members: int = 8  # bootstrap fits in the ensemble
    max_iter: int = 400  # boosting iterations per fit
    learning_rate: float = 0.1
    max_leaf_nodes: int = 63  # with max_iter 400: held-out rank correlation 0.901, 0.880 at 31 and 200 (surrogate.md)
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    seed: int = 0  # the bootstrap resamples and the trees' own randomness
    train_seed: int = 0  # training seed of the recorded runs fit on
    exclude_datasets: tuple[str, ...] = ()  # datasets whose runs are not fit on (held out of meta-training)
    targets: tuple[str, ...] = TARGETS  # a benchmark may fit the score alone

    def __post_init__(self) -> None:
        for name in ("members", "max_iter", "max_leaf_nodes", "min_samples_leaf"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "max_leaf_nodes" else 1):
                raise RlhpoError(f"Surrogate {name} must be a positive integer, but got {name}={value!r}.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise RlhpoError(f"Surrogate learning_rate must be positive, but got {self.learning_rate!r}.")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or "score" not in self.targets:
            raise RlhpoError(f"Surrogate targets must include 'score' and be among {TARGETS}, but got {self.targets}.")
        object.__setattr__(self, "exclude_datasets", tuple(str(d) for d in self.exclude_datasets))
        object.__setattr__(self, "targets", tuple(self.targets))


# ------------------------------------------------------------------ features


def family_of(record: TaskRecord, config: Config) -> str:
    """The family a config trains on a task: the config's (open-family instance), else the task's."""
    family = config.family or record.task.family or record.family
    valid = FAMILIES_BY_MODALITY[record.modality]
    if family not in valid:
        raise RlhpoError(
            f"Family {family!r} cannot train {record.modality} task {record.key!r}; expected one of {', '.join(valid)}."
        )
    return family


def features(record: TaskRecord, config: Config, epochs: int) -> np.ndarray:
    """The inputs of epochs 1..``epochs`` of ``config`` on the task: one row per epoch, :data:`FEATURES` order.

    The config is read as raw values, not through a search space, so any config answers. The
    family and the optimizer are one-hot (numbers only: :class:`Forest` predicts with plain
    threshold splits).
    """
    if config.optimizer not in OPTIMIZERS:
        raise RlhpoError(f"optimizer={config.optimizer!r} is not one of {OPTIMIZERS}.")
    family = family_of(record, config)
    row = [float(record.meta_features[f]) for f in META_INPUTS]
    row += [float(f == family) for f in FAMILIES]
    row += [
        math.log10(config.learning_rate),
        math.log2(config.batch_size),
        float(config.dropout),
        math.log10(config.weight_decay + 1e-6),
        float(config.num_layers),
        math.log2(config.units),
    ]
    row += [float(o == config.optimizer) for o in OPTIMIZERS]
    rows = np.empty((epochs, len(FEATURES)))
    rows[:, :-1] = row
    rows[:, -1] = np.arange(1, epochs + 1)
    return rows


def _run_inputs(x: np.ndarray) -> np.ndarray:
    """Run-level inputs of the divergence model: a run's feature row less the epoch."""
    return x[:, :-1]


def store_fingerprint(store: CurveStore, train_seed: int | None = None) -> str:
    """A hash of the store's runs and epochs (keys and values): the same data gives the same print.

    It does not depend on the file (a backup copy, WAL or not, prints the same).
    """
    h = hashlib.sha256()
    seed_clause = "" if train_seed is None else f" WHERE seed = {int(train_seed)}"
    for row in store.conn.execute(
        "SELECT task_key, config_key, seed, epoch, train_loss, val_loss, val_accuracy, val_macro_f1 FROM epochs"
        f"{seed_clause} ORDER BY task_key, config_key, seed, epoch"
    ):
        h.update(repr(row).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ the forest


@dataclass
class Forest:
    """Many fitted trees as flat arrays, predicted together: a backend step is a few numpy operations.

    scikit-learn predicts one tree at a time in Python, about 5 ms for one 200-tree model on one
    curve; an ensemble of 8 members and 5 targets would make a step cost 0.2 s. Here every tree
    of every model descends at once, one level per numpy operation. The trees are
    scikit-learn's own (``HistGradientBoostingRegressor._predictors``; numeric splits, ``x <=
    threshold`` goes left), and the file then holds plain arrays, readable by any scikit-learn.
    """

    feature: np.ndarray  # per node
    threshold: np.ndarray
    left: np.ndarray  # global node index
    right: np.ndarray
    leaf: np.ndarray  # bool
    value: np.ndarray  # leaf values (already shrunk by the learning rate)
    roots: np.ndarray  # per tree: its root node
    group: np.ndarray  # per tree: which model it belongs to (sorted)
    baseline: np.ndarray  # per model: its baseline prediction

    @classmethod
    def from_models(cls, models: Sequence[Any]) -> Forest:
        """The trees of fitted ``HistGradientBoostingRegressor`` models, one group per model."""
        nodes, roots, group, baseline, offset = [], [], [], [], 0
        for g, model in enumerate(models):
            baseline.append(float(np.ravel(model._baseline_prediction)[0]))
            for iteration in model._predictors:
                for tree in iteration:
                    n = tree.nodes
                    if n["is_categorical"].any():
                        raise RlhpoError("Forest reads numeric splits only; a tree split on a categorical feature.")
                    nodes.append((n, offset))
                    roots.append(offset)
                    group.append(g)
                    offset += len(n)
        if not nodes:
            raise RlhpoError("A forest needs at least one fitted tree.")
        cat = np.concatenate([n for n, _ in nodes])
        shift = np.concatenate([np.full(len(n), o, dtype=np.int64) for n, o in nodes])
        leaf = cat["is_leaf"].astype(bool)
        return cls(
            feature=np.where(leaf, 0, cat["feature_idx"]).astype(np.int64),
            threshold=cat["num_threshold"].astype(np.float64),
            left=np.where(leaf, 0, cat["left"].astype(np.int64) + shift),
            right=np.where(leaf, 0, cat["right"].astype(np.int64) + shift),
            leaf=leaf,
            value=cat["value"].astype(np.float64),
            roots=np.array(roots, dtype=np.int64),
            group=np.array(group, dtype=np.int64),
            baseline=np.array(baseline),
        )

    def predict(self, x: np.ndarray, models: Sequence[int] | None = None) -> np.ndarray:
        """The prediction of each model (all, or those listed) for each row: (rows, models)."""
        groups = tuple(range(len(self.baseline))) if models is None else tuple(models)
        plan = self._plans.get(groups)
        if plan is None:
            bounds = np.searchsorted(self.group, np.arange(len(self.baseline) + 1))
            trees = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in groups])
            sizes = [bounds[g + 1] - bounds[g] for g in groups]
            plan = self._plans[groups] = (self.roots[trees], np.cumsum([0, *sizes[:-1]]))
        roots, starts = plan
        node = np.tile(roots, len(x))  # (row, tree) pairs, row-major
        row = np.repeat(np.arange(len(x)), len(roots))
        active = np.flatnonzero(~self.leaf[node])
        while active.size:  # only the pairs not at a leaf yet descend: most trees are shallow
            at = node[active]
            go_left = x[row[active], self.feature[at]] <= self.threshold[at]
            node[active] = np.where(go_left, self.left[at], self.right[at])
            active = active[~self.leaf[node[active]]]
        values = self.value[node].reshape(len(x), len(roots))
        return np.add.reduceat(values, starts, axis=1) + self.baseline[list(groups)]  # each model's trees summed

    @property
    def _plans(self) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
        """Which trees each asked set of models reads (made once per set; not saved)."""
        if "_plan_cache" not in self.__dict__:
            self.__dict__["_plan_cache"] = {}
        return self.__dict__["_plan_cache"]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_plan_cache"}


@dataclass
class Logistic:
    """A fitted standardised logistic regression as arrays: ``P(y=1 | x)``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def probability(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


# ------------------------------------------------------------------ the data


@dataclass
class CurveData:
    """A store's runs as epoch rows: inputs, targets, and which run and task each row belongs to."""

    x: np.ndarray  # (rows, FEATURES)
    y: np.ndarray  # (rows, TARGETS)
    run: np.ndarray  # (rows,) run index
    epoch: np.ndarray  # (rows,) 1-based
    run_task: list[str]  # per run: task key
    run_config: list[Config]  # per run: the config (family resolved)
    run_diverged: np.ndarray  # per run
    run_completed: np.ndarray  # per run: epochs completed
    records: dict[str, TaskRecord]

    @classmethod
    def from_store(cls, store: CurveStore, train_seed: int = 0, tasks: Sequence[str] | None = None) -> CurveData:
        records = {r.key: r for r in store.tasks(with_runs=True, seed=train_seed)}
        keys = list(records) if tasks is None else [k for k in tasks if k in records]
        xs, ys, run_ids, epochs = [], [], [], []
        run_task, run_config, diverged, completed = [], [], [], []
        for key in keys:
            record = records[key]
            for r in store.runs(key, train_seed):
                n = len(r.curve.epochs)
                config = r.config.with_family(family_of(record, r.config))
                if n:
                    e = r.curve.epochs
                    y = np.empty((n, len(TARGETS)))
                    y[:, _S] = normalised_scores([x.val_accuracy for x in e], record.n_classes)
                    y[:, _F1] = [x.val_macro_f1 for x in e]
                    y[:, _TL] = np.log1p(np.maximum([x.train_loss for x in e], 0.0))
                    y[:, _VL] = np.log1p(np.maximum([x.val_loss for x in e], 0.0))
                    y[:, _SEC] = np.log(np.maximum([x.seconds for x in e], 1e-6))
                    xs.append(features(record, config, n))
                    ys.append(y)
                    run_ids.append(np.full(n, len(run_task)))
                    epochs.append(np.arange(1, n + 1))
                run_task.append(key)
                run_config.append(config)
                diverged.append(r.curve.diverged)
                completed.append(n)
        if not xs:
            raise RlhpoError(f"Curve store {store.path!r} has no epochs recorded for train_seed={train_seed} to fit.")
        return cls(
            x=np.vstack(xs),
            y=np.vstack(ys),
            run=np.concatenate(run_ids),
            epoch=np.concatenate(epochs),
            run_task=run_task,
            run_config=run_config,
            run_diverged=np.array(diverged, dtype=bool),
            run_completed=np.array(completed, dtype=np.int64),
            records=records,
        )

    def subset(self, runs: np.ndarray) -> CurveData:
        """The data of the runs whose indices are ``runs`` (a boolean mask or indices), renumbered."""
        idx = np.flatnonzero(runs) if runs.dtype == bool else np.asarray(runs)
        new = {int(old): i for i, old in enumerate(idx)}
        rows = np.isin(self.run, idx)
        return CurveData(
            x=self.x[rows],
            y=self.y[rows],
            run=np.array([new[int(r)] for r in self.run[rows]], dtype=np.int64),
            epoch=self.epoch[rows],
            run_task=[self.run_task[i] for i in idx],
            run_config=[self.run_config[i] for i in idx],
            run_diverged=self.run_diverged[idx],
            run_completed=self.run_completed[idx],
            records=self.records,
        )

    @property
    def n_runs(self) -> int:
        return len(self.run_task)


# ------------------------------------------------------------------ the model


@dataclass
class SurrogateModel:
    """A fitted surrogate: the ensemble, the divergence model, and what it was fit on.

    Made by :func:`fit_surrogate`; saved and loaded with :meth:`save` / :func:`load_surrogate`.
    """

    settings: SurrogateSettings
    forest: Forest  # one group per (member, target), member-major, targets in ``targets`` order
    divergence: Logistic | None  # P(the run diverges); None: no run of the fit data diverged
    diverged_epochs: tuple[int, ...]  # completed epochs of the recorded runs that diverged
    noise_scale: float  # out-of-bag error / ensemble spread (>= 1)
    max_epochs: int  # the most epochs any fit run completed: the longest curve it answers
    target_range: dict[str, tuple[float, float]]  # each target's recorded range: predictions are clipped to it
    records: dict[str, TaskRecord]  # every task of the store (fit on or not), by key
    fit_tasks: tuple[str, ...]
    store_path: str
    store_fingerprint: str
    space: dict[str, Any] | None  # the search space of the fit (what train-agent's space should be), as JSON
    n_runs: int
    n_rows: int
    fit_seconds: float
    created: str
    quality: dict[str, Any] = field(default_factory=dict)
    feature_names: tuple[str, ...] = FEATURES
    targets: tuple[str, ...] = TARGETS

    # ---------------------------------------------------------- prediction

    def predict_rows(self, x: np.ndarray, member: int | None = None) -> np.ndarray:
        """Members' predictions of every fitted target for feature rows: (members, rows, TARGETS).

        ``member`` given: the score of every member (their spread is the noise's size), the other
        targets of that member only (0 for the others): a third of the work. A target not fitted
        (a score-only benchmark fit) is 0. Scores and F1 are clipped to [0, 1], the log targets to
        their recorded range.
        """
        k, t = self.n_members, len(self.targets)
        if member is None:
            models = list(range(k * t))
        else:
            models = [i * t for i in range(k)] + [member * t + j for j in range(1, t)]
        fitted = self.forest.predict(x, models)
        out = np.zeros((k, len(x), len(TARGETS)))
        for col, model in enumerate(models):
            i, j = divmod(model, t)
            out[i, :, TARGETS.index(self.targets[j])] = fitted[:, col]
        for name in self.targets:
            lo, hi = self.target_range[name]
            j = TARGETS.index(name)
            out[:, :, j] = np.clip(out[:, :, j], lo, hi)
        return out

    def predict(self, record: TaskRecord, config: Config, member: int | None = None) -> np.ndarray:
        """The members' curves of ``config`` on the task, epochs 1..max_epochs: (members, epochs, TARGETS)."""
        return self.predict_rows(features(record, config, self.max_epochs), member)

    def divergence_probability(self, record: TaskRecord, config: Config) -> float:
        if self.divergence is None:
            return 0.0
        return float(self.divergence.probability(_run_inputs(features(record, config, 1)))[0])

    @property
    def n_members(self) -> int:
        return self.settings.members

    def record(self, task: Task | str) -> TaskRecord:
        key = task if isinstance(task, str) else task.key()
        record = self.records.get(key)
        if record is None:
            known = list(self.records)
            raise RlhpoError(
                f"Task {key!r} is not one of the {len(known)} task instances of the surrogate's store "
                f"{self.store_path!r}.{closest(key, known)}"
            )
        return record

    # ---------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write the model to one file (joblib, in a versioned wrapper); return its path."""
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        joblib.dump({"format": FORMAT, "version": FORMAT_VERSION, "model": self}, tmp, compress=3)
        tmp.replace(path)
        return path

    def describe_lines(self) -> list[str]:
        """What it was fit on and how well it does: the lines of ``rlhpo surrogate report``."""
        s = self.settings
        datasets = sorted({self.records[k].task.dataset for k in self.fit_tasks})
        lines = [
            f"surrogate fit {self.created} in {self.fit_seconds:.1f}s on {len(self.fit_tasks)} task instances "
            f"({', '.join(datasets)}), {self.n_runs} runs, {self.n_rows} epoch rows",
            f"store {self.store_path} (fingerprint {self.store_fingerprint}, train_seed {s.train_seed})"
            + (f"; excluded: {', '.join(s.exclude_datasets)}" if s.exclude_datasets else ""),
            f"ensemble: {s.members} HistGradientBoostingRegressor per target ({', '.join(self.targets)}), "
            f"max_iter {s.max_iter}, learning_rate {s.learning_rate}, max_leaf_nodes {s.max_leaf_nodes}, "
            f"min_samples_leaf {s.min_samples_leaf}; fit seed {s.seed}",
            f"curves of 1..{self.max_epochs} epochs; noise scale {self.noise_scale:.2f} x ensemble spread; "
            f"{len(self.diverged_epochs)} diverged runs in the fit data",
            f"features: {', '.join(self.feature_names)}",
        ]
        q = self.quality
        if q:
            lines.append("quality (out-of-bag: each run predicted by the members that did not see it):")
            for name, value in q.items():
                if isinstance(value, float):
                    lines.append(f"  {name}: {value:.4f}")
                elif isinstance(value, dict):
                    inner = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
                    lines.append(f"  {name}: {inner}")
                else:
                    lines.append(f"  {name}: {value}")
        return lines


def load_surrogate(path: str | Path) -> SurrogateModel:
    """Read a surrogate file written by :meth:`SurrogateModel.save` (only load files you trust)."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise RlhpoError(f"Surrogate file {str(path)!r} does not exist; make one with `rlhpo surrogate fit`.")
    try:
        data = joblib.load(path)
    except Exception as e:  # a truncated or foreign file: say so, with joblib's reason
        raise RlhpoError(f"{str(path)!r} is not a surrogate file ({type(e).__name__}: {e}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RlhpoError(f"{str(path)!r} is not a surrogate file (no {FORMAT!r} header).")
    if data.get("version") != FORMAT_VERSION:
        raise RlhpoError(
            f"Surrogate file {str(path)!r} has format version {data.get('version')!r}, but this rlhpo reads "
            f"version {FORMAT_VERSION}; fit it again with `rlhpo surrogate fit`."
        )
    return data["model"]


# ------------------------------------------------------------------ fitting


def _regressor(s: SurrogateSettings, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        max_iter=s.max_iter,
        learning_rate=s.learning_rate,
        max_leaf_nodes=s.max_leaf_nodes,
        min_samples_leaf=s.min_samples_leaf,
        l2_regularization=s.l2_regularization,
        early_stopping=False,
        random_state=seed,
    )


def data_key(task: Task) -> str:
    """The task's key with its family left open: instances with one key train on the same data subsample."""
    return dataclasses.replace(task, family=None).key()


def bootstrap_counts(data: CurveData, rng: np.random.Generator) -> np.ndarray:
    """How often each run is drawn: (data subsample, config) clusters drawn with replacement per subsample.

    A pinned-family instance and the open-family instance on the same data share copied runs
    (the same training, recorded under both keys); clustering by data and config keeps the copies
    in or out together, so an out-of-bag run has no twin in the bag.
    """
    clusters: dict[str, dict[str, list[int]]] = {}
    for i, (key, config) in enumerate(zip(data.run_task, data.run_config)):
        group = clusters.setdefault(data_key(data.records[key].task), {})
        group.setdefault(config.key(), []).append(i)
    counts = np.zeros(data.n_runs, dtype=np.int64)
    for group in clusters.values():
        members = list(group.values())
        for j in rng.integers(len(members), size=len(members)):
            counts[members[j]] += 1
    return counts


def fit_ensemble(data: CurveData, settings: SurrogateSettings) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Fit the members; return them and each run's bootstrap counts per member: (members, runs)."""
    members = []
    counts = np.zeros((settings.members, data.n_runs), dtype=np.int64)
    for k in range(settings.members):
        counts[k] = bootstrap_counts(data, np.random.default_rng([settings.seed, k]))
        weight = counts[k][data.run].astype(np.float64)  # a run drawn twice weighs twice: same as repeating it
        used = weight > 0
        member = {}
        for name in settings.targets:
            model = _regressor(settings, seed=settings.seed * 1000 + k)
            model.fit(data.x[used], data.y[used, TARGETS.index(name)], sample_weight=weight[used])
            member[name] = model
        members.append(member)
        log.info("surrogate member %d/%d fit", k + 1, settings.members)
    return members, counts


def _fit_divergence(data: CurveData) -> Logistic | None:
    """Logistic regression of 'the run diverged' on its inputs; None when no run diverged."""
    if not data.run_diverged.any() or data.run_diverged.all():
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    first = np.flatnonzero(data.epoch == 1)
    x = np.zeros((data.n_runs, len(FEATURES)))
    x[data.run[first]] = data.x[first]
    # A run that diverged before its first epoch has no row: build its inputs from its config.
    for i in np.flatnonzero(data.run_completed == 0):
        x[i] = features(data.records[data.run_task[i]], data.run_config[i], 1)[0]
    inputs = _run_inputs(x)
    scaler = StandardScaler().fit(inputs)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=1.0, max_iter=1000).fit((inputs - scaler.mean_) / scale, data.run_diverged)
    return Logistic(mean=scaler.mean_, scale=scale, coef=model.coef_[0], intercept=float(model.intercept_[0]))


def out_of_bag(members: list[dict[str, Any]], counts: np.ndarray, data: CurveData) -> tuple[np.ndarray, np.ndarray]:
    """Each row's out-of-bag mean and spread of the score (over the members that did not see its run).

    Rows whose run every member saw are NaN.
    """
    preds = np.stack([m["score"].predict(data.x) for m in members])  # (members, rows)
    unseen = counts[:, data.run] == 0
    n = unseen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(unseen, preds, 0.0).sum(axis=0) / n
        spread = preds.std(axis=0)  # the full ensemble's spread: what the backend draws noise from
    mean[n == 0] = np.nan
    return np.clip(mean, 0.0, 1.0), spread


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def quality_figures(data: CurveData, mean: np.ndarray, spread: np.ndarray, noise_scale: float) -> dict[str, Any]:
    """Out-of-bag figures: final-score MAE and rank correlation per task instance, MAE per epoch, coverage."""
    ok = np.isfinite(mean)
    err = np.abs(mean - data.y[:, _S])
    last = data.epoch == data.run_completed[data.run]
    final = ok & last
    per_task = {}
    for key in dict.fromkeys(data.run_task):
        rows = final & (np.array(data.run_task)[data.run] == key)
        per_task[key] = spearman(mean[rows], data.y[rows, _S])
    z = (data.y[ok, _S] - mean[ok]) / np.maximum(noise_scale * spread[ok], 1e-9)
    return {
        "oob_final_score_mae": float(err[final].mean()),
        "oob_score_mae_by_epoch": {str(e): float(err[ok & (data.epoch == e)].mean()) for e in np.unique(data.epoch)},
        "oob_spearman_final_by_instance": per_task,
        "oob_spearman_final_mean": float(np.nanmean(list(per_task.values()))),
        "oob_rms_error_over_rms_spread": float(
            np.sqrt(np.mean((data.y[ok, _S] - mean[ok]) ** 2) / np.mean(spread[ok] ** 2))
        ),
        "within_1_sd": float(np.mean(np.abs(z) <= 1)),
        "within_2_sd": float(np.mean(np.abs(z) <= 2)),
    }


def fit_surrogate(
    store: CurveStore | str | Path | None,
    settings: SurrogateSettings | None = None,
    *,
    space: SearchSpace | None = None,
    tasks: Sequence[str] | None = None,
) -> SurrogateModel:
    """Fit a surrogate on a curve store (``None``: the shipped meta-dataset).

    Args:
        settings: the ensemble's settings, seed and held-out datasets.
        space: the search space recorded in the file (the one meta-training will decode actions in);
            ``None``: the shipped one.
        tasks: fit on these task keys only (default: every task with runs, less the excluded datasets).
    """
    from threadpoolctl import threadpool_limits

    settings = settings or SurrogateSettings()
    # One OpenMP thread: the fits are small (thousands of rows), and on a machine whose cores are
    # busy (a collect beside it) scikit-learn's threads wait on each other: a fit took 40x longer.
    with threadpool_limits(limits=1, user_api="openmp"):
        return _fit(store, settings, space, tasks)


def _fit(
    store: CurveStore | str | Path | None,
    settings: SurrogateSettings,
    space: SearchSpace | None,
    tasks: Sequence[str] | None,
) -> SurrogateModel:
    import time

    from rlhpo.space import load_search_space

    started = time.perf_counter()
    curve_store = _store_of(store, readonly=True)
    all_data = CurveData.from_store(curve_store, settings.train_seed)
    keys = [
        k for k in dict.fromkeys(all_data.run_task) if all_data.records[k].task.dataset not in settings.exclude_datasets
    ]
    if tasks is not None:
        keys = [k for k in keys if k in set(tasks)]
    if not keys:
        raise RlhpoError(
            f"No task of {curve_store.path!r} is left to fit on (excluded datasets: {settings.exclude_datasets})."
        )
    data = all_data.subset(np.isin(np.array(all_data.run_task), keys))
    members, counts = fit_ensemble(data, settings)
    mean, spread = out_of_bag(members, counts, data)
    ok = np.isfinite(mean)
    # The factor that makes the spread the size of the out-of-bag error (the member draw alone
    # already gives a spread's worth, so it is at least 1).
    ratio = math.sqrt(np.mean((data.y[ok, _S] - mean[ok]) ** 2) / max(np.mean(spread[ok] ** 2), 1e-12))
    noise_scale = max(1.0, ratio)
    ranges = {}
    for name in settings.targets:
        col = data.y[:, TARGETS.index(name)]
        ranges[name] = (0.0, 1.0) if name in ("score", "val_macro_f1") else (float(col.min()), float(col.max()))
    model = SurrogateModel(
        settings=settings,
        forest=Forest.from_models([member[name] for member in members for name in settings.targets]),
        divergence=_fit_divergence(data),
        diverged_epochs=tuple(int(n) for n in data.run_completed[data.run_diverged]),
        noise_scale=noise_scale,
        max_epochs=int(data.run_completed.max()),
        target_range=ranges,
        records=dict(all_data.records),
        fit_tasks=tuple(keys),
        store_path=str(curve_store.path),
        store_fingerprint=store_fingerprint(curve_store, settings.train_seed),
        space=(space or load_search_space()).to_dict(),
        n_runs=data.n_runs,
        n_rows=len(data.x),
        fit_seconds=0.0,
        created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        targets=tuple(settings.targets),
    )
    model.quality = quality_figures(data, mean, spread, noise_scale)
    model.fit_seconds = time.perf_counter() - started
    log.info("surrogate fit on %d runs in %.1fs; noise scale %.2f", data.n_runs, model.fit_seconds, noise_scale)
    return model


# ------------------------------------------------------------------ the backend


class SurrogateBackend:
    """Answers every trial from a fitted surrogate: any config, any recorded task instance, a whole curve.

    Each ``describe`` (each ``reset``) starts an episode: it draws the ensemble member that
    answers and a noise seed from the backend's generator. A config's curve in the episode is
    that member's prediction plus a per-config offset drawn from the noise seed and the config's
    key, so it is the same at every fidelity (a continued trial continues the same curve), and
    two backends with one seed answer the same episodes alike.

    Args:
        surrogate: a :class:`SurrogateModel` or the path of its file.
        space: the search space the actions decode in.
        seed: seeds the episodes' member and noise draws.
        exclude_datasets: datasets left out of the default task list (held out of meta-training).
        train_seed: must be the one the surrogate was fit on (its runs' training seed).
    """

    name = "surrogate"

    def __init__(
        self,
        surrogate: SurrogateModel | str | Path,
        space: SearchSpace,
        *,
        seed: int = 0,
        exclude_datasets: Sequence[str] = (),
        train_seed: int | None = None,
    ) -> None:
        if isinstance(surrogate, CurveStore):
            raise RlhpoError(
                "The surrogate backend reads a surrogate file, not a curve store; fit one with "
                f"`rlhpo surrogate fit --store {surrogate.path} -o surrogate.joblib`."
            )
        self.model = surrogate if isinstance(surrogate, SurrogateModel) else load_surrogate(surrogate)
        if train_seed is not None and train_seed != self.model.settings.train_seed:
            raise RlhpoError(
                f"The surrogate was fit on runs of train_seed={self.model.settings.train_seed}, but "
                f"train_seed={train_seed} was asked."
            )
        self.space = space
        self.exclude_datasets = tuple(exclude_datasets)
        self.rng = np.random.default_rng(seed)
        self._member = 0
        self._noise_seed = 0
        self._cache: OrderedDict[tuple[str, str, int], tuple[np.ndarray, float]] = OrderedDict()

    def close(self) -> None:
        """Nothing: the model holds no connection."""

    def default_tasks(self) -> list[Task]:
        tasks = [
            self.model.records[k].task
            for k in self.model.fit_tasks
            if self.model.records[k].task.dataset not in self.exclude_datasets
        ]
        if not tasks:
            raise RlhpoError(
                f"The surrogate was fit on no task outside the excluded datasets {list(self.exclude_datasets)}."
            )
        return tasks

    def describe(self, task: Task | str) -> TaskRecord:
        record = self.model.record(task)
        self._member = int(self.rng.integers(self.model.n_members))
        self._noise_seed = int(self.rng.integers(2**63))
        return record

    def _predicted(self, record: TaskRecord, config: Config) -> tuple[np.ndarray, float]:
        """(members' curves (members, epochs, TARGETS), divergence probability), cached per config and member."""
        slot = (record.key, config.with_family(family_of(record, config)).key(), self._member)
        hit = self._cache.get(slot)
        if hit is not None:
            self._cache.move_to_end(slot)
            return hit
        value = (self.model.predict(record, config, self._member), self.model.divergence_probability(record, config))
        self._cache[slot] = value
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return value

    def curve(self, record: TaskRecord, config: Config) -> tuple[list[EpochRecord], bool]:
        """This episode's full curve of ``config`` (up to ``max_epochs``), and whether it diverged there."""
        preds, p_diverge = self._predicted(record, config)
        rng = np.random.default_rng([self._noise_seed, int(config.key(), 16)])
        spread = preds[:, :, _S].std(axis=0)
        extra = math.sqrt(max(self.model.noise_scale**2 - 1.0, 0.0))
        member = preds[self._member]
        score = np.clip(member[:, _S] + rng.standard_normal() * extra * spread, 0.0, 1.0)
        n = self.model.max_epochs
        diverged = bool(rng.random() < p_diverge)
        if diverged:
            n = int(rng.choice(self.model.diverged_epochs)) if self.model.diverged_epochs else 0
        chance = chance_accuracy(record.n_classes)
        accuracy = chance + score * (1.0 - chance)
        f1 = member[:, _F1] if "val_macro_f1" in self.model.targets else accuracy
        fitted = set(self.model.targets)
        train_loss = np.expm1(member[:, _TL]) if "log1p_train_loss" in fitted else np.zeros(len(score))
        val_loss = np.expm1(member[:, _VL]) if "log1p_val_loss" in fitted else np.zeros(len(score))
        seconds = np.exp(member[:, _SEC]) if "log_seconds" in fitted else np.full(len(score), 1e-3)
        epochs = [
            EpochRecord(
                epoch=e + 1,
                train_loss=float(max(train_loss[e], 0.0)),
                val_loss=float(max(val_loss[e], 0.0)),
                val_accuracy=float(accuracy[e]),
                val_macro_f1=float(np.clip(f1[e], 0.0, 1.0)),
                seconds=float(max(seconds[e], 1e-6)),
            )
            for e in range(n)
        ]
        return epochs, diverged

    def run(self, task: Task, config: Config, epochs: int, resume_from: int = 0) -> Trial:
        record = self.model.record(task)
        if epochs > self.model.max_epochs:
            raise RlhpoError(
                f"The surrogate answers curves of up to {self.model.max_epochs} epochs (the longest it was fit on), "
                f"but {epochs} were asked."
            )
        curve, diverged = self.curve(record, config)
        n = min(epochs, len(curve))
        kept = tuple(curve[:n])
        return Trial(
            config=config.with_epochs(epochs),
            epochs=epochs,
            scores=normalised_scores([e.val_accuracy for e in kept], record.n_classes),
            train_loss=kept[-1].train_loss if n else 0.0,
            val_loss=kept[-1].val_loss if n else 0.0,
            diverged=diverged and n < epochs,
            curve=kept,
            seconds=float(sum(e.seconds for e in kept[min(resume_from, n) :])),
            exact=True,  # the config asked is the one answered (by the model, not a neighbour)
            distance=0.0,
        )
