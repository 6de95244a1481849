"""Planning at scale: the time and peak memory of ``sweep.plan.plan_trials`` plus the manifest,
in a fresh process per size (peak resident memory from ``resource.getrusage``).

    python bench/plan.py --trials 400000                     # paper_large, 476,000 configurations
    python bench/plan.py --trials 1000000 --seeds 20         # paper_large with space.seed 1..20
    python bench/plan.py --trials 400000 --no-dense          # the draw with repeats dropped
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweep.config import compose  # noqa: E402
from sweep.plan import manifest_table, plan_trials, space_size  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--seeds", type=int, default=None, help="space.seed=[1..N]")
    p.add_argument("--no-dense", action="store_true",
                   help="draw with replacement and drop repeats, as before (DENSE_ABOVE off)")
    args = p.parse_args()
    if args.no_dense:
        import sweep.plan

        sweep.plan.DENSE_ABOVE = float("inf")
    over = ["experiment=paper_large", f"trials={args.trials}", "plan.infeasible=keep"]
    if args.seeds:
        over.append("space.seed=[" + ",".join(str(i) for i in range(1, args.seeds + 1)) + "]")
    cfg = compose(over)
    t = time.perf_counter()
    specs = plan_trials(cfg)
    planned = time.perf_counter() - t
    table = manifest_table(specs, cfg)
    total = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (Linux: KiB)
    out = {"trials": len(specs), "space": space_size(cfg), "plan_s": planned,
           "plan_and_manifest_s": total, "peak_bytes": peak, "manifest_rows": table.num_rows}
    print(f"{len(specs):,} of {out['space']:,} configurations: planned in {planned:.1f} s, with "
          f"the manifest {total:.1f} s, peak memory {peak / 2**30:.2f} GiB")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
