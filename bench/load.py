"""Loading a large sweep's results: the per-trial files vs the compacted copy (workers.results.compact).

Writes N synthetic trial files with ``workers.results.write_trial`` (realistic summary rows:
four datasets, a canonical spec JSON of ~590 characters as the planner writes it, statuses
96 % ok / 2 % failed / 1 % diverged / 1 % oom; and 0 to ``--points-max`` per-point records each,
uniformly), then times, each in a fresh Python process (the call alone, imports excluded; the
files are in the OS page cache, having just been written):

1. ``load_results(d)`` on the per-trial files;
2. ``compact(d)``;
3. ``load_results(d)`` on the compacted copy (its frame must equal that of 1.), and
   ``load_points(d)`` on it;
4. after ``--changed`` K trial files are re-written and K new ones added: ``load_results(d)``
   (compacted copy plus 2K per-trial files), then ``compact(d)`` again (incremental).

The last line is JSON: ``{"trials": N, "load_uncompacted_s": ..., "compact_s": ...,
"load_compacted_s": ..., "ratio": ...}`` plus the other timings. Usage::

    python bench/load.py --trials 100000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_LOAD_S = 3.0
DATASETS = ["mnist", "fashion_mnist", "cifar10", "cifar100"]
ACTIVATIONS = ["relu", "tanh", "hardtanh", "hardsigmoid"]

CHILD = r"""
import json, sys, time
what, d = sys.argv[1], sys.argv[2]
import pandas as pd
from workers.results.compact import compact
from analysis.load import load_points, load_results
t = time.perf_counter()
if what == "compact":
    out = compact(d)
    out["call_s"] = time.perf_counter() - t
elif what == "points":
    df = load_points(d)
    out = {"call_s": time.perf_counter() - t, "rows": len(df)}
else:
    df = load_results(d)
    out = {"call_s": time.perf_counter() - t, "rows": len(df),
           "hash": int(pd.util.hash_pandas_object(df, index=False).sum()),
           "dtypes": ",".join(map(str, df.dtypes))}
print("RESULT " + json.dumps(out))
"""


def _summary(i: int, rng: random.Random, version: int = 0) -> dict:
    from workers.results.record import SUMMARY_COLUMNS

    dataset = rng.choice(DATASETS)
    width, depth = 2 ** rng.randint(5, 12), rng.randint(2, 40)
    act, opt = rng.choice(ACTIVATIONS), rng.choice(["sgd", "momentum", "adam", "lbfgs"])
    lr, bs = 10 ** rng.uniform(-4, -1), rng.choice([None, 32, 64, 128, 256, 512])
    init, seed, steps = rng.choice([0.5, 1.0, 2.0]), rng.randint(0, 9), 2 ** rng.randint(10, 19)
    spec = {"_version": 1, "activation": act, "batch_size": bs, "data": {
        "augment": rng.random() < 0.5, "name": dataset, "random_labels": rng.random() < 0.3,
        "seed": 0, "test_size": None, "train_size": None}, "depth": depth, "init_scale": init,
        "lr": lr, "metrics": {"boundary_extent": 1.25, "boundary_grid": 0, "ellipse_k": 0,
                              "jacobian_points": 1000, "transitions_k": 4096,
                              "transitions_points": 100},
        "optimizer": opt, "seed": seed, "train": {
            "check_every": 1024, "early_stop": True, "lbfgs_history": 100, "lbfgs_max_iter": 2684,
            "lbfgs_tolerance_change": 1e-09, "lbfgs_tolerance_grad": 1e-07, "lr_decay": 0.1,
            "lr_decay_epochs": 500, "steps": steps}, "width": width, "_i": i, "_v": version}
    u = rng.random()
    status = "ok" if u < 0.96 else "failed" if u < 0.98 else "diverged" if u < 0.99 else "oom"
    ok = status == "ok"
    train_acc, test_acc = (rng.uniform(0.9, 1.0), rng.uniform(0.3, 0.99)) if ok else (math.nan,) * 2
    row = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(
        trial_id=f"{(i * 2654435761) % 2**64:016x}", status=status,
        error=None if ok else f"RuntimeError: trial {i} went wrong at step {rng.randint(0, steps)}",
        retryable=False, dataset=dataset, train_size=60000, test_size=10000,
        random_labels=spec["data"]["random_labels"], augment=spec["data"]["augment"],
        width=width, depth=depth, activation=act, optimizer=opt, lr=lr, batch_size=bs,
        init_scale=init, seed=seed, step_budget=steps, steps=rng.randint(1, steps),
        input_dim=784 if "mnist" in dataset else 3072, num_classes=100 if dataset == "cifar100" else 10,
        n_params=width * width * depth, train_acc=train_acc, test_acc=test_acc,
        train_loss=rng.uniform(0, 1) if ok else math.nan,
        test_loss=rng.uniform(0, 3) if ok else math.nan,
        gen_gap=train_acc - test_acc, jacobian_norm_train=rng.uniform(0, 5) if ok else math.nan,
        jacobian_norm_test=rng.uniform(0, 5) if ok else math.nan,
        jacobian_points_train=1000, jacobian_points_test=1000,
        transitions_test=rng.uniform(0, 500) if ok else math.nan,
        transitions_method="exact" if act != "tanh" else "sampled",
        transitions_k=None if act != "tanh" else 4096, transitions_points=100,
        wall_time_s=rng.uniform(1, 3600), hostname=f"node-{rng.randint(0, 31):02d}",
        spec=json.dumps(spec, sort_keys=True, separators=(",", ":")))
    return row


def _points(rng: random.Random, n: int) -> list[dict]:
    return [{"split": rng.choice(["train", "test"]), "index": rng.randint(0, 9999),
             "label": rng.randint(0, 9), "jacobian_norm": rng.uniform(0, 5),
             "loss": rng.uniform(0, 3), "correct": rng.random() < 0.8,
             "transitions": None if rng.random() < 0.5 else float(rng.randint(0, 500))}
            for _ in range(n)]


def _write(job) -> int:
    out, lo, hi, points_max, version = job
    from workers.results.record import write_trial

    n = 0
    for i in range(lo, hi):
        rng = random.Random(i * 7 + version)
        pts = _points(rng, rng.randint(0, points_max))
        n += len(pts)
        write_trial(out, _summary(i, rng, version), pts)
    return n


def generate(out: Path, lo: int, hi: int, points_max: int, procs: int, version: int = 0) -> int:
    step = max(1, (hi - lo) // (procs * 8))
    jobs = [(str(out), a, min(a + step, hi), points_max, version) for a in range(lo, hi, step)]
    with Pool(procs) as pool:
        return sum(pool.map(_write, jobs))


def child(what: str, d: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, what, str(d)],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise SystemExit(f"bench/load.py: {what} failed:\n{r.stderr}")
    out = json.loads(line[-1][len("RESULT "):])
    out["process_s"] = wall
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--points-max", type=int, default=10, help="points per trial: 0 to this")
    p.add_argument("--changed", type=int, default=1000,
                   help="trial files re-written, and new ones added, after the first compaction")
    p.add_argument("--procs", type=int, default=2, help="processes writing the synthetic files")
    p.add_argument("--keep", default=None, help="sweep directory to keep (default: a temp dir)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.points_max < 0 or not 0 <= args.changed <= args.trials:
        p.error("trials >= 1, points-max >= 0, 0 <= changed <= trials")
    sys.path.insert(0, str(ROOT))

    tmp = Path(tempfile.mkdtemp(prefix="load-bench-"))
    d = Path(args.keep) if args.keep else tmp / "sweep"
    t = time.perf_counter()
    n_points = generate(d, 0, args.trials, args.points_max, args.procs)
    gen_s = time.perf_counter() - t
    print(f"wrote {args.trials} trial files ({n_points} points, 0-{args.points_max} per trial) "
          f"in {gen_s:.0f} s", file=sys.stderr)

    before = child("load", d)
    comp = child("compact", d)
    after = child("load", d)
    pts = child("points", d)
    if (before["rows"], before["hash"], before["dtypes"]) != (after["rows"], after["hash"], after["dtypes"]):
        print(f"bench/load.py: frames differ: {before} vs {after}", file=sys.stderr)
        return 2
    res = {"trials": args.trials, "points": n_points,
           "load_uncompacted_s": before["call_s"], "compact_s": comp["call_s"],
           "load_compacted_s": after["call_s"],
           "ratio": before["call_s"] / after["call_s"],
           "load_compacted_process_s": after["process_s"],
           "load_points_compacted_s": pts["call_s"], "compact": comp}

    if args.changed:
        k = args.changed
        generate(d, 0, k, args.points_max, args.procs, version=1)  # re-runs, other numbers
        generate(d, args.trials, args.trials + k, args.points_max, args.procs)
        overlay = child("load", d)
        recomp = child("compact", d)
        again = child("load", d)
        if (overlay["rows"], overlay["hash"]) != (again["rows"], again["hash"]):
            print(f"bench/load.py: frames differ after changes: {overlay} vs {again}", file=sys.stderr)
            return 2
        res.update(changed=k, load_with_changes_s=overlay["call_s"],
                   recompact_s=recomp["call_s"], recompact=recomp,
                   load_recompacted_s=again["call_s"])
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)

    met = res["load_compacted_s"] <= TARGET_LOAD_S
    line = (f"{args.trials} trials ({n_points} points, 0-{args.points_max} per trial): load_results "
            f"{res['load_uncompacted_s']:.2f} s from per-trial files, compact {res['compact_s']:.1f} s, "
            f"load_results {res['load_compacted_s']:.2f} s compacted ({res['ratio']:.0f}x; target "
            f"<= {TARGET_LOAD_S} s: {'met' if met else 'NOT met'}); load_points compacted "
            f"{res['load_points_compacted_s']:.2f} s")
    if args.changed:
        line += (f"; after {args.changed} re-written + {args.changed} new files: load_results "
                 f"{res['load_with_changes_s']:.2f} s, incremental compact {res['recompact_s']:.1f} s "
                 f"({res['recompact']['read']} read, {res['recompact']['reused']} reused), "
                 f"load_results {res['load_recompacted_s']:.2f} s")
    print(line)
    res["target_met"] = met
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
