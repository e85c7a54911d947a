"""Does a larger tree setting rank held-out task instances better? (a probe, session 28)

Leave-one-instance-out as ``benchmarks/surrogate_quality.py`` does it, but only the folds of the chosen
datasets' instances, 3 members, the score target alone: per dataset, the mean Spearman correlation of
predicted and recorded final scores, for session 28's tree settings (``small``) and larger ones (``large``),
which the whole page (``surrogate_quality.py``) confirmed and ``SurrogateSettings`` took as its defaults in
session 29. Both are pinned here, so the probe compares the same two whatever the defaults.

Usage::

    nice python benchmarks/surrogate_tree_probe.py                                  # ag_news and imdb
    nice python benchmarks/surrogate_tree_probe.py --datasets trec,trec_fine --settings large
"""

import argparse
import time

import numpy as np
from surrogate_quality import data_group, held_out, rank_table
from threadpoolctl import threadpool_limits

from rlhpo.envs.surrogate import CurveData, SurrogateSettings
from rlhpo.settings import SHIPPED_STORE, shipped_file
from rlhpo.store import CurveStore

SETTINGS = {
    "small": {"max_leaf_nodes": 31, "max_iter": 200},  # the defaults up to session 28
    "large": {"max_leaf_nodes": 63, "max_iter": 400},  # the defaults since session 29
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ag_news,imdb", help="comma-separated datasets whose folds to run")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {sorted(SETTINGS)}")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    with CurveStore(shipped_file(SHIPPED_STORE), readonly=True) as store:
        data = CurveData.from_store(store)
    data = data.subset(data.run_completed > 0)
    groups = np.array([data_group(data, k) for k in data.run_task])
    folds = [g for g in dict.fromkeys(groups) if g.split("/")[0] in datasets]
    for name in args.settings.split(","):
        kw = SETTINGS[name]
        t = time.perf_counter()
        settings = SurrogateSettings(members=3, seed=0, targets=("score",), **kw)
        with threadpool_limits(limits=1, user_api="openmp"):
            p = held_out(data, groups, settings, folds)
        table = rank_table(data, {"s": p.mean})
        for d in datasets:
            v = [r["s"] for k, r in table.items() if k.startswith(d + "/")]
            print(f"{name}: {d} {np.nanmean(v):.3f}", flush=True)
        print(f"{name}: {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
