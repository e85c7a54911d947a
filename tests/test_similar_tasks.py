"""The portfolio ordered by the meta-training tasks most like the task at hand (agents/similar_tasks.py)."""

from __future__ import annotations

import dataclasses
import math

import helpers
import pytest
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents.base import run_tuner
from rlhpo.agents.meta_train import train_agent
from rlhpo.agents.policy import PolicyInfo, PPOTuner
from rlhpo.agents.portfolio import portfolio_action
from rlhpo.agents.settings import TrainAgentSettings
from rlhpo.agents.similar_tasks import (
    SIMILARITY_FEATURES,
    SimilarTasks,
    TaskRow,
    choose_width,
    order_by,
    weights,
)
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space
from rlhpo.tasks.registry import data_source


def features(n_train: float) -> dict[str, float]:
    return {name: (n_train if name == "log_n_train" else 0.5) for name in SIMILARITY_FEATURES}


def row(source: str, n_train: float, regret: tuple[float, ...]) -> TaskRow:
    return TaskRow(source, tuple(features(n_train).values()), best=1.0, regret=regret)


# Config 0 wins on small tasks, config 1 on large ones; small tasks are the many, so the plain list starts with 0.
SMALL = [row(s, 0.5, (0.0, 0.3)) for s in ("a", "b", "c") for _ in range(3)]
LARGE = [row(s, 0.9, (0.3, 0.0)) for s in ("a", "b", "c")]
ROWS = tuple(SMALL + LARGE)


def test_the_plain_order_is_the_learned_lists_and_a_narrow_kernel_follows_the_nearest_tasks():
    table = SimilarTasks(widths={"text": math.inf}, tasks={"text": ROWS})
    assert table.order("text", features(0.9)) == (0, 1)  # every task weighs the same: the small ones win
    narrow = SimilarTasks(widths={"text": 0.05}, tasks={"text": ROWS})
    assert narrow.order("text", features(0.9)) == (1, 0)
    assert narrow.order("text", features(0.5)) == (0, 1)
    assert narrow.order("image", features(0.9)) == ()  # no table for the modality: no reordering


def test_leaving_a_source_out_drops_its_tasks():
    rows = (row("a", 0.9, (0.3, 0.0)), row("b", 0.5, (0.0, 0.3)))
    table = SimilarTasks(widths={"text": 0.05}, tasks={"text": rows})
    assert table.order("text", features(0.9)) == (1, 0)
    assert table.order("text", features(0.9), leave_out="a") == (0, 1)  # only b's task is left
    assert table.order("text", features(0.9), leave_out="x") == (1, 0)


def test_weights_peak_at_the_nearest_task_and_are_flat_at_infinite_width():
    x = [0.9 if name == "log_n_train" else 0.5 for name in SIMILARITY_FEATURES]
    w = weights(ROWS, x, 0.1)
    assert max(w) == pytest.approx(1.0) and w[-1] == pytest.approx(1.0) and w[0] < 1e-3
    assert weights(ROWS, x, math.inf).tolist() == [1.0] * len(ROWS)


def test_greedy_order_lowers_the_weighted_best_regret_step_by_step():
    rows = [row("a", 0.5, (0.3, 0.1, 0.0)), row("b", 0.5, (0.0, 0.1, 0.5))]
    # config 1 has the least mean regret; then 0 and 2 each leave one task at 0, the other at 0.1 (tie: 0).
    assert order_by(rows, [1.0, 1.0]) == (1, 0, 2)
    assert order_by(rows, [0.0, 1.0]) == (0, 1, 2)  # only b counts


def test_the_width_is_chosen_by_leaving_each_source_out():
    # Each source holds small and large tasks: a narrow kernel ranks the large tasks' winner first for them.
    assert choose_width(ROWS) < math.inf
    # Where every task has the same winner, every width ties and the widest is kept.
    same = tuple(row(s, n, (0.0, 0.3)) for s in ("a", "b") for n in (0.5, 0.9))
    assert choose_width(same) == math.inf
    assert choose_width(tuple(r for r in ROWS if r.source == "a")) == math.inf  # one source: nothing to test on


def test_reorder_permutes_only_the_tasks_modality():
    space = load_search_space()
    a, b = space.default_config("text"), space.default_config("text").with_epochs(1)
    configs = {m: (a, b) for m in ("text", "image")}
    table = SimilarTasks(widths={"text": 0.05}, tasks={"text": ROWS})
    out = table.reorder(configs, "text", features(0.9))
    assert out["text"] == configs["text"][::-1] and out["image"] == configs["image"]


def test_the_table_round_trips_through_the_policy_file_format():
    table = SimilarTasks(widths={"text": 0.1, "image": math.inf}, tasks={"text": ROWS, "image": ROWS[:2]})
    assert SimilarTasks.from_dict(table.to_dict()) == table
    info = PolicyInfo(settings={"portfolio": 2}, similar=table)
    assert PolicyInfo.from_dict(info.to_dict()) == info
    assert PolicyInfo.from_dict({k: v for k, v in info.to_dict().items() if k != "similar"}).similar is None


def test_datasets_on_the_same_data_share_a_source():
    assert data_source("trec") == data_source("trec_fine") != data_source("imdb")
    assert data_source("no/such-dataset-here") == "no/such-dataset-here"


def test_portfolio_order_is_checked():
    with pytest.raises(RlhpoError, match="portfolio order"):
        TrainAgentSettings(portfolio=4, portfolio_order="nearest")
    with pytest.raises(RlhpoError, match="portfolio: N > 0"):
        TrainAgentSettings(portfolio_order="similar")


@pytest.mark.needs_data  # the tiny store records trec
def test_a_similar_order_policy_trains_saves_its_table_and_tunes_without_repeats(tmp_path_factory):
    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    settings = helpers.tiny_settings(tmp_path_factory, portfolio=4, imitation_episodes=10, portfolio_order="similar")
    runs = tmp_path_factory.mktemp("similar-runs")
    summary = train_agent(settings, run_name="similar", runs_dir=runs, argv=["test"], progress=False)
    policy = PPOTuner.load(summary["policy"])
    table = policy.info.similar
    assert table is not None and set(table.tasks) == set(policy.info.portfolio) - {"*"}
    rows = table.tasks["tabular"]  # the digits tasks, trec held out
    assert rows and all(len(r.regret) == 4 and min(r.regret) >= 0.0 for r in rows)
    assert table.widths["tabular"] == math.inf  # one dataset: no width can be tested
    store = helpers.tiny_store(tmp_path_factory)
    env = HPOEnv("recorded", store, space=space, budget_epochs=3 * space.max_epochs)
    result = run_tuner(policy, env, 0, task=helpers.DIGITS.key())
    trials = [(t.config.key(), t.epochs) for t in result.trials]
    assert len(trials) == len(set(trials)) and result.epochs_used <= env.budget_epochs
    # A table whose one task puts the last config first (then ties: list order): index 0 plays listed config 3.
    last_first = SimilarTasks(
        widths={"tabular": math.inf}, tasks={"tabular": (TaskRow("x", rows[0].features, 1.0, (0.3, 0.2, 0.1, 0.0)),)}
    )
    tuner = PPOTuner(policy.model, dataclasses.replace(policy.info, similar=last_first))
    env.reset(options={"task": helpers.DIGITS.key()})
    tuner.start(env, seed=0)
    listed = policy.info.portfolio["tabular"]
    assert tuner.portfolio["tabular"] == (listed[3], *listed[:3])
    assert tuner.env_action([0, 1]).tolist() == portfolio_action(env, policy.info.portfolio, [3, 1]).tolist()
