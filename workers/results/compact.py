"""A compacted copy of a sweep's results: a few large Parquet files instead of one per trial.

``sweep compact SWEEP_DIR`` (:func:`compact`) merges the per-trial files ``trials/<id>.parquet``
into a Hive-partitioned dataset inside the sweep directory::

    compacted/_manifest.parquet
    compacted/results/dataset=<name>/part-<version>-<n>.parquet   summary columns, a row per trial
    compacted/points/dataset=<name>/part-<version>-<n>.parquet    trial_id + POINT_FIELDS, a row
                                                                  per point

The ``dataset`` column lives in the directory names only (Hive style), so
``pyarrow.dataset.dataset("compacted/results", partitioning="hive")`` reads the copy as it was
at the last compaction. ``analysis.load_results`` / ``load_points`` do better: they read the
files the manifest lists, only for trials whose per-trial file still has the size and
modification time recorded in the manifest, and read every new or changed per-trial file
itself. The per-trial files stay the source of truth (``sweep resume`` works on them); this
module never modifies or deletes them.

The manifest is one Parquet file: one row per per-trial file seen (trial_id, size, mtime_ns, the
error of an invalid file, the data files holding the trial's rows), and in its key-value
metadata the list of data files. A compaction writes its new data files first, under a new
version id, then the manifest (atomically, through the Store), then deletes every file under
``compacted/`` that the new manifest does not list. A crash leaves the old or the new complete
copy, plus at worst orphan files that the next compaction removes. Run one compaction per sweep
directory at a time.

Incremental: rows of trials whose file is unchanged are taken from the existing copy (a data
file with none of its trials changed or gone is kept as it is); only new or changed per-trial
files are read; a compaction that finds nothing new, changed or gone writes nothing (not
even the manifest). Data files hold at most ``RESULT_ROWS`` / ``POINT_ROWS`` rows and never split
a trial's points.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.results.layout import COMPACTED, MANIFEST, RESULT_SUFFIX, TRIALS, trial_file, trial_id_of
from workers.results.record import (
    POINT_FIELDS, POINT_TYPE, SCHEMA_VERSION, SUMMARY_COLUMNS, SUMMARY_FIELDS, ResultError,
    _validated, read_result,
)
from workers.results.storage import Store
from workers.results.sweep_dir import SweepDir

RESULT_ROWS = 100_000  # rows per results file at most
POINT_ROWS = 1_000_000  # rows per points file at most (unless one trial alone has more)
ROW_GROUP = 131_072  # rows per Parquet row group of a data file
READ_CHUNK = 2048  # per-trial files read before their rows are handed to the writers
READ_THREADS = 2  # ~1.4x one reader on 2 cores (4 was no faster here)
FORMAT = 1
_META_KEY = b"sensitivity_sweep_compacted"
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # pyarrow's name for a null partition value

# The columns of the data files (``dataset`` is in the directory name) and of what readers get.
RESULTS_SCHEMA = pa.schema(SUMMARY_FIELDS)
POINTS_SCHEMA = pa.schema([("trial_id", pa.string())] + [(f.name, f.type) for f in POINT_TYPE])
FILE_SCHEMAS = {
    "results": pa.schema([f for f in RESULTS_SCHEMA if f.name != "dataset"]),
    "points": POINTS_SCHEMA,
}
MANIFEST_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("size", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("error", pa.string()),  # the ResultError of an invalid file; null when valid
    ("results_file", pa.int32()),  # index into the manifest's file list; null when invalid
    ("points_file", pa.int32()),  # null when invalid or without points
])


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the sweep directory
    kind: str  # "results" or "points"
    dataset: str | None
    rows: int


@dataclass
class Manifest:
    version: str
    files: list[DataFile]
    table: pa.Table  # MANIFEST_SCHEMA, one row per per-trial file seen at compaction

    def match(self, entries) -> "Match":
        """Compare with a listing of trials/ (Store.list entries)."""
        now = {trial_id_of(e.name): (e.size, e.mtime_ns) for e in entries}
        cols = [self.table.column(c).to_pylist() for c in MANIFEST_SCHEMA.names]
        m = Match()
        for tid, size, mtime, error, rfile, pfile in zip(*cols):
            if now.get(tid) == (size, mtime):
                if error is None:
                    m.valid[tid] = (rfile, pfile)
                else:
                    m.invalid[tid] = error
            else:
                m.stale.add(tid)  # changed or gone: its compacted rows are out of date
        m.new = sorted(tid for tid in now if tid not in m.valid and tid not in m.invalid)
        return m


@dataclass
class Match:
    valid: dict[str, tuple] = field(default_factory=dict)  # unchanged -> (results, points file)
    invalid: dict[str, str] = field(default_factory=dict)  # unchanged, invalid -> error
    stale: set[str] = field(default_factory=set)  # in the manifest, file changed or gone
    new: list[str] = field(default_factory=list)  # files to read (new or changed)


def partition_dir(kind: str, dataset: str | None) -> str:
    value = _NULL_PARTITION if dataset is None else quote(dataset, safe="")
    return f"{COMPACTED}/{kind}/dataset={value}"


def read_manifest(sweep_dir) -> Manifest | None:
    """The manifest of the compacted copy, or None if there is none or it was written for
    other result columns (a new schema version): then the per-trial files are all there is."""
    st = SweepDir.of(sweep_dir)
    if not st.is_file(MANIFEST):
        return None
    table = st.read_parquet(MANIFEST)
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if (meta.get("format") != FORMAT or meta.get("schema_version") != SCHEMA_VERSION
            or meta.get("summary_columns") != SUMMARY_COLUMNS
            or meta.get("point_fields") != POINT_FIELDS):
        return None
    files = [DataFile(f["path"], f["kind"], f["dataset"], f["rows"]) for f in meta["files"]]
    return Manifest(meta["version"], files, table.cast(MANIFEST_SCHEMA))


def _write_manifest(st: Store, version: str, files: list[DataFile], rows: dict) -> None:
    meta = {"format": FORMAT, "version": version, "schema_version": SCHEMA_VERSION,
            "summary_columns": SUMMARY_COLUMNS, "point_fields": POINT_FIELDS,
            "files": [f.__dict__ for f in files]}
    tids = sorted(rows)
    cols = list(zip(*(rows[t] for t in tids))) if tids else [()] * 5
    table = pa.table([pa.array(tids, pa.string())] + [pa.array(c, f.type) for c, f in
                                                      zip(cols, list(MANIFEST_SCHEMA)[1:])],
                     schema=MANIFEST_SCHEMA.with_metadata({_META_KEY: json.dumps(meta).encode()}))
    st.write_parquet(MANIFEST, table)


# ---- store helpers this module needs beyond Store (deleting is confined to compacted/)
def _delete(st: Store, rel: str) -> None:
    if not rel.startswith(COMPACTED + "/"):
        raise ValueError(f"refusing to delete {rel!r} outside {COMPACTED}/")
    if st.local:
        os.remove(st.path(rel))
    else:
        st.fs.delete_file(st.path(rel))


def _files_under(st: Store, rel: str) -> list[str]:
    """Every file below ``rel`` (hidden temporaries included), relative to the sweep dir."""
    out = []
    if st.local:
        base = st.path()
        for dirpath, _, names in os.walk(st.path(rel)):
            out += [os.path.relpath(os.path.join(dirpath, n), base).replace(os.sep, "/")
                    for n in names]
        return out
    sel = pafs.FileSelector(st.path(rel), allow_not_found=True, recursive=True)
    root = st.path().rstrip("/") + "/"
    return [i.path[len(root):] for i in st.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.path.startswith(root)]


def _prune_empty_dirs(st: Store) -> None:
    if not st.local:
        return  # object stores have no directories; others keep an empty one, harmlessly
    for dirpath, _, _ in sorted(os.walk(st.path(COMPACTED)), key=lambda w: -len(w[0])):
        if dirpath != st.path(COMPACTED):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass  # not empty


# ---- reading per-trial files
def read_trials(st: Store, tids: list[str], columns: list[str] | None, threads: int = 1,
                fast: bool = False):
    """Yield ``(trial_id, table or None, error or None)`` for per-trial files, in order; a file
    that is not a valid result, or holds another trial, gets its error. ``threads`` > 1 reads
    files concurrently (pyarrow releases the GIL while it reads). ``fast`` reads each file in
    one request and decodes it on the calling thread, with the same checks as
    :func:`workers.results.record.read_result`."""
    cols = None if columns is None else list(dict.fromkeys(["trial_id"] + list(columns)))

    def one(tid):
        rel = trial_file(tid)
        try:
            if fast:
                t = _validated(lambda: pq.ParquetFile(pa.BufferReader(st.read_bytes(rel))),
                               st.uri(rel), cols)
            else:
                t = read_result(st, tid, columns=cols)
        except ResultError as e:
            return tid, None, str(e)
        held = t.column("trial_id")[0].as_py()
        if held != tid:
            return tid, None, f"{st.uri(rel)}: holds trial {held}, not {tid}"
        return tid, t, None

    if threads > 1 and len(tids) > 1:
        with ThreadPoolExecutor(threads) as ex:
            yield from ex.map(one, tids)
    else:
        yield from map(one, tids)


def flatten_points(table: pa.Table, extra: list[str] = ()) -> pa.Table:
    """One row per point of a table of trial rows with a ``points`` column: trial_id, the
    ``extra`` trial columns, then POINT_FIELDS, in trial then point order."""
    pts = table.column("points").combine_chunks()
    parents = pc.list_parent_indices(pts)
    flat = pc.list_flatten(pts)
    cols = {"trial_id": table.column("trial_id").take(parents)}
    for c in extra:
        cols[c] = table.column(c).take(parents)
    for f in POINT_TYPE:
        cols[f.name] = pc.struct_field(flat, f.name) if len(flat) else pa.array([], f.type)
    return pa.table(cols)


def _by_dataset(table: pa.Table, col: pa.ChunkedArray):
    keys = pc.unique(col).to_pylist()
    for k in sorted(keys, key=lambda v: (v is None, v or "")):
        mask = pc.is_null(col) if k is None else pc.fill_null(pc.equal(col, k), False)
        yield k, table.filter(mask)


# ---- writing data files
class _Writer:
    """Rows of one kind and dataset, written as files of at most ``limit`` rows, cut only
    between trials (rows of a trial are contiguous in what ``add`` receives)."""

    def __init__(self, st: Store, kind: str, dataset, version: str, limit: int, seq):
        self.st, self.kind, self.dataset, self.version = st, kind, dataset, version
        self.limit, self.seq = limit, seq
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.written: list[tuple[DataFile, list[str]]] = []  # (file, its trial ids)

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table.select(FILE_SCHEMAS[self.kind].names)
                                .cast(FILE_SCHEMAS[self.kind]))
            self.rows += table.num_rows
        while self.rows >= self.limit:
            self._flush(cut=True)

    def close(self) -> None:
        while self.rows:
            self._flush(cut=False)

    def _flush(self, cut: bool) -> None:
        table = pa.concat_tables(self.pending).combine_chunks()
        n = table.num_rows
        if cut and n > self.limit:
            idx = pc.dictionary_encode(table.column("trial_id")).combine_chunks().indices
            starts = pc.indices_nonzero(pc.not_equal(idx[1:], idx[:-1])).to_numpy() + 1
            fitting = starts[starts <= self.limit]
            n = int(fitting[-1]) if len(fitting) else int(starts[0]) if len(starts) else n
        part, rest = table.slice(0, n), table.slice(n)
        name = f"part-{self.version}-{next(self.seq)}.parquet"
        rel = f"{partition_dir(self.kind, self.dataset)}/{name}"
        self.st.write_parquet(rel, part, row_group_size=ROW_GROUP)
        tids = pc.unique(part.column("trial_id")).to_pylist()
        self.written.append((DataFile(rel, self.kind, self.dataset, part.num_rows), tids))
        self.pending = [rest] if rest.num_rows else []
        self.rows = rest.num_rows


def _broken_file(st: Store, man: Manifest) -> str | None:
    """The first data file of ``man`` that is missing or not as listed (its footer only)."""
    for f in man.files:
        try:
            rows = st.parquet_file(f.path).metadata.num_rows
        except Exception as e:
            return f"{st.uri(f.path)}: unreadable ({type(e).__name__}: {e})"
        if rows != f.rows:
            return f"{st.uri(f.path)}: {rows} rows, the manifest says {f.rows}"
    return None


def compact(sweep_dir) -> dict:
    """Write (or bring up to date) the compacted copy of a sweep's results; return a summary:
    trials (valid trials in the copy), reused (taken from the previous copy without reading
    their files), read (per-trial files read), invalid (files skipped: not a valid result,
    each one read now with a warning naming it; a column of another type that casts to the
    schema's, such as int32 or dictionary-encoded strings, is cast: ``workers.results.conform``),
    dropped (trials of the previous copy whose file is gone), datasets, files (data
    files in the copy), written / deleted (data files), version, seconds. With nothing to do
    (no per-trial file new, changed or gone, no stray file under ``compacted/``) nothing is
    written: the copy keeps its version."""
    t0 = time.perf_counter()
    st = SweepDir.of(sweep_dir)
    if not st.has_trials:
        raise FileNotFoundError(f"{sweep_dir}: not a sweep directory (no {TRIALS}/ inside)")
    try:
        old = read_manifest(st)
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        warnings.warn(f"{st.uri(MANIFEST)}: unreadable ({type(e).__name__}: {e}); rebuilding "
                      "the compacted copy", stacklevel=2)
        old = None
    broken = _broken_file(st, old) if old is not None else None
    if broken:
        warnings.warn(f"{broken}; rebuilding the compacted copy", stacklevel=2)
        old = None
    entries = st.list(TRIALS, RESULT_SUFFIX)
    stat = {trial_id_of(e.name): (e.size, e.mtime_ns) for e in entries}
    if old is not None:
        match = old.match(entries)
    else:
        match = Match(new=sorted(stat))
    version = str(time.time_ns())
    seq = itertools.count()
    writers: dict[tuple, _Writer] = {}

    def writer(kind, ds):
        if (kind, ds) not in writers:
            writers[kind, ds] = _Writer(st, kind, ds, version, RESULT_ROWS if kind == "results"
                                        else POINT_ROWS, seq)
        return writers[kind, ds]

    # manifest rows: trial_id -> [size, mtime_ns, error, results file, points file]; the file
    # indices are filled in once the file list is final
    rows: dict[str, list] = {}
    for tid, error in match.invalid.items():
        rows[tid] = [*stat[tid], error, None, None]

    # 1. new and changed per-trial files
    n_read = n_invalid_new = 0
    for i in range(0, len(match.new), READ_CHUNK):
        tables = []
        for tid, t, error in read_trials(st, match.new[i:i + READ_CHUNK], None, READ_THREADS,
                                             fast=True):
            n_read += 1
            if error is not None:
                warnings.warn(f"skipping {error}", stacklevel=2)
                rows[tid] = [*stat[tid], error, None, None]
                n_invalid_new += 1
            else:
                tables.append(t)
        if not tables:
            continue
        chunk = pa.concat_tables(tables).combine_chunks().replace_schema_metadata(None)
        for ds, part in _by_dataset(chunk, chunk.column("dataset")):
            writer("results", ds).add(part.select(SUMMARY_COLUMNS))
            writer("points", ds).add(flatten_points(part))
        for tid in chunk.column("trial_id").to_pylist():
            rows[tid] = [*stat[tid], None, None, None]

    # 2. the previous copy's files: kept as they are, or read again (without the rows of
    # changed or gone trials) when some of their trials changed, or when they are small and
    # their partition gets new rows anyway (so small files do not pile up)
    kept: list[DataFile] = []
    file_of: dict[tuple, DataFile] = {}  # (kind, trial_id) -> DataFile
    if old is not None:
        members: dict[int, list[str]] = {}  # old file index -> its unchanged trials
        for tid, (rfile, pfile) in match.valid.items():
            members.setdefault(rfile, []).append(tid)
            if pfile is not None:
                members.setdefault(pfile, []).append(tid)
            rows[tid] = [*stat[tid], None, None, None]
        stale_ids = pa.array(sorted(match.stale), pa.string())
        gone = old.table.filter(pc.is_in(old.table.column("trial_id"), stale_ids))
        dirty = {v for c in ("results_file", "points_file")
                 for v in gone.column(c).to_pylist() if v is not None}
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(old.files):
            groups.setdefault((f.kind, f.dataset), []).append(i)
        for (kind, ds), idxs in groups.items():
            limit = RESULT_ROWS if kind == "results" else POINT_ROWS
            small = {i for i in idxs if old.files[i].rows < limit // 2 and i not in dirty}
            w = writers.get((kind, ds))
            busy = (w is not None and (w.rows or w.written)) or bool(dirty & set(idxs)) \
                or len(small) > 1
            for i in idxs:
                f = old.files[i]
                if i in dirty or (busy and i in small):
                    t = st.read_parquet(f.path, schema=FILE_SCHEMAS[kind])
                    if i in dirty:
                        t = t.filter(pc.invert(pc.is_in(t.column("trial_id"), stale_ids)))
                    writer(kind, ds).add(t)
                elif members.get(i):
                    kept.append(f)
                    for tid in members[i]:
                        file_of[kind, tid] = f

    if old is not None and not match.new and not match.stale and not writers \
            and len(kept) == len(old.files) \
            and set(_files_under(st, COMPACTED)) == {f.path for f in old.files} | {MANIFEST}:
        # nothing new, changed, gone or stray: the copy stands as it is, and nothing is written
        return _summary(t0, old.version, match, rows, old.files, [], 0, 0, 0, set(stat))

    for w in writers.values():
        w.close()
    written = [f for w in writers.values() for f, _ in w.written]
    for w in writers.values():
        for f, tids in w.written:
            for tid in tids:
                file_of[w.kind, tid] = f

    files = sorted(kept + written,
                   key=lambda f: (f.kind, f.dataset is None, f.dataset or "", f.path))
    index = {f.path: i for i, f in enumerate(files)}
    for tid, r in rows.items():
        if r[2] is None:
            r[3] = index[file_of["results", tid].path]
            pf = file_of.get(("points", tid))
            r[4] = None if pf is None else index[pf.path]

    # 3. the manifest makes the new copy current; then everything else under compacted/ goes
    st.makedirs(COMPACTED)
    _write_manifest(st, version, files, rows)
    keep = set(index) | {MANIFEST}
    deleted = 0
    for rel in _files_under(st, COMPACTED):
        if rel not in keep:
            try:
                _delete(st, rel)
                deleted += 1
            except FileNotFoundError:
                pass
    _prune_empty_dirs(st)

    return _summary(t0, version, match, rows, files, written, deleted, n_read, n_invalid_new,
                    set(stat))


def _summary(t0: float, version: str, match: Match, rows: dict, files: list, written: list,
             deleted: int, n_read: int, n_invalid_new: int, present: set[str]) -> dict:
    return {
        "trials": sum(1 for r in rows.values() if r[2] is None),
        "reused": len(match.valid),
        "read": n_read,
        "invalid": len(match.invalid) + n_invalid_new,
        "dropped": len(match.stale - present),
        "datasets": len({f.dataset for f in files if f.kind == "results"}),
        "files": len(files),
        "written": len(written),
        "deleted": deleted,
        "version": version,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def describe(summary: dict) -> str:
    """One line for ``sweep compact``."""
    s = summary
    return (f"compacted {s['trials']} trials ({s['reused']} reused, {s['read']} files read, "
            f"{s['invalid']} invalid skipped) into {s['files']} files over {s['datasets']} "
            f"datasets in {s['seconds']:.1f} s")
