"""No trial can stall a sweep (sweep/watch.py, workers/phase.py): a trial or a `sweep measure`
task over resources.trial_timeout is killed and recorded with the phase it was in; a task that
Ray's memory monitor kills is run again at most resources.max_retries times, then recorded
``oom``."""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from procs import run

from analysis import load_results
from sweep.config import ConfigError, compose
from workers.results.layout import RUNNING

STALL = str(Path(__file__).parent / "fixtures" / "stall_measures.py")
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SMALL = ["dataset.train_size=100", "dataset.test_size=40", "train.steps=50",
         "train.early_stop=false", "space.depth=[2]", "space.batch_size=[32]",
         "metrics.transitions_points=0", "progress=false", "figure=false",
         f"measure_modules=[{STALL}]"]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (TimeoutError in the main thread) instead of hanging the suite if the sweep inside
    stalls: what these tests check is that it does not."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"the sweep stalled: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def attempts_file(name: str) -> str:
    """Where the fixture's measure ``name`` counts its attempts (stall_measures.attempts_file;
    not imported here: that would register its measures in this process a second time)."""
    import tempfile

    return os.path.join(os.environ.get("SWEEP_TEST_ATTEMPTS_DIR") or tempfile.gettempdir(),
                        f"sensitivity-sweep-test-{name}-{os.getuid()}.log")


def _wait_for(cond, what: str, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


# ---- without Ray


def test_trial_timeout_is_a_duration_or_null():
    assert compose([]).resources.trial_timeout is None  # off by default
    assert compose(["resources.trial_timeout=90s"]).resources.trial_timeout == "90s"
    from workers.checkpoint import parse_budget

    assert parse_budget("2h", "resources.trial_timeout") == 7200.0
    assert parse_budget(45, "resources.trial_timeout") == 45.0
    for bad in ("soon", "0", "-3", "inf", "nan", "2d"):
        with pytest.raises(ConfigError, match=r"^resources\.trial_timeout: .*allowed: seconds"):
            compose([f"resources.trial_timeout={bad}"])
    # the same kind of fault in the other duration: an infinite time budget is no budget
    with pytest.raises(ConfigError, match=r"^train\.time_budget: inf"):
        compose(["train.time_budget=inf"])


def test_bad_trial_timeout_is_one_line_and_exit_2(tmp_path):
    r = run([sys.executable, "-m", "sweep.cli", "plan", f"out={tmp_path / 's'}",
             "resources.trial_timeout=forever"], env=ENV, capture_output=True, text=True,
            timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "resources.trial_timeout: 'forever'" in lines[0], r.stderr
    assert not (tmp_path / "s").exists()


def test_a_task_marks_each_trial_and_its_phase_for_the_driver(tmp_path):
    """The marker appears when a trial begins, says the phase it is in (a phase lasting longer
    than a tick is always written), names the next trial once it begins, and is gone at the
    end; the driver's Watch sees when each trial started and reports one over its limit once,
    with its phase."""
    from sweep.watch import Watch
    from workers.phase import PhaseMarker, set_phase

    out = tmp_path
    limit = 1.0  # tick 0.25 s
    watch = Watch(out, limit, "1s")
    token = watch.token()
    names = lambda: sorted(p.name for p in (out / RUNNING).glob("*.json"))  # noqa: E731
    with PhaseMarker(out, token, 0.25) as m:
        m.begin("trialA")
        assert names() == [f"trialA.{token}.json"]  # written at once, not at the next tick
        set_phase("measuring loops_on_48")
        _wait_for(lambda: watch.marker("trialA", token).get("phase") == "measuring loops_on_48",
                  "the phase written")
        assert watch.overdue() == [] and ("trialA", token) in watch.seen  # its clock starts
        late = []
        _wait_for(lambda: late.extend(watch.overdue()) or late, "trialA over its limit")
        assert [(t, tid) for t, tid, _ in late] == [(token, "trialA")]
        msg = watch.message(watch.marker("trialA", token), late[0][2])
        assert "resources.trial_timeout=1s (1 s)" in msg and "while measuring loops_on_48" in msg
        m.begin("trialB")
        assert names() == [f"trialB.{token}.json"]  # the previous trial's marker removed
    assert names() == []  # the task ended: nothing left
    # a marker of another submission (another token) is not this driver's business
    (out / RUNNING / "trialC.0123abcd.json").write_text("{}")
    watch.last_poll = float("-inf")  # (poll now)
    assert watch.overdue() == [] and "trialC" not in {k[0] for k in watch.seen}
    watch.clear_stale()
    assert names() == []


def test_no_marker_without_a_limit(tmp_path):
    """Without resources.trial_timeout nothing is written or polled."""
    from sweep.driver import _run_remote
    from sweep.plan import plan_trials
    from workers.results.spec import RunContext

    from sweep.watch import Watch

    specs = plan_trials(compose(["trials=2", "dry_run=true"]))
    w = Watch(tmp_path, None)
    assert w.token() is None and w.overdue() == []
    got = _run_remote(specs, RunContext(out_dir=str(tmp_path), dry_run=True), w.token())
    assert [g[0] for g in got] == ["ok", "ok"] and not (tmp_path / RUNNING).exists()


class StuckStore:
    """A sweep directory's store whose ``list`` hangs until ``release`` is set (a hung network
    file system), or raises ``fail`` when that is set; every other call goes to ``real``."""

    def __init__(self, real):
        import threading

        self.real, self.release, self.fail, self.calls = real, threading.Event(), None, 0
        self.location = real.location

    def list(self, rel, suffix=""):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        self.release.wait()
        return self.real.list(rel, suffix)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _poll(watch):
    watch.last_poll = float("-inf")  # (poll now: no waiting for the next tick)
    return watch.overdue()


def test_a_sweep_directory_that_hangs_or_fails_does_not_stall_the_watch(tmp_path):
    """The listing of running/ hangs: overdue() comes back (after watch.wait s), says so once,
    keeps its last view (a trial seen before is still reported over its limit), and does not
    start a second listing while the first hangs; a listing that fails, the same; when it
    answers again it says so and the view is new. clear_stale() and marker() do not hang
    either."""
    from sweep.watch import Watch
    from workers.phase import PhaseMarker

    said = []
    watch = Watch(tmp_path, 1.0, "1s", log=said.append)
    watch.wait = 0.2
    token = watch.token()
    with PhaseMarker(tmp_path, token, 0.25) as m, deadline(120):
        m.begin("trialA")
        assert _poll(watch) == [] and ("trialA", token) in watch.seen
        real, stuck = watch.out, StuckStore(watch.out)
        watch.out = stuck
        try:
            assert _poll(watch) == [] and len(said) == 1  # came back, said once
            assert "did not answer within 0.2 s" in said[0] and str(tmp_path) in said[0]
            watch.seen[("trialA", token)] -= 2.0  # (its clock: 2 s later, not slept)
            late = _poll(watch)
            assert [(t, tid) for t, tid, _ in late] == [(token, "trialA")]  # the last view
            assert len(said) == 1 and stuck.calls == 1  # not said again, no second listing
            assert watch.marker("trialB", token) == {}  # (none there: a read that answers)
            watch.clear_stale()  # lists through the stuck store: gives up, says so
            assert len(said) == 2 and "were not removed" in said[1]
            stuck.release.set()  # it answers: the hanging listing's answer is used
            watch.wait = 30.0  # (waited for only as long as it takes)
            assert _poll(watch) == [] and said[-1].startswith("note: the sweep directory "
                                                              "answers again")
            stuck.fail, n = OSError("Stale file handle"), len(said)
            assert _poll(watch) == [] and ("trialA", token) in watch.seen  # view kept
            assert len(said) == n + 1 and "failed (OSError: Stale file handle)" in said[-1]
            assert _poll(watch) == [] and len(said) == n + 1  # said once
        finally:
            stuck.release.set()
            watch.out = real
        m.end()
        assert _poll(watch) == [] and watch.seen == {}  # answers again: trialA ended
    assert said[-1].startswith("note: the sweep directory answers again")


def test_a_task_whose_marker_never_arrives_is_timed_by_the_drivers_clock(tmp_path):
    """No marker in running/ (a write that failed): the clock of a task starts once it is
    among the `slots` oldest running tasks, and the task is over after max(limit, grace) +
    limit per trial: here limit 1 s, grace 60 s, a task of 2 trials 62 s, of 1 trial 61 s.
    Reported once, with trial_id None and the phase NO_MARKER in its message."""
    from sweep.watch import NO_MARKER, Watch

    watch = Watch(tmp_path, 1.0, "1s", slots=2)
    assert watch.grace == 60.0
    a, b, c = watch.token(2), watch.token(1), watch.token(1)
    assert _poll(watch) == []
    assert watch.tokens[a][1] is not None and watch.tokens[b][1] is not None
    assert watch.tokens[c][1] is None  # waits for a slot: not timed
    for t in (a, b):
        watch.tokens[t][1] -= 61.5  # (61.5 s later, not slept)
    late = _poll(watch)
    assert [(t, tid) for t, tid, _ in late] == [(b, None)] and late[0][2] > 61.0
    assert _poll(watch) == []  # once
    watch.tokens[a][1] -= 1.0  # 62.5 s: its two trials' allowance is over
    assert [(t, tid) for t, tid, _ in _poll(watch)] == [(a, None)]
    msg = watch.message(watch.marker(None, b), late[0][2])
    assert msg.startswith("TrialTimeout: its task still running after 62 s") or \
        msg.startswith("TrialTimeout: its task still running after 61 s"), msg
    assert f"phase {NO_MARKER}" in msg and "resources.trial_timeout=1s (1 s) per trial" in msg
    assert "plus 60 s to start" in msg
    watch.finished(b)
    assert _poll(watch) == [] and watch.tokens[c][1] is not None  # b's slot: c starts
    # the other instance: `sweep measure` settles a task killed by the driver's clock as failed
    # (nothing recorded; which of its trials ran is unknown), and runs none of it again
    from sweep.measure import _after_timeout
    from sweep.plan import plan_trials

    specs = plan_trials(compose(["trials=2", "space.width=[8,16]", "plan.grid=[width]"]))
    unit = [(s.canonical(), "jacobian_norm_test") for s in specs]
    settled, results, rest = _after_timeout(tmp_path, unit, None, NO_MARKER, 70.0, msg,
                                            specs[0].metrics)
    assert settled == unit and rest == []
    assert results == [(s.trial_id, msg, 0) for s in specs]
    assert not (tmp_path / "measures").exists()


def test_a_measure_task_that_fails_between_trials_leaves_no_marker(tmp_path):
    """_measure_remote closes its marker whatever ends it: a trial marked (its weights are
    missing: an error of that trial) followed by an item that is not a trial spec (raises out
    of the task): no marker is left in running/ and no marker stays active in the worker."""
    from dataclasses import asdict

    import workers.phase as phase
    from sweep.measure import _measure_remote
    from sweep.plan import plan_trials

    cfg = compose(["trials=1", "dataset.train_size=100", "dataset.test_size=40",
                   "space.batch_size=[32]",
                   "measures=[jacobian_norm_test]"])
    spec = plan_trials(cfg)[0]
    items = [(spec.canonical(), "jacobian_norm_test"), ("{not a spec", "jacobian_norm_test")]
    with pytest.raises(Exception):
        _measure_remote(items, str(tmp_path), None, False, "cpu", 1, asdict(cfg.metric_spec()),
                        30.0, "0123456789abcdef")
    assert phase._ACTIVE is None
    assert list((tmp_path / RUNNING).glob("*.json")) == []
    assert (tmp_path / RUNNING).is_dir()  # (the trial was marked: the marker was removed)


# ---- a real local Ray


@pytest.mark.slow
def test_a_trial_that_never_returns_is_killed_with_its_phase_and_the_sweep_goes_on(
        ray_local, tmp_path, monkeypatch):
    """A user measure that loops forever on the width-48 network, in a task of three trials
    (32, 48, 64, in that order; limit 12 s, what a tiny trial takes with margin under load,
    imports before the clock): the sweep ends; the 48 trial is failed (retryable) with the
    limit and the phase "measuring loops_on_48"; 32 (before it in the task) and 64 (after it:
    submitted again) are ok. `sweep resume` runs the timed-out trial again: without the bad
    measure it is ok."""
    import sweep.trials as driver  # (iter_units: the trials dispatch forms its units with)
    from sweep.driver import launch

    monkeypatch.setattr(driver, "iter_units", lambda cfg, todo, slots: iter([list(todo)]))
    out = tmp_path / "s"
    with deadline(600):
        launch(compose(SMALL + [f"out={out}", "space.width=[32,48,64]", "plan.grid=[width]",
                                "trials=3", "measures=[jacobian_norm_test,loops_on_48]",
                                "resources.trial_timeout=12"]))
    df = load_results(out).set_index("width")
    assert df.loc[32, "status"] == "ok" and df.loc[64, "status"] == "ok", df[["status", "error"]]
    bad = df.loc[48]
    assert bad["status"] == "failed" and bool(bad["retryable"]), bad["error"]
    assert "TrialTimeout" in bad["error"] and "resources.trial_timeout=12 (12 s)" in bad["error"]
    assert "while measuring loops_on_48" in bad["error"], bad["error"]
    assert not list((out / RUNNING).glob("*.json"))  # no marker left behind
    # resumable: `sweep resume` runs exactly the timed-out trial again (here without the bug)
    from sweep.driver import stored_config

    launch(stored_config(out, ["measures=[jacobian_norm_test]"]), command="resume")
    df = load_results(out).set_index("width")
    assert (df["status"] == "ok").all() and len(df) == 3


@pytest.mark.slow
def test_a_measure_that_never_returns_in_sweep_measure_is_recorded_and_the_rest_measured(
        ray_local, tmp_path):
    """`sweep measure` with the looping measure: the width-48 trial's value is recorded as
    raised with the limit and "measuring loops_on_48", the width-32 trial's value is 1.0, and a
    second call has nothing to do (the printed advice does not hang again)."""
    from analysis import load_measures
    from sweep.driver import launch
    from sweep.measure import measure_sweep

    out = tmp_path / "m"
    launch(compose(SMALL + [f"out={out}", "space.width=[32,48]", "plan.grid=[width]",
                            "trials=2", "measures=[jacobian_norm_test]", "save_weights=true"]))
    with deadline(600):
        counts = measure_sweep(out, ["measures=[jacobian_norm_test,loops_on_48]",
                                     "resources.trial_timeout=12"])
    assert counts["raised"] == 1 and counts["failed"] == 0, counts
    widths = load_results(out).set_index("trial_id")["width"]
    m = load_measures(out)
    m = m[m.measure == "loops_on_48"].assign(width=lambda d: d.trial_id.map(widths))
    m = m.set_index("width")
    assert m.loc[32, "value"] == 1.0
    assert m.loc[48, "value"] is None or m.loc[48, "value"] != m.loc[48, "value"]  # null
    err = m.loc[48, "error"]
    assert "TrialTimeout" in err and "while measuring loops_on_48" in err, err
    again = measure_sweep(out, ["measures=[jacobian_norm_test,loops_on_48]",
                                "resources.trial_timeout=12"])
    assert not any(again.values()), again


@pytest.mark.slow
def test_a_measure_task_whose_worker_dies_is_run_again_a_bounded_number_of_times(
        ray_local, tmp_path):
    """`sweep measure` with a measure that kills its worker on the width-48 network and
    resources.max_retries=1: that trial's task runs exactly twice (counted by the measure
    itself), is reported failed with the number of attempts, and the width-32 trial is
    measured. Before, Ray's own retries ran it; now the loop counts them (the same rule as
    the trial driver's, which has no unbounded OOM retries to inherit)."""
    from analysis import load_measures
    from sweep.driver import launch
    from sweep.measure import measure_sweep

    count = Path(attempts_file("dies_on_48"))
    count.unlink(missing_ok=True)
    out = tmp_path / "d"
    launch(compose(SMALL + [f"out={out}", "space.width=[32,48]", "plan.grid=[width]",
                            "trials=2", "measures=[jacobian_norm_test]", "save_weights=true"]))
    with deadline(600):
        counts = measure_sweep(out, ["measures=[jacobian_norm_test,dies_on_48]",
                                     "resources.max_retries=1", "resources.trials_per_task=1"])
    assert counts["failed"] == 1 and counts["trials"] == 1, counts
    assert len(count.read_text().splitlines()) == 2  # the first run and one retry, no more
    count.unlink()
    widths = load_results(out).set_index("trial_id")["width"]
    m = load_measures(out)
    m = m[m.measure == "dies_on_48"]
    assert list(m.trial_id.map(widths)) == [32] and list(m.value) == [1.0]


OOM_SCRIPT = r"""
import sys
from sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_trial_killed_by_rays_memory_monitor_is_retried_a_bounded_number_of_times(tmp_path):
    """The real memory monitor (its threshold lowered to this machine's use now plus 2.5 GB, for
    this test's own Ray only): a one-trial sweep whose measure allocates until killed. Before,
    Ray retried the kill forever (max_retries > 0 makes its OOM retries unbounded) and the
    sweep never ended; now the driver runs it resources.max_retries + 1 times and records
    ``oom`` with the reason."""
    import psutil

    vm = psutil.virtual_memory()
    threshold = min(0.95, 1 - vm.available / vm.total + 2.5 * 2**30 / vm.total)
    env = {**ENV, "RAY_memory_usage_threshold": f"{threshold:.4f}",
           "RAY_memory_monitor_refresh_ms": "100"}
    count = Path(attempts_file("hogs_memory_on_48"))
    count.unlink(missing_ok=True)
    out = tmp_path / "oom"
    r = run(
        [sys.executable, "-c", OOM_SCRIPT, "launch", *SMALL, f"out={out}", "space.width=[48]",
         "trials=1", "measures=[hogs_memory_on_48]", "resources.max_retries=1",
         "cluster.num_cpus=1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    df = load_results(out)
    assert len(df) == 1, df
    row = df.iloc[0]
    assert row["status"] == "oom", (row["status"], row["error"])
    assert row["error"].startswith("OutOfMemoryError (2 attempts): "), row["error"]
    assert "memory" in row["error"][len("OutOfMemoryError (2 attempts): "):]
    assert "retry 1 of 1" in r.stderr
    # counted by the measure itself: at most twice (a kill may also come before it starts,
    # when the machine's other processes take memory meanwhile)
    assert (len(count.read_text().splitlines()) if count.exists() else 0) <= 2
    count.unlink(missing_ok=True)


@pytest.mark.slow
def test_a_retraining_over_the_limit_is_killed_with_its_phase_and_the_others_are_written(
        ray_local, tmp_path, capsys):
    """`sweep measure --retrain` of two trials under a resources.trial_timeout of a third of
    the time the launch took to make the width-2048 network (800 SGD steps, about 20 s here;
    the limit between 5 and 8 s): that network is killed while training, its line names the
    limit and the phase, its weights file stays as it was and no marker is left; the width-8
    network (well under a second of training) is written again, the same bytes as its trial
    wrote. Before, the retraining waited with no limit."""
    from sweep.cli import main
    from sweep.driver import launch

    out = tmp_path / "r"
    launch(compose(["dataset.train_size=200", "dataset.test_size=40", "train.steps=800",
                    "train.early_stop=false", "space.depth=[3]", "space.batch_size=[32]",
                    "space.width=[8,2048]", "plan.grid=[width]", "trials=2",
                    "metrics.transitions_points=0", "progress=false", "figure=false",
                    "save_weights=true", "measures=[jacobian_norm_test]", f"out={out}"]))
    made = load_results(out).set_index("width")
    ids = made["trial_id"]
    slow, fast = ids[2048], ids[8]
    # the retraining takes as long again: a third of it as the limit, on a faster machine too
    wall = float(made.loc[2048, "wall_time_s"])
    limit = max(5, min(8, int(wall / 3)))
    assert wall >= 2 * limit, f"the width-2048 trial took {wall:.1f} s: raise its train.steps"
    weights = {t: (out / "weights" / f"{t}.safetensors").read_bytes() for t in (slow, fast)}
    capsys.readouterr()
    with deadline(600):
        code = main(["measure", str(out), "--retrain", f"{slow},{fast}",
                     f"resources.trial_timeout={limit}"])
    err = capsys.readouterr().err
    assert code == 0, err
    line = next(ln for ln in err.splitlines() if ln.startswith(f"retrain: trial {slow}:"))
    assert "weights not written: TrialTimeout: still running after" in line, line
    assert f"resources.trial_timeout={limit} ({limit} s), while training" in line, line
    assert f"retrain: trial {fast}: weights written again" in err, err
    for t in (slow, fast):  # the killed one untouched; the other the same network again
        assert (out / "weights" / f"{t}.safetensors").read_bytes() == weights[t], t
    assert [p.name.split(".")[0] for p in (out / "weights" / "damaged").iterdir()] == [fast]
    assert not list((out / RUNNING).glob("*.json"))


@pytest.mark.slow
def test_a_trial_whose_markers_never_reach_the_sweep_directory_is_killed_by_the_drivers_clock(
        ray_local, tmp_path, monkeypatch):
    """running/ cannot be written (a file stands where its directory goes: every marker write
    fails, as on a store the workers cannot write): the trial of width 48, whose measure loops
    forever, is killed by the driver's clock (limit 10 s, its grace lowered to 10 s: over
    max(10, 10) + 10 s) and recorded failed, retryable, with the phase unknown; the width-32
    trial, one task each, is ok. Before, it was never timed and the sweep never ended."""
    import sweep.trials as driver  # (iter_units: the trials dispatch forms its units with)
    import sweep.watch as watch
    from sweep.driver import launch, plan_only, stored_config

    monkeypatch.setattr(watch, "FALLBACK_GRACE_S", 10.0)
    monkeypatch.setattr(driver, "iter_units", lambda cfg, todo, slots: ([s] for s in todo))
    out = tmp_path / "n"
    plan_only(compose(SMALL + [f"out={out}", "space.width=[32,48]", "plan.grid=[width]",
                               "trials=2", "measures=[jacobian_norm_test,loops_on_48]",
                               "resources.trial_timeout=10"]))
    assert not (out / RUNNING).exists()
    (out / RUNNING).write_text("not a directory\n")
    with deadline(600):
        launch(stored_config(out), command="resume")
    df = load_results(out).set_index("width")
    assert df.loc[32, "status"] == "ok", df[["status", "error"]]
    bad = df.loc[48]
    assert bad["status"] == "failed" and bool(bad["retryable"]), bad["error"]
    assert bad["error"].startswith("TrialTimeout: its task still running after"), bad["error"]
    assert "phase unknown (no phase marker reached the sweep directory)" in bad["error"]
    assert "resources.trial_timeout=10 (10 s) per trial plus 10 s to start" in bad["error"]


def test_no_task_is_timed_while_no_node_can_run_one(tmp_path):
    """``slots`` 0 (a cluster whose autoscaler has not started a node that fits a trial): the
    driver's fallback clock starts for no task, however long they wait; once nodes join
    (``dispatch.run`` sets the count it follows), the oldest start."""
    from sweep.watch import Watch

    watch = Watch(tmp_path, 1.0, "1s", slots=0)
    a, b = watch.token(1), watch.token(1)
    assert _poll(watch) == [] and watch.tokens[a][1] is None and watch.tokens[b][1] is None
    watch.slots = 1
    assert _poll(watch) == []
    assert watch.tokens[a][1] is not None and watch.tokens[b][1] is None
