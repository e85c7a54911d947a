"""A portfolio policy that scores each config with one shared network (``portfolio_net: per_config``).

A portfolio policy's action is ``[config index, epochs index]`` (:mod:`rlhpo.agents.portfolio`), and
its observation ends with one block per portfolio config: its rank by score so far (with
``portfolio_ranks``), the epochs known of it and its score. SB3's ``MlpPolicy`` reads all of it as
one flat vector, so "continue the best-ranked config of the screen" has to be learned once for every
slot the best config may sit in. Cloned from successive halving, it screens as the plan does but
promotes the wrong config on held-out datasets (``benchmarks/clone_fidelity.py``): it has seen the
winner in few slots.

Here each (config, epochs) pair's logit is computed by the same small network from that config's own
entries (with ranks shown, its rank and epochs known, not its raw score: a rank means the same on every
dataset, a score does not), its place in the task's order and the plan's state, so a rule learned for
one slot holds for every slot (the logits are permutation-equivariant in the configs, apart from the
place input). The action is drawn from one categorical over every pair (:class:`PairCategorical`), not
from a config head and an epochs head apart: "continue the config ranked fourth to three epochs" is one
choice, and the epochs it gets can depend on where that config stands. The plan's state is what a plan
such as successive halving branches on, in terms no held-out dataset can move out of range: per epochs
choice, how many configs are trained that far, as a thermometer (one input per count, so "the screen
has its nine" is one input, not a 1/16 step in a share), and the observation's last ``plan_context``
entries before the per-config blocks (``small_task`` for ``by_size``, the budget's size for
``by_budget``, none for the others). Only the value reads the rest of the observation. Given the curve
statistics, the incumbent's score and raw scores too, the clones left their plan on held-out datasets
whose scores lie outside the meta-training tasks' (``docs/benchmarks/hpo.md``, session 26):

    g       = MLP(the observation before the per-config blocks)
    c       = the last plan_context entries of it
    t_(e,k) = 1 if at least k configs are known to epochs choice e or more  (k = 1..n)
    h_i     = MLP([config i's rank and epochs known, i / (n - 1), t, c])
    logit_(i,e) = (W h_i)_e                            (the action [i, e])
    value   = SB3's value head on [g, sum_i h_i, t]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.distributions import Categorical


class PairCategorical(MultiCategoricalDistribution):
    """One categorical over every ``[config, epochs]`` pair of a ``MultiDiscrete([n, E])`` action.

    SB3's distribution for that space draws the two independently (a config head, an epochs head);
    here the logits are the ``n * E`` pairs', config-major, and actions are ``[i, e]`` rows as there.
    """

    distribution: Categorical  # type: ignore[assignment]

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:
        return nn.Identity()  # the per-config net's latent already is the pairs' logits

    def proba_distribution(self, action_logits: torch.Tensor) -> PairCategorical:
        self.distribution = Categorical(logits=action_logits)
        return self

    def _pairs(self, index: torch.Tensor) -> torch.Tensor:
        epochs = self.action_dims[1]
        return torch.stack([torch.div(index, epochs, rounding_mode="floor"), index % epochs], dim=1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        actions = actions.long()
        return self.distribution.log_prob(actions[:, 0] * self.action_dims[1] + actions[:, 1])

    def entropy(self) -> torch.Tensor:
        return self.distribution.entropy()

    def sample(self) -> torch.Tensor:
        return self._pairs(self.distribution.sample())

    def mode(self) -> torch.Tensor:
        return self._pairs(torch.argmax(self.distribution.probs, dim=1))

    def ranked(self) -> Iterator[tuple[np.ndarray, float]]:
        """Every action of the first row, most likely first, with its log-probability."""
        log_probs = self.distribution.logits[0].double().log_softmax(-1).numpy()
        order = np.argsort(-log_probs, kind="stable")
        pairs = self._pairs(torch.as_tensor(order)).numpy()
        return ((pair, float(log_probs[i])) for pair, i in zip(pairs, order))


class PerConfigNet(nn.Module):
    """SB3's ``mlp_extractor`` slot: observation features to (action logits, value latent).

    ``latent_pi`` is already the logits of every ``[config, epochs]`` pair (:class:`PairCategorical`), so
    the policy's ``action_net`` is the identity.
    """

    def __init__(
        self, feature_dim: int, size: int, entries: int, fractions: list[float], hidden: int, plan_context: int
    ) -> None:
        super().__init__()
        if size < 2 or feature_dim - entries * size < max(plan_context, 1):  # the value needs a context
            raise ValueError(
                f"A per-config policy needs >= 2 configs and a context of >= {plan_context} entries, "
                f"got {size=} in {feature_dim=}."
            )
        self.size, self.entries, self.plan_context = size, entries, plan_context
        self.own = entries - 1 if entries == 3 else entries  # a config's entries its logit reads
        n_epochs = len(fractions)
        context = feature_dim - entries * size
        self.context = nn.Sequential(nn.Linear(context, hidden), nn.Tanh())
        state = n_epochs * size + plan_context  # the plan's state: [t, c]
        self.config = nn.Sequential(
            nn.Linear(self.own + 1 + state, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.pair_logits = nn.Linear(hidden, n_epochs)
        self.register_buffer("place", torch.linspace(0.0, 1.0, size).reshape(1, size, 1), persistent=False)
        self.register_buffer("fractions", torch.tensor(fractions, dtype=torch.float32) - 1e-6, persistent=False)
        self.register_buffer("counts", torch.arange(1, size + 1, dtype=torch.float32) - 0.5, persistent=False)
        self.latent_dim_pi = size * n_epochs
        self.latent_dim_vf = 2 * hidden + n_epochs * size

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = self.size, self.entries
        head, blocks = features[:, : -k * n], features[:, -k * n :]
        per_config = blocks.reshape(-1, k, n).transpose(1, 2)  # (batch, config, entry): the blocks are by entry
        known = per_config[:, :, k - 2]  # the entries are [rank,] epochs known, score
        reached = (known.unsqueeze(2) >= self.fractions).float().sum(dim=1)  # configs at each epochs choice
        thermometer = (reached.unsqueeze(2) >= self.counts).float().flatten(1)  # (batch, epochs choice x count)
        state = torch.cat([thermometer, head[:, head.shape[1] - self.plan_context :]], dim=1)
        place = self.place.expand(len(features), n, 1)
        own = per_config[:, :, : self.own]  # with ranks, the rank and epochs known, not the score
        h = self.config(torch.cat([own, place, state.unsqueeze(1).expand(-1, n, -1)], dim=2))
        return self.pair_logits(h).flatten(1), torch.cat([self.context(head), h.sum(dim=1), thermometer], dim=1)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward(features)[0]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward(features)[1]


class PerConfigPolicy(ActorCriticPolicy):
    """SB3's actor-critic with :class:`PerConfigNet` in place of its MLPs (``portfolio_net: per_config``).

    ``portfolio_size``: the configs; ``entries``: each config's entries at the observation's end
    (2: epochs known and score, 3 with ``portfolio_ranks``); ``fractions``: each epochs choice over the
    largest (as the observation gives the epochs known); ``plan_context``: the observation's entries just
    before the per-config blocks that the plan branches on (0 for list and halving; 1: the budget's size for
    ``by_budget``, ``small_task`` for ``by_size``: :func:`~rlhpo.agents.portfolio.plan_context`);
    ``net_arch``'s first layer sets the width. Its actions are drawn from :class:`PairCategorical`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        *args: Any,
        portfolio_size: int,
        entries: int,
        fractions: list[float],
        plan_context: int,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.MultiDiscrete) or int(action_space.nvec[0]) != portfolio_size:
            raise ValueError(f"A per-config policy acts as [config < {portfolio_size}, epochs], not {action_space}.")
        if len(fractions) != int(action_space.nvec[1]):
            raise ValueError(f"{len(fractions)} epochs fractions for {action_space.nvec[1]} epochs choices.")
        self.portfolio_size, self.entries, self.fractions = portfolio_size, entries, list(fractions)
        self.plan_context = plan_context
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        arch = self.net_arch if isinstance(self.net_arch, list) else self.net_arch.get("pi", [64])
        self.mlp_extractor = PerConfigNet(  # type: ignore[assignment]
            self.features_dim, self.portfolio_size, self.entries, self.fractions, int(arch[0]), self.plan_context
        )

    def _build(self, lr_schedule: Any) -> None:
        assert isinstance(self.action_space, spaces.MultiDiscrete)
        self.action_dist = PairCategorical([int(n) for n in self.action_space.nvec])
        super()._build(lr_schedule)  # the action_net it builds from the distribution is the identity
        net: PerConfigNet = self.mlp_extractor  # type: ignore[assignment]
        nn.init.orthogonal_(net.pair_logits.weight, gain=0.01)  # a near-uniform first policy, as SB3's 0.01 gain
        nn.init.zeros_(net.pair_logits.bias)  # in place: the optimizer SB3 built holds the same parameters

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            portfolio_size=self.portfolio_size,
            entries=self.entries,
            fractions=self.fractions,
            plan_context=self.plan_context,
        )
        return data
