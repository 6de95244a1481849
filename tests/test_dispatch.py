"""Units of work, the journal and the fast status, without Ray; the dispatch loop as `sweep
measure` runs it (slow: a local Ray)."""

import os
import signal
import time
from pathlib import Path

import pytest

from sweep.config import compose
from sweep.driver import _run_remote, make_units
from sweep.plan import plan_trials
from workers.results.journal import Journal, read_journal, trial_statuses
from workers.results.layout import trial_path
from workers.results.spec import RunContext
from workers.trial import run_trial


def test_cheap_trials_share_tasks_and_expensive_ones_run_alone():
    over = ["space.width=[8,4096]", "space.depth=[2,9]", "plan.grid=[width,depth]", "trials=40",
            "space.seed=[1,2,3,4,5,6,7,8,9,10]", "resources.trials_per_task=4"]
    cfg = compose(over + ["resources.batch_below_flops=1e10"])
    specs = plan_trials(cfg)
    units = make_units(cfg, specs)
    from sweep.cost import estimate_flops

    assert sorted(s.trial_id for u in units for s in u) == sorted(s.trial_id for s in specs)
    for u in units:
        assert len(u) <= 4
        if len(u) > 1:
            assert all(estimate_flops(s) < 1e10 for s in u)
    assert any(len(u) == 4 for u in units)
    assert all(len(u) == 1 for u in units if estimate_flops(u[0]) >= 1e10)
    assert all(len(u) == 1 for u in make_units(compose(over + ["resources.trials_per_task=1"]), specs))


def test_a_retried_unit_does_not_rerun_finished_trials(tmp_path):
    specs = plan_trials(compose(["trials=3", "dry_run=true"]))
    ctx = RunContext(out_dir=str(tmp_path), dry_run=True)
    run_trial(specs[0], ctx)
    before = trial_path(tmp_path, specs[0].trial_id).stat().st_mtime_ns
    got = _run_remote(specs, ctx)
    assert [g[0] for g in got] == ["ok", "ok", "ok"]
    assert trial_path(tmp_path, specs[0].trial_id).stat().st_mtime_ns == before
    for s, (_, size, mtime_ns) in zip(specs, got):  # the stamps the driver journals
        st = trial_path(tmp_path, s.trial_id).stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_status_trusts_the_journal_only_while_the_size_matches(tmp_path):
    specs = plan_trials(compose(["trials=3", "dry_run=true"]))
    ctx = RunContext(out_dir=str(tmp_path), dry_run=True)
    for s in specs:
        run_trial(s, ctx)
    j = Journal(tmp_path)
    for s, status in zip(specs, ["ok", "failed", "ok"]):  # a journal that disagrees with files
        st = trial_path(tmp_path, s.trial_id).stat()
        j.record(s.trial_id, status, st.st_size, st.st_mtime_ns)
    j.close()
    with open(next((tmp_path / "journal").glob("*.tsv")), "a") as f:
        f.write("torn-line-without-fields")  # a driver killed mid-write
    assert set(read_journal(tmp_path)) == {s.trial_id for s in specs}
    statuses, invalid = trial_statuses(tmp_path)
    assert statuses[specs[1].trial_id] == "failed"  # journal used: the size matches
    p = trial_path(tmp_path, specs[1].trial_id)
    os.truncate(p, p.stat().st_size // 2)  # now it does not: the file is read, and is invalid
    statuses, invalid = trial_statuses(tmp_path)
    assert specs[1].trial_id not in statuses and len(invalid) == 1
    assert statuses[specs[0].trial_id] == "ok"


def test_dry_run_is_part_of_the_sweep_identity():
    assert compose(["dry_run=true"]).identity_hash() != compose([]).identity_hash()


def test_resume_reruns_retryable_failures_and_keeps_their_records(tmp_path):
    from sweep.driver import pending
    from workers.results.record import write_trial
    from workers.trial import failure_summary

    specs = plan_trials(compose(["trials=3", "dry_run=true"]))
    system = failure_summary(specs[0], "failed", "WorkerCrashedError: the node died")
    system["retryable"] = True
    write_trial(tmp_path, system)
    write_trial(tmp_path, failure_summary(specs[1], "failed", "ValueError: the trial's own"))
    todo = pending(tmp_path, specs)
    assert [s.trial_id for s in todo] == [specs[0].trial_id, specs[2].trial_id]
    kept = list((tmp_path / "trials" / "retried").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith(specs[0].trial_id)
    assert trial_path(tmp_path, specs[1].trial_id).exists()  # a trial's own failure is final


def test_small_sweeps_keep_enough_units_to_balance():
    specs = plan_trials(compose(["trials=30", "dry_run=true"]))
    cfg = compose(["trials=30", "dry_run=true"])
    units = make_units(cfg, specs, slots=2)
    assert max(len(u) for u in units) == 30 // 8 and len(units) >= 8


def test_units_formed_after_nodes_join_are_sized_for_them():
    """``slots`` as a function (what dispatch passes: the nodes' count now) is asked as each
    unit starts: 80 cheap trials, 10 per task at most and at least 4 units per slot, are 10
    per unit for 1 slot and 5 once 4 can run (before, the first count sized every unit)."""
    from sweep.evaluate import MeasureWork

    cfg = compose(["trials=80", "dry_run=true", "resources.trials_per_task=10"])
    specs = plan_trials(cfg)
    now = {"slots": 1}

    def sizes(units, switch_after):
        out = []
        for u in units:
            out.append(len(u))
            if len(out) == switch_after:
                now["slots"] = 4
        return out

    got = sizes(make_units(cfg, specs, slots=1), 0)
    assert got == [10] * 8
    now["slots"] = 1
    from sweep.trials import iter_units

    got = sizes(iter_units(cfg, specs, lambda: now["slots"]), 2)
    assert got[:2] == [10, 10] and set(got[2:]) == {5} and sum(got) == 80
    # `sweep measure`'s units: at least 2 per slot, up to per_task (here 100 items, 20 per task)
    items = [(str(i), "m") for i in range(100)]
    work = MeasureWork(None, items, 20, None, (), None, {}, print)
    now["slots"] = 1
    got = sizes(work.units(lambda: now["slots"]), 1)
    assert got[0] == 20 and set(got[1:-1]) == {13} and sum(got) == 100  # ceil(100 / 8)


def test_resume_trusts_the_journal_only_for_unchanged_files(tmp_path):
    from sweep.driver import pending
    from workers.results.record import write_trial
    from workers.trial import failure_summary

    specs = plan_trials(compose(["trials=7", "dry_run=true"]))
    ctx = RunContext(out_dir=str(tmp_path), dry_run=True)
    for s in specs[:3]:
        run_trial(s, ctx)  # 0, 1, 2: ok
    system = failure_summary(specs[3], "failed", "WorkerCrashedError: the node died")
    system["retryable"] = True
    write_trial(tmp_path, system)  # 3: retryable failure
    write_trial(tmp_path, failure_summary(specs[4], "failed", "ValueError: own"))  # 4: final
    j = Journal(tmp_path)
    for s in specs[:5]:
        st = trial_path(tmp_path, s.trial_id).stat()
        status = "ok" if s in specs[:3] else "failed"
        j.record(s.trial_id, status, st.st_size, st.st_mtime_ns)
    j.close()
    run_trial(specs[5], ctx)  # 5: ok, never journaled: read
    p = trial_path(tmp_path, specs[1].trial_id)  # 1: truncated after journaling
    p.write_bytes(p.read_bytes()[:60])
    # 2: corrupted in place with the same size, its modification time put back: only a full
    # read can tell (the one case --verify exists for)
    p2 = trial_path(tmp_path, specs[2].trial_id)
    st2 = p2.stat()
    p2.write_bytes(b"\0" * st2.st_size)
    os.utime(p2, ns=(st2.st_atime_ns, st2.st_mtime_ns))

    fast = [s.trial_id for s in pending(tmp_path, specs, move_invalid=False)]
    full = [s.trial_id for s in pending(tmp_path, specs, move_invalid=False, verify=True)]
    ids = [s.trial_id for s in specs]
    assert fast == [ids[1], ids[3], ids[6]]
    assert full == [ids[1], ids[2], ids[3], ids[6]]


def test_the_driver_streams_the_plan_in_batches_and_holds_no_specs(tmp_path, monkeypatch):
    """A written plan is read back in batches: every subset of rows, across batch boundaries,
    gives the planned specs in order; the summary from the manifest's estimates equals the one
    recomputed from the specs; units are formed as the stream yields trials."""
    import itertools

    import pytest

    from sweep import cost
    from sweep.config import ConfigError
    from sweep.driver import Plan, Todo, iter_units, plan_only, saves_weights
    from workers.results.storage import Store

    cfg = compose([f"out={tmp_path / 's'}", "trials=23", "dry_run=true"])
    planned = plan_trials(cfg)
    plan_only(cfg)
    monkeypatch.setattr(Plan, "BATCH_ROWS", 4)  # 6 batches of the 23 rows
    plan = Plan(Store(tmp_path / "s"), cfg.metric_spec())
    assert plan.ids == [s.trial_id for s in planned]
    assert [s.canonical() for s in plan] == [s.canonical() for s in planned]
    for rows in ([], [0], [3, 4], [22], [1, 5, 9, 13, 17, 21], list(range(0, 23, 3))):
        assert [s.trial_id for s in plan.specs(rows)] == [planned[i].trial_id for i in rows]
    assert plan.summary(cfg) == cost.plan_summary(planned, cfg)
    assert plan.n_params() == sum(cost.n_params(s) for s in planned)
    assert plan.memory([2, 7]) == [cost.estimate_memory(planned[i]) for i in (2, 7)]
    assert saves_weights(compose(["save_weights=null"]), plan) == saves_weights(
        compose(["save_weights=null"]), planned)

    todo = Todo(plan, [1, 2, 3, 20])
    seen = []

    class Counting:  # a sized stream that records how far it was read
        def __len__(self):
            return 200

        def __iter__(self):
            for s in itertools.cycle(planned):
                seen.append(s)
                yield s

    with pytest.raises(ValueError, match="strictly increasing"):
        list(plan.specs([5, 3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        list(plan.specs([9, 9]))
    with pytest.raises(ValueError, match="beyond the plan's 23 rows"):
        list(plan.specs([22, 23]))
    assert len(todo) == 4 and [s.trial_id for s in todo] == [planned[i].trial_id for i in (1, 2, 3, 20)]
    first = next(iter_units(compose(["dry_run=true", "resources.trials_per_task=5"]), Counting()))
    assert len(first) == 5 and len(seen) == 5  # a unit is formed from the first trials only

    # a manifest whose spec does not match its id is refused when the plan is opened
    import pyarrow.parquet as pq

    p = tmp_path / "s" / "plan.parquet"
    t = pq.read_table(p)
    specs = t.column("spec").to_pylist()
    specs[0] = specs[1]
    pq.write_table(t.set_column(t.schema.get_field_index("spec"), "spec",
                                __import__("pyarrow").array(specs)), p)
    with pytest.raises(ConfigError, match="does not match its spec"):
        Plan(Store(tmp_path / "s"), cfg.metric_spec())


def _files(root) -> dict:
    """Every file under ``root``: relative path -> (size, modification time in ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_measure_call_with_nothing_to_evaluate_writes_nothing(ray_local, tmp_path):
    """`sweep measure` on a sweep whose finished trials have every value asked for: the first
    call may record the selection (measures.json); a second call finds nothing to evaluate and
    leaves every file of the sweep directory as it was (same files, sizes and mtimes). Before,
    it rewrote measures.json. (The first call evaluates `l2` on Ray: the shared local Ray, not
    one left running in the test process for the next test's fixture to trip on.)"""
    from sweep.driver import plan_only, read_plan
    from sweep.measure import measure_sweep
    from workers.results.storage import Store

    out = tmp_path / "s"
    cfg = compose([f"out={out}", "trials=2", "space.width=[8]", "space.depth=[2]",
                   "train.steps=20", "metrics.transitions_points=0", "dataset.train_size=100",
                   "space.batch_size=[32]",
                   "dataset.test_size=40", "measures=[jacobian_norm_test,l2]"])
    plan_only(cfg)
    for s in read_plan(Store(out)):
        assert run_trial(s, RunContext(str(out), save_weights=True))["status"] == "ok"
    measure_sweep(out)
    before = _files(out)
    assert "measures.json" in before and any(k.startswith("measures/") for k in before)
    counts = measure_sweep(out)
    assert not any(counts.values()), counts
    assert _files(out) == before


@pytest.mark.slow
def test_sweep_measure_stops_on_a_signal_in_the_dispatch_loop(ray_local, tmp_path, monkeypatch):
    """The one dispatch loop's signal handling reaches `sweep measure`: Ctrl-C while a measure
    task loops forever (width 48) stops submitting, waits GRACE_S (lowered to 3 s) for the
    running task, then cancels it (its worker killed: the CPU is free again) and stops with
    exit 130 (MeasureStopped); the values of the task that finished (width 32) are kept.
    Before, `sweep measure` had no grace and no cancel: Ctrl-C left the looping task running."""
    import threading

    import sweep.dispatch as dispatch
    from sweep.driver import launch
    from sweep.measure import MeasureStopped, measure_sweep
    from workers.results.measure_table import stored_keys

    stall = str(Path(__file__).parent / "fixtures" / "stall_measures.py")
    out = tmp_path / "m"
    launch(compose(["dataset.train_size=100", "dataset.test_size=40", "train.steps=50",
                    "train.early_stop=false", "space.depth=[2]", "space.batch_size=[32]",
                    "metrics.transitions_points=0", "progress=false", "figure=false",
                    f"measure_modules=[{stall}]", f"out={out}", "space.width=[32,48]",
                    "plan.grid=[width]", "trials=2", "measures=[jacobian_norm_test]",
                    "save_weights=true"]))
    monkeypatch.setattr(dispatch, "GRACE_S", 3.0)

    def interrupt_once_32_is_measured():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if any(k[1] == "loops_on_48" for k in stored_keys(out)):
                break
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_32_is_measured, daemon=True).start()
    with pytest.raises(MeasureStopped) as stopped:
        measure_sweep(out, ["measures=[jacobian_norm_test,loops_on_48]",
                            "resources.trials_per_task=1"])
    assert stopped.value.exit_code == 130 and "SIGINT" in stopped.value.reason
    assert stopped.value.counts["trials"] == 1, stopped.value.counts  # the width-32 trial
    assert len([k for k in stored_keys(out) if k[1] == "loops_on_48"]) == 1
    t0 = time.monotonic()  # the looping task was cancelled: both CPUs free again
    while ray_local.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() - t0 < 60, ray_local.available_resources()
        time.sleep(0.5)


def test_the_plan_file_holds_what_the_cost_summary_reads():
    """workers.results.plan_file (below sweep) reads the manifest columns sweep.cost's summary
    needs, besides the ids and estimates."""
    from sweep import cost
    from workers.results.plan_file import LIGHT_COLUMNS

    assert set(cost.MANIFEST_COLUMNS) | {"n_params"} <= set(LIGHT_COLUMNS)


def test_the_plain_progress_line_says_what_the_bar_does():
    """Without a terminal, the line a minute holds what the bar shows: settled of total, the
    counts, the running tasks and the time left at the rate so far (60 s for 20 of 80 trials:
    3 s each, 180 s for the 60 left)."""
    from sweep.dispatch import progress_line

    line = progress_line(20, 80, 60.0, {"ok": 18, "failed": 2, "oom": 0}, 2)
    assert line == ("progress: 20/80 trials in 60 s (18 ok, 2 failed; 2 running; about 3.0 min "
                    "left at the rate so far)")
    assert progress_line(0, 80, 5.0, {"ok": 0}, 2) == \
        "progress: 0/80 trials in 5 s (none settled; 2 running)"
    assert "left" not in progress_line(80, 80, 240.0, {"ok": 80}, 0)
    assert "about 2.0 h left" in progress_line(1, 3, 3600.0, {"ok": 1}, 1)
