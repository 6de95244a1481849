"""Every command the tool prints for a user to copy means in a shell what it says: read back
with ``shlex.split`` (as a POSIX shell splits it), it gives exactly the intended arguments,
for a sweep directory whose name holds a space and a quote, and for overrides with brackets,
spaces and quotes."""

import html
import json
import re
import shlex

import pandas as pd
import pytest

from sweep import cli, driver
from sweep.commands import sweep_command
from sweep.config import ConfigError, compose

NAME = "my sweep's \"1st\" $HOME"  # a space, both quotes, and what a shell would expand


@pytest.fixture
def odd(tmp_path):
    """A sweep directory path no shell may split, unquote or expand."""
    return str(tmp_path / NAME)


def _after(text: str, marker: str) -> list[str]:
    """The arguments of the command that follows ``marker`` in ``text`` (to the line's end)."""
    line = next(ln for ln in text.splitlines() if marker in ln)
    return shlex.split(line.split(marker, 1)[1])


def test_sweep_command_round_trips():
    args = ["resume", "runs/my sweep", "it's", 'a "b"', "~/x", "$HOME", "measures=[a,b]", "",
            "--train-acc", "0.9"]
    assert shlex.split(sweep_command(*args)) == ["sweep", *args]
    assert sweep_command("resume", "runs/plain") == "sweep resume runs/plain"  # no noise


def _planned(odd, capsys) -> str:
    """Plan a 2-trial sweep in ``odd``; its stderr."""
    cfg = compose([f"out={json.dumps(odd)}", "trials=2"])  # Hydra's quoted string
    assert cfg.out_dir() == odd
    assert driver.plan_only(cfg) == odd
    return capsys.readouterr().err


def test_plan_and_an_interrupted_launch_print_a_resume_command_for_that_directory(
        odd, capsys, monkeypatch):
    err = _planned(odd, capsys)
    assert _after(err, "run them with: ") == ["sweep", "resume", odd]

    # a dispatch that stops (Ctrl-C): what is left, and how to run it
    def stopped(*a, **k):
        raise driver.DispatchStopped("interrupted", 130, {"ok": 0})

    monkeypatch.setattr(driver, "dispatch", stopped)
    with pytest.raises(driver.DispatchStopped):
        driver.launch(compose([f"out={json.dumps(odd)}", "trials=2"]))
    assert _after(capsys.readouterr().err, "Run them with: ") == ["sweep", "resume", odd]

    # Ctrl-C outside the dispatcher
    cli._interrupted(odd)
    assert _after(capsys.readouterr().err, "run the rest with: ") == ["sweep", "resume", odd]


def test_an_old_sweeps_refusal_names_its_resume_command(odd, capsys):
    """A sweep of identity version 1 launched again with other measurement settings."""
    from workers.results.layout import SWEEP_FILE
    from workers.results.storage import store

    _planned(odd, capsys)
    doc = json.loads(store(odd).read_text(SWEEP_FILE))
    store(odd).write_text(SWEEP_FILE, json.dumps({**doc, "identity_version": 1,
                                                  "identity_hash": "0" * 16}))
    with pytest.raises(ConfigError) as e:
        driver.check_out_dir(store(odd), compose([f"out={json.dumps(odd)}", "trials=2"]))
    cmd = re.search(r"`(sweep resume .*)` runs what is left", str(e.value)).group(1)
    assert shlex.split(cmd) == ["sweep", "resume", odd]


def test_report_commands_name_the_directory(odd, capsys, monkeypatch):
    from workers.results.record import SUMMARY_COLUMNS, write_trial

    _planned(odd, capsys)
    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id="t0", status="ok", dataset="digits", train_acc=1.0, test_acc=0.5)
    write_trial(odd, row)
    import analysis.report

    def broken(*a, **k):
        raise RuntimeError("no figures today")

    monkeypatch.setattr(analysis.report, "make_report", broken)
    cli._report_after(odd)
    assert _after(capsys.readouterr().err, "write it with: ") == ["sweep", "report", odd]

    from pathlib import Path

    page = Path(odd) / "report" / "report.html"  # newer than every result: kept
    page.parent.mkdir()
    page.write_text("<html></html>")
    cli._report_after(odd)
    assert _after(capsys.readouterr().err, "rebuild it with: ") == ["sweep", "report", odd]

    # the report's own advice: a lower train-accuracy threshold
    df = pd.DataFrame({"status": ["ok"] * 4, "train_acc": [1.0, 0.95, 0.95, 0.95]})
    note = html.unescape(re.sub("<[^>]+>", "", analysis.report.filter_note(df, 1.0, odd)))
    cmd = re.search(r"100%\): (sweep report .*?)\. More", note).group(1)
    assert shlex.split(cmd) == ["sweep", "report", odd, "--train-acc", "0.95"]


def test_an_interrupted_measure_prints_its_own_command_again(odd, capsys, monkeypatch):
    import sweep.measure

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.measure, "measure_sweep", interrupted)
    overrides = ["measures=[weight_l2,params]", 'metrics.note="a b\'s"']
    assert cli.cmd_measure(odd, overrides) == 130
    assert _after(capsys.readouterr().err, "Evaluate the rest with: ") == [
        "sweep", "measure", odd, *overrides]
    # --retry-errors is part of what to run again (the errors not yet retried stay errors)
    assert cli.cmd_measure(odd, overrides, retry_errors=True) == 130
    assert _after(capsys.readouterr().err, "Evaluate the rest with: ") == [
        "sweep", "measure", odd, "--retry-errors", *overrides]
    # stopped while retraining: the ids whose retraining did not end (sweep.measure)

    def stopped_retraining(*a, **k):
        raise sweep.measure.MeasureStopped("SIGINT", 130, {}, ("ab12", "cd34"))

    monkeypatch.setattr(sweep.measure, "measure_sweep", stopped_retraining)
    assert cli.cmd_measure(odd, overrides, retry_errors=True, retrain="ab12,cd34,ef56") == 130
    assert _after(capsys.readouterr().err, "Evaluate the rest with: ") == [
        "sweep", "measure", odd, "--retrain", "ab12,cd34", "--retry-errors", *overrides]


def test_show_prints_the_launch_command_it_was_given(odd):
    from sweep.show import show

    overrides = [f"out={json.dumps(odd)}", "space.width=[8,16]", "trials=3"]
    text = show(overrides)
    assert _after(text, "# launch it with: ") == ["sweep", "launch", *overrides]
    assert f"sweep directory: {odd}\n" in text
