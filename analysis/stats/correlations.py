"""Correlations of a measure with the target over trial rows, computed by ``scipy.stats``:
Pearson's r, Spearman's rho, Kendall's tau-b (Novak et al. 2018 §4.3 show the relation of the
Jacobian norm with the gap across trials as scatter plots; these put a number on it)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps

def _xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} != {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _scipy(fn, x, y) -> float:
    """``fn(x, y).statistic`` on the pairs without NaN; NaN below 2 pairs or where scipy says
    the statistic is undefined (a constant side: scipy returns NaN with a warning)."""
    x, y = _xy(x, y)
    if x.size < 2:
        return math.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(fn(x, y).statistic)


def pearson(x, y) -> float:
    """Pearson's r (``scipy.stats.pearsonr``). Pairs with a NaN are dropped; NaN with fewer than
    2 pairs or a constant side; with an infinite value r is NaN, as in scipy."""
    return _scipy(sps.pearsonr, x, y)


def spearman(x, y) -> float:
    """Spearman's rho (``scipy.stats.spearmanr``: Pearson's r of the average ranks; +-inf rank
    last / first). Pairs with a NaN are dropped; NaN with fewer than 2 pairs or a constant side."""
    return _scipy(sps.spearmanr, x, y)


def kendall(x, y) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``, variant "b"), over trial rows:

        tau_b = (n_c - n_d) / sqrt((n_0 - n_1) (n_0 - n_2)),

    n_0 pairs, n_c / n_d concordant / discordant, n_1 / n_2 tied in x / in y. This is tau-b on
    purpose (the usual correlation over trials); the granulated Kendall inside groups uses Jiang
    et al.'s tau instead (ties count 0, every pair in the denominator). Pairs with a NaN are
    dropped; NaN with fewer than 2 pairs or a constant side; +-inf rank last / first."""
    return _scipy(sps.kendalltau, x, y)
