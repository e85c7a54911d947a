"""``rlhpo replay``: tables, aggregates, plots and re-execution of recorded rollouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import helpers
import pytest
from click.testing import CliRunner
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents import replay
from rlhpo.agents.tune import tune
from rlhpo.cli import main
from rlhpo.envs.recorder import numeric_environment
from rlhpo.errors import RlhpoError


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory, data_dir) -> Path:
    """A train-agent run: its rollouts are the policy's evaluation episodes on the recorded backend."""
    return helpers.tiny_policy_run(tmp_path_factory)


@pytest.fixture(scope="module")
def tune_run(agent_run, tmp_path_factory) -> Path:
    """A tune run: one live episode on a tiny digits task."""
    runs = tmp_path_factory.mktemp("tune_runs")
    return Path(tune(helpers.DIGITS, budget_fte=2.0, policy=agent_run, runs_dir=runs)["run_dir"])


def cli(*args: str):
    return CliRunner().invoke(main, [*args])


def test_replay_shows_a_table_per_episode_and_the_choices(agent_run):
    result = cli("replay", str(agent_run))
    assert result.exit_code == 0, result.output
    rollouts = replay.read_rollouts(agent_run)
    assert len(rollouts.episodes) == 6  # 3 tasks x 2 evaluation seeds
    for ep in rollouts.episodes:
        assert f"episode {ep.index}  task {ep.task}  seed {ep.seed}" in result.output
    assert {ep.seed for ep in rollouts.episodes} == {10_000, 10_001}
    first = replay.episode_rows(rollouts.episodes[0])[0]
    assert first["config"] in result.output and first["step"] == 1
    counts = replay.choice_counts(rollouts)
    assert set(counts["optimizer"]) == {"tabular/mlp", "text/gru"}
    trials = sum(len(ep.steps) for ep in rollouts.episodes)
    assert sum(sum(c.values()) for c in counts["learning_rate"].values()) == trials
    assert "learning_rate  tabular/mlp" in result.output


def test_replay_one_episode_and_plot(agent_run, tmp_path):
    out = tmp_path / "plot.png"
    result = cli("replay", str(agent_run), "--episode", "1", "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert "episode 1 " in result.output and "episode 0 " not in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_confirms_recorded_episodes(agent_run):
    result = cli("replay", str(agent_run), "--verify")
    assert result.exit_code == 0, result.output
    n_steps = sum(len(ep.steps) for ep in replay.read_rollouts(agent_run).episodes)
    assert f"verified {n_steps} steps of 6 episodes: all match" in result.output


def test_verify_confirms_a_live_episode_by_training_again(tune_run):
    checks = replay.verify(replay.read_rollouts(tune_run))
    assert checks and all(c.ok for c in checks)
    result = cli("replay", str(tune_run), "--episode", "0", "--verify")
    assert result.exit_code == 0 and "all match" in result.output


def test_verify_reports_a_step_that_differs(agent_run, tmp_path):
    tampered = tmp_path / "run"
    shutil.copytree(agent_run, tampered)
    path = tampered / "rollouts.jsonl"
    lines = path.read_text().splitlines()
    step = json.loads(lines[2])
    step["curve"]["score"] += 0.01
    lines[2] = json.dumps(step)
    path.write_text("\n".join(lines) + "\n")
    result = cli("replay", str(tampered), "--episode", str(step["episode"]), "--verify")
    assert result.exit_code == 1
    assert f"verify episode {step['episode']} step {step['step']}: MISMATCH score: recorded" in result.output
    assert "1 differ" in result.output


def test_verify_names_another_numeric_environment_when_a_live_step_differs(tune_run, tmp_path):
    header, *steps = (json.loads(x) for x in (tune_run / "rollouts.jsonl").read_text().splitlines())
    assert header["header"]["environment"] == numeric_environment()
    steps[0]["curve"]["score"] += 0.01
    for environment, note in [
        ({**numeric_environment(), "torch": "1.0"}, "note: recorded in another numeric environment (torch '1.0' then"),
        (numeric_environment(), "so the difference is not float rounding across machines"),
        (None, "the rollouts do not say which torch"),
    ]:
        run = tmp_path / f"run-{len(note)}"
        shutil.copytree(tune_run, run)
        header["header"]["environment"] = environment
        (run / "rollouts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [header, *steps]))
        result = cli("replay", str(run), "--episode", "0", "--verify")
        assert result.exit_code == 1 and "1 differ" in result.output
        assert note in result.output.splitlines()[-1]  # the note closes the report


def test_verify_confirms_a_run_made_before_the_reward_charged_compute_and_distance(agent_run, tmp_path):
    old = tmp_path / "run"
    shutil.copytree(agent_run, old)
    path = old / "rollouts.jsonl"
    header, *steps = (json.loads(x) for x in path.read_text().splitlines())
    weights = header["header"]["reward"]
    cost, penalty = weights.pop("compute_cost"), weights.pop("distance_penalty")
    for step in steps:  # the rewards such a run recorded: no compute or distance term
        step["reward"] += cost * step["curve"]["compute_fte"] + penalty * step["distance"]
    path.write_text("".join(json.dumps(x) + "\n" for x in [header, *steps]))
    checks = replay.verify(replay.read_rollouts(old))
    assert checks and all(c.ok for c in checks)


def test_replay_errors_are_clear(agent_run, tmp_path):
    result = cli("replay", str(tmp_path))
    assert result.exit_code != 0 and "has no rollouts.jsonl" in result.output and "Traceback" not in result.output
    result = cli("replay", str(tmp_path / "missing"))
    assert result.exit_code != 0 and "does not exist" in result.output
    result = cli("replay", str(agent_run), "--episode", "99")
    assert result.exit_code != 0 and "has no episode 99" in result.output
    (tmp_path / "rollouts.jsonl").write_text(json.dumps({"header": {"backend": "recorded"}}) + "\n")
    result = cli("replay", str(tmp_path), "--verify")
    assert result.exit_code == 1 and "nothing to verify" in result.output and "all match" not in result.output
    (tmp_path / "rollouts.jsonl").write_text('{"header": {}}\n{not json\n')
    with pytest.raises(RlhpoError, match="line 2 is not JSON"):
        replay.read_rollouts(tmp_path)
