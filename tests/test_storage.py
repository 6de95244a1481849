"""Sweep directories behind pyarrow filesystem URIs: the Store primitives, and a whole sweep
(launch, status, load, corrupt file, resume) with ``out=file:///...``, which goes through the
same pyarrow filesystem calls as ``s3://`` or ``gs://``."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import load_results
from sweep.cli import main
from sweep.config import compose
from sweep.driver import launch, pending
from sweep.plan import plan_trials
from workers.results.journal import Journal, read_journal, trial_statuses
from workers.results.record import read_result, write_trial
from workers.results.layout import trial_file
from workers.results.resume import valid_trial_ids
from workers.results.storage import Store, store
from workers.trial import failure_summary


def test_uri_store_primitives(tmp_path):
    st = Store(f"file://{tmp_path}/s")
    assert not st.local and not st.exists()
    st.write_text("a/b.txt", "hello")
    assert st.read_text("a/b.txt") == "hello" and st.is_file("a/b.txt") and st.is_dir("a")
    assert (tmp_path / "s" / "a" / "b.txt").read_text() == "hello"  # where the URI points
    assert not st.is_empty()
    st.write_parquet("t/x.parquet", pa.table({"v": [1, 2]}))
    assert st.read_parquet("t/x.parquet").column("v").to_pylist() == [1, 2]
    assert pq.ParquetFile(tmp_path / "s" / "t" / "x.parquet").metadata.num_rows == 2
    entries = st.list("t", ".parquet")
    assert [e.name for e in entries] == ["x.parquet"]
    os_stat = (tmp_path / "s" / "t" / "x.parquet").stat()
    assert entries[0].size == os_stat.st_size
    st.move("t/x.parquet", "t/aside/x.parquet.1")
    assert st.list("t", ".parquet") == [] and st.is_file("t/aside/x.parquet.1")
    assert st.list("missing") == []
    assert not list((tmp_path / "s").rglob(".*.tmp"))  # no temporary left behind
    with pytest.raises(ValueError, match="must be relative"):
        st.path("/etc/passwd")


def test_staging_publishes_whole_files_and_keeps_the_previous_ones(tmp_path):
    for location in (str(tmp_path / "a"), f"file://{tmp_path}/b"):
        st = Store(location)
        for rel in ("", "rep"):
            with st.staging(rel) as d:
                (d / "x.txt").write_text("one")
            with st.staging(rel) as d:
                (d / "x.txt").write_text("two")
            with pytest.raises(RuntimeError):
                with st.staging(rel) as d:
                    (d / "x.txt").write_text("three")
                    raise RuntimeError("a figure failed")
            prefix = f"{rel}/" if rel else ""
            assert st.read_text(f"{prefix}x.txt") == "two"  # the failed run published nothing
            prev = st.list(f"{prefix}previous")
            assert prev == []  # moved aside into a timestamped directory below previous/
            olds = [p for p in (tmp_path / location[-1]).rglob("x.txt") if "previous" in p.parts]
            assert [p.read_text() for p in olds if (rel in p.parts) == bool(rel)] == ["one"]


def test_single_put_stores_write_in_one_stream(tmp_path):
    # S3/GCS objects appear only when their upload completes, so no temporary is written there
    st = Store(f"file://{tmp_path}/s")
    st._put_atomic = True
    st.makedirs("x")  # a local filesystem needs the directory that an object store does not
    st.write_bytes("x/y.bin", b"\x00" * 10)
    assert (tmp_path / "s" / "x" / "y.bin").read_bytes() == b"\x00" * 10


def test_bad_uri_is_one_clear_error(tmp_path, capsys):
    assert main(["launch", "out=nosuchscheme://bucket/x", "trials=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep: error: out:") and "URI" in err and "\n" not in err
    assert main(["status", "nosuchscheme://bucket/x"]) == 2


def test_results_journal_and_pending_through_a_uri(tmp_path):
    uri = f"file://{tmp_path}/s"
    specs = plan_trials(compose(["trials=3", "dry_run=true"]))
    system = failure_summary(specs[0], "failed", "WorkerCrashedError: the node died")
    system["retryable"] = True
    write_trial(uri, system)
    write_trial(uri, failure_summary(specs[1], "failed", "ValueError: the trial's own"))
    assert valid_trial_ids(uri) == {specs[0].trial_id: "failed", specs[1].trial_id: "failed"}
    assert read_result(uri, specs[1].trial_id, ["error"]).column("error")[0].as_py().startswith("ValueError")

    j = Journal(uri, flush_every=1)
    e = store(uri).entry(trial_file(specs[1].trial_id))
    j.record(specs[1].trial_id, "failed", e.size, e.mtime_ns)
    j.close()
    assert read_journal(uri) == {specs[1].trial_id: ("failed", e.size, e.mtime_ns)}
    assert trial_statuses(uri) == ({specs[0].trial_id: "failed", specs[1].trial_id: "failed"}, [])

    todo = pending(uri, specs)
    assert [s.trial_id for s in todo] == [specs[0].trial_id, specs[2].trial_id]
    kept = list((tmp_path / "s" / "trials" / "retried").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith(specs[0].trial_id)


@pytest.mark.slow
def test_sweep_to_a_uri_launches_loads_and_resumes(ray_local, tmp_path, capsys):
    local, uri = tmp_path / "ref", f"file://{tmp_path}/s"
    over = ["trials=4", "dataset.train_size=120", "dataset.test_size=40", "train.steps=60",
            "train.check_every=30", "space.width=[16]", "space.depth=[2]",
            "space.batch_size=[32]", "metrics.transitions_points=4", "progress=false",
            "measures=[jacobian_norm_test,transitions_test]"]  # the two compared (and ranked)
    from sweep.cli import main

    assert main(["launch", *over, f"out={uri}", "save_weights=true"]) == 0  # with the report
    launch(compose(over + [f"out={local}"]))
    df = load_results(uri).sort_values("trial_id").reset_index(drop=True)
    ref = load_results(local).sort_values("trial_id").reset_index(drop=True)
    assert len(df) == 4 and (df["status"] == "ok").all()
    cols = ["trial_id", "train_acc", "test_acc", "jacobian_norm_test", "transitions_test"]
    assert df[cols].equals(ref[cols])  # the same numbers as a local sweep
    assert (tmp_path / "s" / "report" / "report.html").stat().st_size > 1000
    assert len(list((tmp_path / "s" / "weights").iterdir())) == 4
    from workers import load_model
    assert load_model(uri, df["trial_id"][0]) is not None

    victim = tmp_path / "s" / "trials" / f"{df['trial_id'][1]}.parquet"
    victim.write_bytes(victim.read_bytes()[:50])
    capsys.readouterr()
    assert main(["status", uri]) == 0
    assert "invalid" in capsys.readouterr().out
    assert main(["resume", uri]) == 0
    assert "1 to run" in capsys.readouterr().err
    again = load_results(uri).sort_values("trial_id").reset_index(drop=True)
    assert again[cols].equals(ref[cols])
    assert list((tmp_path / "s" / "trials" / "invalid").iterdir())


def test_a_staging_that_fails_while_moving_in_puts_the_previous_files_back(tmp_path, monkeypatch):
    """The publish step's moves: one that fails midway is undone (the new files out, the old
    ones back, nothing hidden left behind); when even that fails, the error says where the
    previous files are (review, 2026-12-07)."""
    import errno
    import os

    from workers.results.storage import PartlyPublished, Store

    st = Store(tmp_path / "s")
    with st.staging("r") as d:
        (d / "a.txt").write_text("old a")
        (d / "b.txt").write_text("old b")
    real = st.move
    calls = []

    def fails_on_the_second_move_in(src, dst):
        calls.append((src, dst))
        if ".incoming-" in src and sum(".incoming-" in s for s, _ in calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(st, "move", fails_on_the_second_move_in)
    with pytest.raises(OSError, match="Input/output error") as e:
        with st.staging("r") as d:
            (d / "a.txt").write_text("new a")
            (d / "b.txt").write_text("new b")
    assert not isinstance(e.value, PartlyPublished)
    assert st.read_text("r/a.txt") == "old a" and st.read_text("r/b.txt") == "old b"
    assert sorted(os.listdir(tmp_path / "s" / "r")) == ["a.txt", "b.txt"]  # (and previous/
    # only if a report went there before: none here)

    def every_move_back_fails(src, dst):
        if "previous/" in src or ".incoming-" in src:
            if ".incoming-" in src and not calls_after:
                calls_after.append(1)
                return real(src, dst)
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    calls_after = []
    monkeypatch.setattr(st, "move", every_move_back_fails)
    with pytest.raises(PartlyPublished, match="could not all be put back: they are in"):
        with st.staging("r") as d:
            (d / "a.txt").write_text("newer a")
            (d / "b.txt").write_text("newer b")
