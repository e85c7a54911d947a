"""rlhpo collect: the config design, drawn instances, settings, resuming, Ctrl-C and SIGKILL, one collect per store."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import rlhpo.collect
import rlhpo.tasks
from rlhpo.cli import main
from rlhpo.collect import (
    CollectSettings,
    InlineExecutor,
    InstanceGroup,
    collect,
    design_configs,
    load_collect_settings,
    plan_items,
    record_tasks,
    retrain_family,
    task_designs,
)
from rlhpo.errors import RlhpoError
from rlhpo.space import HYPERPARAMETERS, Config, load_search_space
from rlhpo.store import CurveStore, TaskRecord, store_rows, stored_runs
from rlhpo.tasks.task import Task
from rlhpo.training import Curve, EpochRecord

SPACE = load_search_space()


# ------------------------------------------------------------------- sample


def test_the_design_is_distinct_seeded_prefix_stable_and_starts_with_the_default():
    configs = design_configs(SPACE, 64, seed=3)
    assert configs[0] == SPACE.default.with_epochs(SPACE.max_epochs)
    assert len({c.key() for c in configs}) == 64
    assert all(c.epochs == SPACE.max_epochs and c.family is None for c in configs)
    for h in HYPERPARAMETERS:  # a Sobol sequence covers every choice of every hyperparameter
        if h != "epochs":
            assert {getattr(c, h) for c in configs} == set(SPACE.choices[h]), h
    assert design_configs(SPACE, 64, seed=3) == configs
    assert design_configs(SPACE, 64, seed=4) != configs
    assert design_configs(SPACE, 300, seed=3)[:64] == configs  # more configs only add


def test_every_modality_walks_the_same_design_with_its_own_families():
    text, image = (
        design_configs(SPACE, 200, seed=0, modality="text"),
        design_configs(SPACE, 200, seed=0, modality="image"),
    )
    assert text[0] == SPACE.default_config("text").with_epochs(SPACE.max_epochs)
    assert image[0].family == SPACE.default_families["image"]
    assert [c.with_family(None) for c in text] == [c.with_family(None) for c in image]  # matched
    assert [c.with_family(None) for c in text] == design_configs(SPACE, 200, seed=0)
    counts = Counter(c.family for c in text[1:])
    assert set(counts) == set(SPACE.family_choices("text"))
    assert max(counts.values()) - min(counts.values()) <= 3  # balanced, as a Sobol coordinate is
    image_counts = Counter(c.family for c in image[1:])
    assert abs(image_counts["cnn"] - image_counts["mlp"]) <= 3


def test_asking_for_more_configs_than_the_space_holds_is_an_error():
    tiny = load_search_space()
    n_distinct = math.prod(len(tiny.choices[h]) for h in HYPERPARAMETERS if h != "epochs")
    with pytest.raises(RlhpoError, match=f"only {n_distinct} distinct configs"):
        design_configs(tiny, n_distinct + 1, seed=0)


# ----------------------------------------------------------------- settings


def test_the_shipped_settings_load_and_expand_into_task_instances():
    settings = load_collect_settings()
    plan = settings.plan()
    assert plan and all(n >= 1 for n in plan.values())
    assert {t.dataset for t in plan} >= {"mnist", "cifar10", "imdb", "trec", "ag_news", "digits"}
    assert {t.dataset for t in settings.tasks(["trec"])} == {"trec"}
    assert sum(1 for t in plan if t.dataset != "ag_news") >= 100  # the meta-training instances
    assert sum(1 for t in plan if t.dataset == "ag_news") >= 5  # held out, recorded to judge on
    assert settings.plan() == plan  # drawn from the seed: the same on every machine
    assert set(settings.with_configs(5).plan().values()) == {5}
    short = InstanceGroup(datasets=["imdb"], families=["gru", "lstm"], n_train=[500], max_length=64)
    assert [t.key() for t in short.tasks()] == ["imdb/gru/n500/call/s0/L64", "imdb/lstm/n500/call/s0/L64"]


def test_a_family_may_record_deeper_in_the_design_than_the_others(tmp_path):
    group = InstanceGroup(datasets=["mnist"], n_train=[250], configs=4, family_configs={"mlp": 12})
    settings = CollectSettings(instances=[group, InstanceGroup(datasets=["cifar10"], n_train=[250], configs=4)])
    mnist, cifar = settings.tasks()
    assert settings.family_depths() == {mnist: {"mlp": 12}}
    assert settings.family_depths(["cifar10"]) == {}
    meta = {f"modality_{m}": float(m == "image") for m in ("image", "text", "tabular")}
    with CurveStore(tmp_path / "s.sqlite") as store:
        for task in (mnist, cifar):
            store.put_task(TaskRecord(task, "cnn", 250, 10, meta))
        plan = settings.plan()
        lengths = {task: max([n, *settings.family_depths().get(task, {}).values()]) for task, n in plan.items()}
        designs = task_designs(store, lengths, SPACE, settings.seed, settings.families())
        items, _ = plan_items(
            store, designs, 0, counts=plan, family_depths=settings.family_depths(), only_families=None
        )
    design = design_configs(SPACE, 12, seed=0, modality="image")
    assert designs[mnist] == design and designs[cifar] == design[:4]  # one design, a longer prefix
    by_task = {t: [i.config for i in items if i.task == t] for t in (mnist, cifar)}
    assert by_task[cifar] == design[:4]
    # mnist: every family's configs among the first 4, then only mlp's up to the 12th, in design order
    assert by_task[mnist] == design[:4] + [c for c in design[4:] if c.family == "mlp"]
    assert {c.family for c in design[4:]} == {"cnn", "mlp"}  # so the filter had something to leave out


def test_the_shipped_plan_records_bow_deeper_on_every_text_instance():
    settings = load_collect_settings()
    plan, depths = settings.plan(), settings.family_depths()
    text = {t for t in plan if t.dataset in {"trec", "trec_fine", "imdb", "ag_news"}}
    assert set(depths) == text and all(depths[t] == {"bow": 640} and plan[t] < 640 for t in text)


def test_a_group_may_record_fewer_configs_the_first_of_the_same_sample(tmp_path):
    cheap = InstanceGroup(datasets=["digits"], n_train=[150])
    costly = InstanceGroup(datasets=["digits"], n_train=[160], configs=2)
    settings = CollectSettings(instances=[cheap, costly], configs=4)
    assert list(settings.plan().values()) == [4, 2]
    path = tmp_path / "s.sqlite"
    result = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (result.runs, result.trained) == (6, 6)
    store = CurveStore(path)
    first_two = {c.key() for c in design_configs(SPACE, 2, seed=0, modality="tabular")}
    assert {r.config.key() for r in store.runs(Task("digits", n_train=160).key(), 0)} == first_two


def test_a_drawn_group_is_deterministic_balanced_and_distinct():
    group = InstanceGroup(datasets=["mnist", "cifar10", "trec"], n_train=[250, 500, None], draw=30, p_subset=0.5)
    settings = CollectSettings(instances=[group, dataclasses.replace(group, datasets=["trec"], draw=4)])
    plan = settings.plan()
    assert list(plan) == list(CollectSettings(instances=settings.instances).plan())  # same seed, same instances
    assert list(plan) != list(dataclasses.replace(settings, seed=1).plan())
    first = group.tasks(np.random.default_rng([0, 0]))
    assert Counter(t.dataset for t in first) == {"mnist": 10, "cifar10": 10, "trec": 10}
    assert Counter(t.n_train for t in first) == {250: 10, 500: 10, None: 10}
    assert len(plan) == 34 and all(t.family is None for t in plan)  # distinct instances, family open
    subsets = [t for t in first if t.classes]
    n_classes = {"mnist": 10, "cifar10": 10, "trec": 6}
    assert 5 <= len(subsets) <= 25  # p_subset 0.5 of 30
    assert all(2 <= len(t.classes) < n_classes[t.dataset] for t in subsets)


def test_collect_goes_breadth_first_and_records_every_nth_config_with_a_second_seed(tmp_path):
    settings = CollectSettings(
        instances=[
            InstanceGroup(datasets=["digits"], n_train=[150, 160]),
            InstanceGroup(datasets=["digits"], n_train=[170], configs=1),
        ],
        configs=3,
        noise_every=2,
    )
    with CurveStore(tmp_path / "s.sqlite") as store:
        plan = {task: n for task, n in settings.plan().items()}
        record_tasks(store, plan)
        designs = task_designs(store, plan, SPACE, settings.seed, settings.families())
        items, recorded = plan_items(store, designs, settings.train_seed, noise_every=2)
    assert not recorded
    order = [(item.task.n_train, designs[item.task].index(item.config), item.seed) for item in items]
    assert order == [
        (150, 0, 0),
        (150, 0, 1),
        (160, 0, 0),
        (160, 0, 1),
        (170, 0, 0),
        (170, 0, 1),  # config 1 of each, both seeds
        (150, 1, 0),
        (160, 1, 0),
        (150, 2, 0),
        (150, 2, 1),
        (160, 2, 0),
        (160, 2, 1),
    ]
    assert all(item.config.family == "mlp" for item in items)  # digits is tabular: the design's only family


def test_bad_settings_are_clear_errors(tmp_path):
    path = tmp_path / "collect.yaml"
    path.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"], "n_trian": [100]}]}))
    with pytest.raises(RlhpoError, match="n_trian.*Did you mean 'n_train'"):
        load_collect_settings(path)
    path.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"]}], "config": 5}))
    with pytest.raises(RlhpoError, match="Did you mean 'configs'"):
        load_collect_settings(path)
    settings = CollectSettings(instances=[InstanceGroup(datasets=["digits"])])
    with pytest.raises(RlhpoError, match="'mnist' is not in the collect settings"):
        settings.tasks(["mnist"])
    with pytest.raises(RlhpoError, match="at least 1 config"):
        CollectSettings(instances=[InstanceGroup(datasets=["digits"])], configs=0)
    path.write_text(yaml.safe_dump({"instances": [{"datasets": ["imdb"], "family_configs": {"bag": 640}}]}))
    with pytest.raises(RlhpoError, match="family_configs must map model families .*'bag'"):
        load_collect_settings(path)


RECIPE = {
    "family": "mlp",
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "batch_size": 16,
    "dropout": 0.0,
    "weight_decay": 0.0,
    "num_layers": 1,
    "units": 64,
}


def test_recipes_are_recorded_first_on_every_instance_of_their_modality_that_leaves_the_family_open(tmp_path):
    settings = CollectSettings(
        instances=[
            InstanceGroup(datasets=["digits"], n_train=[150, 160]),
            InstanceGroup(datasets=["digits"], n_train=[170], families=["mlp"]),  # pinned: no recipes
        ],
        configs=2,
        recipes={"tabular": [RECIPE], "text": [{**RECIPE, "family": "bow"}]},
    )
    path = tmp_path / "s.sqlite"
    first = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (first.trained, first.failed) == (2 + 2 + 2 + 2, [])  # the design on all 3, the recipe on 2
    recipe = Config(epochs=SPACE.max_epochs, **RECIPE)
    with sqlite3.connect(path) as conn:
        order = [
            (key.split("/")[2], config_key)
            for key, config_key in conn.execute("SELECT task_key, config_key FROM runs ORDER BY rowid")
        ]
    assert order[:2] == [("n150", recipe.key()), ("n160", recipe.key())]  # before any design config
    assert ("n170", recipe.key()) not in order
    store = CurveStore(path)
    run = store.get_run(settings.tasks()[0].key(), recipe, 0)
    assert run is not None and run.config == recipe and len(run.curve.epochs) == SPACE.max_epochs
    again = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (again.trained, again.skipped) == (0, 8)


def test_a_recorded_recipe_that_is_also_a_design_config_counts_once(tmp_path):
    path = tmp_path / "s.sqlite"
    plain = CollectSettings(instances=[InstanceGroup(datasets=["digits"], n_train=[150])], configs=2)
    first = collect(plain, path, executor=InlineExecutor(), progress=False)
    with CurveStore(path) as store:
        design_config = store.runs(plain.tasks()[0].key(), plain.train_seed)[0].config
    recipe = {k: v for k, v in design_config.to_dict().items() if k != "epochs"}
    again = collect(
        dataclasses.replace(plain, recipes={"tabular": [recipe]}), path, executor=InlineExecutor(), progress=False
    )
    assert (again.trained, again.runs, again.skipped) == (0, first.trained, first.trained)


def test_recipes_outside_the_space_or_of_another_modality_are_clear_errors(tmp_path):
    def settings(recipe: dict, modality: str = "tabular") -> CollectSettings:
        return CollectSettings(instances=[InstanceGroup(datasets=["digits"])], recipes={modality: [recipe]})

    with pytest.raises(RlhpoError, match=r"recipes.tabular\[0\] is not in the search space.*learning_rate=0.5"):
        settings({**RECIPE, "learning_rate": 0.5}).recipe_configs(SPACE, "tabular")
    with pytest.raises(RlhpoError, match=r"recipes.tabular\[0\].*family='bow' is not one of the choices \['mlp'\]"):
        settings({**RECIPE, "family": "bow"}).recipe_configs(SPACE, "tabular")
    with pytest.raises(RlhpoError, match=r"recipes.tabular\[0\] must give exactly .*units, family"):
        settings({k: v for k, v in RECIPE.items() if k != "units"}).recipe_configs(SPACE, "tabular")
    bad_text = settings({**RECIPE, "family": "gru", "learning_rate": 0.5}, modality="text")  # no text instance
    with pytest.raises(RlhpoError, match=r"recipes.text\[0\] is not in the search space"):
        collect(bad_text, tmp_path / "s.sqlite", executor=InlineExecutor(), progress=False)
    assert not (tmp_path / "s.sqlite").exists()  # refused before any store or training
    path = tmp_path / "collect.yaml"
    path.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"]}], "recipes": {"txt": [RECIPE]}}))
    with pytest.raises(RlhpoError, match="recipes must map a modality \\(image, text, tabular\\)"):
        load_collect_settings(path)


def test_the_shipped_recipes_are_in_the_shipped_space():
    settings = load_collect_settings()
    assert [c.family for c in settings.recipe_configs(SPACE, "text")] == ["bow"]
    assert settings.recipe_configs(SPACE, "image") == []


def test_an_unknown_dataset_fails_before_any_training(tmp_path):
    settings = CollectSettings(instances=[InstanceGroup(datasets=["mnsit"])], configs=2)
    with pytest.raises(RlhpoError, match="Did you mean 'mnist'"):
        collect(settings, tmp_path / "s.sqlite", executor=InlineExecutor(), progress=False)


# ------------------------------------------------------------ collect itself


def test_collect_records_every_config_on_every_task_and_a_rerun_trains_nothing(tmp_path):
    settings = CollectSettings(instances=[InstanceGroup(datasets=["digits"], n_train=[150], seeds=[0, 1])], configs=3)
    path = tmp_path / "s.sqlite"
    first = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (first.trained, first.skipped, first.failed) == (6, 0, [])
    store = CurveStore(path)
    assert store.count()["runs"] == 6
    for task in settings.tasks():
        assert store.task(task.key()).n_classes == 10
        for run in store.runs(task.key(), 0):
            assert run.max_epochs == 9 and (len(run.curve.epochs) == 9 or run.curve.diverged)
    again = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (again.trained, again.skipped) == (0, 6)
    more = collect(
        CollectSettings(instances=settings.instances, configs=4), path, executor=InlineExecutor(), progress=False
    )
    assert (more.trained, more.skipped) == (2, 6)  # a larger sample keeps the smaller one's configs


def test_an_instance_may_record_every_config_with_several_families(tmp_path, data_dir):
    group = InstanceGroup(
        datasets=["trec"], n_train=[100], max_length=16, families=[None], config_families=["bow", "textcnn"]
    )
    settings = CollectSettings(instances=[group], configs=2)
    path = tmp_path / "s.sqlite"
    first = collect(settings, path, executor=InlineExecutor(), progress=False, data_dir=data_dir)
    assert (first.trained, first.failed) == (4, [])
    runs = CurveStore(path).runs(settings.tasks()[0].key(), 0)
    assert Counter(r.config.family for r in runs) == {"bow": 2, "textcnn": 2}
    assert len({r.config.with_family(None).key() for r in runs}) == 2  # the same two configs, each family
    again = collect(settings, path, executor=InlineExecutor(), progress=False, data_dir=data_dir)
    assert (again.trained, again.skipped) == (0, 4)


def test_collect_may_record_some_families_first_and_the_rest_later(tmp_path, data_dir):
    group = InstanceGroup(
        datasets=["trec"], n_train=[100], max_length=16, families=[None], config_families=["bow", "textcnn"]
    )
    settings = CollectSettings(instances=[group], configs=2)
    path = tmp_path / "s.sqlite"
    cheap = collect(settings, path, executor=InlineExecutor(), progress=False, data_dir=data_dir, only_families=["bow"])
    assert (cheap.trained, cheap.skipped, cheap.failed) == (2, 0, [])
    runs = CurveStore(path).runs(settings.tasks()[0].key(), 0)
    assert Counter(r.config.family for r in runs) == {"bow": 2}
    rest = collect(settings, path, executor=InlineExecutor(), progress=False, data_dir=data_dir)
    assert (rest.trained, rest.skipped) == (2, 2)
    result = CliRunner().invoke(main, ["collect", "--families", "bwo", "--store", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 1 and "Unknown model family 'bwo'" in result.output


def test_an_open_family_instance_copies_the_runs_of_its_pinned_twin(tmp_path):
    path = tmp_path / "s.sqlite"
    pinned = CollectSettings(instances=[InstanceGroup(datasets=["digits"], n_train=[150], families=["mlp"])], configs=3)
    collect(pinned, path, executor=InlineExecutor(), progress=False)
    group = InstanceGroup(datasets=["digits"], n_train=[150], families=[None], config_families=["mlp"])
    result = collect(CollectSettings(instances=[group], configs=3), path, executor=InlineExecutor(), progress=False)
    assert (result.trained, result.failed) == (0, [])  # the same trainings: copied, not trained again
    store = CurveStore(path)
    twin = {r.config.key(): r.curve for r in store.runs(pinned.tasks()[0].key(), 0)}
    runs = store.runs(Task("digits", n_train=150).key(), 0)
    assert len(runs) == 3 and all(r.config.family == "mlp" for r in runs)
    assert all(r.curve == twin[r.config.with_family(None).key()] for r in runs)


def test_retrain_family_trains_a_familys_runs_again_into_a_new_store_and_resumes(tmp_path):
    """Stale curves of one family are trained again (same instance, config, seed); the source stays as it was."""
    source, out = tmp_path / "s.sqlite", tmp_path / "out.sqlite"
    settings = CollectSettings(
        instances=[InstanceGroup(datasets=["digits"], n_train=[150], families=["mlp"])], configs=3
    )
    collect(settings, source, executor=InlineExecutor(), progress=False)
    key = settings.tasks()[0].key()
    fresh = {r.config.key(): [e.val_accuracy for e in r.curve.epochs] for r in CurveStore(source).runs(key, 0)}
    described = CurveStore(source).task(key)
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE epochs SET val_accuracy = 0.0")  # curves of a model that has since changed
        conn.execute("UPDATE tasks SET meta_json = '{}'")  # and a description of the task since changed

    result = retrain_family(source, out, "mlp", executor=InlineExecutor(), progress=False)
    assert (result.runs, result.trained, result.skipped, result.failed) == (3, 3, 0, [])
    retrained = {r.config.key(): [e.val_accuracy for e in r.curve.epochs] for r in CurveStore(out).runs(key, 0)}
    assert retrained == fresh
    assert CurveStore(out).task(key) == described  # described as loaded today
    assert all(e.val_accuracy == 0.0 for r in CurveStore(source).runs(key, 0) for e in r.curve.epochs)
    again = retrain_family(source, out, "mlp", executor=InlineExecutor(), progress=False)
    assert (again.trained, again.skipped) == (0, 3)
    other = retrain_family(source, tmp_path / "cnn.sqlite", "cnn", executor=InlineExecutor(), progress=False)
    assert (other.runs, other.trained) == (0, 0) and CurveStore(tmp_path / "cnn.sqlite").count()["runs"] == 3


def test_config_families_need_instances_that_leave_the_family_to_the_config(tmp_path):
    path = tmp_path / "collect.yaml"
    group = {"datasets": ["trec"], "families": ["gru"], "config_families": ["bow"]}
    path.write_text(yaml.safe_dump({"instances": [group]}))
    with pytest.raises(RlhpoError, match="config_families must be a non-empty list on instances that leave"):
        load_collect_settings(path)


def test_the_cli_collects_and_exports(tmp_path):
    instances = tmp_path / "collect.yaml"
    instances.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"], "n_train": [150]}], "configs": 2}))
    store = tmp_path / "s.sqlite"
    runner = CliRunner()
    result = runner.invoke(main, ["collect", "--instances", str(instances), "--store", str(store), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "trained 2" in result.output
    result = runner.invoke(main, ["store", "info", "--store", str(store)])
    assert "1 tasks, 2 runs, 18 epochs" in result.output
    result = runner.invoke(main, ["store", "export", "--store", str(store), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "curves.parquet").is_file()
    result = runner.invoke(main, ["store", "export", "--store", str(tmp_path / "no.sqlite"), "--out", "x"])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_collect_into_a_file_that_is_no_curve_store_is_refused_by_name(tmp_path):
    instances = tmp_path / "collect.yaml"
    instances.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"], "n_train": [150]}], "configs": 2}))
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    result = CliRunner().invoke(main, ["collect", "--instances", str(instances), "--store", str(readme)])
    assert result.exit_code == 1, result.output
    assert "README.md' is not an rlhpo curve store (SQLite): file is not a database" in result.output
    assert "Traceback" not in result.output
    assert readme.read_text() == "# notes\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "collect.yaml",
    ]


def test_runs_go_under_the_task_as_loaded(tmp_path, monkeypatch):
    # A loader whose data.task says the size it got: both tasks ask for more rows than digits
    # holds, so both are one task as loaded, recorded (and trained) once, under its real size.
    real = rlhpo.tasks.load_task

    def load_task(task: Task, data_dir: str | None = None) -> rlhpo.tasks.TaskData:
        data = real(task, data_dir=data_dir)
        return dataclasses.replace(data, task=task.replace(n_train=int(data.x_train.shape[0])))

    monkeypatch.setattr(rlhpo.tasks, "load_task", load_task)
    settings = CollectSettings(instances=[InstanceGroup(datasets=["digits"], n_train=[5000, 9000])], configs=2)
    path = tmp_path / "s.sqlite"
    first = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (first.tasks, first.trained, first.failed) == (1, 2, [])
    rows = load_task(Task("digits")).x_train.shape[0]
    store = CurveStore(path)
    assert [r.key for r in store.tasks(with_runs=True)] == [f"digits/default/n{rows}/call/s0"]
    assert store.tasks()[0].n_train == rows
    again = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (again.trained, again.skipped) == (0, 2)


def test_a_task_described_with_another_default_family_is_described_again(tmp_path, monkeypatch):
    # Text's default family changed from gru to bow once; instances described before said gru (and
    # family_gru = 1), while the same task loaded live says bow. collect describes them again.
    task = Task("digits", n_train=200)
    store = CurveStore(tmp_path / "s.sqlite")
    (fresh,) = record_tasks(store, {task: 1}).values()
    today = store.task(fresh.key())
    stale = dataclasses.replace(
        today, family="cnn", meta_features={**today.meta_features, "family_mlp": 0.0, "family_cnn": 1.0}
    )
    store.put_task(stale)
    config = load_search_space().default_config("tabular")
    store.put_run(today.key, config, 0, Curve([EpochRecord(1, 1.0, 1.0, 0.5, 0.5, 0.1)]), max_epochs=1)
    described = []
    real = rlhpo.collect.task_record
    monkeypatch.setattr(rlhpo.collect, "task_record", lambda t, d=None: described.append(t) or real(t, d))
    record_tasks(store, {task: 1})
    assert described == [task] and store.task(today.key) == today
    assert [r.config for r in store.runs(today.key, 0)] == [config.with_epochs(1)]  # its runs are kept
    record_tasks(store, {task: 1})  # described as today: not loaded again
    assert described == [task]
    # A task whose runs name no family trained the recorded one: it is left as it is.
    store.put_task(stale)
    store.put_run(
        today.key, config.with_family(None), 0, Curve([EpochRecord(1, 1.0, 1.0, 0.5, 0.5, 0.1)]), max_epochs=1
    )
    record_tasks(store, {task: 1})
    assert described == [task] and store.task(today.key) == stale


# ------------------------------------------------------------ one per store


HOLD_LOCK = """
import sys, time
from rlhpo.store import CurveStore
with CurveStore(sys.argv[1]).exclusive():
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_collect_on_one_store_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    instances = tmp_path / "collect.yaml"
    instances.write_text(yaml.safe_dump({"instances": [{"datasets": ["digits"], "n_train": [150]}], "configs": 2}))
    settings = load_collect_settings(instances)
    path = tmp_path / "s.sqlite"
    refused = rf"in use by another `rlhpo collect` \(PID {os.getpid()}, .*s\.sqlite\.lock\); wait for it to finish"
    with CurveStore(path) as held, held.exclusive():
        with pytest.raises(RlhpoError, match=refused):
            collect(settings, path, executor=InlineExecutor(), progress=False)
        assert held.count() == {"tasks": 0, "runs": 0, "epochs": 0}  # it planned and trained nothing

    # Another process holds it: the CLI says so in one line; once the holder is killed, it is free.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        cmd = ["collect", "--instances", str(instances), "--store", str(path), "--workers", "1"]
        result = CliRunner().invoke(main, cmd)
        assert result.exit_code == 1 and f"another `rlhpo collect` (PID {holder.pid}," in result.output
        assert "or pass another --store" in result.output and "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait(30)
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL
    done = collect(settings, path, executor=InlineExecutor(), progress=False)
    assert (done.trained, done.failed) == (2, [])


# ------------------------------------------------------- interrupt and resume


def _collect_cmd(instances: Path, store: Path, workers: int) -> list[str]:
    cli = "from rlhpo.cli import main; main()"
    return [sys.executable, "-c", cli, "collect", "--instances", str(instances), "--store", str(store)] + [
        "--workers",
        str(workers),
    ]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _run_until(cmd: list[str], store: Path, at_least: int, sig: int) -> int:
    """Start ``cmd``, wait until the store holds ``at_least`` runs, send ``sig``; return its exit code."""
    # A shell's background jobs start with SIGINT ignored, and Python then installs no Ctrl-C
    # handler; give the child the default disposition, as a terminal's foreground job has.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while stored_runs(store) < at_least:
            assert proc.poll() is None, f"collect ended before it was interrupted: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        workers = _children(proc.pid)
        proc.send_signal(sig)
        code = proc.wait(60)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "worker processes outlived their collect"
        return code
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()


def test_collect_interrupted_by_ctrl_c_then_killed_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path):
    instances = tmp_path / "collect.yaml"
    group = {"datasets": ["digits"], "n_train": [1000], "seeds": [0, 1]}
    instances.write_text(yaml.safe_dump({"instances": [group], "configs": 10}))
    total = 20
    reference, resumed = tmp_path / "reference.sqlite", tmp_path / "resumed.sqlite"
    # In this process, one run after the other: also shows the workers' curves are the same.
    collect(load_collect_settings(instances), reference, executor=InlineExecutor(), progress=False)
    assert stored_runs(reference) == total

    assert _run_until(_collect_cmd(instances, resumed, 2), resumed, 3, signal.SIGINT) == 130
    after_ctrl_c = stored_runs(resumed)
    assert after_ctrl_c < total
    assert _run_until(_collect_cmd(instances, resumed, 2), resumed, after_ctrl_c + 3, signal.SIGKILL) == -9
    assert stored_runs(resumed) < total
    done = subprocess.run(_collect_cmd(instances, resumed, 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already recorded" in done.stdout
    assert store_rows(resumed) == store_rows(reference)
    assert CurveStore(resumed).tasks()[0].task == Task("digits", n_train=1000)
