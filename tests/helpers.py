"""Tiny, real artefacts shared by the agent tests: a narrowed space, a recorded store, a trained policy.

Everything is built with real training on tiny real tasks (digits bundled with scikit-learn,
trec from ``$RLHPO_DATA_DIR``) and cached once per test session under pytest's base temp
folder, so test modules that need them share one copy. Because of trec, the store, the settings
and the policy need data: the fixtures built on them request ``data_dir`` (see conftest.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rlhpo.agents.settings import EvalSettings, PPOSettings, TrainAgentSettings
from rlhpo.collect import CollectSettings, InlineExecutor, InstanceGroup, collect
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.space import load_search_space
from rlhpo.store import CurveStore
from rlhpo.tasks.features import FAMILIES
from rlhpo.tasks.task import Task

# Two learning rates, two batch sizes, two optimizers, epochs 1 or 3: 8 configs, all recorded.
TINY_SPACE = """\
choices:
  learning_rate: [1.0e-3, 1.0e-2]
  batch_size: [32, 64]
  epochs: [1, 3]
  dropout: [0.0]
  optimizer: [adam, sgd]
  weight_decay: [0.0]
  num_layers: [1]
  units: [32]
default: {learning_rate: 1.0e-3, batch_size: 32, epochs: 3, dropout: 0.0, optimizer: adam,
          weight_decay: 0.0, num_layers: 1, units: 32}
"""
# The keys `rlhpo train --json` promises (issue 2); `rlhpo tune --json` has them too.
TRAIN_JSON_KEYS = frozenset(
    {"task", "model", "config", "curve", "test_accuracy", "test_macro_f1", "val_loss", "seconds", "diverged"}
)
DIGITS = Task("digits", n_train=200)
TREC = Task("trec", family="gru", n_train=200)  # the held-out dataset of the tiny runs


def _tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "tiny"
    path.mkdir(exist_ok=True)
    return path


def tiny_space_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _tiny_dir(tmp_path_factory) / "space.yaml"
    if not path.exists():
        path.write_text(TINY_SPACE)
    return path


def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every config of the tiny space at 3 epochs on digits (task seeds 0 and 1) and trec.

    trec is read from ``$RLHPO_DATA_DIR``: a test that uses this store needs data (request the
    ``data_dir`` fixture, or mark it ``needs_data``).
    """
    path = _tiny_dir(tmp_path_factory) / "store.sqlite"
    if not path.exists():
        import torch

        space = load_search_space(tiny_space_path(tmp_path_factory))
        settings = CollectSettings(
            instances=[
                InstanceGroup(datasets=["digits"], n_train=[200], seeds=[0, 1]),
                InstanceGroup(datasets=["trec"], n_train=[200], families=["gru"]),
            ],
            configs=8,
        )
        building = path.with_suffix(".building.sqlite")
        threads = torch.get_num_threads()
        try:
            collect(settings, building, space=space, executor=InlineExecutor(), progress=False)
        finally:
            torch.set_num_threads(threads)
        building.rename(path)
    return path


def tiny_settings(tmp_path_factory: pytest.TempPathFactory, **changes: object) -> TrainAgentSettings:
    """A few hundred PPO steps on the tiny store, trec held out, budget 2 FTE (6 epochs).

    The tiny store records trec, so it needs ``$RLHPO_DATA_DIR`` (tests that call this carry
    ``needs_data``); a ``store=`` change is taken as is and builds nothing.
    """
    store = changes.pop("store") if "store" in changes else str(tiny_store(tmp_path_factory))
    settings = TrainAgentSettings(
        store=store,
        space=str(tiny_space_path(tmp_path_factory)),
        exclude_datasets=("trec",),
        budget_fte=2.0,
        total_steps=256,
        checkpoint_every=128,
        seed=0,
        ppo=PPOSettings(n_envs=2, n_steps=32, batch_size=32, n_epochs=2, net_arch=(16, 16)),
        evaluation=EvalSettings(episodes=2),
    )
    return dataclasses.replace(settings, **changes)


def tiny_policy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one tiny ``train-agent`` run (its policy.zip, rollouts.jsonl, ...)."""
    from rlhpo.agents.meta_train import train_agent

    runs = _tiny_dir(tmp_path_factory) / "runs"
    run_dir = runs / "policy"
    if not (run_dir / "summary.json").exists():
        train_agent(tiny_settings(tmp_path_factory), run_name="policy", runs_dir=runs, argv=["test"], progress=False)
    return run_dir


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Training in the test process uses one torch thread, as collect's workers do (the cores are shared).

    Modules that train import this fixture (``from helpers import one_torch_thread``).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def interrupt_tune_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make ``rlhpo tune`` get a Ctrl-C as trial ``step`` is reported (a user's Ctrl-C mid-tune)."""
    from rlhpo.agents import tune as tune_module

    real_line = tune_module.trial_line

    def interrupt(t: dict) -> str:
        if t["step"] == step:
            raise KeyboardInterrupt
        return real_line(t)

    monkeypatch.setattr(tune_module, "trial_line", interrupt)


def slice_shipped_store(
    path: Path, keys: tuple[str, ...] = (), pins: dict[str, str] | None = None, leave_out: set[str] | None = None
) -> Path:
    """A store of some of the shipped meta-dataset's task instances (copied, nothing trained).

    ``keys``: instances copied as they are (their training seed 0 runs), less the runs of the config
    keys in ``leave_out``. ``pins``: ``{key: family}``, each instance written as a store recorded
    before the family was searched would hold it: the task pins ``family`` (its key and ``family_*``
    meta-feature say so), and its runs are the instance's runs of that family, their configs naming
    no family. The shipped instances all leave the family open; the pinned ones keep the code paths
    for older stores tested.
    """
    leave_out = leave_out or set()
    with CurveStore(shipped_file(SHIPPED_STORE), readonly=True) as src, CurveStore(path) as dst:
        for key in keys:
            dst.put_task(src.task(key))
            for run in (r for r in src.runs(key, 0) if r.config.key() not in leave_out):
                dst.put_run(key, run.config, run.seed, run.curve, max_epochs=run.max_epochs)
        for key, family in (pins or {}).items():
            record = src.task(key)
            features = {**record.meta_features, **{f"family_{f}": float(f == family) for f in FAMILIES}}
            task = dataclasses.replace(record.task, family=family)
            pinned = dataclasses.replace(record, task=task, family=family, meta_features=features)
            dst.put_task(pinned)
            for run in (r for r in src.runs(key, 0) if r.config.family == family):
                dst.put_run(pinned.key, run.config.with_family(None), run.seed, run.curve, max_epochs=run.max_epochs)
    return path
