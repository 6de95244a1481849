"""Percentile intervals from resampling whole seeds (or trial rows, with a single seed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

@dataclass(frozen=True)
class BootstrapCI:
    """Percentile interval [low, high] of ``fn`` over ``n_boot`` resamples (elementwise when
    ``fn`` returns a vector); ``estimate`` = fn(df); ``method`` "seeds" or "trials";
    ``n_valid`` replicates that were not NaN."""

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    method: str
    n_boot: int
    level: float
    n_valid: int | np.ndarray


def check_n_boot(n_boot) -> None:
    """ValueError (one line) unless ``n_boot`` is an integer >= 0 (0: the estimates alone)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot: {n_boot!r}; allowed: an integer >= 0")


def _seed_codes(df: pd.DataFrame) -> np.ndarray | None:
    if "seed" not in df.columns:
        return None
    return pd.factorize(df["seed"], use_na_sentinel=False)[0].astype(np.int64)


def _bootstrap_indices(seed_codes: np.ndarray | None, n: int, n_boot: int,
                       seed: int) -> tuple[str, Iterator[np.ndarray]]:
    """("seeds", row indices of m seeds drawn with replacement from the m distinct seeds, rows of
    a seed drawn twice appearing twice) when there are >= 2 seeds, else ("trials", n rows drawn
    with replacement). ``numpy.random.default_rng(seed)``: deterministic."""
    rng = np.random.default_rng(seed)
    if seed_codes is not None and n and np.unique(seed_codes).size >= 2:
        order = np.argsort(seed_codes, kind="stable")
        bounds = np.flatnonzero(np.diff(seed_codes[order])) + 1
        groups = np.split(order, bounds)
        m = len(groups)

        def by_seed():
            for _ in range(n_boot):
                yield np.concatenate([groups[s] for s in rng.integers(0, m, size=m)])

        return "seeds", by_seed()

    def by_trial():
        for _ in range(n_boot):
            yield rng.integers(0, n, size=n)

    return "trials", by_trial()


def _percentiles(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of reps (B, s): the (1-level)/2 and (1+level)/2 percentiles (numpy's linear
    interpolation) of the non-NaN replicates, and their number."""
    lo_q, hi_q = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
    low = np.full(reps.shape[1], np.nan)
    high = np.full(reps.shape[1], np.nan)
    valid = (~np.isnan(reps)).sum(axis=0)
    for c in range(reps.shape[1]):
        v = reps[:, c][~np.isnan(reps[:, c])]
        if v.size:
            low[c], high[c] = np.percentile(v, [lo_q, hi_q])
    return low, high, valid


def _as_values(out) -> np.ndarray:
    out = getattr(out, "value", out)
    return np.atleast_1d(np.asarray(out, dtype=float)).ravel()


def bootstrap_ci(df: pd.DataFrame, fn: Callable[[pd.DataFrame], object], n_boot: int = 200,
                 level: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Seed-bootstrap percentile interval of ``fn(df)``.

    With m >= 2 distinct values of ``seed``: draw m seeds with replacement and concatenate their
    trial rows (a seed drawn twice appears twice, so the seed averages inside the statistics
    weight configurations' trials by multiplicity); otherwise (one seed, or no seed column)
    draw the trial rows themselves with replacement (``method`` says which). ``fn`` returns a
    float, a vector (intervals elementwise) or an object with a ``value`` attribute (the result
    classes here). Interval: the 100 (1 - level)/2 and 100 (1 + level)/2 percentiles of the
    non-NaN replicates; NaN if none. Deterministic given ``seed``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level}; allowed: 0 < level < 1")
    check_n_boot(n_boot)
    estimate = _as_values(fn(df))
    method, draws = _bootstrap_indices(_seed_codes(df), len(df), n_boot, seed)
    reps = np.array([_as_values(fn(df.iloc[idx].reset_index(drop=True))) for idx in draws])
    reps = reps.reshape(n_boot, estimate.size)
    low, high, valid = _percentiles(reps, level)
    if estimate.size == 1:
        return BootstrapCI(float(estimate[0]), float(low[0]), float(high[0]), method, n_boot,
                           level, int(valid[0]))
    return BootstrapCI(estimate, low, high, method, n_boot, level, valid)
