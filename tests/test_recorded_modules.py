"""`sweep resume DIR measures=[X]` and `sweep launch` of an existing sweep directory import a
user measure X from the module recorded with its stored values in ``measures.json``, as `sweep
measure` does (sweep.measure.recorded_modules); a recorded module that cannot be imported, or
no longer registers X, is one line and exit 2 before any work. The end-to-end test (Ray, a
new process for the resume) is marked slow."""

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sweep.cli import main

TINY = ["experiment=demo", "trials=4", "dataset.train_size=200", "dataset.test_size=60",
        "train.steps=100", "train.check_every=50", "space.width=[16]", "space.depth=[2]",
        "metrics.transitions_points=5", "progress=false", "figure=false"]


def _lab(path: Path, tag: str) -> Path:
    """A user measure module at ``path`` registering ``abs_sum_<tag>`` (sum of |w| over every
    parameter) and ``count_<tag>`` (number of parameters)."""
    path.write_text(textwrap.dedent(f'''
        from workers.measures import register


        @register("abs_sum_{tag}", source="test: sum of |w| over every parameter",
                  needs=("model",))
        def abs_sum(inputs):
            return float(sum(p.detach().double().abs().sum()
                             for p in inputs.model.parameters()))


        @register("count_{tag}", source="test: number of parameters", needs=("model",))
        def count(inputs):
            return float(sum(p.numel() for p in inputs.model.parameters()))
    '''))
    return path


def _planned(tmp_path, capsys, out: str | None = "s") -> Path:
    """A planned tiny sweep (no Ray): ``tmp_path/out``, or under runs/ of the working directory
    when ``out`` is None (the directory a launch derives from the configuration's hash)."""
    over = [] if out is None else [f"out={tmp_path / out}"]
    assert main(["plan", *over, *TINY]) == 0
    location = capsys.readouterr().out.split("sweep directory: ")[1].split("  (")[0]
    return Path(location)


def _store_value(out: Path, name: str, module: str | None) -> None:
    """One stored value of ``name`` for the sweep's first trial, and measures.json as `sweep
    measure ... measure_modules=[module]` leaves it (None: a value stored before modules were
    recorded)."""
    from workers.measures import Outcome
    from workers.results.measure_table import write_outcome, write_selection
    from workers.results.plan_file import Plan

    tid = Plan(out).ids[0]
    assert write_outcome(out, tid, Outcome(name, 1.5, 1, {}, 0.01)) is not None
    write_selection(out, {name: (1, {})}, None if module is None else {name: module})


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in out.rglob("*") if p.is_file()}


@pytest.fixture
def capture(monkeypatch):
    """From its call on, the configurations driver.launch and driver.plan_only are called with
    go to the list it returns (nothing runs)."""
    from sweep import driver

    def start() -> list:
        calls = []

        def record(cfg, *a, **k):
            calls.append(cfg)
            return cfg.out_dir()

        monkeypatch.setattr(driver, "launch", record)
        monkeypatch.setattr(driver, "plan_only", record)
        return calls

    return start


def _command(command: str, out: Path, *over: str) -> list[str]:
    if command == "resume":
        return ["resume", str(out), *over]
    return [command, f"out={out}", *TINY, *over]


@pytest.mark.parametrize("command", ["resume", "launch", "plan"])
def test_a_measure_named_again_comes_from_its_recorded_module(tmp_path, capsys, capture,
                                                              command):
    """The module's other measure (no value stored) comes with it; the module joins the
    configuration's measure_modules (the workers import it), with the log line of `sweep
    measure`."""
    tag = f"rm1{command}"
    out = _planned(tmp_path, capsys)
    lab = _lab(tmp_path / "lab.py", tag)
    _store_value(out, f"abs_sum_{tag}", str(lab))
    launched = capture()
    assert main(_command(command, out, f"measures=[abs_sum_{tag},count_{tag}]")) == 0
    [cfg] = launched
    assert cfg.measure_modules == (str(lab),)
    assert cfg.measures == (f"abs_sum_{tag}", f"count_{tag}")
    assert Path(cfg.out_dir()) == out
    assert (f"measures: abs_sum_{tag} from {lab}, the module its stored values were measured "
            "with") in capsys.readouterr().err


def test_a_launch_without_out_finds_the_sweep_directory_it_derives(tmp_path, capsys, capture,
                                                                   monkeypatch):
    """out unset: the directory is runs/<experiment>-<data set>-<hash>, found from the
    configuration without the measures (they are not part of the trials' identity)."""
    monkeypatch.chdir(tmp_path)
    out = _planned(tmp_path, capsys, out=None)
    assert out.parent == Path("runs") and (out / "sweep.json").is_file()
    lab = _lab(tmp_path / "lab.py", "rm2")
    _store_value(out, "abs_sum_rm2", str(lab))
    launched = capture()
    assert main(["launch", *TINY, "measures=[abs_sum_rm2]"]) == 0
    [cfg] = launched
    assert Path(cfg.out_dir()) == out and cfg.measure_modules == (str(lab),)
    capsys.readouterr()
    # another sweep (another seed): nothing is recorded in its directory, no module is added
    # (the measure is registered in this process by the launch above: no unknown-measure line)
    assert main(["launch", *TINY, "seed=7", "measures=[abs_sum_rm2]"]) == 0
    other = launched[1]
    assert Path(other.out_dir()) != out and other.measure_modules == ()
    assert "the module its stored values were measured with" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["resume", "launch"])
def test_an_explicit_measure_modules_wins_over_the_recorded_module(tmp_path, capsys, capture,
                                                                   command):
    """The module moved: its recorded path is gone, measure_modules= names the new one."""
    tag = f"rm3{command}"
    out = _planned(tmp_path, capsys)
    _store_value(out, f"abs_sum_{tag}", str(tmp_path / "old_place.py"))
    new = _lab(tmp_path / "new_place.py", tag)
    launched = capture()
    assert main(_command(command, out, f"measures=[abs_sum_{tag}]",
                         f"measure_modules=[{new}]")) == 0
    [cfg] = launched
    assert cfg.measure_modules == (str(new),) and cfg.measures == (f"abs_sum_{tag}",)
    assert "the module its stored values were measured with" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["resume", "launch"])
@pytest.mark.parametrize("case", ["gone", "renamed", "unrecorded"])
def test_a_recorded_module_that_cannot_serve_is_one_line_before_any_work(tmp_path, capsys,
                                                                         capture, command,
                                                                         case):
    tag = f"rm4{command}{case}"
    out = _planned(tmp_path, capsys)
    name = f"old_{tag}"
    module = {"gone": str(tmp_path / "moved_away.py"), "unrecorded": None,
              "renamed": str(_lab(tmp_path / "renamed.py", tag))}[case]
    _store_value(out, name, module)
    before = _snapshot(out)
    launched = capture()
    assert main(_command(command, out, f"measures=[{name}]")) == 2
    err = _err_lines(capsys)
    assert len(err) == 1, err
    assert err[0].startswith(f"sweep: error: measures: {name}")
    expected = {
        "gone": (f"its 1 stored value was measured with measure_modules=[{module}], which "
                 f"cannot be imported here (FileNotFoundError: {module})"),
        "renamed": (f"its 1 stored value was measured with measure_modules=[{module}], which "
                    "no longer registers it"),
        "unrecorded": "its 1 stored value was measured without a record of its module",
    }[case]
    assert expected in err[0]
    assert err[0].endswith(f"pass measure_modules=[PATH] naming the module that registers "
                           f"{name}")
    assert launched == [] and _snapshot(out) == before


@pytest.mark.slow
def test_resume_evaluates_a_measure_added_by_sweep_measure(ray_local, tmp_path, capsys):
    """The README's flow: a sweep launched without measure_modules; `sweep measure ...
    measure_modules=[lab.py]` adds one measure; a later `sweep resume` (a new process) naming
    it and the module's other measure, without measure_modules, imports lab.py as recorded,
    says so, trains nothing and evaluates only the missing values, checked against the saved
    weights."""
    from safetensors.numpy import load_file

    from analysis import load_results
    from procs import run
    from sweep.config import compose
    from sweep.driver import launch

    lab = _lab(tmp_path / "lab.py", "rm5")
    out = tmp_path / "sweep"
    launch(compose(TINY + [f"out={out}", "measures=[params]"]))
    assert main(["measure", str(out), "measures=[abs_sum_rm5]", f"measure_modules=[{lab}]"]) == 0
    trials = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "trials").glob("*.parquet"))
    before = sorted(p.name for p in (out / "measures").glob("*.parquet"))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    rc = run([sys.executable, "-m", "sweep.cli", "resume", str(out),
              "measures=[params,abs_sum_rm5,count_rm5]", "progress=false"],
             env=env, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr
    assert (f"measures: abs_sum_rm5 from {lab}, the module its stored values were measured "
            "with") in rc.stderr
    assert sorted((p.name, p.stat().st_mtime_ns)
                  for p in (out / "trials").glob("*.parquet")) == trials  # nothing trained
    after = sorted(p.name for p in (out / "measures").glob("*.parquet"))
    assert set(before) < set(after)
    assert set(after) - set(before) == {n for n in after if ".count_rm5." in n}
    assert json.loads((out / "measures.json").read_text())["count_rm5"]["module"] == str(lab)
    df = load_results(out)
    assert len(df) == 4 and df.count_rm5.notna().all() and df.abs_sum_rm5.notna().all()
    for tid, s, c in zip(df.trial_id, df.abs_sum_rm5, df.count_rm5):
        w = load_file(str(out / "weights" / f"{tid}.safetensors"))
        assert c == sum(v.size for v in w.values())
        assert s == pytest.approx(sum(float(np.abs(v.astype(np.float64)).sum())
                                      for v in w.values()), rel=1e-12)
