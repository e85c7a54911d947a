"""Linear baselines next to the text families: what a network tuned by rlhpo has to beat.

Prints Markdown tables:

1. **Text, linear**: TF-IDF of word unigrams and bigrams (``TfidfVectorizer(ngram_range=(1, 2),
   sublinear_tf=True)``) and ``LinearSVC(C=0.5)`` on ag_news, trec and imdb, read from
   ``<data-dir>/<name>/{train,test}.parquet`` (text and label columns from rlhpo's registry:
   ``text`` / ``label``, trec ``text`` / ``coarse_label``). Test accuracy when fit on the whole
   local train split, and when fit on the training pool rlhpo's tune uses (the train split less
   the validation split that :func:`rlhpo.tasks.splits.split_indices` carves, ``min(15%, 1000)``
   rows), mean and standard deviation over task seeds 0, 1, 2.
2. **Images, linear**: logistic regression (lbfgs, ``max_iter`` capped, C=1) on raw pixels,
   flattened and scaled to [0, 1], for mnist and cifar10, on the whole local train split.
3. **Text, networks**: the default config (``configs/search_space.yaml``) trained by
   :func:`rlhpo.training.train` on each text dataset at full local size (task seed 0) with each
   family asked for: test accuracy, macro-F1 and seconds.

    python benchmarks/linear_baseline.py --data-dir <data folder> --out docs/benchmarks/linear_baseline.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.svm import LinearSVC

from rlhpo.space import load_search_space
from rlhpo.tasks import BUILTINS, Task, load_task
from rlhpo.tasks.preprocess import decode_images
from rlhpo.tasks.splits import split_indices
from rlhpo.training import train

TEXT_DATASETS = ("ag_news", "trec", "imdb")
IMAGE_DATASETS = ("mnist", "cifar10")
TUNE_SEEDS = (0, 1, 2)
LOGREG_MAX_ITER = 300


def read_split(data_dir: Path, name: str, split: str) -> tuple[list, np.ndarray]:
    """The input column (texts, or image structs) and labels of one local split, as the registry names them."""
    spec = BUILTINS[name]
    assert spec.input_column is not None and spec.label_column is not None
    table = pq.read_table(data_dir / name / f"{split}.parquet", columns=[spec.input_column, spec.label_column])
    labels = table.column(spec.label_column).to_numpy()
    assert (labels >= 0).all(), f"{name} {split} has unlabelled rows"
    if spec.modality == "image":
        return decode_images(table.column(spec.input_column)), labels
    return table.column(spec.input_column).to_pylist(), labels


def svm_predict(x_train: list[str], y_train: np.ndarray, x_test: list[str]) -> np.ndarray:
    """The labels TF-IDF (uni- and bigrams, sublinear tf) + LinearSVC(C=0.5) fitted on the training texts predicts."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LinearSVC(C=0.5).fit(vectorizer.fit_transform(x_train), y_train)
    return model.predict(vectorizer.transform(x_test))


def svm_accuracy(x_train: list[str], y_train: np.ndarray, x_test: list[str], y_test: np.ndarray) -> float:
    return float(accuracy_score(y_test, svm_predict(x_train, y_train, x_test)))


def text_linear_rows(data_dir: Path) -> list[str]:
    rows = []
    for name in TEXT_DATASETS:
        started = time.perf_counter()
        x_train, y_train = read_split(data_dir, name, "train")
        x_test, y_test = read_split(data_dir, name, "test")
        full = svm_accuracy(x_train, y_train, x_test, y_test)
        pools = [split_indices(y_train, seed, None)[0] for seed in TUNE_SEEDS]
        tuned = [svm_accuracy([x_train[i] for i in pool], y_train[pool], x_test, y_test) for pool in pools]
        seconds = time.perf_counter() - started
        rows.append(
            f"| {name} | {len(y_train)} | {full:.3f} | {len(pools[0])} | {statistics.mean(tuned):.3f} "
            f"± {statistics.stdev(tuned):.3f} | {len(y_test)} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def image_linear_rows(data_dir: Path) -> list[str]:
    rows = []
    for name in IMAGE_DATASETS:
        started = time.perf_counter()
        x_train, y_train = read_split(data_dir, name, "train")
        x_test, y_test = read_split(data_dir, name, "test")
        model = LogisticRegression(max_iter=LOGREG_MAX_ITER)
        with warnings.catch_warnings():  # hitting the cap is reported in the table
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
        acc = accuracy_score(y_test, model.predict(x_test.reshape(len(x_test), -1) / 255.0))
        converged = model.n_iter_.max() < LOGREG_MAX_ITER
        rows.append(
            f"| {name} | {len(y_train)} | {x_train[0].size} | {acc:.3f} | {model.n_iter_.max()}"
            f"{'' if converged else ' (cap)'} | {time.perf_counter() - started:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def network_rows(data_dir: Path, families: list[str], seed: int) -> list[str]:
    config = load_search_space().default
    rows = []
    for name in TEXT_DATASETS:
        for family in families:
            data = load_task(Task(name, family=family, seed=seed), data_dir=data_dir)
            started = time.perf_counter()
            curve = train(data, config, seed=seed, evaluate_test=True)
            seconds = time.perf_counter() - started
            assert curve.test is not None
            best_val = max((e.val_accuracy for e in curve.epochs), default=float("nan"))
            rows.append(
                f"| {name} | {family} | {len(data.y_train)} | {tuple(data.input_shape)[0]} | {best_val:.3f} "
                f"| {curve.test.accuracy:.3f} | {curve.test.macro_f1:.3f} | {seconds:.0f} |"
                + (" diverged" if curve.diverged else "")
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--families", default="bow,textcnn,gru", help="Text families to train ('' for none).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the tables to this Markdown file.")
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("give --data-dir or set RLHPO_DATA_DIR")
    torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]

    def section(title: str, header: str, text_columns: int = 1) -> list[str]:
        numbers = header.count("|") - 1 - text_columns
        lines = ["", title, "", header, "| " + " | ".join(["---"] * text_columns + ["---:"] * numbers) + " |"]
        print("\n".join(lines), flush=True)
        return lines

    command = "python " + shlex.join(["benchmarks/linear_baseline.py", *sys.argv[1:]])
    lines = [
        f"# Linear baselines and the text families ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"Made by `{command}`; {args.threads} torch thread(s) on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}).",
    ]
    print("\n".join(lines), flush=True)
    lines += section(
        "## Text: TF-IDF (word 1-2-grams, sublinear tf) + LinearSVC(C=0.5), test accuracy",
        "| dataset | train rows | full train | tune pool rows | tune pool, seeds 0-2 | test rows | seconds |",
    )
    lines += text_linear_rows(args.data_dir)
    lines += section(
        f"## Images: logistic regression on raw pixels / 255 (lbfgs, max_iter {LOGREG_MAX_ITER}), test accuracy",
        "| dataset | train rows | features | test accuracy | iterations | seconds |",
    )
    lines += image_linear_rows(args.data_dir)
    if families:
        config = load_search_space().default
        lines += section(
            f"## Text networks: the default config `{config.to_dict()}`, seed {args.seed}, full local size",
            "| dataset | family | n_train | seq len | best val acc | test accuracy | test macro-F1 | seconds |",
            text_columns=2,
        )
        lines += network_rows(args.data_dir, families, args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
