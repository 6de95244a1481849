"""Conditional mutual information between the measure's and the target's order of pairs of
configurations, normalized and minimized over conditioning sets (Jiang et al. 2019; the PGDL
competition's scoring, Jiang et al. 2020), counted exactly over all ordered pairs."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats.configs import _Configs, _configs, _dense_rank, _kernels, _prepare

# Over all n^2 ordered pairs (i, j) of configurations the outcome is (V_g, V_mu) =
# ([g_i > g_j], [mu_i > mu_j]) and the cell under a conditioning set S is (class_S(i),
# class_S(j)). Per pair of classes (A, B) the four outcome counts follow from
#     N_AB = |A| |B|,  G_AB = #{g_i > g_j},  M_AB = #{mu_i > mu_j},  GM_AB = #{both}
# (i in A, j in B): t(1,1) = GM, t(1,0) = G - GM, t(0,1) = M - GM, t(0,0) = N - G - M + GM.
# G and M are one-dimensional counts (one pass in sorted order with a running histogram of the
# classes below, analysis.kernels.count_below); GM is a two-dimensional dominance count (a
# merge sort over the g-order by mu that counts the pairs split at each level,
# analysis.kernels.count_dominated, its first four levels enumerated inside blocks of 16).
# Every conditioning set is counted in the same pass, a histogram added to a row in 8-lane
# vector additions, and nothing enumerates the n^2 pairs: O(n log n * sum of the sets' class
# counts). G depends on the target and the configurations only and is shared by every measure
# over them (`_Shared`).


# The kernels' cost per element and merge level is about (a fixed cost per counted column
# group, ~8 vector additions: its row's address, its histogram's update, the loop) + (its
# classes / 8) vector additions. Conditioning sets with few classes are therefore counted
# together: one group ("joint") of several hyperparameters whose classes are the products of
# theirs holds every set inside it, and each set's counts are sums of the joint's cells (exact
# integers). A joint has at most JOINT_CLASSES classes (its (k, k) block stays in the caches),
# chosen greedily (``_cover``). At 10^5 trials and 8 hyperparameters: 28 sets in 14 joints,
# the dominance count about 1.2x faster (bench/README.md, bench/stats_parts.py).
JOINT_CLASSES = 128
JOINT_OVERHEAD = 8  # the fixed cost of a column group, in 8-lane vector additions
JOINT_MAX_COLUMNS = 12  # with more varying hyperparameters every set is counted on its own


@functools.lru_cache(maxsize=64)
def _cover(levels: tuple[int, ...],
           sets: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """Column groups ("joints", sorted tuples of columns) such that every set in ``sets`` is a
    subset of one of them, chosen greedily by sets newly covered per cost (JOINT_OVERHEAD +
    classes / 8, classes rounded up to 8) among the sets themselves and the groups of at most
    max |S| + 2 columns with at most JOINT_CLASSES classes. Deterministic (ties: the first
    candidate in order). With more than JOINT_MAX_COLUMNS columns: the sets themselves."""
    if not sets or len(levels) > JOINT_MAX_COLUMNS:
        return tuple(sets)
    cols = sorted({c for s in sets for c in s})
    top = max(len(s) for s in sets) + 2
    cands = list(dict.fromkeys(
        [tuple(sorted(s)) for s in sets]
        + [j for r in range(2, top + 1) for j in itertools.combinations(cols, r)
           if math.prod(levels[c] for c in j) <= JOINT_CLASSES]))
    # each candidate's sets as a bitmask (bit q: sets[q] inside it), its cost once
    masks = [sum(1 << q for q, s in enumerate(sets) if set(s) <= set(j)) for j in cands]
    cost = [JOINT_OVERHEAD + (math.prod(levels[c] for c in j) + 7) // 8 for j in cands]
    todo = (1 << len(sets)) - 1
    out = []
    while todo:
        best = max(range(len(cands)), key=lambda t: (masks[t] & todo).bit_count() / cost[t])
        out.append(cands[best])
        todo &= ~masks[best]
    return tuple(out)


def _class_of(codes: np.ndarray, levels: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """(n,) int64: each row's class under the columns ``cols`` of ``codes`` (n, h), the mixed
    radix of their codes, the first column most significant (0 .. prod(levels[cols]) - 1)."""
    c = np.zeros(codes.shape[0], dtype=np.int64)
    for col in cols:
        c = c * int(levels[col]) + codes[:, col]
    return c


class _SetClasses:
    """Each configuration's class under each column group of the conditioning sets' cover
    (``_cover``: a set's counts are sums of its group's), laid out for the kernels
    (``analysis.kernels``): per group q a (k, kp) block of a flat count array from ``off[q]``
    (kp = k rounded up to a multiple of 8, the extra columns always 0), its running histogram
    of kp entries from ``hoff[q]``, and ``cls`` (n, Q) the classes in the smallest integer type
    that holds them (the kernels' ``rec``). ``joint=False``: every set is its own group."""

    def __init__(self, codes: np.ndarray, levels: np.ndarray, sets: Sequence[tuple[int, ...]],
                 joint: bool = True):
        self.sets = tuple(tuple(int(c) for c in s) for s in sets)
        lv = tuple(int(x) for x in levels)
        self.joints = _cover(lv, self.sets) if joint else self.sets
        n = codes.shape[0]
        self.k = np.array([math.prod(lv[c] for c in j) for j in self.joints], dtype=np.int64)
        self.kp = (self.k + 7) // 8 * 8
        if (self.k * self.kp).sum() >= 2**31:
            raise ValueError(f"conditional MI: {int((self.k * self.kp).sum())} cells; at most "
                             f"{2**31 - 1} (fewer hyperparameter values or a smaller k)")
        self.off = np.concatenate([[0], np.cumsum(self.k * self.kp)]).astype(np.int64)
        self.hoff = np.concatenate([[0], np.cumsum(self.kp)]).astype(np.int64)
        top = int(self.k.max()) if len(self.joints) else 1
        dtype = np.int8 if top <= 2**7 else np.int16 if top <= 2**15 else np.int32
        self.cls = np.zeros((n, len(self.joints)), dtype=dtype)
        for q, j in enumerate(self.joints):
            self.cls[:, q] = _class_of(codes, lv, j)
        # per set: its group, and the axes of the group's (levels..., levels...) table to sum
        self.place = {}
        for s in self.sets:
            q = next(q for q, j in enumerate(self.joints) if set(s) <= set(j))
            j = self.joints[q]
            drop = tuple(a for a, c in enumerate(j) if c not in s)
            kept = [c for c in j if c in s]
            perm = [kept.index(c) for c in s]  # the set's columns among the group's kept ones
            self.place[s] = (q, drop, perm, math.prod(lv[c] for c in s))
        self.size = {}
        for s in self.sets:
            self.size[s] = np.bincount(_class_of(codes, lv, s),
                                       minlength=self.place[s][3]).astype(np.float64)
        self.levels = lv

    def _counts(self) -> np.ndarray:
        return np.zeros(int(self.off[-1]), dtype=np.int64)

    def below(self, rank: np.ndarray) -> np.ndarray:
        """Flat counts, per group q and classes (a, b) at ``off[q] + a * kp[q] + b``: pairs i
        in a, j in b with rank_j < rank_i."""
        out = self._counts()
        _kernels().count_below(rank, self.cls, self.kp, self.off, self.hoff, out)
        return out

    def dominated(self, rg: np.ndarray, rm: np.ndarray) -> np.ndarray:
        """Flat counts as ``below``: pairs i in a, j in b with rg_j < rg_i and rm_j < rm_i."""
        out = self._counts()
        _kernels().count_dominated(rg, rm, self.cls, self.kp, self.off, self.hoff, out)
        return out

    def set_counts(self, flat: np.ndarray, s: tuple[int, ...]) -> np.ndarray:
        """The (K * K,) int64 counts of set ``s`` (cell (class of i, class of j), the set's
        classes in its own column order) from a flat array of ``below``/``dominated``: the sum
        of its group's cells over the group's other columns, for i and for j."""
        q, drop, perm, k = self.place[s]
        kq, kpq = int(self.k[q]), int(self.kp[q])
        block = flat[self.off[q]:self.off[q + 1]].reshape(kq, kpq)[:, :kq]
        if not drop and perm == sorted(perm):
            return block.reshape(-1)
        j = self.joints[q]
        t = block.reshape([self.levels[c] for c in j] * 2)
        r = len(j)
        t = t.sum(axis=tuple(drop) + tuple(r + a for a in drop))
        m = len(perm)
        t = t.transpose(perm + [m + a for a in perm])
        return np.ascontiguousarray(t).reshape(-1)

    def outcomes(self, g_below: np.ndarray, m_below: np.ndarray, both: np.ndarray) -> dict:
        """Per set s: (K * K, 4) float64 (exact integers), per cell (class of i, class of j)
        the ordered pairs with outcome 2 V_g + V_mu; empty classes give empty cells."""
        out = {}
        for s in self.sets:
            n_ab = np.outer(self.size[s], self.size[s]).ravel()
            g_ab, m_ab, gm_ab = (self.set_counts(x, s).astype(np.float64)
                                 for x in (g_below, m_below, both))
            out[s] = np.stack([n_ab - g_ab - m_ab + gm_ab, m_ab - gm_ab, g_ab - gm_ab, gm_ab],
                              axis=-1)
        return out


def _pair_counts(mu: np.ndarray, g: np.ndarray, codes: np.ndarray, levels: np.ndarray,
                 sets: Sequence[tuple[int, ...]]) -> dict:
    """The exact four outcome counts of every pair of classes under each conditioning set
    (tuples of columns of ``codes``), over the configurations (mu, g): per set (K * K, 4), see
    ``_SetClasses.outcomes``."""
    sc = _SetClasses(codes, levels, sets)
    rg, rm = _dense_rank(g), _dense_rank(mu)
    return sc.outcomes(sc.below(rg), sc.below(rm), sc.dominated(rg, rm))


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


def _cmi(cf: _Configs, k: int, shared=None) -> ConditionalMI:
    """``conditional_mutual_information`` of the configurations ``cf``; ``shared``: the
    ``analysis.stats.evaluate._Shared`` of configurations with the same target, whose classes
    and target counts per conditioning sets are reused (None: counted here)."""
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
    check_k(k)
    cf = _configs(_prepare(df, measure, target, hyperparameters))
    return _cmi(cf, k)


def check_k(k) -> None:
    """ValueError (one line) unless ``k`` (the conditioning sets' size) is an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: {k!r}; allowed: an integer >= 1")
