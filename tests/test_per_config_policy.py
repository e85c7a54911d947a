"""The per-config portfolio policy (``portfolio_net: per_config``, agents/per_config_policy.py)."""

from __future__ import annotations

import math

import helpers
import pytest
import torch

from rlhpo.agents.base import run_tuner
from rlhpo.agents.meta_train import train_agent
from rlhpo.agents.per_config_policy import PairCategorical, PerConfigNet
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.settings import TrainAgentSettings
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space


def test_each_config_is_scored_alike_wherever_it_sits():
    torch.manual_seed(0)
    size, entries, context = 5, 3, 10
    net = PerConfigNet(context + entries * size, size, entries, [1 / 9, 1 / 3, 1.0], hidden=16, plan_context=2)
    net.place.zero_()  # without its place in the order, a config's logits depend on its entries alone
    x = torch.randn(4, context + entries * size)
    perm = torch.tensor([2, 0, 4, 1, 3])
    moved = x.clone()
    moved[:, context:] = x[:, context:].reshape(4, entries, size)[:, :, perm].reshape(4, -1)
    (logits, value), (moved_logits, moved_value) = net(x), net(moved)
    assert logits.shape == (4, size * 3) and value.shape == (4, 2 * 16 + 3 * size)
    pairs = logits.reshape(4, size, 3)  # config-major: each config's logit at each epochs choice
    assert torch.allclose(moved_logits.reshape(4, size, 3), pairs[:, perm], atol=1e-6)  # they move with the config
    assert torch.allclose(moved_value, value, atol=1e-6)
    net.place.copy_(torch.linspace(0, 1, size).reshape(1, size, 1))
    assert not torch.allclose(net(moved)[0].reshape(4, size, 3), pairs[:, perm])  # the place does count


def test_the_actions_read_only_the_configs_and_the_plans_state():
    torch.manual_seed(0)
    size, entries, context = 5, 3, 10
    net = PerConfigNet(context + entries * size, size, entries, [1 / 9, 1 / 3, 1.0], hidden=16, plan_context=2)
    x = torch.rand(4, context + entries * size)
    curves = x.clone()
    curves[:, : context - 2] = torch.rand(4, context - 2)  # other curve statistics, incumbent, meta-features
    assert torch.allclose(net(curves)[0], net(x)[0], atol=1e-6)
    assert not torch.allclose(net(curves)[1], net(x)[1])  # the value does read them
    raw = x.clone()
    raw[:, context + (entries - 1) * size :] = torch.rand(4, size)  # other scores alone: the ranks say the same
    assert torch.allclose(net(raw)[0], net(x)[0], atol=1e-6)
    ranks = x.clone()
    ranks[:, context : context + size] = torch.rand(4, size)
    assert not torch.allclose(net(ranks)[0], net(x)[0])  # the ranks count
    moved = x.clone()
    moved[:, context - 2 : context] = 1.0 - x[:, context - 2 : context]
    assert not torch.allclose(net(moved)[0], net(x)[0])  # the plan's context counts


def test_a_config_reads_how_many_configs_are_trained_how_far():
    torch.manual_seed(0)
    size, entries, context = 5, 3, 4
    net = PerConfigNet(context + entries * size, size, entries, [1 / 9, 1 / 3, 1.0], hidden=16, plan_context=1)
    x = torch.zeros(1, context + entries * size)
    known = context + size  # the epochs known entries of the five configs
    x[0, known : known + 3] = 1 / 9  # three configs screened for one epoch
    fourth = x.clone()
    fourth[0, known + 3] = 1 / 9  # a fourth one
    same = x.clone()
    same[0, known + 2] = 0.2  # the third one trained further, short of the next epochs choice
    first = slice(0, 3)  # the first config's logits, whose own entries do not change
    assert not torch.allclose(net(fourth)[0][:, first], net(x)[0][:, first])
    assert torch.allclose(net(same)[0][:, first], net(x)[0][:, first], atol=1e-6)


def test_a_pair_categorical_draws_config_and_epochs_together():
    dist = PairCategorical([4, 3])
    logits = torch.full((2, 12), -10.0)
    logits[0, 2 * 3 + 1] = 5.0  # config 2 at epochs choice 1
    logits[1, 3 * 3 + 0] = 5.0
    dist.proba_distribution(logits)
    assert dist.mode().tolist() == [[2, 1], [3, 0]]
    assert torch.allclose(dist.log_prob(dist.mode().float()), dist.distribution.log_prob(torch.tensor([7, 9])))
    assert dist.sample().shape == (2, 2) and dist.entropy().shape == (2,)
    ranked = list(dist.ranked())
    assert len(ranked) == 12 and ranked[0][0].tolist() == [2, 1]
    assert [lp for _, lp in ranked] == sorted((lp for _, lp in ranked), reverse=True)
    assert sum(math.exp(lp) for _, lp in ranked) == pytest.approx(1.0)


@pytest.mark.needs_data  # the tiny store records trec
def test_a_per_config_policy_clones_halving_saves_loads_and_never_repeats(tmp_path_factory):
    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    settings = helpers.tiny_settings(
        tmp_path_factory,
        portfolio=4,
        portfolio_ranks=True,
        portfolio_net="per_config",
        imitation_episodes=20,
        imitation_plan="halving",
    )
    summary = train_agent(settings, run_name="per-config", runs_dir=tmp_path_factory.mktemp("pc"), argv=["test"])
    assert summary["imitation_seconds"] > 0 and summary["train_seconds"] > 0  # both phases timed, apart
    policy = PPOTuner.load(summary["policy"])
    assert type(policy.model.policy).__name__ == "PerConfigPolicy"
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=3 * space.max_epochs)
    result = run_tuner(policy, env, 0, task=helpers.DIGITS.key())
    trials = [(t.config.key(), t.epochs) for t in result.trials]
    assert len(trials) == len(set(trials)) and result.epochs_used <= env.budget_epochs


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"portfolio_net": "per_config"}, "needs portfolio"),
        ({"portfolio": 4, "portfolio_net": "perconfig"}, "Did you mean 'per_config'"),
    ],
)
def test_the_portfolio_net_is_checked(changes, message):
    with pytest.raises(RlhpoError, match=message):
        TrainAgentSettings(**changes)
