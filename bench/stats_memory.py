"""Each statistics process's peak memory against the model ``statistics_table`` sizes its
process count by (``analysis.stats.table.process_bytes``: a fixed part + per trial row + per
trial row and measure of the largest job), on bench/stats.py's synthetic table, as `sweep
report` runs it (two processes, 2 bootstrap replicates: the peak is reached in the first
evaluation of the largest job). Each process's resident memory is sampled every 50 ms
(psutil), and this process's (the table's data, the jobs it prepares, the results it
gathers); the model should be at or above every worker's peak (exit 1 if not).

    python bench/stats_memory.py --sizes 10000x41 100000x5 100000x41 100000x80 300000x41
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def one(trials: int, measures: int) -> dict:
    import psutil

    from analysis.stats import process_bytes, statistics_table
    from stats import synthetic

    df = synthetic(trials, measures)
    me = psutil.Process()
    peaks: dict = {}
    stop = threading.Event()

    before = me.memory_info().rss  # this process, which prepares the jobs and gathers results

    def watch():
        while not stop.is_set():
            peaks["parent"] = max(peaks.get("parent", 0), me.memory_info().rss)
            for c in me.children(recursive=True):
                try:
                    peaks[c.pid] = max(peaks.get(c.pid, 0), c.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.05)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t = time.perf_counter()
    statistics_table(df, [f"m{i}" for i in range(measures)], n_boot=2, processes=2)
    seconds = time.perf_counter() - t
    stop.set()
    th.join()
    # the workers (the spawn machinery's resource tracker holds ~12 MB: not one of them)
    parent = peaks.pop("parent", before)
    workers = sorted((v for v in peaks.values() if v > 64 << 20), reverse=True)
    model = process_bytes(trials, measures)  # the largest job: group "all", every measure
    return {"trials": trials, "measures": measures, "seconds": seconds,
            "peaks": workers, "model": model, "parent": (before, parent)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["10000x41", "100000x41"],
                    help="TRIALSxMEASURES")
    args = ap.parse_args()
    print("| trials | measures | processes' peaks (MiB) | model (MiB) | model / largest peak | "
          "this process: before -> peak (MiB) | s |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    ok = True
    for size in args.sizes:
        t, m = (int(x) for x in size.split("x"))
        r = one(t, m)
        top = max(r["peaks"]) if r["peaks"] else 0
        ratio = r["model"] / top if top else float("nan")
        ok &= ratio >= 1
        print(f"| {t:,} | {m} | {', '.join(str(p >> 20) for p in r['peaks'])} | "
              f"{r['model'] >> 20} | {ratio:.2f} | {r['parent'][0] >> 20} -> "
              f"{r['parent'][1] >> 20} | {r['seconds']:.1f} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
