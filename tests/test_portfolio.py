"""A portfolio policy: actions pick among the learned list's configs and their epochs (agents/portfolio.py)."""

from __future__ import annotations

import dataclasses

import helpers
import numpy as np
import pytest
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents.base import run_tuner
from rlhpo.agents.meta_train import train_agent
from rlhpo.agents.policy import PolicyInfo, PPOTuner
from rlhpo.agents.portfolio import (
    PortfolioActions,
    learn_portfolio,
    portfolio_config,
    portfolio_names,
    portfolio_size,
    score_ranks,
)
from rlhpo.agents.settings import TrainAgentSettings
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space

pytestmark = pytest.mark.needs_data  # the tiny store records trec


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return load_search_space(helpers.tiny_space_path(tmp_path_factory))


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory, space):
    portfolio, fallback = learn_portfolio(helpers.tiny_store(tmp_path_factory), space, 4, exclude_datasets=["trec"])
    assert fallback == ()  # the list for any modality is long enough to be in the portfolio
    return portfolio


@pytest.fixture(scope="module")
def portfolio_policy(tmp_path_factory):
    runs = tmp_path_factory.mktemp("portfolio-runs")
    settings = helpers.tiny_settings(tmp_path_factory, portfolio=4)
    summary = train_agent(settings, run_name="portfolio", runs_dir=runs, argv=["test"], progress=False)
    return PPOTuner.load(summary["policy"])


def test_the_portfolio_is_the_learned_lists_head_from_the_meta_training_tasks(tmp_path_factory, space, portfolio):
    from rlhpo.agents.learned_list import LearnedListTuner

    full = LearnedListTuner.fit(helpers.tiny_store(tmp_path_factory), space, exclude_datasets=["trec"]).lists
    assert set(full) == {"tabular", "*"}  # one list per modality of the meta-training tasks (digits), one for any
    assert full["*"] == full["tabular"]  # "*" is learned on every task: here the digits tasks alone
    assert portfolio == {m: tuple(configs[:4]) for m, configs in full.items()}
    assert len({c.key() for c in portfolio["tabular"]}) == 4


def test_a_list_for_any_modality_shorter_than_the_portfolio_is_kept_as_the_fallback(monkeypatch, space, portfolio):
    from rlhpo.agents.learned_list import LearnedListTuner

    configs = list(portfolio["tabular"])
    lists = {"tabular": configs, "text": configs[::-1], "*": configs[:2]}
    monkeypatch.setattr(LearnedListTuner, "fit", classmethod(lambda cls, *a, **k: cls(lists)))
    short, fallback = learn_portfolio("unused.sqlite", space, 4)
    assert short == {"tabular": tuple(configs), "text": tuple(configs[::-1])} and fallback == tuple(configs[:2])
    long, fallback = learn_portfolio("unused.sqlite", space, 2)  # as long as the portfolio: in it, no fallback
    assert long["*"] == tuple(configs[:2]) and fallback == ()


def test_each_modality_plays_its_own_portfolio_of_one_length(tmp_path_factory, space):
    store = helpers.tiny_store(tmp_path_factory)
    both, _ = learn_portfolio(store, space, 50)
    assert {"tabular", "text"} <= set(both)
    assert len(both["tabular"]) == len(both["text"]) == portfolio_size(both)  # the shorter list's length
    env = HPOEnv("recorded", store, space=space)
    for task, modality in ((helpers.DIGITS.key(), "tabular"), (helpers.TREC.key(), "text")):
        env.reset(seed=0, options={"task": task})
        played = portfolio_config(env, both, [0, 0])
        assert played.with_family(None) == both[modality][0].with_epochs(1).with_family(None)
    with pytest.raises(RlhpoError, match="as many configs"):
        portfolio_size({"tabular": both["tabular"], "text": both["text"][:1]})


def test_actions_train_portfolio_configs_and_the_observation_shows_what_is_known(tmp_path_factory, space, portfolio):
    env = PortfolioActions(HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space), portfolio)
    assert env.action_space.nvec.tolist() == [4, 2]  # 4 configs x epochs choices 1, 3
    obs, _ = env.reset(seed=0, options={"task": helpers.DIGITS.key()})
    base = len(env.unwrapped.observation_names)
    assert obs.shape == env.observation_space.shape == (base + len(portfolio_names(4)),)
    assert np.all(obs[base + 1 :] == 0)  # nothing known yet

    obs, _, _, _, info = env.step([2, 0])  # portfolio config 3 for 1 epoch
    result = info["result"]
    assert result.config == portfolio["tabular"][2].with_epochs(1) and result.exact
    assert obs[base + 1 + 2] == pytest.approx(1 / 3) and obs[base + 1 + 4 + 2] == pytest.approx(result.score)
    assert env.observation_space.contains(obs)

    obs, _, _, _, info = env.step([2, 1])  # the same config to 3 epochs: continued, pays 2 epochs
    assert (info["result"].resumed_from, info["result"].paid_epochs) == (1, 2)
    assert obs[base + 1 + 2] == pytest.approx(1.0) and obs[base + 1 + 4 + 2] == pytest.approx(info["result"].score)
    with pytest.raises(RlhpoError, match="portfolio action"):
        env.step([4, 0])


def test_with_ranks_the_observation_also_shows_each_configs_place_by_score(tmp_path_factory, space, portfolio):
    env = PortfolioActions(HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space), portfolio, ranks=True)
    obs, _ = env.reset(seed=0, options={"task": helpers.DIGITS.key()})
    base = len(env.unwrapped.observation_names)
    assert obs.shape == env.observation_space.shape == (base + len(portfolio_names(4, ranks=True)),)
    assert portfolio_names(4, ranks=True)[1:5] == tuple(f"portfolio{i}_rank" for i in range(1, 5))
    assert np.all(obs[base + 1 : base + 5] == 1.0)  # nothing tried
    obs, _, _, _, _ = env.step([2, 0])
    assert obs[base + 1 : base + 5].tolist() == [1.0, 1.0, 0.0, 1.0]  # the one tried is the best
    assert env.observation_space.contains(obs)


def test_the_by_size_observation_says_whether_the_task_is_small(tmp_path_factory, space, portfolio, monkeypatch):
    from rlhpo.agents import portfolio as module

    env = PortfolioActions(HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space), portfolio, small=True)
    obs, _ = env.reset(seed=0, options={"task": helpers.DIGITS.key()})  # 200 training examples
    base = len(env.unwrapped.observation_names)
    assert obs.shape == env.observation_space.shape == (base + len(portfolio_names(4, small=True)),)
    assert portfolio_names(4, small=True)[:2] == ("budget_size", "small_task") and obs[base + 1] == 1.0
    monkeypatch.setattr(module, "HALVING_BELOW_N_TRAIN", 200)  # the same task, now at the threshold: not small
    assert env.reset(seed=0, options={"task": helpers.DIGITS.key()})[0][base + 1] == 0.0


def test_score_ranks_orders_the_tried_configs_by_their_latest_score():
    known = np.array([1 / 9, 0.0, 1.0, 1 / 3, 1 / 9])
    scores = np.array([0.5, 0.0, 0.7, 0.9, 0.5])
    assert score_ranks(known, scores).tolist() == pytest.approx([0.4, 1.0, 0.2, 0.0, 0.6])  # ties: list order


def test_a_policy_that_sees_ranks_and_imitates_halving_tunes_without_repeats(tmp_path_factory, space):
    runs = tmp_path_factory.mktemp("ranks-runs")
    settings = helpers.tiny_settings(
        tmp_path_factory, portfolio=4, portfolio_ranks=True, imitation_episodes=20, imitation_plan="halving"
    )
    summary = train_agent(settings, run_name="ranks", runs_dir=runs, argv=["test"], progress=False)
    policy = PPOTuner.load(summary["policy"])
    assert policy.info.portfolio_ranks
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=3 * space.max_epochs)
    result = run_tuner(policy, env, 0, task=helpers.DIGITS.key())
    trials = [(t.config.key(), t.epochs) for t in result.trials]
    assert len(trials) == len(set(trials)) and result.epochs_used <= env.budget_epochs


def test_a_portfolio_policy_plays_its_configs_then_new_random_ones_never_a_repeat(
    tmp_path_factory, space, portfolio, portfolio_policy
):
    assert portfolio_policy.info.portfolio == portfolio
    keys = {c.key() for c in portfolio["tabular"]}
    store = helpers.tiny_store(tmp_path_factory)
    for fte, seed in ((2, 0), (2, 1), (8, 0)):
        env = HPOEnv("recorded", store, space=space, budget_epochs=fte * space.max_epochs)
        result = run_tuner(portfolio_policy, env, seed, task=helpers.DIGITS.key())
        trials = [(t.config.key(), t.epochs) for t in result.trials]
        assert len(trials) == len(set(trials)), trials  # never a repeat
        assert result.epochs_used <= env.budget_epochs
        known_in_full = {k for k, e in trials if k in keys and e == space.max_epochs}
        for key, _ in trials:  # a config from outside the portfolio only once all of it is known in full
            assert key in keys or known_in_full == keys, trials
    assert len(set(trials)) > 4  # 8 FTE: past the portfolio, random new configs at full fidelity


def test_policy_info_keeps_the_portfolio(tmp_path, portfolio, space):
    info = PolicyInfo(space=space, budget_epochs=6, settings={"portfolio": 4}, portfolio=portfolio)
    assert PolicyInfo.from_dict(info.to_dict()) == info
    assert PolicyInfo.from_dict({"space": None}).portfolio == {}  # files from before portfolios
    one_list = {"space": None, "portfolio": [c.to_dict() for c in portfolio["tabular"]]}  # before per-modality ones
    assert PolicyInfo.from_dict(one_list).portfolio == {"*": portfolio["tabular"]}


def test_a_negative_portfolio_is_a_clear_error():
    with pytest.raises(RlhpoError, match="portfolio"):
        TrainAgentSettings(portfolio=-1)


def test_imitation_fits_the_policy_to_the_lists_plan(tmp_path_factory, space, portfolio):
    from rlhpo.agents.meta_train import make_vec_env, new_model
    from rlhpo.agents.portfolio import imitate_plan
    from rlhpo.envs.backends import RecordedBackend

    settings = helpers.tiny_settings(tmp_path_factory, portfolio=4, imitation_episodes=60, config_fraction=1.0)
    backend = RecordedBackend(settings.store_path(), space, exclude_datasets=settings.exclude_datasets)
    venv = make_vec_env(settings, backend, space, portfolio)
    model = new_model(settings, venv)
    loss = imitate_plan(model, venv, settings.imitation_episodes, epochs=100, batch_size=16)
    assert loss.action < 0.1
    assert loss.value < 1e-3  # the value is fit to the plan's returns in the same passes
    tuner = PPOTuner(model, PolicyInfo(space=space, budget_epochs=12, portfolio=portfolio))
    env = HPOEnv("recorded", settings.store_path(), space=space, budget_epochs=12)
    result = run_tuner(tuner, env, 0, task=helpers.DIGITS.key())
    assert [t.config for t in result.trials] == [c.with_epochs(space.max_epochs) for c in portfolio["tabular"]]


def test_the_halving_plan_screens_the_lists_first_configs_then_continues_the_best():
    from rlhpo.agents.portfolio import halving_action

    size, fractions = 12, (1 / 9, 3 / 9, 1.0)
    final = [0.3, 0.9, 0.1, 0.5, 0.2, 0.95, 0.4, 0.6, 0.0, 0.7, 0.8, 0.85]
    known, scores = np.zeros(size), np.zeros(size)
    plan, paid = [], []
    while True:
        action = halving_action(np.concatenate([[0.5], known, scores]), size, fractions)[0]
        if known[action[0]] == 1.0:  # repeats a config known in full: the list is exhausted
            break
        plan.append((int(action[0]), int(action[1])))
        paid.append(round(9 * (fractions[action[1]] - known[action[0]])))  # a continuation pays the new epochs
        known[action[0]] = fractions[action[1]]
        scores[action[0]] = final[action[0]] * known[action[0]] ** 0.1  # a config's score rises with its epochs
    assert plan[:9] == [(i, 0) for i in range(9)]  # the list's first 9, screened in order
    assert plan[9:12] == [(5, 1), (1, 1), (7, 1)]  # the best 3 of them to 3 epochs
    assert plan[12:14] == [(5, 2), (1, 2)]  # the best 2 of those to 9
    rest = [i for i in range(size) if i not in (5, 1)]
    assert plan[14:] == [(i, 2) for i in rest]  # then the list's order, in full
    assert sum(paid[:14]) == 27  # 3 FTE


def test_a_config_promoted_by_the_halving_plan_stays_promoted_when_its_score_falls():
    from rlhpo.agents.portfolio import halving_action

    size, fractions = 12, (1 / 9, 3 / 9, 1.0)
    known, scores = np.zeros(size), np.zeros(size)
    known[:9] = 1 / 9
    scores[:9] = [0.3, 0.9, 0.1, 0.5, 0.2, 0.95, 0.4, 0.6, 0.0]  # the best three: 5, 1, 7
    known[5], scores[5] = 1 / 3, 0.05  # config 5 continued to 3 epochs, and its score fell below all others
    assert halving_action(np.concatenate([[0.5], known, scores]), size, fractions)[0].tolist() == [1, 1]
    known[1], known[7] = 1 / 3, 1 / 3
    assert halving_action(np.concatenate([[0.5], known, scores]), size, fractions)[0].tolist() == [1, 2]  # not 3
    known[1] = 1.0
    assert halving_action(np.concatenate([[0.5], known, scores]), size, fractions)[0].tolist() == [7, 2]


def test_the_by_budget_plan_halves_small_budgets_and_plays_the_list_from_3_fte():
    from rlhpo.agents.portfolio import by_budget_action, halving_action, list_order_action

    size, fractions = 12, (1 / 9, 3 / 9, 1.0)
    known = np.array([1 / 9] * 9 + [0.0] * 3)  # the list's first 9 screened for an epoch
    scores = np.linspace(0.1, 0.9, size)
    obs = np.stack([np.concatenate([[0.5], known, scores])] * 3)
    budgets = np.array([1.0, 2.9, 3.0])
    actions = by_budget_action(obs, size, fractions, budgets)
    assert actions[0].tolist() == actions[1].tolist() == halving_action(obs[:1], size, fractions)[0].tolist() == [8, 1]
    assert actions[2].tolist() == list_order_action(obs[:1], size, fractions)[0].tolist() == [0, 2]
    with pytest.raises(RlhpoError, match="budget"):
        by_budget_action(obs, size, fractions)


def test_the_by_size_plan_halves_small_tasks_and_plays_the_list_on_large_ones():
    from rlhpo.agents.portfolio import by_size_action, halving_action, list_order_action

    size, fractions = 12, (1 / 9, 3 / 9, 1.0)
    known = np.array([1 / 9] * 9 + [0.0] * 3)  # the list's first 9 screened for an epoch
    scores = np.linspace(0.1, 0.9, size)
    obs = np.tile(np.concatenate([[0.5], known, scores]), (4, 1))  # the size is not in the observation
    actions = by_size_action(obs, size, fractions, n_train=np.array([250, 3999, 4000, 9000]))
    halved, listed = halving_action(obs[:1], size, fractions)[0], list_order_action(obs[:1], size, fractions)[0]
    assert halved.tolist() == [8, 1] and listed.tolist() == [0, 2]
    assert [a.tolist() for a in actions] == [halved.tolist()] * 2 + [listed.tolist()] * 2
    with pytest.raises(RlhpoError, match="task size"):
        by_size_action(obs, size, fractions)


def test_imitation_of_the_by_budget_plan_follows_each_episodes_budget(tmp_path_factory, space, portfolio):
    from rlhpo.agents.meta_train import make_vec_env, new_model
    from rlhpo.agents.portfolio import imitate_plan
    from rlhpo.envs.backends import RecordedBackend

    settings = helpers.tiny_settings(
        tmp_path_factory, portfolio=4, imitation_episodes=60, config_fraction=1.0, budget_fte_range=(1.0, 4.0)
    )
    backend = RecordedBackend(settings.store_path(), space, exclude_datasets=settings.exclude_datasets)
    venv = make_vec_env(settings, backend, space, portfolio)
    model = new_model(settings, venv)
    loss = imitate_plan(model, venv, settings.imitation_episodes, plan="by_budget", epochs=100, batch_size=16)
    assert loss.action < 0.2
    info = PolicyInfo(space=space, settings={"budget_fte_range": [1.0, 4.0]}, portfolio=portfolio)
    for fte, first_epochs in ((1, 1), (4, space.max_epochs)):  # the screen's one epoch, or the list in full
        env = HPOEnv("recorded", settings.store_path(), space=space, budget_epochs=fte * space.max_epochs)
        result = run_tuner(PPOTuner(model, info), env, 0, task=helpers.DIGITS.key())
        assert result.trials[0].config == portfolio["tabular"][0].with_epochs(first_epochs)


@pytest.mark.parametrize("threshold, screened", [(4000, True), (200, False)])  # 200 examples: small, or not
def test_imitation_of_the_by_size_plan_reads_the_tasks_size_without_meta_features(
    tmp_path_factory, space, portfolio, monkeypatch, threshold, screened
):
    from rlhpo.agents import portfolio as module
    from rlhpo.agents.meta_train import make_vec_env, new_model
    from rlhpo.agents.portfolio import imitate_plan
    from rlhpo.envs.backends import RecordedBackend

    monkeypatch.setattr(module, "HALVING_BELOW_N_TRAIN", threshold)
    settings = helpers.tiny_settings(
        tmp_path_factory,
        portfolio=4,
        imitation_episodes=60,
        imitation_plan="by_size",
        config_fraction=1.0,
        meta_features=False,
    )
    backend = RecordedBackend(settings.store_path(), space, exclude_datasets=settings.exclude_datasets)
    venv = make_vec_env(settings, backend, space, portfolio)
    model = new_model(settings, venv)
    imitate_plan(model, venv, settings.imitation_episodes, plan=settings.imitation_plan, epochs=100, batch_size=16)
    info = PolicyInfo(space=space, settings={"imitation_plan": "by_size", "meta_features": False}, portfolio=portfolio)
    env = HPOEnv("recorded", settings.store_path(), space=space, budget_epochs=3 * space.max_epochs)
    result = run_tuner(PPOTuner(model, info), env, 0, task=helpers.DIGITS.key())
    first_epochs = space.choices["epochs"][0] if screened else space.max_epochs  # halving's screen, or the list
    assert result.trials[0].config == portfolio["tabular"][0].with_epochs(first_epochs)


def test_an_unknown_imitation_plan_is_a_clear_error():
    with pytest.raises(RlhpoError, match="imitation plan.*'halvign'.*Did you mean 'halving'"):
        TrainAgentSettings(portfolio=4, imitation_episodes=10, imitation_plan="halvign")


def test_imitation_and_ranks_need_a_portfolio():
    with pytest.raises(RlhpoError, match="imitation_episodes"):
        TrainAgentSettings(imitation_episodes=10)
    with pytest.raises(RlhpoError, match="portfolio_ranks"):
        TrainAgentSettings(portfolio_ranks=True)


def test_a_portfolio_policy_and_ppo_tpe_show_the_policy_its_meta_training_budget(
    tmp_path_factory, space, portfolio_policy
):
    from rlhpo.agents.optuna_interop import PPOTPETuner

    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=8 * space.max_epochs)
    obs, _ = env.reset(seed=0, options={"task": helpers.DIGITS.key()})
    size = len(portfolio_names(4))
    horizon = portfolio_policy.info.budget_epochs
    assert horizon == 2 * space.max_epochs
    assert env.history_features(0)[0] > env.history_features(0, horizon)[0]
    PPOTPETuner(portfolio_policy).start(env, 0)
    assert portfolio_policy.policy_view(obs)[-size] == pytest.approx(env.history_features(0, horizon)[0])
    portfolio_policy.start(env, 0)  # plain ppo: the same, within its horizon
    assert portfolio_policy.horizon == horizon
    assert portfolio_policy.policy_view(obs)[-size] == pytest.approx(env.history_features(0, horizon)[0])
    budget_used = env.observation_names.index("budget_used")
    assert portfolio_policy.within_horizon(obs)[budget_used] == 0.0
    # A policy meta-trained at drawn budgets plays every budget as its own.
    drawn = dataclasses.replace(
        portfolio_policy.info, settings={**portfolio_policy.info.settings, "budget_fte_range": [1, 30]}
    )
    tuner = PPOTuner(portfolio_policy.model, drawn)
    tuner.start(env, 0)
    assert tuner.horizon == env.budget_epochs
    assert tuner.policy_view(obs)[-size] == pytest.approx(env.history_features(0)[0])


def test_past_its_horizon_a_portfolio_policy_trains_its_portfolio_in_order(
    tmp_path_factory, space, portfolio, portfolio_policy
):
    store = helpers.tiny_store(tmp_path_factory)
    env = HPOEnv("recorded", store, space=space, budget_epochs=8 * space.max_epochs)
    result = run_tuner(portfolio_policy, env, 0, task=helpers.DIGITS.key())
    horizon = portfolio_policy.info.budget_epochs
    used, after = 0, []
    for trial in result.trials:
        if used >= horizon:
            after.append(trial)
        used += trial.epochs
    assert after and all(t.epochs == space.max_epochs for t in after)
    known = {t.config for t in result.trials[: len(result.trials) - len(after)] if t.epochs == space.max_epochs}
    untried = [c.with_epochs(space.max_epochs) for c in portfolio["tabular"]]
    untried = [c for c in untried if c not in known]
    assert [t.config for t in after[: len(untried)]] == untried


def test_on_a_modality_it_never_saw_a_portfolio_policy_plays_the_default_config_then_random_new_ones(
    tmp_path_factory, space, portfolio, portfolio_policy
):
    # trec (text) was held out of its meta-training; without the list for any modality it has no text configs.
    info = portfolio_policy.info
    tabular = {"tabular": portfolio["tabular"]}
    tabular_only = PPOTuner(portfolio_policy.model, dataclasses.replace(info, portfolio=tabular))
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=3 * space.max_epochs)
    result = run_tuner(tabular_only, env, 0, task=helpers.TREC.key())
    trials = [(t.config.key(), t.epochs) for t in result.trials]
    assert len(trials) == len(set(trials)) == 3 and all(e == space.max_epochs for _, e in trials)
    default = space.default_config(env.modality).with_epochs(space.max_epochs)
    assert result.trials[0].config == default
    assert default not in [t.config for t in result.trials[1:]]


def test_on_a_modality_it_never_saw_a_portfolio_policy_plays_its_fallback_list_first(
    tmp_path_factory, space, portfolio, portfolio_policy, caplog
):
    # The list for any modality, shorter than the portfolio, is what the policy keeps for an unseen modality.
    short = {"tabular": portfolio["tabular"], "*": portfolio["*"][:2]}
    info = dataclasses.replace(portfolio_policy.info, portfolio={"tabular": short["tabular"]}, fallback=short["*"])
    assert PolicyInfo.from_dict(info.to_dict()) == info  # the policy file keeps it
    tuner = PPOTuner(portfolio_policy.model, info)
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=4 * space.max_epochs)
    result = run_tuner(tuner, env, 0, task=helpers.TREC.key())
    played = [t.config for t in result.trials]
    assert played[:2] == [c.with_epochs(space.max_epochs) for c in short["*"]]
    assert len(played) == len(set(played)) == 4 and all(t.epochs == space.max_epochs for t in result.trials)
    run_tuner(tuner, env, 1, task=helpers.TREC.key())  # a second episode: the policy said it once, not per episode
    assert [r.getMessage() for r in caplog.records].count(
        "The portfolio policy has no configs for text tasks (it never saw one); "
        "it plays the 2 configs that did best on every task, then random ones."
    ) == 1


def test_on_a_modality_without_a_list_the_learned_list_plays_the_default_config_first(
    tmp_path_factory, space, portfolio
):
    from rlhpo.agents.learned_list import LearnedListTuner

    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=2 * space.max_epochs)
    result = run_tuner(LearnedListTuner({"tabular": portfolio["tabular"]}), env, 0, task=helpers.TREC.key())
    assert result.trials[0].config == space.default_config(env.modality).with_epochs(space.max_epochs)
    assert result.trials[1].config != result.trials[0].config
