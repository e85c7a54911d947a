"""``rlhpo tune``: one live episode with the policy, the final training, and everything it reports."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from click.testing import CliRunner
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents import policy as policy_module
from rlhpo.agents.tune import tune
from rlhpo.cli import main
from rlhpo.errors import RlhpoError
from rlhpo.settings import SHIPPED_SPACE, shipped_file
from rlhpo.tasks.task import Task

TUNE_KEYS = {
    "trials",
    "tuning_epochs",
    "tuning_seconds",
    "policy_seconds",
    "budget_epochs",
    "retrain_seconds",
    "reused_trial",
    "refit",
    "train_examples",
    "status",
}


@pytest.fixture(scope="module")
def policy(tmp_path_factory, data_dir) -> Path:
    return helpers.tiny_policy_run(tmp_path_factory) / "policy.zip"


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [*args], env={"RLHPO_RUNS_DIR": str(tmp_path / "runs")})

    return invoke


def test_tune_reports_the_metrics_and_the_overheads(run, policy, tmp_path):
    result = run("tune", "--task", "digits", "--n-train", "200", "--budget", "2", "--policy", str(policy), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= helpers.TRAIN_JSON_KEYS | TUNE_KEYS
    assert summary["task"] == "digits" and summary["model"] == "mlp" and summary["budget_epochs"] == 6
    assert 0 < summary["tuning_epochs"] <= 6
    assert summary["tuning_epochs"] == sum(t["paid_epochs"] for t in summary["trials"])
    assert 0 <= summary["policy_seconds"] < summary["tuning_seconds"] < summary["seconds"]
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and 0.0 <= summary["test_macro_f1"] <= 1.0
    assert summary["config"]["epochs"] == 3 and len(summary["curve"]) == 3  # retrained at full fidelity
    kept = summary["trials"][summary["kept_trial"] - 1]
    assert kept["step"] == summary["kept_trial"] and kept["score"] == summary["kept_score"]
    assert {k: v for k, v in summary["config"].items() if k != "epochs"} == {
        k: v for k, v in kept["config"].items() if k != "epochs"
    }
    for trial in summary["trials"]:
        assert {"config", "epochs", "val_accuracy", "seconds", "score", "incumbent"} <= set(trial)
        assert f"trial {trial['step']:>2}" in result.stderr  # each trial shown as it finishes

    run_dir = Path(summary["run_dir"])
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "command.txt", "rollouts.jsonl", "summary.json", "store.sqlite"} <= names
    lines = (run_dir / "rollouts.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["header"]["backend"] == "live" and len(lines) == 1 + len(summary["trials"])
    assert json.loads((run_dir / "summary.json").read_text()) == summary

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"trials/val/accuracy", "trials/train/loss", "hpo/incumbent_score", "final/val/accuracy"} <= tags
    steps = [e.step for e in acc.Scalars("trials/val/accuracy")]
    assert steps == list(range(1, summary["tuning_epochs"] + 1))  # one point per epoch spent


def test_tune_prints_a_readable_report(run, policy):
    result = run("tune", "--task", "digits", "--n-train", "200", "--budget", "1", "--policy", str(policy))
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout and "chosen config lr=" in result.stdout
    assert "tuning 3/3 epochs" in result.stdout and "policy" in result.stdout
    assert "chance is 0" in result.stderr  # the score is explained once, before the trials
    assert ": trial " in result.stdout and " epochs (score " in result.stdout  # the kept trial and its epochs
    assert result.stdout.strip().splitlines()[-1].startswith("next: rlhpo replay")


def test_tune_works_on_a_user_folder_with_column_options(policy, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHPO_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=240)
    x = rng.normal(size=(240, 4)) + y[:, None]
    folder = tmp_path / "measurements"
    folder.mkdir()
    columns = {f"f{i}": x[:, i] for i in range(4)}
    pa_csv.write_csv(pa.table({**columns, "stars": y}), folder / "train.csv")
    summary = tune(
        Task(str(folder), label_column="stars"),
        budget_fte=1.0,
        policy=policy,
        runs_dir=tmp_path / "runs",
    )
    assert summary["model"] == "mlp" and summary["source"].startswith("local:")
    assert summary["test_accuracy"] > 0.5  # three well-separated classes


def test_a_missing_or_corrupt_policy_is_a_clear_error(run, tmp_path, monkeypatch):
    result = run("tune", "--policy", str(tmp_path / "nowhere.zip"))
    assert result.exit_code != 0 and "Policy file" in result.output and "does not exist" in result.output
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"this is not a zip file")
    result = run("tune", "--policy", str(corrupt))
    assert result.exit_code != 0 and "could not be read as a stable-baselines3 PPO policy" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr(policy_module, "shipped_file", lambda name: tmp_path / "assets" / "policy.zip")
    result = run("tune")
    assert result.exit_code != 0 and "shipped policy" in result.output and "rlhpo train-agent" in result.output
    assert not (tmp_path / "runs").exists()  # nothing started


def test_an_unknown_task_is_a_clear_error_and_starts_no_run(run, policy, tmp_path):
    result = run("tune", "--task", "mnsit", "--policy", str(policy))
    assert result.exit_code != 0 and "Did you mean 'mnist'" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_space_the_policy_was_not_trained_in_is_refused(policy, tmp_path):
    with pytest.raises(RlhpoError, match="choices per hyperparameter, but the policy was trained"):
        tune(helpers.DIGITS, policy=policy, space=shipped_file(SHIPPED_SPACE), runs_dir=tmp_path)
    with pytest.raises(RlhpoError, match="less than the smallest trial"):
        tune(helpers.DIGITS, policy=policy, budget_fte=0.1, runs_dir=tmp_path)


def _trials(summary: dict) -> list[tuple]:
    return [(t["config"], t["epochs"], t["paid_epochs"], t["score"], t["incumbent"]) for t in summary["trials"]]


def test_ctrl_c_leaves_an_interrupted_run_that_resume_finishes_as_if_never_stopped(run, policy, tmp_path, monkeypatch):
    args = ["tune", "--task", "digits", "--n-train", "200", "--budget", "2", "--policy", str(policy)]
    whole = run(*args, "--json")
    assert whole.exit_code == 0, whole.output
    want = json.loads(whole.stdout.strip().splitlines()[-1])
    assert len(want["trials"]) >= 2

    helpers.interrupt_tune_at(monkeypatch, 2)
    stopped = run(*args, "--runs-dir", str(tmp_path / "stopped"))
    assert stopped.exit_code == 130, stopped.output
    run_dir = next((tmp_path / "stopped").iterdir())
    assert f"run folder {run_dir}" in stopped.stderr and f"rlhpo tune --resume {run_dir}" in stopped.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    monkeypatch.undo()  # no more Ctrl-C
    resumed = run("tune", "--resume", str(run_dir), "--json")
    assert resumed.exit_code == 0, resumed.output
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert got["status"] == "complete" and got["run_dir"] == str(run_dir)
    assert _trials(got) == _trials(want)
    for key in ("config", "test_accuracy", "test_macro_f1", "val_loss", "incumbent_score", "tuning_epochs"):
        assert got[key] == want[key], key
    assert len((run_dir / "rollouts.jsonl").read_text().splitlines()) == 1 + len(want["trials"])
    again = run("tune", "--resume", str(run_dir))
    assert again.exit_code != 0 and "complete; there is nothing to resume" in again.output


@pytest.mark.parametrize("device", ["cuda:7", "tpu"])
def test_a_bad_device_fails_before_a_run_folder_exists(run, policy, tmp_path, device):
    result = run("tune", "--policy", str(policy), "--device", device)
    assert result.exit_code == 1 and "device" in result.output.lower() and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_the_final_training_reuses_a_full_fidelity_best_trial(policy, tmp_path):
    summary = tune(helpers.DIGITS, policy=policy, budget_fte=2.0, runs_dir=tmp_path, refit=False)
    assert summary["refit"] is False and summary["train_examples"] == helpers.DIGITS.n_train
    full = summary["kept_epochs"] == summary["config"]["epochs"]
    assert summary["reused_trial"] == full  # the kept trial ran at full fidelity: its model was tested
    kept = summary["trials"][summary["kept_trial"] - 1]
    if full:
        assert summary["curve"][-1]["val_accuracy"] == kept["val_accuracy"]


def test_the_final_training_refits_on_the_training_and_validation_splits(policy, tmp_path):
    from rlhpo.tasks import load_task

    data = load_task(helpers.DIGITS)
    whole = data.with_validation_trained()
    assert len(whole.y_train) == len(data.y_train) + len(data.y_val) and whole.y_val.equal(data.y_val)
    assert whole.x_train[len(data.y_train) :].equal(data.x_val)

    summary = tune(helpers.DIGITS, policy=policy, budget_fte=2.0, runs_dir=tmp_path)  # refit is the default
    assert summary["refit"] is True and summary["reused_trial"] is False
    assert summary["train_examples"] == len(data.y_train) + len(data.y_val)
    assert len(summary["curve"]) == summary["config"]["epochs"]
    kept = summary["trials"][summary["kept_trial"] - 1]
    assert (summary["val_accuracy"], summary["val_loss"]) == (kept["val_accuracy"], kept["val_loss"])
    assert summary["test_accuracy"] is not None


def _trial(step: int, val: float | None, epochs: int = 9, diverged: bool = False) -> dict:
    score = -1.0 if val is None else 2 * val - 1  # two classes
    return {"step": step, "val_accuracy": val, "score": score, "epochs": epochs, "diverged": diverged}


def test_tune_keeps_the_earliest_trial_within_one_standard_error_of_the_best_of_the_longest():
    from rlhpo.agents.tune import kept_trial

    # 1,000 validation examples at 0.886: one standard error is 0.0100.
    trials = [_trial(1, 0.885), _trial(2, 0.886), _trial(3, 0.870)]
    assert kept_trial(trials, n_val=1000)["step"] == 1
    assert kept_trial(trials, n_val=1_000_000)["step"] == 2  # a margin of 0.0003: the best trial wins
    # Clearly better (by more than one standard error): the later trial is kept.
    assert kept_trial([_trial(1, 0.860), _trial(2, 0.886)], n_val=1000)["step"] == 2
    # Only the longest-trained trials compete, even against a better short one, and never a diverged one.
    mixed = [_trial(1, 0.950, epochs=1), _trial(2, 0.884, diverged=True), _trial(3, 0.886), _trial(4, 0.850)]
    assert kept_trial(mixed, n_val=1000)["step"] == 3
    assert kept_trial([_trial(1, None), _trial(2, 0.5, epochs=3)], n_val=1000)["step"] == 2
    # Every trial diverged: the incumbent (the best score, the first of equal ones).
    assert kept_trial([_trial(1, 0.6, diverged=True), _trial(2, 0.7, diverged=True)], n_val=1000)["step"] == 2
