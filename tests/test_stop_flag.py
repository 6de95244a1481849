"""After the first Ctrl-C / SIGTERM no trial starts anywhere (sweep.dispatch's stop flag): a
task submitted earlier that starts only then, and the next trial of a running task of several,
return without running it and leave no record; the trials already running finish; the dispatch
ends with DispatchStopped. For each unit of work: train trials (`sweep launch`), measure trials
and retrainings (`sweep measure`), on the suite's local Ray with one slot (a trial asks for both
of its CPUs), so that the loop keeps one task queued behind the running one (max_in_flight: 2
per slot). Before, Ray started the queued task after the Ctrl-C, and a running task ran all of
its trials: "no new trials" did not hold.

A trial is held running by a user measure (``gate``, written per test) that waits for a file
the test creates only once the driver's flag answers that it is set; the retraining, which runs
no measure, is long enough (800 steps of a width-512 network) to be running then, which the
test checks (its phase marker is still there)."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import sweep.dispatch as dispatch
from analysis import load_results
from sweep.config import compose

pytestmark = pytest.mark.slow

WAIT_S = 300  # a guard against a hang, not a timing assertion

GATE = '''
import os, time
from workers.measures import register

GATE_DIR = {gate_dir!r}


@register("gate", source="test: holds its trial until the test releases it", needs=("model",),
          replace=True)
def gate(inputs):
    """1.0 once GATE_DIR/release exists; first a file in GATE_DIR/started (width-seed-pid)."""
    width = next(inputs.model.parameters()).shape[0]
    os.makedirs(os.path.join(GATE_DIR, "started"), exist_ok=True)
    open(os.path.join(GATE_DIR, "started",
                      f"{{width}}-{{inputs.trial_seed}}-{{os.getpid()}}"), "w").close()
    t0 = time.monotonic()
    while not os.path.exists(os.path.join(GATE_DIR, "release")):
        if time.monotonic() - t0 > {wait_s}:
            raise RuntimeError("the test never released the gate")
        time.sleep(0.02)
    return 1.0
'''

COMMON = ["dataset.train_size=200", "dataset.test_size=40", "train.early_stop=false",
          "space.depth=[2]", "space.batch_size=[32]", "metrics.transitions_points=0",
          "progress=false", "figure=false"]
ONE_SLOT = "resources.cpus_per_trial=2"  # the suite's Ray has 2 CPUs: one task runs at a time


def write_gate(tmp_path: Path) -> tuple[str, Path]:
    """(the gate module's path, its directory: ``started/`` and ``release``)."""
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    module = tmp_path / "gate_measure.py"
    module.write_text(GATE.format(gate_dir=str(gate_dir), wait_s=WAIT_S))
    return str(module), gate_dir


def started(gate_dir: Path) -> list[str]:
    d = gate_dir / "started"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.fixture
def flags(monkeypatch):
    """Every sweep.dispatch.StopFlag the loop makes in this test, in order."""
    made = []

    class Recorded(dispatch.StopFlag):
        def __init__(self, ray):
            super().__init__(ray)
            made.append(self)

    monkeypatch.setattr(dispatch, "StopFlag", Recorded)
    return made


def interrupt(running, flags: list, release: Path | None = None, still_running=None) -> dict:
    """In a thread: once ``running()`` (a trial runs), SIGINT to this process (the driver's
    loop runs in the main thread); once the driver's flag answers that it is set, ``release``
    is created (the held trial may end) and ``still_running()`` is recorded (whether the trial
    was still running then). Returns the dict that gets ``error`` when something did not happen
    within WAIT_S and ``running_at_stop``."""
    box: dict = {}

    def work():
        try:
            t0 = time.monotonic()
            while not running():
                if time.monotonic() - t0 > WAIT_S:
                    box["error"] = f"no trial ran within {WAIT_S} s"
                    return
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGINT)
            while not (flags and flags[-1].handle.is_set.remote().future().result(WAIT_S)):
                if time.monotonic() - t0 > WAIT_S:
                    box["error"] = f"the driver's stop flag was not set within {WAIT_S} s"
                    return
                time.sleep(0.02)
            if still_running is not None:
                box["running_at_stop"] = still_running()
        except Exception as e:
            box["error"] = f"{type(e).__name__}: {e}"
        finally:
            if release is not None:
                release.touch()

    threading.Thread(target=work, daemon=True).start()
    return box


def journaled(out: Path) -> list[str]:
    return [ln for f in (out / "journal").glob("*") for ln in f.read_text().splitlines() if ln]


@pytest.mark.parametrize("trials,per_task", [(3, 1), (12, 3)])
def test_train_trials_start_no_more_after_ctrl_c(ray_local, tmp_path, flags, trials, per_task):
    """One slot, units of 1 trial (one running, one queued, one not submitted) or of 3 (one
    running, one queued): Ctrl-C while the first trial runs. That trial ends and is recorded;
    the queued unit, and the running unit's next trials, start none (no gate reached, no
    result, no journal line, no marker); `sweep launch` stops with DispatchStopped (130), the
    rest left for `sweep resume`. Before, 2 of 3 (units of 1) and 6 of 12 (units of 3) trials
    ran."""
    from sweep.driver import DispatchStopped, launch, make_units, read_plan
    from workers.results.storage import Store

    module, gate_dir = write_gate(tmp_path)
    out = tmp_path / "s"
    cfg = compose(COMMON + ["train.steps=20", "space.width=[16]", "plan.grid=[seed]",
                            f"space.seed=[{','.join(str(i) for i in range(1, trials + 1))}]",
                            f"trials={trials}", f"measure_modules=[{module}]", "measures=[gate]",
                            ONE_SLOT, f"resources.trials_per_task={per_task}", f"out={out}"])
    box = interrupt(lambda: started(gate_dir), flags, gate_dir / "release")
    with pytest.raises(DispatchStopped) as stopped:
        launch(cfg)
    assert "error" not in box, box["error"]
    assert stopped.value.exit_code == 130 and "SIGINT" in stopped.value.reason
    units = make_units(cfg, read_plan(Store(out)), slots=1)
    assert [len(u) for u in units] == [per_task] * (trials // per_task)  # (as meant)
    assert len(started(gate_dir)) == 1, started(gate_dir)  # the one trial running at Ctrl-C
    df = load_results(out)  # its result, the only one
    assert len(df) == 1 and list(df.status) == ["ok"], df
    assert started(gate_dir)[0].startswith(f"16-{df.seed.iloc[0]}-"), (started(gate_dir), df)
    assert sum(stopped.value.counts.values()) == 1, stopped.value.counts
    assert len(journaled(out)) == 1
    assert not list((out / "running").glob("*.json"))  # (no marker: no time limit)


def test_a_flag_that_does_not_answer_loses_no_trial(
        ray_local, tmp_path, flags, capsys):
    """No signal, but the flag's actor dies while the first unit of 3 runs its first trial (as
    when Ray's memory monitor kills it, which the suite's memory tests provoke): the tasks
    that ask it go on as without a flag, so every trial runs once, none is retried, and the
    launch ends normally (before: each task stopped and the launch ended "could not reach the
    driver's stop flag")."""
    import ray

    from sweep.driver import launch

    module, gate_dir = write_gate(tmp_path)
    out = tmp_path / "s"
    box: dict = {}

    def kill_the_flag():
        try:
            t0 = time.monotonic()
            while not started(gate_dir) and time.monotonic() - t0 < WAIT_S:
                time.sleep(0.02)
            box["killed"] = flags[0].handle
            ray.kill(box["killed"])
            try:
                while time.monotonic() - t0 < WAIT_S:
                    box["killed"].is_set.remote().future().result(WAIT_S)
                    time.sleep(0.02)
                box["error"] = "the killed flag still answered"
            except ray.exceptions.RayActorError:
                pass  # gone: the running task's next question fails
        except Exception as e:
            box["error"] = f"{type(e).__name__}: {e}"
        finally:
            (gate_dir / "release").touch()

    threading.Thread(target=kill_the_flag, daemon=True).start()
    launch(compose(COMMON + ["train.steps=20", "space.width=[16]", "plan.grid=[seed]",
                             f"space.seed=[{','.join(str(i) for i in range(1, 13))}]",
                             "trials=12", f"measure_modules=[{module}]", "measures=[gate]",
                             ONE_SLOT, "resources.trials_per_task=3", f"out={out}"]))
    assert "error" not in box, box["error"]
    err = capsys.readouterr().err
    assert "retry" not in err and "stop flag" not in err, err
    assert len(flags) == 1
    df = load_results(out)
    assert len(df) == 12 and (df.status == "ok").all() and df.trial_id.is_unique, df
    assert len(started(gate_dir)) == 12, started(gate_dir)  # each trial ran once
    assert len(journaled(out)) == 12


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    """A sweep of 3 finished trials with saved weights (width 512, 800 steps: long enough to
    be running when the test's signal has been answered) and its trial ids in plan order."""
    from sweep.driver import launch, read_plan
    from workers.results.storage import Store

    out = tmp_path_factory.mktemp("trained") / "s"
    launch(compose(COMMON + ["train.steps=800", "space.width=[512]", "space.seed=[1,2,3]",
                             "plan.grid=[seed]", "trials=3", "save_weights=true",
                             "measures=[jacobian_norm_test]", ONE_SLOT, f"out={out}"]))
    assert (load_results(out).status == "ok").all()
    return out, [s.trial_id for s in read_plan(Store(out))]


def test_measure_trials_start_no_more_after_ctrl_c(trained, tmp_path, flags):
    """`sweep measure` of a new measure on 3 networks, one slot, units of 2 (one running, one
    queued): Ctrl-C while the first network is measured. Its value is written; the second
    network of its unit and the queued unit are not measured (no value, not counted);
    MeasureStopped (130). Before, all 3 were measured."""
    from sweep.measure import MeasureStopped, measure_sweep
    from workers.results.measure_table import stored_keys

    out, _ = trained
    module, gate_dir = write_gate(tmp_path)
    box = interrupt(lambda: started(gate_dir), flags, gate_dir / "release")
    with pytest.raises(MeasureStopped) as stopped:
        measure_sweep(out, ["measures=[jacobian_norm_test,gate]", f"measure_modules=[{module}]",
                            ONE_SLOT, "resources.trials_per_task=2"])
    assert "error" not in box, box["error"]
    assert stopped.value.exit_code == 130 and "SIGINT" in stopped.value.reason
    assert len(started(gate_dir)) == 1, started(gate_dir)
    gated = [k[0] for k in stored_keys(out) if k[1] == "gate"]  # (Ray picks which unit runs)
    seed = load_results(out).set_index("trial_id").seed
    assert len(gated) == 1 and started(gate_dir)[0].startswith(f"512-{seed[gated[0]]}-"), gated
    assert stopped.value.counts["trials"] == 1, stopped.value.counts
    assert stopped.value.counts["failed"] == 0, stopped.value.counts


def test_retrainings_start_no_more_after_ctrl_c(trained, flags):
    """`sweep measure --retrain` of the 3 networks, one slot (one running, one queued):
    Ctrl-C while the first one trains (its phase marker there). It is written again; the
    others are not trained (their weights files untouched, nothing in weights/damaged/ for
    them, no line); MeasureStopped (130). Before, all 3 were retrained."""
    from sweep.measure import MeasureStopped, measure_sweep

    out, ids = trained
    markers = lambda: sorted((out / "running").glob("*.json"))  # noqa: E731
    weights = {t: (out / "weights" / f"{t}.safetensors").stat().st_mtime_ns for t in ids}
    box = interrupt(markers, flags, still_running=lambda: [p.name.split(".")[0]
                                                           for p in markers()])
    with pytest.raises(MeasureStopped) as stopped:
        # (a time limit, far off: the tasks mark their trials)
        measure_sweep(out, [ONE_SLOT, "resources.trial_timeout=600"], retrain=tuple(ids))
    assert "error" not in box, box["error"]
    assert len(box["running_at_stop"]) == 1, (
        f"no retraining was running when the stop flag was set ({box['running_at_stop']}): "
        "raise the fixture's train.steps")
    first = box["running_at_stop"][0]  # (Ray picks which of the two submitted runs first)
    assert stopped.value.exit_code == 130 and "SIGINT" in stopped.value.reason
    assert stopped.value.counts == {"written": 1, "not_written": 0}, stopped.value.counts
    damaged = out / "weights" / "damaged"
    assert [p.name.split(".")[0] for p in damaged.iterdir()] == [first]
    for t in ids:
        if t != first:
            assert (out / "weights" / f"{t}.safetensors").stat().st_mtime_ns == weights[t], t
    assert not list((out / "running").glob("*.json"))
