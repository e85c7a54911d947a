"""Optuna's TPE as a tuner, alone and with its Hyperband pruner: the baselines users would pick.

Both drive an Optuna study through ask-and-tell, one env step per proposal, so they pay the same
budget, in epochs, as every other tuner. Each hyperparameter except ``epochs`` is one Optuna
parameter: the index of its choice, an integer for ordered choices (so TPE can use the order)
and a categorical for the optimizer.

- :class:`TPETuner` trains every config at full fidelity (the largest epochs choice).
- :class:`HyperbandTuner` uses epochs as the resource: a trial trains to the smallest epochs
  choice, reports its score, and is continued to the next epochs choice (the env charges only
  the new epochs) until the pruner stops it or it reaches the largest.
"""

from __future__ import annotations

import numpy as np
import optuna

from rlhpo.agents.base import Tuner
from rlhpo.envs.hpo_env import HPOEnv, StepResult
from rlhpo.space import FAMILY, HYPERPARAMETERS

CATEGORICAL = ("optimizer",)  # unordered choices; the others are ordered
REDUCTION_FACTOR = 3  # Hyperband's eta: the shipped epochs choices 1, 3, 9 are its rungs


def _ask_indices(trial: optuna.Trial, env: HPOEnv, epochs: int) -> np.ndarray:
    """The action of an Optuna trial: one choice index per dimension, ``epochs`` as given.

    The family, where searched, is a categorical over the families of the task's modality.
    """
    space = env.space
    out = []
    for h, n in zip(space.dims, space.nvec):
        if h == "epochs":
            out.append(space.choices["epochs"].index(epochs))
        elif h == FAMILY:
            families = list(space.family_choices(env.modality))
            out.append(families.index(trial.suggest_categorical(h, families)))
        elif n == 1:
            out.append(0)
        elif h in CATEGORICAL:
            out.append(int(trial.suggest_categorical(h, list(range(n)))))
        else:
            out.append(trial.suggest_int(h, 0, n - 1))
    return np.asarray(out, dtype=np.int64)


class TPETuner(Tuner):
    """Optuna's TPE sampler (its defaults, seeded), every trial at full fidelity."""

    name = "tpe"

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self._trial: optuna.Trial | None = None

    def propose(self, obs: np.ndarray) -> np.ndarray:
        self._trial = self.study.ask()
        return _ask_indices(self._trial, self.env, self.space.max_epochs)

    def observe(self, action: np.ndarray, result: StepResult) -> None:
        assert self._trial is not None
        self.study.tell(self._trial, result.score)


class HyperbandTuner(Tuner):
    """TPE with Optuna's Hyperband pruner; epochs are the resource, from the smallest choice to the largest."""

    name = "tpe_hyperband"

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self.rungs = sorted(self.space.choices["epochs"])
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=self.rungs[0], max_resource=self.rungs[-1], reduction_factor=REDUCTION_FACTOR
        )
        # Hyperband assigns trials to brackets by a hash of the study name: name it, for determinism.
        self.study = optuna.create_study(
            study_name=f"rlhpo-{seed}",
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
        )
        self._trial: optuna.Trial | None = None  # the trial being trained, if it goes on
        self._action: np.ndarray | None = None
        self._epochs = 0  # how far the running trial has trained
        self._score = 0.0  # its last score

    def propose(self, obs: np.ndarray) -> np.ndarray:
        if self._trial is None:
            self._trial = self.study.ask()
            self._action = _ask_indices(self._trial, self.env, self.rungs[0])
        else:  # continue the running trial to the next rung
            assert self._action is not None
            nxt = next(e for e in self.rungs if e > self._epochs)
            self._action = self._action.copy()
            self._action[HYPERPARAMETERS.index("epochs")] = self.space.choices["epochs"].index(nxt)
        return self._action

    def observe(self, action: np.ndarray, result: StepResult) -> None:
        trial = self._trial
        assert trial is not None
        if self._epochs and result.resumed_from != self._epochs:
            # The continuation did not fit the budget (the env ran a fresh short trial): stop here.
            self.study.tell(trial, self._score)
        else:
            self._epochs, self._score = result.epochs, result.score
            trial.report(result.score, step=result.epochs)
            if not (result.epochs >= self.rungs[-1] or result.diverged or trial.should_prune()):
                return  # goes on to the next rung
            pruned = result.epochs < self.rungs[-1] and not result.diverged
            if pruned:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self.study.tell(trial, result.score)
        self._trial, self._epochs = None, 0
