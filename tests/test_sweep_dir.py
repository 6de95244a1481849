"""The sweep directory as a value (workers.results.sweep_dir), its layout and the layout's
inverse (workers.results.layout), the index with its Status (workers.results.index), and the
rule that a call with nothing to do writes nothing (a read never writes; a second
``sweep compact`` with nothing new leaves every file and directory as it was)."""

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from workers.results import layout
from workers.results.compact import compact, read_manifest
from workers.results.index import Journal, Status, StatusCounts, status_counts, trial_statuses
from workers.results.layout import (
    CHECKPOINTS, CURVES, GRIDS, MEASURES, RUNNING, TRIALS, WEIGHTS, MeasureName, parse,
    parse_marker_name, parse_measure_name, trial_id_of,
)
from workers.results.record import STATUSES, SUMMARY_COLUMNS, write_extra, write_trial
from workers.results.storage import Store, store
from workers.results.sweep_dir import SweepDir

FIXTURE = Path(__file__).parent / "fixtures" / "schema2_sweep"


def summary(tid, status="ok", **kw):
    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id=tid, status=status, dataset="digits", width=8, depth=3,
               activation="relu", optimizer="sgd", lr=0.1, batch_size=32, init_scale=1.0,
               seed=1, steps=10, train_acc=1.0, test_acc=0.75, spec='{"id": "%s"}' % tid,
               retryable=False)
    row.update(kw)
    return row


def make_sweep(d: Path, journal: bool = True) -> list[str]:
    """Five trials (ok, ok, failed, diverged, oom), one with curves, a truncated sixth file,
    a plan of eight (two without a file), the drivers' journal of the first three."""
    statuses = ["ok", "ok", "failed", "diverged", "oom"]
    ids = [f"t{i}" for i in range(8)]
    j = Journal(d) if journal else None
    for tid, status in zip(ids, statuses):
        rel = write_trial(d, summary(tid, status, error=None if status == "ok" else "boom")).path
        if j is not None and tid in ids[:3]:
            e = store(d).entry(rel)
            j.record(tid, status, e.size, e.mtime_ns)
    if j is not None:
        j.close()
    write_extra(d, CURVES, "t0", [{"ellipse": "a", "phase": "final", "angle": 0.0,
                                   "jacobian_norm": 1.0, "transitions": 2, "density": 0.5}])
    bad = d / TRIALS / "t5.parquet"
    bad.write_bytes((d / TRIALS / "t0.parquet").read_bytes()[:50])
    store(d).write_parquet(layout.PLAN_FILE, pa.table({"trial_id": ids}))
    store(d).write_text(layout.SWEEP_FILE, "{}")
    return ids


def snapshot(d: Path, root: bool = True) -> dict:
    """Every file and directory below ``d`` (and ``d`` itself with ``root``): size and mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(d):
        for n in dirs + files:
            p = Path(dirpath, n)
            st = p.stat()
            out[p.relative_to(d).as_posix()] = (st.st_size if p.is_file() else None,
                                                st.st_mtime_ns)
    if root:
        out["."] = (None, d.stat().st_mtime_ns)
    return out


# ---- the layout and its inverse
def test_every_path_parses_back_to_its_trial():
    tid = "0123456789abcdef"
    key = MeasureName(tid, "path_norm", 2, "a1b2c3d4e5")
    cases = {
        layout.trial_file(tid): layout.Entry(TRIALS, tid),
        layout.extra_file(CURVES, tid): layout.Entry(CURVES, tid),
        layout.extra_file(GRIDS, tid): layout.Entry(GRIDS, tid),
        layout.weights_file(tid): layout.Entry(WEIGHTS, tid),
        layout.checkpoint_file(tid): layout.Entry(CHECKPOINTS, tid),
        layout.fallback_file(tid): layout.Entry(CHECKPOINTS, tid, fallback=True),
        layout.measure_file(*key): layout.Entry(MEASURES, tid, measure=key),
        layout.running_file(tid, "tok"): layout.Entry(RUNNING, tid, token="tok"),
    }
    for rel, entry in cases.items():
        assert parse(rel) == entry, rel
    for rel in (layout.SWEEP_FILE, layout.PLAN_FILE, layout.MANIFEST, layout.REPORT_PAGE,
                layout.aside_file(tid, layout.INVALID, 1), layout.aside_file(tid, layout.RETRIED, 2),
                layout.damaged_weights_file(tid, 3), layout.raised_file(layout.measure_file(*key), 4),
                layout.journal_file("x.tsv"), f"{TRIALS}/.t.parquet.123.tmp", f"{TRIALS}/x.txt",
                f"{MEASURES}/{tid}.parquet", layout.LOCK_FILE):
        assert parse(rel) is None, rel
    assert parse_measure_name(layout.measure_file(*key).split("/")[1]) == key
    assert parse_measure_name("t.m.vx.k.parquet") is None
    assert parse_marker_name("t.tok.json") == ("t", "tok") and parse_marker_name("t.json") is None
    assert trial_id_of("abc.parquet") == "abc" and trial_id_of("abc.safetensors") is None
    assert trial_id_of("abc.safetensors", layout.WEIGHTS_SUFFIX) == "abc"
    with pytest.raises(ValueError, match="allowed"):
        layout.aside_file(tid, "elsewhere", 1)


def test_entries_name_every_top_level_path():
    top = {rel.split("/")[0] for rel in (
        layout.SWEEP_FILE, layout.PLAN_FILE, layout.PLAN_SUMMARY_FILE, layout.PAIRS_FILE,
        layout.trial_file("t"), layout.weights_file("t"), layout.checkpoint_file("t"),
        layout.extra_file(CURVES, "t"), layout.extra_file(GRIDS, "t"), layout.measure_file(
            "t", "m", 1, "k"), layout.SELECTION_FILE, layout.journal_file("j.tsv"),
        layout.running_file("t", "k"), layout.MANIFEST, layout.REPORT_PAGE, layout.LOCK_FILE,
        layout.LOCK_TAKEOVER, layout.SLURM_JOBS)}
    assert top == set(layout.ENTRIES)
    assert set(os.listdir(FIXTURE)) <= set(layout.ENTRIES)


# ---- SweepDir
def test_sweep_dir_is_a_store(tmp_path):
    ids = make_sweep(tmp_path)
    d = SweepDir.of(str(tmp_path))
    assert isinstance(d, Store) and store(d) is d and SweepDir.of(d) is d
    assert SweepDir.of(str(tmp_path)) is d  # opened once per process
    plain = Store(str(tmp_path))
    assert SweepDir.of(plain).trial_ids() == d.trial_ids() == ids[:6]
    assert d.planned and d.has_trials and not SweepDir.of(tmp_path / "none").planned
    assert d.extra_ids(CURVES) == {"t0"} and d.extra_ids(GRIDS) == set()
    assert d.weights_ids() == set() and d.measure_names() == []
    assert set(d.trial_stats()) == set(ids[:6])
    assert d.locate(d.trial_file("t1")) == str(tmp_path / TRIALS / "t1.parquet")
    uri = SweepDir.of(f"file://{tmp_path}")
    assert not uri.local and uri.trial_ids() == ids[:6]
    assert uri.locate("x") == f"file://{tmp_path}/x"


# ---- the index
def test_status_values_are_the_stored_strings():
    assert STATUSES == ("ok", "failed", "diverged", "oom")
    assert [s.value for s in Status] == ["ok", "failed", "diverged", "oom", "invalid", "pending"]
    assert Status.OK == "ok" and f"{Status.FAILED}" == "failed" and str(Status.OOM) == "oom"
    assert isinstance(Status.OK, str) and Status("diverged") is Status.DIVERGED


def test_status_counts(tmp_path):
    ids = make_sweep(tmp_path)
    sc = SweepDir.of(tmp_path).status_counts(ids)
    assert isinstance(sc, StatusCounts) and sc.planned == 8
    assert {k: v for k, v in sc.counts.items() if v} == {
        Status.OK: 2, Status.FAILED: 1, Status.DIVERGED: 1, Status.OOM: 1, Status.INVALID: 1,
        Status.PENDING: 2}
    assert sc.done == 5
    assert sc.failures == [("t2", "failed"), ("t3", "diverged"), ("t4", "oom")]
    assert [tid for tid, _ in sc.invalid] == ["t5"]
    # trials outside the plan are not counted
    assert status_counts(tmp_path, ids[:2]).counts[Status.INVALID] == 0


def test_status_command_counts_from_the_index(tmp_path, capsys):
    from sweep.cli import main

    make_sweep(tmp_path)
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines()]
    counts = {ln[0]: int(ln[1]) for ln in lines if len(ln) == 2 and ln[1].isdigit()}
    assert counts == {"ok": 2, "diverged": 1, "failed": 1, "oom": 1, "invalid": 1, "pending": 2}
    assert "progress 5/8 (62.5%)" in out and "t2 failed: boom" in out
    # no driver runs it: the next command is named (the invalid file and the two pending;
    # t2's failure is its own, final: resume does not run it)
    assert out.splitlines()[-1] == (
        f"  next: sweep resume {tmp_path} runs the 3 without a valid result")
    import json
    import os
    import socket
    import time

    (tmp_path / "driver.lock").write_text(json.dumps(dict(  # a live driver: nothing to advise
        host=socket.gethostname(), pid=os.getpid(), command="resume", started=time.time(),
        heartbeat=time.time(), token="t")))
    assert main(["status", str(tmp_path)]) == 0
    assert "next:" not in capsys.readouterr().out


def test_status_names_the_next_command_only_for_what_it_runs(tmp_path, capsys, monkeypatch):
    """A retryable failure is run again by resume (named); a trial's own failure is final (not
    named: nothing to run); a sweep run by `sweep slurm` continues with its chain (sbatch), and
    while a job of the chain is queued nothing is to be run by hand."""
    import sweep.slurm as sl
    from sweep.cli import main

    ids = ["a", "b", "c"]
    write_trial(tmp_path, summary("a"))
    write_trial(tmp_path, summary("b", "failed", error="its own ValueError"))
    store(tmp_path).write_parquet(layout.PLAN_FILE, pa.table({"trial_id": ids[:2]}))
    store(tmp_path).write_text(layout.SWEEP_FILE, "{}")
    assert main(["status", str(tmp_path)]) == 0
    assert "next:" not in capsys.readouterr().out  # (b is final)
    write_trial(tmp_path, summary("c", "failed", error="WorkerCrashedError", retryable=True))
    store(tmp_path).write_parquet(layout.PLAN_FILE, pa.table({"trial_id": ids}))
    assert main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"  next: sweep resume {tmp_path} runs the 1 failure(s) recorded as retryable (a worker "
        "or node that died)")
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "jobs.tsv").write_text(
        "7\tsubmitted\t2026-01-01T00:00:00Z\t\tby sweep slurm\n")
    monkeypatch.setattr(sl, "queue_states", lambda ids: {})  # the chain ended
    assert main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        f"  next: sbatch {tmp_path}/slurm/sweep.sbatch runs the 1 failure(s)")
    monkeypatch.setattr(sl, "queue_states", lambda ids: {"7": "PENDING"})  # a job is queued
    assert main(["status", str(tmp_path)]) == 0
    assert "next:" not in capsys.readouterr().out


def test_old_module_names_are_the_index():
    import workers.results.index as index
    import workers.results.journal as journal
    import workers.results.resume as resume

    assert journal is index and resume is index
    assert journal.trial_statuses is trial_statuses


# ---- nothing to do: nothing written
def test_reading_the_index_writes_nothing(tmp_path, capsys):
    from analysis.load import load_curves, load_points, load_results, measure_files, result_files
    from sweep.cli import main

    ids = make_sweep(tmp_path)
    before = snapshot(tmp_path)
    d = SweepDir.of(tmp_path)
    d.read_journal()
    statuses, invalid = d.statuses()
    assert set(statuses) == set(ids[:5]) and [t for t, _ in invalid] == ["t5"]
    assert set(d.index()) == set(d.index(trust_journal=True)) == set(ids[:5])
    assert set(d.valid()) == set(ids[:5])
    d.status_counts(ids)
    with pytest.warns(UserWarning, match="skipping"):
        load_results(tmp_path)
    with pytest.warns(UserWarning, match="skipping"):
        load_points(tmp_path)
    load_curves(tmp_path)
    result_files(tmp_path)
    measure_files(tmp_path)
    assert main(["status", str(tmp_path)]) == 0
    assert snapshot(tmp_path) == before


def test_a_second_compaction_writes_nothing(tmp_path, capsys):
    from sweep.cli import main

    make_sweep(tmp_path)
    with pytest.warns(UserWarning, match="skipping"):
        first = compact(tmp_path)
    assert first["written"] > 0
    before = snapshot(tmp_path)
    again = compact(tmp_path)
    assert snapshot(tmp_path) == before
    assert (again["written"], again["deleted"], again["read"]) == (0, 0, 0)
    assert again["version"] == first["version"] == read_manifest(tmp_path).version
    assert {k: again[k] for k in ("trials", "invalid", "files", "datasets")} == \
        {k: first[k] for k in ("trials", "invalid", "files", "datasets")}
    # the command too (its write probe touches only the directory itself)
    before = snapshot(tmp_path, root=False)
    assert main(["compact", str(tmp_path)]) == 0
    assert "compacted 5 trials" in capsys.readouterr().out
    assert snapshot(tmp_path, root=False) == before
    # something new: written again
    write_trial(tmp_path, summary("t6"))
    assert compact(tmp_path)["written"] > 0 and read_manifest(tmp_path).version != first["version"]


def test_a_stray_file_is_something_to_do(tmp_path):
    make_sweep(tmp_path)
    with pytest.warns(UserWarning):
        compact(tmp_path)
    stray = tmp_path / layout.COMPACTED / "results" / "part-0-9.parquet"
    stray.write_bytes(b"x")
    assert compact(tmp_path)["deleted"] == 1 and not stray.exists()


def test_the_old_sweep_reads_and_compacts_twice_without_writing(tmp_path, capsys):
    from analysis.load import load_results
    from sweep.cli import main

    d = tmp_path / "schema2"
    shutil.copytree(FIXTURE, d)
    before = snapshot(d)
    load_results(d)
    assert main(["status", str(d)]) == 0
    assert snapshot(d) == before
    compact(d)
    before = snapshot(d)
    compact(d)
    assert snapshot(d) == before
