"""Does ``bow`` lose accuracy to its hashed bigrams? The kept ag_news config with more hash buckets.

``bow`` hashes each bigram into ``BOW_BUCKETS`` (2^16) buckets (``rlhpo.models``); an SVM on the same
token ids with every exact bigram does better on ag_news (``svm_on_tokens.md``). This trains the policy's
first config (the one ``rlhpo tune`` keeps on the task) as ``tune`` trains its final model (on the training
and validation splits) with 2^16, 2^18 and 2^20 buckets, and counts the distinct bigrams of the training
texts and the buckets they fill. The bucket count is a module constant that the store's curves were
recorded with; the probe patches it in this process only.

    RLHPO_DATA_DIR=<data folder> python benchmarks/bow_buckets_probe.py --task ag_news --seeds 0,1,2
"""

from __future__ import annotations

import argparse

import torch

from rlhpo import models
from rlhpo.agents.suggest import suggest
from rlhpo.runs import config_text
from rlhpo.tasks import Task, load_task
from rlhpo.training import train


def set_buckets(buckets: int) -> None:
    models.BOW_BUCKETS = buckets
    models.bigram_ids.__defaults__ = (buckets,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ag_news")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--buckets", default="16,18,20", help="Powers of two.")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    config = suggest(Task(args.task), n=1, data_dir=args.data_dir).configs[0]
    print(f"{args.task}, `{config_text(config.to_dict())}`, trained on the training and validation splits\n")
    print("| buckets | distinct bigrams | buckets filled | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in seeds) + " | ---: |")
    for power in map(int, args.buckets.split(",")):
        set_buckets(2**power)
        accs = []
        for seed in seeds:
            data = load_task(Task(args.task, seed=seed), data_dir=args.data_dir).with_validation_trained()
            accs.append(train(data, config, seed=seed, evaluate_test=True).test.accuracy)
        tokens = data.x_train.long()
        first, second = tokens[:, :-1], tokens[:, 1:]
        real = (first != models.PAD_ID) & (second != models.PAD_ID)
        pairs = torch.unique(first[real] * (data.vocab_size + 1) + second[real])
        filled = torch.unique(models.bigram_ids(tokens, data.vocab_size)[real])
        cells = " | ".join(f"{a:.4f}" for a in accs)
        print(f"| 2^{power} | {len(pairs)} | {len(filled)} | {cells} | {sum(accs) / len(accs):.4f} |", flush=True)


if __name__ == "__main__":
    main()
