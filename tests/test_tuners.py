"""The contract every tuner keeps, and what each baseline does that the others don't."""

from __future__ import annotations

import helpers
import numpy as np
import pytest
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents.base import Tuner, run_tuner
from rlhpo.agents.evaluate import FullFidelity
from rlhpo.agents.learned_list import LearnedListTuner, learn_list
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.settings import METHODS
from rlhpo.agents.top_k import TopKTuner
from rlhpo.agents.tuners import make_tuners
from rlhpo.collect import CollectSettings, InlineExecutor, InstanceGroup, collect
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore

# The tiny space with one learning rate that makes adam and sgd blow up for real.
DIVERGING_SPACE = helpers.TINY_SPACE.replace("learning_rate: [1.0e-3, 1.0e-2]", "learning_rate: [1.0e-3, 1.0e+3]")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """(space, store, policy) of the tiny artefacts."""
    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    return space, helpers.tiny_store(tmp_path_factory), PPOTuner.load(helpers.tiny_policy_run(tmp_path_factory))


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """(space, store) where half the configs diverge: every config at 3 epochs on tiny digits."""
    folder = tmp_path_factory.mktemp("diverging")
    (folder / "space.yaml").write_text(DIVERGING_SPACE)
    space = load_search_space(folder / "space.yaml")
    store = folder / "store.sqlite"
    settings = CollectSettings(instances=[InstanceGroup(datasets=["digits"], n_train=[200])], configs=8)
    collect(settings, store, space=space, executor=InlineExecutor(), progress=False)
    return space, store


def tuner_for(method: str, space, store, policy) -> Tuner:
    return make_tuners(
        [method], space=space, policy=policy, store=store, exclude_datasets=policy.info.exclude_datasets
    )[0]


def play(tuner: Tuner, space, store, budget: int, seed: int = 0, task: str = helpers.DIGITS.key()):
    env = HPOEnv("recorded", store, space=space, budget_epochs=budget)
    try:
        return run_tuner(tuner, env, seed, task=task)
    finally:
        env.close()


@pytest.mark.parametrize("method", METHODS)
class TestTunerContract:
    @pytest.mark.parametrize("budget", [1, 2, 5, 6, 13])
    def test_the_budget_is_never_exceeded(self, method, budget, tiny):
        space, store, policy = tiny
        result = play(tuner_for(method, space, store, policy), space, store, budget)
        paid = [t.paid_epochs for t in result.trials]
        assert result.trials and sum(paid) == result.epochs_used <= budget
        assert all(p >= 1 for p in paid) and [t.budget_used for t in result.trials] == list(np.cumsum(paid))

    def test_one_seed_gives_the_same_episode(self, method, tiny):
        space, store, policy = tiny
        runs = [play(tuner_for(method, space, store, policy), space, store, 13, seed=5) for _ in range(2)]
        keep = ("action", "epochs", "paid_epochs", "score", "incumbent")
        a, b = ([{k: getattr(t, k) for k in keep} for t in r.trials] for r in runs)
        assert a == b and runs[0].incumbent_config == runs[1].incumbent_config

    def test_the_incumbent_is_the_best_trial(self, method, tiny):
        space, store, policy = tiny
        result = play(tuner_for(method, space, store, policy), space, store, 13, seed=1)
        best = max(result.trials, key=lambda t: t.score)
        # The incumbent score starts at 0 (chance); the incumbent config is the best trial's even below it.
        assert result.incumbent_score == max(0.0, best.score)
        assert result.incumbent_config == best.answered_config

    def test_divergent_trials_are_survived(self, method, tiny, diverging):
        _, _, policy = tiny
        space, store = diverging
        tuner = (
            tuner_for(method, space, store, policy) if method != "learned_list" else LearnedListTuner.fit(store, space)
        )
        results = [play(tuner, space, store, 30, seed=s) for s in range(4)]
        for result in results:
            assert np.isfinite(result.incumbent_score) and result.incumbent_config is not None
            for i, t in enumerate(result.trials):
                if t.diverged and i + 1 == len(result.trials):  # the last trial: the budget or the tuner ended it
                    assert result.epochs_used == 30 or method in ("default", "top_k")
        if method not in ("default", "ppo"):  # these two may never pick the diverging learning rate
            assert any(t.diverged for r in results for t in r.trials), "no trial diverged: the test tests nothing"


# ------------------------------------------------------------ each baseline


def test_top_k_screens_at_one_epoch_and_continues_the_best_k(tiny):
    space, store, _ = tiny
    result = play(TopKTuner(), space, store, budget=6)  # k = 1; 4 configs screened at 1 epoch, one continued
    screened, continued = result.trials[:4], result.trials[4:]
    assert [t.epochs for t in screened] == [1] * 4 and len({t.config.key() for t in screened}) == 4
    assert len(continued) == 1 and (continued[0].resumed_from, continued[0].paid_epochs) == (1, 2)
    best = max(screened, key=lambda t: t.score)
    assert continued[0].config.with_epochs(1) == best.config


def test_hyperband_continues_trials_through_the_rungs_and_prunes_some(tiny):
    space, store, _ = tiny
    result = play(make_tuners(["tpe_hyperband"], space=space)[0], space, store, budget=40)
    continued = [t for t in result.trials if t.resumed_from]
    assert continued and all((t.resumed_from, t.epochs) == (1, 3) for t in continued)
    assert len(continued) < len([t for t in result.trials if t.epochs == 1])  # some were pruned at rung 1


def test_tpe_trains_at_full_fidelity(tiny):
    space, store, _ = tiny
    result = play(make_tuners(["tpe"], space=space)[0], space, store, budget=12)
    assert [t.epochs for t in result.trials] == [3, 3, 3, 3]


def test_the_learned_list_is_greedy_over_the_meta_training_tasks(tiny):
    space, store, _ = tiny
    oracle = FullFidelity(CurveStore(store, readonly=True), space, 0)
    tasks = [helpers.DIGITS.key(), helpers.Task("digits", n_train=200, seed=1).key()]
    ranked = learn_list(oracle, tasks)
    assert len(ranked) == 8 and len({c.key() for c in ranked}) == 8  # every recorded config, once
    mean_regret = {
        c.key(): np.mean([max(oracle.scores(t).values()) - oracle.scores(t)[c.key()] for t in tasks]) for c in ranked
    }
    assert mean_regret[ranked[0].key()] == min(mean_regret.values())
    # The second is the best complement of the first, which is never worse than the second-best alone.
    held = [min(oracle.regret(t, ranked[0]), oracle.regret(t, ranked[1])) for t in tasks]
    for c in ranked[2:]:
        assert np.mean(held) <= np.mean([min(oracle.regret(t, ranked[0]), oracle.regret(t, c)) for t in tasks]) + 1e-12
    tuner = LearnedListTuner(ranked)
    result = play(tuner, space, store, budget=9)
    assert [t.config.key() for t in result.trials] == [c.key() for c in ranked[:3]]
    # Weighing one task alone puts its best config first; equal weights are the plain list.
    for only in (0, 1):
        weights = [float(i == only) for i in range(len(tasks))]
        first = learn_list(oracle, tasks, weights)[0]
        assert oracle.scores(tasks[only])[first.key()] == max(oracle.scores(tasks[only]).values())
    assert [c.key() for c in learn_list(oracle, tasks, [2.0, 2.0])] == [c.key() for c in ranked]


def test_make_tuners_names_every_method_and_rejects_unknown_ones(tiny):
    space, store, policy = tiny
    tuners = make_tuners(METHODS, space=space, policy=policy, store=store)
    assert [t.name for t in tuners] == list(METHODS)
    assert policy.info.exclude_datasets == ("trec",)
    with pytest.raises(RlhpoError, match="Did you mean 'tpe'"):
        make_tuners(["tpee"], space=space)


def test_the_learned_list_needs_recorded_meta_training_tasks(tmp_path, tiny):
    space, store, _ = tiny
    with pytest.raises(RlhpoError, match="no task with recorded curves"):
        LearnedListTuner.fit(store, space, exclude_datasets=["digits", "trec"])
