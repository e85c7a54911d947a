"""HPOEnv: hyperparameter search on one task as a Gymnasium environment (``rlhpo/HPO-v0``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlhpo.envs import INCUMBENT_RULES
from rlhpo.envs.backends import Backend, Trial, make_backend
from rlhpo.envs.reward import RewardSettings, relative_compute, step_reward
from rlhpo.errors import RlhpoError
from rlhpo.space import Config, SearchSpace, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.features import META_FEATURES
from rlhpo.tasks.task import Task
from rlhpo.training import EpochRecord

# The observation, in order (see the table in HPOEnv's docstring).
BUDGET_FEATURES = ("budget_used", "budget_remaining", "steps", "incumbent_score")
CURVE_FEATURES = ("last_final_score", "last_best_score", "last_slope", "last_loss_gap", "last_diverged")
FAMILY_FEATURES = tuple(f for f in META_FEATURES if f.startswith("family_"))  # hidden when the family is searched


def observation_names(space: SearchSpace) -> tuple[str, ...]:
    """The observation's entries, in order, for an env over ``space`` (its dims give the config's)."""
    return META_FEATURES + BUDGET_FEATURES + tuple(f"last_{h}" for h in space.dims) + CURVE_FEATURES


SLOPE_EPOCHS = 3  # the slope is taken over the last (up to) this many completed epochs
MAX_BUDGET_FTE = 30.0  # the episode budget's observed size is log(1 + FTE) / log(1 + this), clipped to 1


def history_names(space: SearchSpace, k: int) -> tuple[str, ...]:
    """The entries :meth:`HPOEnv.history_features` gives: the budget's size, then the ``k`` best trials."""
    per_trial = tuple(space.dims) + ("score", "epochs")
    return ("budget_size",) + tuple(f"best{i + 1}_{name}" for i in range(k) for name in per_trial)


@runtime_checkable
class TaskSource(Protocol):
    """Anything that draws a task from a numpy generator (a :class:`rlhpo.tasks.TaskSampler`)."""

    def sample(self, rng: np.random.Generator) -> Task: ...


def curve_features(trial: Trial) -> tuple[float, float, float, float, float]:
    """(final score, best score, slope, train–validation loss gap, diverged) of a trial, each in [-1, 1]."""
    s = trial.scores
    n = len(s)
    final = float(s[-1]) if n else 0.0
    best = float(s.max()) if n else 0.0
    m = min(SLOPE_EPOCHS, n)
    slope = float(s[-1] - s[-m]) / (m - 1) if m >= 2 else 0.0
    gap = math.tanh(trial.val_loss - trial.train_loss) if n else 0.0
    return (_clip(final), _clip(best), _clip(slope), gap, float(trial.diverged))


def fidelity(epochs_choices: Sequence[int], asked: int, done: int, remaining: int) -> tuple[int, int]:
    """(epochs to train a trial to, epochs it resumes from) when ``asked`` epochs of a config are asked.

    A config already trained for ``done`` > 0 epochs this episode is continued when asked for
    more: the largest epochs choice up to the one asked whose extra epochs fit the ``remaining``
    budget. Any other step (a new config, a repeat, a continuation that does not fit) is a fresh
    trial at the largest epochs choice that fits.
    """
    longer = [e for e in epochs_choices if done < e <= asked and e - done <= remaining]
    if done and longer:
        return max(longer), done
    return max(e for e in epochs_choices if e <= min(asked, remaining)), 0


def trial_score(trial: Trial) -> float:
    """The trial's score: normalised validation accuracy at its last completed epoch (0 if none)."""
    return _clip(float(trial.scores[-1])) if len(trial.scores) else 0.0


@dataclass(frozen=True)
class StepResult:
    """What one HPOEnv step did (``info["result"]``): the trial, its score, and the budget after it."""

    task: str  # the task key
    step: int  # 1 for the episode's first step
    action: tuple[int, ...]
    config: Config  # as asked
    trial: Trial  # the answer: ``trial.config`` is the config whose curve answered, at the epochs trained
    resumed_from: int  # epochs of the same config trained earlier in the episode that this trial continued
    score: float
    incumbent: float
    incumbent_config: Config | None  # the best trial's config (at the epochs it was trained to)
    budget_used: int
    budget_remaining: int
    cost_fte: float  # paid epochs in full trainings
    compute_fte: float  # paid epochs in full trainings of the default config's compute
    backend: str

    @property
    def epochs(self) -> int:
        """Epochs the trial was trained to."""
        return self.trial.epochs

    @property
    def paid_epochs(self) -> int:
        """Epochs this step paid (fewer than ``epochs`` when it continued an earlier trial)."""
        return self.trial.epochs - self.resumed_from

    @property
    def answered_config(self) -> Config:
        return self.trial.config

    @property
    def curve(self) -> tuple[EpochRecord, ...]:
        return self.trial.curve

    @property
    def diverged(self) -> bool:
        return self.trial.diverged

    @property
    def seconds(self) -> float:
        """Recorded training seconds of the paid epochs."""
        return self.trial.seconds

    @property
    def exact(self) -> bool:
        """Whether the config asked answered (not a nearest recorded one)."""
        return self.trial.exact

    @property
    def distance(self) -> float:
        """How far the answering config is from the one asked (0 when exact)."""
        return self.trial.distance

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what rollout files and summaries hold)."""
        return {
            "task": self.task,
            "step": self.step,
            "action": list(self.action),
            "config": self.config.to_dict(),
            "epochs": self.epochs,
            "resumed_from": self.resumed_from,
            "paid_epochs": self.paid_epochs,
            "answered_config": self.answered_config.to_dict(),
            "exact": self.exact,
            "distance": self.distance,
            "curve": [dataclasses.asdict(e) for e in self.curve],
            "diverged": self.diverged,
            "score": self.score,
            "incumbent": self.incumbent,
            "incumbent_config": self.incumbent_config.to_dict() if self.incumbent_config else None,
            "budget_used": self.budget_used,
            "budget_remaining": self.budget_remaining,
            "cost_fte": self.cost_fte,
            "compute_fte": self.compute_fte,
            "seconds": self.seconds,
            "backend": self.backend,
        }


def _clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


class HPOEnv(gym.Env[np.ndarray, np.ndarray]):
    """
    ## Description

    One episode is one hyperparameter-tuning session on one task (a dataset, a model family, a
    training-set size, a seed) with a budget in epochs. Each step proposes a whole config: a
    fresh model is trained with it for its epochs (or the trial is looked up among recorded
    curves), the budget pays those epochs, and the incumbent, the best trial so far, is updated.
    The agent's goal is a high incumbent score when the budget is spent.

    Scores are validation accuracy normalised per task, ``(acc − 1/k) / (1 − 1/k)`` for ``k``
    classes: 0 at chance, 1 when perfect, the same scale on MNIST and TREC.

    ## Action Space

    The action is a `ndarray` of shape `(d,)`, a `MultiDiscrete` with one choice index per
    dimension of the search space (`configs/search_space.yaml`), in this order:
    learning_rate, batch_size, epochs, dropout, optimizer, weight_decay, num_layers, units, and,
    in a space that lists model families, family (`d` = 9; else `d` = 8). `epochs` is the
    fidelity of the trial: the shipped space offers 1, 3 and 9 epochs.

    The family's choices depend on the task's modality (images: cnn, mlp; text: bow, textcnn,
    gru, lstm, transformer), but an action space must be the same on every task. So the family
    index is read within the modality's list, modulo its length: every index names a family the
    task can train, and no invalid family is ever trained. (Masking invalid indices, e.g. with
    sb3-contrib's MaskablePPO, would need a second algorithm and masks in every tuner; the
    baselines draw the family uniformly from the modality's list instead, `sample_action`.) A
    task that pins its family (`Task(family=...)`, the CLI's `--model`) trains that family
    whatever the index, and its observation shows it.

    A config already trained this episode (same choices but `epochs`) and asked for more epochs
    is *continued*: the step pays only the extra epochs (`info["result"].resumed_from`,
    `.paid_epochs`), as a multi-fidelity tuner (top-k, Hyperband) expects. Its curve is
    the one a single longer run gives.

    ## Observation Space

    The observation is a float32 `ndarray` of shape `(22 + d,)` (`env.observation_names`):

    | Num          | Observation                                                 | Min | Max |
    |--------------|-------------------------------------------------------------|-----|-----|
    | 0-12         | task meta-features (`rlhpo.tasks.features.META_FEATURES`)   | 0   | 1   |
    | 13           | budget used, fraction of `budget_epochs`                    | 0   | 1   |
    | 14           | budget remaining, fraction of `budget_epochs`               | 0   | 1   |
    | 15           | steps taken / most steps the budget allows                  | 0   | 1   |
    | 16           | incumbent score (0 before any trial)                        | -1  | 1   |
    | 17-(16+d)    | last trial's config, normalised encoding (`SearchSpace.encode`) | 0 | 1 |
    | 17+d         | last trial's final validation score                         | -1  | 1   |
    | 18+d         | last trial's best validation score over its epochs          | -1  | 1   |
    | 19+d         | last trial's score slope per epoch over its last 3 epochs   | -1  | 1   |
    | 20+d         | last trial's loss gap, tanh(val loss − train loss)          | -1  | 1   |
    | 21+d         | last trial diverged (1) or not (0)                          | 0   | 1   |

    When the family is the action's to choose, the meta-features' family one-hot is 0. Entries
    from 17 on are 0 after `reset`. The last trial's config is the one whose curve answered
    (with the recorded backend, the nearest recorded config) at the epochs actually paid. A
    trial that diverged keeps the scores of the epochs it completed (0 if none), so the
    observation stays finite and in the space.

    A policy that searches may observe more (`history_features(k)`, appended by
    `rlhpo.agents.policy.HistoryObservation`): the budget's size, log(1 + FTE) / log(1 + 30), and
    the episode's `k` best trials so far (config encoding, score, epochs). With `k = 0` nothing is
    appended and the observation is the table above.

    ## Rewards

    `r = (incumbent_after − incumbent_before) − (cost_per_fte + compute_cost × compute) ×
    paid_epochs / max_epochs − distance_penalty × distance − divergence_penalty × diverged`,
    where `compute` is the asked config's per-epoch compute relative to the space's default
    config (`rlhpo.envs.reward.relative_compute`: num_layers × units²) and `distance` is
    `info["result"].distance` (0 for a trained trial), with the weights of
    `rlhpo.envs.reward.RewardSettings` (defaults 0.01, 0.002, 0.05 and 0.1; the module says
    why). The incumbent starts at 0, so the undiscounted return is the final incumbent score
    less the costs. A trial's score is its normalised validation accuracy at its last completed
    epoch.
    Meta-training can add one term to an episode's last reward (`full_fidelity_return: true`,
    `rlhpo.agents.meta_train.FullFidelityReturn`): the incumbent config's score after the largest
    epochs choice less the incumbent, so that the return is the score the benchmarks judge.

    The incumbent is the episode's best trial (`incumbent="best"`, the default), at whatever
    epochs it was trained to. With `incumbent="top_rung"` it is Hyperband's: the best of the
    trials trained to the most epochs any trial of the episode has reached, so a one-epoch score
    stops counting once a config is trained longer (and the incumbent can fall, with a negative
    first term). The benchmarks judge the incumbent config trained in full, so the rule also
    decides what a tuner is judged on.

    ## Starting State

    `reset` takes the task from `options["task"]` (a `Task`, or the key of a task in the store),
    or draws one with the env's generator from `tasks` (a list, or a `TaskSampler`), or else
    from every task recorded in the store (recorded backend). The budget is `budget_epochs`, or
    `options["budget_epochs"]` for this episode only (meta-training draws it per episode, so one
    policy serves every budget). The budget is full, the incumbent is 0 and there is no last trial.

    ## Episode End

    1. Termination: the budget is spent (fewer epochs remain than the smallest epochs choice).
    A step whose epochs exceed the remaining budget trains for the largest epochs choice that
    fits; `info["result"].epochs` says how far it trained and `.paid_epochs` what it paid. There is
    no truncation: every step pays at least one epoch, so an episode has at most `budget_epochs`
    steps.

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> import rlhpo.envs
    >>> env = gym.make("rlhpo/HPO-v0", backend="recorded", store="runs/store.sqlite")
    >>> obs, info = env.reset(seed=0)
    ```

    | Parameter          | Type                 | Default         | Description                                 |
    |--------------------|----------------------|-----------------|---------------------------------------------|
    | `backend`          | `str`                | `"live"`        | `live` trains each trial; `recorded` looks  |
    |                    |                      |                 | it up in the store; `surrogate` predicts it |
    |                    |                      |                 | (`store`: the surrogate file)               |
    | `store`            | path or `CurveStore` | `None`          | curve store; `None` (live only): in memory  |
    | `tasks`            | `Task`s/keys, sampler| see below       | the tasks episodes draw from                |
    | `space`            | `SearchSpace`, path  | shipped space   | the search space                            |
    | `budget_epochs`    | `int`                | 3 FTE in epochs | the budget of an episode, in epochs         |
    | `train_seed`       | `int`                | `0`             | training seed of every trial (recorded runs |
    |                    |                      |                 | must have been trained with it)             |
    | `reward`           | `RewardSettings`     | defaults        | reward weights                              |
    | `exclude_datasets` | `list[str]`          | `()`            | left out of the recorded default tasks      |
    | `data_dir`         | path                 | `RLHPO_DATA_DIR`| local datasets (live backend)               |
    | `device`           | `str`                | `"cpu"`         | torch device (live backend)                 |
    | `incumbent`        | `str`                | `"best"`        | `best` or `top_rung` (Rewards, above)       |

    `tasks` defaults to `[Task("digits")]` (live) or every task recorded in the store for
    `train_seed` (recorded), less `exclude_datasets`.

    After `reset`, `info` holds plain JSON values: `task`, `dataset`, `family`, `n_classes`,
    `meta_features`, `budget_epochs`, `backend`. After `step`, `info["result"]` is a frozen
    `StepResult`: the step's number and action, the config as asked, the backend's `Trial` (the
    config whose curve answered, at the epochs trained; the curve as `EpochRecord`s; whether the
    answer was exact and how far it was), `resumed_from`, the trial's score, the incumbent and
    its config, the budget used and remaining, and its cost in full trainings (`cost_fte`) and in
    full trainings of the default config's compute (`compute_fte`). `StepResult.to_dict()` gives
    plain JSON for files (what `RolloutRecorder` writes). All of it depends only on the seed, the
    actions and the recorded curves (`seconds` are the recorded training seconds), never on
    whether this step trained or found its curve in the store.

    A tuner asks the env, not its own bookkeeping, whether an action would only repeat what the
    episode already knows: `is_repeat(config)`.

    ## Version History

    * v0: Initial version. Later in v0 (same MDP): the step's `info` became a typed `StepResult`
      (`info["result"]`) instead of a dict of JSON values; a space may list model families, which
      adds the family dimension to the action and the observation (an 8-dimensional space
      behaves as before).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        backend: str | Backend = "live",
        store: CurveStore | str | Path | None = None,
        *,
        tasks: Sequence[Task | str] | TaskSource | None = None,
        space: SearchSpace | str | Path | None = None,
        budget_epochs: int | None = None,
        train_seed: int = 0,
        reward: RewardSettings | None = None,
        exclude_datasets: Sequence[str] = (),
        data_dir: str | Path | None = None,
        device: str = "cpu",
        incumbent: str = "best",
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise RlhpoError(f"HPOEnv renders nothing, but got {render_mode=}; leave it None.")
        if incumbent not in INCUMBENT_RULES:
            raise RlhpoError(f"incumbent must be one of {', '.join(INCUMBENT_RULES)}, but got {incumbent!r}.")
        self.incumbent_rule = incumbent
        self.space = space if isinstance(space, SearchSpace) else load_search_space(space)
        self.reward_settings = reward or RewardSettings()
        self.train_seed = train_seed
        epochs_choices = sorted(self.space.choices["epochs"])
        self._epochs_choices = epochs_choices
        self.max_epochs = self.space.max_epochs
        self.budget_epochs = self.space.budget_epochs() if budget_epochs is None else int(budget_epochs)
        if self.budget_epochs < epochs_choices[0]:
            raise RlhpoError(
                f"budget_epochs must be at least the smallest epochs choice {epochs_choices[0]}, "
                f"but got budget_epochs={self.budget_epochs}."
            )
        self.max_steps = self.budget_epochs // epochs_choices[0]
        self._default_budget = self.budget_epochs  # reset's options["budget_epochs"] changes one episode's

        task_list: list[Task | str] = []
        self._sampler: TaskSource | None = None
        if isinstance(tasks, TaskSource):
            self._sampler = tasks
        elif tasks is not None:
            task_list = list(tasks)
            if not task_list:
                raise RlhpoError("tasks is empty; pass at least one Task, or None for the backend's default.")
        if isinstance(backend, str):
            live_tasks = [t for t in task_list if isinstance(t, Task)]
            if backend == "live" and tasks is None:
                live_tasks = [Task("digits")]
            backend = make_backend(
                backend,
                store,
                self.space,
                tasks=live_tasks,
                train_seed=train_seed,
                exclude_datasets=exclude_datasets,
                data_dir=data_dir,
                device=device,
            )
        self.backend: Backend = backend
        self._tasks: list[Task | str] | None = task_list or None

        self.action_space = spaces.MultiDiscrete(self.space.nvec)
        n_meta = len(META_FEATURES)
        self.observation_names = observation_names(self.space)
        low = np.zeros(len(self.observation_names), dtype=np.float32)
        high = np.ones(len(self.observation_names), dtype=np.float32)
        low[n_meta + 3] = -1.0  # incumbent score
        low[len(self.observation_names) - len(CURVE_FEATURES) : -1] = -1.0  # scores, slope, gap
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self._low, self._high = low, high

        self._record: TaskRecord | None = None
        self._meta = np.zeros(n_meta, dtype=np.float32)
        self._used = 0
        self._steps = 0
        self._incumbent = 0.0
        self._best_score = -math.inf  # the incumbent trial's score (of the top rung's trials with top_rung)
        self._top_epochs = 0  # the most epochs a trial of the episode was trained to
        self._incumbent_config: Config | None = None
        self._last: Trial | None = None
        self._trained: dict[str, int] = {}  # config key (epochs left out) -> most epochs trained this episode
        self._known: dict[str, int] = {}  # the same, for the configs asked and the configs that answered
        self._latest: dict[str, float] = {}  # config key (asked or answering) -> its latest trial's score
        self._trials: list[tuple[float, Config]] = []  # (score, answering config at its epochs), in order
        self._done = True

    # ------------------------------------------------------------------ API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown_options = set(options) - {"task", "budget_epochs"}
        if unknown_options:
            raise RlhpoError(
                f"Unknown reset options {sorted(unknown_options)}; HPOEnv takes 'task' and 'budget_epochs'."
            )
        self.budget_epochs = self._episode_budget(options.get("budget_epochs"))
        self.max_steps = self.budget_epochs // self._epochs_choices[0]
        task = options.get("task")
        if task is None:
            task = self._draw_task()
        if not isinstance(task, Task | str):
            raise RlhpoError(f"options['task'] must be a Task or a task key, but got {type(task).__name__}.")
        self._record = self.backend.describe(task)
        self._meta = self._meta_vector(self._record)
        self._used = 0
        self._steps = 0
        self._incumbent = 0.0
        self._best_score = -math.inf
        self._top_epochs = 0
        self._incumbent_config = None
        self._last = None
        self._trained = {}
        self._known = {}
        self._latest = {}
        self._trials = []
        self._done = False
        return self._get_obs(), self._reset_info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._done or self._record is None:
            raise RlhpoError("The episode has ended (or never started): call reset() before step().")
        config = self.decode(action)  # raises a clear error for an action outside the space
        epochs, resume_from = self._fidelity(config)
        paid = epochs - resume_from
        trial = self.backend.run(self._record.task, config, epochs, resume_from=resume_from)
        self._trained[config.key()] = max(epochs, self._trained.get(config.key(), 0))
        score = trial_score(trial)
        for known in (config, trial.config):  # a recorded answer makes the answering config known too
            self._known[known.key()] = max(epochs, self._known.get(known.key(), 0))
            self._latest[known.key()] = score
        before = self._incumbent
        if self.incumbent_rule == "top_rung" and epochs > self._top_epochs:  # a new top rung: it alone counts
            self._best_score = -math.inf
        self._top_epochs = max(self._top_epochs, epochs)
        counts = self.incumbent_rule == "best" or epochs == self._top_epochs
        if counts and score > self._best_score:  # the incumbent config is the best trial's, even below chance
            self._best_score = score
            self._incumbent_config = trial.config
        self._incumbent = max(0.0, self._best_score)
        compute = relative_compute(config, self.space.default_config(self.modality))
        reward = step_reward(
            self.reward_settings,
            incumbent_before=before,
            incumbent_after=self._incumbent,
            epochs=paid,
            max_epochs=self.max_epochs,
            compute=compute,
            distance=trial.distance,
            diverged=trial.diverged,
        )
        self._used += paid
        self._steps += 1
        self._last = trial
        self._trials.append((score, trial.config))
        terminated = self.budget_epochs - self._used < self._epochs_choices[0]
        self._done = terminated
        result = self._step_result(action, config, trial, score, resume_from, compute)
        return self._get_obs(), float(reward), terminated, False, {"result": result}

    @property
    def record(self) -> TaskRecord:
        """The current task as the backend describes it (its meta-features included)."""
        assert self._record is not None, "reset() first"
        return self._record

    @property
    def modality(self) -> str:
        """The current task's modality (``image``, ``text`` or ``tabular``)."""
        assert self._record is not None, "reset() first"
        return self._record.modality

    @property
    def task_family(self) -> str:
        """The current task's own family: the one it pins, else its dataset's default."""
        assert self._record is not None, "reset() first"
        return self._record.family

    def on_task(self, config: Config) -> Config:
        """``config`` as the current task trains it: with the task's family where the space searches
        the family and ``config`` names none (a list learned without families, as on older stores)."""
        if self.space.families and config.family is None:
            return config.with_family(self.task_family)
        return config

    def decode(self, action: Any) -> Config:
        """The config an action asks for on the current task.

        With a family dimension, the family index is read in the task's modality's list; a task
        that pins its family (``Task(family=...)``, the CLI's ``--model``) trains that family.
        """
        assert self._record is not None, "reset() first"
        return self.space.decode(action, self.modality, self._record.task.family)

    def default_action(self) -> np.ndarray:
        """The action of the default config on the current task."""
        return self.space.indices(self.space.default_config(self.modality), self.modality)

    def sample_action(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random action that names a family the current task can train."""
        return self.space.sample_indices(rng, self.modality)

    @property
    def budget_used(self) -> int:
        """Epochs of the episode's budget spent so far."""
        return self._used

    @property
    def budget_remaining(self) -> int:
        """Epochs left in the episode's budget."""
        return self.budget_epochs - self._used

    def is_repeat(self, config: Config) -> bool:
        """Whether asking ``config`` now would tell nothing new: the episode already knows its curve that far.

        It does when the config, or a config whose recorded curve answered an earlier step, has
        been seen to at least the epochs this step would train (HPOEnv's :func:`fidelity` rule).
        """
        done = self._known.get(config.key(), 0)
        epochs, _ = fidelity(self._epochs_choices, config.epochs, done, self.budget_remaining)
        return epochs <= done

    def seen(self, config: Config) -> tuple[int, float]:
        """(epochs, score) the episode knows of ``config``: the most epochs it was trained or answered to, and the
        score of its latest trial; (0, 0.0) when it has not been tried. Epochs of ``config`` itself are ignored."""
        key = config.key()
        return self._known.get(key, 0), self._latest.get(key, 0.0)

    def history_features(self, k: int, budget_epochs: int | None = None) -> np.ndarray:
        """What a policy that searches observes beyond :attr:`observation_names` (:func:`history_names`).

        The budget's size, ``log(1 + budget in FTE) / log(1 + 30)`` (the base observation holds
        only fractions of it), then the episode's ``k`` best trials so far, best first (ties: the
        earlier), each as its answering config's encoding, its score and its epochs as a fraction
        of the largest choice; zeros where fewer than ``k`` trials were made. In [0, 1] but the
        scores, in [-1, 1].
        """
        assert self._record is not None, "reset() first"
        width = len(self.space.dims) + 2
        out = np.zeros(1 + k * width, dtype=np.float32)
        budget = self.budget_epochs if budget_epochs is None else budget_epochs
        out[0] = min(math.log1p(budget / self.max_epochs) / math.log1p(MAX_BUDGET_FTE), 1.0)
        best = sorted(enumerate(self._trials), key=lambda it: (-it[1][0], it[0]))[:k]
        for slot, (_, (score, config)) in enumerate(best):
            start = 1 + slot * width
            out[start : start + width - 2] = self.space.encode(config, self.modality)
            out[start + width - 2] = _clip(score)
            out[start + width - 1] = config.epochs / self.max_epochs
        return out

    def _episode_budget(self, asked: Any) -> int:
        """This episode's budget in epochs: ``asked`` (reset's ``options["budget_epochs"]``), else the env's."""
        if asked is None:
            return self._default_budget
        budget = int(asked)
        if budget < self._epochs_choices[0]:
            raise RlhpoError(
                f"budget_epochs must be at least the smallest epochs choice {self._epochs_choices[0]}, "
                f"but got budget_epochs={asked}."
            )
        return budget

    def _fidelity(self, config: Config) -> tuple[int, int]:
        return fidelity(self._epochs_choices, config.epochs, self._trained.get(config.key(), 0), self.budget_remaining)

    def close(self) -> None:
        self.backend.close()
        super().close()

    # -------------------------------------------------------------- helpers

    def _draw_task(self) -> Task | str:
        if self._sampler is not None:
            return self._sampler.sample(self.np_random)
        tasks = self._tasks or self.backend.default_tasks()
        return tasks[int(self.np_random.integers(len(tasks)))]

    def _meta_vector(self, record: TaskRecord) -> np.ndarray:
        missing = [f for f in META_FEATURES if f not in record.meta_features]
        if missing:
            raise RlhpoError(f"Task {record.key!r} lacks the meta-features {missing}; re-record it.")
        v = np.array([record.meta_features[f] for f in META_FEATURES], dtype=np.float32)
        if self.space.families and record.task.family is None:  # the family is the action's to choose
            v[[META_FEATURES.index(f) for f in FAMILY_FEATURES]] = 0.0
        return np.clip(v, 0.0, 1.0)

    def _get_obs(self) -> np.ndarray:
        obs = np.zeros(len(self.observation_names), dtype=np.float32)
        n = len(self._meta)
        obs[:n] = self._meta
        obs[n] = self._used / self.budget_epochs
        obs[n + 1] = (self.budget_epochs - self._used) / self.budget_epochs
        obs[n + 2] = min(self._steps / self.max_steps, 1.0)
        obs[n + 3] = self._incumbent
        if self._last is not None:
            c = n + len(BUDGET_FEATURES)
            dims = len(self.space.dims)
            obs[c : c + dims] = self.space.encode(self._last.config, self.modality)
            obs[c + dims :] = curve_features(self._last)
        return np.clip(obs, self._low, self._high)

    def _reset_info(self) -> dict[str, Any]:
        assert self._record is not None
        r = self._record
        return {
            "task": r.key,
            "dataset": r.task.dataset,
            "family": r.family,
            "n_classes": r.n_classes,
            "meta_features": {f: float(r.meta_features[f]) for f in META_FEATURES},
            "budget_epochs": self.budget_epochs,
            "backend": self.backend.name,
        }

    def _step_result(
        self, action: Any, config: Config, trial: Trial, score: float, resume_from: int, compute: float
    ) -> StepResult:
        assert self._record is not None
        fte = (trial.epochs - resume_from) / self.max_epochs
        return StepResult(
            task=self._record.key,
            step=self._steps,
            action=tuple(int(a) for a in np.asarray(action).reshape(-1)),
            config=config,
            trial=trial,
            resumed_from=resume_from,
            score=score,
            incumbent=self._incumbent,
            incumbent_config=self._incumbent_config,
            budget_used=self._used,
            budget_remaining=self.budget_remaining,
            cost_fte=fte,
            compute_fte=compute * fte,
            backend=self.backend.name,
        )
