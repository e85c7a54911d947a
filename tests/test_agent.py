"""Meta-training the PPO tuner: settings, run folder, TensorBoard, resume, determinism, evaluation."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlhpo.agents.meta_train import train_agent
from rlhpo.agents.policy import PPOTuner, most_likely_first
from rlhpo.agents.settings import load_train_agent_settings
from rlhpo.cli import main
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory, data_dir) -> Path:
    return helpers.tiny_policy_run(tmp_path_factory)


def events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run folder's TensorBoard files: tag -> [(step, value)], in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def policy_params(path: Path) -> dict[str, torch.Tensor]:
    return PPOTuner.load(path).model.policy.state_dict()


# ---------------------------------------------------------------- settings


def test_the_shipped_config_holds_ag_news_out(tmp_path):
    settings = load_train_agent_settings()
    assert settings.exclude_datasets == ("ag_news",) and settings.budget_fte == 3.0
    assert settings.ppo.n_envs == 8 and settings.ppo.net_arch == (128, 128)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(settings.to_dict()))
    assert load_train_agent_settings(path) == settings  # config.yaml round-trips


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ppo: {n_env: 4}", "Unknown key in .* ppo: 'n_env'; expected one of .*Did you mean 'n_envs'"),
        ("totl_steps: 10", "Did you mean 'total_steps'"),
        ("ppo: {learning_rate: 3e-4}", "ppo.learning_rate must be a finite number"),
        ("ppo: {net_arch: 64}", "ppo.net_arch must be a non-empty list"),
        ("reward: {cost_per_fte: -1.0}", "cost_per_fte must be finite and >= 0"),
        ("exclude_datasets: ag_news", "exclude_datasets must be a list"),
        ("config_fraction: 0.0", r"config_fraction must be in \(0, 1\]"),
        ("meta_features: maybe", "meta_features must be true or false"),
    ],
)
def test_bad_settings_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RlhpoError, match=message):
        load_train_agent_settings(path)


def test_a_missing_store_is_a_clear_error(tmp_path_factory, tmp_path):
    settings = helpers.tiny_settings(tmp_path_factory, store=str(tmp_path / "none.sqlite"))
    with pytest.raises(RlhpoError, match="does not exist; record one with `rlhpo collect"):
        train_agent(settings, runs_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # no run folder for a run that cannot start


# --------------------------------------------------------------- run folder


def test_train_agent_writes_the_run_folder_and_a_loadable_policy(policy_run, tmp_path_factory):
    names = {p.name for p in policy_run.iterdir()}
    assert {"config.yaml", "command.txt", "policy.zip", "rollouts.jsonl", "summary.json", "progress.jsonl"} <= names
    assert {p.name for p in (policy_run / "checkpoints").iterdir()} == {"ppo_128_steps.zip", "ppo_256_steps.zip"}
    summary = json.loads((policy_run / "summary.json").read_text())
    assert summary["num_timesteps"] == 256 and summary["budget_epochs"] == 6
    assert summary["imitation_seconds"] == 0.0  # no imitation_episodes: PPO alone
    assert all(not key.startswith("trec/") for key in summary["train_tasks"])

    tuner = PPOTuner.load(policy_run)  # a run folder is accepted for its policy.zip
    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    assert tuner.policy_space == space  # the policy carries the space its actions index
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=6)
    obs, _ = env.reset(seed=0)
    tuner.start(env, seed=0)
    action = tuner.propose(obs)
    assert env.action_space.contains(action)
    assert np.array_equal(tuner.propose(obs), action)  # deterministic


def test_tensorboard_holds_sb3_and_hpo_scalars_and_the_hparams(policy_run):
    scalars = events(policy_run)
    for tag in ("hpo/incumbent_score", "hpo/epochs_spent", "hpo/divergences", "hpo/regret", "hpo/trials"):
        assert tag in scalars, sorted(scalars)
        assert [s for s, _ in scalars[tag]] == [64, 128, 192, 256]  # each rollout: 2 envs x 32 steps
    assert {"rollout/ep_rew_mean", "train/value_loss", "train/approx_kl"} <= set(scalars)
    assert all(v == 6.0 for _, v in scalars["hpo/epochs_spent"])  # every episode spends the 6-epoch budget
    assert all(0.0 <= v <= 1.0 for _, v in scalars["hpo/incumbent_score"])
    assert {"eval/train/ppo/incumbent_score", "eval/heldout/random/regret"} <= set(scalars)
    plugins = set()
    for path in policy_run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        plugins |= set(acc.PluginTagToContent("hparams"))
    assert "_hparams_/experiment" in plugins


def test_evaluation_compares_ppo_with_the_baselines_on_train_and_held_out_tasks(policy_run):
    evaluation = json.loads((policy_run / "summary.json").read_text())["evaluation"]
    assert evaluation["seeds"] == [10_000, 10_001]
    assert evaluation["groups"]["heldout"]["tasks"] == [helpers.TREC.key()]
    assert set(evaluation["groups"]["train"]["tasks"]) == {helpers.DIGITS.key(), helpers.DIGITS.replace(seed=1).key()}
    for group in ("train", "heldout"):
        methods = evaluation["groups"][group]["methods"]
        assert set(methods) == {"ppo", "default", "random"}
        for row in methods.values():
            assert row["known"] == row["episodes"]  # every config of the tiny space is recorded at 3 epochs
            assert row["regret"] >= 0.0 and -1 <= row["incumbent_score"] <= 1
    default = evaluation["groups"]["train"]["methods"]["default"]
    assert default["epochs_used"] == 3  # one full training of the default config


# ------------------------------------------------------------------- resume


@pytest.mark.needs_data  # the tiny store records trec
def test_resume_continues_the_step_counter_and_the_learning_curve(tmp_path_factory, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(helpers.tiny_settings(tmp_path_factory, total_steps=128).to_dict()))
    sb3_dirs = set(Path(tempfile.gettempdir()).glob("SB3-*"))
    runner = CliRunner()
    env = {"RLHPO_RUNS_DIR": str(tmp_path / "runs")}
    first = runner.invoke(main, ["train-agent", "--config", str(config), "--run-name", "r"], env=env)
    assert first.exit_code == 0, first.output
    assert "heldout  ppo" in first.output
    run_dir = tmp_path / "runs" / "r"

    again = runner.invoke(main, ["train-agent", "--config", str(config), "--run-name", "r"], env=env)
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = runner.invoke(main, ["train-agent", "--resume", str(run_dir), "--total-steps", "256", "--json"], env=env)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == 128 and summary["num_timesteps"] == 256

    steps = [s for s, _ in events(run_dir)["rollout/ep_rew_mean"]]
    assert steps == [64, 128, 192, 256]  # no restart from zero, no gap
    progress = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [p["time/total_timesteps"] for p in progress if "time/total_timesteps" in p] == [64, 128, 192, 256]
    episodes = [p["hpo/episodes"] for p in progress if "hpo/episodes" in p]
    assert episodes == sorted(episodes) and len(set(episodes)) == 4  # the episode count goes on too
    assert PPOTuner.load(run_dir).model.num_timesteps == 256
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"ppo_128_steps.zip", "ppo_256_steps.zip"}
    assert len((run_dir / "command.txt").read_text().splitlines()) == 2  # the first command, then the resume
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_steps"] == 256
    assert set(Path(tempfile.gettempdir()).glob("SB3-*")) == sb3_dirs  # SB3 logged only into the run folder


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("total_steps: 10\n")
    with pytest.raises(RlhpoError, match="no checkpoint to resume from"):
        train_agent(resume=tmp_path, progress=False)
    with pytest.raises(RlhpoError, match="not a train-agent run folder"):
        train_agent(resume=tmp_path / "nothing", progress=False)


# -------------------------------------------------------------- determinism


def test_one_seed_gives_the_same_policy_and_another_seed_does_not(policy_run, tmp_path_factory, tmp_path):
    settings = helpers.tiny_settings(tmp_path_factory)
    same = train_agent(settings, runs_dir=tmp_path, progress=False)
    other = train_agent(settings, seed=1, runs_dir=tmp_path, progress=False)

    want = policy_params(policy_run / "policy.zip")
    got = policy_params(Path(same["policy"]))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(want[k], v) for k, v in policy_params(Path(other["policy"])).items())

    first = [json.loads(x) for x in (policy_run / "rollouts.jsonl").read_text().splitlines()[1:]]
    second = [json.loads(x) for x in (Path(same["run_dir"]) / "rollouts.jsonl").read_text().splitlines()[1:]]
    assert [x["action"] for x in first] == [x["action"] for x in second]
    assert [x["reward"] for x in first] == [x["reward"] for x in second]


@pytest.mark.needs_data  # the tiny store records trec
def test_a_run_killed_after_its_last_checkpoint_resumes_from_that_checkpoint(tmp_path_factory, tmp_path):
    settings = helpers.tiny_settings(tmp_path_factory, total_steps=256, checkpoint_every=128)
    run_dir = Path(train_agent(settings, run_name="k", runs_dir=tmp_path, progress=False)["run_dir"])
    (run_dir / "checkpoints" / "ppo_256_steps.zip").unlink()  # as if killed after step 256 was logged
    summary = train_agent(resume=run_dir, progress=False)
    assert summary["resumed_from"] == 128 and summary["num_timesteps"] == 256
    progress = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [p["time/total_timesteps"] for p in progress if "time/total_timesteps" in p] == [64, 128, 192, 256]
    acc = EventAccumulator(str(run_dir))  # TensorBoard's view of the folder: the re-logged steps replace the old
    acc.Reload()
    assert [e.step for e in acc.Scalars("rollout/ep_rew_mean")] == [64, 128, 192, 256]


def test_the_policy_never_repeats_a_trial_while_untried_ones_remain(policy_run, tmp_path_factory):
    from rlhpo.agents.base import run_tuner

    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    tuner = PPOTuner.load(policy_run)
    # 8 one-epoch trials fit the budget and the tiny space has 8 configs at each fidelity.
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=8)
    for seed in range(3):
        result = run_tuner(tuner, env, seed, task=helpers.DIGITS.key())
        trials = [(t.answered_config.key(), t.epochs) for t in result.trials]
        assert len(trials) == len(set(trials)), trials


def test_most_likely_first_yields_every_action_in_decreasing_probability():
    rng = np.random.default_rng(0)
    log_probs = [np.log(rng.dirichlet(np.ones(n))) for n in (3, 1, 4, 2)]
    actions = [tuple(a) for a in most_likely_first(log_probs)]
    joint = [sum(lp[i] for lp, i in zip(log_probs, a)) for a in actions]
    assert sorted(actions) == list(itertools.product(range(3), range(1), range(4), range(2)))
    assert joint == sorted(joint, reverse=True)


def test_imitation_fits_the_value_to_each_steps_discounted_return_to_its_episodes_end():
    from rlhpo.agents.portfolio import discounted_returns

    rewards = np.array([[1.0, 0.0], [2.0, 1.0], [4.0, 1.0]])  # (steps, envs)
    dones = np.array([[False, True], [True, False], [False, False]])
    returns, complete = discounted_returns(rewards, dones, gamma=0.5)
    assert np.allclose(returns[:, 0], [1 + 0.5 * 2, 2, 4])  # env 0: an episode of two steps, then one running
    assert np.allclose(returns[:, 1], [0, 1 + 0.5 * 1, 1])  # env 1: one step, then one running
    assert complete.tolist() == [[True, True], [True, False], [False, False]]


def test_the_shipped_policy_spends_its_budget_on_new_trials():
    # A peaked policy asks for its favourite config again and again; each repeat must become new.
    from rlhpo.agents.base import run_tuner

    tuner = PPOTuner.load()
    env = HPOEnv("recorded", space=tuner.policy_space)  # the shipped meta-dataset, in the policy's own space
    for task in env.backend.default_tasks():
        result = run_tuner(tuner, env, 10_000, task=task.key())
        seen: dict[tuple, int] = {}
        for t in result.trials:
            assert seen.get(t.config.key(), 0) < t.epochs, (task.key(), t.config)
            seen[t.config.key()] = t.epochs


@pytest.mark.needs_data  # the tiny store records trec
def test_a_policy_without_meta_features_cannot_tell_tasks_apart(tmp_path_factory, tmp_path):
    settings = helpers.tiny_settings(tmp_path_factory, meta_features=False, total_steps=128)
    summary = train_agent(settings, run_name="blind", runs_dir=tmp_path, progress=False)
    tuner = PPOTuner.load(summary["run_dir"])
    assert tuner.info.meta_features is False
    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    env = HPOEnv("recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=6)
    firsts = []
    for task in (helpers.DIGITS.key(), helpers.TREC.key()):
        obs, _ = env.reset(seed=0, options={"task": task})
        tuner.start(env, 0)
        firsts.append(tuple(tuner.propose(obs)))
    assert obs[:3].any()  # the env does show meta-features; the tuner hides them
    assert firsts[0] == firsts[1]
    with pytest.raises(RlhpoError, match="meta_features must be true or false"):
        helpers.tiny_settings(tmp_path_factory, meta_features="no")


@pytest.mark.needs_data  # the tiny store records trec
def test_meta_training_on_config_subsets_is_seeded(tmp_path_factory, tmp_path):
    settings = helpers.tiny_settings(tmp_path_factory, config_fraction=0.5, total_steps=128)
    runs = [train_agent(settings, run_name=f"subset{i}", runs_dir=tmp_path, progress=False) for i in range(2)]
    a, b = (policy_params(Path(r["policy"])) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.needs_data  # the tiny store records trec
def test_a_policy_that_searches_tunes_at_every_budget_without_repeats(tmp_path_factory, tmp_path):
    """history + drawn budgets + a seeded first trial: one policy for 1 to 30 FTE, never a repeat or overspend."""
    from rlhpo.agents.base import run_tuner

    settings = helpers.tiny_settings(tmp_path_factory, history=3, budget_fte_range=(1.0, 30.0), first_trial_top=4)
    summary = train_agent(settings, run_name="searcher", runs_dir=tmp_path, argv=["test"], progress=False)
    tuner = PPOTuner.load(summary["policy"])
    assert (tuner.info.history, tuner.info.first_trial_top) == (3, 4)
    space = load_search_space(helpers.tiny_space_path(tmp_path_factory))
    firsts = set()
    for fte in (1, 3, 10, 30):
        env = HPOEnv(
            "recorded", helpers.tiny_store(tmp_path_factory), space=space, budget_epochs=fte * space.max_epochs
        )
        for seed in range(4):
            result = run_tuner(tuner, env, seed, task=helpers.DIGITS.key())
            trials = [(t.answered_config.key(), t.epochs) for t in result.trials]
            if fte <= 3:  # the tiny space has 8 configs: larger budgets run out of new trials
                assert len(trials) == len(set(trials)), trials
            assert result.epochs_used <= env.budget_epochs
            firsts.add(result.trials[0].config.key())
            again = run_tuner(tuner, env, seed, task=helpers.DIGITS.key())
            assert [t.config for t in again.trials] == [t.config for t in result.trials]  # the seed decides
    assert len(firsts) > 1  # seeds open differently
