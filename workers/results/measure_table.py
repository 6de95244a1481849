"""The measures table: one file per (trial, measure, version, settings), apart from the trial's
own record.

``measures/<trial_id>.<measure>.v<version>.<settings key>.parquet`` holds one row: trial_id,
measure, version, settings (canonical JSON), value (null if the measure raised), seconds,
error, info (JSON), hostname, created (unix time) and the per-point values (split, index,
value). Files are written atomically (temporary name, rename) and never overwritten: a value
exists once per key, so evaluating again is a no-op, and a stale attempt of a trial that writes
a value another attempt wrote already leaves it as it is (``storage.Store.write_new``: atomic
on a POSIX path, checked before the PUT on an object store). Readers accept files that lack columns
added later (null there); a file of a newer format than this release reads is refused with a
message naming its version.
"""

from __future__ import annotations

import json
import socket
import time

import pyarrow as pa

from workers.results.conform import conform, drifted
from workers.results.measure_values import Outcome, raised, settings_key
from workers.results.layout import MEASURES, SELECTION_FILE, parse_measure_name, raised_file
from workers.results.layout import measure_file as _measure_file
from workers.results.storage import store

MEASURE_FORMAT = 1  # bump only for an incompatible change; new optional columns need none
POINT_VALUE = pa.struct([("split", pa.string()), ("index", pa.int64()), ("value", pa.float64())])
MEASURE_SCHEMA = pa.schema(
    [("trial_id", pa.string()), ("measure", pa.string()), ("version", pa.int64()),
     ("settings", pa.string()), ("value", pa.float64()), ("seconds", pa.float64()),
     ("error", pa.string()), ("info", pa.string()), ("hostname", pa.string()),
     ("created", pa.float64()), ("points", pa.list_(POINT_VALUE))],
    metadata={b"sensitivity_sweep_measure_format": str(MEASURE_FORMAT).encode()})
COLUMNS = [f.name for f in MEASURE_SCHEMA if f.name != "points"]


def measure_file(trial_id: str, measure: str, version: int, settings) -> str:
    """The file of one value, relative to the sweep directory."""
    return _measure_file(trial_id, measure, version, settings_key(settings))


def parse_name(name: str) -> tuple[str, str, int, str] | None:
    """(trial_id, measure, version, settings key) from a file name, or None."""
    return parse_measure_name(name)


def stored_keys(sweep_dir) -> set[tuple[str, str, int, str]]:
    """(trial_id, measure, version, settings key) of every value file present."""
    out = set()
    for e in store(sweep_dir).list(MEASURES, ".parquet"):
        key = parse_name(e.name)
        if key is not None:
            out.add(key)
    return out


def write_outcome(sweep_dir, trial_id: str, o: Outcome, replace: bool = False) -> str | None:
    """Write one value atomically; None (nothing written) if that value is already stored.
    With ``replace``, a stored value whose measure raised (not an 'undefined' one) is moved
    aside to ``measures/raised/`` (never deleted) and the new one written."""
    st = store(sweep_dir)
    rel = measure_file(trial_id, o.name, o.version, o.settings)
    if st.exists(rel):
        if not replace:
            return None
        try:
            err = st.parquet_file(rel).read(columns=["error"]).column("error")[0].as_py()
        except Exception:
            err = "unreadable"
        if not raised(err):
            return None
        st.move(rel, raised_file(rel, time.time_ns()))
    points = [{"split": split, "index": int(i), "value": None if v is None else float(v)}
              for split, vals in o.points.items() for i, v in sorted(vals.items())]
    row = {"trial_id": trial_id, "measure": o.name, "version": o.version,
           "settings": canonical_settings(o.settings),
           "value": o.value, "seconds": o.seconds, "error": o.error,
           "info": json.dumps(dict(o.info), sort_keys=True, default=str),
           "hostname": socket.gethostname(), "created": time.time(), "points": points}
    st.makedirs(MEASURES)
    if not st.write_parquet_new(rel, pa.Table.from_pylist([row], schema=MEASURE_SCHEMA)):
        return None  # another attempt wrote it meanwhile: that value stands
    return rel


SELECTION = SELECTION_FILE  # the settings last asked for per measure: what load_results shows


def canonical_settings(settings) -> str:
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def read_selection(sweep_dir) -> dict[str, dict]:
    """measure -> {"version", "settings"} last asked for (by a launch or `sweep measure`);
    empty if none was recorded (sweeps of earlier releases) or the file is unreadable."""
    st = store(sweep_dir)
    try:
        return json.loads(st.read_text(SELECTION)) if st.is_file(SELECTION) else {}
    except (OSError, ValueError):
        return {}


def write_selection(sweep_dir, asked: dict[str, tuple[int, dict]],
                    modules: dict[str, str] | None = None) -> None:
    """Record, per measure asked for now, its version and settings (merged into the file;
    measures not asked for keep their entry); ``modules``: per user measure, the
    ``measure_modules`` entry that registers it (key ``module``: what `sweep measure` imports
    when the measure is named again without it). Not a result: rewritten atomically."""
    sel = read_selection(sweep_dir)
    sel.update({n: {"version": v, "settings": dict(st)} for n, (v, st) in asked.items()})
    for n, m in (modules or {}).items():
        sel[n]["module"] = m
    store(sweep_dir).write_text(SELECTION, json.dumps(sel, indent=1, sort_keys=True))


class MeasureFormatError(RuntimeError):
    """A measure file of a format this release cannot read."""


def read_values(sweep_dir, names: list[str] | None = None, points: bool = False) -> pa.Table:
    """Every readable value file (rows in MEASURE_SCHEMA order of columns; ``points`` kept only
    if asked). Truncated or foreign files, and files with a column that does not cast to
    MEASURE_SCHEMA's type (``read_value_file``), are skipped with a warning naming them;
    missing newer columns are null; a newer format raises MeasureFormatError naming it."""
    import warnings

    st = store(sweep_dir)
    cols = COLUMNS + (["points"] if points else [])
    schema = pa.schema([MEASURE_SCHEMA.field(c) for c in cols])
    rels = [f"{MEASURES}/{e.name}" for e in st.list(MEASURES, ".parquet")
            if parse_name(e.name) is not None and (names is None or parse_name(e.name)[1] in names)]
    if not rels:
        return schema.empty_table()
    try:  # all at once (threads in C++); any bad file: file by file, below
        import pyarrow.dataset as pads
        import pyarrow.fs as pafs

        data = pads.FileSystemDataset.from_paths(
            [st.path(r) for r in rels], schema=MEASURE_SCHEMA, format=pads.ParquetFileFormat(),
            filesystem=st.fs if st.fs is not None else pafs.LocalFileSystem())
        table = data.to_table(columns=cols).cast(schema)
        # (the scan opened every file: their schemas are at hand) a file with a column of
        # another type, even one not read here, or of another format: judged file by file
        if not any(drifted(f.physical_schema, MEASURE_SCHEMA)
                   or _format(f.physical_schema) > MEASURE_FORMAT for f in data.get_fragments()):
            return table
    except Exception:
        pass
    parts = []
    for rel in rels:
        try:
            t = read_value_file(st, rel, cols)
        except MeasureFormatError:
            raise
        except Exception as err:  # truncated, not Parquet, a column that does not cast:
            # skipped (evaluated again if asked)
            warnings.warn(f"skipping {st.uri(rel)} ({type(err).__name__}: {err})", stacklevel=2)
            continue
        for c in cols:
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(t.num_rows, schema.field(c).type))
        parts.append(t.select(cols).replace_schema_metadata(None))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _format(file_schema: pa.Schema) -> int:
    return int((file_schema.metadata or {}).get(b"sensitivity_sweep_measure_format", b"1"))


def read_value_file(st, rel: str, columns: list[str]) -> pa.Table:
    """The ``columns`` a value file holds (of those asked for), in MEASURE_SCHEMA's types. The
    file is judged by every column (``workers.results.conform``): one of another type is read and cast
    even if not asked for. Raises MeasureFormatError for a newer format, CastError for a column
    that does not cast, and the reader's error for a truncated or foreign file."""
    pf = st.parquet_file(rel)
    if _format(pf.schema_arrow) > MEASURE_FORMAT:
        raise MeasureFormatError(
            f"{st.uri(rel)}: measure file format {_format(pf.schema_arrow)}; this release reads "
            f"up to {MEASURE_FORMAT}: upgrade sensitivity-sweep to read this sweep")
    have = [c for c in columns if c in pf.schema_arrow.names]
    extra = [c for c in drifted(pf.schema_arrow, MEASURE_SCHEMA) if c not in have]
    t = conform(pf.read(columns=have + extra, use_threads=False), MEASURE_SCHEMA, st.uri(rel))
    return t.drop_columns(extra) if extra else t
