"""Configurations: a results table's hyperparameter columns, the trial rows of one measure
encoded once (``_prepare``), their seed means per configuration (``_configs``) and the pairs of
configurations that differ in exactly one hyperparameter (``_one_factor_pairs``), which the
granulated Kendall, the sign-error and the conditional MI are computed over.

A *configuration* is one value of every hyperparameter (``hyperparameter_columns``); its measure
and target are the means over the trials (seeds) that share it. A null hyperparameter value is a
value of its own; a hyperparameter with a single value in the data contributes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workers.results.hyperparameters import STATISTICS_HYPERPARAMETERS
from workers.results.record import SUMMARY_COLUMNS

# The result schema's hyperparameter columns (workers.results.hyperparameters, declared once: everything
# that defines a trained network but the seed and the test-set size). Every other summary column
# is an outcome or bookkeeping: NOT_HYPERPARAMETERS.
HYPERPARAMETERS = list(STATISTICS_HYPERPARAMETERS)
NOT_HYPERPARAMETERS = tuple(c for c in SUMMARY_COLUMNS if c not in HYPERPARAMETERS)


def measure_sign(name: str) -> int:
    """The direction ``name`` is expected to predict the gap in (workers.measures: ``sign`` of
    its registration): +1 for a complexity measure, -1 for a margin; +1 for a column outside the
    registry (a baseline such as n_params, or a user's own column)."""
    from workers.measures import REGISTRY

    return REGISTRY[name].sign if name in REGISTRY else 1


def measure_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` that are measures: registered ones (workers.measures.REGISTRY)
    and those ``load_results`` joined from the measures table (``df.attrs["measures"]``), in
    the table's order."""
    from workers.measures import REGISTRY

    named = set(REGISTRY) | set(df.attrs.get("measures", ()))
    return [str(c) for c in df.columns if c in named]


def hyperparameter_columns(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The columns of ``df`` that make a configuration, in the table's order: every column but
    the seed, the result schema's outcome and bookkeeping columns (``NOT_HYPERPARAMETERS``:
    trial_id, status, accuracies, losses, Jacobian norms, n_params, ...), the measures
    (``measure_columns``) and ``exclude`` (the target in use and any other column). On a ``load_results`` table these are ``HYPERPARAMETERS``;
    a column a user adds (say ``weight_decay``) is a hyperparameter too, with a warning when it
    is not one of the schema's. Pass ``hyperparameters=`` to the statistics and
    ``analysis.figures.seed_means`` to choose the list yourself."""
    skip = set(NOT_HYPERPARAMETERS) | set(exclude) | set(measure_columns(df))
    cols = [str(c) for c in df.columns if c not in skip]
    extra = [c for c in cols if c not in HYPERPARAMETERS]
    if extra:
        warnings.warn(f"hyperparameters: treating {extra} as hyperparameters (columns outside "
                      "the result schema); pass hyperparameters=[...] to choose", stacklevel=3)
    return cols


def _sgn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sign(b - a) from comparisons, so that inf vs inf is a tie (0) as in scipy's ranks."""
    return (b > a).astype(np.int8) - (b < a).astype(np.int8)


def _kernels():
    """``analysis.kernels`` (numba), imported on first use: importing it compiles or loads its
    cached loops, which ``from analysis.stats import pearson`` does not need."""
    from analysis import kernels

    return kernels


def _dense_rank(x: np.ndarray) -> np.ndarray:
    """Dense ranks 0..k-1 of ``x`` (n,) float64, ties equal (``analysis.kernels.dense_rank``)."""
    return _kernels().dense_rank(np.ascontiguousarray(x, dtype=np.float64))


@dataclass(frozen=True)
class _Prepared:
    """Trial rows of one measure (NaN rows dropped), encoded once for fast resampling."""

    mu: np.ndarray  # (n,) measure per row
    g: np.ndarray  # (n,) target per row
    row_cfg: np.ndarray  # (n,) configuration id per row
    cfg_codes: np.ndarray  # (C, h) integer code of every hyperparameter per configuration
    levels: np.ndarray  # (h,) number of distinct values per hyperparameter (null included)
    names: tuple[str, ...]
    seed_codes: np.ndarray | None  # (n,) seed code per row, None without a seed column
    test_size: np.ndarray | None  # (n,) test points behind each row's gap, if the table says

    @property
    def n(self) -> int:
        return self.mu.size


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: {missing} not in the table; columns: {', '.join(map(str, df.columns))}")


def _row_keys(codes: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """One integer per row, equal iff the rows of ``codes`` are equal (dense ids 0..k-1)."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.int64)
    if float(np.prod(levels.astype(float))) < 2.0**62:
        key = np.zeros(codes.shape[0], dtype=np.int64)
        for c in range(codes.shape[1]):
            key = key * int(levels[c]) + codes[:, c]
        return np.unique(key, return_inverse=True)[1].reshape(-1)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def check_hyperparameters(hyperparameters: Sequence[str], measures: Sequence[str],
                          target: str) -> None:
    """ValueError (one line) when ``hyperparameters`` names a measure, the target or ``seed``:
    a configuration is what trials share apart from their seed, and the measure and the target
    are what the statistics compare over configurations (as a hyperparameter, each would make
    every value a configuration of its own and silently change every statistic)."""
    bad = [h for h in hyperparameters if h in set(measures) | {target, "seed"}]
    if bad:
        raise ValueError(f"hyperparameters: {bad} (a measure, the target or the seed); allowed: "
                         "columns that define a configuration, the seed left out (configurations "
                         "are averaged over it)")


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(df[column], errors="raise").to_numpy(dtype=float, na_value=np.nan)


def _prepare(df: pd.DataFrame, measure: str, target: str,
             hyperparameters: Sequence[str] | None) -> _Prepared:
    from analysis import args as argcheck

    argcheck.frame(df)
    hyperparameters = argcheck.names(hyperparameters, "hyperparameters")
    _check_columns(df, [measure, target], "measure/target")
    if hyperparameters is None:
        hyperparameters = hyperparameter_columns(df, exclude=[measure, target])
    _check_columns(df, hyperparameters, "hyperparameters")
    check_hyperparameters(hyperparameters, [measure], target)
    mu_all, g_all = _numeric(df, measure), _numeric(df, target)
    keep = ~(np.isnan(mu_all) | np.isnan(g_all))
    sub = df.loc[keep]
    cols, levels = [], []
    for h in hyperparameters:
        codes, uniques = pd.factorize(sub[h], use_na_sentinel=False)
        cols.append(codes.astype(np.int64))
        levels.append(len(uniques))
    n = int(keep.sum())
    codes = np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)
    levels = np.asarray(levels, dtype=np.int64)
    row_cfg = _row_keys(codes, levels)
    n_cfg = int(row_cfg.max()) + 1 if n else 0
    cfg_codes = np.zeros((n_cfg, codes.shape[1]), dtype=np.int64)
    cfg_codes[row_cfg] = codes
    seed_codes = None
    if "seed" in sub.columns:
        seed_codes = pd.factorize(sub["seed"], use_na_sentinel=False)[0].astype(np.int64)
    test_size = _numeric(sub, "test_size") if "test_size" in sub.columns else None
    return _Prepared(mu_all[keep], g_all[keep], row_cfg, cfg_codes, levels,
                     tuple(hyperparameters), seed_codes, test_size)


@dataclass(frozen=True)
class _Configs:
    """Seed-averaged configurations; only the hyperparameters that vary among them; and the
    rows (trials, a resampled row once per draw) behind each."""

    codes: np.ndarray  # (C, h')
    levels: np.ndarray  # (h',)
    names: tuple[str, ...]
    mu: np.ndarray  # (C,) mean measure
    g: np.ndarray  # (C,) mean target
    row_cfg: np.ndarray  # (m,) configuration (0..C-1) of each row
    row_mu: np.ndarray  # (m,)
    row_g: np.ndarray  # (m,)
    row_test: np.ndarray | None  # (m,) test points behind each row's gap


def _configs(p: _Prepared, idx: np.ndarray | None = None) -> _Configs:
    """Mean of measure and target per configuration over the rows ``idx`` (all rows if None;
    a row drawn twice counts twice). A configuration whose mean is undefined (+inf and -inf
    among its seeds) is left out."""
    rc = p.row_cfg if idx is None else p.row_cfg[idx]
    mu = p.mu if idx is None else p.mu[idx]
    g = p.g if idx is None else p.g[idx]
    test = None if p.test_size is None else (p.test_size if idx is None else p.test_size[idx])
    n_cfg = p.cfg_codes.shape[0]
    cnt = np.bincount(rc, minlength=n_cfg)
    with np.errstate(invalid="ignore"):
        mu_sum = np.bincount(rc, weights=mu, minlength=n_cfg)
        g_sum = np.bincount(rc, weights=g, minlength=n_cfg)
    present = (cnt > 0) & ~np.isnan(mu_sum) & ~np.isnan(g_sum)
    c = cnt[present]
    mu_c, g_c = mu_sum[present] / c, g_sum[present] / c
    new_id = np.cumsum(present) - 1
    keep = present[rc]
    codes = p.cfg_codes[present]
    if codes.shape[0]:
        varying = codes.min(axis=0) != codes.max(axis=0)
    else:
        varying = np.zeros(codes.shape[1], dtype=bool)
    names = tuple(nm for nm, v in zip(p.names, varying) if v)
    return _Configs(codes[:, varying], p.levels[varying], names, mu_c, g_c, new_id[rc[keep]],
                    mu[keep], g[keep], None if test is None else test[keep])


def _one_factor_pairs(cf: _Configs) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per varying hyperparameter i: all unordered pairs (a, b) of configurations that agree on
    every other hyperparameter (so differ in exactly i), with the id of their group.

    Configurations are sorted by group; pairs are (p, p + d) in that order for d = 1, 2, ...
    while they share the group, so the work is O(C * largest group)."""
    out = []
    n_cfg, h = cf.codes.shape
    for i in range(h):
        others = [c for c in range(h) if c != i]
        lab = _row_keys(cf.codes[:, others], cf.levels[others])
        order = np.argsort(lab, kind="stable")
        sl = lab[order]
        biggest = int(np.bincount(lab).max()) if n_cfg else 0
        a, b = [], []
        for d in range(1, biggest):
            same = sl[:-d] == sl[d:]
            a.append(order[:-d][same])
            b.append(order[d:][same])
        a = np.concatenate(a) if a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(b) if b else np.zeros(0, dtype=np.int64)
        out.append((a, b, lab[a]))
    return out
