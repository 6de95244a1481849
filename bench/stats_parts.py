"""Where the statistics table's time goes, on `bench/stats.py`'s synthetic table (10^5 trials,
the paper's large space): (1) cProfile of one bootstrap replicate of the "all" group with every
measure in one process, the functions' shares; (2) the conditional MI's dominance count (GM) and
one-dimensional count (M) on the "all" group's configurations, each conditioning set counted on
its own against the column groups (`analysis.stats.cmi._cover`) at several caps and fixed costs;
(3) copies of the dominance-count kernel (`analysis.kernels.count_dominated`) with one part left
out, so the parts' times are differences (the copies count wrongly: timing only).

    python bench/stats_parts.py --trials 100000 --measures 41
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from analysis import stats  # noqa: E402
from analysis.stats import cmi  # noqa: E402
from analysis.stats.bootstrap import _bootstrap_indices  # noqa: E402
from stats import synthetic  # noqa: E402  (bench/stats.py)


def best_of(fn, repeats: int = 5) -> float:
    fn()
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def profile(df, measures: int) -> None:
    names = [f"m{i}" for i in range(measures)]
    ps = [stats._prepare(df, m, "gen_gap", stats.HYPERPARAMETERS) for m in names]
    job = stats._JobRows(ps)
    draws = list(_bootstrap_indices(ps[0].seed_codes, ps[0].n, 2, 0)[1])
    stats._replicate_statistics(job, draws[0], 2, False)  # kernels loaded
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(stats._replicate_statistics, job, draws[1], 2, False)
    total = time.perf_counter() - t
    print(f"(1) one replicate of 'all', {measures} measures, one process: {total:.2f} s")
    st = pstats.Stats(prof)
    rows = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in st.stats.items()),
                  reverse=True)[:8]
    for sec, name in rows:
        print(f"    {name:40s} {sec:7.3f} s  {100 * sec / total:4.1f}%")


def covers(cf, rg, rm) -> None:
    sets = list(itertools.combinations(range(cf.codes.shape[1]), 2))

    def one(joint: bool) -> str:
        sc = cmi._SetClasses(cf.codes, cf.levels, sets, joint=joint)
        gm = best_of(lambda: sc.dominated(rg, rm))
        m = best_of(lambda: sc.below(rm))
        return (f"{len(sc.joints)} groups, {int(sc.kp.sum())} padded classes: GM {gm:.4f} s, "
                f"M {m:.4f} s")

    print(f"(2) {cf.mu.size} configurations, {len(sets)} pairs; each pair alone: {one(False)}")
    saved = cmi.JOINT_CLASSES, cmi.JOINT_OVERHEAD
    try:
        for cap in (64, 128, 200, 400):
            for overhead in (4, 8, 16):
                cmi.JOINT_CLASSES, cmi.JOINT_OVERHEAD = cap, overhead
                cmi._cover.cache_clear()
                mark = "  (the default)" if (cap, overhead) == saved else ""
                print(f"    cap {cap:3d}, fixed cost {overhead:2d}: {one(True)}{mark}")
    finally:
        cmi.JOINT_CLASSES, cmi.JOINT_OVERHEAD = saved
        cmi._cover.cache_clear()


PARTS = {  # a part left out: (the kernel's text, its replacement)
    "the pairs inside the first blocks": (
        "                if val[j] < val[i]:\n", "                if False:\n"),
    "the targets' row additions": (
        "                    _add_rows(acc, cur, j, h, kp, off, hoff)\n",
        "                    pass\n"),
    "the sources' histogram updates": (
        "                    for s in range(S):\n"
        "                        h[hoff[s] + cur[i, s]] += 1\n",
        "                    pass\n"),
}


def kernel_parts(cf, rg, rm) -> None:
    src = (ROOT / "analysis" / "kernels.py").read_text()
    start = src.index("@njit(cache=True, nogil=True)\ndef count_dominated")
    body = src[start:src.index("\ndef dense_rank(")]
    from analysis import kernels

    sets = list(itertools.combinations(range(cf.codes.shape[1]), 2))
    sc = cmi._SetClasses(cf.codes, cf.levels, sets)
    out = np.zeros(int(sc.off[-1]), np.int64)

    def run(fn):
        return best_of(lambda: fn(rg, rm, sc.cls, sc.kp, sc.off, sc.hoff, out))

    whole = run(kernels.count_dominated)
    print(f"(3) the dominance count, {len(sc.joints)} groups: {whole:.4f} s; without")
    for label, (old, new) in PARTS.items():
        if old not in body:
            raise SystemExit(f"the kernel changed: {label!r} not found; update PARTS")
        space = dict(vars(kernels))
        exec(body.replace("cache=True", "cache=False").replace(old, new), space)
        t = run(space["count_dominated"])
        print(f"    {label}: {t:.4f} s (the part about {whole - t:.4f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--measures", type=int, default=41)
    args = p.parse_args()
    df = synthetic(args.trials, args.measures)
    profile(df, args.measures)
    pr = stats._prepare(df, "m0", "gen_gap", stats.HYPERPARAMETERS)
    cf = stats._configs(pr)
    rg, rm = stats._dense_rank(cf.g), stats._dense_rank(cf.mu)
    covers(cf, rg, rm)
    kernel_parts(cf, rg, rm)


if __name__ == "__main__":
    main()
