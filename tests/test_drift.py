"""Files of the current schema version whose column types drifted (int32 for int64,
dictionary-encoded strings, an all-null column typed null, large_string, narrower integers,
nested list/struct fields) read as the schema says: every load of a sweep holding one equals
the load of the same sweep as written (a copy made before the file was rewritten). A file with
a column that does not cast is one invalid file, judged the same way by every reader: skipped
with a warning naming it (load_*, compact), left out (result_files, measure_files), and "no
valid result" for resume and status, whichever columns each of them reads."""

import shutil
import warnings

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

from analysis import load_curves, load_measures, load_points, load_results
from workers.results.compact import compact
from analysis.load import measure_files, result_files
from sweep.driver import pending_rows
from workers.results.journal import trial_statuses
from workers.results.resume import result_index, valid_trial_ids
from workers.results.layout import extra_file, trial_path
from workers.measures import Outcome
from workers.results.measure_table import measure_file, write_outcome
from workers.results.record import (
    SUMMARY_COLUMNS, ResultError, points_columns, read_result, write_extra, write_trial,
)
from workers.results.storage import store

N = 6
DRIFTED = "t0002"  # the trial whose files are rewritten


def _summary(i: int) -> dict:
    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id=f"t{i:04d}", status="ok", dataset=("digits", "mnist")[i % 2],
               width=8 * (i + 1), depth=3, activation="relu", optimizer="sgd", lr=0.1,
               batch_size=32, init_scale=1.0, seed=i, steps=10, train_acc=1.0,
               test_acc=0.5 + i / 100, gen_gap=0.5 - i / 100, jacobian_norm_test=0.1 * i,
               spec='{"id": %d}' % i)
    return row


def _sweep(d):
    """N trials with points, two measures each (one with per-point values), curves."""
    for i in range(N):
        tid = f"t{i:04d}"
        write_trial(d, _summary(i), points_columns(
            "test", [0, 1, 2], [i % 10, 1, 2], [0.5, None, 1.5], [0.1, 0.2, 0.3],
            [True, False, True], [3.0, None, 1.0]))
        write_outcome(d, tid, Outcome("margin_gamma5", 0.25 * i, 1, {}, 0.5,
                                      points={"test": {0: 0.5 * i, 1: None}},
                                      info={"points": 2}))
        write_outcome(d, tid, Outcome("params", 100.0 + i, 1, {}, 0.01))
        write_extra(d, "curves", tid, [
            {"ellipse": "e0", "phase": "final", "angle": a / 4, "jacobian_norm": 1.0 + a,
             "transitions": a, "density": 2.0 * a} for a in range(3)])
    return d


@pytest.fixture
def sweeps(tmp_path):
    """(the sweep as written, a copy of it to drift)"""
    ref = _sweep(tmp_path / "written")
    d = tmp_path / "drifted"
    shutil.copytree(ref, d)
    return ref, d


def _rewrite(path, change) -> None:
    """Rewrite one Parquet file with ``change(table)`` (its metadata kept)."""
    t = pq.read_table(path)
    pq.write_table(change(t).replace_schema_metadata(t.schema.metadata), path)


def _retype(col: str, typ, values=None):
    """A change that stores column ``col`` as ``typ`` (its values cast, or ``values``)."""
    def change(t):
        i = t.schema.get_field_index(col)
        arr = (pa.array(values, typ) if values is not None else
               pa.nulls(t.num_rows) if typ == pa.null() else t.column(col).cast(typ))
        return t.set_column(i, pa.field(col, typ), arr)
    return change


def _dictionary(col: str):
    def change(t):
        return t.set_column(t.schema.get_field_index(col), col, pc.dictionary_encode(t.column(col)))
    return change


def _point_type(field: str, typ):
    """A change that stores the ``field`` of the ``points`` structs as ``typ``."""
    def change(t):
        old = t.schema.field("points").type.value_type
        new = pa.struct([pa.field(f.name, typ if f.name == field else f.type) for f in old])
        return _retype("points", pa.list_(new))(t)
    return change


def _both(*changes):
    def change(t):
        for c in changes:
            t = c(t)
        return t
    return change


RESULT_DRIFTS = {
    "int32": _retype("width", pa.int32()),
    "dictionary": _both(_dictionary("activation"), _dictionary("dataset")),
    "null": _both(_retype("error", pa.null()), _retype("transitions_method", pa.null())),
    "large_string": _retype("spec", pa.large_string()),
    "narrower_and_wider": _both(_retype("schema_version", pa.int64()),
                                _retype("train_acc", pa.float32())),
    "nested": _point_type("index", pa.int32()),
}


def _loads(d) -> dict:
    return {"results": load_results(d), "points": load_points(d), "measures": load_measures(d),
            "measure_points": load_measures(d, points=True), "curves": load_curves(d)}


def _assert_loads(d, ref_loads: dict) -> None:
    for name, df in _loads(d).items():
        assert_frame_equal(df, ref_loads[name], obj=name)


@pytest.mark.parametrize("kind", list(RESULT_DRIFTS))
def test_a_drifted_result_file_loads_as_written(sweeps, kind):
    ref, d = sweeps
    _rewrite(trial_path(d, DRIFTED), RESULT_DRIFTS[kind])
    assert pq.read_schema(trial_path(d, DRIFTED)) != pq.read_schema(trial_path(ref, DRIFTED))
    want = _loads(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a castable file is valid: no warning (but the note
        warnings.filterwarnings("ignore", message="values of older versions")  # that this
        # fixture's margin_gamma5 is of version 1, now 2: analysis.load.outdated_note)
        _assert_loads(d, want)
        assert valid_trial_ids(d) == valid_trial_ids(ref)
        assert result_index(d) == result_index(ref)
        assert trial_statuses(d) == trial_statuses(ref)
        assert [p.rsplit("/", 1)[1] for p in result_files(d)] == [
            p.rsplit("/", 1)[1] for p in result_files(ref)]
        s = compact(d)
        assert s["trials"] == N and s["invalid"] == 0
        _assert_loads(d, want)  # read through the compacted copy
        assert compact(d)["reused"] == N
    assert pending_rows(store(d), [f"t{i:04d}" for i in range(N)], verify=True) == []
    assert trial_path(d, DRIFTED).is_file()


MEASURE_DRIFTS = {
    "int32": _retype("version", pa.int32()),
    "dictionary": _dictionary("settings"),
    "null": _retype("error", pa.null()),
    "large_string": _retype("hostname", pa.large_string()),
    "nested": _point_type("index", pa.int32()),
}


@pytest.mark.parametrize("kind", list(MEASURE_DRIFTS))
def test_a_drifted_measure_file_loads_as_written(sweeps, kind):
    ref, d = sweeps
    rel = measure_file(DRIFTED, "margin_gamma5", 1, {})
    _rewrite(d / rel, MEASURE_DRIFTS[kind])
    want = _loads(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="values of older versions")  # (as above)
        _assert_loads(d, want)
        assert len(measure_files(d)) == len(measure_files(ref)) == 2 * N


def test_a_drifted_extra_file_loads_as_written(sweeps):
    ref, d = sweeps
    _rewrite(d / extra_file("curves", DRIFTED),
             _both(_retype("transitions", pa.int32()), _dictionary("ellipse"),
                   _retype("phase", pa.large_string())))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_frame_equal(load_curves(d), load_curves(ref))


# a column whose values do not cast: the file is not valid, for every reader
UNCASTABLE = {
    "text in a float column": ("train_acc", pa.string(), ["abc"]),
    "a fraction in an integer column": ("width", pa.float64(), [8.5]),
    "points of another shape": ("points", pa.list_(pa.struct([("index", pa.string())])),
                                [[{"index": "x"}]]),
}


@pytest.mark.parametrize("kind", list(UNCASTABLE))
def test_an_uncastable_result_file_is_skipped_naming_it_and_rerun(sweeps, kind):
    ref, d = sweeps
    col, typ, values = UNCASTABLE[kind]
    path = trial_path(d, DRIFTED)
    _rewrite(path, _retype(col, typ, values))
    written = path.read_bytes()
    # judged by every column, whichever a reader asks for
    for cols in (None, ["trial_id", "status"], ["retryable"]):
        with pytest.raises(ResultError, match=f"{DRIFTED}.parquet: column '{col}' holds"):
            read_result(d, DRIFTED, columns=cols)
    others = [t for t in sorted(valid_trial_ids(ref)) if t != DRIFTED]
    want = load_results(ref)
    want = want[want.trial_id != DRIFTED].reset_index(drop=True)
    for attempt in ("per-trial files", "compacted"):
        with pytest.warns(UserWarning, match=f"skipping .*{DRIFTED}.parquet: column '{col}'"):
            got = load_results(d)
        assert_frame_equal(got, want, obj=attempt)
        with pytest.warns(UserWarning, match=f"{DRIFTED}.parquet"):
            assert sorted(set(load_points(d).trial_id)) == others
        if attempt == "per-trial files":
            with pytest.warns(UserWarning, match=f"skipping .*{DRIFTED}.parquet: column"):
                s = compact(d)
            assert s["invalid"] == 1 and s["trials"] == N - 1
    # resume and status: no valid result
    assert sorted(valid_trial_ids(d)) == others
    statuses, invalid = trial_statuses(d)
    assert sorted(statuses) == others and [t for t, _ in invalid] == [DRIFTED]
    assert f"{DRIFTED}.parquet" not in " ".join(result_files(d))
    assert pending_rows(store(d), [f"t{i:04d}" for i in range(N)], verify=True) == [2]
    moved = list((d / "trials" / "invalid").iterdir())  # moved aside for the re-run, kept
    assert len(moved) == 1 and moved[0].read_bytes() == written
    assert not path.exists()


@pytest.mark.parametrize("col, typ, values", [
    ("value", pa.string(), ["abc"]),
    # a column load_measures does not read unless asked (points): the file is judged whole
    ("points", pa.list_(pa.struct([("value", pa.string())])), [[{"value": "abc"}]]),
])
def test_an_uncastable_measure_file_is_skipped_naming_it(sweeps, col, typ, values):
    ref, d = sweeps
    rel = measure_file(DRIFTED, "margin_gamma5", 1, {})
    _rewrite(d / rel, _retype(col, typ, values))
    for points in (False, True):
        want = load_measures(ref, points=points)
        want = want[~((want.trial_id == DRIFTED) & (want.measure == "margin_gamma5"))]
        with pytest.warns(UserWarning, match=f"skipping .*{rel.split('/')[1]}.*column '{col}'"):
            got = load_measures(d, points=points)
        assert_frame_equal(got, want.reset_index(drop=True))
    with pytest.warns(UserWarning, match="skipping"):
        df = load_results(d).set_index("trial_id")
    assert df.margin_gamma5.isna().tolist() == [t == DRIFTED for t in df.index]
    assert df.params.tolist() == [100.0 + i for i in range(N)]
    assert len(measure_files(d)) == 2 * N - 1 and rel.split("/")[1] not in " ".join(
        measure_files(d))


def test_an_uncastable_extra_file_is_skipped_naming_it(sweeps):
    ref, d = sweeps
    _rewrite(d / extra_file("curves", DRIFTED), _retype("angle", pa.string(), ["a", "b", "c"]))
    want = load_curves(ref)
    with pytest.warns(UserWarning, match=f"skipping .*curves/{DRIFTED}.parquet.*'angle'"):
        got = load_curves(d)
    assert_frame_equal(got, want[want.trial_id != DRIFTED].reset_index(drop=True))
