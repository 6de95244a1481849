"""analysis.stats: every statistic against an independent computation (scipy, a hand-derived
case, or a slow loop over pairs written here), never against itself."""

import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from analysis.stats import (
    HYPERPARAMETERS, STATISTICS, TABLE_COLUMNS, bootstrap_ci, conditional_mutual_information,
    granulated_kendall, kendall, pearson, sign_error, spearman, statistics_table, write_table,
)


def frame(rows, columns):
    return pd.DataFrame(rows, columns=columns)


# --- correlations over trial rows -------------------------------------------------------------


def random_pairs(rng, n, kind):
    if kind == "continuous":
        x = rng.normal(size=n)
        y = 0.5 * x + rng.normal(size=n)
    elif kind == "ties":  # heavy ties on both sides, tau-b differs from tau-a
        x = rng.integers(0, 4, size=n).astype(float)
        y = (x + rng.integers(0, 3, size=n)).astype(float)
    else:  # ties on one side only
        x = rng.normal(size=n)
        y = np.round(x + rng.normal(size=n))
    return x, y


@pytest.mark.parametrize("kind", ["continuous", "ties", "one_sided_ties"])
@pytest.mark.parametrize("n", [2, 3, 7, 50, 301])
def test_correlations_match_scipy(kind, n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        x, y = random_pairs(rng, n, kind)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize("n", [40, 300])  # the sign-matrix and the merge-count paths
def test_kendall_tau_b_by_brute_force(n):
    """tau-b from its definition with an explicit double loop (no scipy)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=n).astype(float)
    y = rng.integers(0, 4, size=n).astype(float)
    nc = nd = tx = ty = 0
    n0 = 0
    for i in range(n):
        for j in range(i + 1, n):
            n0 += 1
            s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            nc += s > 0
            nd += s < 0
            tx += x[i] == x[j]
            ty += y[i] == y[j]
    expected = (nc - nd) / math.sqrt((n0 - tx) * (n0 - ty))
    assert kendall(x, y) == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_kendall_large_n(kind):
    rng = np.random.default_rng(5)
    x, y = random_pairs(rng, 5000, kind)
    assert kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
    x, y = random_pairs(rng, 40000, "one_sided_ties")
    assert kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_correlations_drop_nan_pairs_and_undefined_cases():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 3.0])
    y = np.array([2.0, 1.0, 3.0, np.nan, 5.0, 4.0])
    keep = [0, 1, 4, 5]
    assert kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x[keep], y[keep]).statistic)
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x[keep], y[keep]).statistic)
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x[keep], y[keep]).statistic)
    for f in (pearson, spearman, kendall):
        assert math.isnan(f([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
        assert math.isnan(f([1.0], [2.0]))
    with pytest.raises(ValueError):
        kendall([1.0, 2.0], [1.0])


# --- granulated Kendall -----------------------------------------------------------------------

# A 3 x 3 grid (a, b), config means (gap g, measure mu), chosen so each tau is countable by hand:
#   b=0: g = 1,2,3 (a=0,1,2)  mu = 10,20,30 -> tau = +1
#   b=1: g = 1,2,3            mu = 10,30,20 -> pairs C,C,D -> tau = 1/3
#   b=2: g = 3,2,1            mu = 10,20,30 -> tau = -1
#   psi_a = (1 + 1/3 - 1) / 3 = 1/9 over 3 groups
#   a=0: g = 1,1,3 (b=0,1,2)  mu = 10,10,10 -> constant measure: undefined, skipped
#   a=1: g = 2,2,2            constant gap: skipped
#   a=2: g = 3,3,1            mu = 30,20,30 -> n0 = 3, one pair tied in g, one tied in mu,
#        one discordant: tau_b = -1 / sqrt(2 * 2) = -1/2;  psi_b = -1/2 over 1 group
#   Psi = (1/9 - 1/2) / 2 = -7/36
GAP = {(0, 0): 1, (1, 0): 2, (2, 0): 3, (0, 1): 1, (1, 1): 2, (2, 1): 3,
       (0, 2): 3, (1, 2): 2, (2, 2): 1}
MU = {(0, 0): 10, (1, 0): 20, (2, 0): 30, (0, 1): 10, (1, 1): 30, (2, 1): 20,
      (0, 2): 10, (1, 2): 20, (2, 2): 30}


def hand_grid():
    """Two seeds per configuration, mean exactly GAP / MU (binary fractions), but each seed
    alone ordered differently."""
    rows = []
    for n, (a, b) in enumerate(sorted(GAP)):
        e = (-1) ** n * (0.75 + 0.5 * n)  # exact binary fractions
        f = (-1) ** (n // 2) * 25.0 * (n + 1)
        for seed, s in ((1, 1), (2, -1)):
            rows.append(("mnist", a, b, None, seed, GAP[a, b] + s * e, MU[a, b] + s * f))
    return frame(rows, ["dataset", "a", "b", "batch_size", "seed", "gen_gap", "m"])


def test_granulated_kendall_hand_grid_with_seeds():
    df = hand_grid()
    hp = ["dataset", "a", "b", "batch_size"]  # dataset and batch_size (all null) are constant
    r = granulated_kendall(df, "m", hyperparameters=hp)
    assert r.psi == pytest.approx({"a": 1 / 9, "b": -1 / 2}, abs=1e-12)
    assert r.n_groups == {"a": 3, "b": 1}
    assert r.value == pytest.approx(-7 / 36, abs=1e-12)
    assert r.n_configs == 9
    # the seeds alone order the configurations differently: averaging matters
    one = granulated_kendall(df[df.seed == 1], "m", hyperparameters=hp)
    assert one.value != pytest.approx(-7 / 36)


def test_granulated_kendall_group_tau_matches_scipy_and_nan_without_groups():
    # the a=2 group of the hand grid, by scipy
    assert scipy.stats.kendalltau([3, 3, 1], [30, 20, 30]).statistic == pytest.approx(-0.5)
    df = frame([(0, 1.0, 2.0), (1, 2.0, 1.0)], ["a", "gen_gap", "m"])
    assert granulated_kendall(df, "m", hyperparameters=["a"]).value == -1.0
    df = frame([(0, 0, 1.0, 2.0), (1, 1, 2.0, 1.0)], ["a", "b", "gen_gap", "m"])
    r = granulated_kendall(df, "m", hyperparameters=["a", "b"])  # no pair differs in one only
    assert math.isnan(r.value) and r.psi == {}


def test_unknown_columns_are_refused():
    df = hand_grid()
    with pytest.raises(ValueError, match="width"):
        granulated_kendall(df, "m", hyperparameters=["a", "width"])
    with pytest.raises(ValueError, match="nope"):
        sign_error(df, "nope", hyperparameters=["a"])


# --- sign error -------------------------------------------------------------------------------


def test_sign_error_hand_case():
    # configs A=(0,0) B=(1,0) C=(0,1) D=(1,1); one-hyperparameter pairs:
    #   a: A-B  mu 1->6 up, g .1->.2 up: right 0;   C-D mu 5->5 tie: 0.5
    #   b: A-C  mu 1->5 up, g .1->.3 up: right 0;   B-D mu 6->5 down, g .2->.4 up: wrong 1
    #   (A-D and B-C differ in both and do not count; B-C alone would be another wrong one)
    # a: 0.25, b: 0.5, all: 1.5 / 4 = 0.375, worst b
    base = {(0, 0): (0.1, 1.0), (1, 0): (0.2, 6.0), (0, 1): (0.3, 5.0), (1, 1): (0.4, 5.0)}
    rows = []
    for (a, b), (g, m) in base.items():
        for seed, d in ((1, 0.25), (2, -0.25)):  # seeds averaged away
            rows.append((a, b, seed, g + d, m - 4 * d))
    df = frame(rows, ["a", "b", "seed", "gen_gap", "m"])
    r = sign_error(df, "m", hyperparameters=["a", "b"])
    assert r.value == pytest.approx(0.375)
    assert r.per_hyperparameter == pytest.approx({"a": 0.25, "b": 0.5})
    assert r.n_pairs == {"a": 2, "b": 2}
    assert r.worst == pytest.approx(0.5) and r.worst_hyperparameter == "b"
    assert r.n_configs == 4


def test_sign_error_null_is_a_value_and_nan_without_pairs():
    # batch_size null (full batch) vs 128, at two widths: 2 batch_size pairs, 2 width pairs
    rows = [(w, bs, 0.1 * w + (0.05 if bs is None else 0.0), w + (1.0 if bs is None else 0.0))
            for w in (1, 2) for bs in (128, None)]
    df = frame(rows, ["width", "batch_size", "gen_gap", "m"])
    r = sign_error(df, "m", hyperparameters=["width", "batch_size"])
    assert r.n_pairs == {"width": 2, "batch_size": 2}
    assert r.value == 0.0
    one = frame([(1, 0.1, 1.0)], ["width", "gen_gap", "m"])
    assert math.isnan(sign_error(one, "m", hyperparameters=["width"]).value)


# --- conditional mutual information -----------------------------------------------------------


def slow_cmi(df, measure, hps, k=2):
    """Ordered pairs (i, j) over all configurations (i = j included, as PGDL's scoring does),
    explicit probability tables per cell, base-2 logs. Returns {S: normalized CMI or None}."""
    cfg = df.groupby(hps, dropna=False)[[measure, "gen_gap"]].mean().reset_index()
    vals = {h: cfg[h].astype(str).tolist() for h in hps}
    varying = [h for h in hps if len(set(vals[h])) > 1]
    mu, g = cfg[measure].tolist(), cfg["gen_gap"].tolist()
    n = len(cfg)
    out = {}
    for s in itertools.combinations(varying, min(k, len(varying))):
        cells = defaultdict(Counter)
        for i in range(n):
            for j in range(n):
                u = tuple((vals[h][i], vals[h][j]) for h in s)
                cells[u][(g[i] > g[j], mu[i] > mu[j])] += 1
        total = n * n
        info = ent = 0.0
        for counts in cells.values():
            nu = sum(counts.values())
            pu = nu / total
            pg = {a: sum(c for (a2, _), c in counts.items() if a2 == a) / nu for a in (0, 1)}
            pm = {b: sum(c for (_, b2), c in counts.items() if b2 == b) / nu for b in (0, 1)}
            for (a, b), c in counts.items():
                pab = c / nu
                info += pu * pab * math.log2(pab / (pg[a] * pm[b]))
            for a in (0, 1):
                if pg[a] > 0:
                    ent -= pu * pg[a] * math.log2(pg[a])
        out[s] = info / ent if ent > 1e-12 else None
    return out


def small_incomplete_grid(rng):
    rows = []
    for a, b, c in itertools.product(range(3), ("x", None), range(3)):
        if rng.random() < 0.25:  # an incomplete grid
            continue
        for seed in (1, 2):
            gap = 0.1 * a + 0.05 * c + rng.normal(scale=0.05)
            rows.append((a, b, c, seed, gap, np.round(gap + rng.normal(scale=0.05), 1)))
    return frame(rows, ["a", "b", "c", "seed", "gen_gap", "m"])


def many_levels(rng):
    """80 configurations, ~55 values of a and of b: S = (a, b) has too many cells for one
    dense bincount and takes the other path."""
    a, b = rng.integers(0, 100, size=80), rng.integers(0, 100, size=80)
    gap = 0.001 * a + rng.normal(scale=0.05, size=80)
    return pd.DataFrame({"a": a, "b": b, "c": rng.integers(0, 2, size=80), "gen_gap": gap,
                         "m": gap + rng.normal(scale=0.05, size=80)})


@pytest.mark.parametrize("make", [small_incomplete_grid, many_levels])
def test_cmi_matches_slow_pair_loop(make):
    df = make(np.random.default_rng(3))
    hps = ["a", "b", "c"]
    for k in (1, 2):
        want = slow_cmi(df, "m", hps, k)
        got = conditional_mutual_information(df, "m", hyperparameters=hps, k=k)
        assert set(got.per_set) == set(want)
        for s, v in want.items():
            if v is None:
                assert math.isnan(got.per_set[s])
            else:
                assert got.per_set[s] == pytest.approx(v, abs=1e-12)
        defined = [v for v in want.values() if v is not None]
        assert got.value == pytest.approx(min(defined), abs=1e-12)
        assert got.n_pairs == len(df.groupby(hps, dropna=False)) ** 2 and not got.sampled


def grid(levels, seeds=(1,)):
    names = list(levels)
    return names, [dict(zip(names, v)) | {"seed": s}
                   for v in itertools.product(*levels.values()) for s in seeds]


def test_cmi_perfect_measure_is_one():
    names, rows = grid({"a": range(3), "b": range(3), "c": range(3)}, seeds=(1, 2))
    df = pd.DataFrame(rows)
    df["gen_gap"] = np.random.default_rng(0).normal(size=len(df))
    df["m"] = 2.0 * df["gen_gap"] + 1.0  # seed means keep the exact order of the gap's
    r = conditional_mutual_information(df, "m", hyperparameters=names)
    assert r.value == pytest.approx(1.0, abs=1e-12)
    assert set(r.per_set) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in r.per_set.values())


def test_cmi_measure_independent_given_hyperparameters_is_zero():
    # gap = 0.1 c + 0.5 a, measure = d + 5 a: correlated through a (Kendall > 0), but inside
    # every cell of S = {a, b} the pairs run over all (c1, d1, c2, d2): V_g depends on (c1, c2)
    # only and V_mu on (d1, d2) only, so they are independent and I(V_mu; V_g | U_S) = 0.
    names, rows = grid({"a": (0, 1), "b": (0, 1), "c": (0, 1), "d": (0, 1)})
    df = pd.DataFrame(rows)
    df["gen_gap"] = 0.1 * df.c + 0.5 * df.a
    df["m"] = df.d + 5.0 * df.a
    assert kendall(df.m, df.gen_gap) > 0.5
    r = conditional_mutual_information(df, "m", hyperparameters=names)
    assert r.per_set[("a", "b")] == pytest.approx(0.0, abs=1e-12)
    assert r.value == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(r.per_set[("a", "c")])  # (a, c) fixes every gap order: undefined
    assert r.per_set[("c", "d")] > 0.1  # unconditioned on a, the measure looks informative


def test_cmi_undefined_with_too_few_hyperparameters():
    # one varying hyperparameter: every cell (v1, v2) holds one pair -> H(V_g | U) = 0
    df = frame([(w, 0.1 * w, float(w)) for w in (1, 2, 4)], ["width", "gen_gap", "m"])
    r = conditional_mutual_information(df, "m", hyperparameters=["width"])
    assert math.isnan(r.value) and r.argmin is None
    assert list(r.per_set) == [("width",)]


def test_cmi_sampled_pairs_deterministic_and_close():
    names, rows = grid({"a": range(4), "b": range(4), "c": range(25)})
    df = pd.DataFrame(rows)
    rng = np.random.default_rng(1)
    df["gen_gap"] = 0.1 * df.a + rng.normal(scale=0.1, size=len(df))
    df["m"] = df.gen_gap + rng.normal(scale=0.1, size=len(df))
    full = conditional_mutual_information(df, "m", hyperparameters=names)
    kw = dict(hyperparameters=names, max_pairs=100_000)
    s1 = conditional_mutual_information(df, "m", seed=7, **kw)
    s2 = conditional_mutual_information(df, "m", seed=7, **kw)
    s3 = conditional_mutual_information(df, "m", seed=8, **kw)
    assert not full.sampled and full.n_pairs == 400 * 400
    assert s1.sampled and s1.n_pairs == 100_000
    assert s1 == s2 and s1.value != s3.value
    assert s1.value == pytest.approx(full.value, abs=0.02)  # plug-in bias shrinks with pairs


# --- bootstrap --------------------------------------------------------------------------------


def seeded_frame(n_seeds=8, rows_per_seed=6, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, n_seeds + 1):
        for w in range(rows_per_seed):
            gap = 0.05 * w + rng.normal(scale=0.05)
            rows.append((w, s, gap, gap + rng.normal(scale=noise * 0.05)))
    return frame(rows, ["width", "seed", "gen_gap", "m"])


def kendall_of(d):
    return kendall(d["m"], d["gen_gap"])


def test_bootstrap_deterministic_and_contains_estimate():
    df = seeded_frame()
    r1 = bootstrap_ci(df, kendall_of, n_boot=100, seed=3)
    r2 = bootstrap_ci(df, kendall_of, n_boot=100, seed=3)
    r3 = bootstrap_ci(df, kendall_of, n_boot=100, seed=4)
    assert r1 == r2
    assert (r1.low, r1.high) != (r3.low, r3.high)
    assert r1.method == "seeds" and r1.n_valid == 100 and r1.level == 0.95
    assert r1.estimate == pytest.approx(scipy.stats.kendalltau(df.m, df.gen_gap).statistic)
    assert r1.low <= r1.estimate <= r1.high
    assert r1.low < r1.high


def test_bootstrap_resamples_whole_seeds_or_trials():
    df = seeded_frame(n_seeds=5, rows_per_seed=4)
    whole = bootstrap_ci(df, lambda d: float((d.groupby("seed").size() % 4 == 0).all()),
                         n_boot=50)
    assert whole.method == "seeds" and whole.low == whole.high == 1.0
    # a seed drawn twice appears twice: the number of distinct seeds varies, rows stay 20
    distinct = bootstrap_ci(df, lambda d: [d.seed.nunique(), len(d)], n_boot=50)
    assert distinct.low[0] < 5 and distinct.high[0] <= 5
    assert distinct.low[1] == distinct.high[1] == 20
    one = seeded_frame(n_seeds=1, rows_per_seed=30)
    assert bootstrap_ci(one, kendall_of, n_boot=20).method == "trials"
    assert bootstrap_ci(one.drop(columns="seed"), kendall_of, n_boot=20).method == "trials"


def test_bootstrap_accepts_result_objects():
    df = seeded_frame()
    r = bootstrap_ci(df, lambda d: sign_error(d, "m", hyperparameters=["width"]), n_boot=30)
    assert r.estimate == sign_error(df, "m", hyperparameters=["width"]).value
    assert r.low <= r.high


# --- the table --------------------------------------------------------------------------------


def sweep_frame(seed=0):
    """A results-like table: every HYPERPARAMETERS column, 2 datasets x 12 configs x 3 seeds."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds, w, d, act, s in itertools.product(("mnist", "cifar10"), (8, 16, 32), (2, 3),
                                              ("relu", "tanh"), (1, 2, 3)):
        gap = 0.1 * (ds == "cifar10") + 0.01 * w / 8 + 0.02 * d + rng.normal(scale=0.02)
        rows.append({
            "dataset": ds, "train_size": 1000, "random_labels": False, "augment": False,
            "width": w, "depth": d, "activation": act, "optimizer": "lbfgs", "lr": 0.01,
            "batch_size": None, "init_scale": 1.0, "step_budget": 100, "seed": s,
            "gen_gap": gap, "jacobian_norm_test": gap + rng.normal(scale=0.02),
            "transitions_test": np.nan,
        })
    return pd.DataFrame(rows)


def test_statistics_table_long_form_and_values():
    df = sweep_frame()
    df.loc[[3, 40], "jacobian_norm_test"] = np.nan
    t = statistics_table(df, measures=("jacobian_norm_test", "transitions_test", "absent"),
                         n_boot=60, seed=1)
    assert list(t.columns) == TABLE_COLUMNS
    assert set(t.measure) == {"jacobian_norm_test"}  # all-NaN and absent measures skipped
    assert sorted(t.group.unique()) == ["all", "cifar10", "mnist"]
    assert len(t) == 3 * len(STATISTICS)
    assert (t.groupby("group").statistic.apply(list) == [list(STATISTICS)] * 3).all()
    assert (t.target == "gen_gap").all() and (t.ci_method == "seeds").all()
    rows = df.dropna(subset=["jacobian_norm_test"])
    at = t.set_index(["group", "statistic"])
    for group, part in (("all", rows), ("mnist", rows[rows.dataset == "mnist"])):
        x, y = part.jacobian_norm_test, part.gen_gap
        assert at.loc[(group, "kendall"), "value"] == pytest.approx(
            scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
        assert at.loc[(group, "pearson"), "value"] == pytest.approx(
            scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
        assert at.loc[(group, "spearman"), "value"] == pytest.approx(
            scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert at.loc[(group, "kendall"), "n_trials"] == len(part)
    assert at.loc[("all", "kendall"), "n_configs"] == 24
    assert at.loc[("mnist", "kendall"), "n_configs"] == 12
    m = "jacobian_norm_test"
    assert at.loc[("all", "granulated_kendall"), "value"] == granulated_kendall(df, m).value
    assert at.loc[("all", "sign_error"), "value"] == sign_error(df, m).value
    assert at.loc[("all", "conditional_mi"), "value"] == (
        conditional_mutual_information(df, m).value)
    assert at.loc[("all", "kendall"), "n_used"] == len(rows)
    assert at.loc[("all", "granulated_kendall"), "n_used"] == sum(
        granulated_kendall(df, m).n_groups.values())
    assert at.loc[("all", "sign_error"), "n_used"] == sum(sign_error(df, m).n_pairs.values())
    assert at.loc[("all", "conditional_mi"), "n_used"] == (
        conditional_mutual_information(df, m).n_pairs)
    # the interval is bootstrap_ci's on the same rows with the same seed
    ci = bootstrap_ci(rows, lambda d: kendall(d[m], d.gen_gap), n_boot=60, seed=1)
    assert (at.loc[("all", "kendall"), "ci_low"], at.loc[("all", "kendall"), "ci_high"]) == (
        pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert (t.ci_low <= t.ci_high).all()


def test_statistics_table_single_group_and_trials_method():
    df = sweep_frame()
    one = df[(df.dataset == "mnist") & (df.seed == 1)]
    t = statistics_table(one, measures=("jacobian_norm_test",), n_boot=20)
    assert set(t.group) == {"all"} and (t.ci_method == "trials").all()
    assert (t.n_trials == len(one)).all()
    with pytest.raises(ValueError, match="gen_gap"):
        statistics_table(df.drop(columns="gen_gap"))


def test_write_table_round_trip(tmp_path):
    t = statistics_table(sweep_frame(), measures=("jacobian_norm_test",), n_boot=20)
    csv, parquet = write_table(t, tmp_path / "out" / "stats.v1")
    assert csv.name == "stats.v1.csv" and parquet.name == "stats.v1.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), t)
    back = pd.read_csv(csv)
    pd.testing.assert_frame_equal(back, t, check_dtype=False)


def test_hyperparameters_constant_lists_the_paper_grid():
    assert HYPERPARAMETERS == ["dataset", "train_size", "random_labels", "augment", "width",
                               "depth", "activation", "optimizer", "lr", "batch_size",
                               "init_scale", "step_budget"]
