"""Averaging a tune's best trials (rlhpo.ensemble): the rule that picks the members, and tune --ensemble."""

from __future__ import annotations

import pytest
import torch
from helpers import one_torch_thread  # noqa: F401 (an autouse fixture)

from rlhpo.agents.tune import tune
from rlhpo.ensemble import select
from rlhpo.tasks.task import Task


def _probs(correct: list[bool], y: torch.Tensor, confidence: float = 0.9) -> torch.Tensor:
    """Two-class probabilities that put ``confidence`` on the true class where ``correct``, else on the other."""
    p = torch.full((len(y), 2), 1 - confidence, dtype=torch.float64)
    for i, (ok, label) in enumerate(zip(correct, y.tolist(), strict=True)):
        p[i, label if ok else 1 - label] = confidence
    return p


def test_the_prefix_with_the_best_validation_accuracy_is_chosen_and_the_test_split_only_reports():
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    # Each model errs on one example, at a different one: any two of them average to a tie (0.5) there,
    # argmax takes class 0, so the pair is right where the truth is 0; all three are right everywhere.
    a = _probs([True, False, True, True, True, True], y)
    b = _probs([True, True, True, False, True, True], y)
    c = _probs([True, True, True, True, True, False], y)
    result = select([a, b, c], [a, b, c], y, y, n_classes=2)
    assert [p.size for p in result.prefixes] == [1, 2, 3]
    assert [round(p.val_accuracy, 4) for p in result.prefixes] == [0.8333, 0.6667, 1.0]
    assert result.chosen == 3 and result.best.test.accuracy == 1.0
    # The same validation predictions with other test predictions: the same choice.
    assert select([a, b, c], [c, c, c], y, y, n_classes=2).chosen == 3


def test_a_tie_on_validation_keeps_the_smaller_ensemble_and_members_are_capped():
    y = torch.tensor([0, 1, 0, 1])
    right = _probs([True] * 4, y)
    result = select([right] * 5, [right] * 5, y, y, n_classes=2, max_members=3)
    assert len(result.prefixes) == 3 and result.chosen == 1


def test_select_needs_matching_predictions():
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError):
        select([], [], y, y, n_classes=2)


def test_tune_ensemble_averages_the_final_model_with_the_other_full_trainings(tmp_path):
    summary = tune(Task("digits", n_train=300), budget_fte=3.0, runs_dir=tmp_path, ensemble=True)
    ensemble = summary["ensemble"]
    full = {
        tuple(sorted((k, v) for k, v in t["config"].items() if k != "epochs"))
        for t in summary["trials"]
        if t["epochs"] == summary["config"]["epochs"] and not t["diverged"]
    }
    assert ensemble["candidates"] == len(full) >= 2  # the shipped policy trains its digits trials in full
    assert len(ensemble["prefixes"]) == min(3, len(full))
    alone = ensemble["prefixes"][0]
    assert alone["test_accuracy"] == summary["test_accuracy"]  # the first member is the tune's own model
    assert alone["val_accuracy"] == summary["curve"][-1]["val_accuracy"]
    best = max(ensemble["prefixes"], key=lambda p: (p["val_accuracy"], -p["size"]))
    assert ensemble["chosen"] == best["size"] and ensemble["test_accuracy"] == best["test_accuracy"]
    assert tune(Task("digits", n_train=300), budget_fte=1.0, runs_dir=tmp_path)["ensemble"] is None


def test_tune_cli_reports_the_ensemble_after_the_chosen_config(tmp_path):
    from click.testing import CliRunner

    from rlhpo.cli import main

    args = ["tune", "--task", "digits", "--n-train", "200", "--budget", "1", "--ensemble", "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ensemble of the best 1 of 1 full trainings"))
    assert lines[at - 1].startswith("test accuracy")  # right under the chosen config's own figures
