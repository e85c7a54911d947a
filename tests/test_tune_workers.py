"""``rlhpo tune --workers N``: rounds of the policy's N most likely new configs, trained at once.

Rounds of one play the sequential tune's trials; rounds of two never repeat a trial, never
overspend the budget, end the same every time, and resume after a Ctrl-C as a sequential tune does.
"""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
from click.testing import CliRunner
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents.base import run_tuner
from rlhpo.agents.policy import PPOTuner
from rlhpo.agents.tune_batches import plan_round, run_rounds
from rlhpo.cli import main
from rlhpo.collect import InlineExecutor
from rlhpo.envs.backends import LiveBackend
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.space import load_search_space

BUDGET_FTE = 4.0  # 12 epochs of the tiny space (epochs 1 or 3): several rounds, continued trials


@pytest.fixture(scope="module")
def policy(tmp_path_factory, data_dir) -> PPOTuner:
    return PPOTuner.load(helpers.tiny_policy_run(tmp_path_factory) / "policy.zip")


def _env(policy: PPOTuner, budget_epochs: int | None = None) -> HPOEnv:
    space = policy.policy_space or load_search_space()
    backend = LiveBackend(None, space, train_seed=0)  # a store in memory
    budget = budget_epochs or space.budget_epochs(BUDGET_FTE)
    return HPOEnv(backend, space=space, budget_epochs=budget, train_seed=0)


def _trials(steps) -> list[tuple]:
    return [(s.config.key(), s.epochs, s.paid_epochs, s.score, s.incumbent) for s in steps]


def test_rounds_of_one_play_the_trials_of_the_sequential_tune(policy):
    sequential = run_tuner(policy, _env(policy), 0, task=helpers.DIGITS)
    rounds = run_rounds(policy, _env(policy), 0, helpers.DIGITS, InlineExecutor(), workers=1)
    assert len(sequential.trials) >= 3
    assert _trials(rounds.trials) == _trials(sequential.trials)
    assert (rounds.incumbent_config, rounds.epochs_used) == (sequential.incumbent_config, sequential.epochs_used)


def test_a_round_takes_the_most_likely_new_configs_and_no_more_than_the_budget_pays_for(policy):
    env = _env(policy, budget_epochs=3)
    obs, _ = env.reset(seed=0, options={"task": helpers.DIGITS})
    policy.start(env, 0)
    planned = plan_round(policy, env, obs, 4, [])
    assert planned[0].action.tolist() == policy.propose(obs).tolist()  # the sequential tune's pick comes first
    assert len({p.config.key() for p in planned}) == len(planned) < 4  # 3 epochs pay for 3 trials at most
    assert sum(p.paid_epochs for p in planned) == 3  # and the round spends them all
    for p in planned:
        _, _, terminated, _, info = env.step(p.action)
        assert (info["result"].epochs, info["result"].paid_epochs) == (p.epochs, p.paid_epochs)
    assert terminated and env.budget_remaining == 0


def test_tune_with_two_workers_never_repeats_keeps_the_budget_ends_alike_and_resumes(policy, tmp_path, monkeypatch):
    runner = CliRunner()
    args = ["tune", "--task", "digits", "--n-train", "200", "--budget", str(BUDGET_FTE), "--policy", str(policy.path)]
    args += ["--workers", "2", "--no-refit"]  # the kept trial's model is then reused when it can be

    def tune(*extra: str):
        out = runner.invoke(main, [*args, *extra], env={"RLHPO_RUNS_DIR": str(tmp_path / "runs")})
        return out

    whole = tune("--json")
    assert whole.exit_code == 0, whole.output
    want = json.loads(whole.stdout.strip().splitlines()[-1])
    trials = want["trials"]
    assert want["workers"] == 2 and len(trials) >= 4
    assert want["tuning_epochs"] == sum(t["paid_epochs"] for t in trials) <= want["budget_epochs"] == 12
    # The kept trial's model came back from its worker when it trained at full fidelity: tested, not trained again.
    assert want["reused_trial"] == (want["kept_epochs"] == want["config"]["epochs"])
    known: dict[str, int] = {}
    for t in trials:  # each trial tells something new: a new config, or one trained further
        key = json.dumps({k: v for k, v in t["config"].items() if k != "epochs"}, sort_keys=True)
        assert t["epochs"] > known.get(key, 0), t
        known[key] = t["epochs"]

    helpers.interrupt_tune_at(monkeypatch, 3)  # Ctrl-C as the second round's first trial is reported
    stopped = tune("--runs-dir", str(tmp_path / "stopped"))
    assert stopped.exit_code == 130, stopped.output
    run_dir = next((tmp_path / "stopped").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    resumed = runner.invoke(main, ["tune", "--resume", str(run_dir), "--json"])
    assert resumed.exit_code == 0, resumed.output
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert got["workers"] == 2  # the resumed tune plays the same rounds
    same = ("config", "epochs", "paid_epochs", "score", "incumbent", "budget_used")
    assert [{k: t[k] for k in same} for t in got["trials"]] == [{k: t[k] for k in same} for t in trials]
    for key in ("config", "test_accuracy", "test_macro_f1", "incumbent_score", "tuning_epochs"):
        assert got[key] == want[key], key
    assert len((Path(run_dir) / "rollouts.jsonl").read_text().splitlines()) == 1 + len(trials)


def test_workers_train_on_cpu_and_an_address_needs_ray(policy, tmp_path):
    runner = CliRunner()
    base = ["tune", "--task", "digits", "--n-train", "200", "--policy", str(policy.path), "--workers", "2"]
    env = {"RLHPO_RUNS_DIR": str(tmp_path / "runs")}
    out = runner.invoke(main, [*base, "--device", "cuda"], env=env)
    assert out.exit_code == 1 and "Trials on workers train on CPU" in out.output
    out = runner.invoke(main, [*base, "--address", "auto"], env=env)
    assert out.exit_code == 1 and "--address is for --executor ray" in out.output
    assert not (tmp_path / "runs").exists()
