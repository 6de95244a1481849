"""Checkpoints (workers/checkpoint.py): a trial interrupted mid-training - by an exception at a
checkpoint, or by SIGKILL of the process that trains it - resumes from its last checkpoint and
ends bitwise equal to an uninterrupted run (CPU), for the mini-batch optimizers and L-BFGS."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sweep.config import ConfigError, compose
from workers import checkpoint as ck
from workers.checkpoint import Checkpointer, Interval, checkpoint_file, parse_interval
from workers.results.layout import trial_path, weights_file
from workers.results.record import read_trial
from workers.results.spec import DataSpec, RunContext, TrainSpec, TrialSpec
from workers.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["status", "steps", "train_acc", "test_acc", "train_loss", "test_loss",
        "jacobian_norm_train", "jacobian_norm_test", "transitions_test"]


def spec(optimizer="momentum", steps=400, **kw):
    lbfgs = optimizer == "lbfgs"  # (L-BFGS converges in ~35 iterations here: short chunks)
    return TrialSpec(data=DataSpec("digits", train_size=300, test_size=60), width=32, depth=3,
                     activation="relu", optimizer=optimizer, lr=1.0 if lbfgs else 0.01,
                     batch_size=None if lbfgs else 64, init_scale=1.0, seed=1,
                     train=TrainSpec(steps=steps, check_every=5 if lbfgs else 25,
                                     early_stop=False, **kw))


def weights(out, tid):
    return (Path(out) / weights_file(tid)).read_bytes()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop", "lbfgs"])
def test_a_trial_interrupted_after_a_checkpoint_resumes_bitwise(tmp_path, monkeypatch,
                                                                optimizer):
    s = spec(optimizer, steps=200 if optimizer == "lbfgs" else 400)
    whole = run_trial(s, RunContext(str(tmp_path / "whole"), save_weights=True))
    assert whole["status"] == "ok"

    real_save = Checkpointer.save
    resumed = []

    def save_then_die(self, step, state):  # the worker dies right after its 2nd checkpoint
        real_save(self, step, state)
        if self.saves == 2:
            raise Interrupt(f"killed after step {step}")

    ctx = RunContext(str(tmp_path / "cut"), save_weights=True,
                     checkpoint_every=10 if optimizer == "lbfgs" else 30, keep_checkpoints=True)
    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    cut = run_trial(s, ctx)
    assert cut["status"] == "failed" and "Interrupt" in cut["error"]
    state = torch.load(tmp_path / "cut" / checkpoint_file(s.trial_id), weights_only=True)
    assert 0 < state["step"] < whole["steps"]
    # a worker that dies leaves no result (the Interrupt above recorded one): its retry finds
    # none, as after a real kill (a result there would stand: record.write_trial)
    os.unlink(trial_path(tmp_path / "cut", s.trial_id))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    real_load = Checkpointer.load
    monkeypatch.setattr(Checkpointer, "load",
                        lambda self: resumed.append(real_load(self)) or resumed[-1])
    again = run_trial(s, ctx)
    assert resumed[0] is not None and resumed[0]["step"] == state["step"]
    assert [again[k] for k in KEYS] == [whole[k] for k in KEYS]
    assert weights(tmp_path / "cut", s.trial_id) == weights(tmp_path / "whole", s.trial_id)
    pa = read_trial(trial_path(tmp_path / "whole", s.trial_id)).column("points").to_pylist()
    pb = read_trial(trial_path(tmp_path / "cut", s.trial_id)).column("points").to_pylist()
    assert pa == pb


WORKER = """
import sys
from workers.results.spec import RunContext, TrialSpec
from workers.trial import run_trial
spec = TrialSpec.from_json(open(sys.argv[1]).read())
run_trial(spec, RunContext(sys.argv[2], save_weights=True, checkpoint_every=20))
"""


def test_a_sigkilled_worker_resumes_from_its_checkpoint_and_ends_bitwise_equal(tmp_path):
    s = spec("adam", steps=2500)  # ample steps after the 200th for the kill to land first
    whole = run_trial(s, RunContext(str(tmp_path / "whole"), save_weights=True))
    (tmp_path / "spec.json").write_text(s.canonical())
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "spec.json"), str(out)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    path = out / checkpoint_file(s.trial_id)
    deadline = time.monotonic() + 120
    step = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if path.is_file():
                try:
                    step = torch.load(path, weights_only=True)["step"]
                except Exception:  # (replaced while read: read again)
                    step = 0
                if step >= 200:
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    assert 200 <= step < 2500 and not (out / trial_path("", s.trial_id)).exists()
    again = run_trial(s, RunContext(str(out), save_weights=True, checkpoint_every=20))
    assert [again[k] for k in KEYS] == [whole[k] for k in KEYS]
    assert weights(out, s.trial_id) == weights(tmp_path / "whole", s.trial_id)
    assert not path.exists()  # removed once the result is written


def test_a_checkpoint_of_another_spec_is_not_loaded(tmp_path):
    s = spec(steps=100)
    other = spec(steps=100, lr_decay=0.5)  # same trial id file name forced below
    c = Checkpointer(str(tmp_path), s.trial_id, other.canonical(), Interval(steps=10))
    c.save(50, {"model": {}, "x": torch.zeros(1)})
    assert Checkpointer(str(tmp_path), s.trial_id, s.canonical(), Interval(steps=10)).load() is None
    (tmp_path / checkpoint_file(s.trial_id)).write_bytes(b"not a checkpoint")
    assert Checkpointer(str(tmp_path), s.trial_id, s.canonical(), Interval(steps=10)).load() is None


def test_interval_by_steps_and_by_minutes():
    assert parse_interval(500) == Interval(steps=500) == parse_interval("500")
    assert parse_interval("10min") == Interval(seconds=600.0)
    assert parse_interval("0.5min") == Interval(seconds=30.0)
    for off in (None, 0, "0", "off"):
        assert not parse_interval(off).on
    for bad in (-5, "ten", "5h", "0min"):
        with pytest.raises(ValueError, match="train.checkpoint_every"):
            parse_interval(bad)
    now = [0.0]
    c = Checkpointer("/nonexistent", "t", "{}", parse_interval("1min"), clock=lambda: now[0])
    assert not c.due(10)
    now[0] = 61.0
    assert c.due(11)


def test_checkpoint_settings_are_configuration_outside_the_identity():
    base = compose([])
    assert base.train.checkpoint_every == "10min" and not base.train.keep_checkpoints
    other = compose(["train.checkpoint_every=100", "train.keep_checkpoints=true"])
    assert other.identity_hash() == base.identity_hash()
    with pytest.raises(ConfigError, match="train.checkpoint_every"):
        compose(["train.checkpoint_every=5h"])


def test_a_task_asks_ray_for_its_largest_trials_memory_capped_at_the_largest_node():
    from sweep import cost
    from sweep.driver import task_memory

    from dataclasses import replace

    small = spec(steps=10)
    big = replace(small, width=4096)
    m_small, m_big = cost.estimate_memory(small), cost.estimate_memory(big)
    assert m_small < m_big
    assert task_memory([small], 10 * m_big) == m_small
    assert task_memory([small, big], 10 * m_big) == m_big  # trials of a task run in turn
    assert task_memory([big], m_big // 2) == m_big // 2  # capped: still placed somewhere
    assert task_memory([big], 0) == 0  # the cluster reports no memory: no request


class Clock:
    """A clock that advances ``tick`` seconds per reading: the time budget runs out at a
    known step, whatever the machine's speed."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_out_of_time_a_trial_is_evaluated_at_its_fallback_step(tmp_path):
    """The paper's rule (A.5.5): out of time after the fallback step, the network of that step
    is evaluated (bitwise the network of a trial trained for exactly that many steps), and the
    record says so; before the fallback step there is no network: failed, with the reason."""
    from workers.data import load_data
    from workers.models import build_mlp
    from workers.train import TimeRule, train_model

    s = spec("momentum", steps=400)
    data = load_data("digits", train_size=300, test_size=60)

    def net():
        return build_mlp(data.input_dim, 32, 3, 10, "relu", seed=1)

    short = net()
    assert train_model(short, data, "momentum", 0.01, 64, TrainSpec(
        steps=100, check_every=25, early_stop=False), seed=1).steps == 100
    cut = net()
    # one clock reading per step (plus one at the start): after step k, k s have passed, so a
    # 50 s budget runs out after step 51 (elapsed > budget) and a 150 s one after step 151
    out = train_model(cut, data, "momentum", 0.01, 64, s.train, seed=1,
                      time_rule=TimeRule(150.0, 100, Clock(1.0)))
    assert out.stopped_by_time and out.steps == 100 and out.out_of_time is None
    for a, b in zip(short.state_dict().values(), cut.state_dict().values()):
        assert torch.equal(a, b)
    early = train_model(net(), data, "momentum", 0.01, 64, s.train, seed=1,
                        time_rule=TimeRule(50.0, 100, Clock(1.0)))
    assert not early.stopped_by_time and early.out_of_time.startswith(
        "out of time: the time budget of 50 s ran out at step 51, before the fallback step 100")
    # within the budget: the rule changes nothing
    whole, timed = net(), net()
    train_model(whole, data, "momentum", 0.01, 64, s.train, seed=1)
    assert not train_model(timed, data, "momentum", 0.01, 64, s.train, seed=1,
                           time_rule=TimeRule(1e9, 100, Clock(1.0))).stopped_by_time
    for a, b in zip(whole.state_dict().values(), timed.state_dict().values()):
        assert torch.equal(a, b)


def test_the_record_marks_a_trial_cut_by_its_time_budget(tmp_path):
    s = spec("adam", steps=200000)  # far more than a 2-second budget allows
    row = run_trial(s, RunContext(str(tmp_path), time_budget=2.0, fallback_steps=50))
    assert row["status"] == "ok" and row["steps"] == 50 and row["stopped_by_time"] is True
    stored = read_trial(trial_path(tmp_path, s.trial_id)).to_pylist()[0]
    assert stored["stopped_by_time"] is True and stored["steps"] == 50
    row = run_trial(s, RunContext(str(tmp_path / "none"), time_budget=2.0))  # no fallback step
    assert row["status"] == "failed" and row["error"].startswith("out of time") \
        and "no fallback step" in row["error"] and not row["retryable"]
    quick = run_trial(spec("adam", steps=50), RunContext(str(tmp_path / "q"), time_budget=3600))
    assert quick["stopped_by_time"] is False


def test_time_settings_are_configuration_outside_the_identity():
    from workers.checkpoint import parse_budget

    assert parse_budget("12h") == 43200 and parse_budget("30min") == 1800
    assert parse_budget(90) == 90.0 and parse_budget(None) is None
    for bad in ("soon", 0, "-1h", "5d"):
        with pytest.raises(ValueError, match="train.time_budget"):
            parse_budget(bad)
    base = compose([])
    assert base.train.time_budget is None and base.train.fallback_steps is None
    assert compose(["experiment=paper_large"]).train.fallback_steps == 2 ** 18
    assert compose(["train.time_budget=12h", "train.fallback_steps=100"]).identity_hash() \
        == base.identity_hash()
    with pytest.raises(ConfigError, match="train.time_budget"):
        compose(["train.time_budget=soon"])


def test_the_fallback_network_and_the_time_spent_survive_a_retry(tmp_path, monkeypatch):
    from workers.data import load_data
    from workers.models import build_mlp
    from workers.train import TimeRule, train_model

    s = spec("momentum", steps=400)
    data = load_data("digits", train_size=300, test_size=60)

    def net():
        return build_mlp(data.input_dim, 32, 3, 10, "relu", seed=1)

    short = net()
    train_model(short, data, "momentum", 0.01, 64, TrainSpec(steps=100, check_every=25,
                                                             early_stop=False), seed=1)
    real_save = Checkpointer.save

    def save_then_die(self, step, state):
        real_save(self, step, state)
        if step >= 150:
            raise Interrupt(step)

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Interrupt):  # the first attempt passes the fallback step, then dies
        train_model(net(), data, "momentum", 0.01, 64, s.train, seed=1,
                    checkpoint=Checkpointer(str(tmp_path), s.trial_id, s.canonical(),
                                            Interval(steps=30)),
                    time_rule=TimeRule(1e9, 100, Clock(1.0)))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    retry = net()  # resumes at step 150 with 150 s spent; 160 s run out at step 160
    out = train_model(retry, data, "momentum", 0.01, 64, s.train, seed=1,
                      checkpoint=Checkpointer(str(tmp_path), s.trial_id, s.canonical(),
                                              Interval(steps=30)),
                      time_rule=TimeRule(160.0, 100, Clock(1.0)))
    assert out.stopped_by_time and out.steps == 100
    for a, b in zip(short.state_dict().values(), retry.state_dict().values()):
        assert torch.equal(a, b)


def test_a_fallback_of_another_fallback_step_is_not_used(tmp_path):
    s = spec(steps=100)
    c = Checkpointer(str(tmp_path), s.trial_id, s.canonical(), Interval(steps=10))
    c.save_fallback(50, {"w": torch.ones(2)}, torch.tensor(False))
    weights, nonfinite = c.load_fallback(50)
    assert torch.equal(weights["w"], torch.ones(2)) and not bool(nonfinite)
    assert c.load_fallback(60) is None  # the fallback step changed between attempts


def test_checkpoint_every_off_is_none_whatever_its_spelling():
    for off in ("0", 0, "off", None):
        assert compose([f"train.checkpoint_every={'null' if off is None else off}"]) \
            .train.checkpoint_every is None
    assert compose(["train.checkpoint_every=0.0"]).train.checkpoint_every is None
    assert compose(["train.checkpoint_every=500"]).train.checkpoint_every == 500


def test_a_current_file_missing_a_column_is_not_a_valid_result(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workers.results.record import SCHEMA, ResultError, read_trial

    t = pa.table({"trial_id": ["t"]}, schema=pa.schema([SCHEMA.field("trial_id")],
                                                       metadata=SCHEMA.metadata))
    pq.write_table(t, tmp_path / "t.parquet")
    with pytest.raises(ResultError):
        read_trial(tmp_path / "t.parquet", columns=["trial_id", "n_params"])


def test_the_driver_notes_trials_above_the_connected_clusters_memory():
    from dataclasses import replace

    from sweep import cost
    from sweep.driver import memory_note

    small = spec(steps=10)
    big = replace(small, width=4096)
    m_small, m_big = cost.estimate_memory(small), cost.estimate_memory(big)
    assert memory_note([m_small, m_big], 10 * m_big) is None
    assert memory_note([m_small, m_big], 0) is None  # the cluster says nothing
    note = memory_note([m_small, m_big, m_big], m_big - 1)
    assert note.startswith("note: 2 of 3 trials to run are estimated above the largest node's")
