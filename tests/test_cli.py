"""The command line, through click's CliRunner: what a user types and sees."""

import json
import subprocess
import sys

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
    assert set(lines) == {"mnist", "cifar10", "imdb", "ag_news", "trec", "trec_fine", "digits"}
    assert all(" yes " in line for line in lines.values())
    assert "bundled" in lines["digits"] and str(data_dir) in lines["trec"]
    assert str(data_dir / "trec") in lines["trec_fine"]


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
    assert summary["task"] == "trec" and summary["model"] == "bow" and summary["config"]["units"] == 32
    assert [e["epoch"] for e in summary["curve"]] == [1, 2]
    assert summary["config"]["epochs"] == 2  # the config reported is the one trained
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


def test_tasks_says_how_to_make_an_unavailable_dataset_available(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("tasks", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert " no " in result.output and "--data-dir" in result.output  # the hint, once
    assert " yes " in result.output.splitlines()[[r.split()[0] for r in result.output.splitlines()].index("digits")]


def test_train_prints_the_config_it_trained_and_what_to_run_next(run):
    result = run("train", "--task", "digits", "--n-train", "200", "--epochs", "2", "--set", "units=32")
    assert result.exit_code == 0, result.output
    assert "ep=2" in result.stdout and "ep=9" not in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("next: tensorboard --logdir")
    assert result.stderr.count("epoch ") == 2  # progress, one line per epoch


@pytest.mark.parametrize("option", [("--device", "cuda"), ("--device", "npu"), ("--set", "family=cnn")])
def test_bad_input_to_train_leaves_no_run_folder(run, tmp_path, option):
    result = run("train", "--task", "digits", "--n-train", "200", *option)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_train_writes_tensorboard_without_importing_stable_baselines3(tmp_path):
    code = (
        "import sys; from rlhpo.cli import main; "
        "main(['train', '--task', 'digits', '--n-train', '200', '--epochs', '1', '--runs-dir', sys.argv[1]], "
        "standalone_mode=False); print('stable_baselines3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"
    assert list(tmp_path.glob("*/events.out.tfevents.*"))
