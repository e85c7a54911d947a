"""The trainer and the metrics: learning, determinism, divergence, test metrics, devices."""

import dataclasses
import json
import math
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from rlhpo.errors import RlhpoError
from rlhpo.metrics import accuracy, macro_f1, normalised_score
from rlhpo.space import Config
from rlhpo.tasks import BUILTINS, FAMILIES_BY_MODALITY, Task, TaskData, load_task
from rlhpo.training import Curve, batch_bounds, keep_freed_memory, reusable, train, train_final

# Trains well on digits in a few epochs.
GOOD = Config(
    learning_rate=3e-3, batch_size=32, epochs=3, dropout=0.1, optimizer="adam", weight_decay=0.0, num_layers=1, units=64
)
# Small and quick: one epoch of each family on each dataset.
SMALL = dataclasses.replace(GOOD, epochs=1, num_layers=1, units=32)
DATASETS = ("mnist", "cifar10", "imdb", "ag_news", "trec")
FAMILY_CASES = [(name, family) for name in DATASETS for family in FAMILIES_BY_MODALITY[BUILTINS[name].modality]]


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_task(Task("digits", n_train=600))


def _without_seconds(curve: Curve) -> dict:
    d = curve.to_dict()
    for e in d["epochs"]:
        e.pop("seconds")
    return d


def _all_finite(curve: Curve) -> bool:
    d = _without_seconds(curve)
    values = [v for e in d["epochs"] for v in e.values()] + list((d["test"] or {}).values())
    return all(math.isfinite(v) for v in values)


def test_a_good_config_learns_digits(digits):
    curve = train(digits, GOOD)
    assert [e.epoch for e in curve.epochs] == [1, 2, 3] and not curve.diverged
    last = curve.epochs[-1]
    assert last.val_accuracy > 0.85  # chance is 0.1
    assert last.val_loss < curve.epochs[0].val_loss
    assert curve.epochs[-1].train_loss < curve.epochs[0].train_loss
    assert all(e.seconds > 0 for e in curve.epochs)


@pytest.mark.needs_data
@pytest.mark.parametrize(("dataset", "family"), FAMILY_CASES)
def test_every_family_trains_on_every_dataset(dataset, family):
    data = load_task(Task(dataset, family, n_train=200))
    curve = train(data, SMALL)
    assert not curve.diverged and len(curve.epochs) == 1 and _all_finite(curve)
    record = curve.epochs[0]
    assert 0 < record.train_loss < 2 * math.log(data.n_classes)  # about chance after one small epoch, not blown up
    assert 0 <= record.val_accuracy <= 1 and 0 <= record.val_macro_f1 <= 1


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 3e-2), ("adam", 3e-3), ("adamw", 3e-3), ("rmsprop", 1e-3)])
def test_every_optimizer_learns(digits, optimizer, lr):
    curve = train(digits, dataclasses.replace(GOOD, optimizer=optimizer, learning_rate=lr), epochs=2)
    assert curve.epochs[-1].val_accuracy > 0.6


def test_a_resumed_run_is_the_longer_run(digits):
    config = dataclasses.replace(GOOD, dropout=0.5)  # dropout: the RNG state must carry over too
    whole = train(digits, config, epochs=3, seed=2)
    first = train(digits, config, epochs=1, seed=2, keep_state=True)
    state = torch.get_rng_state()
    seen = []
    rest = train(digits, config, epochs=3, seed=2, resume=first, on_epoch=seen.append)
    assert _without_seconds(rest) == _without_seconds(whole)
    assert [e.epoch for e in seen] == [2, 3]  # only the new epochs are trained and reported
    assert torch.equal(torch.get_rng_state(), state)
    assert rest.state is None and first.state is None  # taken over, and not kept unless asked
    with pytest.raises(RlhpoError, match="keep_state=True"):
        train(digits, config, epochs=3, seed=2, resume=first)


def test_same_seed_same_curve_and_global_rng_untouched(digits):
    config = dataclasses.replace(GOOD, dropout=0.5)  # dropout draws random numbers too
    state = torch.get_rng_state()
    a = train(digits, config, epochs=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = train(digits, config, epochs=2, seed=3)
    c = train(digits, config, epochs=2, seed=4)
    assert _without_seconds(a) == _without_seconds(b)
    assert _without_seconds(a) != _without_seconds(c)


_CURVE_IN_A_FRESH_PROCESS = """
import json, sys
import rlhpo.training as training
from rlhpo.space import Config
from rlhpo.tasks import Task, load_task
if sys.argv[1] == "default-allocator":
    training.keep_freed_memory = lambda: False
config = Config(learning_rate=0.01, batch_size=32, epochs=2, dropout=0.1, optimizer="adam", weight_decay=0.0,
                num_layers=2, units=64)
curve = training.train(load_task(Task("digits", n_train=300)), config, seed=1).to_dict()
print(json.dumps([{k: v for k, v in e.items() if k != "seconds"} for e in curve["epochs"]]))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_kept_freed_memory_changes_no_result():
    assert keep_freed_memory() and keep_freed_memory()  # applied, and again
    curves = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _CURVE_IN_A_FRESH_PROCESS, mode], capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )
        for mode in ("default-allocator", "kept")
    ]
    assert curves[0] == curves[1] and len(curves[0]) == 2


def test_a_callback_sees_each_epoch_and_cannot_change_the_run(digits):
    seen = []

    def record(epoch):
        seen.append(epoch)
        torch.rand(100)  # a callback drawing random numbers must not change later epochs

    curve = train(digits, GOOD, epochs=2, on_epoch=record)
    assert seen == curve.epochs
    assert _without_seconds(curve) == _without_seconds(train(digits, GOOD, epochs=2))


def test_a_huge_learning_rate_diverges_without_raising(digits):
    config = dataclasses.replace(GOOD, optimizer="sgd", learning_rate=1e6)  # outside the space: allowed
    curve = train(digits, config, epochs=3, evaluate_test=True)
    assert curve.diverged
    assert len(curve.epochs) < 3
    assert curve.test is not None and _all_finite(curve)
    # A diverged run reports the constant model's figures: class 0 for all, uniform probabilities.
    class0 = (digits.y_test == 0).double().mean().item()
    assert curve.test.accuracy == pytest.approx(class0)
    assert curve.test.loss == pytest.approx(math.log(10))


def test_evaluate_test_fills_test_metrics(digits):
    assert train(digits, GOOD, epochs=1).test is None
    curve = train(digits, GOOD, epochs=2, evaluate_test=True)
    assert curve.test is not None and _all_finite(curve)
    assert curve.test.accuracy > 0.6
    assert 0 < curve.test.macro_f1 <= 1 and curve.test.loss > 0


def test_the_final_training_of_a_kept_run_tests_its_model_instead_of_training_again(digits):
    config = dataclasses.replace(GOOD, epochs=2)
    kept = train(digits, config, keep_state=True)
    assert reusable(kept, config) and not reusable(kept, dataclasses.replace(GOOD, epochs=3))
    reused, fresh = train_final(digits, config, reuse=kept), train_final(digits, config)
    assert reused.test == fresh.test and reused.epochs == kept.epochs
    with pytest.raises(RlhpoError, match="not a finished run"):
        train_final(digits, dataclasses.replace(GOOD, epochs=3), reuse=kept)


def test_a_family_of_another_modality_is_an_error_that_names_the_valid_ones(digits):
    with pytest.raises(RlhpoError, match="family for tabular data 'gru'; expected one of mlp"):
        train(digits, dataclasses.replace(GOOD, epochs=1, family="gru"))
    assert len(train(digits, dataclasses.replace(GOOD, epochs=1, family="mlp")).epochs) == 1


def test_epochs_default_to_the_config(digits):
    assert len(train(digits, dataclasses.replace(GOOD, epochs=1)).epochs) == 1
    assert len(train(digits, dataclasses.replace(GOOD, epochs=1), epochs=2).epochs) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_an_unavailable_device_is_an_error(digits):
    with pytest.raises(RlhpoError, match="CUDA is not available"):
        train(digits, GOOD, device="cuda")
    with pytest.raises(RlhpoError, match="expected 'cpu'"):
        train(digits, GOOD, device="gpu0")


def test_batches_cover_every_example_once():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]  # no batch of one: BatchNorm cannot train on it
    assert batch_bounds(3, 32) == [(0, 3)]


def test_macro_f1_matches_sklearn_with_missing_classes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_classes = int(rng.integers(2, 8))
        labels = rng.integers(0, n_classes - 1, size=int(rng.integers(1, 40)))  # the last class is never true
        preds = rng.integers(0, n_classes, size=len(labels))
        expected = f1_score(labels, preds, average="macro", zero_division=0)
        assert macro_f1(torch.from_numpy(preds), torch.from_numpy(labels), n_classes) == pytest.approx(expected)
        assert macro_f1(preds, labels, n_classes) == pytest.approx(expected)  # numpy works too
        assert accuracy(preds, labels) == pytest.approx(np.mean(preds == labels))


def test_macro_f1_rejects_out_of_range_ids():
    with pytest.raises(RlhpoError, match="0..2"):
        macro_f1(np.array([0, 3]), np.array([0, 1]), 3)


def test_normalised_score_is_zero_at_chance_and_one_when_perfect():
    assert normalised_score(0.25, 4) == pytest.approx(0.0)
    assert normalised_score(1.0, 6) == pytest.approx(1.0)
    assert normalised_score(0.55, 10) == pytest.approx(0.5)
