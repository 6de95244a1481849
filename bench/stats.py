"""Time `analysis.stats.statistics_table` on a synthetic results table of N trials, side by side
with the same function of an earlier revision (``--baseline REV``, read from git).

The table has the paper's large space (A.5.5: widths 2^0..2^16, depths 2..65, five
non-linearities and optimizers, three learning rates, two batch sizes, four init scales, seeds
1..8, two data sets) with a gap that grows with the Jacobian norm plus noise. It times the table
of `--measures` measures (copies of the Jacobian norm with independent noise) with `--boot`
bootstrap replicates, and each statistic's share of one evaluation. Last line: JSON.

    python bench/stats.py --trials 100000 --boot 10 --baseline 94b6904
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import stats  # noqa: E402


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


def baseline_module(rev: str):
    """analysis/stats.py as of ``rev``, imported under another name."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:analysis/stats.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_stats.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_stats", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def breakdown(df: pd.DataFrame, measure: str) -> dict[str, float]:
    """Seconds of each part of one evaluation of all statistics (the 'all' group), and of the
    conditional MI's dominance count (GM) split into the listed pairs inside blocks and the
    per-level histograms and matrix products."""
    p = stats._prepare(df, measure, "gen_gap", stats.HYPERPARAMETERS)
    out = {}
    t = time.perf_counter()
    cf = stats._configs(p)
    shared = stats._Shared(cf)
    out["configurations and one-factor pairs"] = time.perf_counter() - t
    for name, fn in (("pearson, spearman, kendall (scipy)",
                      lambda: [f(p.mu, p.g) for f in (stats.pearson, stats.spearman,
                                                       stats.kendall)]),
                     ("granulated Kendall", lambda: stats._granulated(cf, shared.pairs)),
                     ("sign-error (first measure: with the pairs of runs)",
                      lambda: stats._sign_error(cf, shared.pairs, runs=shared.runs())),
                     ("sign-error (each further measure)",
                      lambda: stats._sign_error(cf, shared.pairs, runs=shared.runs())),
                     ("conditional MI (first measure: with the target's counts)",
                      lambda: stats._cmi(cf, 2, shared)),
                     ("conditional MI (each further measure)",
                      lambda: stats._cmi(cf, 2, shared))):
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    sets = tuple(itertools.combinations(range(cf.codes.shape[1]), 2))
    gm = stats._PairCounts(cf.mu, cf.g, cf.codes, cf.levels, target=shared.target_counter()).gm
    t = time.perf_counter()
    for cover, members in stats._covers(sets, gm.levels, stats._NEAR_BINS):
        gm._near_counts(cover, members)
    out["GM: pairs inside blocks"] = time.perf_counter() - t
    t = time.perf_counter()
    gm._counts(sets)
    out["GM: histograms and matrix products"] = time.perf_counter() - t - out[
        "GM: pairs inside blocks"]
    out["configurations"] = int(cf.mu.size)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--boot", type=int, default=10)
    p.add_argument("--measures", type=int, default=5)
    p.add_argument("--baseline", default=None, help="a git revision to time side by side")
    args = p.parse_args()
    df = synthetic(args.trials, args.measures)
    names = [f"m{i}" for i in range(args.measures)]
    times = {}
    cores = os.cpu_count() or 1
    runs = [("current, 1 process", stats, {"processes": 1}),
            (f"current, processes=None as sweep report ({cores} cores)", stats,
             {"processes": None})]
    if args.baseline:
        runs.append((f"baseline {args.baseline}", baseline_module(args.baseline), {}))
    table = None
    for label, mod, kw in runs:
        t = time.perf_counter()
        out = mod.statistics_table(df, measures=names, n_boot=args.boot,
                                   hyperparameters=stats.HYPERPARAMETERS, **kw)
        times[label] = time.perf_counter() - t
        if table is None:
            table = out
        elif mod is stats:
            pd.testing.assert_frame_equal(out, table)  # the same table either way
    evaluations = table.groupby(["group", "measure"]).ngroups * (args.boot + 1)
    parts = breakdown(df, names[0])
    for label, s in times.items():
        print(f"{label}: {args.trials} trials, {args.measures} measures, "
              f"{table.group.nunique()} groups, {args.boot} replicates: {s:.1f} s "
              f"({s / evaluations:.3f} s per evaluation of all statistics)")
    if args.baseline:
        base = times[runs[-1][0]]
        for label, _, _ in runs[:-1]:
            print(f"{label} / baseline: {times[label] / base:.2f}")
    print(f"one evaluation, group 'all' ({parts.pop('configurations')} configurations): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))
    print(json.dumps({"trials": args.trials, "measures": args.measures, "boot": args.boot,
                      "seconds": times, "evaluations": evaluations, "breakdown_all": parts}))


if __name__ == "__main__":
    main()
