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
    net = PerConfigNet(context + entries * size, size, entries, fractions=[1 / 9, 1 / 3, 1.0], hidden=16)
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
