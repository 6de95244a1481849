"""Sweep results as pandas DataFrames.

``load_results(sweep_dir)``: one row per trial with a valid result file (summary columns), and
one column per measure from the measures table (``workers.results.measure_table``).
``load_measures(sweep_dir)``: the measures table in long form (every version and setting,
seconds, errors; per-point values on request).
``load_points(sweep_dir)``: one row per (trial, split, point): the per-point Jacobian norm,
cross-entropy, correctness and transitions of the trial's record. Unreadable files are skipped with a warning (``sweep status``
lists them; launching the sweep again re-runs them).

Both read the per-trial files, or, after ``sweep compact`` (``workers.results.compact``), the compacted
copy for every trial whose file is unchanged since, plus the files that are new or changed. The
frame is the same either way: rows sorted by trial_id, the same columns and dtypes.
``filters`` (a pyarrow DNF list such as ``[("dataset", "=", "digits"), ("width", ">=", 64)]``,
or a ``pyarrow.compute.Expression``) select rows, and are pushed down into the read of the
compacted copy (whole ``dataset`` partitions are skipped).
"""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis import args as argcheck
from workers.results.compact import (
    POINTS_SCHEMA, RESULTS_SCHEMA, Match, flatten_points, read_manifest, read_trials,
)
from workers.results.layout import (
    CURVES, GRIDS, PAIRS_FILE, RESULT_SUFFIX, TRIALS, trial_file, trial_id_of,
)
from workers.results.record import POINT_FIELDS, SUMMARY_COLUMNS
from workers.results.storage import Store
from workers.results.sweep_dir import SweepDir

POINT_COLUMNS = ["trial_id"] + POINT_FIELDS
# what load_points filters may name: its columns and the trial's dataset
_POINTS_READ_SCHEMA = POINTS_SCHEMA.append(pa.field("dataset", pa.string()))


def _expression(filters, kind: str) -> pc.Expression | None:
    """``filters`` (DNF list or Expression) as an Expression, checked against the columns."""
    if filters is None or (isinstance(filters, (list, tuple)) and not filters):
        return None
    schema = RESULTS_SCHEMA if kind == "results" else _POINTS_READ_SCHEMA
    if isinstance(filters, pc.Expression):
        expr = filters
    else:
        argcheck.dnf_filters(filters)
        terms = [t for conj in filters for t in conj] if isinstance(filters[0], list) else filters
        unknown = sorted({t[0] for t in terms if t[0] not in schema.names})
        if unknown:
            raise ValueError(f"filters: unknown columns {unknown}; allowed: "
                             f"{', '.join(schema.names)}")
        expr = pq.filters_to_expression(filters)
    try:
        schema.empty_table().filter(expr)  # binds it: unknown fields, mismatched types
    except (pa.ArrowException, TypeError) as e:
        raise ValueError(f"filters: {e}") from None
    return expr


def _from_trials(st: Store, kind: str, tids: list[str], needed: list[str], expr,
                 chunk: int = 1024) -> list[pa.Table]:
    """Rows of per-trial files (``needed`` columns, trial_id among them), filtered file by file
    (so that a selective filter keeps memory small); invalid files skipped with a warning."""
    if kind == "results":
        read = SUMMARY_COLUMNS if expr is not None else needed
    else:
        read = ["trial_id", "dataset", "points"]
    out, tables = [], []

    def settle():
        if tables:
            out.append(pa.concat_tables(tables))
            tables.clear()

    for _, t, error in read_trials(st, tids, read):
        if error is not None:
            warnings.warn(f"skipping {error}", stacklevel=4)
            continue
        t = t.replace_schema_metadata(None)
        if kind == "points":  # flattened and filtered file by file: memory follows the result
            t = flatten_points(t, ["dataset"])
        if expr is not None:
            t = t.filter(expr)
        if t.num_rows:
            tables.append(t.select(needed))
        if len(tables) >= chunk:
            settle()
    settle()
    return out


def _from_compacted(st: Store, kind: str, files, needed: list[str], expr, drop: set[str]):
    """Rows of the compacted copy's data files, without the trials in ``drop``."""
    files = [f for f in files if f.kind == kind]
    if not files:
        return []
    schema = RESULTS_SCHEMA if kind == "results" else _POINTS_READ_SCHEMA
    ds_field = pc.field("dataset")
    parts = [ds_field.is_null() if f.dataset is None else ds_field == f.dataset for f in files]
    data = pads.FileSystemDataset.from_paths(
        [st.path(f.path) for f in files], schema=schema, format=pads.ParquetFileFormat(),
        filesystem=st.fs if st.fs is not None else pafs.LocalFileSystem(), partitions=parts)
    if drop:
        gone = ~pc.field("trial_id").isin(pa.array(sorted(drop), pa.string()))
        expr = gone if expr is None else expr & gone
    return [data.to_table(columns=needed, filter=expr)]


def _read(sweep_dir, kind: str, columns: list[str], expr,
          trial_ids=None) -> pa.Table | None:
    """Rows of ``columns`` (sorted by trial_id) from whichever form the sweep is in."""
    st = SweepDir.of(sweep_dir)
    if not st.has_trials:
        raise FileNotFoundError(f"{sweep_dir}: not a sweep directory (no {TRIALS}/ inside)")
    needed = list(dict.fromkeys(list(columns) + ["trial_id"]))
    schema = RESULTS_SCHEMA if kind == "results" else POINTS_SCHEMA
    target = pa.schema([schema.field(c) for c in needed])
    for attempt in range(3):
        try:
            man = read_manifest(st)
            entries = st.list(TRIALS, RESULT_SUFFIX)
            match = man.match(entries) if man is not None else None
            parts = [] if man is None else _from_compacted(st, kind, man.files, needed, expr,
                                                           match.stale)
        except (OSError, ValueError, pa.ArrowException) as err:
            if attempt < 2:
                continue  # a compaction replaced the files under us: read its manifest again
            warnings.warn(f"compacted copy unreadable ({type(err).__name__}: {err}); reading "
                          "the per-trial files", stacklevel=3)
            man = None
            entries = st.list(TRIALS, RESULT_SUFFIX)
        if man is None:
            match, parts = Match(new=[trial_id_of(e.name) for e in entries]), []
        for error in match.invalid.values():
            warnings.warn(f"skipping {error}", stacklevel=3)
        new = match.new if trial_ids is None else [t for t in match.new if t in trial_ids]
        parts += _from_trials(st, kind, new, needed, expr)
        break
    parts = [p.cast(target) for p in parts if p.num_rows]
    if not parts:
        return None
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return table.sort_by("trial_id").select(list(columns))  # stable: points keep their order


def _empty(schema: pa.Schema, columns: list[str]) -> pd.DataFrame:
    """No rows, and the dtypes the schema gives a full frame (int64, float64, bool; object for
    strings): a filter that matches nothing does not turn numbers into objects. (As pandas does,
    an integer column that holds a null in a full frame comes out float64.)"""
    return schema.empty_table().select(columns).to_pandas()


def load_results(sweep_dir, columns: list[str] | None = None, filters=None) -> pd.DataFrame:
    """One row per trial, sorted by trial_id, with one column per measure.

    The trial's own columns (summary columns) come from its result file; each measure's column
    from the measures table (``load_measures``): for every (trial, measure) the value of the
    measure's current version, the latest evaluated if there are several (other settings), or
    else the latest of any version; null where it raised (its reason is in ``load_measures``)
    and NaN where it was never evaluated. A column whose values were computed under several
    versions or settings (a ``sweep measure`` at new settings that did not finish) is warned
    about, one line per measure naming the counts and the command that makes them one; it is
    in ``df.attrs["mixed_settings"]`` (measure -> (version, settings JSON, values, whether the
    settings asked for last), ...; a kind of 0 values: what was asked for last, of which the
    column holds none). A column whose values are all of versions older than this release
    computes is warned about too (``attrs["outdated"]``). Result files written before the
    measures table
    (schema 2) keep their built-in measure columns where the table has no value. ``columns``
    selects summary columns and measures (default: all summary columns and every measure
    present); ``filters`` selects rows by summary columns (a pyarrow DNF list or Expression)."""
    from workers.measures import REGISTRY

    columns = argcheck.names(columns, "columns")
    overlaid = set(REGISTRY) | {c for cols_of in _info_columns().values() for c, _ in cols_of}
    if columns and all(c in SUMMARY_COLUMNS and c not in overlaid for c in columns):
        wide = _measure_wide(None)  # only trial columns asked for: the table is not read
    else:
        wide = _measure_wide(sweep_dir)
    measured = [m for m in wide.columns if "\0" not in m]
    cols = list(columns) if columns else list(SUMMARY_COLUMNS) + [
        m for m in measured if m not in SUMMARY_COLUMNS]
    known = set(SUMMARY_COLUMNS) | set(REGISTRY) | set(measured)
    unknown = [c for c in cols if c not in known]
    if unknown:
        raise ValueError(f"columns: unknown {unknown}; allowed: summary columns "
                         f"({', '.join(SUMMARY_COLUMNS)}) and measures ({', '.join(sorted(set(REGISTRY) | set(measured)))})")
    summary = [c for c in cols if c in SUMMARY_COLUMNS]
    if "trial_id" not in summary:  # (what the measures' values are joined on; dropped below)
        summary = ["trial_id", *summary]
    table = _read(sweep_dir, "results", summary, _expression(filters, "results"))
    if table is None:
        df = _empty(RESULTS_SCHEMA, summary)
    else:
        df = _one_meaning(table.to_pandas())
    ids = table.column("trial_id").to_pandas() if table is not None else pd.Series([], dtype=object)
    for m in [c for c in cols if c in wide.columns or c not in SUMMARY_COLUMNS]:
        if "\0" in m:
            continue
        if m not in measured:
            if m not in df.columns:
                df[m] = float("nan")
            continue
        got = wide[m].reindex(ids.to_numpy())
        have = wide[m + "\0has"].reindex(ids.to_numpy()).fillna(False).to_numpy(dtype=bool)
        if m in df.columns:  # a schema-2 built-in column: the table's value wins where present
            df[m] = df[m].astype("float64").where(~have, got.to_numpy())
        else:
            df[m] = got.to_numpy(dtype="float64")
    for m, cols_of in _info_columns().items():  # how a built-in value was computed, with it
        if m not in measured:
            continue
        have = wide[m + "\0has"].reindex(ids.to_numpy()).fillna(False).to_numpy(dtype=bool)
        info = wide[m + "\0info"].reindex(ids.to_numpy()).to_numpy()
        for col, key in cols_of:
            if col in df.columns and have.any():
                vals = [json.loads(i).get(key) if h and isinstance(i, str) else None
                        for i, h in zip(info, have)]
                df[col] = pd.Series(vals, index=df.index, dtype=object).where(have, df[col])
                if not pa.types.is_string(RESULTS_SCHEMA.field(col).type):
                    df[col] = pd.to_numeric(df[col])
    df = df[cols]
    df.attrs["measures"] = [c for c in cols if c in measured or c in REGISTRY]
    mixed = {m: k for m, k in wide.attrs.get("mixed", {}).items() if m in cols}
    df.attrs["mixed_settings"] = mixed  # measure -> ((version, settings, values, selected), ...)
    for m, kinds in mixed.items():
        warnings.warn(mixed_note(m, kinds, sweep_dir), stacklevel=2)
    outdated = {m: v for m, v in wide.attrs.get("outdated", {}).items() if m in cols}
    df.attrs["outdated"] = outdated  # measure -> (stored versions, the registry's)
    if outdated:
        warnings.warn(outdated_note(outdated, sweep_dir), stacklevel=2)
    return df


def _info_columns() -> dict[str, list[tuple[str, str]]]:
    """The record's columns that say how a built-in measure's value was computed, as its
    registration declares them (``register(record=...)``): measure -> [(column, info key)]."""
    from workers.measures import REGISTRY

    return {name: list(m.record.items()) for name, m in REGISTRY.items() if m.record}


def _measure_wide(sweep_dir) -> pd.DataFrame:
    """trial_id -> one value per measure (see load_results), plus "<measure>\\0has" flags and
    "<measure>\\0info"; empty for ``sweep_dir`` None."""
    from workers.measures import REGISTRY, reserved_names
    from workers.results.measure_table import canonical_settings, read_selection, read_values

    if sweep_dir is None:
        return pd.DataFrame(index=pd.Index([], name="trial_id"))
    t = read_values(sweep_dir).to_pandas()
    clash = sorted(set(t["measure"]) & reserved_names()) if not t.empty else []
    if clash:  # stored before such names were refused: never over a result column
        warnings.warn(f"{sweep_dir}: stored values of measures named {clash} are left out of "
                      "load_results (a column of the results has that name); load_measures "
                      "has them", stacklevel=3)
        t = t[~t["measure"].isin(clash)]
    if t.empty:
        return pd.DataFrame(index=pd.Index([], name="trial_id"))
    sel = read_selection(sweep_dir)
    asked = {n: (e["version"], canonical_settings(e["settings"])) for n, e in sel.items()}
    t["selected"] = [asked.get(m) == (v, st) for m, v, st in
                     zip(t["measure"], t["version"], t["settings"])]
    current = t["measure"].map(lambda n: REGISTRY[n].version if n in REGISTRY else -1)
    t["current"] = t["version"] == current
    t = t.sort_values(["selected", "current", "created"]).groupby(["trial_id", "measure"]).tail(1)
    # measure -> the kinds of value its column holds (version, settings, values, asked for
    # last), when more than one, or when none is what was asked for last (a kind of 0 values
    # then stands for that); measure -> (stored versions, the registry's) where all are older
    mixed, outdated = {}, {}
    counted = t.groupby(["measure", "version", "settings"]).agg(
        n=("trial_id", "size"), selected=("selected", "first"))  # (one pass over the values)
    by_measure: dict[str, list] = {}
    for (m, v, st), r in counted.iterrows():
        by_measure.setdefault(m, []).append((int(v), st, int(r.n), bool(r.selected)))
    for m, kinds in by_measure.items():
        if m in asked and not any(k[3] for k in kinds):
            kinds.append((int(asked[m][0]), asked[m][1], 0, True))
        if len(kinds) > 1:
            mixed[m] = tuple(sorted(kinds, key=lambda k: (not k[3], -k[2])))
        if m in REGISTRY and all(k[0] < REGISTRY[m].version for k in kinds if k[2]):
            outdated[m] = (tuple(sorted({k[0] for k in kinds if k[2]})), REGISTRY[m].version)
    wide = t.pivot(index="trial_id", columns="measure", values="value").astype("float64")
    has = t.assign(has=True).pivot(index="trial_id", columns="measure", values="has")
    info = t.pivot(index="trial_id", columns="measure", values="info")
    for m in list(wide.columns):
        wide[m + "\0has"] = has[m].notna()
        wide[m + "\0info"] = info[m]
    wide.attrs["mixed"], wide.attrs["outdated"] = mixed, outdated
    return wide


def outdated_note(outdated: dict, sweep_dir=None) -> str:
    """One sentence: the measures whose stored values are all of versions older than this
    release computes (``outdated``: measure -> (stored versions, current version), as
    ``load_results``' ``attrs["outdated"]`` holds them), and the command that adds the current
    ones (the stored ones are kept)."""
    from workers.results.commands import sweep_command

    names = sorted(outdated)
    each = ", ".join(f"{m} (version {'/'.join(map(str, outdated[m][0]))}; now "
                     f"{outdated[m][1]})" for m in names)
    fix = (f"; `{sweep_command('measure', sweep_dir, f'measures=[{chr(44).join(names)}]')}` "
           "adds the current ones" if sweep_dir is not None else "")
    return (f"values of older versions than this release computes: {each}{fix} (the stored "
            "ones are kept; the README says what changed)")


def mixed_note(measure: str, kinds, sweep_dir=None) -> str:
    """One sentence: the values of ``measure``'s column were computed under several versions
    or settings (``kinds``: (version, settings JSON, values, selected) as ``load_results``'
    ``attrs["mixed_settings"]`` holds them), and how to make them one (``sweep measure``)."""
    from workers.results.commands import sweep_command

    versions = {k[0] for k in kinds}
    settings_differ = len({k[1] for k in kinds}) > 1

    def what(k) -> str:
        settings = json.loads(k[1])
        same = [json.loads(o[1]) for o in kinds]
        shown = {key: v for key, v in settings.items()  # the settings that differ among kinds
                 if any(o.get(key) != v for o in same)} or settings
        text = ", ".join(f"{key}={v}" for key, v in sorted(shown.items())) or "no settings"
        return ", ".join(([f"version {k[0]}"] if len(versions) > 1 else [])
                         + ([text] if settings_differ else []))

    sel = [k for k in kinds if k[3]]
    total = sum(k[2] for k in kinds)
    fix = ""
    if sel and sweep_dir is not None:  # (every setting named: the sweep's own may differ)
        keys = [f"measure_settings.{measure}.{key}="
                + (v if isinstance(v, str) else json.dumps(v))
                for key, v in sorted(json.loads(sel[0][1]).items())]
        fix = (f"; `{sweep_command('measure', sweep_dir, f'measures=[{measure}]', *keys)}` "
               f"evaluates the other {total - sel[0][2]} under the settings asked for last")
    kind = ("versions or settings" if len(versions) > 1 and settings_differ
            else "versions" if len(versions) > 1 else "settings")
    if sel and sel[0][2] == 0:  # (none under what was asked for last)
        held = [k for k in kinds if not k[3]]
        under = (what(held[0]) if len(held) == 1 else
                 "; ".join(f"{k[2]} under {what(k)}" for k in held))
        return (f"{measure}: its {total} values were computed under {under}, none under the "
                f"{kind} asked for last ({what(sel[0])}){fix} (load_measures has each value's "
                "settings)")
    parts = [f"{k[2]} under {what(k)}" + (" (the settings asked for last)" if k[3] else "")
             for k in kinds]
    return (f"{measure}: its {total} values were computed under {len(kinds)} different "
            f"{kind} ({'; '.join(parts)}), and the column mixes them{fix} (load_measures has "
            "each value's settings)")


def load_measures(sweep_dir, measures: list[str] | None = None,
                  points: bool = False) -> pd.DataFrame:
    """The measures table in long form: one row per stored value, with trial_id, measure,
    version, settings (JSON), value (null if it raised), seconds, error, info (JSON),
    hostname, created (unix time); with ``points`` the per-point values as a list of (split,
    index, value). ``measures`` selects by name. Every version and setting is kept: choose
    with pandas (``load_results`` picks one value per trial and measure)."""
    from workers.results.measure_table import read_values

    return read_values(sweep_dir, names=argcheck.names(measures, "measures"),
                       points=points).to_pandas()


def _one_meaning(df: pd.DataFrame) -> pd.DataFrame:
    """Files written before each column had one meaning, read with today's: ``batch_size`` of
    full-batch L-BFGS is null (older files held the train-set size), ``train_size`` and
    ``test_size`` are numbers of points (older failed records held null for a whole split).
    The files themselves are never rewritten."""
    from workers.data import DATASETS

    if "optimizer" in df and "batch_size" in df and (df["optimizer"] == "lbfgs").any():
        df["batch_size"] = df["batch_size"].astype("float64").where(df["optimizer"] != "lbfgs")
    for col in ("train_size", "test_size"):
        if col in df and "dataset" in df and df[col].isna().any():
            whole = df["dataset"].map(lambda n: getattr(DATASETS.get(n), col, None))
            df[col] = df[col].fillna(whole.astype("float64"))
            if df[col].notna().all():
                df[col] = df[col].astype("int64")
    return df


def load_points(sweep_dir, filters=None, trial_ids=None) -> pd.DataFrame:
    """One row per (trial, split, point): trial_id, split, index, label, jacobian_norm, loss,
    correct, transitions (NaN where a metric was not measured at that point); sorted by
    trial_id, then in the trial's point order. ``filters`` may name these columns and the
    trial's ``dataset``. ``trial_ids`` restricts the rows to those trials and, unlike a
    trial_id filter, opens only their per-trial files; to select by other summary columns:
    ``load_points(d, trial_ids=load_results(d, ["trial_id"], filters=f).trial_id)``."""
    expr = _expression(filters, "points")
    if trial_ids is not None:  # only these trials' files are opened (per-trial form)
        trial_ids = set(argcheck.names(trial_ids, "trial_ids"))
        among = pc.field("trial_id").isin(pa.array(sorted(trial_ids), pa.string()))
        expr = among if expr is None else expr & among
    table = _read(sweep_dir, "points", POINT_COLUMNS, expr, trial_ids)
    if table is None:
        return _empty(POINTS_SCHEMA, POINT_COLUMNS)
    return table.to_pandas()


def result_files(sweep_dir) -> list[str]:
    """The per-trial result files that are whole (paths, or URIs for an object store), sorted by
    trial id: what to hand to another reader (DuckDB, polars, Spark) on a live sweep. A stray,
    truncated or half-written file in ``trials/`` is left out (a file whose size and mtime match
    the drivers' journal is taken from it unread, every other one is checked), and so is one
    with a column that does not cast to the schema's type (``workers.results.conform``), so one bad file
    does not fail the whole query as ``read_parquet('trials/*.parquet')`` does. A file with a
    column of another type that casts (int32, dictionary...) is a valid result and is listed:
    the other reader casts it (DuckDB 2.0 does)."""
    d = SweepDir.of(sweep_dir)
    statuses, _ = d.statuses()
    return [d.locate(trial_file(tid)) for tid in sorted(statuses)]


def measure_files(sweep_dir) -> list[str]:
    """The measures table's value files that are whole (paths, or URIs for an object store),
    sorted: what to hand to another reader (DuckDB, polars) for the long form that
    ``load_measures`` gives. A stray file, one that is truncated (its Parquet footer does not
    read), or one with a column that does not cast to the table's type (as ``load_measures``
    judges it) is left out; a column of another type that casts (int32, dictionary...) is kept,
    for the other reader to cast (DuckDB 2.0 does)."""
    from workers.results.layout import MEASURES
    from workers.results.measure_table import MeasureFormatError, read_value_file

    d = SweepDir.of(sweep_dir)
    out = []
    for name, _ in d.measure_names():
        rel = f"{MEASURES}/{name}"
        try:
            read_value_file(d, rel, [])  # the footer, and any column of another type
        except MeasureFormatError:
            raise
        except Exception:
            continue
        out.append(d.locate(rel))
    return out


def _load_extra(sweep_dir, kind: str) -> pd.DataFrame:
    """Extra tables of the trials that have a valid result (others are incomplete re-runs),
    in the kind's schema (columns of another type cast, ``workers.results.conform``; missing ones
    null); a file that does not read or cast is skipped with a warning naming it."""
    from workers.results.conform import conform
    from workers.results.record import EXTRA_SCHEMAS
    from workers.results.layout import extra_file

    schema = EXTRA_SCHEMAS[kind]
    st = SweepDir.of(sweep_dir)
    parts = []
    for tid in sorted(set(st.valid()) & st.extra_ids(kind)):
        rel = extra_file(kind, tid)
        try:
            t = conform(st.parquet_file(rel).read(use_threads=False), schema, st.uri(rel))
        except Exception as err:  # truncated, not Parquet, a column that does not cast
            warnings.warn(f"skipping {st.uri(rel)} ({type(err).__name__}: {err})", stacklevel=3)
            continue
        for f in schema:
            if f.name not in t.column_names:
                t = t.append_column(f, pa.nulls(t.num_rows, f.type))
        parts.append(t.select(schema.names))
    if not parts:
        return schema.empty_table().to_pandas()
    return pa.concat_tables(parts).to_pandas()


def load_curves(sweep_dir) -> pd.DataFrame:
    """Ellipse profiles (Fig. 2): one row per (trial, ellipse, phase, angle) with the Jacobian
    norm, the exact transitions on the k-gon edge from this angle to the next, and the density
    (transitions per radian). Empty unless the sweep ran with ``metrics.ellipse_k`` > 0."""
    return _load_extra(sweep_dir, CURVES)


def load_sharpness_curves(sweep_dir) -> pd.DataFrame:
    """Expected sharpness against KL (Neyshabur et al. 2017, Fig. 2): one row per (trial,
    alpha) with columns trial_id, alpha, kl, expected_sharpness, from the ``expected_sharpness``
    value ``load_results`` shows for each trial (the selected settings). Empty (with these
    columns) when no trial has that measure."""
    import json

    cols = ["trial_id", "alpha", "kl", "expected_sharpness"]
    wide = _measure_wide(sweep_dir)
    key = "expected_sharpness\0info"
    if key not in wide.columns:
        return pd.DataFrame({c: pd.Series(dtype="object" if c == "trial_id" else "float64")
                             for c in cols})
    rows = []
    for tid, info in wide[key].dropna().items():
        curve = json.loads(info).get("curve") if isinstance(info, str) else None
        if curve:
            rows += [(tid, a, k, e) for a, k, e in zip(curve["alpha"], curve["kl"],
                                                        curve["expected_sharpness"])]
    return pd.DataFrame(rows, columns=cols).astype({c: "float64" for c in cols[1:]})


def load_grids(sweep_dir) -> pd.DataFrame:
    """Boundary maps (Fig. 3): one row per (trial, phase) with the flattened n x n last-hidden-
    layer boundary mask and predicted classes. Empty unless ``metrics.boundary_grid`` > 0."""
    return _load_extra(sweep_dir, GRIDS)


PAIR_METRICS = ["status", "train_acc", "test_acc", "gen_gap", "jacobian_norm_test",
                "transitions_test"]


def load_pairs(sweep_dir, columns: list[str] | None = None) -> pd.DataFrame:
    """Fig. 4's pairs of a sweep planned with ``plan.factors``: one row per pair with pair_id,
    factor, value_a, value_b, trial_a, trial_b and, for each of ``columns`` (summary columns;
    default PAIR_METRICS), ``<column>_a`` and ``<column>_b`` from the two trials' results (NaN
    where a trial has no result yet)."""
    st = SweepDir.of(sweep_dir)
    if not st.is_file(PAIRS_FILE):
        raise FileNotFoundError(f"{sweep_dir}: no {PAIRS_FILE} (plan the sweep with plan.factors)")
    pairs = st.read_parquet(PAIRS_FILE).to_pandas()
    cols = list(argcheck.names(columns, "columns") or PAIR_METRICS)
    res = load_results(sweep_dir, columns=["trial_id"] + cols).set_index("trial_id")
    for side in ("a", "b"):
        part = res.reindex(pairs[f"trial_{side}"])
        for c in cols:
            pairs[f"{c}_{side}"] = part[c].to_numpy()
    return pairs
