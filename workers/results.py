"""Per-trial result files: one Parquet file per trial, explicit schema, atomic writes.

A trial's file ``<sweep>/trials/<trial_id>.parquet`` holds one row: the summary columns and a
``points`` column, a list of per-point records (split, index, label, jacobian_norm, loss,
correct). ``analysis.load_results`` reads the summary columns only; ``analysis.load_points``
flattens ``points``. A file is written to a temporary name and renamed, so a reader sees either
nothing or the whole file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2
# The files of a sweep directory besides trials/ (see sweep.driver)
SWEEP_FILE = "sweep.json"
PLAN_FILE = "plan.parquet"
PAIRS_FILE = "pairs.parquet"  # with plan.factors: one row per pair (sweep.plan.plan_pairs)
STATUSES = ("ok", "failed", "diverged", "oom")

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
    ("dataset", pa.string()),
    ("train_size", pa.int64()),
    ("test_size", pa.int64()),
    ("random_labels", pa.bool_()),
    ("augment", pa.bool_()),
    ("width", pa.int64()),
    ("depth", pa.int64()),
    ("activation", pa.string()),
    ("optimizer", pa.string()),
    ("lr", pa.float64()),
    ("batch_size", pa.int64()),
    ("init_scale", pa.float64()),
    ("seed", pa.int64()),
    ("step_budget", pa.int64()),
    ("steps", pa.int64()),
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
    "curves": pa.schema([  # workers.studies.ellipse_rows
        ("trial_id", pa.string()), ("ellipse", pa.string()), ("phase", pa.string()),
        ("angle", pa.float64()), ("jacobian_norm", pa.float64()), ("transitions", pa.int64()),
        ("density", pa.float64()),
    ]),
    "grids": pa.schema([  # workers.studies.boundary_map, one row per phase
        ("trial_id", pa.string()), ("phase", pa.string()), ("n", pa.int64()),
        ("extent", pa.float64()), ("boundary", pa.list_(pa.bool_())),
        ("predicted", pa.list_(pa.int64())), ("anchor_labels", pa.list_(pa.int64())),
    ]),
}


class ResultError(RuntimeError):
    """A result file that is missing, truncated, corrupt or of another schema."""


def trials_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / "trials"


def trial_path(sweep_dir: str | Path, trial_id: str) -> Path:
    return trials_dir(sweep_dir) / f"{trial_id}.parquet"


def weights_path(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / "weights" / f"{trial_id}.safetensors"


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own files are 0600


def atomic_write_bytes_via(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename it onto ``path`` (same directory, so atomic). The
    file gets the usual permissions (0666 less the umask), so other nodes' users can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def extra_path(sweep_dir: str | Path, kind: str, trial_id: str) -> Path:
    return Path(sweep_dir) / kind / f"{trial_id}.parquet"


def write_extra(sweep_dir: str | Path, kind: str, trial_id: str, rows: list[dict]) -> Path:
    """Write a trial's extra table (``kind`` in EXTRA_SCHEMAS) atomically."""
    schema = EXTRA_SCHEMAS[kind]
    table = pa.Table.from_pylist([{"trial_id": trial_id, **r} for r in rows], schema=schema)
    path = extra_path(sweep_dir, kind, trial_id)
    atomic_write_bytes_via(path, lambda tmp: pq.write_table(table, tmp))
    return path


def write_trial(sweep_dir: str | Path, summary: dict, points: list[dict] | None = None) -> Path:
    """Write one trial's row atomically; every summary column must be present (None allowed)."""
    missing = [c for c in SUMMARY_COLUMNS if c not in summary and c != "schema_version"]
    if missing:
        raise ValueError(f"summary lacks columns: {missing}")
    if summary["status"] not in STATUSES:
        raise ValueError(f"status: {summary['status']!r} not one of {STATUSES}")
    row = {c: summary.get(c) for c in SUMMARY_COLUMNS}
    row["schema_version"] = SCHEMA_VERSION
    row["points"] = points or []
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    path = trial_path(sweep_dir, summary["trial_id"])
    atomic_write_bytes_via(path, lambda tmp: pq.write_table(table, tmp))
    return path


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


def read_trial(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read and validate one trial file; raise :class:`ResultError` if it is not a valid result."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        version = meta.get(b"sensitivity_sweep_schema_version")
        if version != str(SCHEMA_VERSION).encode():
            raise ResultError(f"{path}: schema version {version!r}, expected {SCHEMA_VERSION}")
        table = pf.read(columns=columns)
    except ResultError:
        raise
    except Exception as e:  # truncated, not Parquet, unreadable
        raise ResultError(f"{path}: unreadable result file ({type(e).__name__}: {e})") from None
    if table.num_rows != 1:
        raise ResultError(f"{path}: {table.num_rows} rows, expected 1")
    return table


def read_trial_summary(sweep_dir: str | Path, trial_id: str) -> dict:
    table = read_trial(trial_path(sweep_dir, trial_id), columns=SUMMARY_COLUMNS)
    return table.to_pylist()[0]


def result_index(sweep_dir: str | Path) -> dict[str, dict]:
    """trial_id -> {"status", "retryable"} for every readable result file (each file is read and
    checked)."""
    out: dict[str, dict] = {}
    d = trials_dir(sweep_dir)
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.parquet")):
        try:
            row = read_trial(p, columns=["trial_id", "status", "retryable"]).to_pylist()[0]
        except ResultError:
            continue
        if row["trial_id"] == p.stem:
            out[row["trial_id"]] = row
    return out


def valid_trial_ids(sweep_dir: str | Path) -> dict[str, str]:
    """trial_id -> status for every readable result file in the sweep."""
    return {k: r["status"] for k, r in result_index(sweep_dir).items()}


# --------------------------------------------------------------------------------------------
# The journal: what the driver saw arrive, for a fast `sweep status`. The result files stay the
# source of truth; a journal line only lets status skip reading a file whose size still matches.


def journal_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / "journal"


class Journal:
    """Appends ``trial_id<TAB>status<TAB>file size<TAB>mtime_ns`` lines to a file of its own
    (``journal/<time>-<pid>.tsv``): one per driver session, so drivers never share a file."""

    def __init__(self, sweep_dir: str | Path, flush_every: int = 256):
        d = journal_dir(sweep_dir)
        d.mkdir(parents=True, exist_ok=True)
        self._f = open(d / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.tsv", "a")
        self._n, self._every = 0, flush_every

    def record(self, trial_id: str, status: str, size: int, mtime_ns: int) -> None:
        self._f.write(f"{trial_id}\t{status}\t{size}\t{mtime_ns}\n")
        self._n += 1
        if self._n % self._every == 0:
            self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_journal(sweep_dir: str | Path) -> dict[str, tuple[str, int, int]]:
    """trial_id -> (status, size, mtime_ns) over all journal files, later files winning; torn
    lines (a driver killed mid-write) are skipped."""
    out: dict[str, tuple[str, int, int]] = {}
    d = journal_dir(sweep_dir)
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.tsv")):
        for line in p.read_text().splitlines():
            parts = line.split("\t")
            if (len(parts) == 4 and parts[1] in STATUSES and parts[2].isdigit()
                    and parts[3].isdigit()):
                out[parts[0]] = (parts[1], int(parts[2]), int(parts[3]))
    return out


def trial_statuses(sweep_dir: str | Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(trial_id -> status for every valid result file, errors of invalid files). A file whose
    size and modification time match its journal line is taken from the journal; every other
    file is read and checked."""
    journal = read_journal(sweep_dir)
    statuses: dict[str, str] = {}
    invalid: list[tuple[str, str]] = []
    d = trials_dir(sweep_dir)
    if not d.is_dir():
        return statuses, invalid
    with os.scandir(d) as it:
        for e in it:
            if not e.name.endswith(".parquet") or e.name.startswith("."):
                continue
            tid = e.name[: -len(".parquet")]
            j = journal.get(tid)
            st = e.stat()
            if j is not None and j[1:] == (st.st_size, st.st_mtime_ns):
                statuses[tid] = j[0]
                continue
            try:
                row = read_trial(e.path, columns=["trial_id", "status"]).to_pylist()[0]
            except ResultError as err:
                invalid.append((tid, str(err)))
                continue
            if row["trial_id"] != tid:
                invalid.append((tid, f"{e.path}: holds trial {row['trial_id']}, not {tid}"))
                continue
            statuses[tid] = row["status"]
    return statuses, invalid
