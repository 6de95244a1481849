"""Statistics that judge a sensitivity measure against the generalization gap.

Input: the results table of ``analysis.load.load_results`` (one row per trial), already filtered
by the caller (status ok, 100% train accuracy). Per measure, rows whose measure or target is NaN
are dropped. Everything here is numpy/pandas and deterministic.

- ``pearson``, ``spearman``, ``kendall`` (tau-b): over trial rows (Novak et al. 2018 §4.3 show
  the correlation of the Jacobian norm with the gap across trials as scatter plots; these put a
  number on it).
- ``granulated_kendall``: Jiang et al. 2019, "Fantastic generalization measures", §3 (Psi).
- ``conditional_mutual_information``: Jiang et al. 2019 §4 and the PGDL competition scoring
  (Jiang et al. 2020), normalized and minimized over conditioning sets of size k.
- ``sign_error``: Dziugaite et al. 2020, "In search of robust measures of generalization", §3:
  the ordering error over pairs of configurations that differ in exactly one hyperparameter.
- ``bootstrap_ci``: percentile interval from resampling whole seeds (or trials, with one seed).
- ``statistics_table`` / ``write_table``: all of the above in long form, CSV + Parquet.

A *configuration* is one value of every hyperparameter in ``HYPERPARAMETERS``; its measure and
target are the means over the trials (seeds) that share it. A null hyperparameter value (e.g.
``batch_size`` of the full-batch L-BFGS) is a value of its own; a hyperparameter with a single
value in the data contributes nothing and is skipped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HYPERPARAMETERS = ["dataset", "train_size", "random_labels", "augment", "width", "depth",
                   "activation", "optimizer", "lr", "batch_size", "init_scale", "step_budget"]
STATISTICS = ("pearson", "spearman", "kendall", "granulated_kendall", "conditional_mi",
              "sign_error")
MEASURES = ("jacobian_norm_test", "transitions_test")
MAX_PAIRS = 2_000_000  # conditional MI: ordered pairs enumerated before sampling kicks in
TABLE_COLUMNS = ["group", "measure", "target", "statistic", "value", "ci_low", "ci_high",
                 "ci_method", "n_trials", "n_configs", "n_used"]


# ---------------------------------------------------------------------------------------------
# Correlations over trial rows


def _xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} != {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return math.nan
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(dx @ dx)
    syy = float(dy @ dy)
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    r = float(dx @ dy) / math.sqrt(sxx) / math.sqrt(syy)
    return min(1.0, max(-1.0, r))


def pearson(x, y) -> float:
    """Pearson's r = sum_i (x_i - x̄)(y_i - ȳ) / sqrt(sum_i (x_i - x̄)^2 * sum_i (y_i - ȳ)^2).

    Pairs with a NaN in x or y are dropped; NaN with fewer than 2 pairs or a constant side."""
    return _pearson(*_xy(x, y))


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    n = a.size
    order = np.argsort(a, kind="stable")
    s = a[order]
    new = np.empty(n, dtype=bool)
    new[:1] = True
    new[1:] = s[1:] != s[:-1]
    run = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    ranks = np.empty(n, dtype=float)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[run]
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho = Pearson's r of the average ranks (ties share the mean rank).

    Pairs with a NaN in x or y are dropped; NaN with fewer than 2 pairs or a constant side."""
    x, y = _xy(x, y)
    if x.size < 2:
        return math.nan
    return _pearson(_average_ranks(x), _average_ranks(y))


def _tied_pairs(*sorted_keys: np.ndarray) -> int:
    """sum over runs of equal keys (arrays sorted jointly) of t (t - 1) / 2."""
    n = sorted_keys[0].size
    if n < 2:
        return 0
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in sorted_keys:
        new[1:] |= k[1:] != k[:-1]
    t = np.diff(np.append(np.flatnonzero(new), n)).astype(np.int64)
    return int((t * (t - 1) // 2).sum())


def _inversions(v: np.ndarray) -> int:
    """Number of pairs i < j with v_i > v_j, for integer ranks v in [0, m).

    Bottom-up over block widths w = 1, 2, 4, ...: every inverted pair is counted once, at the
    width where i and j first sit in sibling blocks (i in the left block, j in the right). Per
    width: one sort of the left blocks and two binary searches, O(n log n); O(n log^2 n) total,
    O(n) memory."""
    n = v.size
    m = int(v.max()) + 1 if n else 1
    pos = np.arange(n, dtype=np.int64)
    v = v.astype(np.int64)
    total = 0
    w = 1
    while w < n:
        pair = pos // (2 * w)
        left = (pos // w) % 2 == 0
        keys = np.sort(pair[left] * m + v[left])
        pr = pair[~left]
        above_all = np.searchsorted(keys, (pr + 1) * m, side="left")
        up_to = np.searchsorted(keys, pr * m + v[~left], side="right")
        total += int((above_all - up_to).sum())
        w *= 2
    return total


_SMALL = 256  # kendall: up to this many rows the n x n sign matrices beat the merge count


def kendall(x, y) -> float:
    """Kendall's tau-b (equals ``scipy.stats.kendalltau(x, y).statistic``):

        tau_b = (n_c - n_d) / sqrt((n_0 - n_1) (n_0 - n_2)),

    n_0 = n (n - 1) / 2 pairs, n_c / n_d concordant / discordant pairs, n_1 / n_2 pairs tied in
    x / in y. With n_3 the pairs tied in both, n_c - n_d = n_0 - n_1 - n_2 + n_3 - 2 n_d; n_d is
    the number of inversions of y after sorting by (x, y), counted in O(n log^2 n) time and O(n)
    memory (for n <= 256, the same sums straight from the n x n sign matrices). Pairs with a NaN
    are dropped; NaN with fewer than 2 pairs or a constant side."""
    x, y = _xy(x, y)
    n = x.size
    if n < 2:
        return math.nan
    if n <= _SMALL:  # all pairs at once: sum over i != j counts every pair twice, ratio unchanged
        sx = np.sign(x[:, None] - x[None, :])
        sy = np.sign(y[:, None] - y[None, :])
        dx, dy = float(np.abs(sx).sum()), float(np.abs(sy).sum())
        if dx == 0.0 or dy == 0.0:
            return math.nan
        return min(1.0, max(-1.0, float((sx * sy).sum()) / math.sqrt(dx) / math.sqrt(dy)))
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    n0 = n * (n - 1) // 2
    n1 = _tied_pairs(xs)
    n3 = _tied_pairs(xs, ys)
    n2 = _tied_pairs(np.sort(y))
    if n0 == n1 or n0 == n2:
        return math.nan
    dense_y = np.unique(y, return_inverse=True)[1].reshape(-1)[order]
    nd = _inversions(dense_y)
    s = n0 - n1 - n2 + n3 - 2 * nd
    tau = s / math.sqrt(n0 - n1) / math.sqrt(n0 - n2)
    return min(1.0, max(-1.0, tau))


# ---------------------------------------------------------------------------------------------
# Configurations (seed averages) and the design matrix


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

    @property
    def n(self) -> int:
        return self.mu.size


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: {missing} not in the table; columns: {', '.join(df.columns)}")


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


def _prepare(df: pd.DataFrame, measure: str, target: str,
             hyperparameters: Sequence[str]) -> _Prepared:
    _check_columns(df, [measure, target], "measure/target")
    _check_columns(df, hyperparameters, "hyperparameters")
    mu_all = pd.to_numeric(df[measure], errors="raise").to_numpy(dtype=float, na_value=np.nan)
    g_all = pd.to_numeric(df[target], errors="raise").to_numpy(dtype=float, na_value=np.nan)
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
    return _Prepared(mu_all[keep], g_all[keep], row_cfg, cfg_codes, levels,
                     tuple(hyperparameters), seed_codes)


@dataclass(frozen=True)
class _Configs:
    """Seed-averaged configurations; only the hyperparameters that vary among them."""

    codes: np.ndarray  # (C, h')
    levels: np.ndarray  # (h',)
    names: tuple[str, ...]
    mu: np.ndarray  # (C,) mean measure
    g: np.ndarray  # (C,) mean target


def _configs(p: _Prepared, idx: np.ndarray | None = None) -> _Configs:
    """Mean of measure and target per configuration over the rows ``idx`` (all rows if None;
    a row drawn twice counts twice)."""
    rc = p.row_cfg if idx is None else p.row_cfg[idx]
    mu = p.mu if idx is None else p.mu[idx]
    g = p.g if idx is None else p.g[idx]
    n_cfg = p.cfg_codes.shape[0]
    cnt = np.bincount(rc, minlength=n_cfg)
    present = cnt > 0
    c = cnt[present]
    mu_c = np.bincount(rc, weights=mu, minlength=n_cfg)[present] / c
    g_c = np.bincount(rc, weights=g, minlength=n_cfg)[present] / c
    codes = p.cfg_codes[present]
    if codes.shape[0]:
        varying = codes.min(axis=0) != codes.max(axis=0)
    else:
        varying = np.zeros(codes.shape[1], dtype=bool)
    names = tuple(nm for nm, v in zip(p.names, varying) if v)
    return _Configs(codes[:, varying], p.levels[varying], names, mu_c, g_c)


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


# ---------------------------------------------------------------------------------------------
# Granulated Kendall (Jiang et al. 2019, §3)


@dataclass(frozen=True)
class GranulatedKendall:
    """Psi = ``value``; ``psi[i]`` per hyperparameter i (only those with a group);
    ``n_groups[i]`` the groups each psi_i averages; ``n_configs`` seed-averaged configs."""

    value: float
    psi: dict[str, float]
    n_groups: dict[str, int]
    n_configs: int


def _granulated(cf: _Configs, pairs) -> GranulatedKendall:
    psi, n_groups = {}, {}
    for name, (a, b, lab) in zip(cf.names, pairs):
        if a.size == 0:
            continue
        sx = np.sign(cf.mu[b] - cf.mu[a])
        sy = np.sign(cf.g[b] - cf.g[a])
        k = int(lab.max()) + 1
        num = np.bincount(lab, weights=sx * sy, minlength=k)
        dx = np.bincount(lab, weights=np.abs(sx), minlength=k)
        dy = np.bincount(lab, weights=np.abs(sy), minlength=k)
        ok = (dx > 0) & (dy > 0)
        if not ok.any():
            continue
        tau = num[ok] / np.sqrt(dx[ok]) / np.sqrt(dy[ok])
        psi[name] = float(tau.mean())
        n_groups[name] = int(ok.sum())
    value = float(np.mean(list(psi.values()))) if psi else math.nan
    return GranulatedKendall(value, psi, n_groups, int(cf.mu.size))


def granulated_kendall(df: pd.DataFrame, measure: str, target: str = "gen_gap",
                       hyperparameters: Sequence[str] = HYPERPARAMETERS) -> GranulatedKendall:
    """Granulated Kendall coefficient Psi (Jiang et al. 2019, §3, Eq. 4-5).

    Trials are first averaged over seeds into configurations theta (mean measure mu(theta),
    mean target g(theta)). For hyperparameter i, the configurations are grouped by the values
    of all *other* hyperparameters; in each group with >= 2 configurations (so >= 2 values of i)

        tau_group = Kendall tau-b of {(mu(theta), g(theta)) : theta in group},

    skipping groups where it is undefined (constant measure or target);
    psi_i = mean of tau_group over the groups, and Psi = mean of psi_i over the hyperparameters
    that have at least one group. NaN when none has. A group's tau-b is computed from its pairs:
    sum sign(dmu) sign(dg) / sqrt(sum |sign(dmu)| * sum |sign(dg)|)."""
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _granulated(cf, _one_factor_pairs(cf))


# ---------------------------------------------------------------------------------------------
# Sign error (Dziugaite et al. 2020, §3)


@dataclass(frozen=True)
class SignError:
    """``value``: mean error over all one-hyperparameter pairs; ``per_hyperparameter[i]`` the
    mean over pairs that differ in i; ``worst`` = max of those, at ``worst_hyperparameter``;
    ``n_pairs[i]`` pairs per hyperparameter."""

    value: float
    per_hyperparameter: dict[str, float]
    n_pairs: dict[str, int]
    worst: float
    worst_hyperparameter: str | None
    n_configs: int


def _sign_error(cf: _Configs, pairs) -> SignError:
    per, n_pairs, errs = {}, {}, []
    for name, (a, b, _) in zip(cf.names, pairs):
        if a.size == 0:
            continue
        e = (1.0 - np.sign(cf.mu[b] - cf.mu[a]) * np.sign(cf.g[b] - cf.g[a])) / 2.0
        per[name] = float(e.mean())
        n_pairs[name] = int(e.size)
        errs.append(e)
    if not errs:
        return SignError(math.nan, {}, {}, math.nan, None, int(cf.mu.size))
    worst_name = max(per, key=per.get)
    return SignError(float(np.concatenate(errs).mean()), per, n_pairs, per[worst_name],
                     worst_name, int(cf.mu.size))


def sign_error(df: pd.DataFrame, measure: str, target: str = "gen_gap",
               hyperparameters: Sequence[str] = HYPERPARAMETERS) -> SignError:
    """Sign error over single-hyperparameter interventions (Dziugaite et al. 2020, §3).

    Trials are averaged over seeds into configurations. Every unordered pair (theta, theta') of
    configurations that differ in exactly ONE hyperparameter i contributes

        err = (1 - sign(mu(theta') - mu(theta)) * sign(g(theta') - g(theta))) / 2

    (0: the measure orders the pair like the target, 1: the other way, 1/2: a tie on either
    side). Returns the mean over all such pairs, the mean per hyperparameter i, and the worst
    (largest) per-hyperparameter mean; NaN when there is no such pair. Pairs are found by
    grouping configurations on all-but-one hyperparameter, never by looping over all pairs."""
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _sign_error(cf, _one_factor_pairs(cf))


# ---------------------------------------------------------------------------------------------
# Conditional mutual information (Jiang et al. 2019, §4; PGDL 2020 scoring)


@dataclass(frozen=True)
class ConditionalMI:
    """``value`` = min over conditioning sets S of the normalized CMI ``per_set[S]`` (NaN where
    undefined), attained at ``argmin``; ``n_pairs`` ordered pairs used (``sampled`` if drawn at
    random rather than enumerated); ``n_configs`` seed-averaged configurations."""

    value: float
    per_set: dict[tuple[str, ...], float]
    argmin: tuple[str, ...] | None
    n_pairs: int
    sampled: bool
    n_configs: int


def _normalized_cmi(t: np.ndarray) -> np.ndarray:
    """Per conditioning set s: I(V_mu; V_g | U) / H(V_g | U) from integer counts
    t[s, u, 2 V_g + V_mu]. With F(c) = sum c log c over the given cells and N pairs,

        N I = F(n_u) - F(n_ug) - F(n_um) + F(n_ugm),   N H = F(n_u) - F(n_ug)

    (natural log; the ratio does not depend on the base; empty cells add nothing). NaN where
    H(V_g | U) = 0, i.e. where every cell holds a single value of V_g (checked on the counts)."""
    g0, g1 = t[:, :, 0] + t[:, :, 1], t[:, :, 2] + t[:, :, 3]
    m0, m1 = t[:, :, 0] + t[:, :, 2], t[:, :, 1] + t[:, :, 3]
    n_u = g0 + g1
    c = np.arange(int(n_u.max()) + 1 if n_u.size else 1, dtype=float)
    c[1:] *= np.log(c[1:])  # c log c, 0 log 0 = 0

    def f(x):
        return c[x].reshape(x.shape[0], -1).sum(axis=1)

    f_u, f_g = f(n_u), f(g0) + f(g1)
    info = f_u - f_g - f(m0) - f(m1) + f(t)
    h = f_u - f_g
    out = np.full(t.shape[0], np.nan)
    ok = (np.minimum(g0, g1) > 0).any(axis=1)
    out[ok] = np.clip(info[ok] / h[ok], 0.0, 1.0)
    return out


def _cmi_per_set(cf: _Configs, i: np.ndarray, j: np.ndarray, y: np.ndarray,
                 sets: list[tuple[int, ...]]) -> np.ndarray:
    """Normalized CMI of every conditioning set for the ordered pairs (i, j) with outcome
    y = 2 V_g + V_mu. The cell of a pair under S is the mixed-radix number of
    (value in i, value in j) over S; many sets share one bincount when the cells are few."""
    n_pairs = i.size
    out = np.full(len(sets), np.nan)
    batch = max(1, 4_000_000 // max(n_pairs, 1))
    # per hyperparameter: value in i * levels + value in j, gathered once (h x pairs)
    small = int(cf.levels.max(initial=1)) ** 2 < 2**31
    pair_code = np.empty((cf.levels.size, n_pairs), dtype=np.int32 if small else np.int64)
    for c, n_levels in enumerate(cf.levels):
        col = cf.codes[:, c].astype(pair_code.dtype)
        np.add(col[i] * int(n_levels), col[j], out=pair_code[c])
    for start in range(0, len(sets), batch):
        chunk = sets[start:start + batch]
        lv = cf.levels[np.array(chunk)]  # (b, |S|)
        radix = np.prod(lv.astype(float) ** 2, axis=1)
        if radix.max() * len(chunk) * 4 <= 2.0**22:
            key = np.zeros((len(chunk), n_pairs), dtype=np.int64)
            for pos in range(lv.shape[1]):
                key = key * lv[:, pos:pos + 1] ** 2 + pair_code[[s[pos] for s in chunk]]
            r = int(radix.max())
            flat = (np.arange(len(chunk))[:, None] * r + key) * 4 + y
            t = np.bincount(flat.ravel(), minlength=len(chunk) * r * 4)
            out[start:start + len(chunk)] = _normalized_cmi(t.reshape(len(chunk), r, 4))
            continue
        for n, s in enumerate(chunk):  # many cells: number only the cells that occur
            cell = _row_keys(pair_code[list(s)].T.astype(np.int64), lv[n] ** 2)
            t = np.bincount(cell * 4 + y, minlength=4 * (int(cell.max()) + 1))
            out[start + n] = _normalized_cmi(t.reshape(1, -1, 4))[0]
    return out


def _cmi(cf: _Configs, k: int, max_pairs: int, seed: int) -> ConditionalMI:
    n_cfg, h = cf.codes.shape
    if n_cfg < 2 or h == 0:
        return ConditionalMI(math.nan, {}, None, 0, False, n_cfg)
    if n_cfg * n_cfg <= max_pairs:
        i = np.repeat(np.arange(n_cfg), n_cfg)
        j = np.tile(np.arange(n_cfg), n_cfg)
        sampled = False
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n_cfg, size=max_pairs)
        j = rng.integers(0, n_cfg, size=max_pairs)
        sampled = True
    y = (cf.g[i] > cf.g[j]).astype(np.int64) * 2 + (cf.mu[i] > cf.mu[j]).astype(np.int64)
    sets = list(itertools.combinations(range(h), min(k, h)))
    values = _cmi_per_set(cf, i, j, y, sets)
    per_set = {tuple(cf.names[c] for c in s): float(v) for s, v in zip(sets, values)}
    defined = {s: v for s, v in per_set.items() if not math.isnan(v)}
    argmin = min(defined, key=defined.get) if defined else None
    value = defined[argmin] if defined else math.nan
    return ConditionalMI(value, per_set, argmin, int(i.size), sampled, n_cfg)


def conditional_mutual_information(df: pd.DataFrame, measure: str, target: str = "gen_gap",
                                   hyperparameters: Sequence[str] = HYPERPARAMETERS, k: int = 2,
                                   max_pairs: int = MAX_PAIRS, seed: int = 0) -> ConditionalMI:
    """Normalized conditional mutual information, minimized over conditioning sets
    (Jiang et al. 2019, §4; the PGDL competition score, Jiang et al. 2020).

    Over pairs (theta_1, theta_2) of seed-averaged configurations:

        V_g = 1[g(theta_1) > g(theta_2)],   V_mu = 1[mu(theta_1) > mu(theta_2)],
        U_S = (values of the hyperparameters in S in theta_1, the same in theta_2),
        I~_S = I(V_mu; V_g | U_S) / H(V_g | U_S),
        I(V_mu; V_g | U) = sum_u p(u) sum_{a,b} p(a,b|u) log p(a,b|u) / (p(a|u) p(b|u)),
        H(V_g | U) = -sum_u p(u) sum_a p(a|u) log p(a|u),

    and the score is min over S with |S| = k (k = 2; all varying hyperparameters if fewer)
    of I~_S, in [0, 1]. Only hyperparameters that vary among the configurations form S.

    Convention, taken from the PGDL scoring program (``scoring_program/mutual_information.py``
    of the competition's starting kit), so the numbers are comparable with PGDL's:
    - pairs are ORDERED and include theta_1 = theta_2: all n^2 (i, j), i.e. two configurations
      drawn independently (with replacement) from the empirical distribution;
    - ties are not dropped: V is the indicator of a strict ">", so a tie counts as "not greater";
    - U_S keys the pair by the (model 1, model 2) values of every hyperparameter in S;
    - logs are base 2 there, natural here: the ratio does not depend on the base.
    Two deliberate departures, both invisible on PGDL's complete, balanced grids: (1) p(u) is the
    empirical share of pairs in cell u (PGDL averages cells with equal weights, the same thing
    when every cell holds the same number of pairs, which a complete grid guarantees); (2) a set S
    with H(V_g | U_S) = 0 (U_S alone determines every pair's order, e.g. S = all varying
    hyperparameters, where every cell holds one pair) gives NaN and is left out of the minimum,
    where PGDL's 1e-12 smoothing would return about 0. Hence NaN when no S is defined, and
    always NaN with <= k varying hyperparameters (pass k=1 then). As in PGDL (which takes the
    minimum over all pairs of distinct hyperparameters, |S| = 2), the score is blind to the
    direction of the relation: mu and -mu score the same.

    Pairs: all n^2 ordered pairs when n^2 <= ``max_pairs`` (2e6 by default, n <= 1414
    configurations); beyond, ``max_pairs`` pairs (i, j) drawn uniformly with replacement with
    ``numpy.random.default_rng(seed)``, the same pairs for every S: a sample of the same pair
    distribution, deterministic for a seed. (The plug-in CMI of a sample is biased upward when
    cells hold few pairs; at 2e6 pairs this is negligible for grids of the paper's size.)"""
    if k < 1:
        raise ValueError(f"k: {k}; allowed: an integer >= 1")
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _cmi(cf, k, max_pairs, seed)


# ---------------------------------------------------------------------------------------------
# Bootstrap


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
    estimate = _as_values(fn(df))
    method, draws = _bootstrap_indices(_seed_codes(df), len(df), n_boot, seed)
    reps = np.array([_as_values(fn(df.iloc[idx].reset_index(drop=True))) for idx in draws])
    reps = reps.reshape(n_boot, estimate.size)
    low, high, valid = _percentiles(reps, level)
    if estimate.size == 1:
        return BootstrapCI(float(estimate[0]), float(low[0]), float(high[0]), method, n_boot,
                           level, int(valid[0]))
    return BootstrapCI(estimate, low, high, method, n_boot, level, valid)


# ---------------------------------------------------------------------------------------------
# The table


def _all_statistics(p: _Prepared, idx: np.ndarray | None, k: int, max_pairs: int,
                    seed: int, support: bool = False):
    """The six STATISTICS of the rows ``idx`` (all rows if None), in STATISTICS order; with
    ``support`` also what each rests on: trials (correlations), groups where one hyperparameter
    varies (granulated Kendall), ordered pairs (conditional MI), one-factor pairs (sign-error)."""
    mu = p.mu if idx is None else p.mu[idx]
    g = p.g if idx is None else p.g[idx]
    cf = _configs(p, idx)
    pairs = _one_factor_pairs(cf)
    gk, cmi, se = _granulated(cf, pairs), _cmi(cf, k, max_pairs, seed), _sign_error(cf, pairs)
    values = np.array([pearson(mu, g), spearman(mu, g), kendall(mu, g), gk.value, cmi.value,
                       se.value])
    if not support:
        return values
    n = int(np.count_nonzero(~(np.isnan(mu) | np.isnan(g))))
    return values, [n, n, n, sum(gk.n_groups.values()), cmi.n_pairs, sum(se.n_pairs.values())]


def _group_label(v) -> str:
    return "null" if pd.isna(v) else str(v)


def statistics_table(df: pd.DataFrame, measures: Sequence[str] = MEASURES,
                     target: str = "gen_gap", by: str | None = "dataset", n_boot: int = 200,
                     seed: int = 0, *, hyperparameters: Sequence[str] = HYPERPARAMETERS,
                     level: float = 0.95, k: int = 2, max_pairs: int = MAX_PAIRS,
                     boot_max_pairs: int = MAX_PAIRS // 10) -> pd.DataFrame:
    """Every statistic of every measure against ``target``, in long form.

    One row per (group, measure, statistic): ``group`` is "all" and, when ``by`` has several
    values, each value of ``by`` (as a string; "null" for a missing value); ``statistic`` one of
    STATISTICS (pearson, spearman, kendall over trial rows; granulated_kendall, conditional_mi,
    sign_error over seed-averaged configurations, see their functions); ``value`` on the group's
    rows whose measure and target are not NaN (``n_trials`` rows, ``n_configs``
    configurations; ``n_used`` what the statistic rests on: trials for the correlations, groups
    where one hyperparameter varies for granulated_kendall, ordered pairs for conditional_mi,
    one-factor pairs for sign_error); ``ci_low``/``ci_high`` the ``bootstrap_ci`` interval at ``level`` (all six
    statistics from the same resamples; ``numpy.random.default_rng(seed)`` afresh for each
    group and measure, so a measure's interval does not depend on the other measures) and
    ``ci_method`` "seeds" or "trials". Measures absent from ``df`` or all-NaN in a group are
    skipped. The conditional MI of a bootstrap replicate samples at most ``boot_max_pairs``
    ordered pairs (its estimate: ``max_pairs``): the pair sampling is nearly all of a
    replicate's cost at 10^5 trials, and 2*10^5 pairs add little noise to an interval."""
    _check_columns(df, [target], "target")
    _check_columns(df, hyperparameters, "hyperparameters")
    if k < 1:
        raise ValueError(f"k: {k}; allowed: an integer >= 1")
    boot_pairs = min(max_pairs, boot_max_pairs)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level}; allowed: 0 < level < 1")
    groups = [("all", df)]
    if by is not None:
        _check_columns(df, [by], "by")
        codes, uniques = pd.factorize(df[by], use_na_sentinel=False)
        if len(uniques) > 1:
            parts = [(_group_label(u), df[codes == c]) for c, u in enumerate(uniques)]
            groups += sorted(parts, key=lambda t: t[0])
    rows = []
    for label, part in groups:
        for measure in measures:
            if measure not in part.columns:
                continue
            p = _prepare(part, measure, target, hyperparameters)
            if p.n == 0:
                continue
            est, used = _all_statistics(p, None, k, max_pairs, seed, support=True)
            method, draws = _bootstrap_indices(p.seed_codes, p.n, n_boot, seed)
            reps = np.array([_all_statistics(p, idx, k, boot_pairs, seed) for idx in draws])
            low, high, _ = _percentiles(reps.reshape(n_boot, len(STATISTICS)), level)
            for s, name in enumerate(STATISTICS):
                rows.append((label, measure, target, name, est[s], low[s], high[s], method,
                             p.n, p.cfg_codes.shape[0], used[s]))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.astype({"value": float, "ci_low": float, "ci_high": float,
                         "n_trials": np.int64, "n_configs": np.int64, "n_used": np.int64})


def write_table(table: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.parquet`` (parent directories created); returns both."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv = stem.with_name(stem.name + ".csv")
    parquet = stem.with_name(stem.name + ".parquet")
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return csv, parquet
