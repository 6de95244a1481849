"""Issue #26 item 5, smaller frictions: `sweep measure` finds the module a stored measure was
measured with; `sweep show` says when the data set's files are missing; a stopped launch or
resume leaves the resume command on stdout (the end-to-end test is marked slow: it starts Ray)."""

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


def _planned(tmp_path, capsys) -> Path:
    out = tmp_path / "s"
    assert main(["plan", f"out={out}", *TINY]) == 0
    capsys.readouterr()
    return out


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


# --- sweep show: a data set whose files are missing -------------------------------------------


def test_show_says_when_the_data_sets_files_are_missing(tmp_path, capsys):
    """`sweep plan` refuses a data set whose files are not under dataset.root; `sweep show`
    displays the configuration (exit 0: it only displays) with a note saying the same."""
    from sweep.show import show

    over = ["dataset=fashion_mnist", f"dataset.root={tmp_path}"]
    assert main(["plan", f"out={tmp_path / 's'}", *over]) == 2
    refusal = _err_lines(capsys)
    assert len(refusal) == 1 and refusal[0].startswith("sweep: error: dataset fashion_mnist")
    why = refusal[0].removeprefix("sweep: error: ")
    assert f"files not found under {tmp_path}" in why and not (tmp_path / "s").exists()
    for keys in (False, True):
        assert main(["show", *over] + (["--keys"] if keys else [])) == 0
        text = capsys.readouterr().out
        notes = [ln for ln in text.splitlines() if ln.startswith("# note:")]
        assert notes == [f"# note: {why}; sweep plan and sweep launch refuse this configuration "
                         "until then"]
        assert text.splitlines().index(notes[0]) == 2  # in the head, above the configuration
    # the bundled data set: no note
    assert not [ln for ln in show(["dataset=digits"]).splitlines() if ln.startswith("# note")]


# --- a stop leaves the resume command on stdout -----------------------------------------------


@pytest.mark.parametrize("command", ["launch", "resume"])
@pytest.mark.parametrize("stop,code", [("signal", 130), ("runtime", 3), ("keyboard", 130)])
def test_a_stopped_sweep_prints_the_resume_command_on_stdout(tmp_path, capsys, monkeypatch,
                                                              command, stop, code):
    """What finished goes to stderr (sweep.driver.launch); the command that runs the rest also
    goes to stdout, so `sweep launch ... > log` keeps it. The stop is raised where the
    dispatcher raises it (a signal: DispatchStopped 130; a lost Ray runtime: 3), or as a
    KeyboardInterrupt outside it."""
    from sweep import driver
    from sweep.commands import sweep_command

    out = _planned(tmp_path, capsys)

    def stopped(cfg, *a, **k):
        if stop == "keyboard":
            raise KeyboardInterrupt
        raise driver.DispatchStopped("stopped", code, {"ok": 1})

    monkeypatch.setattr(driver, "launch", stopped)
    args = ["launch", f"out={out}", *TINY] if command == "launch" else ["resume", str(out)]
    assert main(args) == code
    std = capsys.readouterr()
    resume = sweep_command("resume", out)
    assert std.out.splitlines() == [f"stopped; run the rest with: {resume}"]
    assert "Traceback" not in std.err


def test_a_stop_before_any_plan_prints_no_resume_command(tmp_path, capsys, monkeypatch):
    from sweep import driver

    def stopped(cfg, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "launch", stopped)
    assert main(["launch", f"out={tmp_path / 'new'}", *TINY]) == 130
    std = capsys.readouterr()
    assert std.out == "" and "interrupted" in std.err and "sweep resume" not in std.err


# --- sweep measure: the module a stored measure was measured with ----------------------------


def _store_value(out, name: str, module: str | None) -> None:
    """One stored value of measure ``name`` for the sweep's first trial, and measures.json as
    a launch or `sweep measure` with ``measure_modules=[module]`` leaves it."""
    from workers.measures import Outcome
    from workers.results.measure_table import write_outcome, write_selection
    from workers.results.plan_file import Plan

    tid = Plan(out).ids[0]
    assert write_outcome(out, tid, Outcome(name, 1.5, 1, {}, 0.01)) is not None
    write_selection(out, {name: (1, {})}, None if module is None else {name: module})


def test_measure_names_the_module_it_cannot_import(tmp_path, capsys):
    out = _planned(tmp_path, capsys)
    gone = str(tmp_path / "moved_away.py")
    _store_value(out, "gone_measure", gone)
    assert main(["measure", str(out), "measures=[gone_measure]"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1, err
    assert (f"its 1 stored value was measured with measure_modules=[{gone}], which cannot be "
            f"imported here (FileNotFoundError: {gone})") in err[0]
    assert "pass measure_modules=[PATH] naming the module that registers gone_measure" in err[0]
    # its values were stored before modules were recorded: the same advice
    _store_value(out, "unrecorded_measure", None)
    assert main(["measure", str(out), "measures=[unrecorded_measure]"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "without a record of its module" in err[0]
    assert "pass measure_modules=[PATH]" in err[0]
    # a name nothing is stored of: the usual line with the registered measures
    assert main(["measure", str(out), "measures=[never_measured]"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "unknown ['never_measured']" in err[0]


def test_measure_says_when_the_recorded_module_no_longer_registers_it(tmp_path, capsys):
    out = _planned(tmp_path, capsys)
    mod = tmp_path / "renamed.py"
    mod.write_text(textwrap.dedent("""
        from workers.measures import register

        @register("new_name_f2", source="test", needs=("model",))
        def new_name(inputs):
            return 0.0
    """))
    _store_value(out, "old_name_f2", str(mod))
    assert main(["measure", str(out), "measures=[old_name_f2]"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and f"measure_modules=[{mod}], which no longer registers it" in err[0]


MODULE = '''
"""Two measures of a lab: registered through measure_modules."""
from workers.measures import register


@register("abs_sum_f2", source="test: sum of |w| over every parameter", needs=("model",))
def abs_sum(inputs):
    return float(sum(p.detach().double().abs().sum() for p in inputs.model.parameters()))


@register("count_f2", source="test: number of parameters", needs=("model",))
def count(inputs):
    return float(sum(p.numel() for p in inputs.model.parameters()))
'''


@pytest.mark.slow
def test_measure_imports_the_module_its_stored_values_were_measured_with(ray_local, tmp_path,
                                                                         capsys):
    """The README's flow: a sweep launched without measure_modules, one measure added with
    `sweep measure ... measure_modules=[lab.py]`; a later `sweep measure` (a new process)
    naming that measure without measure_modules imports lab.py, as recorded in measures.json,
    says so, and evaluates what is missing (here the module's other measure), nothing twice."""
    from safetensors.numpy import load_file

    from analysis import load_results
    from procs import run
    from sweep.config import compose
    from sweep.driver import launch

    lab = tmp_path / "lab.py"
    lab.write_text(MODULE)
    out = tmp_path / "sweep"
    launch(compose(TINY + [f"out={out}", "measures=[params]"]))
    assert main(["measure", str(out), "measures=[abs_sum_f2]", f"measure_modules=[{lab}]"]) == 0
    sel = json.loads((out / "measures.json").read_text())
    assert sel["abs_sum_f2"]["module"] == str(lab) and "module" not in sel["params"]
    before = sorted(p.name for p in (out / "measures").glob("*.parquet"))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    rc = run([sys.executable, "-m", "sweep.cli", "measure", str(out),
              "measures=[abs_sum_f2,count_f2]", "progress=false"],
             env=env, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr
    assert (f"measures: abs_sum_f2 from {lab}, the module its stored values were measured "
            "with") in rc.stderr
    after = sorted(p.name for p in (out / "measures").glob("*.parquet"))
    assert set(before) < set(after)
    assert {n for n in set(after) - set(before)} == {n for n in after if ".count_f2." in n}
    df = load_results(out)
    assert len(df) == 4 and df.count_f2.notna().all() and df.abs_sum_f2.notna().all()
    for tid, s, c in zip(df.trial_id, df.abs_sum_f2, df.count_f2):
        w = load_file(str(out / "weights" / f"{tid}.safetensors"))
        assert c == sum(v.size for v in w.values())
        assert s == pytest.approx(sum(float(np.abs(v.astype(np.float64)).sum())
                                      for v in w.values()), rel=1e-12)
