"""Sweep results as pandas DataFrames.

``load_results(sweep_dir)``: one row per trial with a valid result file (summary columns).
``load_points(sweep_dir)``: one row per (trial, split, point): the per-point Jacobian norm,
cross-entropy and correctness. Unreadable files are skipped with a warning (``sweep status``
lists them; launching the sweep again re-runs them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workers.results import SUMMARY_COLUMNS, ResultError, read_trial, trials_dir


def _tables(sweep_dir: str | Path, columns: list[str]):
    d = trials_dir(sweep_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: not a sweep directory (no trials/ inside)")
    for p in sorted(d.glob("*.parquet")):
        try:
            yield read_trial(p, columns=columns)
        except ResultError as e:
            warnings.warn(f"skipping {e}", stacklevel=3)


def load_results(sweep_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per trial; ``columns`` selects summary columns (default: all)."""
    cols = list(columns) if columns else list(SUMMARY_COLUMNS)
    unknown = [c for c in cols if c not in SUMMARY_COLUMNS]
    if unknown:
        raise ValueError(f"columns: unknown {unknown}; allowed: {', '.join(SUMMARY_COLUMNS)}")
    tables = list(_tables(sweep_dir, cols))
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    return pa.concat_tables(tables).to_pandas()


def load_points(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per (trial, split, point): trial_id, split, index, label, jacobian_norm, loss,
    correct."""
    parts = []
    for t in _tables(sweep_dir, ["trial_id", "points"]):
        pts = t.column("points").combine_chunks()
        flat = pc.list_flatten(pts)
        n = len(flat)
        cols = {"trial_id": pa.array([t.column("trial_id")[0].as_py()] * n, pa.string())}
        for field in flat.type:
            cols[field.name] = pc.struct_field(flat, field.name)
        parts.append(pa.table(cols))
    names = ["trial_id", "split", "index", "label", "jacobian_norm", "loss", "correct"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in names})
    return pa.concat_tables(parts).to_pandas()
