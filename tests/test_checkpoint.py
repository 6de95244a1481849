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
from workers.layout import trial_path, weights_file
from workers.record import read_trial
from workers.spec import DataSpec, RunContext, TrainSpec, TrialSpec
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
from workers.spec import RunContext, TrialSpec
from workers.trial import run_trial
spec = TrialSpec.from_json(open(sys.argv[1]).read())
run_trial(spec, RunContext(sys.argv[2], save_weights=True, checkpoint_every=20))
"""


def test_a_sigkilled_worker_resumes_from_its_checkpoint_and_ends_bitwise_equal(tmp_path):
    s = spec("adam", steps=4000)
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
    assert 200 <= step < 4000 and not (out / trial_path("", s.trial_id)).exists()
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
