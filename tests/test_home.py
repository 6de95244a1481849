"""One meaning of ``~`` in every path the tool takes: a shell's (``os.path.expanduser``), also
when no shell expanded it (``out="~/x"`` quoted, as Hydra's own error advises; a SWEEP_DIR
argument given in quotes; a path in Python). The commands run in a child process whose HOME is
a temporary directory and whose arguments are a list (no shell), from a working directory that
must stay empty: a sweep lands in $HOME/x, never in ./~/x."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal
from procs import run

from workers.results.record import SUMMARY_COLUMNS, points_columns, write_trial
from workers.results.storage import Store, expand, store

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """(HOME, an empty working directory); HOME set for this process too."""
    h, cwd = tmp_path / "home", tmp_path / "cwd"
    h.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.chdir(cwd)
    return h, cwd


def _sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run([sys.executable, "-m", "sweep.cli", *args], cwd=cwd, env=env,
               capture_output=True, text=True, timeout=300)


def _results(d: Path) -> list[str]:
    """ok results for every planned trial of ``d``, as a trial would write them."""
    import pyarrow.parquet as pq

    ids = pq.read_table(d / "plan.parquet", columns=["trial_id"]).column(0).to_pylist()
    for i, tid in enumerate(ids):
        row = {c: None for c in SUMMARY_COLUMNS}
        row.update(trial_id=tid, status="ok", dataset="digits", width=8, depth=2,
                   activation="relu", optimizer="sgd", lr=0.1, batch_size=32, init_scale=1.0,
                   seed=i, steps=5, train_acc=1.0, test_acc=0.5 + i / 10, gen_gap=0.5 - i / 10)
        write_trial(d, row, points_columns("test", [0], [1], [0.5], [0.1], [True]))
    return ids


def test_expand_is_a_shells():
    h = os.path.expanduser("~")
    assert expand("~/x") == os.path.join(h, "x") and expand("~") == h
    assert expand(Path("~/x")) == os.path.join(h, "x")
    for literal in ("./~/x", "a/~", "/abs/~/x", "runs/x", "s3://bucket/~/x", "file:///~/x"):
        assert expand(literal) == literal


def test_quoted_tilde_in_every_command_means_home(home):
    h, cwd = home
    # a measure of its own name: this process loads the module too (stored_config below)
    (h / "lab.py").write_text(
        "from workers.measures import register\n\n\n"
        "@register('home_weight_count', source='test', needs=('model',))\n"
        "def home_weight_count(inputs):\n"
        "    return float(sum(p.numel() for p in inputs.model.parameters()))\n")
    r = _sweep(cwd, "plan", 'out="~/x"', "trials=2", 'dataset.root="~/data"',
               'measure_modules=["~/lab.py"]', "measures=[home_weight_count]")
    assert r.returncode == 0, r.stderr
    d = h / "x"
    assert (d / "plan.parquet").is_file() and (d / "sweep.json").is_file()
    assert r.stdout.startswith(f"sweep directory: {d} ")
    conf = json.loads((d / "sweep.json").read_text())["config"]
    assert conf["dataset"]["root"] == str(h / "data")
    assert conf["measure_modules"] == [str(h / "lab.py")]

    from sweep.show import show

    assert f"sweep directory: {d}\n" in show(['out="~/x"'])

    ids = _results(d)
    r = _sweep(cwd, "status", "~/x")  # a SWEEP_DIR argument no shell expanded
    assert r.returncode == 0, r.stderr
    assert f"sweep {d}: 2 trials planned" in r.stdout and "ok              2" in r.stdout

    r = _sweep(cwd, "compact", "~/x")
    assert r.returncode == 0 and "compacted 2 trials" in r.stdout, r.stderr
    assert (d / "compacted" / "_manifest.parquet").is_file()

    # measure reads its plan and results from there (no saved weights: says so, names it)
    r = _sweep(cwd, "measure", "~/x")
    assert r.returncode == 2 and f"SWEEP_DIR: {d}: 2 finished trials lack" in r.stderr

    r = _sweep(cwd, "report", "~/x", "--train-acc", "0", "--bootstrap", "0", "--out", "~/rep")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report: {h / 'rep' / 'report.html'}"
    assert (h / "rep" / "report.html").is_file()

    # resume reads its configuration from $HOME/x (not from ./~/x, which does not exist)
    from sweep.driver import stored_config

    cfg = stored_config("~/x")
    assert cfg.out_dir() == str(d) and cfg.dataset.root == str(h / "data")
    assert sorted(os.listdir(cwd)) == []  # nothing under ./~ (or anywhere here)
    assert len(ids) == 2


def test_analysis_loads_expand_tilde(home):
    from analysis import load_measures, load_points, load_results
    from analysis.load import result_files

    h, cwd = home
    d = h / "x"
    d.mkdir()
    (d / "plan.parquet").write_bytes((FIXTURES / "schema2_sweep" / "plan.parquet").read_bytes())
    _results(d)
    assert_frame_equal(load_results("~/x"), load_results(d))
    assert_frame_equal(load_points("~/x"), load_points(d))
    assert_frame_equal(load_measures("~/x"), load_measures(d))
    assert result_files("~/x") == result_files(d) and result_files(d)
    assert store("~/x").location == str(d) and Store("~/x").path("trials") == str(d / "trials")
    assert sorted(os.listdir(cwd)) == []
