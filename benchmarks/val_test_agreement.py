"""Does the validation split pick the config that tests best? ``bow`` configs and the SVM at full size.

``rlhpo tune`` chooses by validation accuracy (the split carved from the training set: 15%, at most
1,000 examples). This script trains a fixed set of ``bow`` configs at full fidelity on the tune pool
of each text dataset (the whole training split less that validation split, as tune sees it) and
reports each one's final validation and test accuracy, next to the TF-IDF + LinearSVC baseline of
``linear_baseline.py`` fitted on the same pool. It answers two questions about the gap between tune
and the linear baseline: would tune have passed the baseline had it tried a given config, and would
the validation split have told it so.

The configs: the three trials the shipped policy plays on every text task (``tune_text.md``), the
first config of the learned list on the matched store's text instances of 1,000 examples and more,
and configs found by hand that do well at full size (``linear_baseline.md``: Adam at 0.003; SGD at
0.1 and 0.03 with batch 16).

Usage (about 12 minutes for the three datasets on 2 cores)::

    RLHPO_DATA_DIR=<data folder> python benchmarks/val_test_agreement.py --out docs/benchmarks/val_test_agreement.md

``--design 385,524,633`` trains those configs of the matched design (``rlhpo collect``'s, text's
families) in place of the fixed set: e.g. the design's one-layer SGD ``bow`` configs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from linear_baseline import read_split, svm_accuracy, svm_predict  # noqa: E402

from rlhpo.collect import design_configs  # noqa: E402
from rlhpo.runs import config_text  # noqa: E402
from rlhpo.space import Config, load_search_space  # noqa: E402
from rlhpo.tasks import Task, load_task  # noqa: E402
from rlhpo.tasks.splits import split_indices  # noqa: E402
from rlhpo.training import train  # noqa: E402


def bow(optimizer: str, lr: float, bs: int, dropout: float, wd: float, layers: int, units: int) -> Config:
    return Config(
        learning_rate=lr,
        batch_size=bs,
        epochs=9,
        dropout=dropout,
        optimizer=optimizer,
        weight_decay=wd,
        num_layers=layers,
        units=units,
        family="bow",
    )


# (label, config); imdb's first trial has dropout 0.1 where the others have 0.25 (tune_text.md).
CONFIGS = [
    ("policy trial 1", bow("adamw", 0.001, 16, 0.25, 1e-3, 1, 64)),
    ("policy trial 2", bow("adamw", 0.01, 64, 0.1, 1e-3, 1, 64)),
    ("policy trial 3", bow("adamw", 0.01, 64, 0.5, 1e-3, 1, 64)),
    ("learned list, first", bow("rmsprop", 0.01, 64, 0.5, 1e-4, 1, 64)),
    ("hand: adam", bow("adam", 0.003, 32, 0.25, 1e-3, 1, 32)),
    ("hand: sgd 1x64", bow("sgd", 0.1, 16, 0.0, 0.0, 1, 64)),
    ("hand: sgd lr 0.03", bow("sgd", 0.03, 16, 0.0, 0.0, 1, 64)),
    ("hand: sgd 1x256", bow("sgd", 0.1, 16, 0.25, 0.0, 1, 256)),
]


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)]).numpy()


def paired_gap(correct: np.ndarray, baseline_correct: np.ndarray) -> str:
    """Accuracy difference to the baseline on the same test examples, with its standard error."""
    diff = correct.astype(float) - baseline_correct.astype(float)
    return f"{diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"


def dataset_section(name: str, seed: int, data_dir: Path, configs: list[tuple[str, Config]]) -> list[str]:
    started = time.perf_counter()
    x, y = read_split(data_dir, name, "train")
    x_test, y_test = read_split(data_dir, name, "test")
    pool, val = split_indices(y, seed, None)
    x_pool = [x[i] for i in pool]
    svm_val = svm_accuracy(x_pool, y[pool], [x[i] for i in val], y[val])
    svm_correct = svm_predict(x_pool, y[pool], x_test) == y_test
    svm_test = svm_correct.mean()
    print(f"{name}: SVM val {svm_val:.4f} test {svm_test:.4f}", flush=True)

    data = load_task(Task(name, seed=seed), data_dir=data_dir)
    if not np.array_equal(data.y_test.numpy(), y_test):
        raise SystemExit(f"{name}: the loaded task's test labels are not the parquet's, in order; cannot pair them")
    rows, vals, tests = [], [], []
    for label, config in configs:
        if name == "imdb" and label == "policy trial 1":
            config = Config(**{**config.to_dict(), "dropout": 0.1})
        curve = train(data, config, seed=seed, evaluate_test=True, keep_state=True)
        assert curve.test is not None
        val_acc = curve.epochs[-1].val_accuracy if curve.epochs else float("nan")
        # A diverged run keeps no model: its test metrics are those of zero logits (class 0 everywhere).
        correct = predict(curve.state.model, data.x_test) == y_test if curve.state else y_test == 0
        vals.append(val_acc)
        tests.append(curve.test.accuracy)
        rows.append(
            f"| {label} | `{config_text(config.to_dict())}` | {val_acc:.4f} | {curve.test.accuracy:.4f} | "
            f"{paired_gap(correct, svm_correct)} |"
        )
        print(f"{name}: {rows[-1]}", flush=True)
    picked = int(np.argmax(vals))
    rho = spearmanr(vals, tests).statistic
    minutes = (time.perf_counter() - started) / 60
    return [
        f"## {name}",
        "",
        f"Tune pool {len(pool)} examples, validation {len(val)}, test {len(y_test)}; {minutes:.1f} minutes.",
        "",
        "| config | | validation acc. | test acc. | test acc. - SVM's (paired s.e.) |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| TF-IDF + LinearSVC (the target) | `C=0.5`, uni- and bigrams | {svm_val:.4f} | {svm_test:.4f} | |",
        *rows,
        "",
        f"- Best validation: {configs[picked][0]} (val {vals[picked]:.4f}), test {tests[picked]:.4f}; "
        f"best test among the configs {max(tests):.4f}; the SVM {svm_test:.4f}.",
        f"- Spearman rank correlation of validation and test over the {len(configs)} configs: {rho:.2f}.",
        f"- Configs at or above the SVM on test: {sum(t >= svm_test for t in tests)}; of these, at or above the "
        f"SVM on validation too: {sum(t >= svm_test and v >= svm_val for v, t in zip(vals, tests))}.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="trec,ag_news,imdb")
    parser.add_argument("--seed", type=int, default=0, help="the tune seed: validation split and training seed")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--design", default=None, help="I,J,...: the matched design's text configs at these indices")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("needs --data-dir or RLHPO_DATA_DIR: the local parquet copies of the datasets")
    configs = CONFIGS
    if args.design:  # the design `rlhpo collect` records (configs/collect.yaml's seed), text's families
        indices = [int(i) for i in args.design.split(",")]
        design = design_configs(load_search_space(), 1 + max(indices), 0, "text")
        configs = [(f"design config {i}", design[i]) for i in indices]
    started = time.perf_counter()
    sections = [
        line for name in args.tasks.split(",") for line in dataset_section(name, args.seed, args.data_dir, configs)
    ]
    argv = f"--tasks {args.tasks} --seed {args.seed}" + (f" --design {args.design}" if args.design else "")
    text = "\n".join(
        [
            "# Validation against test: `bow` configs and the linear baseline at full size",
            "",
            f"Made by `python benchmarks/val_test_agreement.py {argv}` on {platform.node()} ({os.cpu_count()} CPU "
            f"cores, torch {torch.__version__}, {torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}, in "
            f"{(time.perf_counter() - started) / 60:.0f} minutes. Seed {args.seed}: the validation split and "
            "the training seed of `rlhpo tune --seed` with that seed. Every config: `bow`, 9 epochs; its "
            "final epoch's validation accuracy (what tune ranks by), its test accuracy, and its test accuracy "
            "less the SVM's on the same test examples, with the standard error of that paired difference "
            "(a gap within two of them is not one the test set can tell).",
            "",
            *sections,
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
