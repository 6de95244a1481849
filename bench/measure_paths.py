"""The measures' fast paths against their plain versions, side by side in one run (#12).

For each network (the demo's shapes: digits, width 128, depth 3, one per non-linearity, trained
as a demo trial; ``--fmnist`` adds a width-128, depth-3 ReLU network on 2,000 Fashion-MNIST
points, 784 inputs, from the Debian package ``dataset-fashion-mnist``), each
pair is timed interleaved, best of ``--repeats``, one thread, and the two results are compared
(equal, or equal to 1e-9 relative for float64 sums taken in another order):

* transitions (Tanh): ``dense_transitions`` one loop at a time against ``sampled_transitions``
  (the first layer interpolated, cache-sized chunks) on the 100 loops ``transitions_test`` uses;
* transitions (piecewise linear): ``transitions_per_edge`` with all edges in one batch (the
  earlier default) against its cache-sized default;
* sigma' searches (both): error counts in float64 against ``_error_counts`` (float32 with the
  rounding bound), without and with the first layer's products (``_FirstLayer``) and points in
  chunks of ``CACHE`` against one chunk;
* expected sharpness: the direct first layer and one chunk against ``_FirstLayer`` and chunks.

``--wide`` times the last two on a width-1024, depth-5 ReLU network instead (minutes; use
``--repeats 1``), where the float32 error counts' bound is loose and they switch to float64.

Prints one line per network and pair with the ratio (plain / fast); last line JSON.

    python bench/measure_paths.py --fmnist
    python bench/measure_paths.py --wide --repeats 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import workers.measures.pacbayes as pb  # noqa: E402
from workers.data import load_data  # noqa: E402
from workers.models import build_mlp  # noqa: E402
from workers.results.spec import TrainSpec  # noqa: E402
from workers.train import train_model  # noqa: E402
from workers.trajectories import translation_path  # noqa: E402
from workers.transitions import (dense_transitions, sampled_transitions,  # noqa: E402
                                 transitions_per_edge)


def best(fn, repeats):
    out, t = None, float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return out, t


def plain_pacbayes():
    """Switch the sigma' searches and the curve to their plain paths (float64 error counts, the
    direct first layer, one chunk of points); returns the undo."""
    saved = (pb._one_lipschitz, pb._FirstLayer.__init__, pb.CACHE)

    def no_first(self, *a, **k):
        self.usable = False

    pb._one_lipschitz = lambda layers: False
    pb._FirstLayer.__init__ = no_first
    pb.CACHE = pb.BUDGET

    def undo():
        pb._one_lipschitz, pb._FirstLayer.__init__, pb.CACHE = saved
    return undo


def pair(name, plain, fast, repeats, same):
    """Time plain and fast interleaved; -> row."""
    tp = tf = float("inf")
    for _ in range(repeats):
        a, t = best(plain, 1)
        tp = min(tp, t)
        b, t = best(fast, 1)
        tf = min(tf, t)
    return {"pair": name, "plain_s": tp, "fast_s": tf, "ratio": tp / tf, "same": same(a, b)}


def close(a, b, rel=1e-9):
    if isinstance(a, dict):
        return all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
    return a == b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fmnist", action="store_true",
                   help="add a ReLU network on 2,000 Fashion-MNIST points (784 inputs)")
    p.add_argument("--wide", action="store_true",
                   help="only a width-1024, depth-5 ReLU network on 2,000 Fashion-MNIST points "
                        "(300 SGD steps; the Monte-Carlo measures, not the transitions)")
    args = p.parse_args()
    torch.set_num_threads(1)
    digits = load_data("digits", None, False, None, None, False, 0, "cpu")
    nets = [(a, "digits") for a in ("relu", "relu6", "tanh", "hardtanh", "hardsigmoid")]
    if args.fmnist:
        nets.append(("relu", "fashion_mnist"))
    if args.wide:
        nets = [("relu", "wide")]
    rows = []
    grid = [float(a) for a in torch.logspace(-4, -1, 10, dtype=torch.float64)] + [1e-3]
    for act, name in nets:
        data = digits if name == "digits" else load_data("fashion_mnist", None, False, 2000, 200,
                                                         False, 0, "cpu")
        width, depth, lr, steps = (1024, 5, 0.01, 300) if name == "wide" else (128, 3, 0.05, 2000)
        model = build_mlp(data.input_dim, width, depth, 10, act, 1.0, 1)
        train_model(model, data, "sgd", lr, 128, TrainSpec(steps=steps), 1, False)
        x, y = data.x_train[:500].reshape(500, -1), data.y_train[:500]
        paths = torch.stack([translation_path(im) for im in data.x_test[:100]])
        d = data.input_dim
        label = f"{act} w{width} d{depth} ({d} inputs)"
        out = []
        if name == "wide":
            pass
        elif act == "tanh":
            out.append(pair("transitions (Tanh, k=4096)",
                            lambda: [dense_transitions(model, v, 4096) for v in paths],
                            lambda: sampled_transitions(model, paths, 4096).tolist(),
                            args.repeats, lambda a, b: a == b))
        else:
            out.append(pair("transitions (exact)",
                            lambda: transitions_per_edge(model, paths, max_edges=1 << 20),
                            lambda: transitions_per_edge(model, paths),
                            args.repeats, lambda a, b: torch.equal(a, b)))

        def searches():
            return [pb.sigma_search(model, x, y, magnitude=m, seed=5) for m in (False, True)]

        def curve():
            return pb.expected_sharpness_curve(model, x, y, grid, samples=10, seed=7)

        for name, fn in (("sigma' searches (both)", searches), ("expected sharpness", curve)):
            tp = tf = float("inf")
            for _ in range(args.repeats):
                undo = plain_pacbayes()
                try:
                    a, t = best(fn, 1)
                finally:
                    undo()
                tp = min(tp, t)
                b, t = best(fn, 1)
                tf = min(tf, t)
            out.append({"pair": name, "plain_s": tp, "fast_s": tf, "ratio": tp / tf,
                        "same": close(a, b)})
        for r in out:
            r["network"] = label
            print(f"{label}: {r['pair']}: plain {r['plain_s']:.3f} s, fast {r['fast_s']:.3f} s, "
                  f"{r['ratio']:.2f}x, {'same values' if r['same'] else 'VALUES DIFFER'}",
                  flush=True)
        rows += out
    print(json.dumps(rows))
    if not all(r["same"] for r in rows):
        sys.exit(2)


if __name__ == "__main__":
    main()
