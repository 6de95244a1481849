"""One evaluation of every statistic (``analysis.stats.registry``) of the measures of a job (the
measures of a group whose rows are the same), on all rows or a bootstrap replicate's: what
depends on the configurations and the target alone is made once (``_Shared``, ``_JobRows``).

Two paths give the same numbers: ``_replicate_statistics`` (every measure at once, in compiled
loops, no noise filter) and ``_each_statistics`` (measure by measure through the statistics'
own functions); ``tests/test_stats.py`` checks one against the other."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from analysis.stats.cmi import _SetClasses, _cmi
from analysis.stats.configs import (
    _Configs, _configs, _dense_rank, _kernels, _one_factor_pairs, _Prepared, _sgn,
)
from analysis.stats.correlations import kendall, pearson, spearman
from analysis.stats.granulated import _granulated
from analysis.stats.registry import supports_in_order, values_in_order
from analysis.stats.sign_errors import _RunPairs, _sign_error

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
    # every measure's seed means and run values at once, one contiguous row per measure
    mu_cs = np.ascontiguousarray((mu_sum[present] / c[:, None]).T)
    mu_runs = np.ascontiguousarray(job.mu[rows[keep][runs.order]].T)
    gk_parts, se_parts = shared.granulated_parts(), shared.sign_error_parts()
    n_cfg, h = cf.codes.shape
    sets = list(itertools.combinations(range(h), min(k, h))) if n_cfg >= 2 and h else []
    out = []
    for m, p in enumerate(ps):
        pear, spear, kend = kern.correlations(p.mu, job.xorder[m], job.xties[m], job.g,
                                              job.yrank, job.n_yrank, yavg, w)
        mu_c = mu_cs[m]
        psi, n_groups = {}, {}
        for name, a, b, lab, sg, n_pairs, has in gk_parts:
            num = kern.pair_signs(mu_c, a, b, sg, lab, n_pairs.size)
            psi[name] = float((num[has] / n_pairs[has]).mean())
            n_groups[name] = int(has.sum())
        gk = float(np.mean(list(psi.values()))) if psi else math.nan
        mu_run = mu_runs[m]
        errs, worst = [], []
        for env, ra, rb, sg, wsum, used in se_parts:
            e = kern.run_errors(mu_run, ra, rb, sg, env, wsum.size)[used] / wsum[used]
            if e.size:
                errs.append(e)
                worst.append(float(e.max()))
        se = float(np.concatenate(errs).mean()) if errs else math.nan
        robust = max(worst) if worst else math.nan
        cmi = _cmi(_with_mu(cf, mu_c), k, shared).value if sets else math.nan
        values = values_in_order({
            "pearson": pear, "spearman": spear, "kendall": kend, "granulated_kendall": gk,
            "conditional_mi": cmi, "sign_error": se, "robust_sign_error": robust})
        if not support:
            out.append(values)
            continue
        n_env = sum(int(used.sum()) for *_, used in se_parts)
        out.append((values, supports_in_order({
            "trials": int(rows.size), "groups": sum(n_groups.values()),
            "pairs": n_cfg * n_cfg, "environments": n_env})))
    return out


def _with_mu(cf: _Configs, mu: np.ndarray) -> _Configs:
    return replace(cf, mu=mu)


def _all_statistics(ps: Sequence[_Prepared], idx: np.ndarray | None, k: int,
                    noise_filter: bool | float = False, support: bool = False,
                    job: _JobRows | None = None) -> list:
    """The STATISTICS of the rows ``idx`` (all rows if None), for each of the measures ``ps``
    (prepared from the same rows: what depends on the configurations and the target alone is
    computed once): per measure an array (len(STATISTICS),) in registry order; with ``support``
    (that array, the count of what each rests on: its registered support). Both are made by
    name (``values_in_order``, ``supports_in_order``). ``job``: ``ps``'s ``_JobRows``, to
    share its sorting between calls."""
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
        values = values_in_order({
            "pearson": pearson(mu, g), "spearman": spearman(mu, g), "kendall": kendall(mu, g),
            "granulated_kendall": gk.value, "conditional_mi": cmi.value,
            "sign_error": se.value, "robust_sign_error": se.robust})
        if not support:
            out.append(values)
            continue
        out.append((values, supports_in_order({
            "trials": int(mu.size), "groups": sum(gk.n_groups.values()),
            "pairs": cmi.n_pairs, "environments": sum(se.n_environments.values())})))
    return out
