"""Throughput of ``workers.metrics.jacobian_norm`` against two autograd baselines.

For each width, on one bias-free MLP from ``workers.models.build_mlp`` (CPU, fp32), this measures
points per second of

* ``jacobian_norm``: the project's metric (one forward, one batched reverse pass per chunk);
* (a) ``torch.autograd.functional.jacobian`` of x -> softmax(model(x[None]))[0], one point at a
  time (default arguments: reverse mode, one backward per class), Frobenius norm per point;
* (b) a per-class loop: one forward of the whole batch, then for each class i
  ``torch.autograd.grad(softmax[:, i].sum(), x, retain_graph=True)``; norms from the stacked rows;

and jacobian_norm's achieved GFLOP/s as a fraction of a large fp32 matmul's GFLOP/s measured in
the same run. FLOP convention (multiply-add = 2 flops, matmuls only): for N points,
(1 + C) * 2 * N * (d*w + (depth-2)*w*w + w*C), i.e. one forward plus C input-gradient backward
passes of the same matmul work (no parameter gradients). Elementwise ops, softmax and the norm
reduction are not counted.

Before timing, the three methods are compared on a few points; a disagreement aborts the run
(exit status 2). Usage (from the repository root)::

    python bench/jacobian.py --widths 64 256 1024 --points 2048 --repeats 5

Prints a Markdown table, then one JSON line with the same numbers. ``--profile`` instead runs
torch.profiler over jacobian_norm at each given width and prints the op table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from workers.metrics import jacobian_norm
from workers.models import build_mlp

TARGET_SPEEDUP_A = 20.0
TARGET_SPEEDUP_B = 1.0
TARGET_MATMUL_FRACTION = 0.60
TARGET_FRACTION_WIDTH = 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The three methods. Each maps (model, x [N, d]) -> per-point ||d softmax / dx||_F, [N].


def method_jacobian_norm(model, x):
    return jacobian_norm(model, x)


def method_per_point_functional(model, x):
    """(a): torch.autograd.functional.jacobian, one point at a time (default: vectorize=False)."""

    def f(xi):
        return torch.softmax(model(xi[None]), dim=-1)[0]

    out = torch.empty(len(x), dtype=x.dtype)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(f, x[i])  # [C, d]
        out[i] = jac.pow(2).sum().sqrt()
    return out


def method_per_class_loop(model, x):
    """(b): one forward of the batch, then one autograd.grad per class (retain_graph)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = torch.softmax(model(xg), dim=-1)  # [N, C]
        num_classes = s.shape[-1]
        rows = [
            torch.autograd.grad(s[:, i].sum(), xg, retain_graph=i < num_classes - 1)[0]
            for i in range(num_classes)
        ]
    return torch.stack(rows).pow(2).sum(dim=(0, 2)).sqrt()  # [C, N, d] -> [N]


# --------------------------------------------------------------------------------------------


def time_it(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(n: int, warmup: int, repeats: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    c = torch.empty(n, n)
    times = time_it(lambda: torch.mm(a, b, out=c), warmup, repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "best_s": min(times),
        "median_s": statistics.median(times),
        "gflops": flops / min(times) / 1e9,
    }


def jacobian_norm_flops(n_points: int, d: int, width: int, depth: int, classes: int) -> float:
    per_pass = 2.0 * n_points * (d * width + (depth - 2) * width * width + width * classes)
    return (1 + classes) * per_pass


def check_agreement(model, x, atol: float, rtol: float) -> dict:
    """Run the three methods on x; raise SystemExit(2) if any pair differs by more than tol."""
    ref = method_jacobian_norm(model, x)
    res = {"a": method_per_point_functional(model, x), "b": method_per_class_loop(model, x)}
    tol = atol + rtol * float(ref.abs().max())
    diffs = {}
    for name, val in res.items():
        if val.shape != ref.shape or not torch.isfinite(val).all() or not torch.isfinite(ref).all():
            raise SystemExit(f"AGREEMENT CHECK FAILED: method ({name}) shape/finiteness mismatch")
        diffs[name] = float((val - ref).abs().max())
    diffs["a_vs_b"] = float((res["a"] - res["b"]).abs().max())
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    if bad:
        log(f"jacobian_norm: {ref.tolist()}")
        log(f"(a): {res['a'].tolist()}")
        log(f"(b): {res['b'].tolist()}")
        print(f"AGREEMENT CHECK FAILED: max abs differences {bad} exceed tol {tol:.3g}",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    return {"max_abs_diff": diffs, "tol": tol, "mean_norm": float(ref.mean())}


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def run(args) -> int:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
        threads = torch.get_num_threads()
    log(f"torch {torch.__version__}, {threads} threads, {platform.machine()}")

    mm_before = matmul_gflops(args.matmul_n, 2, args.matmul_repeats, args.seed)
    log(f"matmul {args.matmul_n}^3: {mm_before['gflops']:.1f} GFLOP/s (before)")

    rows = []
    for width in args.widths:
        model = build_mlp(args.input_dim, width, args.depth, args.classes, args.activation,
                          seed=args.seed)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # only input gradients are needed, by every method
        gen = torch.Generator().manual_seed(args.seed + 1)
        x = torch.randn(args.points, args.input_dim, generator=gen)
        check = check_agreement(model, x[: args.check_points], args.atol, args.rtol)
        log(f"width {width}: agreement ok, max abs diffs {check['max_abs_diff']} "
            f"(tol {check['tol']:.2g}, mean norm {check['mean_norm']:.3g})")

        x_a = x[: args.points_a]
        t_jn = time_it(lambda: method_jacobian_norm(model, x), args.warmup, args.repeats)
        log(f"  jacobian_norm: best {min(t_jn):.4f}s for {len(x)} points")
        t_b = time_it(lambda: method_per_class_loop(model, x), args.warmup, args.repeats)
        log(f"  (b) per-class loop: best {min(t_b):.4f}s for {len(x)} points")
        t_a = time_it(lambda: method_per_point_functional(model, x_a), 1, args.repeats_a)
        log(f"  (a) per-point functional.jacobian: best {min(t_a):.4f}s for {len(x_a)} points")

        pps_jn = len(x) / min(t_jn)
        pps_b = len(x) / min(t_b)
        pps_a = len(x_a) / min(t_a)
        flops = jacobian_norm_flops(len(x), args.input_dim, width, args.depth, args.classes)
        rows.append({
            "width": width,
            "points": len(x),
            "points_a": len(x_a),
            "jacobian_norm_pps": pps_jn,
            "a_pps": pps_a,
            "b_pps": pps_b,
            "speedup_vs_a": pps_jn / pps_a,
            "speedup_vs_b": pps_jn / pps_b,
            "gflop_per_call": flops / 1e9,
            "jacobian_norm_gflops": flops / min(t_jn) / 1e9,
            "b_gflops": flops / min(t_b) / 1e9,  # same convention (softmax backward not counted)
            "times_s": {"jacobian_norm": t_jn, "a": t_a, "b": t_b},
            "median_s": {k: statistics.median(v)
                         for k, v in (("jacobian_norm", t_jn), ("a", t_a), ("b", t_b))},
            "agreement": check,
        })

    mm_after = matmul_gflops(args.matmul_n, 1, args.matmul_repeats, args.seed)
    log(f"matmul {args.matmul_n}^3: {mm_after['gflops']:.1f} GFLOP/s (after)")
    mm_rate = max(mm_before["gflops"], mm_after["gflops"])  # the machine's best in this run

    for r in rows:
        r["matmul_fraction"] = r["jacobian_norm_gflops"] / mm_rate
        r["b_matmul_fraction"] = r["b_gflops"] / mm_rate
        r["met"] = {
            "speedup_vs_a": r["speedup_vs_a"] >= TARGET_SPEEDUP_A,
            "speedup_vs_b": r["speedup_vs_b"] >= TARGET_SPEEDUP_B,
        }
        if r["width"] == TARGET_FRACTION_WIDTH:
            r["met"]["matmul_fraction"] = r["matmul_fraction"] >= TARGET_MATMUL_FRACTION

    print(f"torch {torch.__version__} (CPU), {threads} threads; depth {args.depth}, "
          f"{args.input_dim} inputs, {args.classes} classes, {args.activation}, fp32; "
          f"N={args.points} points for jacobian_norm and (b), {args.points_a} for (a); "
          f"best of {args.repeats} ((a): {args.repeats_a}) after {args.warmup} warm-up; "
          f"matmul {args.matmul_n}x{args.matmul_n} @ {args.matmul_n}x{args.matmul_n}: "
          f"{mm_rate:.1f} GFLOP/s (before {mm_before['gflops']:.1f}, "
          f"after {mm_after['gflops']:.1f})")
    print()
    print("| width | jacobian_norm points/s | (a) points/s | speedup vs (a) | (b) points/s "
          "| speedup vs (b) | GFLOP/s | fraction of matmul GFLOP/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        frac = f"{r['matmul_fraction']:.2f}"
        if "matmul_fraction" in r["met"]:
            frac += f" ({mark(r['met']['matmul_fraction'])}, target >= {TARGET_MATMUL_FRACTION:.2f})"
        print(f"| {r['width']} | {r['jacobian_norm_pps']:,.0f} | {r['a_pps']:,.1f} "
              f"| {r['speedup_vs_a']:.1f}x ({mark(r['met']['speedup_vs_a'])}) "
              f"| {r['b_pps']:,.0f} "
              f"| {r['speedup_vs_b']:.2f}x ({mark(r['met']['speedup_vs_b'])}) "
              f"| {r['jacobian_norm_gflops']:.1f} | {frac} |")
    print()
    all_met = all(all(r["met"].values()) for r in rows)
    print(f"Targets: >= {TARGET_SPEEDUP_A:g}x vs (a) and >= {TARGET_SPEEDUP_B:g}x vs (b) at every "
          f"width, >= {TARGET_MATMUL_FRACTION:.0%} of the matmul rate at width "
          f"{TARGET_FRACTION_WIDTH}: {'all met' if all_met else 'NOT all met'}.")
    summary = {
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "config": {k: v for k, v in vars(args).items() if not k.startswith("profile")},
        "matmul": {"gflops": mm_rate, "before": mm_before, "after": mm_after},
        "targets": {"speedup_vs_a": TARGET_SPEEDUP_A, "speedup_vs_b": TARGET_SPEEDUP_B,
                    "matmul_fraction": TARGET_MATMUL_FRACTION,
                    "matmul_fraction_width": TARGET_FRACTION_WIDTH},
        "rows": rows,
        "all_targets_met": all_met,
    }
    print(json.dumps(summary))
    return 1 if (args.strict and not all_met) else 0


def profile(args) -> int:
    from torch.profiler import ProfilerActivity, profile as tprofile

    for width in args.widths:
        model = build_mlp(args.input_dim, width, args.depth, args.classes, args.activation,
                          seed=args.seed)
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(args.points, args.input_dim,
                        generator=torch.Generator().manual_seed(args.seed + 1))
        for name, fn in (("jacobian_norm", method_jacobian_norm),
                         ("(b) per-class loop", method_per_class_loop)):
            for _ in range(max(1, args.warmup)):
                fn(model, x)
            calls = max(1, args.profile_calls)
            with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(model, x)
                dt = (time.perf_counter() - t0) / calls
            print(f"\n## {name}, width {width}, N={args.points}: {dt:.3f}s per call under the "
                  f"profiler; totals below are over {calls} calls\n")
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=args.profile_rows, max_name_column_width=40,
                max_shapes_column_width=70))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--depth", type=int, default=5, help="number of weight matrices")
    p.add_argument("--input-dim", type=int, default=784)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--activation", default="relu")
    p.add_argument("--points", type=int, default=2048, help="N for jacobian_norm and (b)")
    p.add_argument("--points-a", type=int, default=128, help="N for (a), the slow baseline")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (best is reported)")
    p.add_argument("--repeats-a", type=int, default=3, help="timed runs for (a)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--matmul-repeats", type=int, default=5)
    p.add_argument("--check-points", type=int, default=8, help="points for the agreement check")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4, help="relative to max |norm|")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit 1 if any target is not met")
    p.add_argument("--profile", action="store_true",
                   help="profile jacobian_norm and (b) at each width instead of benchmarking")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--profile-calls", type=int, default=3, help="profiled calls per method")
    args = p.parse_args(argv)
    if min(args.widths) < 1 or args.points < 1 or args.points_a < 1 or args.repeats < 1:
        p.error("widths, points, points-a and repeats must be positive")
    args.check_points = max(1, min(args.check_points, args.points))
    args.points_a = min(args.points_a, args.points)
    return profile(args) if args.profile else run(args)


if __name__ == "__main__":
    sys.exit(main())
