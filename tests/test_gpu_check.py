"""bench/gpu_check.py without a GPU: its one-line refusal (exit 3) and its comparison of GPU and
CPU results on hand-made numbers."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"status": "ok", "train_acc": 1.0, "test_acc": 0.9, "gen_gap": 0.1, "train_loss": 0.01,
            "test_loss": 0.4, "jacobian_norm_train": 2.0, "jacobian_norm_test": 2.5,
            "transitions_test": 40.0, "steps": 20}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_no_cuda_device_is_one_line_and_exit_3():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, on a GPU machine too
    p = subprocess.run([sys.executable, str(SCRIPT), "--trials", "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device"), p.stdout
    assert p.stderr.strip() == ""


def test_tolerance(gc):
    t = gc.Tol(rtol=1e-3, atol=1e-6)
    assert t.agree(1.0, 1.0009) and not t.agree(1.0, 1.002)
    assert t.agree(0.0, 5e-7) and not t.agree(0.0, 2e-6)  # the floor near 0
    assert t.agree(math.nan, math.nan) and not t.agree(math.nan, 1.0)
    assert gc.Tol().agree(3.0, 3.0) and not gc.Tol().agree(3.0, 3.0 + 1e-12)


def test_identical_results_pass(gc):
    df = frame([{"trial_id": "a"}, {"trial_id": "b"}])
    rows, problems = gc.compare(df, df.copy(), gc.EARLY)
    assert problems == [] and all(r.ok and r.trials == 2 and r.max_abs == 0 for r in rows)
    assert {r.quantity for r in rows} == set(gc.EARLY)


def test_early_is_tight_and_full_is_loose(gc):
    cpu = frame([{"trial_id": "a"}, {"trial_id": "b"}])
    gpu = frame([{"trial_id": "a", "test_loss": 0.4 * (1 + 5e-5)},  # reduction order: both pass
                 {"trial_id": "b", "jacobian_norm_test": 2.5 * 1.005, "test_acc": 0.908,
                  "transitions_test": 41.0}])  # grown over training: only FULL passes
    rows, problems = gc.compare(gpu, cpu, gc.EARLY)
    by = {r.quantity: r for r in rows}
    assert problems == []
    assert by["test_loss"].ok and by["test_loss"].max_rel == pytest.approx(5e-5, rel=1e-3)
    assert not by["jacobian_norm_test"].ok and by["jacobian_norm_test"].worst == "b"
    assert by["jacobian_norm_test"].max_rel == pytest.approx(0.005 / 1.005)
    assert not by["test_acc"].ok and by["test_acc"].max_abs == pytest.approx(0.008)
    assert not by["transitions_test"].ok and by["transitions_test"].failed == 1
    assert by["train_acc"].ok and by["steps"].ok
    rows, problems = gc.compare(gpu, cpu, gc.FULL)
    assert problems == [] and all(r.ok for r in rows)
    far = frame([{"trial_id": "a", "train_acc": 0.95}, {"trial_id": "b"}])  # 5 points apart
    rows, _ = gc.compare(far, cpu, gc.FULL)
    assert [r.quantity for r in rows if not r.ok] == ["train_acc"]


def test_statuses_missing_trials_and_undefined_values(gc):
    cpu = frame([{"trial_id": "a"}, {"trial_id": "b"}, {"trial_id": "c", "status": "diverged",
                                                          "test_loss": math.nan},
                 {"trial_id": "d", "jacobian_norm_test": math.nan}])
    gpu = frame([{"trial_id": "a", "transitions_test": math.nan},  # undefined on one side only
                 {"trial_id": "b", "status": "diverged", "test_loss": math.nan},
                 {"trial_id": "c", "status": "diverged", "test_loss": math.nan},
                 {"trial_id": "d", "jacobian_norm_test": math.nan},  # undefined on both: agree
                 {"trial_id": "e"}])
    rows, problems = gc.compare(gpu, cpu, gc.EARLY)
    assert problems == ["trial e only in the GPU run",
                        "trial b: status diverged on the GPU, ok on the CPU"]
    by = {r.quantity: r for r in rows}
    assert by["test_loss"].trials == 2 and by["test_loss"].ok  # a and d: the trials ok on both
    assert by["jacobian_norm_test"].ok
    assert not by["transitions_test"].ok and by["transitions_test"].max_rel == math.inf
    rows, problems = gc.compare(gpu.drop(columns="transitions_test"), cpu, gc.EARLY)
    assert "transitions_test: only in the CPU run" in problems


def test_probes(gc):
    good = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["ok", "ok", "diverged"],
                         "probe_float32_strict": [1.0, 1.0, math.nan],
                         "probe_on_cuda": [1.0, 1.0, math.nan]})
    assert gc.probe_problems(good, "GPU", on_cuda=True) == []
    assert gc.probe_problems(good, "CPU", on_cuda=False) == [
        "CPU: 2 trial(s) trained on a CUDA device: a, b"]
    tf32 = good.assign(probe_float32_strict=[1.0, 0.0, math.nan])
    assert gc.probe_problems(tf32, "GPU", on_cuda=True) == [
        "GPU: 1 trial(s) trained not in true float32 (TF32 on?): b"]
    assert gc.probe_problems(good.drop(columns="probe_on_cuda"), "GPU", True) == [
        "GPU: no probe_on_cuda values (the probe did not run)"]


def test_trials_per_hour(gc):
    assert gc.trials_per_hour(8, 60.0) == pytest.approx(480.0)
    assert math.isnan(gc.trials_per_hour(8, 0.0))


def test_the_probe_reads_true_float32():
    """The probe measures' test of true float32, in this process: not with TF32 allowed, a
    lower matmul precision or float64 parameters."""
    import torch

    from workers import measures

    spec = importlib.util.spec_from_file_location("gpu_probe_t", ROOT / "bench" / "gpu_probe.py")
    probe = importlib.util.module_from_spec(spec)
    saved = dict(measures.REGISTRY)
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32)
    try:
        spec.loader.exec_module(probe)
        model = torch.nn.Linear(3, 2)
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert probe.float32_strict(model)
        assert not probe.float32_strict(model.double())
        torch.set_float32_matmul_precision("high")
        assert not probe.float32_strict(model.float())
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = True
        assert not probe.float32_strict(model)
    finally:  # torch's settings as they were; the probes registered for this test only
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]
        measures.REGISTRY.clear()
        measures.REGISTRY.update(saved)


def test_a_trial_turns_tf32_off_at_its_start(tmp_path):
    """workers.trial.run_trial sets true float32 in its process, whatever it was before (a
    worker process that had TF32 on trains without it)."""
    import torch

    from sweep.config import compose
    from sweep.plan import plan_trials
    from workers.results.spec import RunContext
    from workers.trial import run_trial

    spec = plan_trials(compose(["trials=1", "dry_run=true"]))[0]
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32)
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        run_trial(spec, RunContext(out_dir=str(tmp_path), dry_run=True))
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]
