"""HPOEnv on both backends: the checkers, determinism, the space, the budget, bad input, the recorder."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlhpo.envs
from rlhpo.collect import CollectSettings, InlineExecutor, InstanceGroup, collect
from rlhpo.envs.hpo_env import HPOEnv
from rlhpo.envs.recorder import RolloutRecorder
from rlhpo.envs.reward import RewardSettings, relative_compute
from rlhpo.errors import RlhpoError
from rlhpo.space import Config, load_search_space
from rlhpo.store import CurveStore, TaskRecord
from rlhpo.tasks.features import META_FEATURES
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

SPACE = load_search_space()  # the shipped space: it searches the model family
DEFAULT = SPACE.default_config("tabular")  # the default config of digits, the tasks here


def ix(config: Config) -> np.ndarray:
    """The action of a config on digits (tabular data)."""
    return SPACE.indices(config, "tabular")


TASK = Task("digits", n_train=200)
N_CONFIGS = 8


@pytest.fixture(scope="module")
def recorded_store(tmp_path_factory) -> str:
    """A store with real curves: N_CONFIGS configs at 9 epochs on two tiny digits tasks."""
    path = str(tmp_path_factory.mktemp("store") / "store.sqlite")
    settings = CollectSettings(
        instances=[InstanceGroup(datasets=["digits"], n_train=[200], seeds=[0, 1])], configs=N_CONFIGS
    )
    collect(settings, path, executor=InlineExecutor(), progress=False)
    return path


def recorded(store: str, **kwargs) -> HPOEnv:
    return HPOEnv("recorded", store, **kwargs)


def step(env: gym.Env, action) -> tuple:
    """``env.step`` with the step's typed result in place of its ``info``."""
    obs, reward, terminated, truncated, result = env.step(action)
    return obs, reward, terminated, truncated, result["result"]


def rollout(env: gym.Env, seed: int, steps: int = 50) -> list:
    out = []
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    out.append((obs.tolist(), info))
    for _ in range(steps):
        obs, reward, terminated, truncated, info = step(env, env.action_space.sample())
        out.append((obs.tolist(), reward, terminated, truncated, info.to_dict()))
        if terminated or truncated:
            break
    return out


# ---------------------------------------------------------------- checkers


def test_recorded_env_passes_both_checkers(recorded_store):
    gym_check_env(recorded(recorded_store), skip_render_check=True)
    sb3_check_env(recorded(recorded_store), warn=True)


def test_live_env_passes_both_checkers(tmp_path):
    gym_check_env(HPOEnv("live", tmp_path / "s.sqlite", tasks=[TASK], budget_epochs=4), skip_render_check=True)
    sb3_check_env(HPOEnv("live", tmp_path / "s.sqlite", tasks=[TASK], budget_epochs=4), warn=True)


def test_a_recorded_env_without_a_store_plays_the_shipped_meta_dataset():
    env = gym.make(rlhpo.envs.ENV_ID, backend="recorded")
    _, info = env.reset(seed=0)
    assert info["backend"] == "recorded" and "/" in info["task"]
    _, _, _, _, step_info = env.step(env.action_space.sample())
    assert step_info["result"].curve  # answered from the shipped store's recorded curves


def test_the_env_says_which_configs_would_repeat_a_trial(recorded_store):
    env = recorded(recorded_store, budget_epochs=30)
    env.reset(seed=0, options={"task": TASK.key()})
    three = DEFAULT.with_epochs(3)
    assert not env.is_repeat(three)
    step(env, ix(three))
    assert env.is_repeat(three) and env.is_repeat(DEFAULT.with_epochs(1))  # known that far already
    assert not env.is_repeat(DEFAULT)  # 9 epochs would continue it
    assert env.budget_remaining == 27


def test_gymnasium_make_builds_the_registered_env(recorded_store):
    env = gym.make(rlhpo.envs.ENV_ID, backend="recorded", store=recorded_store)
    assert isinstance(env.unwrapped, HPOEnv)
    env = gym.make("rlhpo.envs:rlhpo/HPO-v0", backend="recorded", store=recorded_store)  # imports the module
    obs, info = env.reset(seed=0)
    assert obs.shape == (len(env.unwrapped.observation_names),) == (31,)
    assert info["task"] in {TASK.key(), TASK.replace(seed=1).key()}


# ------------------------------------------------------------ determinism


def test_two_recorded_envs_with_one_seed_give_identical_rollouts(recorded_store):
    a, b = rollout(recorded(recorded_store), seed=3), rollout(recorded(recorded_store), seed=3)
    assert a == b
    assert rollout(recorded(recorded_store), seed=4) != a


def test_two_live_envs_with_one_seed_give_identical_rollouts():
    # Each env keeps its own in-memory store, so both really train.
    a = rollout(HPOEnv("live", tasks=[TASK], budget_epochs=6), seed=1)
    b = rollout(HPOEnv("live", tasks=[TASK], budget_epochs=6), seed=1)
    strip = {"seconds", "curve"}
    clean = [tuple({k: v for k, v in x.items() if k not in strip} if isinstance(x, dict) else x for x in s) for s in a]
    assert clean == [
        tuple({k: v for k, v in x.items() if k not in strip} if isinstance(x, dict) else x for x in s) for s in b
    ]


def test_the_recorded_backend_reproduces_a_live_step_exactly(tmp_path):
    path = tmp_path / "store.sqlite"
    actions = [
        ix(DEFAULT),
        ix(DEFAULT.with_epochs(3)),  # answered from the 9-epoch run just recorded
        ix(SPACE.sample(np.random.default_rng(5), "tabular").with_epochs(3)),
    ]
    live = HPOEnv("live", path, tasks=[TASK], budget_epochs=20)
    live_steps = [live.reset(seed=0, options={"task": TASK})] + [step(live, a) for a in actions]
    replay = HPOEnv("recorded", path, budget_epochs=20)
    replay_steps = [replay.reset(seed=0, options={"task": TASK})] + [step(replay, a) for a in actions]
    assert live.backend.trained == 2  # the 3-epoch default was answered from its 9-epoch run
    for got, want in zip(replay_steps, live_steps):
        plain = [x if isinstance(x, dict) else x.to_dict() for x in (got[-1], want[-1])]
        info_got, info_want = plain
        info_got.pop("backend"), info_want.pop("backend")
        assert np.array_equal(got[0], want[0])
        assert got[1:-1] == want[1:-1]
        assert info_got == info_want


# -------------------------------------------------------- space and budget


def _synthetic_store(path) -> tuple[str, list]:
    """Runs that break things: diverged at once, diverged later, exploding losses, perfect."""
    store = CurveStore(path)
    meta = dict.fromkeys(META_FEATURES, 0.5)
    meta["log_n_train"] = 1.7  # out of [0, 1]: the env must still observe inside the space
    store.put_task(TaskRecord(TASK, "mlp", 160, 10, meta))
    rng = np.random.default_rng(0)
    cs = []
    while len(cs) < 4:
        c = SPACE.sample(rng, "tabular").with_epochs(9)
        if c.key() not in {x.key() for x in cs}:
            cs.append(c)

    def ep(e, tl, vl, acc):
        return EpochRecord(e, tl, vl, acc, acc, 0.1)

    store.put_run(TASK.key(), cs[0], 0, Curve([], diverged=True))
    store.put_run(TASK.key(), cs[1], 0, Curve([ep(1, 1.0, 1.0, 0.5), ep(2, 9.0, 1e30, 0.0)], diverged=True))
    store.put_run(TASK.key(), cs[2], 0, Curve([ep(e, 1e-9, 1e12, 0.0) for e in range(1, 10)]))
    store.put_run(TASK.key(), cs[3], 0, Curve([ep(e, 0.0, 0.0, 1.0) for e in range(1, 10)]))
    store.close()
    return str(path), cs


def test_the_observation_stays_in_the_space_after_divergence_and_extreme_curves(tmp_path):
    path, cs = _synthetic_store(tmp_path / "synthetic.sqlite")
    env = recorded(path, budget_epochs=200)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    penalty = RewardSettings().divergence_penalty
    for c in cs + cs[:2]:
        obs, reward, _, _, info = step(env, ix(c))
        assert env.observation_space.contains(obs), dict(zip(env.observation_names, obs))
        assert obs.dtype == np.float32 and np.isfinite(obs).all()
        json.dumps(info.to_dict())
        if info.diverged:
            assert obs[-1] == 1.0 and reward <= -penalty
    assert info.incumbent == 1.0


def test_live_divergence_is_observed_and_penalised_not_raised(monkeypatch, tmp_path):
    import rlhpo.training

    monkeypatch.setattr(rlhpo.training, "train", lambda *a, **k: Curve([], diverged=True))
    env = HPOEnv("live", tmp_path / "s.sqlite", tasks=[TASK])
    env.reset(seed=0)
    obs, reward, terminated, _, info = step(env, ix(DEFAULT))
    assert info.diverged and info.score == 0.0 and not terminated
    assert env.observation_space.contains(obs) and obs[-1] == 1.0
    assert reward == pytest.approx(-0.01 - 0.002 - 0.1)  # the default config: relative compute 1


def test_the_budget_ends_the_episode_and_a_step_pays_what_fits(recorded_store):
    env = recorded(recorded_store, budget_epochs=5)
    env.reset(seed=0)
    nine = ix(DEFAULT)  # asks for 9 epochs
    paid, terminated = [], False
    while not terminated:
        obs, _, terminated, truncated, info = step(env, nine)
        paid.append(info.paid_epochs)
        assert not truncated
    assert paid == [3, 1, 1] and info.budget_remaining == 0
    assert obs[len(META_FEATURES)] == 1.0 and obs[len(META_FEATURES) + 1] == 0.0
    with pytest.raises(RlhpoError, match="call reset"):
        env.step(nine)


def test_relative_compute_grows_with_depth_and_squared_width():
    assert relative_compute(DEFAULT, DEFAULT) == 1.0
    big = dataclasses.replace(DEFAULT, num_layers=4, units=256)
    assert relative_compute(big, DEFAULT) == pytest.approx(4 * 256**2 / (3 * 64**2))
    assert relative_compute(dataclasses.replace(DEFAULT, units=32), DEFAULT) == pytest.approx(0.25)


def test_the_reward_is_the_incumbent_gain_less_the_epochs_and_compute_costs(recorded_store):
    env = recorded(recorded_store, budget_epochs=60)
    env.reset(seed=0, options={"task": TASK.key()})
    env.action_space.seed(0)
    incumbent = 0.0
    rng = np.random.default_rng(0)
    for _ in range(6):
        _, reward, _, _, info = step(env, env.action_space.sample() if rng.random() < 0.5 else ix(DEFAULT))
        assert info.incumbent == max(incumbent, info.score)
        c = info.config
        compute = c.num_layers * c.units**2 / (3 * 64**2)  # over the default config's 3 x 64
        fte = info.paid_epochs / 9
        assert info.compute_fte == pytest.approx(compute * fte)
        penalties = 0.05 * info.distance + 0.1 * info.diverged
        expected = info.incumbent - incumbent - (0.01 + 0.002 * compute) * fte - penalties
        assert reward == pytest.approx(expected)
        incumbent = info.incumbent


@pytest.mark.parametrize("rule", ["best", "top_rung"])
def test_the_incumbent_is_the_best_trial_or_the_best_of_the_top_rung(recorded_store, rule):
    env = recorded(recorded_store, budget_epochs=90, incumbent=rule)
    env.reset(seed=0, options={"task": TASK.key()})
    env.action_space.seed(0)
    rng = np.random.default_rng(1)
    trials: list[tuple[int, float, Config]] = []
    gains = 0.0
    for _ in range(12):
        config = SPACE.decode(env.action_space.sample(), "tabular").with_epochs(int(rng.choice([1, 3, 9])))
        _, reward, done, _, info = step(env, ix(config))
        trials.append((info.epochs, info.score, info.answered_config))
        counted = [t for t in trials if rule == "best" or t[0] == max(e for e, _, _ in trials)]
        best = max(counted, key=lambda t: t[1])
        assert info.incumbent == pytest.approx(max(0.0, best[1]))
        assert info.incumbent_config == best[2]
        c = info.config
        gains += reward + (0.01 + 0.002 * c.num_layers * c.units**2 / (3 * 64**2)) * info.paid_epochs / 9
        gains += 0.05 * info.distance + 0.1 * info.diverged
        if done:
            break
    assert gains == pytest.approx(info.incumbent)  # the first term telescopes to the final incumbent
    with pytest.raises(RlhpoError, match="incumbent must be one of best, top_rung"):
        recorded(recorded_store, incumbent="latest")


def test_with_top_rung_a_short_trial_does_not_displace_a_longer_one(recorded_store):
    """Hyperband's incumbent: the worst config in full stays the incumbent over the best one-epoch screen."""
    configs = [run.config for run in CurveStore(recorded_store, readonly=True).runs(TASK.key(), 0)]

    def score(config: Config, epochs: int) -> float:
        env = recorded(recorded_store, budget_epochs=9)
        env.reset(seed=0, options={"task": TASK.key()})
        return step(env, _at(config, epochs))[4].score

    worst_in_full = min(configs, key=lambda c: score(c, 9))
    best_screen = max(configs, key=lambda c: score(c, 1))
    assert score(best_screen, 1) > score(worst_in_full, 9)  # what makes the two rules differ here
    incumbents = {}
    for rule in ("best", "top_rung"):
        env = recorded(recorded_store, budget_epochs=18, incumbent=rule)
        env.reset(seed=0, options={"task": TASK.key()})
        step(env, _at(worst_in_full, 9))
        _, reward, _, _, info = step(env, _at(best_screen, 1))
        incumbents[rule] = (info.incumbent, info.incumbent_config.with_epochs(9), reward)
    assert incumbents["best"][:2] == (pytest.approx(score(best_screen, 1)), best_screen.with_epochs(9))
    assert incumbents["top_rung"][:2] == (pytest.approx(max(0.0, score(worst_in_full, 9))), worst_in_full)
    assert incumbents["top_rung"][2] < 0 and incumbents["best"][2] > incumbents["top_rung"][2]  # no gain: the cost


def test_the_full_fidelity_return_pays_the_incumbent_config_trained_in_full(recorded_store):
    from rlhpo.agents.meta_train import FullFidelityReturn

    def first_step(env: gym.Env, epochs: int) -> tuple:
        env.reset(seed=0, options={"task": TASK.key()})
        return step(env, _at(DEFAULT, epochs))

    _, plain, done, _, one = first_step(recorded(recorded_store, budget_epochs=1), 1)
    _, paid, wrapped_done, _, _ = first_step(FullFidelityReturn(recorded(recorded_store, budget_epochs=1)), 1)
    _, nine_reward, _, _, nine = first_step(recorded(recorded_store, budget_epochs=9), 9)
    assert done and wrapped_done and nine.score != one.score  # the one-epoch incumbent scores otherwise in full
    assert paid == pytest.approx(plain - one.incumbent + max(0.0, nine.score))
    _, paid_nine, _, _, _ = first_step(FullFidelityReturn(recorded(recorded_store, budget_epochs=9)), 9)
    assert paid_nine == pytest.approx(nine_reward)  # trained in full already: nothing to correct


# -------------------------------------------------------------- continuing


def _at(config: Config, epochs: int) -> np.ndarray:
    return ix(config.with_epochs(epochs))


def test_a_recorded_trial_asked_for_more_epochs_continues_and_pays_only_those(recorded_store):
    env = recorded(recorded_store, budget_epochs=27)
    env.reset(seed=0, options={"task": TASK.key()})
    _, _, _, _, one = step(env, _at(DEFAULT, 1))
    _, reward, _, _, nine = step(env, _at(DEFAULT, 9))
    assert (nine.epochs, nine.resumed_from, nine.paid_epochs, nine.budget_used) == (9, 1, 8, 9)
    assert nine.distance == 0.0  # the default config is recorded
    assert reward == pytest.approx(nine.incumbent - one.incumbent - (0.01 + 0.002) * 8 / 9)
    assert nine.seconds == pytest.approx(sum(e.seconds for e in nine.curve[1:]))
    fresh = recorded(recorded_store, budget_epochs=27)
    fresh.reset(seed=0, options={"task": TASK.key()})
    _, _, _, _, whole = step(fresh, _at(DEFAULT, 9))
    assert nine.curve == whole.curve and nine.score == whole.score
    # Asking again for as many epochs, or fewer, is a fresh trial that pays in full.
    _, _, _, _, again = step(env, _at(DEFAULT, 3))
    assert (again.resumed_from, again.paid_epochs) == (0, 3)


def test_a_live_trial_continues_from_its_kept_state(tmp_path, monkeypatch):
    import rlhpo.training

    calls = []
    real_train = rlhpo.training.train

    def spy(*args, **kwargs):
        calls.append(kwargs.get("resume"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(rlhpo.training, "train", spy)
    config = Config(
        learning_rate=3e-3,
        batch_size=32,
        epochs=3,
        dropout=0.5,
        optimizer="adam",
        weight_decay=0.0,
        num_layers=1,
        units=32,
        family="mlp",
    )
    env = HPOEnv("live", str(tmp_path / "a.sqlite"), tasks=[TASK], budget_epochs=9)
    env.reset(seed=0)
    env.step(_at(config, 1))
    _, _, _, _, info = step(env, _at(config, 3))
    assert calls[0] is None and len(calls[1].epochs) == 1  # resumed from epoch 1: only 2 and 3 are trained
    assert (info.resumed_from, info.paid_epochs, info.budget_used) == (1, 2, 3)
    other = HPOEnv("live", str(tmp_path / "b.sqlite"), tasks=[TASK], budget_epochs=9)
    other.reset(seed=0)
    _, _, _, _, whole = step(other, _at(config, 3))
    drop = lambda curve: [dataclasses.replace(e, seconds=0.0) for e in curve]  # noqa: E731
    assert drop(info.curve) == drop(whole.curve)


# ------------------------------------------------------------------ nearest


def test_an_unrecorded_config_gets_the_nearest_recorded_one(recorded_store):
    env = recorded(recorded_store, budget_epochs=100)
    env.reset(seed=0, options={"task": TASK})
    store = CurveStore(recorded_store, readonly=True)
    recorded_keys = {r.config.key() for r in store.runs(TASK.key(), 0)}
    rng = np.random.default_rng(1)
    config = SPACE.sample(rng, "tabular")
    while config.with_family(None).key() in recorded_keys:
        config = SPACE.sample(rng, "tabular")
    _, _, _, _, info = step(env, ix(config))
    assert not info.exact and info.distance > 0
    want = np.delete(SPACE.encode(config, "tabular"), 2)
    dists = {
        r.config.with_family("mlp").key(): float(
            np.linalg.norm(np.delete(SPACE.encode(r.config.with_family("mlp"), "tabular"), 2) - want)
        )
        for r in store.runs(TASK.key(), 0)
    }
    answered = info.answered_config
    assert info.distance == pytest.approx(min(dists.values()), abs=1e-6)
    assert dists[answered.key()] == pytest.approx(min(dists.values()), abs=1e-6)
    assert info.answered_config.epochs == info.epochs == config.epochs


def test_a_subset_backend_answers_each_episode_from_a_new_subset(recorded_store):
    from rlhpo.envs.backends import RecordedBackend, SubsetBackend

    inner = RecordedBackend(recorded_store, SPACE)
    env = HPOEnv(SubsetBackend(inner, 0.5, seed=0), space=SPACE, budget_epochs=900)
    store = CurveStore(recorded_store, readonly=True)
    configs = [r.config.with_family("mlp") for r in store.runs(TASK.key(), 0)]
    answered = []
    for seed in range(6):
        env.reset(seed=seed, options={"task": TASK.key()})
        answered.append({step(env, ix(c))[4].answered_config.key() for c in configs})
    assert all(0 < len(a) < len(configs) for a in answered)  # some recorded configs are held back
    assert len({frozenset(a) for a in answered}) > 1  # and which ones changes between episodes
    full = HPOEnv(SubsetBackend(inner, 1.0, seed=0), space=SPACE, budget_epochs=900)
    full.reset(seed=0, options={"task": TASK.key()})
    assert all(step(full, ix(c))[4].exact for c in configs)
    with pytest.raises(RlhpoError, match=r"in \(0, 1\]"):
        SubsetBackend(inner, 0.0, seed=0)


# ---------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors(recorded_store, tmp_path):
    env = recorded(recorded_store)
    with pytest.raises(RlhpoError, match="call reset"):
        env.step(ix(DEFAULT))
    with pytest.raises(RlhpoError, match="no recorded curves.*Did you mean"):
        env.reset(options={"task": "digits/default/n200/call/s9"})
    with pytest.raises(RlhpoError, match="no recorded curves"):
        env.reset(options={"task": Task("trec", n_train=200)})
    env.reset(seed=0)
    with pytest.raises(RlhpoError, match="outside the 7 choices"):
        env.step([7, 0, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(RlhpoError, match="needs 9 indices"):
        env.step([0, 0])
    with pytest.raises(RlhpoError, match="Unknown reset options"):
        env.reset(options={"tsak": TASK})
    with pytest.raises(RlhpoError, match="does not exist"):
        recorded(tmp_path / "missing.sqlite")
    with pytest.raises(RlhpoError, match="Unknown backend 'recrded'.*Did you mean 'recorded'"):
        HPOEnv("recrded", recorded_store)
    empty = tmp_path / "empty.sqlite"
    CurveStore(empty).count()
    with pytest.raises(RlhpoError, match="no task with recorded curves"):
        recorded(empty).reset(seed=0)
    with pytest.raises(RlhpoError, match="no task with recorded curves.*once digits are excluded"):
        recorded(recorded_store, exclude_datasets=["digits"]).reset(seed=0)


# ----------------------------------------------------------------- recorder


def test_the_recorder_appends_one_json_line_per_step(recorded_store, tmp_path):
    path = tmp_path / "run" / "rollouts.jsonl"
    env = RolloutRecorder(recorded(recorded_store, budget_epochs=10), path)
    steps = rollout(env, seed=0)
    rollout(env, seed=1)
    env.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["episode"] for x in lines].count(0) == len(steps) - 1
    first = lines[0]
    assert first["task"] == steps[0][1]["task"]
    assert first["meta_features"] == steps[0][1]["meta_features"]
    assert first["config"] == steps[1][-1]["config"] and first["reward"] == steps[1][1]
    assert first["incumbent"] == steps[1][-1]["incumbent"]
    assert set(first["curve"]) >= {"epochs_completed", "final_val_accuracy", "diverged", "score"}
    assert lines[-1]["episode"] == 1 and lines[-1]["terminated"]
    assert first["seed"] == 0 and lines[-1]["seed"] == 1


# ------------------------------------------------------------------ families


def _text_store(path, family: str | None) -> Task:
    """A text task recorded with its own family only (as every store before families were searched)."""
    task = Task("trec", family=family, n_train=100)
    store = CurveStore(path)
    meta = dict.fromkeys(META_FEATURES, 0.0)
    meta["modality_text"] = 1.0
    store.put_task(TaskRecord(task, family or "gru", 100, 6, meta))
    rng = np.random.default_rng(0)
    for _ in range(6):
        config = SPACE.sample(rng, "text").with_epochs(9).with_family(None)
        store.put_run(task.key(), config, 0, Curve([EpochRecord(e, 1.0, 1.0, 0.5, 0.5, 0.1) for e in range(1, 10)]))
    store.close()
    return task


@pytest.fixture(scope="module")
def family_space():
    return SPACE


def test_a_family_space_never_trains_a_family_of_another_modality(family_space, recorded_store, tmp_path):
    text = _text_store(tmp_path / "text.sqlite", None)
    for store, task, allowed in [
        (str(tmp_path / "text.sqlite"), text.key(), set(family_space.family_choices("text"))),
        (recorded_store, TASK.key(), {"mlp"}),  # digits: tabular
    ]:
        env = HPOEnv("recorded", store, space=family_space, budget_epochs=10_000)
        obs, _ = env.reset(seed=0, options={"task": task})
        assert env.observation_space.contains(obs) and obs.shape == (31,)
        env.action_space.seed(0)
        asked = set()
        for _ in range(300):
            obs, _, _, _, result = step(env, env.action_space.sample())
            asked.add(result.config.family)
            assert env.observation_space.contains(obs)
        assert asked == allowed  # every family of the modality is reachable, and no other
    family_meta = [i for i, name in enumerate(env.observation_names) if name.startswith("family_")]
    assert not obs[family_meta].any()  # the family is the action's to choose: the task shows none


def test_a_pinned_family_is_trained_whatever_the_action(family_space, tmp_path):
    task = _text_store(tmp_path / "pinned.sqlite", "lstm")
    env = HPOEnv("recorded", tmp_path / "pinned.sqlite", space=family_space, budget_epochs=10_000)
    env.reset(seed=0, options={"task": task.key()})
    env.action_space.seed(1)
    families = {step(env, env.action_space.sample())[4].config.family for _ in range(50)}
    assert families == {"lstm"}
    answered = step(env, env.default_action())[4]
    assert answered.answered_config.family == "lstm" and answered.exact is False


def test_an_old_store_answers_a_family_space_with_each_tasks_own_family(family_space, recorded_store):
    env = HPOEnv("recorded", recorded_store, space=family_space, budget_epochs=100)
    env.reset(seed=0, options={"task": TASK.key()})
    result = step(env, env.default_action())[4]
    plain = HPOEnv("recorded", recorded_store, budget_epochs=100)
    plain.reset(seed=0, options={"task": TASK.key()})
    before = step(plain, ix(DEFAULT))[4]
    assert result.answered_config == before.answered_config.with_family("mlp")
    assert result.curve == before.curve and result.exact == before.exact


# ------------------------------------------------- what a searching policy sees


def test_history_features_hold_the_budget_size_and_the_best_trials_best_first(recorded_store):
    from rlhpo.envs.hpo_env import history_names

    env = recorded(recorded_store, tasks=[TASK.key()])
    env.reset(seed=0)
    k, width = 2, len(SPACE.dims) + 2
    first = env.history_features(k)
    assert first.shape == (len(history_names(SPACE, k)),) == (1 + k * width,)
    assert first[0] == pytest.approx(np.log1p(3) / np.log1p(30)) and not first[1:].any()  # 3 FTE, no trial yet
    scores = []
    for config in [DEFAULT, dataclasses.replace(DEFAULT, learning_rate=0.1), dataclasses.replace(DEFAULT, units=32)]:
        *_, result = step(env, ix(config))
        scores.append(result.score)
        features = env.history_features(k)
    best = sorted(scores, reverse=True)[:2]
    assert [features[1 + i * width + width - 2] for i in range(2)] == pytest.approx(best)
    assert np.all(features[1:] >= -1) and np.all(features <= 1)


def test_a_reset_may_set_one_episodes_budget(recorded_store):
    env = recorded(recorded_store, tasks=[TASK.key()], budget_epochs=27)
    env.reset(seed=0, options={"budget_epochs": 9})
    assert (env.budget_epochs, env.budget_remaining) == (9, 9)
    *_, terminated, _, result = step(env, ix(DEFAULT))
    assert terminated and result.budget_used == 9
    env.reset(seed=1)
    assert env.budget_epochs == 27  # the next episode has the env's own budget again
    with pytest.raises(RlhpoError, match="budget_epochs must be at least the smallest epochs choice"):
        env.reset(options={"budget_epochs": 0})


def test_drawn_budgets_and_the_history_observation_stay_in_their_spaces(recorded_store):
    from stable_baselines3.common.env_checker import check_env

    from rlhpo.agents.policy import DrawnBudget, HistoryObservation

    def make(seed: int) -> gym.Env:
        return HistoryObservation(DrawnBudget(recorded(recorded_store, tasks=[TASK.key()]), 1.0, 30.0, seed=seed), 3)

    env = make(0)
    check_env(env, warn=False)
    budgets = []
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        assert env.observation_space.contains(obs)
        budgets.append(env.unwrapped.budget_epochs)
        terminated = False
        while not terminated:
            obs, _, terminated, _, _ = env.step(env.unwrapped.sample_action(np.random.default_rng(episode)))
            assert env.observation_space.contains(obs)
    assert min(budgets) >= 9 and max(budgets) <= 270 and len(set(budgets)) > 5
    assert [make(1).reset(seed=s)[0].tolist() for s in range(3)] == [
        make(2).reset(seed=s)[0].tolist() for s in range(3)
    ]
