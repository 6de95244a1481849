"""Label-free model selection: how much test accuracy a measure loses when it alone chooses
among networks that differ in one hyperparameter (Novak et al. 2018 propose input sensitivity
as a criterion for model selection; Jiang et al. 2019's granulated Kendall judges a measure on
the same groups).

``model_selection(df, measures)``: per measure, its mean and worst regret over the one-factor
groups of the granulated Kendall, next to choosing by the train loss and at random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats.configs import (
    _check_columns, _configs, _one_factor_pairs, _prepare, hyperparameter_columns, measure_sign,
)

RANDOM = "(random)"  # the row of the choice at random
SELECTION_COLUMNS = ["measure", "kind", "sign", "n_groups", "mean_regret", "worst_regret",
                     "p_best"]
GROUP_COLUMNS = ["measure", "hyperparameter", "group", "n_networks", "n_picked", "best",
                 "picked", "regret"]


def one_factor_groups(p) -> tuple[object, list[tuple[str, list[np.ndarray]]]]:
    """The seed-averaged configurations of the prepared rows ``p``
    (``analysis.stats.configs._configs``) and, per hyperparameter that varies among them, the
    groups of two or more configurations equal on every other hyperparameter (the granulated
    Kendall's groups: ``_one_factor_pairs``), each an array of configuration indices."""
    cf = _configs(p)
    out = []
    for name, (a, b, lab) in zip(cf.names, _one_factor_pairs(cf)):
        members = []
        for k in np.unique(lab):
            on = lab == k
            members.append(np.unique(np.concatenate([a[on], b[on]])))
        out.append((name, members))
    return cf, out


def _regrets(score: np.ndarray | None, acc: np.ndarray, groups, label: str) -> list[tuple]:
    """Per group: (label, hyperparameter, group number, networks, picks, best accuracy,
    accuracy of the pick, regret). ``score``: smaller is chosen (ties: the mean over the tied
    picks); None: at random (the mean over the group's members, exactly)."""
    rows = []
    for name, members in groups:
        for k, idx in enumerate(members):
            a = acc[idx]
            best = float(a.max())
            if score is None:
                picked = a
            else:
                s = score[idx]
                picked = a[s == s.min()]
            got = float(picked.mean())
            rows.append((label, name, k, int(idx.size), int(picked.size), best, got, best - got,
                         float((picked == best).mean())))
    return rows


def model_selection(df: pd.DataFrame, measures: Sequence[str], target: str = "test_acc",
                    hyperparameters: Sequence[str] | None = None,
                    signs: Mapping[str, int] | None = None,
                    baselines: Sequence[str] = ("train_loss",), random: bool = True,
                    per_group: bool = False) -> pd.DataFrame:
    """The regret of choosing a network by a measure, without test labels.

    Trials are averaged over seeds into configurations (the measure's and ``target``'s means,
    as the granulated Kendall does; a configuration is one value of every hyperparameter,
    ``hyperparameters`` default ``hyperparameter_columns(df, exclude=measures + baselines +
    [target, "gen_gap"])``). The groups are the granulated Kendall's: per hyperparameter, the
    configurations equal on every other one, two or more of them. In each group the measure
    chooses the configuration with the smallest ``sign * measure`` (``signs``, default
    ``measure_sign``: a measure of the gap, smaller is better; a margin, sign -1, larger); the
    regret is the best ``target`` of the group (test accuracy, a fraction) minus the chosen
    one's. When several configurations tie for the smallest value, the regret is the mean over
    them (a choice at random among the tied). The measure reads no test label: ``target``
    only scores the choice.

    One row per measure (``measures``, then ``baselines`` not among them, then, with
    ``random``, the choice at random, ``RANDOM``: its regret is the mean over the group's
    configurations, exactly, not sampled): ``kind`` "measure", "baseline" (a name of
    ``baselines``) or "random",
    ``sign``, ``n_groups`` (the groups over all hyperparameters; the rows without the measure or
    the target are left out, as in the statistics), ``mean_regret`` (mean over the groups),
    ``worst_regret`` (max) and ``p_best`` (the mean over groups of the share of tied picks
    that are a best network). A measure without a group has NaN regrets.
    ``per_group``: one row per (measure, group) instead (``GROUP_COLUMNS`` + ``p_best``).
    ValueError for a measure or target not in ``df``."""
    names = list(dict.fromkeys([*measures, *[b for b in baselines if b in df.columns]]))
    _check_columns(df, [target, *names], "measures/target")
    if hyperparameters is None:
        exclude = [*names, target, "gen_gap"]
        hyperparameters = hyperparameter_columns(df, exclude=exclude)
    rows, summary = [], []

    def add(label: str, kind: str, sign: int, score_of, p) -> None:
        cf, groups = one_factor_groups(p)
        r = _regrets(score_of(cf), cf.g, groups, label)
        rows.extend(r)
        regret = np.array([x[7] for x in r])
        summary.append((label, kind, sign, len(r),
                        float(regret.mean()) if r else np.nan,
                        float(regret.max()) if r else np.nan,
                        float(np.mean([x[8] for x in r])) if r else np.nan))

    for m in names:
        sign = int((signs or {}).get(m, measure_sign(m)))
        if sign not in (1, -1):
            raise ValueError(f"signs: {m}: {sign}; allowed: 1 or -1")
        kind = "baseline" if m in baselines else "measure"
        add(m, kind, sign, lambda cf, s=sign: s * cf.mu, _prepare(df, m, target, hyperparameters))
    if random:
        add(RANDOM, "random", 0, lambda cf: None, _prepare(df, target, target, hyperparameters))
    if per_group:
        return pd.DataFrame(rows, columns=[*GROUP_COLUMNS, "p_best"])
    return pd.DataFrame(summary, columns=SELECTION_COLUMNS).astype(
        {"sign": np.int64, "n_groups": np.int64})
