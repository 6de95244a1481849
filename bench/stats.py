"""Time `analysis.stats.statistics_table` on a synthetic results table of N trials, side by side
with the same function of an earlier revision (``--baseline REV``: that revision's files from
git, run in a child process), compare their tables, and read the peak memory and the CPU
seconds of all processes.

The table has the paper's large space (A.5.5: widths 2^0..2^16, depths 2..65, five
non-linearities and optimizers, three learning rates, two batch sizes, four init scales, seeds
1..8, two data sets) with a gap that grows with the Jacobian norm plus noise. It times the table
of `--measures` measures (copies of the Jacobian norm with independent noise) with `--boot`
bootstrap replicates as `sweep report` runs it (processes=None), the time at 200 replicates
from the estimates' and the replicates' times and from the CPU seconds (on all cores), the
largest difference from the baseline's table per statistic, and each part's time in one
evaluation. Last line: JSON.

    python bench/stats.py --trials 100000 --measures 41 --boot 2 --baseline 1f11721
"""

from __future__ import annotations

import argparse
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
        "step_budget": 2 ** 19, "weight_decay": 0.0, "seed": rng.integers(1, 9, n),
    })
    base = rng.lognormal(0, 1, n)
    df["gen_gap"] = 0.1 * np.log1p(base) + rng.normal(0, 0.02, n)
    for i in range(measures):
        df[f"m{i}"] = base * rng.lognormal(0, 0.3, n)
    return df


_RUNNER = """import pickle, resource, sys, time
def cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ru.ru_utime + ru.ru_stime
if __name__ == "__main__":
    from analysis import stats
    df, kw = pickle.load(open(sys.argv[1], "rb"))
    stats.statistics_table(df.head(300), **{**kw, "n_boot": 1, "processes": 1})  # compiled
    t, c = time.perf_counter(), cpu()
    table = stats.statistics_table(df, **kw)
    seconds, cpu_s = time.perf_counter() - t, cpu() - c
    pickle.dump((table, seconds, cpu_s), open(sys.argv[2], "wb"))
"""


def cpu_seconds() -> float:
    """CPU seconds of this process and its ended child processes (user + system)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ru.ru_utime + ru.ru_stime


class Baseline:
    """``statistics_table`` of the repository at revision ``rev`` (its files from ``git
    archive``, so ``analysis.stats`` may be a module or a package there), run in a child
    process whose ``analysis`` is that revision's; ``seconds`` is the child's own time of the
    call and ``cpu`` its CPU seconds with its worker processes' (its numba loops compiled
    before, on a small table)."""

    def __init__(self, rev: str):
        self.rev = rev
        self.dir = Path(tempfile.mkdtemp(prefix=f"stats-{rev}-"))
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(self.dir)], input=tar, check=True)
        (self.dir / "_bench_runner.py").write_text(_RUNNER)
        self.seconds = self.cpu = None

    def statistics_table(self, df: pd.DataFrame, **kw) -> pd.DataFrame:
        import pickle

        src, dst = self.dir / "in.pkl", self.dir / "out.pkl"
        with open(src, "wb") as f:
            pickle.dump((df, kw), f)
        env = {**os.environ, "PYTHONPATH": str(self.dir)}
        subprocess.run([sys.executable, "_bench_runner.py", str(src), str(dst)], cwd=self.dir,
                       env=env, check=True)
        with open(dst, "rb") as f:
            table, self.seconds, self.cpu = pickle.load(f)
        return table


def breakdown(df: pd.DataFrame, measure: str) -> dict[str, float]:
    """Seconds of each part of one evaluation of all statistics on the 'all' group (one
    measure): what the measures of a job share (seed means, one-factor pairs, pairs of runs,
    the conditioning sets' classes and G's counts), then per measure."""
    from analysis import kernels

    p = stats._prepare(df, measure, "gen_gap", stats.HYPERPARAMETERS)
    job = stats._JobRows([p])
    stats._replicate_statistics(job, None, 2, False)  # compiled kernels loaded
    out = {}
    t = time.perf_counter()
    cf = stats._configs(p)
    shared = stats._Shared(cf)
    shared.runs()
    sets = list(itertools.combinations(range(cf.codes.shape[1]), 2))
    sc, rg, _ = shared.target_counts(sets)
    out["shared: configurations, pairs, runs, G"] = time.perf_counter() - t
    w = np.ones(p.n, dtype=np.int64)
    yavg = kernels.average_ranks(job.yorder, job.yties, w)
    rm = stats._dense_rank(cf.mu)
    for name, fn in (
            ("pearson, spearman, kendall", lambda: kernels.correlations(
                p.mu, job.xorder[0], job.xties[0], job.g, job.yrank, job.n_yrank, yavg, w)),
            ("granulated Kendall and sign-errors", lambda: [
                kernels.pair_signs(cf.mu, a, b, sg, lab, n.size)
                for _, a, b, lab, sg, n, _ in shared.granulated_parts()]),
            ("conditional MI: M", lambda: sc.below(rm)),
            ("conditional MI: GM", lambda: sc.dominated(rg, rm)),
            ("conditional MI: all of it", lambda: stats._cmi(cf, 2, shared))):
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    out["configurations"] = int(cf.mu.size)
    return out


class PeakMemory:
    """The largest sum of the resident memory of this process and all its descendants, sampled
    every 0.1 s on a thread (psutil)."""

    def __init__(self):
        import threading

        import psutil

        self.peak = 0
        self._stop = threading.Event()
        me = psutil.Process()

        def sample():
            while not self._stop.is_set():
                total = 0
                for q in [me, *me.children(recursive=True)]:
                    try:
                        total += q.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
                self._stop.wait(0.1)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def compare(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """Largest absolute difference of value, ci_low and ci_high per statistic (0 = equal),
    after checking that the rows and every other column are the same."""
    key = ["group", "measure", "statistic"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    same = [c for c in a.columns if c in b.columns and c not in ("value", "ci_low", "ci_high")]
    pd.testing.assert_frame_equal(a[same], b[same], check_dtype=False)
    out = {}
    for st, part in a.groupby("statistic"):
        other = b.loc[part.index]
        d = 0.0
        for c in ("value", "ci_low", "ci_high"):
            x, y = part[c].to_numpy(float), other[c].to_numpy(float)
            assert np.array_equal(np.isnan(x), np.isnan(y)), (st, c)
            ok = ~np.isnan(x)
            d = max(d, float(np.abs(x[ok] - y[ok]).max(initial=0.0)))
        out[st] = d
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--boot", type=int, default=10)
    p.add_argument("--measures", type=int, default=5)
    p.add_argument("--baseline", default=None, help="a git revision to time side by side")
    p.add_argument("--single", action="store_true",
                   help="also time the current code in one process")
    p.add_argument("--no-breakdown", action="store_true")
    args = p.parse_args()
    df = synthetic(args.trials, args.measures)
    names = [f"m{i}" for i in range(args.measures)]
    times, phases, memory, cpu = {}, {}, {}, {}
    cores = stats.usable_cores()
    runs = [(f"current, processes=None as sweep report ({cores} cores)", stats,
             {"processes": None})]
    if args.single:
        runs.append(("current, 1 process", stats, {"processes": 1}))
    if args.baseline:
        runs.append((f"baseline {args.baseline}, processes=None", Baseline(args.baseline),
                     {"processes": None}))
    tables = {}
    stats.statistics_table(df.head(300), measures=names, n_boot=1, processes=1,
                           hyperparameters=stats.HYPERPARAMETERS)  # numba's loops loaded
    for label, mod, kw in runs:
        marks = []
        if mod is stats:
            kw = {**kw, "progress": lambda done, total, procs: marks.append(
                (time.perf_counter(), done))}
        mem = PeakMemory()
        t, c = time.perf_counter(), cpu_seconds()
        tables[label] = mod.statistics_table(df, measures=names, n_boot=args.boot,
                                             hyperparameters=stats.HYPERPARAMETERS, **kw)
        times[label] = getattr(mod, "seconds", None) or time.perf_counter() - t
        cpu[label] = getattr(mod, "cpu", None) or cpu_seconds() - c
        memory[label] = mem.stop()
        if marks:  # the estimates, then the replicates: the time at 200 replicates from both
            est = marks[0][0] - t
            phases[label] = {"estimates_s": est, "replicates_s": times[label] - est,
                             "at_200_replicates_s": est + (times[label] - est) * 200
                             / max(args.boot, 1)}
    first = tables[runs[0][0]]
    evaluations = first.groupby(["group", "measure"]).ngroups * (args.boot + 1)
    for label, s in times.items():
        # (in processes the estimates run beside the first replicates: the wall-clock
        # projection then understates; the CPU one overstates by each process's start)
        cpu_200 = cpu[label] / evaluations * (evaluations // (args.boot + 1)) * 201 / cores
        phases.setdefault(label, {})["at_200_replicates_cpu_s"] = cpu_200
        extra = (f"; at 200 replicates from the CPU time about {cpu_200 / 60:.1f} min on "
                 f"{cores} cores")
        if "estimates_s" in phases[label]:
            ph = phases[label]
            extra += (f"; estimates {ph['estimates_s']:.1f} s, replicates "
                      f"{ph['replicates_s']:.1f} s, so at 200 replicates about "
                      f"{ph['at_200_replicates_s']:.0f} s")
        print(f"{label}: {args.trials} trials, {args.measures} measures, "
              f"{first.group.nunique()} groups, {args.boot} replicates: {s:.1f} s, "
              f"{cpu[label]:.1f} CPU s ({s / evaluations:.3f} s, {cpu[label] / evaluations:.3f} "
              "CPU s per evaluation of all statistics of one measure); "
              f"peak memory of all processes {memory[label]:.2f} GiB{extra}")
    diffs = {}
    for label, _, _ in runs[1:]:
        diffs[label] = compare(first, tables[label])
        print(f"{runs[0][0]} / {label}: time {times[runs[0][0]] / times[label]:.3f}, CPU time "
              f"{cpu[runs[0][0]] / cpu[label]:.3f}; largest "
              "difference of value, ci_low, ci_high: " + ", ".join(
                  f"{k} {v:.1e}" for k, v in diffs[label].items()))
    parts = {} if args.no_breakdown else breakdown(df, names[0])
    if parts:
        print(f"one evaluation, group 'all' ({parts.pop('configurations')} configurations): "
              + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))
    print(json.dumps({"trials": args.trials, "measures": args.measures, "boot": args.boot,
                      "seconds": times, "cpu_seconds": cpu, "phases": phases, "peak_gib": memory,
                      "evaluations": evaluations, "largest_difference": diffs,
                      "breakdown_all": parts}))


if __name__ == "__main__":
    main()
