"""Driver overhead at scale: N no-op trials through the real planner, driver and result writer.

The sweep is ``experiment=paper_large`` on the embedded digits data with ``dry_run=true``: each
trial is planned (Optuna), dispatched as one Ray task with back-pressure, writes its one-row
Parquet record atomically in the worker, and is journaled by the driver; nothing is trained.
A local Ray on 127.0.0.1 with ``--cpus`` CPUs is started in this process.

Reported: wall time of ``sweep.driver.launch`` (planning, writing the plan, dispatching,
collecting) per trial; the dispatch part alone per trial; the driver's peak RSS (this process,
``resource.getrusage``; the Ray workers are separate processes); and the wall time of
``sweep status`` on the finished directory (a fresh process). With ``--plan-first`` the plan
is written by ``sweep plan`` in a child process first (its wall time and peak RSS reported
apart), so that the driver's peak RSS is that of dispatching alone: the driver streams the
pending trials from the manifest (sweep.driver.Plan) instead of holding every spec. With ``--tune-trials M`` (needs
``pip install 'ray[tune]'``) the same no-op trial (writing the same record) runs M times as a Ray
Tune function trainable in a fresh process, for comparison. The last line is JSON:
``{"trials": N, "ms_per_trial": ..., "driver_peak_rss_mb": ..., ...}``. Usage::

    python bench/dispatch.py --trials 100000 --tune-trials 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 5.0
TARGET_RSS_MB = 2048.0
TARGET_STATUS_S = 5.0

TUNE_SCRIPT = r"""
import json, os, sys, time, logging
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
from ray import tune
from sweep.config import compose
from sweep.plan import plan_trials
from workers.results.spec import RunContext
from workers.trial import run_trial

n, out, cpus = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
specs = plan_trials(compose(["experiment=paper_large", "dataset=digits", f"trials={n}"]))
ctx = RunContext(out_dir=out, dry_run=True)

def trainable(config):
    row = run_trial(specs[config["i"]], ctx)
    return {"status_ok": row["status"] == "ok"}

ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
         logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
t0 = time.perf_counter()
tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(n)))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2 * cpus),
                   run_config=tune.RunConfig(storage_path=os.path.join(out, "tune"), verbose=0))
res = tuner.fit()
dt = time.perf_counter() - t0
print("TUNE " + json.dumps({"trials": n, "seconds": dt, "errors": res.num_errors}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--tune-trials", type=int, default=0, help="also run M trials with Ray Tune")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides, e.g. 'space.seed=[1,...,20]' for 10^6 trials "
                        "(paper_large holds 476,000 configurations per seed list of 1)")
    p.add_argument("--plan-first", action="store_true",
                   help="plan in a child process (sweep plan) and measure the driver apart")
    p.add_argument("--keep", default=None, help="sweep directory to keep (default: a temp dir)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.cpus < 1 or args.tune_trials < 0:
        p.error("trials and cpus must be >= 1, tune-trials >= 0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from sweep import driver
    from sweep.config import compose

    tmp = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    out = Path(args.keep) if args.keep else tmp / "sweep"
    over = ["experiment=paper_large", "dataset=digits", f"trials={args.trials}",
            "dry_run=true", "progress=false", "figure=false", f"out={out}",
            f"cluster.num_cpus={args.cpus}",
            "plan.infeasible=keep", *args.override]  # (no-op trials: none needs its memory)
    cfg = compose(over)
    planning = {}
    if args.plan_first:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sweep.cli", "plan", *over],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"bench/dispatch.py: sweep plan failed: {r.stderr.strip()[-2000:]}",
                  file=sys.stderr)
            return 2
        planning = {"plan_s": time.perf_counter() - t,
                    "plan_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}
    driver.start_ray(cfg)
    t0 = time.perf_counter()
    dispatch_s = {}
    real_dispatch = driver.dispatch

    def timed_dispatch(*a, **k):
        t = time.perf_counter()
        try:
            return real_dispatch(*a, **k)
        finally:
            dispatch_s["s"] = time.perf_counter() - t

    driver.dispatch = timed_dispatch
    driver.launch(cfg)
    total_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    n_files = len(list((out / "trials").glob("*.parquet")))
    t = time.perf_counter()
    st = subprocess.run([sys.executable, "-m", "sweep.cli", "status", str(out)],
                        capture_output=True, text=True)
    status_s = time.perf_counter() - t
    if st.returncode != 0 or n_files != args.trials:
        print(f"bench/dispatch.py: {n_files} result files of {args.trials}; status: {st.stderr}",
              file=sys.stderr)
        return 2
    result = {
        "trials": args.trials, "cpus": args.cpus,
        "ms_per_trial": 1e3 * total_s / args.trials,
        "dispatch_ms_per_trial": 1e3 * dispatch_s["s"] / args.trials,
        "driver_peak_rss_mb": rss_mb, "status_s": status_s, **planning,
    }
    import ray

    ray.shutdown()
    if args.tune_trials:
        tune_out = tmp / "tune-sweep"
        r = subprocess.run([sys.executable, "-c", TUNE_SCRIPT, str(args.tune_trials),
                            str(tune_out), str(args.cpus)], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("TUNE ")]
        if r.returncode != 0 or not line:
            result["tune"] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            tr = json.loads(line[-1][5:])
            result["tune"] = {"trials": tr["trials"], "errors": tr["errors"],
                              "ms_per_trial": 1e3 * tr["seconds"] / tr["trials"]}
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    met = (result["ms_per_trial"] <= TARGET_MS and rss_mb <= TARGET_RSS_MB
           and status_s <= TARGET_STATUS_S)
    print(f"{args.trials} no-op trials on {args.cpus} CPUs: {result['ms_per_trial']:.2f} ms per "
          f"trial in all (target <= {TARGET_MS}), dispatch {result['dispatch_ms_per_trial']:.2f} ms; "
          f"driver peak RSS {rss_mb:.0f} MB (target <= {TARGET_RSS_MB:.0f}); sweep status "
          f"{status_s:.2f} s (target <= {TARGET_STATUS_S}); targets {'met' if met else 'NOT met'}")
    if planning:
        print(f"planned first by sweep plan in a child process: {planning['plan_s']:.1f} s, peak "
              f"RSS {planning['plan_peak_rss_mb']:.0f} MB (ms per trial above: the driver's "
              "launch on the written plan)")
    if "tune" in result:
        print(f"Ray Tune, same no-op trial: {result['tune']}")
    result["targets_met"] = met
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
