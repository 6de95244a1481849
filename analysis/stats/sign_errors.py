"""Sign-error and robust sign-error over environments (Dziugaite et al. 2020, "In search of
robust measures of generalization"), with the paper's optional Monte-Carlo noise filter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats.configs import _Configs, _configs, _one_factor_pairs, _prepare, _sgn

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


def check_noise_filter(noise_filter, min_ess: float = MIN_ESS) -> None:
    """ValueError (one line) unless ``noise_filter`` is False, True or a number of test points
    > 0 (finite), and ``min_ess`` a finite number >= 0 (0: no minimum; a silent NaN
    otherwise)."""
    if not (isinstance(noise_filter, bool) or (
            isinstance(noise_filter, (int, float, np.integer, np.floating))
            and math.isfinite(noise_filter) and noise_filter > 0)):
        raise ValueError(f"noise_filter: {noise_filter!r}; allowed: False, True (the test_size "
                         "column) or the number of test points behind each gap (> 0)")
    if isinstance(min_ess, bool) or not (isinstance(min_ess, (int, float, np.integer, np.floating))
                                         and math.isfinite(min_ess) and min_ess >= 0):
        raise ValueError(f"min_ess: {min_ess!r}; allowed: a number >= 0")


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
    check_noise_filter(noise_filter, min_ess)
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _sign_error(cf, _one_factor_pairs(cf), noise_filter, min_ess)
