"""A sweep directory that cannot be written stops the driver with its reason, not a traceback,
and a damaged result file is never journaled as a status (review of the failure paths, #22's
rule that no trial stalls a sweep): the driver's own records are tried again, then the loop
stops (exit 4) naming the error and the resume command; a journal that cannot be written is
given up with a note (the result files stay the truth); a failure record dropped because a
damaged file stands there leaves no journal line, so resume reads, sets aside and reruns it."""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid

import pytest

from sweep.config import compose


def _full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_drivers_record_is_tried_again_then_its_error_raised(tmp_path, monkeypatch):
    import ray.exceptions as rex

    from sweep import trials
    from sweep.plan import plan_trials
    from workers.results.record import read_result

    monkeypatch.setattr(trials, "RECORD_WAITS_S", (0.01, 0.01))
    spec = plan_trials(compose(["trials=1", "dry_run=true"]))[0]
    real = trials.write_trial
    calls = []

    def twice_full(*a, **k):
        calls.append(1)
        return _full() if len(calls) <= 2 else real(*a, **k)

    monkeypatch.setattr(trials, "write_trial", twice_full)
    exc = rex.WorkerCrashedError()
    assert trials._record_system_failure(tmp_path, spec, exc) == "failed" and len(calls) == 3
    assert read_result(tmp_path, spec.trial_id).column("retryable")[0].as_py() is True
    calls.clear()
    monkeypatch.setattr(trials, "write_trial", _full)
    other = plan_trials(compose(["trials=2", "dry_run=true"]))[1]
    with pytest.raises(OSError, match="No space left"):
        trials._record_timeout(tmp_path, other, "over the limit")


def test_a_failure_record_dropped_for_a_damaged_file_leaves_no_journal_line(tmp_path, monkeypatch):
    """A damaged result file stands (a node crashed while writing it): the driver's record is
    dropped (write-once) and, before, was journaled as the status it meant to write, with the
    damaged file's size and time, so resume trusted it and never ran the trial again."""
    import ray.exceptions as rex

    from sweep import dispatch, trials
    from sweep.plan import plan_trials
    from workers.results.index import read_journal, status_counts
    from workers.results.plan_file import pending_rows
    from workers.results.sweep_dir import SweepDir

    said = []
    monkeypatch.setattr(trials, "log", said.append)
    cfg = compose(["trials=2", "dry_run=true", f"out={tmp_path}"])
    specs = plan_trials(cfg)
    out = SweepDir.of(tmp_path)
    out.makedirs("trials")
    damaged = tmp_path / "trials" / f"{specs[0].trial_id}.parquet"
    damaged.write_bytes(b"PAR1" + os.urandom(300))  # (half a Parquet file)
    work = trials.TrialWork.__new__(trials.TrialWork)
    work.cfg, work.out, work.counts = cfg, out, {s: 0 for s in ("ok", "failed", "oom",
                                                                   "diverged")}
    work.journal, work._journal_said = out.journal(), False
    assert work.failed([specs[0]], rex.OutOfMemoryError("killed"), 1) == 1
    work.close()
    assert work.counts["failed"] == 1 and work.counts["oom"] == 0
    assert specs[0].trial_id not in read_journal(out)
    assert any("cannot be read (damaged)" in s and specs[0].trial_id in s for s in said), said
    assert pending_rows(out, [s.trial_id for s in specs]) == [0, 1]  # it runs again
    assert not damaged.exists() and list((tmp_path / "trials" / "invalid").iterdir())
    assert status_counts(out, [s.trial_id for s in specs]).counts.get("oom", 0) == 0
    del dispatch


def test_a_journal_that_cannot_be_written_is_given_up_not_raised(tmp_path):
    from workers.results.index import Journal, read_journal

    j = Journal(tmp_path, flush_every=1)
    j.record("a" * 16, "ok", 10, 20)
    j._f.flush = _full  # the disk fills
    j.record("b" * 16, "ok", 10, 20)
    assert j.error is not None and "No space left" in j.error
    j.record("c" * 16, "ok", 10, 20)  # nothing more, no error
    j.close()
    assert read_journal(tmp_path) == {"a" * 16: ("ok", 10, 20)}
    s3ish = Journal(str(tmp_path / "u"), flush_every=1)
    s3ish._f = None
    s3ish._store.write_text = _full
    s3ish.record("d" * 16, "ok", 1, 2)
    s3ish.flush()
    s3ish.close()
    assert s3ish.error is not None


def test_a_landing_that_cannot_write_stops_the_loop_with_its_reason(ray_local, tmp_path):
    from sweep import dispatch
    from sweep.watch import Watch

    @ray_local.remote(num_cpus=0)
    def quick(unit):
        return list(unit)

    class Full(dispatch.Work):
        def __init__(self):
            self.counts, self.total = {"ok": 0}, 20

        def units(self, slots):
            return ([i] for i in range(self.total))

        def submit(self, unit, token, stop):
            return quick.remote(unit)

        def trial_ids(self, unit):
            return [str(u) for u in unit]

        def done(self, unit, results):
            if self.counts["ok"] == 3:
                _full()
            self.counts["ok"] += len(results)
            return len(results)

    with pytest.raises(dispatch.DispatchStopped) as e:
        dispatch.run(Full(), ray_local, tmp_path, compose([]).resources, 1, Watch(tmp_path, None))
    assert e.value.exit_code == dispatch.EXIT_SWEEP_DIR == 4
    assert e.value.counts == {"ok": 3}
    assert e.value.reason.startswith(f"the sweep directory {tmp_path} could not be written "
                                     "(OSError: [Errno 28] No space left on device): stopped "
                                     "dispatching")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (a disk that fills); skipped where this process may not mount one."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(where) -> str:
    """Fill the file system of ``where`` to the last byte; the filler's path."""
    path = os.path.join(where, f"filler-{uuid.uuid4().hex[:6]}")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for size in (65536, 1):  # (then the last partial block)
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return path


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_with_its_reason_and_resume_runs_the_rest(
        ray_local, small_disk, capfd, monkeypatch):
    """The paper-sized failure of a days-long sweep: its disk fills. Before, the driver died
    with three chained tracebacks (the worker's, the driver's failure record's, the journal's
    flush) and printed no resume command. Now: exit 4, one reason, the resume command; once
    there is room, resume runs exactly the trials without a result."""
    from sweep import trials
    from sweep.cli import main
    from workers.results.index import status_counts
    from workers.results.sweep_dir import SweepDir

    monkeypatch.setattr(trials, "RECORD_WAITS_S", (0.05, 0.05))
    out = small_disk / "s"
    args = [f"out={out}", "trials=12", "dry_run=true", "progress=false", "figure=false"]
    assert main(["plan", *args]) == 0
    filler = _fill(small_disk)  # full before it starts: one line, exit 2, no lock left
    capfd.readouterr()
    assert main(["resume", str(out)]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err, err
    assert not (out / "driver.lock").exists()
    os.unlink(filler)
    real_init = trials.TrialWork.__init__
    fillers = []

    def fills_once_dispatch_starts(self, *a, **k):  # (the lock and the journal are there)
        real_init(self, *a, **k)
        fillers.append(_fill(small_disk))

    monkeypatch.setattr(trials.TrialWork, "__init__", fills_once_dispatch_starts)
    rc = main(["resume", str(out)])
    cap = capfd.readouterr()
    assert rc == 4, cap.err
    assert "No space left on device" in cap.err and "Traceback" not in cap.err, cap.err
    time.sleep(2)  # (Ray prints a dropped task's error when it collects the reference)
    late = capfd.readouterr()
    assert "Unhandled error" not in cap.err + late.err, cap.err + late.err
    assert f"sweep resume {out}" in cap.out, cap.out
    monkeypatch.setattr(trials.TrialWork, "__init__", real_init)
    filler, = fillers
    os.unlink(filler)
    assert main(["resume", str(out)]) == 0
    d = SweepDir.of(out)
    ids = d.read_parquet("plan.parquet", columns=["trial_id"]).column("trial_id").to_pylist()
    assert {k: v for k, v in status_counts(d, ids).counts.items() if v} == {"ok": 12}


@pytest.mark.slow
def test_a_report_on_a_full_disk_replaces_nothing_and_says_so(ray_local, small_disk, capsys,
                                                               monkeypatch):
    """The report is written beside the last one and moved in only once whole: on a full disk
    `sweep report` is one line (exit 2) and the previous report stays as it was, with nothing
    of the new one beside it (before: the previous one was moved aside, the new one half
    written, and the line said only '[Errno 28] No space left on device')."""
    from sweep.cli import main
    from sweep.config import compose
    from sweep.driver import launch

    out = small_disk / "r"
    launch(compose(["experiment=demo", "trials=3", "dataset.train_size=120",
                    "dataset.test_size=40", "train.steps=40", "train.check_every=20",
                    "space.width=[8]", "space.depth=[2]", "space.batch_size=[32]",
                    "metrics.transitions_points=2", "progress=false", "figure=false",
                    f"out={out}"]))
    assert main(["report", str(out), "--bootstrap", "2"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in (out / "report").rglob("*")
              if p.is_file()}
    filler = _fill(small_disk)
    capsys.readouterr()
    assert main(["report", str(out), "--bootstrap", "2"]) == 2  # full: refused before work
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sweep: error: SWEEP_DIR: cannot write to {out} (No space left on device "
                   f"in {out}); choose a directory you can write to"], err
    import workers.results.storage as storage

    monkeypatch.setattr(storage, "PROBE_BYTES", 1)  # (the probe passes: the report's own
    os.truncate(filler, os.path.getsize(filler) - 4096)  # writes are what fill the disk)
    assert main(["report", str(out), "--bootstrap", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"sweep: error: report: could not be made in {out}/report "
                              "(OSError: [Errno 28] No space left on device); nothing was "
                              "replaced"), err
    after = {p.relative_to(out): p.read_bytes() for p in (out / "report").rglob("*")
             if p.is_file()}
    assert after == before
    assert not [n for n in os.listdir(out / "report") if n.startswith(".incoming")]
    os.unlink(filler)
    assert main(["report", str(out), "--bootstrap", "2"]) == 0
    kept = list((out / "report" / "previous").iterdir())
    assert len(kept) == 1 and (kept[0] / "report.html").read_bytes() == \
        before[(out / "report" / "report.html").relative_to(out)]
