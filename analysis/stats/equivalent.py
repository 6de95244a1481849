"""Measures that rank the networks identically: one is a monotone function of another over the
rows the statistics read (``l2_dist`` = sqrt(``fro_dist``); ``inverse_margin`` = 1 /
``margin_gamma10``^2 once the margin's sign -1 is applied; at a fixed depth d,
``log_sum_of_spec`` = log d + ``log_prod_of_spec`` / d). Detected from the data, never from a
list of names: ``equivalent_measures`` groups them, ``merge_equivalent`` makes one row of each
group in a ranking (``analysis.stats.ranking_table``) so that the report's ranking does not count
one finding several times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats.configs import _configs, _numeric, _prepare, measure_sign
from analysis.stats.registry import REGISTRY


def _dense(x: np.ndarray) -> np.ndarray:
    """Dense ranks 0..k-1 of ``x`` (no NaN; +-inf rank last / first, equal values equal)."""
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64)


def rank_key(df: pd.DataFrame, measure: str, target: str = "gen_gap",
             hyperparameters: Sequence[str] | None = None,
             sign: int | None = None) -> tuple[bytes, ...]:
    """What every rank statistic of ``sign * measure`` against ``target`` reads of the measure,
    as a tuple of bytes: the rows where measure and target are both present, the dense ranks (ties equal)
    of ``sign * measure`` over those trials (Kendall's tau, Spearman's rho, the sign-errors'
    pairs of runs) and of its seed means over the configurations
    (``analysis.stats.configs._configs``: the granulated Kendall, the conditional MI). Two
    measures with the same key have the same value of each of these statistics on every group
    of rows; Pearson's r, which is not a rank statistic, may differ. ``sign``: default
    ``measure_sign(measure)``."""
    s = measure_sign(measure) if sign is None else int(sign)
    mu = _numeric(df, measure)
    present = ~(np.isnan(mu) | np.isnan(_numeric(df, target)))
    flipped = df.assign(**{measure: s * mu}) if s < 0 else df
    p = _prepare(flipped, measure, target, hyperparameters)
    cf = _configs(p)
    parts = (np.packbits(present), _dense(p.mu), np.asarray(cf.codes, dtype=np.int64).ravel(),
             _dense(cf.mu))
    return tuple(np.ascontiguousarray(a).tobytes() for a in parts)


def equivalent_measures(df: pd.DataFrame, measures: Sequence[str], target: str = "gen_gap",
                        hyperparameters: Sequence[str] | None = None,
                        signs: Mapping[str, int] | None = None) -> list[tuple[str, ...]]:
    """The measures of ``measures`` (columns of ``df``) that rank the trials identically
    against ``target``, in groups of two or more, each in the order of ``measures``, the groups
    in the order of their first member.

    Two measures are equivalent when, with their signs applied (``signs``, default
    ``measure_sign``: -1 for a margin), they are present on the same rows (with the target),
    their values over those trials have the same dense ranks (Spearman's rho exactly 1 with the
    same ties) and so have their seed means over the configurations (``rank_key``): one is
    then an increasing function of the other on these data, and every rank statistic of the
    statistics table is the same for both. Two measures ordered exactly against each other after
    their signs (rho -1) are not merged: their statistics are opposite. A measure absent from
    ``df`` or without a row is left out. ``hyperparameters``: as ``statistics_table``'s (default
    ``hyperparameter_columns(df, exclude=measures + [target])``)."""
    from analysis.stats.configs import hyperparameter_columns

    from analysis import args as argcheck

    measures = argcheck.names(measures, "measures") or []
    hyperparameters = argcheck.names(hyperparameters, "hyperparameters")
    present = [m for m in measures if m in df.columns]
    if hyperparameters is None:
        hyperparameters = hyperparameter_columns(df, exclude=[*present, target])
    groups: dict[tuple[bytes, ...], list[str]] = {}
    for m in present:
        if not (~np.isnan(_numeric(df, m))).any():
            continue
        sign = (signs or {}).get(m)
        groups.setdefault(rank_key(df, m, target, hyperparameters, sign), []).append(m)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def _same_numbers(a: pd.Series, b: pd.Series, columns: Sequence[str]) -> bool:
    x = a[list(columns)].to_numpy(dtype=float)
    y = b[list(columns)].to_numpy(dtype=float)
    return bool(np.all((x == y) | (np.isnan(x) & np.isnan(y)) | (np.abs(x - y) <= 1e-12)))


def merge_equivalent(ranking: pd.DataFrame, groups: Sequence[Sequence[str]],
                     statistics: Sequence[str] | None = None,
                     columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``ranking`` (``ranking_table``'s rows, one per measure) with each group of equivalent
    measures (``equivalent_measures``) as one row: the row of the group's first measure in the
    ranking's order, its ``measures`` column the tuple of every member (a single measure's own
    name elsewhere) and ``signs`` their signs (where the ranking has a ``sign``). A member whose numbers in the ranking (value and interval of each of
    ``statistics``, default the summary statistics, ``Statistic.summary``: the rank statistics
    the report shows; Pearson's r differs between them) differ from the first's is not
    merged (a bootstrap replicate can order seed means differently even where the full data
    do not); a member absent from the ranking is ignored. The order of the rows is kept.
    ``columns``: the numbers to compare instead (any table with a ``measure`` column, such as
    ``analysis.selection.model_selection``'s); ``n_trials`` is compared too where present."""
    out = ranking.copy()
    out["measures"] = [(m,) for m in out["measure"]]
    if "sign" in out.columns:
        out["signs"] = [(int(s),) for s in out["sign"]]
    if out.empty:
        return out
    if columns is None:
        summary = [s.name for s in REGISTRY.values() if s.summary]
        stats = [s for s in (statistics or summary) if s in out.columns]
        columns = [f"{s}{x}" for s in stats for x in ("", "_low", "_high")
                   if f"{s}{x}" in out.columns]
    columns = [*columns, *(["n_trials"] if "n_trials" in out.columns else [])]
    where = {m: i for i, m in enumerate(out["measure"])}
    drop = set()
    for group in groups:
        rows = sorted(where[m] for m in group if m in where)
        if len(rows) < 2:
            continue
        head = rows[0]
        same = [i for i in rows[1:] if _same_numbers(out.iloc[head], out.iloc[i], columns)]
        if same:
            out.at[out.index[head], "measures"] = tuple(out.iloc[i]["measure"]
                                                        for i in [head, *same])
            if "signs" in out.columns:
                out.at[out.index[head], "signs"] = tuple(int(out.iloc[i]["sign"])
                                                         for i in [head, *same])
            drop.update(same)
    keep = [i for i in range(len(out)) if i not in drop]
    return out.iloc[keep].reset_index(drop=True)
