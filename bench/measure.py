"""Time `sweep measure` per trial on the demo sweep, side by side with training it.

Launches the demo (30 trials on digits, weights saved automatically) into a temporary
directory, then, in the same run: `sweep measure` of the three built-in measures at new
settings (every value evaluated again from the saved weights), the same call again (nothing to
do), and a user measure from a module (the README's `weight_l2`). Prints wall times, seconds
per trial and the ratio to the launch; last line JSON.

    python bench/measure.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-m", "sweep.cli"]


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(SWEEP + args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    out = Path(tempfile.mkdtemp()) / "demo"
    lab = ROOT / "tests" / "fixtures" / "lab_measures.py"
    times = {"launch (train + measure, 30 trials)": timed(
        ["launch", f"out={out}", "figure=false", "progress=false"])}
    trials = 30
    times["sweep measure, 3 built-in measures at new settings"] = timed(
        ["measure", str(out), "metrics.jacobian_points=200", "metrics.transitions_points=50"])
    times["sweep measure again (nothing to do)"] = timed(
        ["measure", str(out), "metrics.jacobian_points=200", "metrics.transitions_points=50"])
    times["sweep measure, a user measure (weight_l2)"] = timed(
        ["measure", str(out), "measures=[weight_l2]", f"measure_modules=[{lab}]"])
    launch = times["launch (train + measure, 30 trials)"]
    for k, v in times.items():
        print(f"{k}: {v:.1f} s, {v / trials:.2f} s per trial, {v / launch:.2f} x the launch")
    print(json.dumps({"trials": trials, "seconds": times}))


if __name__ == "__main__":
    main()
