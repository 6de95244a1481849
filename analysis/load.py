"""Sweep results as pandas DataFrames.

``load_results(sweep_dir)``: one row per trial with a valid result file (summary columns).
``load_points(sweep_dir)``: one row per (trial, split, point): the per-point Jacobian norm,
cross-entropy and correctness. Unreadable files are skipped with a warning (``sweep status``
lists them; launching the sweep again re-runs them).
"""

from __future__ import annotations

import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workers.results import (
    PAIRS_FILE, POINT_FIELDS, SUMMARY_COLUMNS, TRIALS, ResultError, read_result, result_ids,
)
from workers.storage import store


def _tables(sweep_dir, columns: list[str]):
    st = store(sweep_dir)
    if not st.is_dir(TRIALS):
        raise FileNotFoundError(f"{sweep_dir}: not a sweep directory (no trials/ inside)")
    for tid in result_ids(st):
        try:
            yield read_result(st, tid, columns=columns)
        except ResultError as e:
            warnings.warn(f"skipping {e}", stacklevel=3)


def load_results(sweep_dir, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per trial; ``columns`` selects summary columns (default: all)."""
    cols = list(columns) if columns else list(SUMMARY_COLUMNS)
    unknown = [c for c in cols if c not in SUMMARY_COLUMNS]
    if unknown:
        raise ValueError(f"columns: unknown {unknown}; allowed: {', '.join(SUMMARY_COLUMNS)}")
    tables = list(_tables(sweep_dir, cols))
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    return pa.concat_tables(tables).to_pandas()


def load_points(sweep_dir) -> pd.DataFrame:
    """One row per (trial, split, point): trial_id, split, index, label, jacobian_norm, loss,
    correct, transitions (NaN where a metric was not measured at that point)."""
    parts = []
    for t in _tables(sweep_dir, ["trial_id", "points"]):
        pts = t.column("points").combine_chunks()
        flat = pc.list_flatten(pts)
        n = len(flat)
        cols = {"trial_id": pa.array([t.column("trial_id")[0].as_py()] * n, pa.string())}
        for field in flat.type:
            cols[field.name] = pc.struct_field(flat, field.name)
        parts.append(pa.table(cols))
    names = ["trial_id"] + POINT_FIELDS
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in names})
    return pa.concat_tables(parts).to_pandas()


def _load_extra(sweep_dir, kind: str) -> pd.DataFrame:
    """Extra tables of the trials that have a valid result (others are incomplete re-runs)."""
    from workers.results import EXTRA_SCHEMAS, extra_file, valid_trial_ids

    schema = EXTRA_SCHEMAS[kind]
    st = store(sweep_dir)
    present = {e.name[: -len(".parquet")] for e in st.list(kind, ".parquet")}
    parts = []
    for tid in sorted(set(valid_trial_ids(st)) & present):
        parts.append(st.read_parquet(extra_file(kind, tid), schema=schema))
    if not parts:
        return schema.empty_table().to_pandas()
    return pa.concat_tables(parts).to_pandas()


def load_curves(sweep_dir) -> pd.DataFrame:
    """Ellipse profiles (Fig. 2): one row per (trial, ellipse, phase, angle) with the Jacobian
    norm, the exact transitions on the k-gon edge from this angle to the next, and the density
    (transitions per radian). Empty unless the sweep ran with ``metrics.ellipse_k`` > 0."""
    return _load_extra(sweep_dir, "curves")


def load_grids(sweep_dir) -> pd.DataFrame:
    """Boundary maps (Fig. 3): one row per (trial, phase) with the flattened n x n last-hidden-
    layer boundary mask and predicted classes. Empty unless ``metrics.boundary_grid`` > 0."""
    return _load_extra(sweep_dir, "grids")


PAIR_METRICS = ["status", "train_acc", "test_acc", "gen_gap", "jacobian_norm_test",
                "transitions_test"]


def load_pairs(sweep_dir, columns: list[str] | None = None) -> pd.DataFrame:
    """Fig. 4's pairs of a sweep planned with ``plan.factors``: one row per pair with pair_id,
    factor, value_a, value_b, trial_a, trial_b and, for each of ``columns`` (summary columns;
    default PAIR_METRICS), ``<column>_a`` and ``<column>_b`` from the two trials' results (NaN
    where a trial has no result yet)."""
    st = store(sweep_dir)
    if not st.is_file(PAIRS_FILE):
        raise FileNotFoundError(f"{sweep_dir}: no {PAIRS_FILE} (plan the sweep with plan.factors)")
    pairs = st.read_parquet(PAIRS_FILE).to_pandas()
    cols = list(columns or PAIR_METRICS)
    res = load_results(sweep_dir, columns=["trial_id"] + cols).set_index("trial_id")
    for side in ("a", "b"):
        part = res.reindex(pairs[f"trial_{side}"])
        for c in cols:
            pairs[f"{c}_{side}"] = part[c].to_numpy()
    return pairs
