"""Damaged weights name their file and their cure (issue #22 item 10): a truncated weights file
and one holding another network's weights fail `sweep measure` with a message naming the file
and a command that repairs it (`sweep measure DIR --retrain IDS ...`); that command trains
those networks again, writes the same weights as the original training (byte for byte, on
CPU), keeps the damaged files aside, leaves every trial result and stored value untouched, and
the measures then evaluate."""

from __future__ import annotations

import re
import shlex

import pytest

from sweep.cli import main
from sweep.config import compose

TINY = ["experiment=demo", "trials=3", "dataset.train_size=120", "dataset.test_size=40",
        "train.steps=40", "train.check_every=20", "space.width=[8]", "space.depth=[2]",
        "space.batch_size=[32]", "metrics.transitions_points=2", "progress=false",
        "figure=false", "save_weights=true", "measures=[jacobian_norm_test]"]


def _stamps(d, sub):
    return {p.relative_to(d).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (d / sub).rglob("*.parquet")}


@pytest.mark.slow
def test_damaged_weights_name_the_file_and_the_printed_command_repairs_them(ray_local, tmp_path,
                                                                           capsys):
    import torch
    from safetensors.torch import save

    from analysis import load_results
    from sweep.driver import launch
    from workers.models import build_mlp

    out = tmp_path / "s"
    launch(compose(TINY + [f"out={out}"]))
    files = sorted((out / "weights").glob("*.safetensors"))
    assert len(files) == 3
    original = {f.name: f.read_bytes() for f in files}
    truncated, other, intact = files
    truncated.write_bytes(original[truncated.name][:len(original[truncated.name]) // 2])
    wrong = build_mlp(64, 16, 2, 10, "relu")  # another shape than the trial's width 8
    other.write_bytes(save({k: v.contiguous() for k, v in wrong.state_dict().items()}))
    capsys.readouterr()

    assert main(["measure", str(out), "measures=[jacobian_norm_train]"]) == 1
    err = capsys.readouterr().err
    for f, what in ((truncated, "unreadable"), (other, "the weights of another network")):
        line = next(ln for ln in err.splitlines() if f.stem in ln and "not evaluated" in ln)
        assert str(f) in line and what in line, line
    m = re.search(r"evaluate with: (sweep measure .*)$", err, re.M)
    assert m, err
    command = shlex.split(m.group(1))
    assert command[:4] == ["sweep", "measure", str(out), "--retrain"]
    assert set(command[4].split(",")) == {truncated.stem, other.stem}
    assert command[5:] == ["measures=[jacobian_norm_train]"]

    trials, values = _stamps(out, "trials"), _stamps(out, "measures")
    assert main(command[1:]) == 0  # the printed command repairs them
    err = capsys.readouterr().err
    assert err.count("weights written again") == 2, err
    for f in files:  # the networks the trials trained, to the byte
        assert f.read_bytes() == original[f.name], f.name
    kept = sorted(p.name.split(".")[0] for p in (out / "weights" / "damaged").iterdir())
    assert kept == sorted([truncated.stem, other.stem])  # moved aside, not deleted
    assert _stamps(out, "trials") == trials  # no trial result touched
    now = _stamps(out, "measures")
    assert {k: now[k] for k in values} == values  # no stored value touched
    assert len(now) == len(values) + 2  # the two repaired trials: jacobian_norm_train
    df = load_results(out)
    assert df.jacobian_norm_train.notna().all() and (df.status == "ok").all()
    assert intact.read_bytes() == original[intact.name]


@pytest.mark.slow
def test_a_network_that_does_not_reproduce_its_record_is_not_written(ray_local, tmp_path,
                                                                      monkeypatch):
    """Retraining writes weights only for the network the record describes: against a record
    whose train_loss differs in the last bit (as a non-deterministic GPU run would leave),
    nothing is written and the reason is given; against the true record, the weights are."""
    import math

    import workers.results.record
    from sweep.driver import Plan, launch, open_out
    from workers.retrain import retrain_weights

    out = tmp_path / "s"
    launch(compose(TINY[:1] + ["trials=1"] + TINY[2:] + [f"out={out}"]))
    (w,) = (out / "weights").glob("*.safetensors")
    before = w.read_bytes()
    w.unlink()
    (spec,) = list(Plan(open_out(out)))
    true_summary = workers.results.record.read_trial_summary

    def off_by_one_bit(sweep_dir, trial_id):
        row = true_summary(sweep_dir, trial_id)
        return {**row, "train_loss": math.nextafter(row["train_loss"], math.inf)}

    monkeypatch.setattr(workers.results.record, "read_trial_summary", off_by_one_bit)
    why = retrain_weights(spec, str(out), None, False)
    assert why is not None and "train_loss" in why and "nothing written" in why
    assert not w.exists()
    monkeypatch.setattr(workers.results.record, "read_trial_summary", true_summary)
    assert retrain_weights(spec, str(out), None, False) is None
    assert w.read_bytes() == before


def test_retrain_of_an_id_that_is_not_a_finished_trial_is_one_line(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["plan", *TINY, "trials=1", f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["measure", str(out), "--retrain", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--retrain: 0123456789abcdef is not a finished (ok) trial" in err
    assert main(["measure", str(out), "--retrain="]) == 2
    assert "--retrain: no trial id" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stop_while_retraining_prints_the_retrainings_left(ray_local, tmp_path, capsys,
                                                              monkeypatch):
    """Ctrl-C after the first of three retrainings: the command printed to evaluate the rest
    names the two whose retraining did not end (`--retrain`), not all three and not none (the
    next call would have failed them as damaged again, or trained the first again); that
    command retrains those two and evaluates."""
    import os
    import signal

    import sweep.measure
    from sweep.driver import launch

    out = tmp_path / "s"
    launch(compose(TINY + [f"out={out}"]))
    ids = sorted(p.stem for p in (out / "weights").glob("*.safetensors"))
    real_done = sweep.measure.RetrainWork.done
    seen = []

    def done_then_interrupted(self, unit, results):
        n = real_done(self, unit, results)
        seen.extend(s.trial_id for s in unit)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # (the loop's handler: no new retraining)
        return n

    monkeypatch.setattr(sweep.measure.RetrainWork, "done", done_then_interrupted)
    capsys.readouterr()
    rc = main(["measure", str(out), "--retrain", ",".join(ids), "resources.max_in_flight=1",
               "measures=[jacobian_norm_train]"])
    err = capsys.readouterr().err
    assert rc == 130 and len(seen) == 1, err
    m = re.search(r"Evaluate the rest with: (sweep measure .*)$", err, re.M)
    assert m, err
    command = shlex.split(m.group(1))
    left = [t for t in ids if t not in seen]
    assert command == ["sweep", "measure", str(out), "--retrain", ",".join(left),
                       "resources.max_in_flight=1", "measures=[jacobian_norm_train]"]
    monkeypatch.setattr(sweep.measure.RetrainWork, "done", real_done)
    assert main(command[1:]) == 0
    err = capsys.readouterr().err
    assert err.count("weights written again") == 2 and all(t in err for t in left), err
