"""rlhpo inside the Optuna workflow people already use.

- :func:`optuna_distributions`: the search space as Optuna distributions, so a config is an
  Optuna trial's ``params`` (``Config.to_dict()``: the values, not choice indices).
- :func:`suggest_to_study`: rlhpo's zero-shot suggestions enqueued into a user's study.
- :class:`StudyWriter`: every trial of a ``rlhpo tune`` episode added to an Optuna study (its
  params, each epoch's score as an intermediate value, the final score as the value).
- :func:`import_study`: the trials of a user's study that fit the space, as curves in a store,
  so that ``rlhpo train-agent`` can meta-train on the user's history.
- :class:`PPOTPETuner` (``ppo_tpe``): the policy's first trials, then the learned list's configs
  enqueued as TPE's startup trials, then TPE warm-started with all of them.

Values are scores: validation accuracy normalised per task, ``(acc − 1/k) / (1 − 1/k)``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from rlhpo.agents.learned_list import ConfigLists, as_lists, for_modality
from rlhpo.agents.optuna_tuners import TPETuner, _ask_indices
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.suggest import suggest
from rlhpo.envs.hpo_env import HPOEnv, StepResult
from rlhpo.errors import RlhpoError
from rlhpo.metrics import normalised_score
from rlhpo.space import FAMILY, HYPERPARAMETERS, Config, SearchSpace, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

log = logging.getLogger(__name__)

TASK_ATTR = "rlhpo_task"  # user attributes of a trial that ``tune`` wrote: the task's key,
DIVERGED_ATTR = "rlhpo_diverged"  # and whether training diverged


def optuna_distributions(space: SearchSpace, modality: str | None = None) -> dict[str, BaseDistribution]:
    """Each dimension of ``space`` as an Optuna distribution over its listed values.

    Every one is a :class:`~optuna.distributions.CategoricalDistribution`, the learning rate
    too, because only the listed values are what rlhpo trains and records. Optuna refuses a
    ``step`` on a ``FloatDistribution(log=True)``, and the learning rate's grid (1e-4, 3e-4,
    1e-3, ...) is evenly spaced on no scale anyway. An int or float range would admit values
    between the choices (a batch size of 17, a learning rate of 5e-4) that rlhpo cannot answer.
    A categorical keeps each param one of the choices, as the values themselves, which is what
    ``enqueue_trial`` and ``import_study`` exchange with users. TPE sees no order in it; rlhpo's
    own TPE tuners ask choice indices instead (:mod:`rlhpo.agents.optuna_tuners`). ``family``,
    when the space searches it, lists ``modality``'s families.
    """
    out: dict[str, BaseDistribution] = {h: CategoricalDistribution(space.choices[h]) for h in HYPERPARAMETERS}
    if space.families:
        if modality is None:
            raise RlhpoError("This space searches the model family: its distributions need the task's modality.")
        out[FAMILY] = CategoricalDistribution(space.family_choices(modality))
    return out


def suggest_to_study(
    study: optuna.Study,
    task: Task | str,
    n: int = 5,
    *,
    policy: PPOTuner | str | Path | None = None,
    data_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Enqueue rlhpo's ``n`` zero-shot configs for ``task`` into ``study`` (``study.enqueue_trial``).

    The params are the configs ``rlhpo suggest`` prints (``Config.to_dict()``: the values, with
    ``epochs`` at the largest choice), best first; the study's next ``n`` trials run them.
    Returns the params enqueued.
    """
    params = [c.to_dict() for c in suggest(task, n, policy=policy, data_dir=data_dir).configs]
    for p in params:
        study.enqueue_trial(p)
    return params


# ------------------------------------------------------------------ storage


def make_storage(storage: str | Path) -> str | optuna.storages.BaseStorage:
    """An Optuna storage: a database URL as it is (``sqlite:///study.db``), a file path as a journal file.

    A journal file is Optuna's ``JournalStorage(JournalFileBackend(path))``: append-only, no
    database needed.
    """
    text = str(storage)
    if "://" in text:
        return text
    path = Path(text)
    if path.is_file() and _is_sqlite(path):
        raise RlhpoError(f"{text!r} is an SQLite file; pass it as a database URL: --storage sqlite:///{text}")
    from optuna.storages.journal import JournalFileBackend, JournalStorage  # Optuna >= 4.0 (setup.cfg)

    return JournalStorage(JournalFileBackend(str(path)))


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def open_study(storage: str | Path, study_name: str) -> optuna.Study:
    """The study ``study_name`` in ``storage`` (created if missing, else continued), maximising scores."""
    study = optuna.create_study(
        storage=make_storage(storage), study_name=study_name, direction="maximize", load_if_exists=True
    )
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise RlhpoError(
            f"Study {study_name!r} in {str(storage)!r} does not maximise one value ({study.directions}); "
            "rlhpo's trials maximise their score: pass another --study-name."
        )
    return study


def load_study(storage: str | Path, study_name: str) -> optuna.Study:
    """An existing study; a missing one is an error that lists the storage's studies."""
    backend = make_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise RlhpoError(
            f"Study {study_name!r} is not in {str(storage)!r}; its studies: {', '.join(names) or 'none'}."
        ) from None


@dataclass
class StudyWriter:
    """Adds each trial of an episode to an Optuna study, as it finishes (an ``on_step`` hook).

    A trial's params are the config that answered, at the epochs it was trained to; its
    intermediate values the score after each epoch (steps 1, 2, ...); its value the trial's
    score. A trial that continued an earlier one has the whole curve, from epoch 1.
    """

    study: optuna.Study
    space: SearchSpace
    modality: str | None = None

    def __call__(self, step: StepResult) -> None:
        config = step.answered_config
        distributions = optuna_distributions(self.space, self.modality)
        if config.family is None:
            distributions.pop(FAMILY, None)
        self.study.add_trial(
            optuna.trial.create_trial(
                params=config.to_dict(),
                distributions=distributions,
                value=step.score,
                intermediate_values={i + 1: float(s) for i, s in enumerate(step.trial.scores)},
                user_attrs={TASK_ATTR: step.task, "rlhpo_step": step.step, DIVERGED_ATTR: step.diverged},
            )
        )


# ------------------------------------------------------------------ import

NOT_COMPLETE = "not complete"
ANOTHER_TASK = "written by rlhpo tune on another task"
NO_INTERMEDIATE = "no intermediate values"
BAD_STEPS = "intermediate steps are not 1..epochs"
OUT_OF_RANGE = "intermediate value is not a score (acc - chance) / (1 - chance)"


@dataclass
class ImportResult:
    """What :func:`import_study` did: runs written, trials already recorded, and why the others were skipped."""

    study: str
    task_key: str
    store: str
    trials: int = 0
    imported: int = 0
    already_recorded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "task": self.task_key,
            "store": self.store,
            "trials": self.trials,
            "imported": self.imported,
            "already_recorded": self.already_recorded,
            "skipped": dict(self.skipped),
        }

    def lines(self) -> list[str]:
        out = [
            f"study {self.study}: {self.trials} trials; {self.imported} imported as runs of {self.task_key} "
            f"into {self.store}, {self.already_recorded} already recorded, {sum(self.skipped.values())} skipped"
        ]
        out += [f"skipped {n}: {why}" for why, n in self.skipped.most_common()]
        return out


def import_study(
    storage: str | Path,
    study_name: str,
    task: Task,
    store: str | Path,
    *,
    space: SearchSpace | str | Path | None = None,
    train_seed: int = 0,
    data_dir: str | Path | None = None,
) -> ImportResult:
    """Write the trials of a study whose params fit ``space`` into ``store`` as curves of ``task``.

    A trial fits when it is complete (and, if ``tune`` wrote it, was on this task), has a param
    for each hyperparameter with one of the space's values (``family`` may be left out: the
    task's own family trained; if present, one of the task's modality's), and intermediate
    values at steps 1..epochs (fewer only for a trial ``tune`` marked diverged), each a score.
    Each epoch's validation accuracy is its score turned back, ``chance + score × (1 − chance)``
    with the task's number of classes. What a study does not know is 0 (the store holds no
    NaN): train and validation losses, macro-F1 and seconds. The policy then sees a loss gap of
    0, as before any trial.

    The task is loaded for its meta-features; the runs are recorded with ``train_seed``. A run
    already recorded as far is kept.
    """
    from rlhpo.tasks import load_task

    space = space if isinstance(space, SearchSpace) else load_search_space(space)
    study = load_study(storage, study_name)
    record = TaskRecord.from_data(load_task(task, data_dir=data_dir))
    result = ImportResult(study=study_name, task_key=record.key, store=str(store))
    with CurveStore(store) as curves:
        if curves.task(record.key) is None:
            curves.put_task(record)
        for trial in study.get_trials(deepcopy=False):
            result.trials += 1
            fitted = _fit(trial, space, record)
            if isinstance(fitted, str):
                result.skipped[fitted] += 1
                continue
            config, curve = fitted
            if curves.put_run(record.key, config, train_seed, curve, max_epochs=config.epochs):
                result.imported += 1
            else:
                result.already_recorded += 1
    log.info("imported %d of %d trials of study %s", result.imported, result.trials, study_name)
    return result


def _fit(trial: FrozenTrial, space: SearchSpace, record: TaskRecord) -> tuple[Config, Curve] | str:
    """The trial's config and curve, or why it does not fit."""
    if trial.state != TrialState.COMPLETE:
        return NOT_COMPLETE
    if trial.user_attrs.get(TASK_ATTR, record.key) != record.key:
        return ANOTHER_TASK
    values: dict[str, Any] = {}
    for h in HYPERPARAMETERS:
        if h not in trial.params:
            return f"param missing ({h})"
        value = _choice(trial.params[h], space.choices[h])
        if value is None:
            return f"value not a choice ({h})"
        values[h] = value
    if FAMILY in trial.params:
        families = (record.task.family,) if record.task.family else _families(space, record)
        if trial.params[FAMILY] not in families:
            return f"value not a choice ({FAMILY})"
        values[FAMILY] = trial.params[FAMILY]
    config = Config(**values)
    steps = sorted(trial.intermediate_values)
    if not steps:
        return NO_INTERMEDIATE
    diverged = bool(trial.user_attrs.get(DIVERGED_ATTR, False))
    if (
        steps != list(range(1, len(steps) + 1))
        or len(steps) > config.epochs
        or (len(steps) < config.epochs and not diverged)
    ):
        return BAD_STEPS
    accuracies = [accuracy_of(trial.intermediate_values[s], record.n_classes) for s in steps]
    if not all(math.isfinite(a) and -1e-9 <= a <= 1.0 + 1e-9 for a in accuracies):
        return OUT_OF_RANGE
    epochs = [EpochRecord(s, 0.0, 0.0, min(max(a, 0.0), 1.0), 0.0, 0.0) for s, a in zip(steps, accuracies)]
    return config, Curve(epochs=epochs, diverged=len(steps) < config.epochs)


def accuracy_of(score: float, n_classes: int) -> float:
    """The validation accuracy whose score is ``score``: ``chance + score × (1 − chance)``.

    The inverse is corrected to the last bit where rounding left it one off, so that the score
    the store gives back (:func:`~rlhpo.metrics.normalised_score`) is ``score`` exactly.
    """
    accuracy = 1.0 / n_classes + score * (1.0 - 1.0 / n_classes)
    for _ in range(8):
        back = normalised_score(accuracy, n_classes)
        if back == score or not math.isfinite(back):
            break
        accuracy = math.nextafter(accuracy, math.inf if back < score else -math.inf)
    return accuracy


def _choice(value: Any, choices: tuple[Any, ...]) -> Any:
    """The listed choice ``value`` is (a number within rounding), or ``None``."""
    for choice in choices:
        if isinstance(choice, str) or isinstance(value, str | bool):
            if value == choice and type(value) is type(choice):
                return choice
        elif isinstance(value, int | float) and math.isclose(float(value), float(choice), rel_tol=1e-9, abs_tol=0.0):
            return choice
    return None


def _families(space: SearchSpace, record: TaskRecord) -> tuple[str, ...]:
    """The families a trial of the task may name: its modality's, or, in a space without families, its own."""
    return space.family_choices(record.modality) if space.families else (record.family,)


# ------------------------------------------------------------------ ppo_tpe


def in_order_of(configs: Sequence[Config], order: Sequence[Config]) -> list[Config]:
    """``configs`` with those that ``order`` holds put in its order, in the slots they held; the rest unmoved.

    The learned list with a policy's portfolio (its first configs) in the task's own order
    (``portfolio_order: similar``): ``in_order_of([a, b, c, d], [c, a, b])`` is ``[c, a, b, d]``.
    """
    rank = {c.key(): i for i, c in enumerate(order)}
    slots = [i for i, c in enumerate(configs) if c.key() in rank]
    out = list(configs)
    for i, c in zip(slots, sorted((configs[i] for i in slots), key=lambda c: rank[c.key()])):
        out[i] = c
    return out


class PPOTPETuner(TPETuner):
    """The policy's first trials, then known-good configs enqueued, then Optuna TPE warm-started with all of them.

    Three phases, the last two at full fidelity, as ``tpe``'s trials:

    1. **The policy** proposes until the episode has spent the budget it was meta-trained for
       (its ``PolicyInfo.budget_epochs``, 3 FTE for the shipped one), or the whole budget if
       smaller, and it plays those trials as in an episode of that budget: it observes the
       budget used, the budget left and the steps as fractions of its own horizon. That is the
       episode its choices were learned on; in a longer one, it reads the large budget left as
       room to explore, and would be cut off mid-plan (on ag_news at 10 FTE it found the best
       config one trial later than at 3 FTE). So up to the horizon, this tuner plays exactly as
       ``ppo`` does (:meth:`PPOTuner.set_horizon`: a portfolio policy plays any longer budget
       the same way up to its horizon). A trial count would depend on the fidelities the
       policy picks; a budget share does not. Each policy trial is added to the study as a
       complete trial (``create_trial``): the params of the config that answered, its score as
       the value (at the fidelity it ran; a low-fidelity score is an underestimate, which TPE
       takes as it is) and each epoch's score as an intermediate value.
    2. **The configs** (``make_tuners``: the learned list, learned from the policy's
       meta-training tasks) are enqueued into the study one by one, in order
       (``study.enqueue_trial``, Optuna's way to run known-good configs first): each is the
       study's next asked trial, trained at full fidelity. A config the episode already knows that far
       (the env's ``is_repeat``: the policy tried it, or its recorded curve answered a trial)
       is skipped, not trained again. They fill TPE's startup trials: the list is enqueued
       while the episode holds fewer than :attr:`startup_trials` trials trained in full, the
       policy's included. A policy that screens (successive halving) adds many short trials whose
       scores underestimate their configs; counted as startup trials, they left TPE to model
       the task from them, and it lost to the list on four of seven held-out datasets
       (``hpo.md``, session 21).
       Past its horizon the policy has no more than a fixed plan, and TPE samples its first
       trials at random; the list holds the configs that did best across the meta-training
       tasks together, the best hedge before a model of this task exists. A policy with
       ``portfolio_order: similar`` has its portfolio (the list's first configs) in the task's own
       order, which leave-one-dataset-out found the better hedge; the list follows that order
       (:func:`in_order_of`). Once TPE has its startup trials, its model of this task is the
       better guide, above all where the list does not fit the task: enqueueing the whole list
       (87 text configs) left TPE no trial within 30 FTE, and on held-out trec_fine that cost
       0.064 regret against 0.018 (``hpo.md``, session 14).
    3. **TPE** then samples on its own, with a model of this task built from every trial so far.

    Params, enqueued or added, are encoded as :class:`TPETuner` asks them (choice indices, so
    TPE uses their order). A config without a family (the learned list's) is played with the
    task's own family where the space searches the family, as ``learned_list`` plays it.

    Args:
        policy: the PPO tuner.
        policy_epochs: epochs the policy proposes for; default its meta-training budget.
        configs: enqueued after the policy's trials, in order: the learned lists by modality (the task's
            modality's is played), or one list for every modality; none: TPE follows the policy directly.
    """

    name = "ppo_tpe"
    # TPE samples this many trials at random before it models the task (``TPESampler``'s default
    # ``n_startup_trials``); here the policy's trials and the list's configs take their place.
    startup_trials = 10

    def __init__(
        self, policy: PPOTuner, policy_epochs: int | None = None, *, configs: ConfigLists | Sequence[Config] = ()
    ) -> None:
        self.policy = policy
        self.policy_epochs = policy_epochs
        self.lists = as_lists(configs)

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self.policy.start(env, seed)
        self.policy.set_horizon(self.policy_epochs or self.policy.info.budget_epochs or self.space.budget_epochs())
        self._from_policy = False
        self._configs = for_modality(self.lists, env.modality)
        if self.policy.info.similar is not None:  # portfolio_order: similar: its configs in this task's order
            self._configs = in_order_of(self._configs, for_modality(self.policy.portfolio, env.modality))
        self._next = 0  # the next of ``configs`` to enqueue
        self._full_trials = 0  # trials of the episode trained to the largest epochs choice

    def propose(self, obs: np.ndarray) -> np.ndarray:
        self._from_policy = self.env.budget_used < self.policy.horizon
        if self._from_policy:
            return self.policy.propose(obs)
        if self._full_trials < self.startup_trials:
            self._enqueue_next()
        return super().propose(obs)  # the trial enqueued, if any, else TPE's own

    def _enqueue_next(self) -> None:
        """Enqueue the next of ``configs`` that would not repeat what the episode knows; none once they run out."""
        while self._next < len(self._configs):
            config = self.env.on_task(self._configs[self._next].with_epochs(self.space.max_epochs))
            self._next += 1
            if not self.env.is_repeat(config):
                self.study.enqueue_trial(self._params(config)[0])
                return
            log.debug("ppo_tpe: %s is known already, not enqueued", config.to_dict())

    def observe(self, action: np.ndarray, result: StepResult) -> None:
        self._full_trials += int(result.epochs >= self.space.max_epochs)
        if not self._from_policy:
            super().observe(action, result)
            return
        params, distributions = self._params(result.answered_config)
        self.study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=result.score,
                intermediate_values={i + 1: float(s) for i, s in enumerate(result.trial.scores)},
            )
        )

    def _params(self, config: Config) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
        """The params and distributions :class:`TPETuner` would have asked to get ``config`` (epochs aside)."""
        indices = self.space.indices(config, self.env.modality)
        params: dict[str, Any] = {}
        for h, i, n in zip(self.space.dims, indices, self.space.nvec):
            if h == FAMILY:
                params[h] = config.family
            elif h != "epochs" and n > 1:
                params[h] = int(i)
        fixed = optuna.trial.FixedTrial(params)
        asked = _ask_indices(fixed, self.env, config.epochs)
        assert np.array_equal(asked, indices), (asked, indices)  # one encoding: TPETuner's
        return params, fixed.distributions
