"""Does training the chosen config again on the training and validation splits together lift test accuracy?

``rlhpo tune`` tests the kept trial's model, trained on the tune pool (the training split less its
validation split). scikit-learn's ``GridSearchCV(refit=True)`` and AutoGluon's ``refit_full`` train the
chosen config once more on all the labelled data. This probe measures what that is worth here: for each
task seed, the policy's first config (``rlhpo suggest --n 1``, the trial ``tune`` keeps at budget 3 on the
full-size text tasks, ``tune_text.md``) trained at full fidelity on the pool, then on the pool plus the
validation split (same seed, same epochs), each tested on the test split.

Usage::

    RLHPO_DATA_DIR=<data folder> python benchmarks/refit_probe.py --tasks trec,ag_news,imdb --seeds 0,1,2
"""

from __future__ import annotations

import argparse

from rlhpo.agents.suggest import suggest
from rlhpo.runs import config_text
from rlhpo.tasks import Task, load_task
from rlhpo.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="trec,ag_news,imdb")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    print("| task | seed | config | pool | pool + validation | change |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name in args.tasks.split(","):
        for seed in map(int, args.seeds.split(",")):
            data = load_task(Task(name, seed=seed), data_dir=args.data_dir)
            config = suggest(Task(name, seed=seed), n=1, data_dir=args.data_dir).configs[0]
            pool = train(data, config, seed=seed, evaluate_test=True).test.accuracy
            refit = train(data.with_validation_trained(), config, seed=seed, evaluate_test=True).test.accuracy
            text = config_text(config.to_dict())
            print(f"| {name} | {seed} | `{text}` | {pool:.4f} | {refit:.4f} | {refit - pool:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
