"""Is `bow`'s gap to TF-IDF + LinearSVC its pooling / weighting and regularisation, or its inputs?

    python benchmarks/bow_weighting_probe.py --data-dir <data folder> [--datasets ag_news,trec,imdb] \\
        [--parts svm,svm_hashed,bow,tfidf] [--seeds 0] [--tfidf H/LR/BS/DROPOUT/WD,...]

Every part trains on the same data as ``rlhpo tune --seed 0`` and as
``benchmarks/text_preprocessing_probe.py``'s **today** variant: the shipped preprocessing (BPE
token ids, cut at the shipped length), task seed 0, the tune pool (train split less the
validation split), tested on the test split. Parts:

- ``svm``: sklearn ``TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))`` + ``LinearSVC(C=0.5)``
  with rlhpo's token ids as the words (exact id bigrams, no hashing): do the tokens the networks
  see suffice for the linear baseline's accuracy?
- ``svm_hashed``: the same SVM over ``bow``'s own terms (``rlhpo.models.bag_ids``: token ids and
  bigrams hashed into ``BOW_BUCKETS``), as unigrams of those term ids: what a linear SVM reaches
  on exactly what ``bow`` sees, so the hashing's cost is the ``svm`` row less this one.
- ``bow``: the shipped ``bow`` at the text-preprocessing probe's best config (``BEST`` there), 9 epochs.
  Since session 8 that is the TF-IDF bag; the figures in ``linear_baseline.md`` (session 7) are the
  mean bag's, as it was then.
- ``tfidf``: a "wide bag-of-words MLP" (Galke & Scherp, ACL 2022) over the same token ids and
  the same hashed bigram buckets as ``bow`` (``rlhpo.models.bigram_ids``): ``EmbeddingBag(mode="sum")``
  with per-sample weights = sublinear tf x idf (smooth idf of the tune pool; terms absent from
  the tune pool get weight 0, as outside a vectorizer's vocabulary), each text's weights
  L2-normalised. Then a linear head (``H`` = 0: the bag is the logits, zero-initialised, plus a
  bias) or one hidden layer (``H`` wide, initialised N(0, 0.01^2), bias, ReLU, dropout) and a linear head. Each spec
  ``H/LR/BS/DROPOUT/WD`` trains 9 epochs with Adam (``rlhpo.training.make_optimizer``).

Networks train through ``rlhpo.training.train`` one epoch at a time (``keep_state`` / ``resume``,
bit-identical to one 9-epoch run), and each epoch's model is tested: the table gives the test
accuracy of the final model (what ``train_final`` reports) and of the best-validation epoch's
model. One torch thread; seconds are the training's wall time, testing every epoch excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC
from text_preprocessing_probe import BEST, EPOCHS
from torch import nn

import rlhpo.training
from rlhpo.models import BOW_BUCKETS, PAD_ID, bag_ids, smooth_idf, term_counts
from rlhpo.space import Config
from rlhpo.tasks import Task, TaskData, load_task
from rlhpo.training import train, train_final

DEFAULT_TFIDF = "0/1e-2/32/0/0,256/1e-3/64/0.5/0"  # the best linear and hidden specs found
# The hidden layer's init. EmbeddingBag's own, N(0, 1), is noise that 9 epochs of Adam at lr <= 1e-2
# do not outgrow (trec, 1x256: 0.776 at lr 3e-3, 0.812 at lr 1e-2); 0.01 starts it near zero.
HIDDEN_INIT_STD = 0.01


class TfidfBag(nn.Module):
    """Sublinear-tf x idf weighted, L2-normalised sum of token and bigram vectors; linear head or 1 hidden layer."""

    def __init__(self, vocab_size: int, n_classes: int, idf: torch.Tensor, hidden: int, dropout: float):
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("idf", idf)
        width = hidden or n_classes
        self.embed = nn.EmbeddingBag(vocab_size + BOW_BUCKETS, width, mode="sum", padding_idx=PAD_ID)
        self.bias = nn.Parameter(torch.zeros(width))
        if hidden:
            nn.init.normal_(self.embed.weight, std=HIDDEN_INIT_STD)
            self.head: nn.Module = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))
        else:
            nn.init.zeros_(self.embed.weight)  # a linear model over TF-IDF features, started at 0
            self.head = nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bag = bag_ids(tokens, self.vocab_size)
        tf = term_counts(bag, len(self.idf)).float()
        value = (1 + tf.log()) * self.idf[bag]  # the term's TF-IDF, on each of its tf entries
        share = value / tf  # summed over its entries, each term gets its TF-IDF once
        norm = (share * value).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)
        return self.head(self.embed(bag, per_sample_weights=share / norm) + self.bias)


@contextlib.contextmanager
def tfidf_model(idf: torch.Tensor, hidden: int) -> Iterator[None]:
    """Inside: the trainer builds :class:`TfidfBag` models (``hidden`` wide, the config's dropout)."""
    shipped = rlhpo.training.model_for

    def model_for(data: TaskData, config: Config) -> nn.Module:
        assert data.vocab_size is not None
        return TfidfBag(data.vocab_size, data.n_classes, idf, hidden, config.dropout)

    rlhpo.training.model_for = model_for
    try:
        yield
    finally:
        rlhpo.training.model_for = shipped


@dataclasses.dataclass
class Run:
    final: float  # test accuracy of the last epoch's model
    best_epoch: int  # 1-based epoch of the best validation accuracy (the first, on ties)
    best_val: float
    at_best: float  # test accuracy of that epoch's model
    seconds: float
    diverged: bool


def train_tested(data: TaskData, config: Config, seed: int) -> Run:
    """Train ``config`` for its epochs one at a time, testing every epoch's model."""
    curve, tests, seconds = None, [], 0.0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        curve = train(data, config, epochs=epoch, seed=seed, resume=curve, keep_state=True)
        seconds += time.perf_counter() - started
        if curve.diverged:
            break
        tested = train_final(data, config.with_epochs(epoch), reuse=curve).test
        assert tested is not None
        tests.append(tested.accuracy)
    assert curve is not None
    accs = [e.val_accuracy for e in curve.epochs][: len(tests)]
    if not accs:
        return Run(float("nan"), 0, float("nan"), float("nan"), seconds, True)
    best = accs.index(max(accs))
    return Run(tests[-1], best + 1, accs[best], tests[best], seconds, curve.diverged)


def svm_on_ids(data: TaskData, seed: int, hashed: bool = False) -> tuple[float, float, int]:
    """(test accuracy, seconds, number of features) of TF-IDF + LinearSVC(C=0.5) over the token ids.

    ``hashed``: over ``bow``'s terms (token ids and hashed bigram ids) as unigrams, not exact id bigrams.
    """

    def texts(x: torch.Tensor) -> list[str]:
        terms = bag_ids(x.long(), data.vocab_size) if hashed else x
        return [" ".join(str(t) for t in row[row != PAD_ID].tolist()) for row in terms]

    started = time.perf_counter()
    ngrams = (1, 1) if hashed else (1, 2)
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=ngrams, token_pattern=r"\S+", lowercase=False)
    features = vectorizer.fit_transform(texts(data.x_train))
    svm = LinearSVC(C=0.5, random_state=seed).fit(features, data.y_train.numpy())
    pred = svm.predict(vectorizer.transform(texts(data.x_test)))
    accuracy = float(np.mean(pred == data.y_test.numpy()))
    return accuracy, time.perf_counter() - started, features.shape[1]


def parse_spec(spec: str) -> tuple[int, float, int, float, float]:
    hidden, lr, bs, dropout, wd = spec.split("/")
    return int(hidden), float(lr), int(bs), float(dropout), float(wd)


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def row(dataset: str, model: str, config: str, runs: list[Run]) -> str:
    per_seed = " / ".join(f"{r.final:.3f}" for r in runs)
    at_best = " / ".join(f"{r.at_best:.3f} ({r.best_epoch})" for r in runs)
    flag = " (diverged)" if any(r.diverged for r in runs) else ""
    return (
        f"| {dataset} | {model} | {config}{flag} | {per_seed} | {summary([r.final for r in runs])} "
        f"| {at_best} | {summary([r.at_best for r in runs])} | {statistics.mean(r.seconds for r in runs):.0f} |"
    )


HEADER = (
    "| dataset | model | config | test acc, final model (per seed) | mean ± sd "
    "| test acc, best-val epoch's model (epoch) | mean ± sd | train s |\n"
    "| --- | --- | --- | --- | ---: | --- | ---: | ---: |"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--datasets", default="ag_news,trec,imdb")
    parser.add_argument("--parts", default="svm,bow,tfidf", help="Of svm, svm_hashed, bow, tfidf.")
    parser.add_argument("--seeds", default="0", help="Training seeds (the task's split is seed 0's in every run).")
    parser.add_argument(
        "--tfidf", default=DEFAULT_TFIDF, help="TF-IDF models, H/LR/BS/DROPOUT/WD each (H 0: linear head)."
    )
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("give --data-dir or set RLHPO_DATA_DIR")
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = [parse_spec(s) for s in args.tfidf.split(",") if s]
    rows, svm_rows = [], []
    print(HEADER, flush=True)
    for dataset in args.datasets.split(","):
        data = load_task(Task(dataset, seed=0), data_dir=args.data_dir)
        assert data.vocab_size is not None
        print(
            f"# {dataset}: seq len {data.input_shape[0]}, vocab {data.vocab_size}, {len(data.y_train)} train / "
            f"{len(data.y_val)} val / {len(data.y_test)} test rows",
            file=sys.stderr,
            flush=True,
        )
        for part in ("svm", "svm_hashed"):
            if part not in parts:
                continue
            acc, seconds, n_features = svm_on_ids(data, seed=0, hashed=part == "svm_hashed")
            terms = "bow's terms (hashed bigrams)" if part == "svm_hashed" else "exact id 1-2-grams"
            svm_rows.append(
                f"| {dataset} | {terms} | {data.input_shape[0]} | {data.vocab_size} | {n_features} | {acc:.3f} | "
                f"{seconds:.0f} |"
            )
            print(svm_rows[-1], file=sys.stderr, flush=True)
        if "bow" in parts:
            lr, bs, dropout, opt, wd, layers, units = BEST[dataset, "bow"]
            config = Config(lr, bs, EPOCHS, dropout, opt, wd, layers, units, family="bow")
            text = f"lr {lr:g}, bs {bs}, {opt}, wd {wd:g}, {layers}x{units}, dropout {dropout:g}"
            rows.append(row(dataset, "bow (today)", text, [train_tested(data, config, s) for s in seeds]))
            print(rows[-1], flush=True)
        if "tfidf" in parts:
            started = time.perf_counter()
            idf = smooth_idf(data.x_train, data.vocab_size)
            print(f"# idf in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            for hidden, lr, bs, dropout, wd in specs:
                config = Config(lr, bs, EPOCHS, dropout, "adam", wd, 1, max(hidden, 1), family="bow")
                shape = f"1x{hidden}, dropout {dropout:g}" if hidden else "linear"
                text = f"{shape}, lr {lr:g}, bs {bs}, adam, wd {wd:g}"
                with tfidf_model(idf, hidden):
                    runs = [train_tested(data, config, s) for s in seeds]
                rows.append(row(dataset, "tfidf bag", text, runs))
                print(rows[-1], flush=True)
    if svm_rows:
        print(
            "\nTF-IDF (of token ids, sublinear tf) + LinearSVC(C=0.5), tune pool, test accuracy\n\n"
            "| dataset | terms | seq len | vocab | features | test accuracy | seconds |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(svm_rows),
            flush=True,
        )
    if rows:
        print("\n" + HEADER + "\n" + "\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
