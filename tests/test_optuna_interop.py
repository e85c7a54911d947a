"""rlhpo in the Optuna workflow: suggestions enqueued, tune trials written to a study, studies imported.

Everything runs on digits (bundled, no data needed) with the shipped policy, in its own space,
on both kinds of Optuna storage: an SQLite database and a journal file.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import helpers
import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

import rlhpo
from rlhpo.agents.base import run_tuner
from rlhpo.agents.evaluate import FullFidelity
from rlhpo.agents.learned_list import LearnedListTuner
from rlhpo.agents.optuna_interop import (
    ANOTHER_TASK,
    NO_INTERMEDIATE,
    NOT_COMPLETE,
    PPOTPETuner,
    accuracy_of,
    import_study,
    in_order_of,
    make_storage,
    optuna_distributions,
    suggest_to_study,
)
from rlhpo.agents.policy import PolicyInfo, PPOTuner
from rlhpo.agents.tuners import make_tuners
from rlhpo.cli import main
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.errors import RlhpoError
from rlhpo.metrics import normalised_score, normalised_scores
from rlhpo.settings import SHIPPED_SPACE, SHIPPED_STORE, shipped_file
from rlhpo.space import Config, load_search_space
from rlhpo.store import CurveStore
from rlhpo.tasks.task import Task

DIGITS = Task("digits", n_train=200)
DIGITS_ARGS = ("--task", "digits", "--n-train", "200")
IMDB = "imdb/default/n500/call/s1019925346/L64"  # the shipped policy plays it otherwise at 3 FTE than at 10
TABULAR = "tabular"  # digits' modality: its families, where the space searches the family


@pytest.fixture(scope="module")
def policy() -> PPOTuner:
    return PPOTuner.load()  # the shipped policy: it acts in its own space (saved in its file)


@pytest.fixture(params=["sqlite", "journal"])
def storage(request, tmp_path) -> str:
    """An Optuna storage of each kind, as the CLI's --storage takes it."""
    return f"sqlite:///{tmp_path / 'optuna.db'}" if request.param == "sqlite" else str(tmp_path / "optuna.log")


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()

    def invoke(*args: str) -> dict:
        result = runner.invoke(main, [*args, "--json"], env={"RLHPO_RUNS_DIR": str(tmp_path / "runs")})
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    return invoke


def study_of(storage: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(
        storage=make_storage(storage), study_name=name, direction="maximize", load_if_exists=True
    )


# ------------------------------------------------------------ distributions


def test_every_config_of_the_space_is_an_optuna_trial(policy):
    space = policy.policy_space
    distributions = optuna_distributions(space, TABULAR)
    assert list(distributions) == list(space.dims)
    lr = distributions["learning_rate"]
    assert isinstance(lr, optuna.distributions.CategoricalDistribution) and lr.choices == space.choices["learning_rate"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        params = space.sample(rng, TABULAR).to_dict()
        trial = optuna.trial.create_trial(params=params, distributions=distributions, value=0.0)
        assert Config(**trial.params) == Config(**params)


def test_a_space_that_searches_the_family_lists_the_modalitys_families():
    space = load_search_space(shipped_file(SHIPPED_SPACE))
    if not space.families:
        pytest.skip("the shipped space searches no family")
    assert optuna_distributions(space, "text")["family"].choices == space.family_choices("text")
    with pytest.raises(RlhpoError, match="modality"):
        optuna_distributions(space)


# ------------------------------------------------------------ suggest


def test_suggest_gives_the_policys_first_proposal_then_distinct_configs(cli, policy):
    out = cli("suggest", *DIGITS_ARGS, "--n", "4")
    configs = [Config(**s["config"]) for s in out["suggestions"]]
    assert len({c.key() for c in configs}) == 4 and {c.epochs for c in configs} == {policy.policy_space.max_epochs}
    env = HPOEnv("live", None, tasks=[DIGITS], space=policy.policy_space)
    obs, _ = env.reset(options={"task": DIGITS})
    policy.start(env, 0)
    assert env.decode(policy.propose(obs)).with_epochs(9) == configs[0]
    assert env.budget_remaining == env.budget_epochs  # nothing was trained
    first = out["suggestions"][0]["command"]
    assert first.startswith("rlhpo train --task digits --n-train 200 --set learning_rate=")
    runner = CliRunner()
    plain = runner.invoke(main, ["suggest", *DIGITS_ARGS, "--n", "4"]).stdout.splitlines()
    assert plain == [s["command"] for s in out["suggestions"]]


def test_enqueued_suggestions_are_the_ones_suggest_prints(cli, storage, policy):
    printed = [s["config"] for s in cli("suggest", *DIGITS_ARGS, "--n", "3")["suggestions"]]
    study = study_of(storage)
    assert rlhpo.suggest_to_study is suggest_to_study
    assert rlhpo.suggest_to_study(study, DIGITS, 3, policy=policy) == printed
    distributions = optuna_distributions(policy.policy_space, TABULAR)

    def objective(trial: optuna.Trial) -> float:  # a user's objective, asking rlhpo's names
        return float(len([trial.suggest_categorical(h, d.choices) for h, d in distributions.items()]))

    study.optimize(objective, n_trials=3)
    assert [t.params for t in study_of(storage).trials] == printed


def test_importing_rlhpo_loads_no_stable_baselines3():
    code = "import sys, rlhpo; print('stable_baselines3' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ------------------------------------------------------------ tune --storage, import round trip


def test_tune_twice_continues_the_study_and_its_import_gives_the_curves_back(cli, storage, tmp_path):
    tunes = [
        cli("tune", *DIGITS_ARGS, "--budget", "0.67", "--seed", str(seed), "--storage", storage, "--study-name", "t")
        for seed in (0, 0, 1)
    ]
    study = study_of(storage, "t")
    assert len(study.trials) == sum(len(t["trials"]) for t in tunes) >= 4  # added up, not duplicated
    for trial, record in zip(study.trials, [r for t in tunes for r in t["trials"]]):
        assert trial.params == record["config"] and trial.value == record["score"]
        assert sorted(trial.intermediate_values) == list(range(1, record["epochs"] + 1))

    store = tmp_path / "imported.sqlite"
    first = tunes[0]
    imported = cli("store", "import-optuna", "--storage", storage, "--study", "t", *DIGITS_ARGS, "--store", str(store))
    elsewhere = len(tunes[2]["trials"])  # seed 1 is another task (its data split): those trials are not digits s0's
    assert imported["trials"] == len(study.trials) and imported["skipped"] == {ANOTHER_TASK: elsewhere}
    assert imported["imported"] + imported["already_recorded"] + elsewhere == imported["trials"]
    assert imported["already_recorded"] >= len(tunes[1]["trials"])  # the same tune twice: the same curves
    with CurveStore(f"{first['run_dir']}/store.sqlite", readonly=True) as tuned, CurveStore(store) as back:
        key = first["task_key"]
        n_classes = tuned.task(key).n_classes
        runs = tuned.runs(key, 0)
        assert runs and back.task(key) == tuned.task(key)
        for run in runs:
            again = back.get_run(key, run.config, 0)
            assert again is not None and again.max_epochs == run.max_epochs
            scores = [normalised_scores([e.val_accuracy for e in r.curve.epochs], n_classes) for r in (run, again)]
            assert list(scores[1]) == list(scores[0])  # exactly, to the last bit
            assert all(e.train_loss == e.val_loss == e.seconds == 0.0 for e in again.curve.epochs)


def test_a_resumed_tune_adds_each_trial_to_the_study_once(tmp_path, monkeypatch):
    storage = str(tmp_path / "optuna.log")
    runner, env = CliRunner(), {"RLHPO_RUNS_DIR": str(tmp_path / "runs")}
    helpers.interrupt_tune_at(monkeypatch, 2)
    args = ["tune", *DIGITS_ARGS, "--budget", "0.67", "--storage", storage, "--study-name", "t"]
    assert runner.invoke(main, args, env=env).exit_code == 130
    monkeypatch.undo()  # no more Ctrl-C
    run_dir = next((tmp_path / "runs").iterdir())
    resumed = runner.invoke(main, ["tune", "--resume", str(run_dir), "--json"], env=env)
    assert resumed.exit_code == 0, resumed.output
    trials = json.loads(resumed.stdout.strip().splitlines()[-1])["trials"]
    assert [t.user_attrs["rlhpo_step"] for t in study_of(storage, "t").trials] == [t["step"] for t in trials]


def test_the_score_to_accuracy_inverse_is_exact():
    for n_classes in (2, 4, 6, 10):
        for correct in range(181):
            score = normalised_score(correct / 180, n_classes)
            assert normalised_score(accuracy_of(score, n_classes), n_classes) == score


def test_a_storage_without_a_study_name_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["tune", *DIGITS_ARGS, "--storage", str(tmp_path / "j.log")])
    assert result.exit_code == 1 and "study name" in result.output


def test_an_sqlite_file_given_as_a_path_is_a_clear_error(tmp_path):
    path = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="x")
    with pytest.raises(RlhpoError, match="sqlite:///"):
        make_storage(path)


def test_import_reports_the_trials_that_do_not_fit(storage, tmp_path, policy):
    space = policy.policy_space
    study = study_of(storage)
    good = space.default_config(TABULAR).to_dict()
    scores = {e: 0.1 * e for e in range(1, 10)}

    # A user's study, as users write them: a log-uniform learning rate, an integer batch size.
    distributions = {
        **optuna_distributions(space, TABULAR),
        "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "batch_size": optuna.distributions.IntDistribution(16, 128),
        "family": optuna.distributions.CategoricalDistribution(["mlp", "cnn"]),
    }

    def add(params: dict, state=optuna.trial.TrialState.COMPLETE, steps: dict | None = scores) -> None:
        value = 0.5 if state == optuna.trial.TrialState.COMPLETE else None
        dists = {h: distributions[h] for h in params}
        trial = optuna.trial.create_trial(
            params=params, distributions=dists, value=value, state=state, intermediate_values=steps
        )
        study.add_trial(trial)

    add(good)
    add({**good, "units": 128, "family": "mlp"})  # digits is tabular: mlp is its family
    add({k: v for k, v in good.items() if k != "batch_size"})
    add({**good, "learning_rate": 0.005})
    add({**good, "family": "cnn"})
    add({**good, "dropout": 0.25}, steps=None)
    add({**good, "dropout": 0.1}, steps={3: 0.3, 9: 0.9})
    add({**good, "optimizer": "sgd"}, state=optuna.trial.TrialState.PRUNED, steps={1: 0.1})

    result = import_study(storage, "s", DIGITS, tmp_path / "store.sqlite", space=space)
    assert (result.trials, result.imported) == (8, 2)
    assert dict(result.skipped) == {
        "param missing (batch_size)": 1,
        "value not a choice (learning_rate)": 1,
        "value not a choice (family)": 1,
        NO_INTERMEDIATE: 1,
        "intermediate steps are not 1..epochs": 1,
        NOT_COMPLETE: 1,
    }
    with CurveStore(tmp_path / "store.sqlite") as store:
        key = result.task_key
        run = store.get_run(key, Config(**good), 0)
        assert [e.val_accuracy for e in run.curve.epochs] == pytest.approx([0.1 + s * 0.9 for s in scores.values()])
        # The user's history is meta-training data now: full-fidelity scores the env and the judges read.
        assert FullFidelity(store, space, 0).scores(key)[Config(**good).key()] == pytest.approx(0.9)

    args = ["store", "import-optuna", "--storage", storage, "--study", "s", *DIGITS_ARGS]
    lines = CliRunner().invoke(main, [*args, "--store", str(tmp_path / "s2.sqlite")]).stdout.splitlines()
    assert "2 imported" in lines[0] and "6 skipped" in lines[0] and "skipped 1: not complete" in lines


def test_a_missing_study_names_the_ones_there(storage, tmp_path):
    study_of(storage, "mine")
    with pytest.raises(RlhpoError, match="its studies: mine"):
        import_study(storage, "other", DIGITS, tmp_path / "store.sqlite")


# ------------------------------------------------------------ ppo_tpe


def test_ppo_tpe_plays_the_policy_for_its_budget_then_tpe_warm_started(policy):
    store = CurveStore(shipped_file(SHIPPED_STORE), readonly=True)
    task = IMDB
    horizon = policy.info.budget_epochs  # what it was meta-trained for: 3 FTE

    def play(tuner, budget):
        env = HPOEnv("recorded", store, space=policy.policy_space, budget_epochs=budget)
        return run_tuner(tuner, env, 10_000, task=task)

    tuner = PPOTPETuner(policy)
    budget = 10 * policy.policy_space.max_epochs  # 10 FTE
    both = play(tuner, budget)
    from_policy = [t for t in both.trials if t.budget_used - t.paid_epochs < horizon]
    # Up to its horizon, the policy plays the episode it was trained for: ppo's at that budget, and
    # ppo's at the longer budget (a portfolio policy plays the same up to its horizon).
    assert [t.action for t in from_policy] == [t.action for t in play(policy, horizon).trials]
    assert [t.action for t in from_policy] == [t.action for t in play(policy, budget).trials[: len(from_policy)]]
    rest = both.trials[len(from_policy) :]
    assert rest and all(t.epochs == policy.policy_space.max_epochs for t in rest)
    warm = tuner.study.trials[: len(from_policy)]
    assert [t.value for t in warm] == [t.score for t in from_policy]
    assert all(t.intermediate_values for t in warm) and len(tuner.study.trials) == len(both.trials)


def test_ppo_tpe_enqueues_the_list_after_the_policy_in_order_skipping_repeats_then_tpe(policy, tmp_path):
    # A large task (over 4,000 training examples): the policy plays its configs in full, not screened; and
    # the image list is long enough (33 configs) in either policy's space.
    task = "mnist/default/nall/call/s1625009125"
    space, horizon = policy.policy_space, policy.info.budget_epochs

    def play(tuner, budget, store):
        env = HPOEnv("recorded", store, space=space, budget_epochs=budget)
        return run_tuner(tuner, env, 10_000, task=task)

    # A portfolio policy's configs are all recorded on every shipped instance. Leave the policy's second
    # trial's config out of a copy of the task, so that a recorded neighbour answers it there.
    shipped = CurveStore(shipped_file(SHIPPED_STORE), readonly=True)
    second = play(policy, horizon, shipped).trials[1].config.with_epochs(space.max_epochs)
    path = helpers.slice_shipped_store(tmp_path / "s.sqlite", (task,), leave_out={second.key()})
    store = CurveStore(path, readonly=True)

    # make_tuners enqueues the learned list, learned exactly as learned_list's (from the whole store).
    ppo_tpe, learned_list = make_tuners(
        ["ppo_tpe", "learned_list"], space=space, policy=policy, store=shipped,
        exclude_datasets=policy.info.exclude_datasets,
    )  # fmt: skip
    assert isinstance(ppo_tpe, PPOTPETuner) and ppo_tpe.lists == learned_list.lists
    alone = play(policy, horizon, store).trials  # what the policy plays in ppo_tpe (the previous test)
    assert alone[0].epochs == space.max_epochs  # so asking it again at full fidelity is a repeat
    known = {k for t in alone for k in (t.config.key(), t.answered_config.key())}
    fresh = [c for c in learned_list.configs_for("image") if c.key() not in known]
    # Repeats: a config the policy asked, one whose curve answered the policy, one the list itself played.
    answered = next(t.answered_config for t in alone if t.answered_config.key() != t.config.key())
    configs = [alone[0].config, fresh[0], answered, fresh[0], fresh[1], fresh[2]]
    tuner = PPOTPETuner(policy, configs=configs)
    both = play(tuner, 10 * space.max_epochs, store)  # 10 FTE: 3 for the policy, 3 for the list, 4 for TPE
    n = len(alone)
    assert [t.action for t in both.trials[:n]] == [t.action for t in alone]
    listed = both.trials[n : n + 3]
    assert [t.config for t in listed] == [c.with_epochs(space.max_epochs) for c in fresh[:3]]
    rest = both.trials[n + 3 :]
    assert rest and all(t.epochs == space.max_epochs for t in rest)
    # In the study: the policy's trials added, the list's enqueued (fixed params), then TPE's own.
    trials = tuner.study.trials
    assert len(trials) == len(both.trials) and [t.value for t in trials] == [t.score for t in both.trials]
    assert [("fixed_params" in t.system_attrs) for t in trials] == [False] * n + [True] * 3 + [False] * len(rest)
    # A list of repeats only: TPE follows the policy directly, as with no list.
    repeats = PPOTPETuner(policy, configs=[alone[0].config, answered])
    again, plain = play(repeats, 5 * space.max_epochs, store), play(PPOTPETuner(policy), 5 * space.max_epochs, store)
    assert [t.action for t in again.trials] == [t.action for t in plain.trials]
    assert not any("fixed_params" in t.system_attrs for t in repeats.study.trials)


def play_ppo_tpe_with_the_list(policy, task: str, modality: str, fte: int):
    """ppo_tpe with the learned list of ``modality`` (learned as make_tuners learns it), ``fte`` FTE on ``task``."""
    space = policy.policy_space
    store = CurveStore(shipped_file(SHIPPED_STORE), readonly=True)
    configs = LearnedListTuner.fit(store, space, exclude_datasets=policy.info.exclude_datasets).configs_for(modality)
    tuner = PPOTPETuner(policy, configs=configs)
    env = HPOEnv("recorded", store, space=space, budget_epochs=fte * space.max_epochs)
    return configs, tuner, run_tuner(tuner, env, 10_000, task=task).trials


def test_ppo_tpe_enqueues_the_list_only_for_tpes_startup_trials(policy):
    # The list takes the place of the trials TPE would sample at random before it models the task.
    startup = PPOTPETuner.startup_trials
    assert startup == inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    configs, tuner, trials = play_ppo_tpe_with_the_list(policy, "digits/default/n500/call/s1283935874", "tabular", 30)
    n = sum(t.budget_used - t.paid_epochs < policy.info.budget_epochs for t in trials)  # the policy's trials
    full = sum(t.epochs == policy.policy_space.max_epochs for t in trials[:n])  # those trained in full
    listed = ["fixed_params" in t.system_attrs for t in tuner.study.trials]
    assert full < startup and len(configs) > startup and len(trials) > n + startup  # a list longer than it may run
    assert listed == [False] * n + [True] * (startup - full) + [False] * (len(trials) - n - startup + full)


def test_ppo_tpe_counts_only_full_trainings_as_tpes_startup_trials(policy, monkeypatch):
    # A policy that screens (one-epoch trials) leaves TPE nothing to model the task from: the list fills
    # TPE's startup trials until that many have been trained in full.
    task, space = "digits/default/n500/call/s1283935874", policy.policy_space
    store = CurveStore(shipped_file(SHIPPED_STORE), readonly=True)
    configs = LearnedListTuner.fit(store, space, exclude_datasets=policy.info.exclude_datasets).configs_for("tabular")
    screened = configs[::-1]  # the policy screens the list from its end, one epoch each
    played: dict[str, object] = {}
    start = policy.start

    def screen_start(env: HPOEnv, seed: int) -> None:
        start(env, seed)
        played.update(env=env, n=0)

    def screen(obs: np.ndarray) -> np.ndarray:
        env = played["env"]
        played["n"] += 1
        return env.space.indices(env.on_task(screened[played["n"] - 1].with_epochs(1)), env.modality)

    monkeypatch.setattr(policy, "start", screen_start)
    monkeypatch.setattr(policy, "propose", screen)
    tuner = PPOTPETuner(policy, configs=configs)
    env = HPOEnv("recorded", store, space=space, budget_epochs=30 * space.max_epochs)
    trials = run_tuner(tuner, env, 10_000, task=task).trials
    n = played["n"]  # the policy's trials: one epoch each, for its whole horizon
    assert n == policy.info.budget_epochs > PPOTPETuner.startup_trials and len(configs) > n
    listed = ["fixed_params" in t.system_attrs for t in tuner.study.trials]
    assert listed[:n] == [False] * n and sum(listed) == PPOTPETuner.startup_trials
    assert all(t.epochs == space.max_epochs for t in trials[n:])


def test_in_order_of_moves_only_the_ordered_configs_and_keeps_their_slots():
    default = load_search_space(shipped_file(SHIPPED_SPACE)).default
    a, b, c, d = (dataclasses.replace(default, learning_rate=lr) for lr in (1e-4, 3e-4, 1e-3, 3e-3))
    assert in_order_of([a, b, c, d], [c, a, b]) == [c, a, b, d]
    assert in_order_of([a, d, b], [b, c, a]) == [b, d, a]  # c is not in the list: nothing added
    assert in_order_of([a, b], []) == [a, b]


def test_ppo_tpe_enqueues_the_list_in_the_similar_policys_order_for_the_task(policy):
    # The shipped policy orders its portfolio by the tasks most like this one (portfolio_order: similar);
    # the learned list that ppo_tpe enqueues puts the portfolio's configs in that order too.
    assert policy.info.similar is not None
    configs, tuner, trials = play_ppo_tpe_with_the_list(policy, "trec/default/nall/call/s2045038562", "text", 10)
    ordered = in_order_of(configs, tuner.policy.portfolio["text"])
    assert ordered != configs  # the task's order is not the list's: the test can tell them apart
    listed = [t.config for t, s in zip(trials, tuner.study.trials) if "fixed_params" in s.system_attrs]
    position = {c.key(): i for i, c in enumerate(ordered)}
    at = [position[c.with_epochs(configs[0].epochs).key()] for c in listed]
    assert len(at) >= 2 and at == sorted(at)  # enqueued in the task's order, repeats of the policy's skipped


def test_tune_with_ppo_tpe_plays_the_policy_then_tpe_and_resumes_to_the_same_tune(cli, tmp_path, monkeypatch):
    budget = ("--budget", "14")  # past TPE's startup trials: the list's configs, then TPE's own
    alone = cli("tune", *DIGITS_ARGS, "--budget", "3")  # the policy's own episode, its meta-training budget
    both = cli("tune", *DIGITS_ARGS, *budget, "--method", "ppo_tpe")
    assert both["method"] == "ppo_tpe" and alone["method"] == "ppo"
    assert [t["config"] for t in both["trials"][: len(alone["trials"])]] == [t["config"] for t in alone["trials"]]
    configs = [json.dumps(t["config"], sort_keys=True) for t in both["trials"]]
    assert len(configs) > PPOTPETuner.startup_trials and len(set(configs)) == len(configs)  # never a repeat
    assert both["tuning_epochs"] <= both["budget_epochs"]

    # Ctrl-C at trial 12 (TPE's own), then --resume: the tune an uninterrupted run gives.
    runs, runner = tmp_path / "again", CliRunner()
    helpers.interrupt_tune_at(monkeypatch, 12)
    args = ["tune", *DIGITS_ARGS, *budget, "--method", "ppo_tpe"]
    assert runner.invoke(main, args, env={"RLHPO_RUNS_DIR": str(runs)}).exit_code == 130
    monkeypatch.undo()
    resumed = runner.invoke(main, ["tune", "--resume", str(next(runs.iterdir())), "--json"])
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert [(t["config"], t["score"]) for t in again["trials"]] == [(t["config"], t["score"]) for t in both["trials"]]


def test_tune_with_ppo_tpe_refuses_rounds_of_trials(tmp_path):
    args = ["tune", *DIGITS_ARGS, "--method", "ppo_tpe", "--workers", "2"]
    result = CliRunner().invoke(main, args, env={"RLHPO_RUNS_DIR": str(tmp_path)})
    assert result.exit_code == 1 and "one trial at a time" in result.output and not list(tmp_path.iterdir())


class _DefaultFirst:
    """A stand-in for a policy in a space that searches the family: the default config, for one trial."""

    info = PolicyInfo(budget_epochs=1)

    def start(self, env: HPOEnv, seed: int) -> None:
        self.env = env

    def set_horizon(self, epochs: int) -> None:
        self.horizon = epochs

    def propose(self, obs: np.ndarray) -> np.ndarray:
        return self.env.default_action()


def test_ppo_tpe_plays_the_family_less_list_with_the_tasks_family(tmp_path):
    space = load_search_space(shipped_file(SHIPPED_SPACE))
    if not space.families:
        pytest.skip("the shipped space searches no family")
    # Instances that pin their family (as stores recorded before the family was searched): imdb's
    # teach a list of family-less configs, and trec's plays them.
    trec = "trec/default/n500/call/s17257121"
    path = helpers.slice_shipped_store(tmp_path / "pinned.sqlite", pins={IMDB: "bow", trec: "lstm"})
    store = CurveStore(path, readonly=True)
    learned = LearnedListTuner.fit(store, space, exclude_datasets=["trec"]).configs_for("text")
    assert learned and all(c.family is None for c in learned)
    tuner = PPOTPETuner(_DefaultFirst(), configs=learned[:2])  # type: ignore[arg-type]
    env = HPOEnv("recorded", store, space=space, budget_epochs=4 * space.max_epochs)
    result = run_tuner(tuner, env, 0, task="trec/lstm/n500/call/s17257121")
    listed = [t.config for t in result.trials[1:3]]
    assert [c.family for c in listed] == ["lstm", "lstm"]
    assert [c.with_family(None) for c in listed] == [c.with_epochs(space.max_epochs) for c in learned[:2]]
