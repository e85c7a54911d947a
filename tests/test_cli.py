"""The command line, through click's CliRunner: what a user types and sees."""

import json

import helpers
import pytest
from click.testing import CliRunner

from rlhpo.cli import main
from rlhpo.errors import RlhpoError


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [*args], env={"RLHPO_RUNS_DIR": str(tmp_path / "runs")}, catch_exceptions=True)

    return invoke


def test_tasks_lists_every_builtin_with_its_availability(run, data_dir):
    result = run("tasks", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(lines) == {"mnist", "cifar10", "imdb", "ag_news", "trec", "digits"}
    assert all(" yes " in line for line in lines.values())
    assert "bundled" in lines["digits"] and str(data_dir) in lines["trec"]


def test_train_json_writes_summary_and_run_folder(run, tmp_path, data_dir):
    result = run(
        "train",
        "--task",
        "trec",
        "--n-train",
        "300",
        "--epochs",
        "2",
        "--set",
        "units=32",
        "--set",
        "num_layers=1",
        "--data-dir",
        str(data_dir),
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary.keys() >= helpers.TRAIN_JSON_KEYS
    assert summary["task"] == "trec" and summary["model"] == "gru" and summary["config"]["units"] == 32
    assert [e["epoch"] for e in summary["curve"]] == [1, 2]
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["diverged"] is False
    run_dir = tmp_path / "runs" / summary["run_dir"].split("/")[-1]
    assert run_dir.name.endswith("__train__trec__s0")
    files = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "command.txt", "summary.json"} <= files
    assert any(name.startswith("events.out.tfevents") for name in files)
    assert json.loads((run_dir / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_train_shows_progress_per_epoch(run):
    result = run("train", "--task", "digits", "--epochs", "2", "--set", "units=32")
    assert result.exit_code == 0, result.output
    assert "epoch   1" in result.stderr and "epoch   2" in result.stderr
    assert "test accuracy" in result.stdout


def test_unknown_task_says_did_you_mean(run):
    result = run("train", "--task", "ag_new")
    assert result.exit_code != 0
    assert "Did you mean 'ag_news'" in result.output and "Traceback" not in result.output


def test_bad_set_names_the_valid_choices(run):
    result = run("train", "--set", "optimizer=lamb")
    assert result.exit_code != 0
    assert "optimizer=lamb is not one of the choices ['sgd', 'adam', 'adamw', 'rmsprop']" in result.output
    result = run("train", "--set", "learning_rate")
    assert result.exit_code != 0 and "name=value" in result.output


def test_dataset_missing_offline_says_the_three_ways(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("train", "--task", "mnist", "--data-dir", str(empty))
    assert result.exit_code != 0 and "Traceback" not in result.output
    text = result.output.lower()
    assert "data-dir" in text and "hub" in text and "folder" in text


def test_wrong_label_column_lists_the_columns(run, tmp_path, data_dir):
    import pandas as pd

    folder = tmp_path / "questions"
    folder.mkdir()
    df = pd.read_parquet(data_dir / "trec" / "train.parquet").head(120)
    df.rename(columns={"text": "question", "coarse_label": "kind"})[["question", "kind"]].to_csv(
        folder / "train.csv", index=False
    )
    result = run("train", "--task", str(folder), "--text-column", "question", "--label-column", "klass")
    assert result.exit_code != 0
    assert "question" in result.output and "kind" in result.output
    result = run(
        "train", "--task", str(folder), "--text-column", "question", "--label-column", "kind", "--epochs", "1", "--json"
    )
    assert result.exit_code == 0, result.output


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "train", "--task", "nope"])
    assert isinstance(result.exception, RlhpoError)
