"""A trial's record: one Parquet file per trial, explicit schema, atomic writes.

A trial's file ``<sweep>/trials/<trial_id>.parquet`` holds one row: the summary columns and a
``points`` column, a list of per-point records (split, index, label, jacobian_norm, loss,
correct). ``analysis.load_results`` reads the summary columns only; ``analysis.load_points``
flattens ``points``. A file is written to a temporary name and renamed, so a reader sees either
nothing or the whole file. It is written once: a trial's first finished attempt stands, and a
later one (a stale attempt on a node that stalled and woke up after the trial was retried
elsewhere) is dropped with a log line (``storage.Store.write_new``), and ``write_trial``'s
:class:`TrialWrite` tells its caller which happened; ``sweep resume`` moves a result it runs
again aside first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workers.results.conform import CastError, conform, drifted
from workers.results.hyperparameters import DEFAULTS as HYPERPARAMETER_DEFAULTS
from workers.results.hyperparameters import FIELDS as HYPERPARAMETER_FIELDS
from workers.results.layout import CURVES, GRIDS, extra_file, trial_file
from workers.results.storage import store

# 3: stopped_by_time; 4: float64_agrees, float64_rel_diff (older files read with them null);
# 5: weight_decay (older files read with its identity default, 0: they trained without it)
SCHEMA_VERSION = 5


class Status(StrEnum):
    """A trial's status. A record stores one of the first four (its ``status`` column holds
    the value, a plain string); the index (``workers.results.index``) also says of a planned
    trial that its file is not a valid result (INVALID) or that it has none yet (PENDING).
    A member equals its value (``Status.OK == "ok"``) and prints as it."""

    OK = "ok"  # trained; its measures stand
    FAILED = "failed"  # raised (``error``; ``retryable`` when the system, not the trial, failed)
    DIVERGED = "diverged"  # the loss became non-finite
    OOM = "oom"  # out of memory
    INVALID = "invalid"  # index only: a result file that is not a valid result
    PENDING = "pending"  # index only: no result file yet


RECORDED = (Status.OK, Status.FAILED, Status.DIVERGED, Status.OOM)  # what a record may hold
STATUSES = tuple(s.value for s in RECORDED)

POINT_TYPE = pa.struct(
    [
        ("split", pa.string()),
        ("index", pa.int64()),  # row in the (subset) split the trial trained / tested on
        ("label", pa.int64()),
        ("jacobian_norm", pa.float64()),
        ("loss", pa.float64()),
        ("correct", pa.bool_()),
        ("transitions", pa.float64()),  # along the point's translation loop; null if not counted
    ]
)

SUMMARY_FIELDS = [
    ("trial_id", pa.string()),
    ("schema_version", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("retryable", pa.bool_()),  # a failure of the system, not of the trial: resume re-runs it
    *HYPERPARAMETER_FIELDS,  # workers.results.hyperparameters: declared once
    ("steps", pa.int64()),
    # the time budget ran out (train.time_budget): the network is the one at the fallback step
    # (train.fallback_steps), which ``steps`` then holds; null before schema version 3
    ("stopped_by_time", pa.bool_()),
    ("input_dim", pa.int64()),
    ("num_classes", pa.int64()),
    ("n_params", pa.int64()),
    ("train_acc", pa.float64()),
    ("test_acc", pa.float64()),
    ("train_loss", pa.float64()),
    ("test_loss", pa.float64()),
    ("gen_gap", pa.float64()),
    ("jacobian_norm_train", pa.float64()),
    ("jacobian_norm_test", pa.float64()),
    ("jacobian_points_train", pa.int64()),
    ("jacobian_points_test", pa.int64()),
    ("transitions_test", pa.float64()),  # mean over transitions_points test points
    ("transitions_method", pa.string()),  # "exact", "sampled" (Tanh: Eq. 1 at k points) or null
    ("transitions_k", pa.int64()),  # samples per loop when sampled, else null
    ("transitions_points", pa.int64()),
    # whether the trained network evaluated again in float64 (as several measures do) is the
    # float32 network that was scored, on every train and test point (workers.measures.precision:
    # logits within 1e-3 relative), and the largest relative logit difference; null before
    # schema version 4 and for a trial without a trained network
    ("float64_agrees", pa.bool_()),
    ("float64_rel_diff", pa.float64()),
    ("wall_time_s", pa.float64()),
    ("hostname", pa.string()),
    ("spec", pa.string()),  # the canonical JSON the trial id hashes
]
SUMMARY_COLUMNS = [name for name, _ in SUMMARY_FIELDS]
SCHEMA = pa.schema(
    SUMMARY_FIELDS + [("points", pa.list_(POINT_TYPE))],
    metadata={b"sensitivity_sweep_schema_version": str(SCHEMA_VERSION).encode()},
)


# Tables a trial may store beside its result file, ``<sweep>/<kind>/<trial_id>.parquet``, written
# before the result file (which alone marks the trial done).
EXTRA_SCHEMAS = {
    CURVES: pa.schema([  # workers.studies.ellipse_rows
        ("trial_id", pa.string()), ("ellipse", pa.string()), ("phase", pa.string()),
        ("angle", pa.float64()), ("jacobian_norm", pa.float64()), ("transitions", pa.int64()),
        ("density", pa.float64()),
    ]),
    GRIDS: pa.schema([  # workers.studies.boundary_map, one row per phase
        ("trial_id", pa.string()), ("phase", pa.string()), ("n", pa.int64()),
        ("extent", pa.float64()), ("boundary", pa.list_(pa.bool_())),
        ("predicted", pa.list_(pa.int64())), ("anchor_labels", pa.list_(pa.int64())),
    ]),
}


_log = logging.getLogger(__name__)


class ResultError(RuntimeError):
    """A result file that is missing, truncated, corrupt or of another schema."""


class NewerResult(ResultError):
    """A result file of a newer schema than this release reads: a valid result of the release
    that wrote it, so never set aside or run again by this one (``newer_release``)."""


def newer_release(sweep_dir, trial_id: str) -> int | None:
    """The schema version of the trial's result file where it is newer than this release reads
    (SCHEMA_VERSION), else None (no file, an older or this release's, or not readable: its
    footer alone is read)."""
    st = store(sweep_dir)
    try:
        meta = st.parquet_file(trial_file(trial_id)).schema_arrow.metadata or {}
    except Exception:  # (missing, truncated, not parquet: not a newer release's)
        return None
    version = meta.get(b"sensitivity_sweep_schema_version", b"")
    return int(version) if version.isdigit() and int(version) > SCHEMA_VERSION else None


def write_extra(sweep_dir, kind: str, trial_id: str, rows: list[dict]) -> str:
    """Write a trial's extra table (``kind`` in EXTRA_SCHEMAS) atomically."""
    schema = EXTRA_SCHEMAS[kind]
    table = pa.Table.from_pylist([{"trial_id": trial_id, **r} for r in rows], schema=schema)
    rel = extra_file(kind, trial_id)
    store(sweep_dir).write_parquet(rel, table)
    return rel


class WriteOutcome(StrEnum):
    """What ``write_trial`` did with a trial's row (a member equals its value)."""

    WRITTEN = "written"  # the trial had no result file: this row is its result now
    DROPPED = "dropped"  # a result file stood there (another attempt's): it stands, unchanged


@dataclass(frozen=True)
class TrialWrite:
    """What ``write_trial`` did. ``path``: the trial's result file, relative to the sweep
    directory (``layout.trial_file``), whichever row it holds. ``summary``: when WRITTEN, the
    summary row as the file now stores it (the SUMMARY_COLUMNS in SCHEMA's types, equal to what
    ``read_trial_summary`` reads back, without reading it); when DROPPED, None: the row that
    stands is the file's (``read_trial_summary``). On an object store two attempts whose
    look-ups both come before either PUT completes are both WRITTEN, the later PUT standing
    (``Store.write_new``); on a local or shared POSIX path exactly one is."""

    path: str
    outcome: WriteOutcome
    summary: dict | None

    @property
    def written(self) -> bool:
        return self.outcome is WriteOutcome.WRITTEN


def write_trial(sweep_dir, summary: dict, points: list[dict] | None = None) -> TrialWrite:
    """Write one trial's row atomically; every summary column must be present (None allowed;
    ValueError names the missing ones or a status outside STATUSES). Written once
    (``Store.write_new``): if the trial has a result file already, it stands and this row is
    dropped (logged, not an error). Returns a :class:`TrialWrite` saying which happened."""
    missing = [c for c in SUMMARY_COLUMNS if c not in summary and c != "schema_version"]
    if missing:
        raise ValueError(f"summary lacks columns: {missing}")
    if summary["status"] not in STATUSES:
        raise ValueError(f"status: {summary['status']!r} not one of {STATUSES}")
    row = {c: summary.get(c) for c in SUMMARY_COLUMNS}
    row["schema_version"] = SCHEMA_VERSION
    row["points"] = points or []
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    rel = trial_file(summary["trial_id"])
    st = store(sweep_dir)
    if not st.write_parquet_new(rel, table):
        _log.warning("%s exists: this attempt's result (status %s) is dropped; the one there "
                     "stands", st.uri(rel), summary["status"])
        return TrialWrite(rel, WriteOutcome.DROPPED, None)
    stored = table.select(SUMMARY_COLUMNS).to_pylist()[0]  # the row in the file's types
    return TrialWrite(rel, WriteOutcome.WRITTEN, stored)


POINT_FIELDS = [f.name for f in POINT_TYPE]


def points_columns(split: str, index, label, jac, loss, correct, transitions=None) -> list[dict]:
    """Per-point records from equal-length sequences (tensors or lists); ``jac`` and
    ``transitions`` entries may be None (not measured at that point)."""
    def opt(v):
        return None if v is None else float(v)

    n = len(index)
    trans = [None] * n if transitions is None else transitions
    cols = [list(map(int, index)), list(map(int, label)), [opt(v) for v in jac],
            list(map(float, loss)), list(map(bool, correct)), [opt(v) for v in trans]]
    return [dict(zip(["split"] + POINT_FIELDS[1:], (split, *vals))) for vals in zip(*cols)]


def _with_missing(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """``table`` (read from a file of an older schema version) with the columns of SCHEMA it
    lacks as nulls (a hyperparameter with an identity default: that default, the value every
    trial had before it existed), in SCHEMA's order (or ``columns``'); its metadata says the
    current version, since it now has the current columns."""
    names = columns if columns is not None else SCHEMA.names
    out = []
    for c in names:
        if c in table.column_names:
            out.append(table.column(c))
        elif c in HYPERPARAMETER_DEFAULTS:
            out.append(pa.array([HYPERPARAMETER_DEFAULTS[c]] * table.num_rows,
                                SCHEMA.field(c).type))
        elif c in SCHEMA.names:
            out.append(pa.nulls(table.num_rows, SCHEMA.field(c).type))
        else:
            raise KeyError(c)
    fields = [table.schema.field(c) if c in table.column_names else SCHEMA.field(c) for c in names]
    return pa.Table.from_arrays(out, schema=pa.schema(fields, metadata=SCHEMA.metadata))


def _validated(open_file, name: str, columns: list[str] | None) -> pa.Table:
    """The file's ``columns`` (all of SCHEMA's by default) in SCHEMA's types: a column of
    another type is cast (``workers.results.conform``: int32, dictionary, null, large_string...), and
    the file is judged by every column, asked for or not; ResultError if it is not valid."""
    try:
        pf = open_file()
        meta = pf.schema_arrow.metadata or {}
        version = meta.get(b"sensitivity_sweep_schema_version")
        if version is None or not version.isdigit() or int(version) < 2:
            raise ResultError(f"{name}: not a result file of this tool (schema version "
                              f"{version!r}; this release reads 2 to {SCHEMA_VERSION})")
        if int(version) > SCHEMA_VERSION:
            raise NewerResult(f"{name}: schema version {int(version)}, newer than this release "
                              f"reads ({SCHEMA_VERSION}): upgrade sensitivity-sweep to read it")
        present = set(pf.schema_arrow.names)
        want = None if columns is None else [c for c in columns if c in present]
        # columns of another type are read (and cast) whether asked for or not: a file that
        # does not cast is invalid for every reader, whichever columns it reads
        extra = [] if want is None else [c for c in drifted(pf.schema_arrow, SCHEMA)
                                         if c not in want]
        table = pf.read(columns=None if want is None else want + extra,
                        use_threads=False)  # one row: threads only cost
        table = conform(table, SCHEMA, name)
        if extra:
            table = table.drop_columns(extra)
        if int(version) < SCHEMA_VERSION:  # an older file: the columns it lacks are null
            table = _with_missing(table, columns)
        else:
            lacking = [c for c in (columns or SCHEMA.names) if c not in table.column_names]
            if lacking:  # (pyarrow skips a requested column a file lacks without a word)
                raise ResultError(f"{name}: lacks the columns {lacking} of its schema version")
            if columns is not None:
                table = table.select(columns)
    except ResultError:
        raise
    except CastError as e:
        raise ResultError(str(e)) from None
    except Exception as e:  # missing, truncated, not Parquet, unreadable
        raise ResultError(f"{name}: unreadable result file ({type(e).__name__}: {e})") from None
    if table.num_rows != 1:
        raise ResultError(f"{name}: {table.num_rows} rows, expected 1")
    return table


def read_trial(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read and validate one local trial file; raise :class:`ResultError` if it is not a valid
    result."""
    return _validated(lambda: pq.ParquetFile(path), str(path), columns)


def read_result(sweep_dir, trial_id: str, columns: list[str] | None = None) -> pa.Table:
    """Read and validate a trial's result file in a sweep directory (path or URI)."""
    st = store(sweep_dir)
    rel = trial_file(trial_id)
    return _validated(lambda: st.parquet_file(rel), st.uri(rel), columns)


def read_trial_summary(sweep_dir, trial_id: str) -> dict:
    return read_result(sweep_dir, trial_id, columns=SUMMARY_COLUMNS).to_pylist()[0]
