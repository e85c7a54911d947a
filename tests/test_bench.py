"""``rlhpo bench``: its outputs, the regret it computes, resuming, the live backend, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import helpers
import pytest
from click.testing import CliRunner
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents.bench import COLUMNS, BenchSettings, read_csv, run_bench
from rlhpo.agents.evaluate import FullFidelity, RecordedJudge
from rlhpo.cli import main
from rlhpo.errors import RlhpoError
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore, store_rows

FULL_FIDELITY_ONLY = ("default", "tpe", "learned_list")  # every trial at the largest epochs choice
# Wall-clock (train_seconds too on the live backend, where it is measured): the only columns two runs differ in.
SECONDS = ("tuning_seconds", "policy_seconds", "train_seconds")


def rows_but_seconds(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in SECONDS} for r in read_csv(out / "bench.csv")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    return {
        "store": str(helpers.tiny_store(tmp_path_factory)),
        "policy": str(helpers.tiny_policy_run(tmp_path_factory)),
        "space": str(helpers.tiny_space_path(tmp_path_factory)),
    }


@pytest.fixture(scope="module")
def bench(tiny, tmp_path_factory):
    """Every method on held-out trec, 2 seeds, budgets 1 and 4 FTE (3 and 12 epochs)."""
    settings = BenchSettings(tasks=("trec",), budgets=(1.0, 4.0), seeds=2, **tiny)
    out = tmp_path_factory.mktemp("bench")
    return settings, out, run_bench(settings, out, argv=["test"])


def test_bench_writes_the_csv_the_table_and_the_plot(bench):
    settings, out, summary = bench
    with (out / "bench.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert {"task", "method", "seed", "budget_fte", "regret"} <= set(COLUMNS)
    n = len(settings.methods) * 2 * 2  # every method, 2 seeds, 2 budgets
    assert len(rows) == n and summary["episodes"] == n
    assert {r["method"] for r in rows} == set(settings.methods) and {r["budget_fte"] for r in rows} == {"1.0", "4.0"}
    assert all(r["heldout"] == "True" and r["regret"] != "" for r in rows)  # the tiny policy never saw trec
    table = (out / "bench.md").read_text()
    for needle in ("regret @ 1", "regret @ 4", "area", "final regret", "mean rank", "speedup", "bench.png"):
        assert needle in table
    for method in settings.methods:
        assert f"| {method} |" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    anytime = read_csv(out / "anytime.csv")
    assert {p["method"] for p in anytime} == set(settings.methods)
    assert json.loads((out / "summary.json").read_text())["report"]["methods"].keys() == set(settings.methods)


def test_regret_is_never_negative_and_full_fidelity_methods_improve_with_budget(bench):
    _, out, summary = bench
    rows = read_csv(out / "bench.csv")
    assert all(r["regret"] >= 0 for r in rows)
    for r in rows:
        assert r["epochs_used"] <= r["budget_epochs"] == round(r["budget_fte"] * 3)
        assert r["train_seconds"] > 0  # the recorded seconds of the epochs the episode paid for
    # A method that trains only at full fidelity picks by the very score regret is measured on,
    # and with one seed a larger budget only adds trials: its regret cannot rise with budget.
    for method in FULL_FIDELITY_ONLY:
        for seed in (10000, 10001):
            mine = [r for r in rows if r["method"] == method and r["seed"] == seed]
            mine.sort(key=lambda r: r["budget_fte"])
            assert [r["regret"] for r in mine] == sorted((r["regret"] for r in mine), reverse=True)
        points = [p for p in read_csv(out / "anytime.csv") if p["method"] == method]
        for seed in (10000, 10001):
            curve = [p["regret"] for p in points if p["seed"] == seed]
            assert curve == sorted(curve, reverse=True)
    # The speedup is measured against the policy's regret at the reference budget.
    assert summary["report"]["methods"]["ppo"]["speedup"] is None
    assert all("speedup" in e for e in summary["report"]["methods"].values())


def test_seconds_to_reach_interpolates_log_seconds_between_budgets():
    from rlhpo.agents.bench_report import seconds_to_reach

    points = [(10.0, 0.3), (100.0, 0.1), (1000.0, 0.05)]  # (mean seconds, mean regret) at each budget
    seconds, exact = seconds_to_reach(points, 0.2)
    assert exact and seconds == pytest.approx(math.sqrt(10.0 * 100.0))  # halfway in regret: the geometric mean
    assert seconds_to_reach(points, 0.05) == (pytest.approx(1000.0), True)
    assert seconds_to_reach(points, 0.5) == (10.0, False)  # the smallest budget already reaches it: a bound
    assert seconds_to_reach(points, 0.01) == (None, False)  # never reached


def test_the_best_known_config_has_zero_regret(tiny):
    space = load_search_space(tiny["space"])
    task = helpers.TREC
    oracle = FullFidelity(CurveStore(tiny["store"], readonly=True), space, 0)
    judge = RecordedJudge(oracle)
    scores = oracle.scores(task.key())
    best = max(scores, key=scores.get)
    judged = judge.judge(task, oracle.configs[best])
    assert judged["regret"] == 0.0 and judged["full_fidelity_score"] == max(scores.values())
    worst = min(scores, key=scores.get)
    assert judge.judge(task, oracle.configs[worst])["regret"] == pytest.approx(
        max(scores.values()) - min(scores.values())
    )


def test_the_report_says_what_was_not_measured(tiny, tmp_path):
    settings = BenchSettings(tasks=("trec",), methods=("ppo", "random"), budgets=(0.4,), seeds=1, **tiny)
    run_bench(settings, tmp_path)
    table = (tmp_path / "bench.md").read_text()
    assert "± n/a" in table and "± 0.000" not in table  # one seed: the standard error is unknown
    assert "Speedup: not measured (its reference budget, 3 FTE, was not run)" in table
    assert "reach ppo's regret at 3 FTE" not in table


def test_an_interrupted_bench_resumes_where_it_stopped(tiny, tmp_path):
    settings = BenchSettings(tasks=("trec",), methods=("random", "default"), budgets=(1.0, 2.0), seeds=2, **tiny)
    first = run_bench(settings, tmp_path)
    anytime = sorted(map(str, read_csv(tmp_path / "anytime.csv")))
    lines = (tmp_path / "bench.csv").read_text().splitlines()
    (tmp_path / "bench.csv").write_text("\n".join(lines[:3]) + "\n")  # as if killed after two episodes
    ran = []
    second = run_bench(settings, tmp_path, progress=ran.append)
    assert len(ran) == 6 and second["episodes"] == 8
    assert (tmp_path / "bench.csv").read_text().splitlines()[1:3] == lines[1:3]
    assert second["report"]["methods"]["random"]["regret"] == first["report"]["methods"]["random"]["regret"]
    assert sorted(map(str, read_csv(tmp_path / "anytime.csv"))) == anytime  # redone episodes, no duplicates
    with pytest.raises(RlhpoError, match="other settings"):
        run_bench(BenchSettings(tasks=("trec",), methods=("random",), budgets=(1.0,), **tiny), tmp_path)
    with pytest.raises(RlhpoError, match="other settings"):  # another incumbent rule judges other configs
        run_bench(dataclasses.replace(settings, incumbent="top_rung"), tmp_path)
    config = tmp_path / "config.yaml"  # a bench written before the incumbent rule was a setting ran with best
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("incumbent")))
    assert run_bench(settings, tmp_path, progress=ran.append)["episodes"] == 8 and len(ran) == 6


def test_a_bench_csv_from_before_a_new_column_resumes_under_todays_columns(tiny, tmp_path):
    import csv

    settings = BenchSettings(tasks=("trec",), methods=("random",), budgets=(1.0,), seeds=2, **tiny)
    run_bench(settings, tmp_path)
    with (tmp_path / "bench.csv").open(newline="") as f:
        old = [{k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader(f)][:1]
    with (tmp_path / "bench.csv").open("w", newline="") as f:  # one episode, written before train_seconds existed
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    run_bench(settings, tmp_path)
    rows = read_csv(tmp_path / "bench.csv")
    assert (tmp_path / "bench.csv").read_text().splitlines()[0].split(",") == list(COLUMNS)
    assert [r["train_seconds"] is None for r in rows] == [True, False]  # the old row kept, the new one complete


def test_episodes_on_worker_processes_give_the_rows_of_the_sequential_bench_and_resume(bench, tmp_path):
    settings, out, summary = bench
    parallel = dataclasses.replace(settings, workers=2)
    got = run_bench(parallel, tmp_path)
    assert rows_but_seconds(tmp_path) == rows_but_seconds(out)
    assert (tmp_path / "anytime.csv").read_text() == (out / "anytime.csv").read_text()
    assert got["report"] == summary["report"] and got["episodes"] == summary["episodes"]

    lines = (tmp_path / "bench.csv").read_text().splitlines()
    (tmp_path / "bench.csv").write_text("\n".join(lines[:3]) + "\n")  # as if killed after two episodes
    ran = []
    again = run_bench(parallel, tmp_path, progress=ran.append)  # the settings' placement may change too
    assert len(ran) == summary["episodes"] - 2
    assert rows_but_seconds(tmp_path) == rows_but_seconds(out) and again["report"] == summary["report"]


def test_a_live_bench_on_worker_processes_stores_every_curve_and_gives_the_same_rows(tiny, tmp_path):
    settings = BenchSettings(
        tasks=("digits",), methods=("random", "top_k"), budgets=(1.0,), seeds=2, backend="live", n_train=200,
        policy=tiny["policy"], space=tiny["space"],
    )  # fmt: skip
    run_bench(settings, tmp_path / "here")
    run_bench(dataclasses.replace(settings, workers=2), tmp_path / "workers")
    assert rows_but_seconds(tmp_path / "workers") == rows_but_seconds(tmp_path / "here")
    assert min(r["regret"] for r in read_csv(tmp_path / "workers" / "bench.csv")) == 0.0
    # The driver wrote every curve the workers trained: the store is the sequential bench's.
    assert store_rows(tmp_path / "workers" / "store.sqlite") == store_rows(tmp_path / "here" / "store.sqlite")


def test_a_live_bench_retrains_incumbents_and_reports_test_metrics(tiny, tmp_path):
    settings = BenchSettings(
        tasks=("digits",), methods=("default", "random"), budgets=(1.0,), seeds=2, backend="live", n_train=200,
        policy=tiny["policy"], space=tiny["space"],
    )  # fmt: skip
    summary = run_bench(settings, tmp_path)
    rows = read_csv(tmp_path / "bench.csv")
    assert len(rows) == 4 and (tmp_path / "store.sqlite").is_file()
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["test_macro_f1"] <= 1 and r["regret"] >= 0
    assert min(r["regret"] for r in rows) == 0.0  # the best of the bench is the best known
    assert "test accuracy" in (tmp_path / "bench.md").read_text()
    assert summary["report"]["methods"]["default"]["test_accuracy"][1.0][0] > 0.2  # chance is 0.1


def test_bench_on_the_command_line_and_its_errors(tiny, tmp_path):
    runner = CliRunner()
    args = ["bench", "--tasks", "trec", "--methods", "default,tpe", "--budgets", "1,2", "--seeds", "2"]
    args += ["--store", tiny["store"], "--policy", tiny["policy"], "--out", str(tmp_path / "b"), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["episodes"] == 8
    for bad, message in [
        (["--tasks", "treck"], "Did you mean 'trec'"),
        (["--methods", "tpee"], "Unknown method 'tpee'"),
        (["--budgets", "1,x"], "comma-separated budgets"),
        (["--budgets", "0"], "positive numbers"),
    ]:
        result = runner.invoke(main, [*args[:1], *args[9:11], *args[11:13], *bad, "--out", str(tmp_path / "c")])
        assert result.exit_code != 0 and message in result.output, result.output
