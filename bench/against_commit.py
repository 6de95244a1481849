"""The Tanh transition count and the sigma' searches of this checkout against those of an
earlier commit, side by side in one run, with their results compared.

The earlier modules (``workers/transitions.py``, ``workers/measures/pacbayes.py`` at
``--commit``, read with ``git show``) are loaded beside the current ones (the earlier PAC-Bayes
module without registering its measures again); both run on the same trained demo networks
(digits, depth 3, the demo's widths), interleaved, best of ``--repeats``, one thread:

* ``sampled_transitions`` on the 100 translation loops ``transitions_test`` walks by default,
  k = 4096, for the Tanh networks;
* both ``sigma_search`` calls (plain and magnitude-aware) on 500 and on 250 seeded training
  points, for a ReLU and a Tanh network.

    python bench/against_commit.py --commit b72a721
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import workers.measures as registry  # noqa: E402
import workers.measures.pacbayes as pacbayes  # noqa: E402
from sweep.config import compose  # noqa: E402
from sweep.plan import plan_trials  # noqa: E402
from bench.trained import trained  # noqa: E402
from workers.measures.builtin import point_subset  # noqa: E402
from workers.trajectories import translation_path  # noqa: E402
from workers.transitions import sampled_transitions  # noqa: E402


def earlier(commit: str, path: str, name: str):
    """The module at ``path`` as of ``commit``, loaded as ``name`` (its measures not
    registered again)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    f = Path(tempfile.mkdtemp(prefix="against_")) / f"{name}.py"
    f.write_text(text)
    spec = importlib.util.spec_from_file_location(name, f)
    mod = importlib.util.module_from_spec(spec)
    real = registry.register
    registry.register = lambda *a, **k: (lambda fn: fn)
    try:
        spec.loader.exec_module(mod)
    finally:
        registry.register = real
    return mod


def side_by_side(before, after, repeats: int):
    tb = ta = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b = before()
        tb = min(tb, time.perf_counter() - t)
        t = time.perf_counter()
        a = after()
        ta = min(ta, time.perf_counter() - t)
    return tb, ta, b, a


def demo_network(activation: str, width: int):
    """The second demo trial of this activation and width, trained: (model, data)."""
    s = [t for t in plan_trials(compose(["experiment=demo"]))
         if t.activation == activation and t.width == width][1]
    return trained(s)[:2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    old_tr = earlier(args.commit, "workers/transitions.py", "earlier_transitions")
    old_pb = earlier(args.commit, "workers/measures/pacbayes.py", "earlier_pacbayes")
    print("| network | what | before | after | ratio | same results |")
    print("|---|---|---:|---:|---:|---|")
    for act in ("relu", "tanh"):
        for width in (32, 128):
            model, data = demo_network(act, width)
            name = f"{act} w{width} d3"
            if act == "tanh":
                images = data.x_test[:100].reshape(100, *data.info.image_shape)
                paths = torch.stack([translation_path(im) for im in images])
                tb, ta, b, a = side_by_side(lambda: old_tr.sampled_transitions(model, paths, 4096),
                                            lambda: sampled_transitions(model, paths, 4096),
                                            args.repeats)
                print(f"| {name} | transitions, 100 loops, k = 4096 | {tb:.3f} s | {ta:.3f} s "
                      f"| {tb / ta:.2f}x | {torch.equal(a, b)} |", flush=True)
            x = data.x_train.reshape(len(data.x_train), -1)
            for points in (500, 250):
                idx = point_subset(len(x), points, 0)
                xs, ys = x[idx], data.y_train[idx]

                def search(mod):
                    return [mod.sigma_search(model, xs, ys, magnitude=m, seed=1)
                            for m in (False, True)]
                tb, ta, b, a = side_by_side(lambda: search(old_pb), lambda: search(pacbayes),
                                            args.repeats + 2)
                print(f"| {name} | both sigma' searches, {points} points | {1000 * tb:.1f} ms | "
                      f"{1000 * ta:.1f} ms | {tb / ta:.2f}x | {a == b} |", flush=True)


if __name__ == "__main__":
    main()
