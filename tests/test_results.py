import math

import pyarrow.parquet as pq
import pytest

from analysis import load_points, load_results
from workers.results.record import (
    SCHEMA, SCHEMA_VERSION, SUMMARY_COLUMNS, ResultError, points_columns, read_trial, write_trial,
)
from workers.results.layout import trial_path
from workers.results.resume import valid_trial_ids

REQUIRED = ["trial_id", "status", "error", "dataset", "width", "depth", "activation", "optimizer",
            "lr", "batch_size", "init_scale", "seed", "random_labels", "augment", "steps",
            "n_params", "train_acc", "test_acc", "train_loss", "test_loss", "gen_gap",
            "jacobian_norm_train", "jacobian_norm_test", "wall_time_s"]


def summary(tid="abc123", status="ok", **kw):
    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id=tid, status=status, dataset="digits", width=8, depth=3, activation="relu",
               optimizer="sgd", lr=0.1, batch_size=32, init_scale=1.0, seed=1, steps=10,
               train_acc=1.0, test_acc=0.75, gen_gap=0.25, jacobian_norm_test=0.5)
    row.update(kw)
    return row


def test_schema_has_every_listed_column():
    assert set(REQUIRED) <= set(SUMMARY_COLUMNS)
    assert SCHEMA.metadata[b"sensitivity_sweep_schema_version"] == str(SCHEMA_VERSION).encode()


def test_round_trip(tmp_path):
    pts = points_columns("test", [0, 5], [3, 1], [0.5, None], [0.1, 2.0], [True, False], [7, None])
    write_trial(tmp_path, summary(), pts)
    write_trial(tmp_path, summary("def456", "failed", error="RuntimeError: boom",
                                  train_acc=math.nan))
    t = pq.read_table(trial_path(tmp_path, "abc123"))
    assert t.schema.equals(SCHEMA, check_metadata=False)
    df = load_results(tmp_path).set_index("trial_id")
    assert df.loc["abc123", "gen_gap"] == 0.25 and df.loc["abc123", "schema_version"] == SCHEMA_VERSION
    assert df.loc["def456", "status"] == "failed" and df.loc["def456", "error"] == "RuntimeError: boom"
    assert list(load_results(tmp_path, columns=["trial_id", "width"]).columns) == ["trial_id", "width"]
    p = load_points(tmp_path)
    recs = p.to_dict("records")
    assert recs[0] == {"trial_id": "abc123", "split": "test", "index": 0, "label": 3,
                       "jacobian_norm": 0.5, "loss": 0.1, "correct": True, "transitions": 7.0}
    assert recs[1]["index"] == 5 and recs[1]["correct"] is False and recs[1]["loss"] == 2.0
    # not measured at that point: missing, not zero
    assert math.isnan(recs[1]["jacobian_norm"]) and math.isnan(recs[1]["transitions"])
    assert valid_trial_ids(tmp_path) == {"abc123": "ok", "def456": "failed"}
    assert [p.name for p in (tmp_path / "trials").iterdir()] != []
    assert not [p for p in (tmp_path / "trials").iterdir() if p.name.startswith(".")]


def test_truncated_or_foreign_files_are_detected(tmp_path):
    path = tmp_path / write_trial(tmp_path, summary()).path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultError, match="unreadable"):
        read_trial(path)
    assert valid_trial_ids(tmp_path) == {}
    with pytest.warns(UserWarning, match="skipping"):
        assert len(load_results(tmp_path)) == 0
    import pyarrow as pa
    pq.write_table(pa.table({"trial_id": ["x"]}), trial_path(tmp_path, "x"))
    with pytest.raises(ResultError, match="schema version"):
        read_trial(trial_path(tmp_path, "x"))
    # a file of a newer release: refused, naming its version and what to do
    t = pq.read_table(tmp_path / write_trial(tmp_path, summary(trial_id="n")).path)
    meta = {b"sensitivity_sweep_schema_version": b"7"}
    pq.write_table(t.replace_schema_metadata(meta), trial_path(tmp_path, "n"))
    with pytest.raises(ResultError, match="schema version 7, newer.*upgrade"):
        read_trial(trial_path(tmp_path, "n"))


def test_bad_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="status"):
        write_trial(tmp_path, summary(status="done"))
    row = summary()
    del row["gen_gap"]
    with pytest.raises(ValueError, match="gen_gap"):
        write_trial(tmp_path, row)
