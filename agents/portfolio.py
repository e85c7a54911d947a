"""A policy that chooses among a portfolio of configs learned from the meta-training tasks.

The learned list (:mod:`rlhpo.agents.learned_list`) is hard to beat at small budgets: a few
configs that did well across the meta-training tasks. It cannot adapt: it trains the same
configs, at full fidelity, in the same order, on every task. A *portfolio policy* acts on the
same configs but decides, from the task's meta-features and the curves seen so far, which one to
train next and for how many epochs (screening several at 1 epoch, continuing the promising
ones, stopping early on one that diverges).

With ``portfolio: N`` in ``configs/train_agent.yaml``, the policy's action is not a whole
config but ``[i, e]``: the ``i``-th of the first ``N`` configs of the learned list of the task's
modality (learned from the meta-training tasks only) trained to the ``e``-th epochs choice. Every
modality's portfolio has the same length (the shortest modality list's, if under ``N``), so
index ``i`` means "the modality's ``i``-th best" on every task. Every portfolio config is
recorded on every meta-training task of its modality, so meta-training's answers are exact (no nearest
neighbour to exploit), but for those that ``config_fraction`` < 1 leaves out of an episode.
The observation gains ``1 + 2N`` entries (:func:`portfolio_names`): the budget's size, then per
portfolio config the epochs the episode knows of it (a fraction of the largest choice) and its
latest score; with ``portfolio_ranks: true``, ``N`` more after the budget: each config's rank by
its score so far (:func:`score_ranks`). The portfolio is saved in the policy file
(:class:`rlhpo.agents.policy.PolicyInfo`), so a tuner plays exactly the configs it was trained on.
On a task of another family the configs are played with the task's family, as the learned list
does. Once every portfolio config is known at full fidelity, :class:`~rlhpo.agents.policy.PPOTuner`
goes on with random new configs at full fidelity, as the learned list does past its end. On a
modality without a portfolio (no meta-training task of it), the policy plays the file's
*fallback*, the list of the configs recorded on every meta-training task, as the learned list
does there (:func:`learn_portfolio`).

PPO from a random policy need not find even the list's own plan (train the configs in order, at
full fidelity) in a short run. With ``imitation_episodes: K``, the policy is first fitted to that
plan by behaviour cloning on K meta-training episodes (:func:`imitate_plan`); PPO then
starts from the learned list and departs from it where the reward says so. With
``imitation_plan: halving`` it clones successive halving over the list instead
(:func:`halving_action`: the first 9 configs for 1 epoch, the best 3 continued to 3, the best 2
of those to 9). ``imitation_plan: by_budget`` clones halving in episodes under 3 FTE and the list's
plan from 3 FTE on (:func:`by_budget_action`); with ``budget_fte_range`` the policy sees both.
``imitation_plan: by_size`` clones halving on tasks of under 4,000 training examples and the list's
plan on larger ones (:func:`by_size_action`); its observation then says whether the task is that small.

With ``portfolio_order: similar`` the indices follow each task's own order of the same configs:
what did best on the meta-training tasks most like it (:mod:`rlhpo.agents.similar_tasks`). The
list's plan then plays that order, and index ``i`` means "the ``i``-th best for tasks like this one".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from rlhpo.agents.learned_list import ANY_MODALITY, ConfigLists, LearnedListTuner, for_modality
from rlhpo.agents.similar_tasks import SimilarTasks
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import Config, SearchSpace
from rlhpo.store import CurveStore
from rlhpo.tasks.registry import data_source


def learn_portfolio(
    store: CurveStore | str | Path,
    space: SearchSpace,
    size: int,
    *,
    train_seed: int = 0,
    exclude_datasets: Sequence[str] = (),
) -> tuple[dict[str, tuple[Config, ...]], tuple[Config, ...]]:
    """Per modality, the first configs of the learned list of the store's tasks less ``exclude_datasets``.

    ``size`` of each, or fewer where a modality's list is shorter: every modality gets the same number.
    The list for modalities without meta-training tasks (:data:`ANY_MODALITY`) is in the portfolio
    if it is as long. Returned with the *fallback*: that list, whatever its length, when the
    portfolio does not hold it (else empty). A policy plays it in order on a modality it has no
    portfolio for, as the learned list does (:meth:`~rlhpo.agents.policy.PPOTuner.start`).
    """
    lists = LearnedListTuner.fit(store, space, train_seed=train_seed, exclude_datasets=exclude_datasets).lists
    n = min([size] + [len(configs) for modality, configs in lists.items() if modality != ANY_MODALITY])
    portfolio = {modality: tuple(configs[:n]) for modality, configs in lists.items() if len(configs) >= n}
    fallback = () if ANY_MODALITY in portfolio else tuple(lists.get(ANY_MODALITY, ()))
    return portfolio, fallback


def portfolio_size(portfolio: ConfigLists) -> int:
    """The number of configs a portfolio policy chooses among (each modality's portfolio has that many)."""
    sizes = {len(configs) for configs in portfolio.values()}
    if len(sizes) > 1:
        raise RlhpoError(f"Every modality's portfolio must hold as many configs, but they hold {sorted(sizes)}.")
    return sizes.pop() if sizes else 0


def portfolio_names(size: int, ranks: bool = False, small: bool = False) -> tuple[str, ...]:
    """The entries :func:`portfolio_features` gives, in order."""
    return (
        ("budget_size",)
        + (("small_task",) if small else ())
        + (tuple(f"portfolio{i + 1}_rank" for i in range(size)) if ranks else ())
        + tuple(f"portfolio{i + 1}_epochs" for i in range(size))
        + tuple(f"portfolio{i + 1}_score" for i in range(size))
    )


def portfolio_config(env: HPOEnv, portfolio: ConfigLists, action: Any) -> Config:
    """The config a portfolio action ``[i, e]`` asks for on the env's current task (its modality's portfolio)."""
    configs = for_modality(portfolio, env.modality)
    i, e = (int(a) for a in np.asarray(action).reshape(-1))
    if not (0 <= i < len(configs) and 0 <= e < len(env.space.choices["epochs"])):
        raise RlhpoError(
            f"A portfolio action is [config index < {len(configs)}, epochs index < "
            f"{len(env.space.choices['epochs'])}], but got {list(np.asarray(action).reshape(-1))}."
        )
    return env.on_task(configs[i].with_epochs(env.space.choices["epochs"][e]))


def portfolio_action(env: HPOEnv, portfolio: ConfigLists, action: Any) -> np.ndarray:
    """The env's action (choice indices in its space) of a portfolio action ``[i, e]``."""
    return env.space.indices(portfolio_config(env, portfolio, action), env.modality)


def portfolio_features(
    env: HPOEnv, portfolio: ConfigLists, budget_epochs: int | None = None, ranks: bool = False, small: bool = False
) -> np.ndarray:
    """The budget's size, then per portfolio config the epochs known of it (fraction of the largest), then its score.

    The budget is the episode's, or ``budget_epochs`` (what :attr:`PPOTuner.shown_budget` shows the policy).
    With ``small``, 1 after the budget's size on a task of under :data:`HALVING_BELOW_N_TRAIN` training
    examples, else 0: what :func:`by_size_action` branches on, as one input a cloned policy cannot miss
    (read from ``log_n_train`` among the meta-features, the clone's gate failed on held-out trec, whose
    other meta-features lie outside the meta-training tasks'). With ``ranks``, each config's rank comes
    next (:func:`score_ranks`).
    """
    n = portfolio_size(portfolio)
    known, scores = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    for i in range(n):
        epochs, score = env.seen(portfolio_config(env, portfolio, [i, 0]))
        known[i], scores[i] = epochs / env.max_epochs, score
    budget = [env.history_features(0, budget_epochs)[0]]
    gate = [float(env.record.n_train < HALVING_BELOW_N_TRAIN)] if small else []
    return np.concatenate([budget, gate, score_ranks(known, scores) if ranks else [], known, scores]).astype(np.float32)


def score_ranks(known: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each config's place among the tried ones by latest score, over the portfolio's size (0: the best); 1: untried.

    What a person looks at to choose which configs to continue. A policy could work it out from the
    scores, but behaviour cloning of :func:`halving_action` does not learn to sort from a few
    thousand observations (``portfolio_ranks`` in ``configs/train_agent.yaml``).
    """
    out = np.ones(len(known), dtype=np.float32)
    tried = np.flatnonzero(known > 0)
    order = tried[np.argsort(-scores[tried], kind="stable")]
    out[order] = np.arange(len(order)) / len(known)
    return out


class PortfolioActions(gym.Wrapper):
    """The policy's action is ``[portfolio index, epochs index]``; it observes each portfolio config's status.

    Wraps an :class:`HPOEnv` (possibly inside observation wrappers): actions are mapped onto the
    env's space, and :func:`portfolio_features` is appended to every observation. With ``similar``
    (``portfolio_order: similar``), each episode's task gets the portfolio in its own order, its own
    dataset's tasks left out (:mod:`rlhpo.agents.similar_tasks`).
    """

    def __init__(
        self,
        env: gym.Env,
        portfolio: ConfigLists,
        ranks: bool = False,
        similar: SimilarTasks | None = None,
        small: bool = False,
    ) -> None:
        super().__init__(env)
        n = portfolio_size(portfolio)
        if not n:
            raise RlhpoError("A portfolio needs at least one config.")
        self.listed: Mapping[str, Sequence[Config]] = portfolio  # in the learned list's order
        self.portfolio: Mapping[str, Sequence[Config]] = portfolio  # in the current task's order
        self.ranks = ranks
        self.small = small
        self.similar = similar
        hpo: HPOEnv = env.unwrapped  # type: ignore[assignment]
        self.action_space = gym.spaces.MultiDiscrete([n, len(hpo.space.choices["epochs"])])
        base = env.observation_space
        assert isinstance(base, gym.spaces.Box)
        extra = len(portfolio_names(n, ranks, small))
        low = np.concatenate([np.zeros(extra - n), -np.ones(n)]).astype(np.float32)
        self.observation_space = gym.spaces.Box(
            low=np.concatenate([base.low, low]),
            high=np.concatenate([base.high, np.ones(extra, dtype=np.float32)]),
            dtype=np.float32,
        )

    @property
    def hpo(self) -> HPOEnv:
        return self.env.unwrapped  # type: ignore[return-value]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self.similar is not None:
            record = self.hpo.record
            self.portfolio = self.similar.reorder(
                self.listed, record.modality, record.meta_features, leave_out=data_source(record.task.dataset)
            )
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(portfolio_action(self.hpo, self.portfolio, action))
        return self._observe(obs), reward, terminated, truncated, info

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        extra = portfolio_features(self.hpo, self.portfolio, ranks=self.ranks, small=self.small)
        return np.concatenate([obs, extra]).astype(np.float32)


def list_order_action(
    obs: np.ndarray,
    size: int,
    fractions: Sequence[float],
    budget_fte: np.ndarray | None = None,
    n_train: np.ndarray | None = None,
) -> np.ndarray:
    """The learned list's plan as portfolio actions, from observations: the first config not yet known in full.

    ``fractions``: each epochs choice over the largest (the plan uses only the largest). The plan is
    the same at every budget and task, so ``budget_fte`` (each row's episode budget) and ``n_train`` (its
    task's training examples) are not used.

    ``obs`` ends with :func:`portfolio_features` (one row per observation); once every config is
    known in full, the last one (a repeat, which :class:`~rlhpo.agents.policy.PPOTuner` replaces).
    """
    known = np.atleast_2d(obs)[:, -2 * size : -size]
    untried = known < 1.0 - 1e-6
    index = np.where(untried.any(axis=1), untried.argmax(axis=1), size - 1)
    return np.stack([index, np.full_like(index, len(fractions) - 1)], axis=1)


HALVING_RUNGS = ((9, 0), (3, 1), (2, 2))  # halving plan: (configs, epochs index) per rung, successive halving at eta 3


def halving_action(
    obs: np.ndarray,
    size: int,
    fractions: Sequence[float],
    budget_fte: np.ndarray | None = None,
    n_train: np.ndarray | None = None,
) -> np.ndarray:
    """Successive halving over the list (rate 3) as portfolio actions, from observations.

    ``fractions``: each epochs choice over the largest; ``budget_fte`` and ``n_train`` are not used (the rungs
    are the same at every budget and task; a small budget ends the episode early). By :data:`HALVING_RUNGS`,
    with epochs choices 1, 3 and 9: the list's first 9 configs for 1 epoch each, in order; the best 3 of them
    (by their latest score) continued to 3 epochs; the best 2 of those continued to 9; then
    :func:`list_order_action`. That is 9 + 3 x 2 + 2 x 6 = 27 epochs, 3 FTE; at 1 FTE, the one-epoch screen
    alone. A config promoted to a rung stays in it: when its score falls as it is continued, the rung's other
    places are filled by score from the rest, but it does not let another config in. (Until session 27 it did,
    and the fourth config's 2 epochs left the last promotion to 9 epochs outside the budget:
    ``docs/benchmarks/hpo.md``.)
    """
    rows = np.atleast_2d(obs)
    known, scores = rows[:, -2 * size : -size], rows[:, -size:]
    out = list_order_action(rows, size, fractions)
    for r in range(len(rows)):
        pool = np.arange(min(HALVING_RUNGS[0][0], size))
        for k, e in HALVING_RUNGS:
            reached = known[r] >= fractions[e] - 1e-6  # the configs already trained to this rung's epochs
            if k < len(pool):  # the rung: its promoted configs first, the best of the rest in their places
                pool = pool[np.argsort(-scores[r, pool], kind="stable")]
                promoted = pool[reached[pool]][:k]
                chosen = np.concatenate([promoted, pool[~reached[pool]][: k - len(promoted)]])
                pool = pool[np.isin(pool, chosen)]
            short = [i for i in pool if not reached[i]]
            if short:
                out[r] = [short[0], e]
                break
    return out


HALVING_BELOW_FTE = 3.0  # by_budget: budgets under this many full trainings are halved; larger ones play the list


def by_budget_action(
    obs: np.ndarray,
    size: int,
    fractions: Sequence[float],
    budget_fte: np.ndarray | None = None,
    n_train: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`halving_action` in episodes of a budget under :data:`HALVING_BELOW_FTE`, else :func:`list_order_action`.

    ``budget_fte``: each row's episode budget in full trainings (required). Below 3 FTE the list can
    train at most two of its configs in full, and screening nine of them for an epoch each finds a
    better one on held-out datasets (regret at 1 FTE 0.046 against 0.139, ``docs/benchmarks/hpo.md``,
    session 16). At 3 FTE halving loses to the list on held-out ag_news and imdb
    (``docs/benchmarks/list_variants.md``), and live on text it lost to the shipped policy
    (``docs/benchmarks/tune_text.md``, session 16), so from 3 FTE on the plan is the list's.
    """
    rows = np.atleast_2d(obs)
    small = halving_rows("by_budget", len(rows), budget_fte, n_train)
    out = list_order_action(rows, size, fractions)
    if small.any():
        out[small] = halving_action(rows[small], size, fractions)
    return out


HALVING_BELOW_N_TRAIN = 4000  # by_size: tasks of fewer training examples are halved; larger ones play the list


def shows_small_task(plan: str) -> bool:
    """Whether a policy cloned from ``plan`` observes ``small_task`` (:func:`portfolio_features`): by_size's branch."""
    return plan == "by_size"


def plan_context(plan: str) -> int:
    """How many entries just before :func:`portfolio_features`' per-config blocks ``plan`` branches on.

    ``by_size``: ``small_task``; ``by_budget``: the budget's size (then the last entry before the blocks, as
    only ``by_size`` shows ``small_task``); the list and halving: none. What a per-config policy's choices
    read besides the configs (:class:`~rlhpo.agents.per_config_policy.PerConfigNet`).
    """
    return int(plan in ("by_budget", "by_size"))


def by_size_action(
    obs: np.ndarray,
    size: int,
    fractions: Sequence[float],
    budget_fte: np.ndarray | None = None,
    n_train: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`halving_action` on tasks of under :data:`HALVING_BELOW_N_TRAIN` examples, else :func:`list_order_action`.

    ``n_train``: each row's task's training examples (required; the env's, not the observation's, so the plan is
    the same with ``meta_features: false``); ``budget_fte`` is not used. On the store's small instances (250 to
    2,000 examples) a one-epoch screen ranks the portfolio well: leaving one dataset out, screening nine configs
    halves the regret of training the first in full at 1 FTE (``docs/benchmarks/plans_offline.md``). At full
    size the text datasets' best configs start slow and the screen drops them: there the first config in full
    tested best, live (``docs/benchmarks/hpo.md``, session 20). The store has no instance between 2,000 and
    4,250 examples, so the threshold is anywhere in that gap.
    """
    rows = np.atleast_2d(obs)
    small = halving_rows("by_size", len(rows), budget_fte, n_train)
    out = list_order_action(rows, size, fractions)
    if small.any():
        out[small] = halving_action(rows[small], size, fractions)
    return out


def halving_rows(
    plan: str, rows: int, budget_fte: np.ndarray | None = None, n_train: np.ndarray | None = None
) -> np.ndarray:
    """Which of ``rows`` episodes ``plan`` plays successive halving in (the others follow the list's plan).

    ``by_budget`` needs each episode's ``budget_fte``, ``by_size`` its task's ``n_train``.
    """
    if plan == "by_budget":
        if budget_fte is None:
            raise RlhpoError("The by_budget plan needs each episode's budget (budget_fte).")
        return np.asarray(budget_fte, dtype=float).reshape(-1) < HALVING_BELOW_FTE - 1e-9
    if plan == "by_size":
        if n_train is None:
            raise RlhpoError("The by_size plan needs each episode's task size (n_train).")
        return np.asarray(n_train).reshape(-1) < HALVING_BELOW_N_TRAIN
    return np.full(rows, plan == "halving")


PLAN_ACTIONS = {  # by agents.settings.IMITATION_PLANS
    "list": list_order_action,
    "halving": halving_action,
    "by_budget": by_budget_action,
    "by_size": by_size_action,
}


@dataclass(frozen=True)
class ImitationLoss:
    """What :func:`imitate_plan` ends on: the cloning loss (the plan's actions' negative log-likelihood)
    and the value's squared error against the plan's discounted returns, on its last minibatch."""

    action: float
    value: float


def imitate_plan(
    model: PPO,
    venv: VecEnv,
    episodes: int,
    *,
    plan: str = "list",
    epochs: int = 50,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> ImitationLoss:
    """Fit ``model``'s policy to a plan over the list on ``episodes`` episodes of ``venv``; the last minibatch's losses.

    ``plan``: ``list`` (:func:`list_order_action`), ``halving`` (:func:`halving_action`),
    ``by_budget`` (:func:`by_budget_action`, which looks at each episode's budget) or ``by_size``
    (:func:`by_size_action`, which looks at each episode's task size).

    The episodes are played by the plan itself on the meta-training tasks (the venv's), their
    observations and actions kept, and the policy's log-likelihood of the actions maximised
    (cross-entropy; Adam at ``learning_rate`` on minibatches of ``batch_size``, ``epochs`` passes;
    PPO keeps its own optimizer). The value is fit in the same passes to the plan's discounted
    returns (at the model's ``gamma``, weighted by its ``vf_coef``; steps of episodes still running
    when collection stops are left out of it), so that PPO's first advantages are measured against the
    plan's values, not a random critic's (``docs/benchmarks/hpo.md``, session 27).
    """
    action_space = venv.action_space
    assert isinstance(action_space, gym.spaces.MultiDiscrete)
    size = int(action_space.nvec[0])
    choices = venv.get_attr("space")[0].choices["epochs"]
    fractions = [c / choices[-1] for c in choices]
    venv.seed(seed)
    obs = venv.reset()
    seen, actions, rewards, ended, done_episodes = [], [], [], [], 0
    while done_episodes < episodes:
        budget_fte = np.asarray(venv.get_attr("budget_epochs"), dtype=float) / choices[-1]  # the episodes' budgets now
        n_train = np.asarray([record.n_train for record in venv.get_attr("record")])  # and their tasks' sizes
        action = PLAN_ACTIONS[plan](obs, size, fractions, budget_fte, n_train)
        seen.append(obs)
        actions.append(action)
        obs, reward, dones, _ = venv.step(action)
        rewards.append(reward)
        ended.append(dones)
        done_episodes += int(np.sum(dones))
    returns, complete = discounted_returns(np.asarray(rewards), np.asarray(ended), model.gamma)
    x = torch.as_tensor(np.concatenate(seen), dtype=torch.float32)
    y = torch.as_tensor(np.concatenate(actions), dtype=torch.int64)
    g = torch.as_tensor(returns.reshape(-1), dtype=torch.float32)  # step-major, as x and y
    w = torch.as_tensor(complete.reshape(-1), dtype=torch.float32)
    rng = np.random.default_rng(seed)
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    policy.set_training_mode(True)
    loss = value_loss = torch.zeros(())
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = torch.as_tensor(order[start : start + batch_size])
            values, log_prob, _ = policy.evaluate_actions(x[batch], y[batch])
            loss = -log_prob.mean()
            value_loss = (w[batch] * (values.flatten() - g[batch]) ** 2).sum() / w[batch].sum().clamp(min=1.0)
            optimizer.zero_grad()
            (loss + model.vf_coef * value_loss).backward()
            optimizer.step()
    policy.set_training_mode(False)
    return ImitationLoss(action=float(loss.detach()), value=float(value_loss.detach()))


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Each step's discounted return to its episode's end, and whether that end was reached.

    ``rewards`` and ``dones``: (steps, envs), as a VecEnv gives them (``dones[t]``: the step ended its
    episode). A step of an episode still running at the last step gets the return so far and ``False``.
    """
    returns = np.zeros(rewards.shape, dtype=np.float64)
    complete = np.zeros(rewards.shape, dtype=bool)
    running = np.zeros(rewards.shape[1], dtype=np.float64)
    ends = np.zeros(rewards.shape[1], dtype=bool)
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * ~dones[t]
        ends = ends | dones[t]
        returns[t], complete[t] = running, ends
    return returns, complete
