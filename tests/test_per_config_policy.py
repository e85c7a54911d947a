"""The per-config portfolio policy (``portfolio_net: per_config``, agents/per_config_policy.py)."""

from __future__ import annotations

import helpers
import pytest
import torch

from rlhpo.agents.base import run_tuner
from rlhpo.agents.meta_train import train_agent
from rlhpo.agents.per_config_policy import PerConfigNet
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.settings import TrainAgentSettings
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space


def test_each_config_is_scored_alike_wherever_it_sits():
    torch.manual_seed(0)
    size, entries, context = 5, 3, 10
    net = PerConfigNet(context + entries * size, size, entries, [1 / 9, 1 / 3, 1.0], hidden=16, plan_context=2)
    net.place.zero_()  # without its place in the order, a config's logit depends on its entries alone
    x = torch.randn(4, context + entries * size)
    perm = torch.tensor([2, 0, 4, 1, 3])
    moved = x.clone()
    moved[:, context:] = x[:, context:].reshape(4, entries, size)[:, :, perm].reshape(4, -1)
    (logits, value), (moved_logits, moved_value) = net(x), net(moved)
    assert logits.shape == (4, size + 3) and value.shape == (4, 2 * 16 + 3)
    assert torch.allclose(moved_logits[:, :size], logits[:, :size][:, perm], atol=1e-6)  # the configs' logits move
    assert torch.allclose(moved_logits[:, size:], logits[:, size:], atol=1e-6)  # the epochs logits do not
    assert torch.allclose(moved_value, value, atol=1e-6)
    net.place.copy_(torch.linspace(0, 1, size).reshape(1, size, 1))
    assert not torch.allclose(net(moved)[0][:, :size], logits[:, :size][:, perm])  # the place does count


def test_the_actions_read_only_the_configs_and_the_plans_state():
    torch.manual_seed(0)
    size, entries, context = 5, 3, 10
    net = PerConfigNet(context + entries * size, size, entries, [1 / 9, 1 / 3, 1.0], hidden=16, plan_context=2)
    x = torch.rand(4, context + entries * size)
    curves = x.clone()
    curves[:, : context - 2] = torch.rand(4, context - 2)  # other curve statistics, incumbent, meta-features
    assert torch.allclose(net(curves)[0], net(x)[0], atol=1e-6)
    assert not torch.allclose(net(curves)[1], net(x)[1])  # the value does read them
    scores = x.clone()
    known = slice(context + (entries - 2) * size, context + (entries - 1) * size)
    scores[:, context:] = torch.rand(4, entries * size)
    scores[:, known] = x[:, known]  # other ranks and scores, the same epochs known
    assert torch.allclose(net(scores)[0][:, size:], net(x)[0][:, size:], atol=1e-6)  # the epochs choice does not
    assert not torch.allclose(net(scores)[0][:, :size], net(x)[0][:, :size])  # the configs' logits read the ranks
    raw = x.clone()
    raw[:, context + (entries - 1) * size :] = torch.rand(4, size)  # other scores alone: the ranks say the same
    assert torch.allclose(net(raw)[0], net(x)[0], atol=1e-6)
    for changed in (slice(context - 2, context), known):  # the plan's context, then how far the configs were trained
        moved = x.clone()
        moved[:, changed] = 1.0 - x[:, changed]
        assert not torch.allclose(net(moved)[0][:, size:], net(x)[0][:, size:])


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
