"""Time `analysis.stats.statistics_table` on a synthetic results table of N trials.

The table has the paper's large space (A.5.5: widths 2^0..2^16, depths 2..65, five
non-linearities and optimizers, three learning rates, two batch sizes, four init scales, seeds
1..8, two data sets) with a gap that grows with the Jacobian norm plus noise. It times the table
of `--measures` measures (copies of the Jacobian norm with independent noise) with `--boot`
bootstrap replicates, and the same with replicates' conditional MI on the estimate's full pair
budget, so the two are side by side. Last line: JSON.

    python bench/stats.py --trials 100000 --boot 10
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from analysis.stats import MAX_PAIRS, statistics_table


def synthetic(n: int, measures: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "dataset": rng.choice(["mnist", "cifar10"], n), "train_size": None,
        "random_labels": False, "augment": False, "width": 2 ** rng.integers(0, 17, n),
        "depth": rng.choice([2, 3, 5, 9, 17, 33, 65], n),
        "activation": rng.choice(["relu", "relu6", "tanh", "hardtanh", "hardsigmoid"], n),
        "optimizer": rng.choice(["sgd", "momentum", "adam", "rmsprop", "lbfgs"], n),
        "lr": rng.choice([0.01, 0.005, 0.0005], n),
        "batch_size": rng.choice([128.0, 512.0], n), "init_scale": rng.choice([0.5, 1, 4, 8], n),
        "step_budget": 2 ** 19, "seed": rng.integers(1, 9, n),
    })
    base = rng.lognormal(0, 1, n)
    df["gen_gap"] = 0.1 * np.log1p(base) + rng.normal(0, 0.02, n)
    for i in range(measures):
        df[f"m{i}"] = base * rng.lognormal(0, 0.3, n)
    return df


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--boot", type=int, default=10)
    p.add_argument("--measures", type=int, default=5)
    args = p.parse_args()
    df = synthetic(args.trials, args.measures)
    names = [f"m{i}" for i in range(args.measures)]
    times = {}
    for label, boot_pairs in (("capped", MAX_PAIRS // 10), ("full", MAX_PAIRS)):
        t = time.perf_counter()
        table = statistics_table(df, measures=names, n_boot=args.boot, boot_max_pairs=boot_pairs)
        times[label] = time.perf_counter() - t
    evaluations = table.groupby(["group", "measure"]).ngroups * (args.boot + 1)
    per = {k: v / evaluations for k, v in times.items()}
    print(f"{args.trials} trials, {args.measures} measures, {table.group.nunique()} groups, "
          f"{args.boot} replicates: {times['capped']:.1f} s with replicate CMI capped at "
          f"{MAX_PAIRS // 10} pairs, {times['full']:.1f} s uncapped ({per['capped']:.2f} vs "
          f"{per['full']:.2f} s per evaluation of all statistics; at 200 replicates about "
          f"{per['capped'] * evaluations / (args.boot + 1) * 201 / 60:.0f} min capped)")
    print(json.dumps({"trials": args.trials, "measures": args.measures, "boot": args.boot,
                      "capped_s": times["capped"], "full_s": times["full"],
                      "s_per_evaluation_capped": per["capped"],
                      "s_per_evaluation_full": per["full"]}))


if __name__ == "__main__":
    main()
