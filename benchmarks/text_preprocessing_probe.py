"""Does the shared text preprocessing hold the text families back? Test accuracy at full local size
with today's preprocessing and with longer sequences and/or a larger BPE vocabulary.

    python benchmarks/text_preprocessing_probe.py --data-dir <data folder> \\
        [--datasets imdb,ag_news,trec] [--variants today,long,vocab,long+vocab] [--families bow,textcnn] \\
        [--seeds 0] [--lrs LR,...] [--bow-heads mean/16] [--cache-dir DIR]

Data variants (rlhpo's built-in specs with other values, for this process only):

- ``today``: the shipped preprocessing: a BPE vocabulary of the spec's size (imdb 12k, ag_news
  10k, trec 4k) and sequences of the 90th percentile of train lengths, capped by the spec's
  ``max_len`` (imdb 256, ag_news 64, trec 32).
- ``long``: a longer cap (imdb 1024, ag_news 128, trec 64), and the cap is the length (the
  percentile rule is set to 100: the longest train text, capped).
- ``vocab``: a tokenizer trained for 50,000 tokens (it stops sooner on small datasets: every pair
  seen at least twice is merged by then).
- ``long+vocab``: both.
- ``cap``: the longer cap alone, with the shipped percentile rule (what raising ``max_len`` in the
  registry would do: imdb gets the 90th percentile, 584 tokens; ag_news 68; trec stays at 20).

Each variant is built by the library's own preprocessing (``load_task``) into its own cache folder
(a temporary one unless ``--cache-dir``), never the user's cache, with the same train / validation
/ test split as ``rlhpo tune --seed 0`` (task seed 0, validation ``min(15%, 1000)`` rows). Each run
is one hand-picked config (the best of ``benchmarks/text_family_probe.py``'s GRID at full size;
with ``--lrs``, once with each of those learning rates in place of its own), 9 epochs, training
seed 0 (or each of ``--seeds``), one torch thread, tested once with the final model, as
``train_final`` does.

``--bow-heads`` replaces the ``bow`` model by the one this probe measured (``bow`` before it was
TF-IDF-weighted): ``POOL/BITS``, the ``mean`` (that ``bow``'s) or ``sum`` of the embeddings of
the tokens and of ``2**BITS`` hashed bigram buckets (that ``bow``'s: 16), then ``num_layers`` x
[Linear(units), ReLU, Dropout] and a linear head (:class:`MeanBag`), put in place of
``model_for`` for the run only. Its default, ``mean/16``, is that ``bow``, as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

import rlhpo.training
from rlhpo.models import PAD_ID, bigram_ids, model_family
from rlhpo.space import Config
from rlhpo.tasks import BUILTINS, Task, TaskData, load_task, preprocess
from rlhpo.tasks.cache import CACHE_DIR_ENV
from rlhpo.tasks.loader import load_prepared
from rlhpo.training import train_final

EPOCHS = 9
LONG_CAP = {"imdb": 1024, "ag_news": 128, "trec": 64}
LARGE_VOCAB = 50_000
# name: (longer cap?, the cap is the length (percentile 100)?, larger vocabulary?)
VARIANTS = {
    "today": (False, False, False),
    "long": (True, True, False),
    "vocab": (False, False, True),
    "long+vocab": (True, True, True),
    "cap": (True, False, False),
}
# The best config of each family on each dataset in text_family_probe.py's GRID, by test accuracy
# at full size (docs/benchmarks/linear_baseline.md): (lr, batch size, dropout, optimizer, weight decay, layers, units).
# textcnn: its second GRID config, best on trec (0.858) and 0.004 under the first on ag_news at a third of the time.
BEST = {
    ("ag_news", "bow"): (3e-2, 64, 0.25, "adamw", 1e-5, 1, 64),
    ("trec", "bow"): (3e-2, 64, 0.25, "adamw", 1e-5, 1, 64),
    ("imdb", "bow"): (3e-3, 32, 0.25, "adam", 0.0, 1, 64),
    ("ag_news", "textcnn"): (3e-3, 64, 0.5, "adam", 1e-5, 1, 64),
    ("trec", "textcnn"): (3e-3, 64, 0.5, "adam", 1e-5, 1, 64),
    ("imdb", "textcnn"): (3e-3, 64, 0.5, "adam", 1e-5, 1, 64),
}


@contextlib.contextmanager
def variant_data(dataset: str, variant: str, cache_root: Path) -> Iterator[dict[str, object]]:
    """Inside: ``BUILTINS[dataset]`` is the variant's spec and the cache is the variant's own folder."""
    longer, whole, larger = VARIANTS[variant]
    shipped = BUILTINS[dataset]
    spec = dataclasses.replace(
        shipped,
        max_len=LONG_CAP[dataset] if longer else shipped.max_len,
        vocab_size=LARGE_VOCAB if larger else shipped.vocab_size,
    )
    percentile = 100 if whole else preprocess.LENGTH_PERCENTILE
    saved = os.environ.get(CACHE_DIR_ENV), preprocess.LENGTH_PERCENTILE
    # The cache key holds max_len and vocab_size but not the percentile: one folder per variant.
    os.environ[CACHE_DIR_ENV] = str(cache_root / f"{dataset}-{variant}")
    preprocess.LENGTH_PERCENTILE = percentile
    BUILTINS[dataset] = spec
    try:
        yield {"cap": spec.max_len, "vocab": spec.vocab_size, "percentile": percentile}
    finally:
        BUILTINS[dataset] = shipped
        preprocess.LENGTH_PERCENTILE = saved[1]
        if saved[0] is None:
            del os.environ[CACHE_DIR_ENV]
        else:
            os.environ[CACHE_DIR_ENV] = saved[0]


class MeanBag(nn.Module):
    """``bow`` as this probe measured it: the pooled embeddings of tokens and hashed bigrams, then an MLP."""

    def __init__(
        self, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float, pool: str, buckets: int
    ):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.embed = nn.EmbeddingBag(vocab_size + buckets, units, mode=pool, padding_idx=PAD_ID)
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(units, units), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(units, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bag = torch.cat([tokens, bigram_ids(tokens, self.vocab_size, self.buckets)], dim=1)
        return self.net(self.embed(bag))


@contextlib.contextmanager
def bow_head(pool: str, bits: int) -> Iterator[None]:
    """Inside: ``bow`` models are :class:`MeanBag` (pool, 2**bits)."""
    shipped = rlhpo.training.model_for

    def model_for(data, config):  # noqa: ANN001, ANN202
        if model_family(data, config) != "bow":
            return shipped(data, config)
        return MeanBag(data.vocab_size, data.n_classes, config.num_layers, config.units, config.dropout, pool, 2**bits)

    rlhpo.training.model_for = model_for
    try:
        yield
    finally:
        rlhpo.training.model_for = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--datasets", default="imdb,ag_news,trec")
    parser.add_argument("--variants", default="today,long,vocab,long+vocab", help=f"Of {', '.join(VARIANTS)}.")
    parser.add_argument("--families", default="bow")
    parser.add_argument("--seeds", default="0", help="Training seeds (the task's split is seed 0's in every run).")
    parser.add_argument("--lrs", default="", help="Learning rates to train with in place of each config's own.")
    parser.add_argument("--bow-heads", default="mean/16", help="bow pooling/bucket bits, e.g. mean/16,sum/18.")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="Keep the variants' caches here (default: a temp dir)."
    )
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("give --data-dir or set RLHPO_DATA_DIR")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rlhpo-text-probe-") as tmp:
        for var in ("HF_HOME", "HF_DATASETS_CACHE", "TORCH_HOME", "XDG_CACHE_HOME"):
            os.environ[var] = str(Path(tmp) / var.lower())
        run(args, args.cache_dir or Path(tmp) / "datasets")


def run(args: argparse.Namespace, cache_root: Path) -> None:
    lrs = [float(lr) for lr in args.lrs.split(",") if lr]
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = [(h.split("/")[0], int(h.split("/")[1])) for h in args.bow_heads.split(",")]
    rows = []
    header = (
        "| dataset | variant | seq len | vocab | family | config | seed | best val acc (epoch) | test accuracy "
        "| train seconds |\n| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"
    )
    print(header, flush=True)
    for dataset in args.datasets.split(","):
        for variant in args.variants.split(","):
            started = time.perf_counter()
            with variant_data(dataset, variant, cache_root) as values:
                data = load_task(Task(dataset, seed=0), data_dir=args.data_dir)
            load_prepared.cache_clear()  # the task holds its own tensors; free the whole dataset's
            print(
                f"# {dataset} {variant} ({values}): seq len {data.input_shape[0]}, vocab {data.vocab_size}, "
                f"{len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test rows, "
                f"prepared in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            for family in args.families.split(","):
                lr, bs, dropout, opt, wd, layers, units = BEST[dataset, family]
                runs = itertools.product(lrs or [lr], heads if family == "bow" else [("mean", 16)], seeds)
                for rate, (pool, bits), seed in runs:
                    config = Config(rate, bs, EPOCHS, dropout, opt, wd, layers, units, family=family)
                    rows.append(f"| {dataset} | {variant} | " + train_row(data, config, pool, bits, seed))
                    print(rows[-1], flush=True)
    print("\n" + header + "\n" + "\n".join(rows), flush=True)


def train_row(data: TaskData, config: Config, pool: str, bits: int, seed: int) -> str:
    """The table row of one training, from its sequence length column on."""
    started = time.perf_counter()
    with bow_head(pool, bits):
        curve = train_final(data, config, seed=seed)
    seconds = time.perf_counter() - started
    assert curve.test is not None
    accs = [e.val_accuracy for e in curve.epochs]
    best = f"{max(accs):.3f} ({accs.index(max(accs)) + 1})" if accs else "-"
    c = config
    text = (
        f"lr {c.learning_rate:g}, bs {c.batch_size}, {c.optimizer}, wd {c.weight_decay:g}, "
        f"{c.num_layers}x{c.units}, dropout {c.dropout:g}"
    )
    if c.family == "bow":
        text += f", {pool}, 2^{bits} buckets"
    if curve.diverged:
        text += " (diverged)"
    return (
        f"{data.input_shape[0]} | {data.vocab_size} | {c.family} | {text} | {seed} | {best} "
        f"| {curve.test.accuracy:.3f} | {seconds:.0f} |"
    )


if __name__ == "__main__":
    main()
