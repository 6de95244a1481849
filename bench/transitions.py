"""Exact transition counting against the paper's dense sampling, on the A.5.2 network.

The network: ``build_mlp(784, 200, depth=20, 10, "relu")`` (A.5.2: 20 layers, width 200), once
untrained and once trained (momentum SGD on a seeded Fashion-MNIST subset, from the Debian
package ``dataset-fashion-mnist``; ``--root`` for another location). For each of ``--points``
test images, the trajectory is the closed loop of its 28 horizontal shifts
(``workers.trajectories.translation_path``), and both methods count transitions along it:

* exact: ``workers.transitions.count_transitions`` (region walk, float64);
* dense: ``workers.transitions.dense_transitions`` with k = 2^20 samples (the paper's count).

Each path is timed once per method (``time.perf_counter`` around the call; dense at 2^20 takes
tens of seconds, exact well under one). Dense <= exact must hold; a violation exits with status
2. Prints a Markdown table and a JSON line. Usage (from the repository root)::

    python bench/transitions.py --points 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from workers.data import DataError, load_data
from workers.models import build_mlp
from workers.results.spec import TrainSpec
from workers.train import train_model
from workers.trajectories import translation_path
from workers.transitions import count_transitions, dense_transitions

TARGET_SPEEDUP = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--points", type=int, default=2, help="test images (one path each)")
    p.add_argument("--k", type=int, default=1 << 20, help="dense samples per path")
    p.add_argument("--width", type=int, default=200)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--steps", type=int, default=3000, help="momentum SGD steps for 'trained'")
    p.add_argument("--root", default=None, help="Fashion-MNIST IDX directory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.points < 1 or args.k < 2 or args.steps < 1:
        p.error("points and steps must be >= 1, k >= 2")
    try:
        data = load_data("fashion_mnist", args.root, False, args.train_size, 1000, False, args.seed)
    except DataError as e:
        print(f"bench/transitions.py: {e}", file=sys.stderr)
        return 2
    model = build_mlp(784, args.width, args.depth, 10, "relu", seed=args.seed)
    images = data.x_test[: args.points]
    rows = []
    for state in ("untrained", "trained"):
        if state == "trained":
            log(f"training {args.steps} steps ...")
            out, dt = timed(lambda: train_model(model, data, "momentum", 0.005, 128,
                                                TrainSpec(steps=args.steps, early_stop=False),
                                                args.seed))
            log(f"  {out.steps} steps in {dt:.0f} s")
        model.eval()
        for i, img in enumerate(images):
            path = translation_path(img)
            exact, t_exact = timed(lambda: count_transitions(model, path))
            log(f"{state} image {i}: exact {exact} in {t_exact:.2f} s; dense k={args.k} ...")
            dense, t_dense = timed(lambda: dense_transitions(model, path, args.k))
            log(f"  dense {dense} in {t_dense:.1f} s")
            rows.append({"state": state, "image": i, "exact": exact, "dense": dense,
                         "exact_s": t_exact, "dense_s": t_dense, "speedup": t_dense / t_exact})
    bad = [r for r in rows if r["dense"] > r["exact"]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; relu MLP depth "
          f"{args.depth} width {args.width}, 784 inputs; Fashion-MNIST test images, closed "
          f"translation loops of 28 vertices; dense k = {args.k}\n")
    print("| network | image | exact count | dense count | exact s | dense s | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['state']} | {r['image']} | {r['exact']} | {r['dense']} | {r['exact_s']:.3f} "
              f"| {r['dense_s']:.1f} | {r['speedup']:.0f}x |")
    worst = min(r["speedup"] for r in rows)
    met = worst >= TARGET_SPEEDUP and not bad
    print(f"\nSmallest speedup {worst:.0f}x (target >= {TARGET_SPEEDUP:.0f}x); dense <= exact on "
          f"every path: {'yes' if not bad else 'NO'}. Target {'met' if met else 'NOT met'}.")
    print(json.dumps({"torch": torch.__version__, "machine": platform.machine(),
                      "threads": torch.get_num_threads(), "config": vars(args), "rows": rows,
                      "target_met": met}))
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
