"""A tiny sweep end to end through a local Ray (marked slow: it starts Ray)."""

import pandas as pd
import pytest
import scipy.stats
import torch

from analysis import load_points, load_results
from sweep.cli import main
from sweep.config import compose
from sweep.driver import launch
from workers import load_model
from workers.data import load_data
from workers.results.layout import trial_path

pytestmark = pytest.mark.slow

TINY = ["trials=6", "dataset.train_size=200", "dataset.test_size=80", "train.steps=150",
        "train.check_every=50", "space.width=[16,32]", "space.depth=[2,3]",
        "space.batch_size=[32]", "progress=false",
        "measures=[jacobian_norm_train,jacobian_norm_test]"]  # (two keep trials short and rank)
EVERY = ["measures=[all]"]  # the default: the first test runs every measure end to end
FILLED = ["trial_id", "status", "dataset", "width", "depth", "activation", "optimizer", "lr",
          "init_scale", "seed", "random_labels", "augment", "steps", "n_params",
          "train_acc", "test_acc", "train_loss", "test_loss", "gen_gap", "jacobian_norm_train",
          "jacobian_norm_test", "transitions_test", "transitions_method", "transitions_points",
          "wall_time_s"]


def test_tiny_sweep_resume_and_weights(ray_local, tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = compose(TINY + EVERY + [f"out={out}", "save_weights=true"])
    assert main(["launch", *TINY, *EVERY, f"out={out}", "save_weights=true"]) == 0  # and the report
    df = load_results(out)
    assert len(df) == 6 and (df["status"] == "ok").all(), df[["status", "error"]]
    assert df[FILLED].notna().all().all()
    # batch_size has one meaning in the plan and the results: null exactly for full batch
    assert (df.batch_size.isna() == (df.optimizer == "lbfgs")).all()
    pl = df.activation != "tanh"
    assert (df.loc[pl, "transitions_method"] == "exact").all() and pl.any()
    assert (df.loc[~pl, "transitions_method"] == "sampled").all()
    pts = load_points(out)
    assert len(pts) == 6 * (200 + 80)
    assert set(pts["trial_id"]) == set(df["trial_id"])

    # launching the same sweep again runs nothing and rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*.parquet")}
    launch(cfg)
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*.parquet")} == mtimes
    assert "0 to run" in capsys.readouterr().err

    # a truncated result is detected, kept aside, and that trial (only) is re-run
    victim = df["trial_id"].iloc[2]
    path = trial_path(out, victim)
    path.write_bytes(path.read_bytes()[:100])
    assert main(["status", str(out)]) == 0
    assert "invalid" in capsys.readouterr().out
    launch(cfg)
    assert "1 to run" in capsys.readouterr().err
    df2 = load_results(out)
    assert len(df2) == 6 and (df2["status"] == "ok").all()
    assert list((out / "trials" / "invalid").iterdir())
    cols = ["trial_id", "train_acc", "test_acc", "jacobian_norm_test", "transitions_test"]
    a = df.sort_values("trial_id")[cols].reset_index(drop=True)
    b = df2.sort_values("trial_id")[cols].reset_index(drop=True)
    assert a.equals(b)  # the re-run reproduces the lost numbers exactly (CPU determinism)

    # saved weights rebuild the trained network
    row = df.set_index("trial_id").loc[victim]
    model = load_model(out, victim)
    data = load_data("digits", train_size=200, test_size=80)
    acc = (model(data.x_test.flatten(1)).argmax(1) == data.y_test).double().mean().item()
    assert acc == pytest.approx(row["test_acc"])

    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "ok" in status and "6/6" in status

    # `sweep launch` wrote the report (the CLI, after the launch); with every trial let in, its Kendall tau is scipy's
    assert (out / "report" / "report.html").stat().st_size > 10_000
    assert main(["report", str(out), "--train-acc", "0", "--bootstrap", "10"]) == 0
    table = pd.read_csv(out / "report" / "statistics.csv")
    got = table.query("group == 'all' and measure == 'jacobian_norm_test' and statistic == 'kendall'")
    ok = df2[df2.status == "ok"]
    assert got["value"].item() == pytest.approx(
        scipy.stats.kendalltau(ok["jacobian_norm_test"], ok["gen_gap"]).statistic, abs=1e-12)


def test_failed_trials_are_recorded_and_the_sweep_goes_on(ray_local, tmp_path):
    out = tmp_path / "s"
    # a step so large that trials blow up (a few may instead kill every unit and stay finite)
    cfg = compose(TINY + [f"out={out}", "space.optimizer=[sgd,adam]", "space.lr=[1e30]",
                          "space.init_scale=8", "plan.grid=[optimizer]", "trials=4", "figure=false"])
    launch(cfg)
    df = load_results(out)
    assert len(df) == 4
    assert set(df["status"]) <= {"ok", "diverged"} and (df["status"] == "diverged").sum() >= 2
    bad = df[df.status == "diverged"]
    assert bad["error"].str.contains("non-finite").all() and bad["test_acc"].isna().all()


def test_launch_output_conventions_and_no_report_rebuild_when_nothing_ran(tmp_path):
    """stdout: the sweep directory and the report's path (`sweep launch > log` keeps them);
    stderr: progress and diagnostics, without Ray's token-authentication warning. A relaunch
    with nothing to run keeps the report as it is."""
    import os
    import sys

    from procs import run

    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "sweep.cli", "launch", *TINY[1:], "trials=2", f"out={out}"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_AUTH_MODE", None)
    r = run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    page = out / "report" / "report.html"
    assert r.stdout.splitlines() == [
        f"sweep directory: {out}  (analysis.load_results({str(out)!r}))", f"report: {page}"]
    assert "2 to run" in r.stderr and "Token authentication" not in r.stderr
    before = page.stat().st_mtime_ns
    r = run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 to run" in r.stderr and "report: unchanged" in r.stderr
    assert r.stdout.splitlines()[-1] == f"report: {page}"
    assert page.stat().st_mtime_ns == before
