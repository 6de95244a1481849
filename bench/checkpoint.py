"""Checkpoint overhead (workers/checkpoint.py), measured side by side in one run.

Trains the same network three times (one thread, same seed): without checkpoints; with the
default interval (``10min``: the loop checks the clock every step and, in a run this short,
never saves); and saving every ``--every`` steps. The per-save cost is the difference between
the last and the first, divided by the saves; the overhead at the default interval is that cost
per 10 minutes of training. Last line JSON.

    python bench/checkpoint.py                      # width 1024, depth 5, Adam, Fashion-MNIST
    python bench/checkpoint.py --dataset digits --width 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from workers.checkpoint import Checkpointer, parse_interval  # noqa: E402
from workers.data import load_data  # noqa: E402
from workers.models import build_mlp  # noqa: E402
from workers.results.spec import TrainSpec  # noqa: E402
from workers.train import train_model  # noqa: E402


def run(data, args, interval, out) -> tuple[float, int, int]:
    model = build_mlp(data.input_dim, args.width, args.depth, data.info.num_classes, "relu",
                      seed=1)
    ck = None
    if interval is not None:
        ck = Checkpointer(out, "bench", "{}", parse_interval(interval))
    t = time.perf_counter()
    train_model(model, data, "adam", 1e-3, 128,
                TrainSpec(steps=args.steps, early_stop=False, check_every=args.steps), seed=1,
                checkpoint=ck)
    size = (Path(out) / "checkpoints" / "bench.pt").stat().st_size if ck and ck.saves else 0
    return time.perf_counter() - t, (ck.saves if ck else 0), size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_data(args.dataset, train_size=args.train_size, test_size=100)
    best = {}
    for _ in range(args.repeats):  # interleaved, best of each
        for name, interval in (("none", None), ("default", "10min"), ("every", args.every)):
            with tempfile.TemporaryDirectory() as out:
                s, saves, size = run(data, args, interval, out)
            if name not in best or s < best[name][0]:
                best[name] = (s, saves, size)
    base, default, every = best["none"][0], best["default"][0], best["every"][0]
    saves, size = best["every"][1], best["every"][2]
    per_save = (every - base) / max(1, saves)
    result = {"train_s": base, "default_interval_s": default, "every_s": every, "saves": saves,
              "checkpoint_bytes": size, "per_save_s": per_save,
              "default_check_ratio": default / base,
              "overhead_at_10min": per_save / 600.0}
    print(f"training {args.steps} steps: {base:.2f} s without checkpoints, {default:.2f} s with "
          f"the default interval ({default / base:.3f}x), {every:.2f} s saving every "
          f"{args.every} steps ({saves} saves of {size / 2**20:.1f} MB: {per_save:.3f} s each); "
          f"at one save per 10 minutes the overhead is {100 * per_save / 600:.3f}%")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
