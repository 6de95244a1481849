"""The report's ranking figure: every measure's ranking statistic with its bootstrap interval,
best at the top, baselines marked, ties shaded (Jiang et al. 2019, Table 2, and Dziugaite et
al. 2020, Fig. 1, in spirit)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import LABEL_CHARS, _pyplot, _save, row_label  # noqa: F401 (row_label: here too)
from analysis.stats.registry import REGISTRY

def ranking_figure(merged: pd.DataFrame, path: str | Path, rank_by: str,
                   baselines: Sequence[str] = ()) -> Path | None:
    """Each row of ``merged`` (``analysis.stats.merge_equivalent`` of ``ranking_table``: one
    row per group of measures that rank the trials identically, its ``measures``) with a value
    of ``rank_by``: the value (a dot) and its 95% bootstrap interval (a bar), best at the top,
    the axis annotated with the better direction; a row holding a baseline (``baselines``) is
    an orange square; rows that share a rank are shaded; the dashed line is the statistic's
    value for a measure unrelated to the gap (``Statistic.chance``). Returns the path, or None
    without a value."""
    if merged.empty or rank_by not in merged or merged[rank_by].isna().all():
        return None
    stat = REGISTRY[rank_by]
    r = merged.dropna(subset=[rank_by]).reset_index(drop=True)
    if "measures" not in r:
        r["measures"] = [(m,) for m in r["measure"]]
    key = r[rank_by] if stat.larger_is_better else -r[rank_by]
    r = r.iloc[np.argsort(-key.to_numpy(), kind="stable")].reset_index(drop=True)
    n = len(r)
    signs = r["signs"] if "signs" in r else [(s,) * len(ms) for ms, s in zip(r["measures"],
                                                                              r["sign"])]
    labels = [row_label(ms, ss) for ms, ss in zip(r["measures"], signs)]
    lines = sum(label.count("\n") + 1 for label in labels)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 1.6 + 0.22 * lines + 0.06 * n), dpi=120)
    y = np.arange(n)[::-1].astype(float)
    base = np.array([any(m in baselines for m in ms) for ms in r["measures"]])
    # shared ranks: a light band behind the tied rows
    ranks = r["rank"].to_numpy(dtype=float, na_value=np.nan) if "rank" in r else np.full(n, np.nan)
    tied = np.array([np.isfinite(k) and (ranks == k).sum() > 1 for k in ranks])
    for i in np.flatnonzero(tied):
        ax.axhspan(y[i] - 0.5, y[i] + 0.5, color="#f3e3a0", lw=0, zorder=0)
    value = r[rank_by].to_numpy(dtype=float)
    low = r[f"{rank_by}_low"].to_numpy(dtype=float)
    high = r[f"{rank_by}_high"].to_numpy(dtype=float)
    err = np.vstack([np.nan_to_num(value - low).clip(0), np.nan_to_num(high - value).clip(0)])
    for mask, style, label in ((~base, dict(fmt="o", color="C0"), "measure"),
                               (base, dict(fmt="s", color="C1"),
                                "baseline (" + ", ".join(baselines) + ")")):
        if mask.any():
            ax.errorbar(value[mask], y[mask], xerr=err[:, mask], ms=5, capsize=2, lw=1.2,
                        label=label, zorder=3, **style)
    ax.axvline(stat.chance, color="grey", lw=0.8, ls="--", zorder=1,
               label=f"chance ({stat.chance:g})")
    if tied.any():
        ax.axhspan(np.nan, np.nan, color="#f3e3a0", label="tied rows (same value)")
    ax.set_yticks(y, labels, fontsize=8)
    for t, b in zip(ax.get_yticklabels(), base):
        if b:
            t.set_color("C1")
    ax.set_ylim(-1.6, n - 0.3)  # (a free band below the last row holds the direction)
    seen = np.concatenate([value, low[np.isfinite(low)], high[np.isfinite(high)],
                           [stat.chance]])
    lo, hi = float(np.nanmin(seen)), float(np.nanmax(seen))
    pad = 0.06 * max(hi - lo, 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{rank_by} of sign \u00d7 measure against the generalization gap "
                  f"({stat.better} is better)")
    from matplotlib.transforms import blended_transform_factory

    where = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(0.99 if stat.larger_is_better else 0.01, -1.05,
            "better \u2192" if stat.larger_is_better else "\u2190 better", transform=where,
            ha="right" if stat.larger_is_better else "left", va="center", fontsize=10,
            fontweight="bold", color="#333")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8,
              frameon=False)  # (above the axes: no point hidden under it)
    fig.tight_layout()
    return _save(fig, path, vector=True)
