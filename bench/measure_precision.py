"""What cheaper settings of the Monte-Carlo measures cost in precision, on demo networks.

For a few trained demo networks (width 128, every 7th of the demo plan's width-128 trials),
each setting is run with several seeds (the point subset and the draws or random start change
with the seed; the network does not) and the mean and standard deviation over seeds are
printed, with the mean time of one run (one thread):

- sigma' (both searches, ``workers.measures.pacbayes.sigma_search``): 10 draws on 500 points
  (the default), 10 on 250, 5 on 250;
- sharpness (``workers.measures.sharpness.sharpness_value``, alpha 5e-4, 1000 points): 20 ascent
  steps (the default), 10, 5.

The demo experiment's settings (``conf/experiment/demo.yaml``) were chosen from this table.

    python bench/measure_precision.py --networks 6 --seeds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.trained import trained  # noqa: E402
from sweep.config import compose  # noqa: E402
from sweep.plan import plan_trials  # noqa: E402
from workers.measures import Undefined  # noqa: E402
from workers.measures.builtin import point_subset  # noqa: E402
from workers.measures.pacbayes import sigma_search  # noqa: E402
from workers.measures.sharpness import sharpness_value  # noqa: E402

SIGMA = (("10 draws, 500 points", 10, 500), ("10 draws, 250 points", 10, 250),
         ("5 draws, 250 points", 5, 250))
SHARPNESS = (("20 steps", 20), ("10 steps", 10), ("5 steps", 5))


def over_seeds(fn, seeds: int) -> tuple[float, float, float]:
    """(mean, standard deviation, mean seconds) of fn(seed) over the seeds it is defined for."""
    values, seconds = [], 0.0
    for seed in range(seeds):
        t = time.perf_counter()
        try:
            values.append(fn(seed))
        except Undefined:
            pass
        seconds += time.perf_counter() - t
    if len(values) < 2:
        return float("nan"), float("nan"), seconds / seeds
    return statistics.mean(values), statistics.stdev(values), seconds / seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", type=int, default=6)
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    specs = [s for s in plan_trials(compose(["experiment=demo"])) if s.width == 128]
    print("| network | measure | setting | mean | sd over seeds | s per run |")
    print("|---|---|---|---:|---:|---:|")
    for s in specs[::7][: args.networks]:
        model, data, _ = trained(s)
        x = data.x_train.reshape(len(data.x_train), -1)
        y = data.y_train
        name = f"{s.activation}/{s.optimizer} lr {s.lr:g}"
        for magnitude in (False, True):
            for label, samples, points in SIGMA:
                def run(seed, samples=samples, points=points):
                    idx = point_subset(len(x), points, seed)
                    return sigma_search(model, x[idx], y[idx], magnitude=magnitude,
                                        seed=100 + seed, samples=samples)["sigma"]
                mean, sd, sec = over_seeds(run, args.seeds)
                print(f"| {name} | sigma'{'_mag' if magnitude else ''} | {label} | {mean:.4f} "
                      f"| {sd:.4f} | {sec:.3f} |", flush=True)
        for label, steps in SHARPNESS:
            def run(seed, steps=steps):
                idx = point_subset(len(x), 1000, seed)
                return sharpness_value(model, x[idx], y[idx], 5e-4, steps, 300 + seed)[0]
            mean, sd, sec = over_seeds(run, args.seeds)
            print(f"| {name} | sharpness | {label} | {mean:.3g} | {sd:.2g} | {sec:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
