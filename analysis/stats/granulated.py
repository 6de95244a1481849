"""Granulated Kendall coefficient Psi (Jiang et al. 2019, "Fantastic generalization measures
and where to find them", Eq. 2-3), over seed-averaged configurations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats.configs import _Configs, _configs, _one_factor_pairs, _prepare, _sgn

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
