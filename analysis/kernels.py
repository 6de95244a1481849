"""Compiled loops (numba) behind ``analysis.stats``: the conditional MI's exact pair counts, the
correlations of a bootstrap replicate from row weights, the seed means of every measure at
once, and the granulated Kendall's and sign-error's sums. Each function states what it counts;
``tests/test_stats.py`` checks each against the enumeration of all pairs or against scipy.

Integer counts are exact (int32 accumulators flushed into int64 before they can overflow);
float sums are taken in the order ``np.bincount`` takes them (a sequential loop), so the seed
means are the same numbers bit for bit as numpy's.

The conditional MI's counts lay every conditioning set s out as a (k[s], kp[s]) block of a flat
array (``off[s]`` its start; kp[s] = k[s] rounded up to a multiple of 8, the columns past k[s]
always 0) and its running histogram as kp[s] entries from ``hoff[s]``, so that a row is added
to a row in whole 8-lane vector additions (``_add8``). ``rec`` (n, S) holds each element's
class under each set (int8, int16 or int32, the smallest that holds every class).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# int32 accumulators are flushed into int64 once a cell could hold more than this
_FLUSH = 1 << 30
# the dominance count enumerates the pairs inside blocks of this many elements of the g-order
# (its first merge levels), then merges
_BLOCK = 16


@intrinsic
def _add8(typingctx, a, ia, b, ib):
    """a[ia:ia + 8] += b[ib:ib + 8] on int32 arrays as one 8-lane vector addition (the caller
    keeps both ranges inside the arrays; LLVM would otherwise guard each short loop against
    the two arrays overlapping and add element by element)."""
    sig = types.void(a, ia, b, ib)

    def codegen(context, builder, signature, args):
        aa, ja, bb, jb = args
        ap = context.make_array(signature.args[0])(context, builder, aa)
        bp = context.make_array(signature.args[2])(context, builder, bb)
        vec = ir.VectorType(ir.IntType(32), 8).as_pointer()
        pa = builder.bitcast(builder.gep(ap.data, [ja]), vec)
        pb = builder.bitcast(builder.gep(bp.data, [jb]), vec)
        builder.store(builder.add(builder.load(pa, align=4), builder.load(pb, align=4)), pa,
                      align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _flush(acc, out):
    for c in range(acc.size):
        out[c] += acc[c]
        acc[c] = 0


@njit(cache=True, nogil=True, inline="always")
def _add_rows(acc, rec, e, h, kp, off, hoff):
    """Each set's histogram h (kp[s] entries from hoff[s]) added to the row of acc that the
    element's classes ``rec[e, :]`` select."""
    for s in range(kp.size):
        r = off[s] + rec[e, s] * kp[s]
        for b in range(0, kp[s], 8):
            _add8(acc, r + b, h, hoff[s] + b)


@njit(cache=True, nogil=True)
def order_by_rank(rank, order=None):
    """The indices of ``rank`` (n,) int64 dense ranks 0..R-1 in increasing rank, equal ranks
    in the order of ``order`` (n,) int64 (None: index order): a counting sort, O(n + R), the
    same permutation as ``np.argsort(rank[order], kind="stable")`` mapped through ``order``."""
    n = rank.size
    top = 0
    for t in range(n):
        top = max(top, rank[t])
    start = np.zeros(top + 2, np.int64)
    for t in range(n):
        start[rank[t] + 1] += 1
    for v in range(top + 1):
        start[v + 1] += start[v]
    out = np.empty(n, np.int64)
    for t in range(n):
        e = t if order is None else order[t]
        out[start[rank[e]]] = e
        start[rank[e]] += 1
    return out


@njit(cache=True, nogil=True)
def count_below(rank, rec, kp, off, hoff, out, flush=_FLUSH):
    """One-dimensional counts of every conditioning set at once: for each set s and classes
    (a, b), ``out[off[s] + a * kp[s] + b] += #{(i, j): class_s(i) = a, class_s(j) = b,
    rank[j] < rank[i]}`` over all ordered pairs of the n elements.

    rank (n,) int64 (ties equal); rec (n, S) each element's class under each set; kp (S,)
    classes per set rounded up to a multiple of 8; off (S + 1,) offsets of each set's
    (k, kp) block in ``out`` and hoff (S + 1,) of its histogram, both int64. ``out`` (off[S],)
    int64, added to; ``flush``: the int32 accumulators go into ``out`` once a cell may exceed it
    (tests pass 1). Cost: n * sum(kp) / 8 vector additions (a running histogram of the
    elements below, added to each element's row)."""
    n, S = rec.shape
    order = order_by_rank(rank)
    srt = np.empty_like(rec)
    for t in range(n):
        srt[t] = rec[order[t]]
    h = np.zeros(hoff[S], np.int32)
    acc = np.zeros(out.size, np.int32)
    bound = 0
    i = 0
    while i < n:
        r = rank[order[i]]
        j = i
        while j < n and rank[order[j]] == r:
            j += 1
        for t in range(i, j):
            _add_rows(acc, srt, t, h, kp, off, hoff)
            bound += i
            if bound > flush:
                _flush(acc, out)
                bound = 0
        for t in range(i, j):
            row = srt[t]
            for s in range(S):
                h[hoff[s] + row[s]] += 1
        i = j
    _flush(acc, out)


@njit(cache=True, nogil=True)
def count_dominated(rg, rm, rec, kp, off, hoff, out, flush=_FLUSH):
    """Two-dimensional counts of every conditioning set at once: ``out[off[s] + a * kp[s] + b]
    += #{(i, j): class_s(i) = a, class_s(j) = b, rg[j] < rg[i] and rm[j] < rm[i]}`` (arguments
    as ``count_below``; rg, rm (n,) int64 dense ranks, ties equal).

    In the g-order (ties broken by mu descending) a pair (j before i) counts exactly when
    rm[j] < rm[i]. Blocks of ``_BLOCK`` consecutive elements count their pairs directly; then a
    bottom-up merge sort by mu in which, at every level, the upper half of each segment holds
    the targets and the lower half the sources, merged with targets first among equal mu (so a
    pair tied in mu never counts): each pair split at a level is counted there and only there.
    A target adds the running histogram of the sources merged before it to its row; the
    elements' classes travel with them (``rec`` rows copied in merged order, read in sequence).
    Cost: about n (log2(n) - 4) / 2 * sum(kp) / 8 vector additions."""
    n, S = rec.shape
    if n < 2:
        return
    # the g-order, ties in g by mu descending: two stable counting sorts (least significant
    # key first), the order of np.argsort(rg * span + (span - 1 - rm), kind="mergesort")
    span = np.int64(rm.max()) + 1
    perm = order_by_rank(rg, order_by_rank(span - 1 - rm))
    per = 8 // rec.itemsize  # classes per 8-byte word
    W = (S + per - 1) // per  # words per element
    cur = np.zeros((n, W * per), rec.dtype)  # the classes in merge order, padded rows
    nxt = np.zeros((n, W * per), rec.dtype)
    cw = cur.reshape(n * W * per).view(np.uint64).reshape(n, W)  # the same rows as words
    nw = nxt.reshape(n * W * per).view(np.uint64).reshape(n, W)
    val = np.empty(n, np.int64)
    for t in range(n):
        cur[t, :S] = rec[perm[t]]
        val[t] = rm[perm[t]]
    acc = np.zeros(out.size, np.int32)
    tmp = np.empty(W, np.uint64)
    bound = 0
    # the first merge levels: every pair inside a block, then the block sorted by mu
    for lo in range(0, n, _BLOCK):
        hi = min(lo + _BLOCK, n)
        for i in range(lo + 1, hi):
            for j in range(lo, i):
                if val[j] < val[i]:
                    for s in range(S):
                        acc[off[s] + cur[i, s] * kp[s] + cur[j, s]] += 1
        bound += (hi - lo) * (hi - lo)
        if bound > flush:
            _flush(acc, out)
            bound = 0
        for i in range(lo + 1, hi):  # insertion sort by mu (the order of ties is free here)
            v = val[i]
            for w in range(W):
                tmp[w] = cw[i, w]
            j = i - 1
            while j >= lo and val[j] > v:
                val[j + 1] = val[j]
                for w in range(W):
                    cw[j + 1, w] = cw[j, w]
                j -= 1
            val[j + 1] = v
            for w in range(W):
                cw[j + 1, w] = tmp[w]
    vnx = np.empty_like(val)
    h = np.zeros(hoff[S], np.int32)
    width = _BLOCK
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, o = lo, mid, lo
            while i < mid or j < hi:
                if j >= hi or (i < mid and val[i] < val[j]):
                    for s in range(S):
                        h[hoff[s] + cur[i, s]] += 1
                    for w in range(W):
                        nw[o, w] = cw[i, w]
                    vnx[o] = val[i]
                    i += 1
                else:
                    _add_rows(acc, cur, j, h, kp, off, hoff)
                    for w in range(W):
                        nw[o, w] = cw[j, w]
                    vnx[o] = val[j]
                    bound += i - lo
                    if bound > flush:
                        _flush(acc, out)
                        bound = 0
                    j += 1
                o += 1
            if (mid - lo) * S > h.size:  # the histogram back to zero for the next segment
                h[:] = 0
            else:
                for q in range(lo, mid):
                    for s in range(S):
                        h[hoff[s] + cur[q, s]] -= 1
        cur, nxt = nxt, cur
        cw, nw = nw, cw
        val, vnx = vnx, val
        width *= 2
    _flush(acc, out)


def dense_rank(x):
    """Dense ranks 0.. of x (n,) float64 without NaN (equal values equal ranks; -inf < inf),
    int64. The order is numpy's (unstable) sort, several times faster than a stable one here:
    the ranks do not depend on the order of equal values."""
    return _dense_rank_of(x, np.argsort(x))


@njit(cache=True, nogil=True)
def _dense_rank_of(x, order):
    """Dense ranks of x (n,) float64 given ``order``, its indices sorted by value."""
    out = np.empty(x.size, np.int64)
    r = -1
    for t in range(x.size):
        e = order[t]
        if t == 0 or x[e] != x[order[t - 1]]:
            r += 1
        out[e] = r
    return out


@njit(cache=True, nogil=True)
def config_sums(rows, row_cfg, g, mu, n_cfg):
    """Per configuration: the number of ``rows`` (a row listed twice counts twice), the sum of
    g and of every measure's column of mu (n, M), summed in the order of ``rows`` as
    ``np.bincount(row_cfg[rows], weights=...)`` does (the same float64 numbers)."""
    m = mu.shape[1]
    cnt = np.zeros(n_cfg, np.int64)
    gs = np.zeros(n_cfg)
    ms = np.zeros((n_cfg, m))
    for t in range(rows.size):
        r = rows[t]
        c = row_cfg[r]
        cnt[c] += 1
        gs[c] += g[r]
        for q in range(m):
            ms[c, q] += mu[r, q]
    return cnt, gs, ms


@njit(cache=True, nogil=True)
def _weighted_pearson(x, y, w):
    """Pearson's r of the multiset holding row r w[r] times, computed as scipy.stats.pearsonr
    does (centred, scaled by the largest deviation, normalised); NaN below 2 values, with a
    constant side or a non-finite value."""
    n = 0
    sx = 0.0
    sy = 0.0
    x0 = np.nan
    y0 = np.nan
    cx = True
    cy = True
    for r in range(x.size):
        if w[r] == 0:
            continue
        if not (np.isfinite(x[r]) and np.isfinite(y[r])):
            return np.nan
        if n == 0:
            x0, y0 = x[r], y[r]
        cx = cx and x[r] == x0
        cy = cy and y[r] == y0
        n += w[r]
        sx += w[r] * x[r]
        sy += w[r] * y[r]
    if n < 2 or cx or cy:
        return np.nan
    xm = sx / n
    ym = sy / n
    ax = 0.0
    ay = 0.0
    for r in range(x.size):
        if w[r]:
            ax = max(ax, abs(x[r] - xm))
            ay = max(ay, abs(y[r] - ym))
    nx = 0.0
    ny = 0.0
    for r in range(x.size):
        if w[r]:
            dx = (x[r] - xm) / ax
            dy = (y[r] - ym) / ay
            nx += w[r] * dx * dx
            ny += w[r] * dy * dy
    nx = np.sqrt(nx)
    ny = np.sqrt(ny)
    s = 0.0
    for r in range(x.size):
        if w[r]:
            s += w[r] * ((x[r] - xm) / ax / nx) * ((y[r] - ym) / ay / ny)
    return min(1.0, max(-1.0, s))


@njit(cache=True, nogil=True)
def average_ranks(order, ties_next, w):
    """1-based average ranks of the multiset holding row r w[r] times: rows in ``order`` (sorted
    by value), ``ties_next[t]`` True where the row at t + 1 has the same value."""
    out = np.zeros(order.size)
    before = 0
    t = 0
    while t < order.size:
        u = t
        tot = 0
        while True:
            tot += w[order[u]]
            if not ties_next[u]:
                break
            u += 1
        rank = before + (tot + 1) / 2.0
        for q in range(t, u + 1):
            out[order[q]] = rank
        before += tot
        t = u + 1
    return out


@njit(cache=True, nogil=True)
def correlations(x, xorder, xties, y, yrank, n_yrank, yavg, w):
    """Pearson's r, Spearman's rho and Kendall's tau-b of the multiset holding trial row r w[r]
    times (a bootstrap replicate's rows without the copies).

    x, y (n,) float64 measure and target per row; xorder the rows sorted by (x, yrank); xties[t]
    True where the row at t + 1 has the same x; yrank (n,) dense ranks of y (0 .. n_yrank - 1);
    yavg the rows' average ranks of y under w (``average_ranks``). Kendall's tau-b from exact
    integer counts with scipy.stats.kendalltau's formula: n_0 = N (N - 1) / 2, ties in x, in y
    and in both as sums of W (W - 1) / 2 over tied groups of total weight W, discordant pairs
    by a Fenwick tree over y's ranks (the same number as scipy's); NaN below 2 values or with
    a constant side, as scipy's."""
    pear = _weighted_pearson(x, y, w)
    spear = _weighted_pearson(average_ranks(xorder, xties, w), yavg, w)
    tree = np.zeros(n_yrank + 1, np.int64)
    ycount = np.zeros(n_yrank, np.int64)
    inserted = 0
    dis = 0
    xtie = 0
    ntie = 0
    t = 0
    m = xorder.size
    while t < m:
        u = t
        while u + 1 < m and xties[u]:
            u += 1
        wx = 0
        q = t
        while q <= u:  # joint ties: runs of equal y inside the x group (sorted by y)
            v = q
            wj = w[xorder[q]]
            while v + 1 <= u and yrank[xorder[v + 1]] == yrank[xorder[q]]:
                v += 1
                wj += w[xorder[v]]
            ntie += wj * (wj - 1) // 2
            q = v + 1
        for q in range(t, u + 1):
            r = xorder[q]
            if w[r] == 0:
                continue
            wx += w[r]
            below = 0  # inserted rows with y rank <= this one's
            p = yrank[r] + 1
            while p > 0:
                below += tree[p]
                p -= p & -p
            dis += w[r] * (inserted - below)
        for q in range(t, u + 1):
            r = xorder[q]
            if w[r] == 0:
                continue
            p = yrank[r] + 1
            while p <= n_yrank:
                tree[p] += w[r]
                p += p & -p
            inserted += w[r]
            ycount[yrank[r]] += w[r]
        xtie += wx * (wx - 1) // 2
        t = u + 1
    ytie = 0
    for v in range(n_yrank):
        ytie += ycount[v] * (ycount[v] - 1) // 2
    tot = inserted * (inserted - 1) // 2
    if inserted < 2 or xtie == tot or ytie == tot:
        return pear, spear, np.nan
    cmd = tot - xtie - ytie + ntie - 2 * dis
    tau = cmd / np.sqrt(np.float64(tot - xtie)) / np.sqrt(np.float64(tot - ytie))
    return pear, spear, min(1.0, max(-1.0, tau))


@njit(cache=True, nogil=True)
def pair_signs(mu, a, b, sg, lab, n_lab):
    """Granulated Kendall's sums: per group label, the sum over listed pairs (a, b) of
    sign(mu[b] - mu[a]) * sg (sg the target's sign on the pair), as float64."""
    out = np.zeros(n_lab)
    for p in range(a.size):
        d = (mu[b[p]] > mu[a[p]]) - (mu[b[p]] < mu[a[p]])
        out[lab[p]] += np.float64(d) * sg[p]
    return out


@njit(cache=True, nogil=True)
def run_errors(mu, ra, rb, sg, env, n_env):
    """Sign-error's sums: per environment, the sum over its pairs of runs of
    (1 - sign(mu[rb] - mu[ra]) * sg) / 2."""
    out = np.zeros(n_env)
    for p in range(ra.size):
        d = (mu[rb[p]] > mu[ra[p]]) - (mu[rb[p]] < mu[ra[p]])
        out[env[p]] += (1.0 - np.float64(d) * sg[p]) / 2.0
    return out
