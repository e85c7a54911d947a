"""The PPO tuner: a meta-trained policy proposing whole configs, and its policy file.

A policy file is SB3's ``policy.zip`` with one more member, ``rlhpo.json`` (:class:`PolicyInfo`):
the search space its actions index and how it was trained. So its actions always decode in the
space they were chosen in, whatever ``configs/search_space.yaml`` says now. Files saved before
that member existed kept the same facts in a model attribute (``rlhpo``); they still load.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO

from rlhpo.agents.base import Tuner
from rlhpo.agents.learned_list import ConfigLists, as_lists, for_modality, full_fidelity_action
from rlhpo.agents.per_config_policy import PairCategorical
from rlhpo.agents.portfolio import portfolio_action, portfolio_features, portfolio_size, shows_small_task
from rlhpo.agents.similar_tasks import SimilarTasks
from rlhpo.envs.hpo_env import HPOEnv, history_names
from rlhpo.errors import RlhpoError
from rlhpo.settings import SHIPPED_POLICY, shipped_file
from rlhpo.space import HYPERPARAMETERS, Config, SearchSpace
from rlhpo.tasks.features import META_FEATURES

POLICY_FILE = "policy.zip"
INFO_MEMBER = "rlhpo.json"  # the member of policy.zip that holds its PolicyInfo
LEGACY_ATTRIBUTE = "rlhpo"  # where policies saved before INFO_MEMBER kept it
MAX_CANDIDATES = 10_000  # most likely actions looked at to replace a repeated trial

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyInfo:
    """What a policy file says of the policy: the space it acts in and how it was trained."""

    space: SearchSpace | None = None  # None: a file that did not say (the shipped space is used)
    budget_epochs: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # train-agent's settings, as config.yaml holds them
    # A portfolio policy's configs per modality (rlhpo.agents.portfolio); empty: the policy acts in the space.
    portfolio: dict[str, tuple[Config, ...]] = field(default_factory=dict)
    # What a portfolio policy plays on a modality it has no portfolio for: the learned list of the
    # configs recorded on every meta-training task (learn_portfolio); empty: the default config.
    fallback: tuple[Config, ...] = ()
    # portfolio_order: similar: the meta-training tasks each task's portfolio is ordered by; None: the list's order.
    similar: SimilarTasks | None = None

    @property
    def meta_features(self) -> bool:
        """Whether the policy sees the task's meta-features (``meta_features: false`` hides them)."""
        return bool(self.settings.get("meta_features", True))

    @property
    def history(self) -> int:
        """How many of the episode's best trials the policy observes (0: the last trial only)."""
        return int(self.settings.get("history") or 0)

    @property
    def first_trial_top(self) -> int:
        """The first trial is drawn, by the episode's seed, among the policy's this many most likely new actions."""
        return int(self.settings.get("first_trial_top") or 1)

    @property
    def portfolio_ranks(self) -> bool:
        """Whether a portfolio policy sees its configs' ranks by score (``portfolio_ranks: true``)."""
        return bool(self.settings.get("portfolio_ranks", False))

    @property
    def small_task(self) -> bool:
        """Whether a portfolio policy sees if the task is small (``imitation_plan: by_size`` branches on it)."""
        return shows_small_task(str(self.settings.get("imitation_plan", "list")))

    @property
    def exclude_datasets(self) -> tuple[str, ...]:
        """The datasets held out of its meta-training."""
        return tuple(self.settings.get("exclude_datasets") or ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space.to_dict() if self.space else None,
            "budget_epochs": self.budget_epochs,
            "settings": self.settings,
            "portfolio": {m: [c.to_dict() for c in configs] for m, configs in self.portfolio.items()},
            "fallback": [c.to_dict() for c in self.fallback],
            "similar": self.similar.to_dict() if self.similar else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyInfo:
        space = data.get("space")
        return cls(
            space=SearchSpace.from_dict(space) if space else None,
            budget_epochs=data.get("budget_epochs"),
            settings=dict(data.get("settings") or {}),
            portfolio=_portfolio(data.get("portfolio")),
            fallback=tuple(Config(**c) for c in data.get("fallback") or ()),
            similar=SimilarTasks.from_dict(data["similar"]) if data.get("similar") else None,
        )


def _portfolio(data: Any) -> dict[str, tuple[Config, ...]]:
    """A policy file's portfolio: configs by modality, or one list for every modality (files before per-modality)."""
    listed = data if isinstance(data, dict) else as_lists(data or ())
    return {m: tuple(Config(**c) for c in configs) for m, configs in listed.items()}


def save_policy(model: PPO, path: str | Path, info: PolicyInfo) -> Path:
    """Save ``model`` as SB3 does, with ``info`` as the zip's ``rlhpo.json`` member."""
    path = Path(path)
    model.save(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(INFO_MEMBER, json.dumps(info.to_dict()))
    return path


def read_policy_info(path: str | Path, model: PPO | None = None) -> PolicyInfo:
    """The :class:`PolicyInfo` of a policy file (from the model attribute of an older file)."""
    with zipfile.ZipFile(path) as z:
        if INFO_MEMBER in z.namelist():
            return PolicyInfo.from_dict(json.loads(z.read(INFO_MEMBER)))
    legacy = getattr(model, LEGACY_ATTRIBUTE, None) if model is not None else None
    return PolicyInfo.from_dict(legacy) if isinstance(legacy, dict) else PolicyInfo()


def policy_file(path: str | Path | None) -> Path:
    """The policy file: ``path`` (a ``policy.zip``, or a run folder holding one), or the shipped one."""
    if path is None:
        policy = shipped_file(SHIPPED_POLICY)
        if not policy.is_file():
            raise RlhpoError(
                f"The shipped policy {str(policy)!r} is not installed; train one with `rlhpo train-agent` "
                "and pass --policy RUN_DIR/policy.zip."
            )
        return policy
    policy = Path(path)
    if policy.is_dir():
        policy = policy / POLICY_FILE
    if not policy.is_file():
        raise RlhpoError(
            f"Policy file {str(policy)!r} does not exist; pass the policy.zip of a `rlhpo train-agent` run."
        )
    return policy


class PPOTuner(Tuner):
    """A trained PPO policy proposing whole configs; deterministic (the most likely new action).

    Args:
        model: the SB3 PPO model.
        info: what its policy file says; default: nothing (it acts in the env's space).
        path: the policy file it was loaded from, if any.
    """

    name = "ppo"

    def __init__(self, model: PPO, info: PolicyInfo | None = None, path: Path | None = None) -> None:
        self.model = model
        self.info = info or PolicyInfo()
        self.path = path
        # The budget the policy is told of (its observed budget size), None: the episode's. ``ppo_tpe``
        # plays the policy as in an episode of its meta-training budget and sets it to that.
        self.shown_budget: int | None = None
        self.horizon = 0  # epochs it plays as in an episode of that budget (set by start, set_horizon)
        self._blind = False  # a portfolio policy on a modality it has no configs for (set by start)
        self._warned: set[str] = set()  # the modalities it said so for: once each, not once per episode
        self.portfolio: ConfigLists = self.info.portfolio  # the episode's, in its task's order (set by start)

    @property
    def policy_space(self) -> SearchSpace | None:
        """The space the policy was trained in (``None`` when its file does not say)."""
        return self.info.space

    @classmethod
    def load(cls, path: str | Path | None = None) -> PPOTuner:
        """Load a policy saved by ``rlhpo train-agent`` (a ``policy.zip``, or a run folder holding one).

        Raises:
            RlhpoError: when the file is missing, is not a policy, or is not one of ours.
        """
        policy = policy_file(path)
        try:
            model = PPO.load(policy, device="cpu")
        except Exception as e:  # a foreign or damaged file can fail anywhere inside SB3's loader
            raise RlhpoError(
                f"Policy file {str(policy)!r} could not be read as a stable-baselines3 PPO policy "
                f"({type(e).__name__}: {e}); pass the policy.zip of a `rlhpo train-agent` run."
            ) from None
        return cls(model, read_policy_info(policy, model), policy)

    def start(self, env: HPOEnv, seed: int) -> None:
        super().start(env, seed)
        self._first = True
        self.shown_budget = None  # each episode starts with its own budget shown
        self.horizon = env.budget_epochs
        drawn = self.info.settings.get("budget_fte_range")  # a policy meta-trained at many budgets plays them all
        if self.info.portfolio and self.info.budget_epochs and not drawn:
            self.set_horizon(self.info.budget_epochs)
        nvec = [int(n) for n in getattr(self.model.action_space, "nvec", [])]
        # A portfolio policy on a modality its meta-training never saw has no configs to choose
        # among: it plays its fallback list (else the default config), then random configs, at full
        # fidelity, as the learned list does there.
        self._blind = bool(self.info.portfolio) and not for_modality(self.info.portfolio, env.modality)
        # The portfolio in this task's order (portfolio_order: similar), else in the learned list's.
        self.portfolio = self.info.portfolio
        if self.info.similar is not None:
            record = env.record
            self.portfolio = self.info.similar.reorder(self.portfolio, record.modality, record.meta_features)
        if self._blind and env.modality not in self._warned:
            self._warned.add(env.modality)
            log.warning(
                "The portfolio policy has no configs for %s tasks (it never saw one); it plays %s, then random ones.",
                env.modality,
                f"the {len(self.info.fallback)} configs that did best on every task"
                if self.info.fallback
                else "the default config",
            )
        if self.info.portfolio:
            expected = [portfolio_size(self.info.portfolio), len(self.space.choices["epochs"])]
            if nvec != expected:
                raise RlhpoError(
                    f"The policy's actions are {nvec}, but its file lists {expected[0]} portfolio configs "
                    f"and the space has {expected[1]} epochs choices: the file is damaged or mixed up."
                )
        elif nvec != self.space.nvec:
            raise RlhpoError(
                f"The policy chooses among {nvec} choices per hyperparameter, but the environment's search "
                f"space has {self.space.nvec}; use the space the policy was trained in."
            )

    def propose(self, obs: np.ndarray) -> np.ndarray:
        """The policy's most likely action that the env would not count as a repeat.

        A repeated trial (:meth:`HPOEnv.is_repeat`) gives the same curve again and only spends
        budget, so the most likely action is replaced by the next most likely one that is new
        (:func:`most_likely_first`). On a modality it has no portfolio for, and past its horizon
        (:meth:`set_horizon`), a portfolio policy plays a list instead.
        """
        if self._blind:
            return next(self._blind_actions())
        if self.past_horizon:
            return next(self._listed_then_random(for_modality(self.portfolio, self.env.modality)))
        obs = self.policy_view(self.within_horizon(obs))
        first, self._first = self._first, False
        with one_torch_thread():
            if first and self.info.first_trial_top > 1:
                return self._drawn_first(obs)
            action, _ = self.model.predict(obs, deterministic=True)
            action = self.env_action(np.asarray(action, dtype=np.int64))
            if self._is_repeat(action):
                action = self._most_likely_new(obs, action)
        return action

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """The env's action (choice indices in its space) of one of the policy's actions.

        The same, but for a portfolio policy, whose action ``[i, e]`` names a portfolio config and
        its epochs (:mod:`rlhpo.agents.portfolio`).
        """
        if self.info.portfolio:
            return portfolio_action(self.env, self.portfolio, action)
        return action

    def _drawn_first(self, obs: np.ndarray) -> np.ndarray:
        """One of the policy's ``first_trial_top`` most likely new actions, drawn by their probabilities.

        So another seed may open another way, while every opening is one the policy rates highly.
        """
        candidates, weights = [], []
        for action, log_prob in itertools.islice(self._ranked_actions(obs), MAX_CANDIDATES):
            env_action = self.env_action(action)
            if not self._is_repeat(env_action):
                candidates.append(env_action)
                weights.append(math.exp(log_prob))
                if len(candidates) == self.info.first_trial_top:
                    break
        p = np.asarray(weights) / sum(weights)
        return candidates[int(self.rng.choice(len(candidates), p=p))]

    def ranked(self, obs: np.ndarray) -> Iterator[np.ndarray]:
        """The policy's actions at ``obs``, most likely first (:func:`most_likely_first`), repeats included.

        ``rlhpo tune --workers N`` takes the first N that are new from here: what :meth:`propose`
        would pick, then the runners-up it would have picked had that one been tried already.
        """
        if self._blind:
            return self._blind_actions()
        if self.past_horizon:
            return self._listed_then_random(for_modality(self.portfolio, self.env.modality))
        obs = self.policy_view(self.within_horizon(obs))
        with one_torch_thread():
            ranked = self._ranked_actions(obs)
        return (self.env_action(a) for a, _ in itertools.islice(ranked, MAX_CANDIDATES))

    def set_horizon(self, epochs: int) -> None:
        """Play the first ``epochs`` of the episode (at most its budget) as in an episode of that budget.

        :meth:`start` sets it to a portfolio policy's meta-training budget. Within the horizon the
        policy observes the budget's size and the budget and step fractions of an episode of that
        budget (:meth:`within_horizon`): the episode its choices were learned on. In a longer one it
        would read the large budget left as room to explore, out of what it was trained on. Past the
        horizon a portfolio policy trains its portfolio's configs that the episode does not know in
        full, in the learned list's order, then random new configs, all at full fidelity, as the
        learned list does. ``ppo_tpe`` sets its own horizon and hands over to TPE there.
        """
        self.horizon = min(int(epochs), self.env.budget_epochs)
        self.shown_budget = self.horizon

    @property
    def past_horizon(self) -> bool:
        """Whether the episode has spent the horizon (:meth:`set_horizon`); never for a policy without a portfolio."""
        env = self.env
        return bool(self.info.portfolio) and self.horizon < env.budget_epochs and env.budget_used >= self.horizon

    def within_horizon(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` as in an episode whose budget is the horizon: its budget and step fractions."""
        env, horizon = self.env, self.horizon
        if horizon == env.budget_epochs:
            return obs
        used = env.budget_used
        names = env.observation_names
        out = np.array(obs, dtype=np.float32, copy=True)
        steps = round(float(obs[names.index("steps")]) * env.max_steps)
        out[names.index("budget_used")] = used / horizon
        out[names.index("budget_remaining")] = max(horizon - used, 0) / horizon
        out[names.index("steps")] = min(steps / (horizon // min(self.space.choices["epochs"])), 1.0)
        return out

    def policy_view(self, obs: np.ndarray) -> np.ndarray:
        """What the policy sees of the env's observation, as in its meta-training.

        The meta-features hidden if it was trained without them, the episode's best trials
        appended if it was trained to see them (:class:`HistoryObservation`), then a portfolio
        policy's view of its configs (:class:`rlhpo.agents.portfolio.PortfolioActions`).
        """
        if not self.info.meta_features:
            obs = hide_meta_features(obs)
        if self.info.history:
            extra = self.env.history_features(self.info.history, self.shown_budget)
            obs = np.concatenate([obs, extra]).astype(np.float32)
        if self.info.portfolio:
            extra = portfolio_features(
                self.env, self.portfolio, self.shown_budget, self.info.portfolio_ranks, self.info.small_task
            )
            obs = np.concatenate([obs, extra]).astype(np.float32)
        expected = self.model.observation_space.shape
        if np.shape(obs) != expected:
            raise RlhpoError(f"The policy observes vectors of shape {expected}, but got {np.shape(obs)}.")
        return obs

    def _is_repeat(self, action: np.ndarray) -> bool:
        return self.env.is_repeat(self.env.decode(action))

    def _ranked_actions(self, obs: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """The policy's actions at ``obs`` with their log-probabilities, most likely first."""
        obs_tensor, _ = self.model.policy.obs_to_tensor(obs)
        with torch.no_grad():
            dist = self.model.policy.get_distribution(obs_tensor)
        if isinstance(dist, PairCategorical):  # a per-config policy's: one categorical over [config, epochs]
            return dist.ranked()
        log_probs = [d.logits[0].double().log_softmax(-1).numpy() for d in dist.distribution]
        return ((a, float(sum(lp[i] for lp, i in zip(log_probs, a)))) for a in most_likely_first(log_probs))

    def _most_likely_new(self, obs: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        for action, _ in itertools.islice(self._ranked_actions(obs), MAX_CANDIDATES):
            env_action = self.env_action(action)
            if not self._is_repeat(env_action):
                return env_action
        if self.info.portfolio:  # every portfolio config is known in full: go on as the learned list does
            return self._random_new(fallback)
        return fallback  # every candidate looked at is a repeat: the budget will end the episode

    def _blind_actions(self) -> Iterator[np.ndarray]:
        """On a modality the policy never saw: its fallback configs, else the default config (see :meth:`start`)."""
        return self._listed_then_random(self.info.fallback or (self.space.default_config(self.env.modality),))

    def _listed_then_random(self, configs: Sequence[Config]) -> Iterator[np.ndarray]:
        """``configs`` the episode does not know in full, in order, then random new configs; all at full fidelity."""
        actions = [full_fidelity_action(self.env, config) for config in configs]
        yield from (action for action in actions if not self._is_repeat(action))
        for _ in range(MAX_CANDIDATES):
            yield self._random_new(actions[0])

    def _random_new(self, fallback: np.ndarray) -> np.ndarray:
        """A uniformly random config at full fidelity that is not a repeat (``fallback`` if none is found)."""
        epochs = HYPERPARAMETERS.index("epochs")
        for _ in range(MAX_CANDIDATES):
            action = self.env.sample_action(self.rng)
            action[epochs] = self.space.choices["epochs"].index(self.space.max_epochs)
            if not self._is_repeat(action):
                return action
        return fallback


def most_likely_first(log_probs: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Every action of independent categoricals (one ``log_probs`` per dimension), most likely first.

    Best-first search over per-dimension ranks: from the all-most-likely action, each successor
    takes the next most likely choice in one dimension. A max-heap on the joint log-probability
    pops the actions in exactly decreasing order.
    """
    orders = [np.argsort(-lp, kind="stable") for lp in log_probs]

    def logp(ranks: tuple[int, ...]) -> float:
        return float(sum(lp[order[r]] for lp, order, r in zip(log_probs, orders, ranks)))

    start = (0,) * len(orders)
    heap, seen = [(-logp(start), start)], {start}
    while heap:
        _, ranks = heapq.heappop(heap)
        yield np.array([order[r] for order, r in zip(orders, ranks)], dtype=np.int64)
        for d in range(len(ranks)):
            if ranks[d] + 1 < len(orders[d]):
                nxt = ranks[:d] + (ranks[d] + 1,) + ranks[d + 1 :]
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (-logp(nxt), nxt))


def hide_meta_features(obs: np.ndarray) -> np.ndarray:
    """The observation with the task's meta-features zeroed (what a ``meta_features: false`` policy sees)."""
    out = np.array(obs, dtype=np.float32, copy=True)
    out[..., : len(META_FEATURES)] = 0.0
    return out


class HideMetaFeatures(gym.ObservationWrapper):
    """Zeroes the meta-features of every observation (``meta_features: false``)."""

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return hide_meta_features(observation)


class HistoryObservation(gym.ObservationWrapper):
    """Appends the budget's size and the episode's ``k`` best trials to every observation (``history: k``).

    What :meth:`HPOEnv.history_features` gives; :meth:`PPOTuner.policy_view` appends the same when
    the policy tunes.
    """

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        hpo: HPOEnv = env.unwrapped  # type: ignore[assignment]
        names = history_names(hpo.space, k)
        low = np.array([-1.0 if n.endswith("_score") else 0.0 for n in names], dtype=np.float32)
        base = env.observation_space
        assert isinstance(base, gym.spaces.Box)
        self.observation_space = gym.spaces.Box(
            low=np.concatenate([base.low, low]), high=np.concatenate([base.high, np.ones_like(low)]), dtype=np.float32
        )
        self.k = k

    def observation(self, observation: np.ndarray) -> np.ndarray:
        extra = self.env.unwrapped.history_features(self.k)  # type: ignore[attr-defined]
        return np.concatenate([observation, extra]).astype(np.float32)


class DrawnBudget(gym.Wrapper):
    """Each episode's budget drawn log-uniformly from ``[low, high]`` full trainings (``budget_fte: [low, high]``).

    One policy then serves every budget, which it observes (:class:`HistoryObservation`'s
    first entry). Draws come from the wrapper's own generator, seeded by ``seed`` and reseeded by
    ``reset(seed=...)``, so a seeded run is repeatable.
    """

    def __init__(self, env: gym.Env, low: float, high: float, seed: int = 0) -> None:
        super().__init__(env)
        if not 0 < low <= high:
            raise RlhpoError(f"A drawn budget needs 0 < low <= high full trainings, but got [{low}, {high}].")
        self.low, self.high = low, high
        self._rng = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        options = dict(options or {})
        if "budget_epochs" not in options:
            hpo: HPOEnv = self.env.unwrapped  # type: ignore[assignment]
            fte = math.exp(self._rng.uniform(math.log(self.low), math.log(self.high)))
            smallest = min(hpo.space.choices["epochs"])
            options["budget_epochs"] = max(smallest, round(fte * hpo.space.max_epochs))
        return self.env.reset(seed=seed, options=options)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside, restoring the count after.

    The policy's tensors are tiny: more threads only add synchronisation, which on a busy
    machine costs milliseconds per operation (a 2x4 softmax measured 11 ms on 2 threads, 1 µs on one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
