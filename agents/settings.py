"""Settings of ``rlhpo train-agent`` (``configs/train_agent.yaml``) and ``rlhpo bench``, as frozen dataclasses.

An unknown key is an error that names the valid keys and the closest one; a value of the wrong
type or range is an error that names the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rlhpo.envs import INCUMBENT_RULES, REAL_BACKENDS
from rlhpo.envs.reward import RewardSettings
from rlhpo.errors import RlhpoError, unknown
from rlhpo.settings import SHIPPED_STORE, from_dict, read_yaml, shipped_file
from rlhpo.space import DEFAULT_BUDGET_FTE, SearchSpace, load_search_space

IMITATION_PLANS = ("list", "halving", "by_budget", "by_size")  # what imitation_episodes can clone (agents/portfolio.py)
PORTFOLIO_ORDERS = ("list", "similar")  # how a task's portfolio is ordered (agents/similar_tasks.py)
PORTFOLIO_NETS = ("mlp", "per_config")  # a portfolio policy's network: MlpPolicy, or agents/per_config_policy.py

# Where work runs: rlhpo.collect.EXECUTORS (not imported here: rlhpo.collect loads torch).
EXECUTORS = ("local", "ray")
# What may answer meta-training's trials (evaluation is always on the recorded curves of the store).
TRAIN_BACKENDS = ("recorded", "surrogate")
# The tuners, by name.
METHODS = ("ppo", "default", "random", "tpe", "tpe_hyperband", "top_k", "learned_list", "ppo_tpe")
# What may play ``rlhpo tune``'s episode: the policy, or the policy then the learned list and TPE.
TUNE_METHODS = ("ppo", "ppo_tpe")


@dataclass(frozen=True)
class PPOSettings:
    """The PPO settings (stable-baselines3's names); see ``configs/train_agent.yaml``."""

    n_envs: int = 8  # recorded HPOEnvs stepped together (DummyVecEnv)
    n_steps: int = 128  # steps per env per rollout
    batch_size: int = 256  # minibatch size
    n_epochs: int = 10  # passes over each rollout
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (128, 128)  # hidden layers of the policy and value networks

    def __post_init__(self) -> None:
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs"):
            _check_int(f"ppo.{name}", getattr(self, name), minimum=1)
        if self.n_envs * self.n_steps < 2:
            raise RlhpoError(f"PPO needs n_envs * n_steps >= 2, but got {self.n_envs=} and {self.n_steps=}.")
        for name in ("learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef", "max_grad_norm"):
            _check_float(f"ppo.{name}", getattr(self, name), minimum=0.0)
        for name in ("gamma", "gae_lambda"):
            if getattr(self, name) > 1:
                raise RlhpoError(f"ppo.{name} must lie in [0, 1], but got {getattr(self, name)!r}.")
        object.__setattr__(self, "net_arch", _int_tuple("ppo.net_arch", self.net_arch))


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation after training: each method, each task, ``episodes`` seeds."""

    episodes: int = 5  # episodes (seeds) per task and method
    first_seed: int = 10_000  # evaluation seeds first_seed, first_seed+1, ...: disjoint from training's

    def __post_init__(self) -> None:
        _check_int("evaluation.episodes", self.episodes, minimum=1)
        _check_int("evaluation.first_seed", self.first_seed, minimum=0)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.episodes))


@dataclass(frozen=True)
class TrainAgentSettings:
    """What ``rlhpo train-agent`` does: the task set, the budget, the reward, PPO, evaluation."""

    store: str | None = None  # the recorded curve store; None: the shipped meta-dataset
    space: str | None = None  # search-space YAML; None: the shipped configs/search_space.yaml
    backend: str = "recorded"  # what answers meta-training's trials: recorded curves, or a surrogate fit on them
    surrogate: str | None = None  # backend surrogate: the file of `rlhpo surrogate fit` (evaluation stays on store)
    train_seed: int = 0  # training seed of the recorded runs that answer
    exclude_datasets: tuple[str, ...] = ("ag_news",)  # held out: never met in meta-training
    budget_fte: float = DEFAULT_BUDGET_FTE  # budget of an episode, in full-training equivalents
    # [low, high]: each episode's budget drawn log-uniformly from that many full trainings (one policy for
    # every budget; it observes the budget's size with history > 0); None: every episode has budget_fte.
    budget_fte_range: tuple[float, float] | None = None
    history: int = 0  # the policy also observes the budget's size and the episode's best `history` trials
    first_trial_top: int = 1  # the tuner's first trial: drawn by seed among the policy's this many most likely
    portfolio: int = 0  # > 0: the policy picks among the learned list's first `portfolio` configs (agents/portfolio.py)
    imitation_episodes: int = 0  # portfolio: before PPO, behaviour-clone the list's plan on this many episodes
    imitation_plan: str = "list"  # the plan cloned: list (in order, in full), halving, by_budget, by_size (portfolio)
    portfolio_ranks: bool = False  # portfolio: the policy also sees each config's rank by its score so far
    # portfolio: the policy's network: mlp (SB3's MlpPolicy over the whole observation) or per_config (each
    # config and epochs choice scored together by one shared network from the config's rank and epochs known
    # and the plan's state: agents/per_config_policy.py)
    portfolio_net: str = "mlp"
    # portfolio: the order of its configs on a task: list (the learned list's, every task alike) or similar
    # (the order that did best on the meta-training tasks most like it, agents/similar_tasks.py; it reads
    # the task's data meta-features even with meta_features: False, which only blanks the observation)
    portfolio_order: str = "list"
    meta_features: bool = True  # the policy sees the task's meta-features; False: zeros, it acts on curves alone
    config_fraction: float = 0.5  # share of a task's recorded configs each episode may be answered from
    # the episode's last reward also pays the incumbent config's full-fidelity score, as the bench judges it
    # (agents/meta_train.FullFidelityReturn); False: the return is the incumbent's score as trained
    full_fidelity_return: bool = False
    incumbent: str = "best"  # the env's incumbent: best (any trial) or top_rung (Hyperband's; envs/hpo_env.py)
    total_steps: int = 200_000  # environment steps (all envs together)
    checkpoint_every: int = 25_000  # environment steps between checkpoints
    seed: int = 0  # seeds PPO and the environments
    reward: RewardSettings = field(default_factory=RewardSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if self.backend not in TRAIN_BACKENDS:
            raise unknown("meta-training backend", str(self.backend), TRAIN_BACKENDS)
        if (self.backend == "surrogate") != (self.surrogate is not None):
            raise RlhpoError(
                "backend: surrogate needs surrogate: PATH (a file of `rlhpo surrogate fit`), and only it does; "
                f"but got backend={self.backend!r} and surrogate={self.surrogate!r}."
            )
        for name in ("store", "space", "surrogate"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | Path):
                raise RlhpoError(f"{name} must be a path or null, but got {value!r}.")
            if value is not None:
                object.__setattr__(self, name, str(value))
        _check_int("train_seed", self.train_seed)
        _check_int("seed", self.seed)
        _check_int("total_steps", self.total_steps, minimum=1)
        _check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        _check_float("budget_fte", self.budget_fte, minimum=0.0)
        _check_int("history", self.history, minimum=0)
        _check_int("first_trial_top", self.first_trial_top, minimum=1)
        _check_int("portfolio", self.portfolio, minimum=0)
        _check_int("imitation_episodes", self.imitation_episodes, minimum=0)
        if self.imitation_plan not in IMITATION_PLANS:
            raise unknown("imitation plan", str(self.imitation_plan), IMITATION_PLANS)
        if self.portfolio_net not in PORTFOLIO_NETS:
            raise unknown("portfolio network", str(self.portfolio_net), PORTFOLIO_NETS)
        if self.portfolio_net != "mlp" and not self.portfolio:
            raise RlhpoError(f"portfolio_net: {self.portfolio_net} scores portfolio configs: needs portfolio: N > 0.")
        if self.imitation_episodes and not self.portfolio:
            raise RlhpoError("imitation_episodes clones the learned list's plan: it needs portfolio: N > 0.")
        if self.incumbent not in INCUMBENT_RULES:
            raise unknown("incumbent rule", str(self.incumbent), INCUMBENT_RULES)
        if self.portfolio_order not in PORTFOLIO_ORDERS:
            raise unknown("portfolio order", str(self.portfolio_order), PORTFOLIO_ORDERS)
        if self.portfolio_order != "list" and not self.portfolio:
            raise RlhpoError("portfolio_order orders a portfolio's configs: it needs portfolio: N > 0.")
        if self.portfolio_ranks and not self.portfolio:
            raise RlhpoError("portfolio_ranks shows the ranks of a portfolio's configs: it needs portfolio: N > 0.")
        if self.budget_fte_range is not None:
            low_high = self.budget_fte_range
            if not isinstance(low_high, list | tuple) or len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
                raise RlhpoError(f"budget_fte_range must be [low, high] with 0 < low <= high, but got {low_high!r}.")
            object.__setattr__(self, "budget_fte_range", (float(low_high[0]), float(low_high[1])))
        _check_float("config_fraction", self.config_fraction, minimum=0.0)
        if not 0.0 < self.config_fraction <= 1.0:
            raise RlhpoError(f"config_fraction must be in (0, 1], but got config_fraction={self.config_fraction!r}.")
        for name in ("meta_features", "portfolio_ranks", "full_fidelity_return"):
            if not isinstance(getattr(self, name), bool):
                raise RlhpoError(f"{name} must be true or false, but got {getattr(self, name)!r}.")
        if isinstance(self.exclude_datasets, str) or not isinstance(self.exclude_datasets, list | tuple):
            raise RlhpoError(f"exclude_datasets must be a list of dataset names, but got {self.exclude_datasets!r}.")
        object.__setattr__(self, "exclude_datasets", tuple(str(d) for d in self.exclude_datasets))

    def store_path(self) -> Path:
        """The curve store meta-training reads: ``store``, else the shipped meta-dataset."""
        path = Path(self.store) if self.store else shipped_file(SHIPPED_STORE)
        if not path.is_file():
            where = f"store {self.store!r} of the settings" if self.store else f"shipped meta-dataset {str(path)!r}"
            raise RlhpoError(
                f"The {where} does not exist; record one with `rlhpo collect --store PATH` and set `store: PATH`."
            )
        return path.resolve()

    def search_space(self) -> SearchSpace:
        return load_search_space(self.space)

    def budget_epochs(self, space: SearchSpace) -> int:
        return space.budget_epochs(self.budget_fte)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples): what ``config.yaml`` holds and :func:`settings_from_dict` reads."""
        return _plain(dataclasses.asdict(self))


def settings_from_dict(data: dict[str, Any], where: str) -> TrainAgentSettings:
    """Build the settings from a mapping (a YAML file's contents)."""
    nested = {"reward": RewardSettings, "ppo": PPOSettings, "evaluation": EvalSettings}
    values = dict(data)
    for name, cls in nested.items():
        if name in values:
            if not isinstance(values[name], dict):
                raise RlhpoError(f"{where}: {name} must be a mapping, but got {values[name]!r}.")
            values[name] = from_dict(cls, values[name], f"{where} {name}")
    return from_dict(TrainAgentSettings, values, where)


def load_train_agent_settings(path: str | Path | None = None) -> TrainAgentSettings:
    """Read the settings of ``rlhpo train-agent`` (the shipped ``configs/train_agent.yaml`` by default)."""
    where = str(path or "configs/train_agent.yaml")
    return settings_from_dict(read_yaml(path or shipped_file("configs/train_agent.yaml")), where)


# ------------------------------------------------------------------- checks


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise RlhpoError(f"{name} must be an integer{bound}, but got {name}={value!r}.")


def _check_float(name: str, value: Any, minimum: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise RlhpoError(f"{name} must be a finite number{bound}, but got {name}={value!r}.")


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise RlhpoError(f"{name} must be a non-empty list of layer widths, but got {value!r}.")
    for v in value:
        _check_int(name, v, minimum=1)
    return tuple(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------- bench


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class BenchSettings:
    """What ``rlhpo bench`` runs; each field is also its command-line option (``--first-seed`` ...)."""

    tasks: tuple[str, ...] = field(
        default=("ag_news",), metadata=_help("Datasets (or, recorded, task keys of the store).")
    )
    methods: tuple[str, ...] = field(default=METHODS, metadata=_help(f"Tuners, of: {', '.join(METHODS)}."))
    budgets: tuple[float, ...] = field(
        default=(1.0, 3.0, 10.0, 30.0), metadata=_help("Budgets in full-training equivalents (FTE).")
    )
    seeds: int = field(default=5, metadata=_help("Episodes per task, method and budget."))
    first_seed: int = field(default=10000, metadata=_help("The first evaluation seed."))
    backend: str = field(
        default="recorded",
        metadata={"help": "recorded: trials looked up in --store; live: trained.", "choices": REAL_BACKENDS},
    )
    store: str | None = field(default=None, metadata=_help("Recorded curves (default: the shipped meta-dataset)."))
    policy: str | None = field(default=None, metadata=_help("policy.zip or train-agent run folder (default: shipped)."))
    space: str | None = field(default=None, metadata=_help("Search-space YAML (default: the policy's space)."))
    train_seed: int = field(default=0, metadata=_help("Training seed of every trial."))
    reference_budget: float = field(
        default=DEFAULT_BUDGET_FTE, metadata=_help("The budget (FTE) the speedup is measured at.")
    )
    incumbent: str = field(
        default="best",
        metadata={
            "help": "The env's incumbent, what each episode is judged on: the best trial, or the best of the "
            "longest-trained ones (top_rung).",
            "choices": INCUMBENT_RULES,
        },
    )
    family: str | None = field(
        default=None, metadata={"help": "Live: the model family (default: the dataset's).", "flag": "--model"}
    )
    n_train: int | None = field(default=None, metadata=_help("Live: training examples (default: all)."))
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Live: folder of <name>/{train,test}.parquet (default: $RLHPO_DATA_DIR).",
            "envvar": "RLHPO_DATA_DIR",
        },
    )
    device: str = field(default="cpu", metadata=_help("Live: torch device, e.g. cuda."))
    # Where the episodes run, not what they are: a bench in another place gives the same rows,
    # so these are left out when an interrupted bench is compared with its settings (PLACEMENT).
    executor: str = field(
        default="local",
        metadata={
            "help": "Where episodes run: local worker processes, or Ray tasks (needs pip install 'rlhpo[ray]').",
            "choices": EXECUTORS,
        },
    )
    workers: int = field(
        default=1,
        metadata=_help("Episodes run at once (local: processes; 1: in this process; Ray: the local instance's CPUs)."),
    )
    address: str | None = field(
        default=None, metadata=_help("--executor ray: the cluster, 'auto' or HOST:PORT (default: a local instance).")
    )

    PLACEMENT: ClassVar[tuple[str, ...]] = ("executor", "workers", "address")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise unknown("executor", self.executor, EXECUTORS)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise RlhpoError(f"workers must be an integer >= 1, but got workers={self.workers!r}.")
        if self.address is not None and self.executor != "ray":
            raise RlhpoError(
                f"--address is for --executor ray, but got --executor {self.executor} with --address {self.address!r}."
            )
        if self.backend not in REAL_BACKENDS:
            raise unknown("backend", self.backend, REAL_BACKENDS)
        for m in self.methods:
            if m not in METHODS:
                raise unknown("method", m, METHODS)
        if not self.tasks or not self.methods or not self.budgets or self.seeds < 1:
            raise RlhpoError("bench needs at least one task, method and budget, and --seeds of at least 1.")
        if any(not (b > 0 and math.isfinite(b)) for b in self.budgets):
            raise RlhpoError(f"Budgets must be positive numbers of full-training equivalents, but got {self.budgets}.")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def parallel(self) -> bool:
        """Whether episodes go to an executor (else they run one after the other in this process)."""
        return self.executor != "local" or self.workers > 1

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def what(self) -> dict[str, Any]:
        """:meth:`to_dict` without :attr:`PLACEMENT`: what makes the rows (a resumed bench must match it)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.PLACEMENT}
