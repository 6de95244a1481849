"""Statistics that judge a sensitivity measure against the generalization gap.

Input: a results table such as ``analysis.load.load_results`` gives (one row per trial), already
filtered by the caller (status ok, 100% train accuracy). Per measure, rows whose measure or
target is NaN are dropped; +-inf are values (larger / smaller than every finite one). No
statistic turns a NaN into a number: what is undefined is NaN.

- ``pearson``, ``spearman``, ``kendall`` (Kendall's tau-b): over trial rows, computed by
  ``scipy.stats`` (Novak et al. 2018 §4.3 show the relation of the Jacobian norm with the gap
  across trials as scatter plots; these put a number on it).
- ``granulated_kendall``: Jiang et al. 2019, "Fantastic generalization measures and where to
  find them", Eq. 2-3 (Psi).
- ``conditional_mutual_information``: Jiang et al. 2019 (the conditional-independence
  criterion) and the PGDL competition scoring (Jiang et al. 2020), normalized and minimized over
  conditioning sets of size k, counted over all ordered pairs of configurations.
- ``sign_error``: Dziugaite et al. 2020, "In search of robust measures of generalization":
  the mean and the robust (worst-case) sign-error over environments, pairs of configurations
  that differ in exactly one hyperparameter, with every seed of one against every seed of the
  other; optionally with the paper's Monte-Carlo noise filter.
- ``bootstrap_ci``: percentile interval from resampling whole seeds (or trials, with one seed).
- ``statistics_table`` / ``write_table``: all of the above in long form, CSV + Parquet.

A *configuration* is one value of every hyperparameter (``hyperparameter_columns``: the table's
own columns less the seed, the outcome and bookkeeping columns of the result schema, and the
measure and target in use; the same declaration serves the figures); its measure and target are
the means over the trials (seeds) that share it. A null hyperparameter value (e.g.
``batch_size`` of the full-batch L-BFGS) is a value of its own; a hyperparameter with a single
value in the data contributes nothing and is skipped.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from workers.results.hyperparameters import STATISTICS_HYPERPARAMETERS
from workers.results.record import SUMMARY_COLUMNS

# The result schema's hyperparameter columns (workers.results.hyperparameters, declared once: everything
# that defines a trained network but the seed and the test-set size). Every other summary column
# is an outcome or bookkeeping: NOT_HYPERPARAMETERS.
HYPERPARAMETERS = list(STATISTICS_HYPERPARAMETERS)
NOT_HYPERPARAMETERS = tuple(c for c in SUMMARY_COLUMNS if c not in HYPERPARAMETERS)
STATISTICS = ("pearson", "spearman", "kendall", "granulated_kendall", "conditional_mi",
              "sign_error", "robust_sign_error")
# statistics_table: (trials + FIXED_COST_TRIALS) x measures x (replicates + 1) from which it runs
# in processes; an evaluation costs about as much as this many trials even on a tiny table
# (the conditioning sets' small histograms, scipy's calls)
PARALLEL_ABOVE = 500_000
FIXED_COST_TRIALS = 200
TABLE_COLUMNS = ["group", "measure", "sign", "target", "statistic", "value", "ci_low", "ci_high",
                 "ci_method", "n_trials", "n_configs", "n_used", "rank", "better", "n_seeds",
                 "few_seeds"]
# An interval resampled over fewer seeds than this has only a handful of distinct resamples
# (2 seeds: 3 of them): ``few_seeds`` marks it (the paper used 8 seeds)
FEW_SEEDS = 5
# Rank order of each statistic of sign * measure: True where larger is better (it agrees more with
# the gap), False where smaller is (the sign-errors, 0 = every pair ordered as the gap).
LARGER_IS_BETTER = {"pearson": True, "spearman": True, "kendall": True,
                    "granulated_kendall": True, "conditional_mi": True, "sign_error": False,
                    "robust_sign_error": False}


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


# ---------------------------------------------------------------------------------------------
# Correlations over trial rows (scipy.stats)


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


def _sgn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sign(b - a) from comparisons, so that inf vs inf is a tie (0) as in scipy's ranks."""
    return (b > a).astype(np.int8) - (b < a).astype(np.int8)


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


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(df[column], errors="raise").to_numpy(dtype=float, na_value=np.nan)


def _prepare(df: pd.DataFrame, measure: str, target: str,
             hyperparameters: Sequence[str] | None) -> _Prepared:
    _check_columns(df, [measure, target], "measure/target")
    if hyperparameters is None:
        hyperparameters = hyperparameter_columns(df, exclude=[measure, target])
    _check_columns(df, hyperparameters, "hyperparameters")
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


# ---------------------------------------------------------------------------------------------
# Granulated Kendall (Jiang et al. 2019, Eq. 2-3)


@dataclass(frozen=True)
class GranulatedKendall:
    """Psi = ``value``; ``psi[i]`` per hyperparameter i that has a group of >= 2
    configurations; ``n_groups[i]`` the groups each psi_i averages; ``n_configs``
    seed-averaged configurations."""

    value: float
    psi: dict[str, float]
    n_groups: dict[str, int]
    n_configs: int


def _granulated(cf: _Configs, pairs) -> GranulatedKendall:
    psi, n_groups = {}, {}
    for name, (a, b, lab) in zip(cf.names, pairs):
        if a.size == 0:
            continue
        s = _sgn(cf.mu[a], cf.mu[b]).astype(float) * _sgn(cf.g[a], cf.g[b])
        k = int(lab.max()) + 1
        num = np.bincount(lab, weights=s, minlength=k)
        n_pairs = np.bincount(lab, minlength=k)
        has = n_pairs > 0  # groups of >= 2 configurations (all of their pairs are listed)
        # ordered pairs a != b: the sum counts each unordered pair twice, as does n (n - 1)
        psi[name] = float((num[has] / n_pairs[has]).mean())
        n_groups[name] = int(has.sum())
    value = float(np.mean(list(psi.values()))) if psi else math.nan
    return GranulatedKendall(value, psi, n_groups, int(cf.mu.size))


def granulated_kendall(df: pd.DataFrame, measure: str, target: str = "gen_gap",
                       hyperparameters: Sequence[str] | None = None) -> GranulatedKendall:
    """Granulated Kendall coefficient Psi (Jiang et al. 2019, "Fantastic generalization
    measures and where to find them", Eq. 2-3).

    Trials are first averaged over seeds into configurations theta (mean measure mu(theta),
    mean target g(theta)). For hyperparameter i, the configurations are grouped by the values
    of all *other* hyperparameters; in each group of n >= 2 configurations (so >= 2 values of i)

        tau_group = 1 / (n (n - 1)) * sum over ordered pairs a != b of
                    sign(mu_a - mu_b) * sign(g_a - g_b),

    Jiang et al.'s tau: a tie in either contributes 0 and the denominator counts every pair (so
    a group whose measure or target is constant gives tau = 0; it is not skipped). This is not
    tau-b, which divides by the untied pairs only. psi_i = mean of tau over every group with
    >= 2 configurations; Psi = mean of psi_i over the hyperparameters that have such a group
    (every varying one on a complete grid). NaN when none has. ``hyperparameters``: default
    ``hyperparameter_columns(df, exclude=[measure, target])``."""
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _granulated(cf, _one_factor_pairs(cf))


# ---------------------------------------------------------------------------------------------
# Sign error (Dziugaite et al. 2020)


@dataclass(frozen=True)
class SignError:
    """``value``: mean sign-error over environments (pairs of configurations that differ in one
    hyperparameter); ``robust``: the largest environment's error (the robust sign-error), found
    in an environment that varies ``robust_hyperparameter``; ``per_hyperparameter[i]`` the mean
    over environments that vary i; ``n_environments[i]`` their number (with the noise filter:
    those with a positive weight); ``n_run_pairs`` pairs of trials compared in all."""

    value: float
    robust: float
    robust_hyperparameter: str | None
    per_hyperparameter: dict[str, float]
    n_environments: dict[str, int]
    n_run_pairs: int
    n_configs: int


def hoeffding_weight(delta_gap: np.ndarray, m: np.ndarray | float) -> np.ndarray:
    """Dziugaite et al. 2020's Monte-Carlo noise weight of a pair of runs whose gaps differ by
    ``delta_gap``, each estimated on ``m`` test points: by Hoeffding's inequality each estimate
    lies within |delta|/2 of its mean with probability >= 1 - 2 exp(-2 m (delta/2)^2), so both
    do (and the sign of the difference is right) with probability >= w = max(0, that)^2. The
    pair then enters with weight (w - 1/2)_+: pairs below 1/2 are discarded, as the authors'
    code does."""
    d = np.abs(np.asarray(delta_gap, dtype=float))
    w = np.maximum(0.0, 1.0 - 2.0 * np.exp(-2.0 * np.asarray(m, dtype=float) * (d / 2.0) ** 2)) ** 2
    return np.maximum(w - 0.5, 0.0)


def _run_pairs(counts: np.ndarray, first: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Every (row of configuration a_e, row of configuration b_e) for every environment e:
    (environment, row in a, row in b), rows numbered in configuration order."""
    na, nb = counts[a], counts[b]
    per = na * nb
    env = np.repeat(np.arange(a.size), per)
    off = np.arange(env.size) - np.repeat(np.cumsum(per) - per, per)
    return env, first[a][env] + off // nb[env], first[b][env] + off % nb[env]


MIN_ESS = 12.0  # the noise filter's minimum effective sample size per environment


class _RunPairs:
    """Every environment's pairs of runs (rows in configuration order), per hyperparameter,
    with the target's sign on each: they depend on the configurations and the target only."""

    def __init__(self, cf: _Configs, pairs):
        self.order = np.argsort(cf.row_cfg, kind="stable")
        counts = np.bincount(cf.row_cfg, minlength=cf.mu.size)
        first = np.cumsum(counts) - counts
        g = cf.row_g[self.order]
        self.per = []
        for a, b, _ in pairs:
            env, ra, rb = _run_pairs(counts, first, a, b)
            self.per.append((env, ra, rb, _sgn(g[ra], g[rb])))


def _sign_error(cf: _Configs, pairs, noise_filter: bool | float = False,
                min_ess: float = MIN_ESS, runs: _RunPairs | None = None) -> SignError:
    if noise_filter is True and cf.row_test is None:
        raise ValueError("noise_filter=True needs a test_size column (test points behind each "
                         "gap); pass noise_filter=<number of test points> instead")
    runs = runs if runs is not None else _RunPairs(cf, pairs)
    order = runs.order
    mu, g = cf.row_mu[order], cf.row_g[order]
    if noise_filter is not False:
        m = (cf.row_test[order] if noise_filter is True
             else np.full(mu.size, float(noise_filter)))
    per, n_env, errs, names_of = {}, {}, [], []
    n_run_pairs = 0
    for name, (a, b, _), (env, ra, rb, sg) in zip(cf.names, pairs, runs.per):
        if a.size == 0:
            continue
        err = (1.0 - _sgn(mu[ra], mu[rb]).astype(float) * sg) / 2.0
        if noise_filter is False:
            w = np.ones(env.size)
        else:
            w = hoeffding_weight(g[rb] - g[ra], np.minimum(m[ra], m[rb]))
        wsum = np.bincount(env, weights=w, minlength=a.size)
        used = wsum > 0  # with the noise filter, environments whose pairs all got weight 0 go
        if noise_filter is not False:  # ... and those resting on too few effective pairs
            w2 = np.bincount(env, weights=w * w, minlength=a.size)
            with np.errstate(invalid="ignore", divide="ignore"):
                used &= wsum ** 2 / w2 >= min_ess
        e = np.bincount(env, weights=w * err, minlength=a.size)[used] / wsum[used]
        n_run_pairs += int(np.count_nonzero(w))
        if e.size == 0:
            continue
        per[name], n_env[name] = float(e.mean()), int(e.size)
        errs.append(e)
        names_of.append(name)
    if not errs:
        return SignError(math.nan, math.nan, None, {}, {}, 0, int(cf.mu.size))
    worst = [float(e.max()) for e in errs]
    k = int(np.argmax(worst))
    return SignError(float(np.concatenate(errs).mean()), worst[k], names_of[k], per, n_env,
                     n_run_pairs, int(cf.mu.size))


def sign_error(df: pd.DataFrame, measure: str, target: str = "gen_gap",
               hyperparameters: Sequence[str] | None = None,
               noise_filter: bool | float = False, min_ess: float = MIN_ESS) -> SignError:
    """Sign-error over single-hyperparameter interventions (Dziugaite et al. 2020, "In search of
    robust measures of generalization", NeurIPS 2020: the sign-error loss and the robust
    sign-error of its coupled-network experiments).

    An environment e is a pair of configurations (theta, theta') that differ in exactly ONE
    hyperparameter. Its sign-error is the expectation over pairs of runs, every trial (seed) of
    theta with every trial of theta',

        err(e) = E[(1 - sign(mu' - mu) * sign(g' - g)) / 2]

    (0: the measure orders the two runs like the target, 1: the other way, 1/2: a tie on either
    side). ``value`` = the mean of err(e) over all environments; ``robust`` = the robust
    sign-error, max over environments (the paper's sup over the family of environments).
    ``noise_filter`` (default off): the paper's Monte-Carlo noise filter, weighting each pair of
    runs by ``hoeffding_weight`` of its gap difference (err(e) becomes the weighted mean), and,
    as the authors' code does, leaving out environments whose effective sample size
    (sum w)^2 / sum w^2 is below ``min_ess`` (12; with 3 seeds an environment has at most 9
    pairs of runs, so the filter needs 4 or more seeds per configuration); ``True`` takes the
    test points behind each gap from the ``test_size`` column (the smaller of the two runs), a
    number sets them. NaN when there is no environment. Environments are found by grouping
    configurations on all-but-one hyperparameter, never by looping over all pairs."""
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _sign_error(cf, _one_factor_pairs(cf), noise_filter, min_ess)


# ---------------------------------------------------------------------------------------------
# Conditional mutual information (Jiang et al. 2019; PGDL 2020 scoring), counted exactly
#
# Over all n^2 ordered pairs (i, j) of configurations the outcome is (V_g, V_mu) =
# ([g_i > g_j], [mu_i > mu_j]) and the cell under a conditioning set S is (class_S(i),
# class_S(j)). Per pair of classes (A, B) the four outcome counts follow from
#     N_AB = |A| |B|,  G_AB = #{g_i > g_j},  M_AB = #{mu_i > mu_j},  GM_AB = #{both}
# (i in A, j in B): t(1,1) = GM, t(1,0) = G - GM, t(0,1) = M - GM, t(0,0) = N - G - M + GM.
# G and M are one-dimensional counts (one pass in sorted order with a running histogram of the
# classes below, analysis.kernels.count_below); GM is a two-dimensional dominance count (a
# merge sort over the g-order by mu that counts the pairs split at each level,
# analysis.kernels.count_dominated). Every conditioning set is counted in the same pass, and
# nothing enumerates the n^2 pairs: O(n log n * sum of the sets' class counts). G depends on the
# target and the configurations only and is shared by every measure over them (`_Shared`).


class _SetClasses:
    """Each configuration's class under each conditioning set, laid out for the kernels: the
    sets' (K, K) blocks one after another in a flat count array (``off``), their running
    histograms likewise (``hoff``)."""

    def __init__(self, codes: np.ndarray, levels: np.ndarray, sets: Sequence[tuple[int, ...]]):
        self.sets = tuple(sets)
        n = codes.shape[0]
        self.k = np.array([math.prod(int(levels[c]) for c in s) for s in sets], dtype=np.int64)
        if (self.k * self.k).sum() >= 2**31:
            raise ValueError(f"conditional MI: {int((self.k * self.k).sum())} cells; at most "
                             f"{2**31 - 1} (fewer hyperparameter values or a smaller k)")
        self.off = np.concatenate([[0], np.cumsum(self.k * self.k)]).astype(np.int64)
        self.hoff = np.concatenate([[0], np.cumsum(self.k)]).astype(np.int64)
        self.cls = np.zeros((n, len(sets)), dtype=np.int32)
        for q, s in enumerate(sets):
            c = np.zeros(n, dtype=np.int64)
            for col in s:
                c = c * int(levels[col]) + codes[:, col]
            self.cls[:, q] = c
        self.base = (self.off[:-1][None, :] + self.cls * self.k[None, :]).astype(np.int32)
        self.size = {s: np.bincount(self.cls[:, q], minlength=int(self.k[q])).astype(np.float64)
                     for q, s in enumerate(sets)}

    def below(self, rank: np.ndarray) -> np.ndarray:
        """Flat counts, per set and classes (a, b): pairs i in a, j in b with rank_j < rank_i."""
        out = np.zeros(int(self.off[-1]), dtype=np.int64)
        _kernels().count_below(rank, self.base, self.cls, self.k, self.hoff, out)
        return out

    def dominated(self, rg: np.ndarray, rm: np.ndarray) -> np.ndarray:
        """Flat counts, per set and classes (a, b): pairs i in a, j in b with rg_j < rg_i and
        rm_j < rm_i."""
        out = np.zeros(int(self.off[-1]), dtype=np.int64)
        _kernels().count_dominated(rg, rm, self.base, self.cls, self.k, self.hoff, out)
        return out

    def outcomes(self, g_below: np.ndarray, m_below: np.ndarray, both: np.ndarray) -> dict:
        """Per set s: (K * K, 4) float64 (exact integers), per cell (class of i, class of j)
        the ordered pairs with outcome 2 V_g + V_mu; empty classes give empty cells."""
        out = {}
        for q, s in enumerate(self.sets):
            a, b = self.off[q], self.off[q + 1]
            n_ab = np.outer(self.size[s], self.size[s]).ravel()
            g_ab, m_ab, gm_ab = (x[a:b].astype(np.float64) for x in (g_below, m_below, both))
            out[s] = np.stack([n_ab - g_ab - m_ab + gm_ab, m_ab - gm_ab, g_ab - gm_ab, gm_ab],
                              axis=-1)
        return out


def _kernels():
    from analysis import kernels

    return kernels


def _dense_rank(x: np.ndarray) -> np.ndarray:
    return _kernels().dense_rank(np.ascontiguousarray(x, dtype=np.float64))


def _pair_counts(mu: np.ndarray, g: np.ndarray, codes: np.ndarray, levels: np.ndarray,
                 sets: Sequence[tuple[int, ...]]) -> dict:
    """The exact four outcome counts of every pair of classes under each conditioning set
    (tuples of columns of ``codes``), over the configurations (mu, g): per set (K * K, 4), see
    ``_SetClasses.outcomes``."""
    sc = _SetClasses(codes, levels, sets)
    rg, rm = _dense_rank(g), _dense_rank(mu)
    return sc.outcomes(sc.below(rg), sc.below(rm), sc.dominated(rg, rm))


class _Shared:
    """What every measure over the same configurations (same rows, so the same seed-averaged
    target and hyperparameters) shares, built once: the one-factor pairs, the environments'
    pairs of runs, the conditioning sets' classes and G's counts."""

    def __init__(self, cf: _Configs):
        self.cf = cf
        self.pairs = _one_factor_pairs(cf)
        self._runs = None
        self._target = {}

    def matches(self, cf: _Configs) -> bool:
        return (cf.names == self.cf.names and np.array_equal(cf.codes, self.cf.codes)
                and np.array_equal(cf.g, self.cf.g)
                and np.array_equal(cf.row_cfg, self.cf.row_cfg))

    def runs(self) -> _RunPairs:
        if self._runs is None:
            self._runs = _RunPairs(self.cf, self.pairs)
        return self._runs

    def granulated_parts(self) -> list:
        """Per hyperparameter with one-factor pairs: (name, a, b, group label, the target's
        sign on each pair, pairs per group, groups with a pair)."""
        out = []
        for name, (a, b, lab) in zip(self.cf.names, self.pairs):
            if a.size:
                n_pairs = np.bincount(lab, minlength=int(lab.max()) + 1)
                sg = _sgn(self.cf.g[a], self.cf.g[b]).astype(np.float64)
                out.append((name, a, b, lab, sg, n_pairs, n_pairs > 0))
        return out

    def sign_error_parts(self) -> list:
        """Per hyperparameter with environments: (environment of each pair of runs, its rows a
        and b, the target's sign, pairs per environment, environments with a pair)."""
        out = []
        for (a, _, _), (env, ra, rb, sg) in zip(self.pairs, self.runs().per):
            if a.size:
                wsum = np.bincount(env, minlength=a.size).astype(np.float64)
                out.append((env, ra, rb, sg.astype(np.float64), wsum, wsum > 0))
        return out

    def target_counts(self, sets: Sequence[tuple[int, ...]]):
        """The sets' classes, g's dense ranks and G's counts (flat), made once per sets."""
        sets = tuple(sets)
        if sets not in self._target:
            sc = _SetClasses(self.cf.codes, self.cf.levels, sets)
            rg = _dense_rank(self.cf.g)
            self._target[sets] = (sc, rg, sc.below(rg))
        return self._target[sets]


@dataclass(frozen=True)
class ConditionalMI:
    """``value`` = min over conditioning sets S of the normalized CMI ``per_set[S]`` (NaN where
    undefined), attained at ``argmin``; ``n_pairs`` ordered pairs counted (n^2, all of them);
    ``n_configs`` seed-averaged configurations."""

    value: float
    per_set: dict[tuple[str, ...], float]
    argmin: tuple[str, ...] | None
    n_pairs: int
    n_configs: int


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x log x element-wise, 0 at x = 0 (scipy.special.xlogy), float64."""
    from scipy.special import xlogy

    x = np.asarray(x, dtype=np.float64)
    return xlogy(x, x)


def _normalized_cmi(t: np.ndarray) -> float:
    """I(V_mu; V_g | U) / H(V_g | U) from integer counts t[u, 2 V_g + V_mu]. With
    F(c) = sum c log c over the given cells and N pairs,

        N I = F(n_u) - F(n_ug) - F(n_um) + F(n_ugm),   N H = F(n_u) - F(n_ug)

    (natural log; the ratio does not depend on the base; empty cells add nothing). NaN where
    H(V_g | U) = 0, i.e. where every cell holds a single value of V_g (checked on the counts)."""
    g0, g1 = t[:, 0] + t[:, 1], t[:, 2] + t[:, 3]
    m0, m1 = t[:, 0] + t[:, 2], t[:, 1] + t[:, 3]
    if not (np.minimum(g0, g1) > 0).any():
        return math.nan
    f = _xlogx(np.stack([g0 + g1, g0, g1, m0, m1])).sum(axis=1)
    f_u, f_g = f[0], f[1] + f[2]
    info = f_u - f_g - f[3] - f[4] + _xlogx(t).sum()
    return float(np.clip(info / (f_u - f_g), 0.0, 1.0))


def _cmi(cf: _Configs, k: int, shared: _Shared | None = None) -> ConditionalMI:
    n_cfg, h = cf.codes.shape
    if n_cfg < 2 or h == 0:
        return ConditionalMI(math.nan, {}, None, n_cfg * n_cfg, n_cfg)
    sets = list(itertools.combinations(range(h), min(k, h)))
    if shared is None:
        counts = _pair_counts(cf.mu, cf.g, cf.codes, cf.levels, sets)
    else:
        sc, rg, g_below = shared.target_counts(sets)
        rm = _dense_rank(cf.mu)
        counts = sc.outcomes(g_below, sc.below(rm), sc.dominated(rg, rm))
    per_set = {tuple(cf.names[c] for c in s): _normalized_cmi(counts[s]) for s in sets}
    defined = {s: v for s, v in per_set.items() if not math.isnan(v)}
    argmin = min(defined, key=defined.get) if defined else None
    value = defined[argmin] if defined else math.nan
    return ConditionalMI(value, per_set, argmin, n_cfg * n_cfg, n_cfg)


def conditional_mutual_information(df: pd.DataFrame, measure: str, target: str = "gen_gap",
                                   hyperparameters: Sequence[str] | None = None,
                                   k: int = 2) -> ConditionalMI:
    """Normalized conditional mutual information, minimized over conditioning sets
    (Jiang et al. 2019, the conditional-independence criterion; the PGDL competition score,
    Jiang et al. 2020).

    Over pairs (theta_1, theta_2) of seed-averaged configurations:

        V_g = 1[g(theta_1) > g(theta_2)],   V_mu = 1[mu(theta_1) > mu(theta_2)],
        U_S = (values of the hyperparameters in S in theta_1, the same in theta_2),
        I~_S = I(V_mu; V_g | U_S) / H(V_g | U_S),
        I(V_mu; V_g | U) = sum_u p(u) sum_{a,b} p(a,b|u) log p(a,b|u) / (p(a|u) p(b|u)),
        H(V_g | U) = -sum_u p(u) sum_a p(a|u) log p(a|u),

    and the score is min over S with |S| = k (k = 2; all varying hyperparameters if fewer)
    of I~_S, in [0, 1]. Only hyperparameters that vary among the configurations form S.

    Every one of the n^2 ordered pairs is counted, exactly, at any n (the four outcome counts
    of each pair of cells follow from sorting and dominance counting; no pair is enumerated or
    sampled), so the plug-in estimate carries no sampling bias.

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
    direction of the relation: mu and -mu score the same."""
    if k < 1:
        raise ValueError(f"k: {k}; allowed: an integer >= 1")
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _cmi(cf, k)


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


class _JobRows:
    """What every evaluation of one job (the measures of a group with the same rows) shares,
    made once: the measures side by side (n, M), the target's dense ranks and sort order, and
    each measure's sort order (by value, then the target's rank). A bootstrap replicate is then
    a weight per row (how often it was drawn) for the correlations, which need no sorting."""

    def __init__(self, ps: Sequence[_Prepared]):
        p0 = ps[0]
        self.ps = ps
        self.mu = np.ascontiguousarray(np.stack([p.mu for p in ps], axis=1), dtype=np.float64)
        self.g = np.ascontiguousarray(p0.g, dtype=np.float64)
        self.row_cfg = np.ascontiguousarray(p0.row_cfg, dtype=np.int64)
        self.yrank = _dense_rank(self.g)
        self.n_yrank = int(self.yrank.max()) + 1 if self.g.size else 0
        self.yorder, self.yties = self._order(self.g, None)
        self.xorder, self.xties = zip(*(self._order(p.mu, self.yrank) for p in ps)) \
            if p0.n else ((), ())

    @staticmethod
    def _order(x: np.ndarray, then: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        o = np.argsort(x, kind="stable") if then is None else np.lexsort((then, x))
        ties = np.zeros(x.size, dtype=np.bool_)
        ties[:-1] = x[o][1:] == x[o][:-1]
        return o.astype(np.int64), ties


def _replicate_statistics(job: _JobRows, idx: np.ndarray | None, k: int,
                          support: bool) -> list | None:
    """``_all_statistics`` of every measure of ``job`` at once (no noise filter): the seed
    means of all measures in one pass, the correlations from row weights, the granulated
    Kendall's, sign-error's and conditional MI's counts in compiled loops. None where a
    configuration's mean is NaN for some measures only (+inf and -inf among its seeds): the
    caller then takes each measure on its own."""
    kern = _kernels()
    ps = job.ps
    n = ps[0].n
    rows = np.arange(n, dtype=np.int64) if idx is None else np.asarray(idx, dtype=np.int64)
    cnt, g_sum, mu_sum = kern.config_sums(rows, job.row_cfg, job.g, job.mu,
                                          ps[0].cfg_codes.shape[0])
    present = (cnt > 0) & ~np.isnan(g_sum)
    if np.isnan(mu_sum[present]).any():
        return None
    cf = _configs(ps[0], idx)
    shared = _Shared(cf)
    w = np.bincount(rows, minlength=n).astype(np.int64)
    yavg = kern.average_ranks(job.yorder, job.yties, w)
    c = cnt[present].astype(np.float64)
    keep = present[ps[0].row_cfg[rows]]
    runs = shared.runs()
    run_rows = rows[keep][runs.order]
    gk_parts, se_parts = shared.granulated_parts(), shared.sign_error_parts()
    n_cfg, h = cf.codes.shape
    sets = list(itertools.combinations(range(h), min(k, h))) if n_cfg >= 2 and h else []
    out = []
    for m, p in enumerate(ps):
        pear, spear, kend = kern.correlations(p.mu, job.xorder[m], job.xties[m], job.g,
                                              job.yrank, job.n_yrank, yavg, w)
        mu_c = mu_sum[present, m] / c
        psi, n_groups = {}, {}
        for name, a, b, lab, sg, n_pairs, has in gk_parts:
            num = kern.pair_signs(mu_c, a, b, sg, lab, n_pairs.size)
            psi[name] = float((num[has] / n_pairs[has]).mean())
            n_groups[name] = int(has.sum())
        gk = float(np.mean(list(psi.values()))) if psi else math.nan
        mu_run = np.ascontiguousarray(job.mu[run_rows, m])
        errs, worst = [], []
        for env, ra, rb, sg, wsum, used in se_parts:
            e = kern.run_errors(mu_run, ra, rb, sg, env, wsum.size)[used] / wsum[used]
            if e.size:
                errs.append(e)
                worst.append(float(e.max()))
        se = float(np.concatenate(errs).mean()) if errs else math.nan
        robust = max(worst) if worst else math.nan
        cmi = _cmi(_with_mu(cf, mu_c), k, shared).value if sets else math.nan
        values = np.array([pear, spear, kend, gk, cmi, se, robust])
        if not support:
            out.append(values)
            continue
        n_env = sum(int(used.sum()) for *_, used in se_parts)
        out.append((values, [int(rows.size)] * 3 + [sum(n_groups.values()), n_cfg * n_cfg,
                                                      n_env, n_env]))
    return out


def _with_mu(cf: _Configs, mu: np.ndarray) -> _Configs:
    return replace(cf, mu=mu)


def _all_statistics(ps: Sequence[_Prepared], idx: np.ndarray | None, k: int,
                    noise_filter: bool | float = False, support: bool = False,
                    job: _JobRows | None = None) -> list:
    """The STATISTICS of the rows ``idx`` (all rows if None), in STATISTICS order, for each of
    the measures ``ps`` (prepared from the same rows: what depends on the configurations and
    the target alone is computed once); with ``support`` also what each rests on: trials
    (correlations), groups where one hyperparameter varies (granulated Kendall), ordered pairs
    (conditional MI), environments (sign-error). ``job``: ``ps``'s ``_JobRows``, to share
    its sorting between calls."""
    if noise_filter is False and ps and ps[0].n:
        fast = _replicate_statistics(job or _JobRows(ps), idx, k, support)
        if fast is not None:
            return fast
    return _each_statistics(ps, idx, k, noise_filter, support)


def _each_statistics(ps: Sequence[_Prepared], idx: np.ndarray | None, k: int,
                     noise_filter: bool | float = False, support: bool = False) -> list:
    """``_all_statistics`` measure by measure, through the statistics' own functions (scipy's
    correlations; the noise filter; a configuration whose mean is NaN for some measures)."""
    out, shared = [], None
    for p in ps:
        mu = p.mu if idx is None else p.mu[idx]
        g = p.g if idx is None else p.g[idx]
        cf = _configs(p, idx)
        if shared is None or not shared.matches(cf):
            shared = _Shared(cf)
        gk, cmi = _granulated(cf, shared.pairs), _cmi(cf, k, shared)
        se = _sign_error(cf, shared.pairs, noise_filter, runs=shared.runs())
        values = np.array([pearson(mu, g), spearman(mu, g), kendall(mu, g), gk.value,
                           cmi.value, se.value, se.robust])
        if not support:
            out.append(values)
            continue
        n = int(mu.size)
        n_env = sum(se.n_environments.values())
        out.append((values, [n, n, n, sum(gk.n_groups.values()), cmi.n_pairs, n_env, n_env]))
    return out


_QUEUE = None  # in a worker process: where each evaluation's measure count goes (progress)


def _worker_start(queue) -> None:
    """A worker process: one BLAS thread; the progress queue (or None)."""
    global _QUEUE
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _QUEUE = queue


def _evaluations(ps: Sequence[_Prepared], n_boot: int, seed: int, k: int, noise_filter,
                 first: int, stop: int,
                 report: Callable[[int], None] | None = None) -> tuple[str, dict[int, list]]:
    """Evaluations ``first`` .. ``stop - 1`` of one job: 0 is the estimate (with support),
    r >= 1 the r-th bootstrap replicate (draws from ``numpy.random.default_rng(seed)`` afresh,
    so a job gives the same numbers in any process and in any number of parts). ``report``:
    called with the number of measures after each evaluation (in a worker process they go to
    the progress queue, if any)."""
    method, draws = _bootstrap_indices(ps[0].seed_codes, ps[0].n, n_boot, seed)
    job = _JobRows(ps) if noise_filter is False and ps[0].n else None
    out = {}
    for r, idx in enumerate(itertools.chain([None], draws)):
        if r >= stop:
            break
        if r >= first:
            out[r] = _all_statistics(ps, idx, k, noise_filter, support=r == 0, job=job)
            if report is not None:
                report(len(ps))
            elif _QUEUE is not None:
                _QUEUE.put(len(ps))
    return method, out


def _same_rows(p: _Prepared, q: _Prepared) -> bool:
    def same(a, b):
        return (a is None) == (b is None) and (a is None or np.array_equal(a, b, equal_nan=True))

    return (p.n == q.n and p.names == q.names and np.array_equal(p.levels, q.levels)
            and all(same(a, b) for a, b in ((p.g, q.g), (p.row_cfg, q.row_cfg),
                                             (p.cfg_codes, q.cfg_codes),
                                             (p.seed_codes, q.seed_codes),
                                             (p.test_size, q.test_size))))


def _group_label(v) -> str:
    return "null" if pd.isna(v) else str(v)


def statistics_table(df: pd.DataFrame, measures: Sequence[str] | None = None,
                     target: str = "gen_gap", by: str | None = "dataset", n_boot: int = 200,
                     seed: int = 0, *, hyperparameters: Sequence[str] | None = None,
                     level: float = 0.95, k: int = 2, noise_filter: bool | float = False,
                     processes: int | None = 1,
                     signs: Mapping[str, int] | None = None,
                     progress: Callable[[int, int, int], None] | None = None) -> pd.DataFrame:
    """Every statistic of every measure against ``target``, in long form.

    Each measure enters as ``sign * measure``, its ``sign`` stated in a column: ``signs`` per
    measure, default ``measure_sign`` (+1, or -1 for a measure expected to fall as the gap grows,
    such as a margin, so that for every row a positive correlation and a small sign-error mean
    "predicts the gap in the expected direction").

    One row per (group, measure, statistic): ``group`` is "all" and, when ``by`` has several
    values, each value of ``by`` (as a string; "null" for a missing value); ``statistic`` one of
    STATISTICS (pearson, spearman, kendall (tau-b) over trial rows; granulated_kendall
    (Jiang et al.'s tau), conditional_mi, sign_error (mean over environments) and
    robust_sign_error (max over environments) over seed-averaged configurations, see their
    functions); ``value`` on the group's rows whose measure and target are not NaN
    (``n_trials`` rows, ``n_configs`` configurations; ``n_used`` what the statistic rests on:
    trials for the correlations, groups where one hyperparameter varies for
    granulated_kendall, ordered pairs for conditional_mi, environments for the sign-errors);
    ``ci_low``/``ci_high`` the ``bootstrap_ci`` interval at ``level`` (all statistics from the
    same resamples; ``numpy.random.default_rng(seed)`` afresh for each group and measure, so a
    measure's interval does not depend on the other measures) and ``ci_method`` "seeds" or
    "trials". Measures absent from ``df`` or all-NaN in a group are skipped.
    ``hyperparameters``: default ``hyperparameter_columns(df, exclude=measures + [target])``,
    the same for every measure. ``noise_filter``: see ``sign_error``. Measures of a
    group whose rows are the same (no NaN in one that the other lacks) share the work that
    depends on the configurations and the target alone (one-factor pairs, the target's order
    counts). ``processes``: each group's n_boot + 1 evaluations run in parts in that many
    spawned processes (default 1: in this process; None: one per core once trials x measures x
    (n_boot + 1) reaches ``PARALLEL_ABOVE``, counting ``FIXED_COST_TRIALS`` more trials per
    evaluation, as ``sweep report`` does). Spawned processes
    import the caller's main module, so a script that asks for more than one needs the
    ``if __name__ == "__main__":`` guard. Every part regenerates its group's draws from the
    seeded generator: the table is the same either way. ``progress(done, total, processes)``:
    called with the evaluations of one measure done so far out of ``total`` (measures x groups
    x (n_boot + 1)) once the estimates are made (in this process, first) and after each
    replicate, for a progress bar and an estimate of the time left."""
    _check_columns(df, [target], "target")
    if measures is None:
        measures = measure_columns(df)
    if hyperparameters is None:
        hyperparameters = hyperparameter_columns(df, exclude=[*measures, target])
    _check_columns(df, hyperparameters, "hyperparameters")
    sign = {m: int((signs or {}).get(m, measure_sign(m))) for m in measures}
    bad = {m: v for m, v in sign.items() if v not in (1, -1)}
    if bad:
        raise ValueError(f"signs: {bad}; allowed: 1 or -1 per measure")
    flip = [m for m in measures if sign[m] < 0 and m in df.columns]
    if flip:
        df = df.assign(**{m: -df[m] for m in flip})
    if k < 1:
        raise ValueError(f"k: {k}; allowed: an integer >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level}; allowed: 0 < level < 1")
    groups = [("all", df)]
    if by is not None:
        _check_columns(df, [by], "by")
        codes, uniques = pd.factorize(df[by], use_na_sentinel=False)
        if len(uniques) > 1:
            parts = [(_group_label(u), df[codes == c]) for c, u in enumerate(uniques)]
            groups += sorted(parts, key=lambda t: t[0])
    jobs = []  # (label, measures, prepared): measures of a group with the same rows share work
    for label, part in groups:
        for measure in measures:
            if measure not in part.columns:
                continue
            p = _prepare(part, measure, target, hyperparameters)
            if not p.n:
                continue
            same = [j for j in jobs if j[0] == label and _same_rows(j[2][0], p)]
            if same:  # the equal arrays as one object: pickled once for a worker process
                q = same[0][2][0]
                same[0][1].append(measure)
                same[0][2].append(replace(p, g=q.g, row_cfg=q.row_cfg, cfg_codes=q.cfg_codes,
                                          levels=q.levels, seed_codes=q.seed_codes,
                                          test_size=q.test_size))
            else:
                jobs.append((label, [measure], [p]))
    if processes is None:  # only where the work outweighs starting interpreters (~1 s each)
        big = sum((j[2][0].n + FIXED_COST_TRIALS) * len(j[1]) for j in jobs) * (n_boot + 1) \
            >= PARALLEL_ABOVE
        processes = (os.cpu_count() or 1) if big else 1
    total = sum(len(j[1]) for j in jobs) * (n_boot + 1)  # evaluations of one measure
    # the estimates (evaluation 0) here, timed; then each job's n_boot replicates in parts:
    # about two per process and job, biggest first
    done = []
    for j, (_, names, ps) in enumerate(jobs):
        done.append(((j, 0, 1), _evaluations(ps, n_boot, seed, k, noise_filter, 0, 1)))
    first = sum(len(j[1]) for j in jobs)
    if progress is not None and jobs:
        progress(first, total, processes)
    n_parts = 1 if processes <= 1 else min(n_boot, 2 * processes)
    cut = np.linspace(1, n_boot + 1, n_parts + 1).round().astype(int)
    tasks = sorted(((j, int(a), int(b)) for j in range(len(jobs))
                    for a, b in zip(cut[:-1], cut[1:]) if b > a),
                   key=lambda t: -jobs[t[0]][2][0].n * len(jobs[t[0]][1]))
    args = [(jobs[j][2], n_boot, seed, k, noise_filter, a, b) for j, a, b in tasks]
    if processes > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, wait

        # spawn, not fork: the caller may hold threads (a Ray driver, BLAS pools); one BLAS
        # thread per process, or the processes' spinning BLAS threads fight over the cores.
        # Each evaluation's measures go back through a queue, for the progress
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue() if progress is not None else None
        with ProcessPoolExecutor(min(processes, len(tasks)), mp_context=ctx,
                                 initializer=_worker_start, initargs=(queue,)) as ex:
            futures = [ex.submit(_evaluations, *a) for a in args]
            count = first
            while queue is not None and not all(f.done() for f in futures):
                wait(futures, timeout=0.5, return_when="FIRST_EXCEPTION")
                while not queue.empty():
                    count += queue.get()
                    progress(count, total, processes)
            done += [(t, f.result()) for t, f in zip(tasks, futures)]
            if queue is not None:
                progress(total, total, processes)
    else:
        count = first

        def one(n_measures: int) -> None:
            nonlocal count
            count += n_measures
            progress(count, total, processes)

        for t, a in zip(tasks, args):
            done.append((t, _evaluations(*a, report=one if progress is not None else None)))
    results: dict[int, dict[int, list]] = {}
    methods: dict[int, str] = {}
    for (j, _, _), (method, evals) in done:
        results.setdefault(j, {}).update(evals)
        methods[j] = method
    rows = {}
    for j, (label, names, ps) in enumerate(jobs):
        ev = results[j]
        for m, (measure, p) in enumerate(zip(names, ps)):
            est, used = ev[0][m]
            reps = np.array([ev[r][m] for r in range(1, n_boot + 1)])
            low, high, _ = _percentiles(reps.reshape(n_boot, len(STATISTICS)), level)
            rows[label, measure] = [
                (label, measure, sign[measure], target, name, est[i], low[i], high[i],
                 methods[j], p.n,
                 p.cfg_codes.shape[0], used[i]) for i, name in enumerate(STATISTICS)]
    parts = [rows[label, m] for label, _ in groups for m in measures if (label, m) in rows]
    table = pd.DataFrame([r for part in parts for r in part], columns=TABLE_COLUMNS[:12])
    table["rank"] = _ranks(table)
    table["better"] = table["statistic"].map(
        lambda s: "larger" if LARGER_IS_BETTER[s] else "smaller")
    seeds = {}
    for label, part in groups:
        for measure in measures:
            if (label, measure) in rows:
                seeds[label, measure] = _n_seeds(part, measure, target)
    table["n_seeds"] = [seeds[g, m] for g, m in zip(table["group"], table["measure"])]
    table["few_seeds"] = (table["ci_method"] == "seeds") & (table["n_seeds"] < FEW_SEEDS)
    return table.astype({"sign": np.int64, "value": float, "ci_low": float, "ci_high": float,
                         "n_trials": np.int64, "n_configs": np.int64, "n_used": np.int64,
                         "n_seeds": np.int64, "few_seeds": bool})


def _n_seeds(part: pd.DataFrame, measure: str, target: str) -> int:
    """Distinct seeds among the rows where ``measure`` and ``target`` are both present (0
    without a ``seed`` column)."""
    if "seed" not in part.columns:
        return 0
    keep = ~(np.isnan(_numeric(part, measure)) | np.isnan(_numeric(part, target)))
    return int(part.loc[keep, "seed"].nunique())


def _ranks(table: pd.DataFrame) -> pd.Series:
    """Each measure's rank within its (group, statistic): 1 = agrees best with the gap (largest
    value, or smallest for the sign-errors, see LARGER_IS_BETTER); ties share the best rank;
    null where the value is."""
    if table.empty:
        return pd.Series([], dtype="Int64")
    key = table["value"].where(table["statistic"].map(LARGER_IS_BETTER).fillna(True).astype(bool),
                               -table["value"])
    return key.groupby([table["group"], table["statistic"]]).rank(
        method="min", ascending=False).astype("Int64")


def ranking_table(table: pd.DataFrame, by: str = "granulated_kendall",
                  group: str = "all") -> pd.DataFrame:
    """The measures of ``statistics_table``'s ``group`` ranked by the statistic ``by`` (Jiang et
    al. 2019, Table 2, in spirit): one row per measure, best first (measures without a value
    last), with ``rank``, ``measure``, ``sign`` (the statistics are of sign * measure), ``n_trials``
    and per statistic its value and interval (``<statistic>``, ``<statistic>_low``,
    ``<statistic>_high``). Raises ValueError for an unknown ``by`` or ``group``."""
    if by not in STATISTICS:
        raise ValueError(f"rank by {by!r}; allowed: {', '.join(STATISTICS)}")
    cols = ["rank", "measure", "sign", "n_trials"] + [
        f"{s}{x}" for s in STATISTICS for x in ("", "_low", "_high")]
    if table.empty:
        return pd.DataFrame(columns=cols)
    if group not in set(table["group"]):
        raise ValueError(f"group {group!r}; allowed: {', '.join(dict.fromkeys(table['group']))}")
    t = table[table["group"] == group]
    out = t.groupby("measure", sort=False)[["sign", "n_trials"]].first()
    for s in STATISTICS:
        one = t[t["statistic"] == s].set_index("measure")
        for x, v in (("", "value"), ("_low", "ci_low"), ("_high", "ci_high")):
            out[s + x] = one[v].reindex(out.index).astype(float)
    out = out.reset_index()
    ranks = t[t["statistic"] == by].set_index("measure")["rank"]
    out.insert(0, "rank", out["measure"].map(ranks).astype("Int64"))
    out = out.sort_values(["rank", "measure"], na_position="last", kind="stable")
    return out[cols].reset_index(drop=True)


def write_table(table: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.parquet`` (parent directories created); returns both."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv = stem.with_name(stem.name + ".csv")
    parquet = stem.with_name(stem.name + ".parquet")
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return csv, parquet
