"""Check a CUDA machine before a long sweep: the same trials on the GPU (a fraction of a GPU per
trial) and on the CPU give the same numbers, train in true float32, and how many trials per
hour each runs.

    python bench/gpu_check.py [--trials 8] [--gpus-per-trial 0.25]

Runs `sweep launch` four times (the demo experiment on its digits data, its mini-batch
optimizers at learning rate 0.005, configurations drawn at random rather than in grid order so
that a few trials mix the non-linearities and optimizers: ``space.lr=[0.005]
'space.optimizer=[sgd,momentum,adam,rmsprop]' 'plan.grid=[]'``; ``out=`` temporary
directories, removed at the end unless ``--keep DIR``): the same trials with
``resources.gpus_per_trial=G`` and with 0, each at two training lengths, and reads them with
``analysis.load_results``:

- **early** (``train.steps=--early-steps``, 20): compared tightly (``EARLY``);
- **full** (the demo's training: up to 2000 steps, stopping at 100% train accuracy): compared
  a little more loosely (``FULL``); its launches' wall times give the trials per hour.

Why these tolerances: both sides compute in float32 (unit roundoff 2^-24 = 6e-8), but a GPU
sums matrix products and reductions in another order (blocked, split-K cuBLAS kernels,
parallel reductions): one product differs by about sqrt(K) x 6e-8 relative (1e-6 at K = 784).
Measured on one CPU with every nn.Linear summed in another order (products exact, rounded once
to float32: the same size of difference), 21 demo trials at lr 0.005 (ReLU, ReLU6 and Tanh, the
four mini-batch optimizers; after 20 steps and after the full training) agreed to within 1e-6
relative in losses and Jacobian norms, with the same accuracies and transition counts. The
tolerances leave a margin of 100x (early) and 10,000x (full) over that for kernels that differ
more: early, losses and Jacobian norms within 1e-4 relative, accuracies within 0.5% of the
points (a point on a decision boundary may change class), transitions within 1%, the same number of steps; full, 1e-2 relative, 1% of the points,
2% (a trial stopped early may stop at another check, so steps are not compared). A trial's
status must agree on both sides. The largest differences seen are printed beside each
tolerance. The demo's lr 0.05 is left out: there Adam's and RMSProp's first steps (lr x the
sign of each gradient entry, tiny entries' signs set by rounding) turn a rounding difference
into another network (up to 12 points of accuracy and 97% in a Jacobian norm between the two
summation orders above), and no tolerance tells a GPU fault from that. So is L-BFGS: its
line search compares losses, and a comparison that rounding flips takes another step (15% in
a training loss after 20 iterations, likewise).

Each trial also records two probe measures (``bench/gpu_probe.py``), read in its own worker
process after training: true float32 (TF32 off in torch.backends.cuda.matmul and
torch.backends.cudnn, float32 matmul precision "highest"; ``workers.trial.run_trial`` sets
them at the trial's start) and whether the network was on a CUDA device.

Exit codes: 0 every check passed; 1 a check failed (lines marked FAIL); 3 no CUDA device
(one line, nothing run); a failed `sweep launch` exits with its code and its stderr.
``--cpu-only`` runs both sides on the CPU (checks the plumbing on a machine without a GPU; the
numbers must then agree exactly). Last line JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-m", "sweep.cli"]
PROBE = ROOT / "bench" / "gpu_probe.py"
MEASURES = ["jacobian_norm_train", "jacobian_norm_test", "transitions_test",
            "probe_float32_strict", "probe_on_cuda"]
NO_CUDA = 3  # exit code: no CUDA device here


@dataclass(frozen=True)
class Tol:
    """|a - b| <= atol + rtol * max(|a|, |b|); two NaN agree (a value undefined on both)."""

    rtol: float = 0.0
    atol: float = 0.0

    def agree(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= self.atol + self.rtol * max(abs(a), abs(b))


# after --early-steps steps, and after the full training (see the module docstring)
EARLY = {
    "train_acc": Tol(atol=0.005), "test_acc": Tol(atol=0.005), "gen_gap": Tol(atol=0.01),
    "train_loss": Tol(rtol=1e-4, atol=1e-7), "test_loss": Tol(rtol=1e-4, atol=1e-7),
    "jacobian_norm_train": Tol(rtol=1e-4), "jacobian_norm_test": Tol(rtol=1e-4),
    "transitions_test": Tol(rtol=0.01, atol=0.5), "steps": Tol(),
}
FULL = {
    "train_acc": Tol(atol=0.01), "test_acc": Tol(atol=0.01), "gen_gap": Tol(atol=0.02),
    "train_loss": Tol(rtol=1e-2, atol=1e-5), "test_loss": Tol(rtol=1e-2, atol=1e-5),
    "jacobian_norm_train": Tol(rtol=1e-2), "jacobian_norm_test": Tol(rtol=1e-2),
    "transitions_test": Tol(rtol=0.02, atol=1.0),
}
EXACT = {k: Tol() for k in EARLY}  # --cpu-only: the same machine gives the same numbers


@dataclass
class Row:
    """One quantity compared over the trials that finished (status ok) on both sides."""

    quantity: str
    trials: int
    max_abs: float  # largest |gpu - cpu|
    max_rel: float  # largest |gpu - cpu| / max(|gpu|, |cpu|)
    worst: str | None  # trial_id of the largest relative difference
    tol: Tol
    failed: int  # trials outside the tolerance

    @property
    def ok(self) -> bool:
        return self.failed == 0


def compare(gpu, cpu, tolerances: dict[str, Tol]) -> tuple[list[Row], list[str]]:
    """Compare two ``analysis.load_results`` frames of the same plan (GPU, CPU) quantity by
    quantity. Returns (a Row per quantity in ``tolerances`` that either frame has, problems:
    trials on one side only, statuses that differ, a quantity one side lacks). Quantities are
    compared on the trials whose status is "ok" on both sides."""
    g, c = gpu.set_index("trial_id"), cpu.set_index("trial_id")
    problems = [f"trial {t} only in the {side} run" for side, a, b in (("GPU", g, c), ("CPU", c, g))
                for t in sorted(set(a.index) - set(b.index))]
    both = sorted(set(g.index) & set(c.index))
    problems += [f"trial {t}: status {g.at[t, 'status']} on the GPU, {c.at[t, 'status']} on "
                 "the CPU" for t in both if g.at[t, "status"] != c.at[t, "status"]]
    ok = [t for t in both if g.at[t, "status"] == "ok" == c.at[t, "status"]]
    rows = []
    for q, tol in tolerances.items():
        if q not in g.columns and q not in c.columns:
            continue
        if q not in g.columns or q not in c.columns:
            problems.append(f"{q}: only in the {'GPU' if q in g.columns else 'CPU'} run")
            continue
        max_abs = max_rel = 0.0
        worst, failed = None, 0
        for t in ok:
            a, b = float(g.at[t, q]), float(c.at[t, q])
            failed += not tol.agree(a, b)
            if math.isnan(a) or math.isnan(b):
                d = r = 0.0 if math.isnan(a) and math.isnan(b) else math.inf
            else:
                d = abs(a - b)
                r = d / max(abs(a), abs(b)) if d else 0.0
            max_abs = max(max_abs, d)
            if r > max_rel or worst is None:
                max_rel, worst = max(max_rel, r), t
        rows.append(Row(q, len(ok), max_abs, max_rel, worst, tol, failed))
    return rows, problems


def probe_problems(df, side: str, on_cuda: bool) -> list[str]:
    """The trials (status ok) whose probes say they did not train in true float32, or not on
    the expected device (``bench/gpu_probe.py``)."""
    ok = df[df["status"] == "ok"]
    out = []
    for col, want, what in (("probe_float32_strict", 1.0, "not in true float32 (TF32 on?)"),
                            ("probe_on_cuda", float(on_cuda),
                             "not on a CUDA device" if on_cuda else "on a CUDA device")):
        if col not in ok.columns:
            out.append(f"{side}: no {col} values (the probe did not run)")
            continue
        bad = ok["trial_id"][ok[col] != want].tolist()
        if bad:
            out.append(f"{side}: {len(bad)} trial(s) trained {what}: {', '.join(bad[:5])}")
    return out


def trials_per_hour(trials: int, seconds: float) -> float:
    return trials * 3600.0 / seconds if seconds > 0 else math.nan


def launch(out: Path, overrides: list[str]) -> float:
    """`sweep launch` into ``out``; its wall time in seconds. Exits with its code if it fails."""
    t = time.perf_counter()
    p = subprocess.run(SWEEP + ["launch", f"out={out}", "figure=false", "progress=false",
                                "save_weights=false", f"measures=[{','.join(MEASURES)}]",
                                f"measure_modules=[{PROBE}]", *overrides],
                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        print(f"gpu_check: `sweep launch` into {out} failed (exit {p.returncode})",
              file=sys.stderr)
        sys.exit(p.returncode)
    return time.perf_counter() - t


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def report(title: str, rows: list[Row], problems: list[str]) -> bool:
    """Print the comparison; whether it passed."""
    print(f"\n{title}")
    print(f"  {'quantity':<22}{'trials':>7}{'max |diff|':>12}{'max rel':>10}  tolerance")
    for r in rows:
        tol = f"rtol {_fmt(r.tol.rtol)}, atol {_fmt(r.tol.atol)}"
        flag = "" if r.ok else f"   FAIL ({r.failed} trials; worst {r.worst})"
        print(f"  {r.quantity:<22}{r.trials:>7}{_fmt(r.max_abs):>12}{_fmt(r.max_rel):>10}  "
              f"{tol}{flag}")
    for p in problems:
        print(f"  FAIL: {p}")
    return not problems and all(r.ok for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="demo trials per launch (default 8)")
    ap.add_argument("--gpus-per-trial", type=float, default=0.25,
                    help="resources.gpus_per_trial of the GPU launches (default 0.25)")
    ap.add_argument("--early-steps", type=int, default=20,
                    help="train.steps of the tightly compared launches (default 20)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the four sweep directories under this directory and keep them")
    ap.add_argument("--cpu-only", action="store_true",
                    help="both sides on the CPU: checks the plumbing here; exact agreement")
    args = ap.parse_args(argv)

    import torch

    if not args.cpu_only and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda or 'none'}): nothing run", flush=True)
        return NO_CUDA
    from analysis import load_results

    base = args.keep or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    gpus = 0.0 if args.cpu_only else args.gpus_per_trial
    common = [f"trials={args.trials}", "space.lr=[0.005]",
              "space.optimizer=[sgd,momentum,adam,rmsprop]", "plan.grid=[]"]
    frames, seconds = {}, {}
    for length, extra in (("early", [f"train.steps={args.early_steps}"]), ("full", [])):
        for side, g in (("gpu", gpus), ("cpu", 0)):
            out = base / f"{length}-{side}"
            print(f"{length} run, {side}: sweep launch ... out={out}", flush=True)
            seconds[length, side] = launch(out, common + extra + [f"resources.gpus_per_trial={g}"])
            frames[length, side] = load_results(str(out))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)

    device = torch.cuda.get_device_name(0) if not args.cpu_only else "CPU (--cpu-only)"
    print(f"\nGPU side: {device}, resources.gpus_per_trial={gpus:g}; {args.trials} demo trials")
    passed = True
    summary = {}
    for length, tolerances, title in (
            ("early", EARLY, f"after {args.early_steps} steps (tight: reduction order only)"),
            ("full", FULL, "after the demo's training (float32 differences grown over the run)")):
        rows, problems = compare(frames[length, "gpu"], frames[length, "cpu"],
                                 EXACT if args.cpu_only else tolerances)
        for side in ("gpu", "cpu"):
            problems += probe_problems(frames[length, side], side.upper(),
                                       side == "gpu" and not args.cpu_only)
        passed &= report(title, rows, problems)
        summary[length] = {"rows": [{**asdict(r), "tol": asdict(r.tol)} for r in rows],
                           "problems": problems}
    rates = {side: trials_per_hour(args.trials, seconds["full", side]) for side in ("gpu", "cpu")}
    per_trial = {side: float(frames["full", side]["wall_time_s"].mean()) for side in ("gpu", "cpu")}
    print("\nthroughput of the full launches (wall time of `sweep launch`, Ray's start included):")
    for side in ("gpu", "cpu"):
        print(f"  {side.upper()}: {rates[side]:,.0f} trials per hour "
              f"({seconds['full', side]:.1f} s for {args.trials}; "
              f"{per_trial[side]:.2f} s per trial inside its worker)")
    print(f"\n{'PASSED' if passed else 'FAILED'}: GPU and CPU trials agree" if passed
          else "\nFAILED: see the FAIL lines above")
    print(json.dumps({"passed": passed, "device": device, "gpus_per_trial": gpus,
                      "trials": args.trials, "seconds": {f"{k[0]}-{k[1]}": v
                                                         for k, v in seconds.items()},
                      "trials_per_hour": rates, "seconds_per_trial": per_trial, **summary}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
