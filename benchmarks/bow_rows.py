"""``bow`` with a table row per training term against a row per possible term: same curve, how much faster?

    python benchmarks/bow_rows.py --data-dir <data folder> [--out docs/benchmarks/bow_rows.md]

``rlhpo.models.BagOfNgrams`` keeps a row only for the terms of the training tokens (every other
term has idf 0, so no weight and no gradient), drawn as the whole table would be. The baseline
here is the whole table (``vocab_size + 2**16`` rows, every one updated by Adam at every step),
built in this process by filling the shipped model's rows into it. Each task instance trains one
config both ways, alternately, one torch thread, training seed 0: the table gives seconds of
each (training only), their ratio, and whether the two curves are identical (every epoch's
losses and accuracies, exactly).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterator

import torch
from torch import nn

import rlhpo.training
from rlhpo.models import BagOfNgrams
from rlhpo.space import Config
from rlhpo.tasks import Task, TaskData, load_task
from rlhpo.training import Curve, train

INSTANCES = (
    Task("imdb", n_train=250, max_length=64, seed=1),
    Task("trec", n_train=2000, seed=1),
    Task("trec_fine", n_train=500, seed=1),
    Task("ag_news", n_train=1000, max_length=64, seed=1),
    Task("trec", seed=0),
)
CONFIG = Config(1e-2, 16, 9, 0.5, "adamw", 1e-5, num_layers=2, units=128, family="bow")


class WholeTable(nn.Module):
    """The shipped model's computation with a row for every possible term (the baseline)."""

    def __init__(self, model: BagOfNgrams):
        super().__init__()
        self.model = model
        whole = torch.zeros(len(model.idf), model.embed.weight.shape[1])
        whole[model.idf > 0] = model.embed.weight[1:].detach()
        self.embed = nn.EmbeddingBag.from_pretrained(whole, freeze=False, mode="sum", padding_idx=0)
        del model.embed  # only the whole table trains

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bag, weights = self.model.tfidf(tokens)
        return self.model.net(self.embed(bag, per_sample_weights=weights) + self.model.bias)


@contextlib.contextmanager
def whole_table() -> Iterator[None]:
    shipped = rlhpo.training.model_for

    def model_for(data: TaskData, config: Config) -> nn.Module:
        return WholeTable(shipped(data, config))

    rlhpo.training.model_for = model_for
    try:
        yield
    finally:
        rlhpo.training.model_for = shipped


def figures(curve: Curve) -> list[tuple[float, ...]]:
    return [(e.train_loss, e.val_loss, e.val_accuracy, e.val_macro_f1) for e in curve.epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RLHPO_DATA_DIR"))
    parser.add_argument("--out", default=None, help="Also write the Markdown table here.")
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("give --data-dir or set RLHPO_DATA_DIR")
    torch.set_num_threads(1)
    lines = [
        f"Made by `python benchmarks/bow_rows.py {' '.join(sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread), {time.strftime('%Y-%m-%d')}. "
        f"Config: `{CONFIG.to_dict()}`.",
        "",
        "| task instance | train rows | terms with a row | all terms | whole s | shipped s | speedup | same curve |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for task in INSTANCES:
        data = load_task(task, data_dir=args.data_dir)
        model = rlhpo.training.model_for(data, CONFIG)
        assert isinstance(model, BagOfNgrams)
        rows, terms = model.embed.weight.shape[0] - 1, len(model.idf)
        started = time.perf_counter()
        with whole_table():
            baseline = train(data, CONFIG, seed=0)
        whole_s = time.perf_counter() - started
        started = time.perf_counter()
        shipped = train(data, CONFIG, seed=0)
        shipped_s = time.perf_counter() - started
        same = "yes" if figures(baseline) == figures(shipped) else "**no**"
        lines.append(
            f"| `{data.task.key()}` | {len(data.y_train)} | {rows} | {terms} | {whole_s:.1f} | {shipped_s:.1f} "
            f"| {whole_s / shipped_s:.1f}x | {same} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
