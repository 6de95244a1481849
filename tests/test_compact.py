"""The compacted copy of a sweep (workers.results.compact) against the per-trial files it is built from:
every load through the compacted copy must equal the load of the per-trial files alone."""

import math
import os
import warnings
from unittest import mock

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

import workers.results.compact as compact_mod
import analysis.load as load_mod
from analysis import load_pairs, load_points, load_results
from workers.results.compact import MANIFEST, compact, read_manifest
from workers.results.layout import PAIRS_FILE, trial_path
from workers.results.record import POINT_FIELDS, SUMMARY_COLUMNS, points_columns, write_trial
from workers.results.storage import store

DATASETS = ("digits", "mnist")


def summary(tid, **kw):
    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id=tid, status="ok", dataset="digits", width=8, depth=3, activation="relu",
               optimizer="sgd", lr=0.1, batch_size=32, init_scale=1.0, seed=1, steps=10,
               train_acc=1.0, test_acc=0.75, gen_gap=0.25, jacobian_norm_test=0.5,
               spec='{"id": "%s"}' % tid)
    row.update(kw)
    return row


def points(i: int) -> list[dict]:
    n = i % 4  # 0 to 3 points; some unmeasured metrics
    jac = [None if (i + k) % 3 == 0 else 0.1 * (i + k) for k in range(n)]
    trans = [None if k % 2 else float(i + k) for k in range(n)]
    return points_columns("test" if i % 2 else "train", list(range(n)), [k % 10 for k in range(n)],
                          jac, [0.5 * k for k in range(n)], [k % 2 == 0 for k in range(n)], trans)


def add_trial(d, i: int, **kw) -> str:
    tid = f"t{i:04d}"
    kw.setdefault("dataset", DATASETS[i % 2])
    kw.setdefault("width", 8 * (1 + i % 5))
    kw.setdefault("test_acc", 0.5 + i / 1000)
    if i % 7 == 3:
        kw.setdefault("status", "failed")
        kw.setdefault("error", "RuntimeError: boom")
        kw.setdefault("train_acc", math.nan)
    trial_path(d, tid).unlink(missing_ok=True)  # a re-run: its old result made way (resume)
    write_trial(d, summary(tid, **kw), points(i))
    return tid


def make_sweep(d, n=24):
    for i in range(n):
        add_trial(d, i)
    return d


def per_trial(fn, *a, **kw):
    """``fn`` reading the per-trial files only (as if no compacted copy existed)."""
    with mock.patch.object(load_mod, "read_manifest", lambda st: None):
        return fn(*a, **kw)


POINT_FILTERABLE = {"trial_id", "dataset", *POINT_FIELDS}


def assert_same(d, **kw):
    assert_frame_equal(load_results(d, **kw), per_trial(load_results, d, **kw))
    f = kw.get("filters")
    names = set() if not isinstance(f, list) else {
        t[0] for t in (sum(f, []) if f and isinstance(f[0], list) else f)}
    pkw = {"filters": f} if f is not None and names and names <= POINT_FILTERABLE else {}
    assert_frame_equal(load_points(d, **pkw), per_trial(load_points, d, **pkw))


def snapshot(d):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (d / "trials").glob("*.parquet")}


def data_files(d):
    return sorted(p.relative_to(d).as_posix() for p in (d / "compacted").rglob("*")
                  if p.is_file() and p.name != "_manifest.parquet")


def test_compacted_loads_equal_per_trial_loads(tmp_path):
    d = make_sweep(tmp_path / "s")
    before_r, before_p = load_results(d), load_points(d)
    s = compact(d)
    assert s["trials"] == 24 and s["read"] == 24 and s["reused"] == 0 and s["invalid"] == 0
    assert s["datasets"] == 2 and s["files"] == 4 and s["seconds"] >= 0
    assert read_manifest(d) is not None
    after_r, after_p = load_results(d), load_points(d)
    assert_frame_equal(after_r, before_r)
    assert_frame_equal(after_p, before_p)
    assert list(after_r["trial_id"]) == sorted(after_r["trial_id"])
    assert len(after_p) == sum(i % 4 for i in range(24))
    assert str(after_r["dataset"].dtype) == str(before_r["dataset"].dtype)  # not categorical
    # the points keep their order within a trial
    assert list(after_p[after_p.trial_id == "t0003"]["index"]) == [0, 1, 2]


def test_hive_layout_is_readable_by_plain_pyarrow(tmp_path):
    d = make_sweep(tmp_path / "s")
    compact(d)
    files = data_files(d)
    assert any(f.startswith("compacted/results/dataset=digits/part-") for f in files)
    assert any(f.startswith("compacted/points/dataset=mnist/part-") for f in files)
    res = pads.dataset(d / "compacted" / "results", partitioning="hive").to_table()
    assert res.num_rows == 24
    by_ds = res.group_by("dataset").aggregate([("trial_id", "count")]).to_pydict()
    assert dict(zip(by_ds["dataset"], by_ds["trial_id_count"])) == {"digits": 12, "mnist": 12}
    pts = pads.dataset(d / "compacted" / "points", partitioning="hive").to_table()
    assert pts.num_rows == len(load_points(d))
    assert set(pts.column_names) == {"trial_id", "dataset", *POINT_FIELDS}
    # the partition value is in the directory name only
    one = [f for f in files if "/results/" in f][0]
    assert "dataset" not in pq.read_schema(d / one).names


@pytest.mark.parametrize("kw", [
    {"columns": ["width", "trial_id", "test_acc"]},
    {"filters": [("dataset", "=", "digits")]},
    {"filters": [("dataset", "=", "mnist"), ("width", ">=", 24)]},
    {"filters": [[("dataset", "=", "digits"), ("width", "<", 16)], [("status", "=", "failed")]]},
    {"filters": (pc.field("width") > 16) & (pc.field("test_acc") < 0.52), "columns": ["trial_id"]},
    {"filters": [("dataset", "in", ["nope"])]},
])
def test_filters_and_columns_in_both_forms(tmp_path, kw):
    d = make_sweep(tmp_path / "s")
    ref = load_results(d, **kw)
    compact(d)
    assert_same(d, **kw)
    assert_frame_equal(load_results(d, **kw), ref)
    if "columns" in kw:
        assert list(ref.columns) == kw["columns"]


def test_filters_select_the_right_rows(tmp_path):
    d = make_sweep(tmp_path / "s")
    compact(d)
    full = load_results(d)
    df = load_results(d, filters=[("dataset", "=", "digits"), ("width", ">=", 24)])
    expect = full[(full.dataset == "digits") & (full.width >= 24)].reset_index(drop=True)
    assert len(df) > 0
    assert_frame_equal(df, expect)
    pts = load_points(d, filters=[("dataset", "=", "mnist"), ("index", ">", 0)])
    mnist = set(full.loc[full.dataset == "mnist", "trial_id"])
    assert len(pts) > 0 and set(pts.trial_id) <= mnist and (pts["index"] > 0).all()
    with pytest.raises(ValueError, match="unknown"):
        load_results(d, filters=[("nope", "=", 1)])
    with pytest.raises(ValueError, match="unknown"):
        load_points(d, filters=[("width", "=", 8)])  # a summary column, not a point column
    with pytest.raises(ValueError, match="filters"):
        load_results(d, filters=pc.field("nope") > 1)
    with pytest.raises(ValueError, match="filters"):
        load_results(d, filters=[("width", ">", "wide")])


def test_an_unreadable_compacted_copy_falls_back_to_the_trial_files(tmp_path):
    d = make_sweep(tmp_path / "s")
    compact(d)
    victim = d / [f for f in read_manifest(d).files if f.kind == "results"][0].path
    victim.write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="compacted copy unreadable"):
        df = load_results(d)
    assert_frame_equal(df, per_trial(load_results, d))
    with pytest.warns(UserWarning, match="rebuilding"):
        assert compact(d)["read"] == 24  # a damaged copy is rebuilt
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(d)
    (d / MANIFEST).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="compacted copy unreadable"):
        assert_frame_equal(load_points(d), per_trial(load_points, d))
    with pytest.warns(UserWarning, match="rebuilding"):
        s = compact(d)  # a manifest that cannot be read is rebuilt from the trial files
    assert s["read"] == 24 and read_manifest(d) is not None
    assert_same(d)


def test_incremental_compaction(tmp_path):
    d = make_sweep(tmp_path / "s")
    compact(d)
    # a trial re-run after compaction (re-written file), a new trial, a trial moved aside
    path = trial_path(d, "t0005")
    add_trial(d, 5, test_acc=0.99, width=512)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # surely newer
    add_trial(d, 100)
    (d / "trials" / "retried").mkdir()
    os.replace(trial_path(d, "t0006"), d / "trials" / "retried" / "t0006.parquet.1")

    df = load_results(d).set_index("trial_id")
    assert df.loc["t0005", "width"] == 512 and df.loc["t0005", "test_acc"] == 0.99
    assert "t0100" in df.index and "t0006" not in df.index and len(df) == 24
    assert_same(d)
    assert_same(d, filters=[("width", "=", 512)])
    pts = load_points(d)
    assert "t0006" not in set(pts.trial_id) and (pts.trial_id == "t0005").sum() == 1

    s = compact(d)
    assert (s["trials"], s["reused"], s["read"], s["dropped"]) == (24, 22, 2, 1)
    assert_same(d)
    man = read_manifest(d)
    assert "t0006" not in man.table.column("trial_id").to_pylist()
    # nothing changed: nothing is read
    s = compact(d)
    assert (s["reused"], s["read"], s["written"]) == (24, 0, 0)
    assert_same(d)


def test_per_trial_files_are_never_modified(tmp_path):
    d = make_sweep(tmp_path / "s")
    snap = snapshot(d)
    compact(d)
    add_trial(d, 50)
    snap2 = snapshot(d)
    assert {k: v for k, v in snap2.items() if k != "t0050.parquet"} == snap
    compact(d)
    assert snapshot(d) == snap2
    assert not [p for p in (d / "trials").rglob("*") if p.is_dir()]  # nothing moved aside


def test_invalid_files_are_skipped_and_counted(tmp_path):
    d = make_sweep(tmp_path / "s")
    bad = trial_path(d, "t0004")
    bad.write_bytes(bad.read_bytes()[:60])
    (d / "trials" / "t9999.parquet").write_bytes(trial_path(d, "t0007").read_bytes())  # another's
    with pytest.warns(UserWarning, match="skipping"):
        ref = per_trial(load_results, d)
    assert len(ref) == 23
    s = compact(d)
    assert s["invalid"] == 2 and s["trials"] == 23
    with pytest.warns(UserWarning, match="skipping") as rec:
        df = load_results(d)
    assert len(rec) == 2 and any("holds trial t0007" in str(w.message) for w in rec)
    assert_frame_equal(df, ref)
    s = compact(d)
    assert s["invalid"] == 2 and s["read"] == 0  # known invalid files are not read again
    # the file is re-run (re-written): it is read and joins the copy
    add_trial(d, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "t0004" in set(load_results(d).trial_id)
        s = compact(d)
        assert s["invalid"] == 1 and s["trials"] == 24
        assert_same(d)


def test_a_crash_leaves_the_previous_copy(tmp_path, monkeypatch):
    d = make_sweep(tmp_path / "s")
    compact(d)
    version, files = read_manifest(d).version, data_files(d)
    ref_r, ref_p = load_results(d), load_points(d)
    add_trial(d, 200)
    add_trial(d, 201, dataset="cifar10")

    def crash(*a, **k):
        raise RuntimeError("killed while writing the manifest")

    monkeypatch.setattr(compact_mod, "_write_manifest", crash)
    with pytest.raises(RuntimeError, match="killed"):
        compact(d)
    monkeypatch.undo()
    assert read_manifest(d).version == version
    assert set(files) < set(data_files(d))  # the old files all there, plus orphans
    # the old copy still serves its trials; the two new ones come from their files
    df = load_results(d)
    assert_frame_equal(df[~df.trial_id.isin(["t0200", "t0201"])].reset_index(drop=True), ref_r)
    assert len(df) == 26
    assert_same(d)
    pts = load_points(d)
    assert_frame_equal(pts[~pts.trial_id.isin(["t0200", "t0201"])].reset_index(drop=True), ref_p)

    # the next compaction succeeds and removes the orphans
    s = compact(d)
    assert s["trials"] == 26 and s["datasets"] == 3
    listed = {f.path for f in read_manifest(d).files}
    assert set(data_files(d)) == listed
    assert_same(d)


def test_orphans_and_temporaries_are_removed(tmp_path):
    d = make_sweep(tmp_path / "s")
    compact(d)
    junk = [d / "compacted" / "results" / "dataset=digits" / "part-1-0.parquet",
            d / "compacted" / "points" / "dataset=old" / ".part-9.parquet.abc.tmp"]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert_same(d)  # not listed in the manifest: never read
    compact(d)
    assert not any(p.exists() for p in junk) and not (junk[1].parent).exists()


def test_files_are_bounded_and_small_files_merged(tmp_path, monkeypatch):
    monkeypatch.setattr(compact_mod, "RESULT_ROWS", 4)
    monkeypatch.setattr(compact_mod, "POINT_ROWS", 5)
    monkeypatch.setattr(compact_mod, "ROW_GROUP", 2)
    monkeypatch.setattr(compact_mod, "READ_CHUNK", 3)
    d = make_sweep(tmp_path / "s", n=30)
    s = compact(d)
    man = read_manifest(d)
    assert s["files"] == len(man.files) > 4
    per_file = {}
    for f in man.files:
        t = pq.read_table(d / f.path)
        assert t.num_rows == f.rows
        assert f.rows <= (4 if f.kind == "results" else 5)
        if f.kind == "points":
            for tid in set(t.column("trial_id").to_pylist()):
                per_file.setdefault(tid, set()).add(f.path)
    assert all(len(v) == 1 for v in per_file.values())  # a trial's points are in one file
    assert_same(d)
    for i in range(30, 33):
        add_trial(d, i)
    add_trial(d, 2, width=999)
    s = compact(d)
    assert s["reused"] == 29 and s["read"] == 4 and s["trials"] == 33
    assert_same(d)
    small = {}
    for f in read_manifest(d).files:
        limit = 4 if f.kind == "results" else 5
        if f.rows < limit // 2:
            small[f.kind, f.dataset] = small.get((f.kind, f.dataset), 0) + 1
    assert all(v <= 1 for v in small.values())


def test_a_file_uri_store(tmp_path):
    local = make_sweep(tmp_path / "s")
    uri = f"file://{local}"
    ref_r, ref_p = per_trial(load_results, local), per_trial(load_points, local)
    s = compact(uri)
    assert s["trials"] == 24
    assert (local / MANIFEST).is_file()
    assert_frame_equal(load_results(uri), ref_r)
    assert_frame_equal(load_points(uri), ref_p)
    assert_frame_equal(load_results(local), ref_r)  # the same copy, read as a local path
    f = [("dataset", "=", "mnist")]
    assert_frame_equal(load_results(uri, filters=f), per_trial(load_results, local, filters=f))
    add_trial(local, 77)
    os.remove(trial_path(local, "t0001"))
    s = compact(uri)
    assert (s["reused"], s["read"], s["dropped"]) == (23, 1, 1)
    assert_frame_equal(load_results(uri), per_trial(load_results, local))
    assert set(data_files(local)) == {f.path for f in read_manifest(uri).files}


def test_empty_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        compact(tmp_path / "nothing")
    (tmp_path / "e" / "trials").mkdir(parents=True)
    s = compact(tmp_path / "e")
    assert s["trials"] == 0 and s["files"] == 0
    assert len(load_results(tmp_path / "e")) == 0 and len(load_points(tmp_path / "e")) == 0


def test_pairs_read_through_the_compacted_copy(tmp_path):
    import pyarrow as pa

    d = make_sweep(tmp_path / "s", n=4)
    store(d).write_parquet(PAIRS_FILE, pa.table({
        "pair_id": [0], "factor": ["width"], "value_a": ["8"], "value_b": ["16"],
        "trial_a": ["t0000"], "trial_b": ["t0001"]}))
    ref = load_pairs(d, columns=["width", "test_acc"])
    assert ref[["width_a", "width_b"]].values.tolist() == [[8, 16]]
    compact(d)
    assert_frame_equal(load_pairs(d, columns=["width", "test_acc"]), ref)
    assert_frame_equal(load_pairs(d), per_trial(load_pairs, d))


def test_a_manifest_of_other_columns_is_ignored(tmp_path, monkeypatch):
    d = make_sweep(tmp_path / "s", n=6)
    compact(d)
    monkeypatch.setattr(compact_mod, "SUMMARY_COLUMNS", SUMMARY_COLUMNS + ["new_column"])
    assert read_manifest(d) is None  # written for other columns: the per-trial files rule
    monkeypatch.undo()
    assert read_manifest(d) is not None


def test_load_points_trial_ids_open_only_those_files(tmp_path, monkeypatch):
    d = make_sweep(tmp_path / "s", n=12)
    want = ["t0001", "t0005", "t0009"]  # test-split trials with points
    opened = []
    real = load_mod.read_trials

    def spy(st, tids, columns, **kw):
        opened.extend(tids)
        return real(st, tids, columns, **kw)

    monkeypatch.setattr(load_mod, "read_trials", spy)
    pts = load_points(d, [("split", "=", "test")], trial_ids=want)
    assert sorted(opened) == want
    monkeypatch.setattr(load_mod, "read_trials", real)
    full = load_points(d)
    ref = full[full.trial_id.isin(want) & (full.split == "test")].reset_index(drop=True)
    assert len(ref) > 0
    assert_frame_equal(pts.reset_index(drop=True), ref)
    compact(d)  # the compacted form gives the same rows
    assert_frame_equal(load_points(d, [("split", "=", "test")], trial_ids=want).reset_index(drop=True), ref)


def test_empty_reads_keep_the_schema(tmp_path):
    """Issue example: load_results(d, filters=[("width", ">", 10**6)]) gave all-object columns;
    an empty read has the dtypes of a full one, in both forms and for every loader."""
    import numpy as np

    d = make_sweep(tmp_path / "s")
    full, pts_full = load_results(d), load_points(d)
    for form in ("per-trial", "compacted"):
        if form == "compacted":
            compact(d)
        empty = load_results(d, filters=[("width", ">", 10**6)])
        assert len(empty) == 0 and list(empty.columns) == list(full.columns)
        for c in full.columns:
            if full[c].notna().all():  # (a column with a null is float64/object in pandas)
                assert empty[c].dtype == full[c].dtype, (form, c)
        assert empty["width"].dtype == np.int64 and empty["train_size"].dtype == np.int64
        assert empty["gen_gap"].dtype == np.float64 and empty["augment"].dtype == bool
        some = load_results(d, columns=["trial_id", "width", "gen_gap"],
                            filters=[("width", ">", 10**6)])
        assert list(some.dtypes) == list(full[["trial_id", "width", "gen_gap"]].dtypes)
        pts = load_points(d, filters=[("index", ">", 10**6)])
        assert len(pts) == 0 and list(pts.columns) == list(pts_full.columns)
        for c in ("trial_id", "split", "index", "label", "loss", "correct"):
            assert pts[c].dtype == pts_full[c].dtype, (form, c)
        assert pts["jacobian_norm"].dtype == np.float64
