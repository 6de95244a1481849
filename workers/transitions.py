"""Linear-region transitions along closed trajectories (§3, Eq. 1; A.1).

Every hidden neuron has a code for the linear piece its pre-activation z is in: the number of
its activation's breakpoints strictly below z (ReLU: 0/1; ReLU6, HardTanh, HardSigmoid: 0/1/2;
Tanh: the sign, boundary 0). The transitions along a closed trajectory are the L1 changes of the
concatenated code between neighbouring points (Eq. 1).

- :func:`count_transitions` counts them exactly: the k -> infinity limit of Eq. 1 along the
  polygon through the given vertices. Along an edge, the pre-activations of the first hidden
  layer are affine in the edge parameter t. Its breakpoint crossings are the sign changes of
  z - b between the edge's ends, placed by linear interpolation; they are inserted as knots, and
  between consecutive knots the layer's output, hence the next layer's pre-activation, is again
  affine, so the next layer is treated the same way over the refined knots, and so on. float64
  throughout, vectorized over all edges of all paths.
- :func:`dense_transitions` is the paper's sampled count with k equidistant points. It never
  exceeds the exact count and converges to it as k grows. It is also the method for Tanh, whose
  "regions" are not linear pieces.

Supported modules: those of :func:`workers.layers.mlp_layers` (an ``nn.Sequential`` of
``nn.Linear`` layers, with or without bias, separated by PaperActivation, ReLU, ReLU6, Hardtanh
or Tanh), which includes every network of :func:`workers.models.build_mlp`. A user's own module
can be counted if it is (or is rewritten as) such a Sequential.
"""

from __future__ import annotations

import torch
from torch import nn

import workers.layers as layers_mod
from workers.layers import (ACTIVATION_BOUND, TINY32, U32, Layer, activation_error,
                            float32_products_exact, mlp_layers, overflow_risk, product_error)

# Knot rows (knots x widest layer) processed at once in the exact count, in float64 elements.
_EXACT_ELEMENTS = 1 << 25
# float64 elements of a working set that stays in cache (2 MB): the sampled count's chunks, the
# exact count's edge batches
_SAMPLED_ELEMENTS = 1 << 18


def _hidden_layers(model: nn.Module, exact: bool) -> list[Layer]:
    layers = mlp_layers(model, torch.float64, "cpu")
    hidden = layers[:-1]
    if not hidden:
        raise ValueError("transitions: the model has no hidden layer")
    if any(l.act is None for l in hidden):
        raise ValueError("transitions: two nn.Linear layers in a row; expected an activation "
                         "after every hidden layer")
    if exact and not all(l.act.piecewise_linear for l in hidden):
        raise ValueError("transitions: exact counting needs piecewise-linear activations "
                         "(ReLU, ReLU6, HardTanh, HardSigmoid); use dense_transitions for Tanh")
    return hidden


def supports_exact(model: nn.Module) -> bool:
    """Whether the exact count applies: an MLP whose hidden activations are all piecewise
    linear (else use :func:`dense_transitions`, Eq. 1 at sampled points)."""
    try:
        _hidden_layers(model, exact=True)
    except ValueError:
        return False
    return True


def _edges(v: torch.Tensor, closed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end points of the polygon edges of [P, V, d] vertices -> two [P, E, d]."""
    if closed:
        return v, torch.roll(v, -1, dims=1)
    return v[:, :-1], v[:, 1:]


def _check_vertices(vertices: torch.Tensor, ndim: int, closed: bool) -> None:
    shape = "[P, V, d]" if ndim == 3 else "[V, d]"
    if vertices.ndim != ndim:
        raise ValueError(f"vertices: expected {shape}, got shape {tuple(vertices.shape)}")
    if vertices.shape[-2] < 2:
        raise ValueError(f"vertices: need at least 2 vertices, got {vertices.shape[-2]}")


def _insert_knots(t, z, edge, k, new_t, new_z):
    """Merge new knots into the knots (sorted by edge, then t). New knot m lies strictly inside
    the interval from old knot k[m] to k[m] + 1 (same edge), so only the new knots are sorted, by
    (k, t); an old knot i moves up by the number of new knots in intervals before it."""
    order = torch.argsort(new_t, stable=True)
    order = order[torch.argsort(k[order], stable=True)]
    k, new_t, new_z = k[order], new_t[order], new_z[order]
    n_old, n_new = len(t), len(k)
    per_interval = torch.bincount(k, minlength=n_old)
    before = torch.cumsum(per_interval, 0) - per_interval  # new knots in intervals < i
    old_pos = torch.arange(n_old) + before
    new_pos = k + 1 + torch.arange(n_new)
    t2 = torch.empty(n_old + n_new, dtype=t.dtype)
    z2 = torch.empty(n_old + n_new, z.shape[1], dtype=z.dtype)
    e2 = torch.empty(n_old + n_new, dtype=edge.dtype)
    t2[old_pos], t2[new_pos] = t, new_t
    z2[old_pos], z2[new_pos] = z, new_z
    e2[old_pos], e2[new_pos] = edge, edge[k]
    return t2, z2, e2


# The most float64 elements the exact count's knots (one row per linear piece, as wide as the
# layer) may take; None: a third of the memory available when an edge batch starts (a merge
# holds the old and the new knots at once). Past the bound the count raises CountTooLarge
# instead of the process being killed for memory.
MAX_KNOT_ELEMENTS: int | None = None


class CountTooLarge(RuntimeError):
    """The exact transition count would need more memory than the machine has available."""


class CountUnresolved(CountTooLarge):
    """The exact count's linear pieces are finer than float64 places a crossing in."""


# A piece of at most 2^-44 of an edge (about 256 float64 ulps of its parameter near 1) cannot
# place a crossing; more than MAX_UNRESOLVED crossings in such pieces on one edge make the
# count undefined. Trained networks cross far apart; a deep narrow HardTanh network at
# init_scale 8 multiplies its slopes by about 8 a layer, and from about layer 20 on float64's
# rounding at its knots flips signs across them, so that (counted) its knots double a layer.
RESOLUTION = 2.0 ** -44
MAX_UNRESOLVED = 16


def _knot_budget() -> int:
    if MAX_KNOT_ELEMENTS is not None:
        return MAX_KNOT_ELEMENTS
    import psutil

    return int(psutil.virtual_memory().available // (3 * 8))


def _edge_crossings(hidden: list[Layer], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact crossing counts of every edge a[e] -> b[e] ([E, d] float64) -> int64 [E].
    Raises CountTooLarge when the linear pieces to carry exceed ``MAX_KNOT_ELEMENTS``, and
    CountUnresolved when more than ``MAX_UNRESOLVED`` crossings on an edge fall in pieces
    float64 cannot resolve (``RESOLUTION``)."""
    e = a.shape[0]
    budget = _knot_budget()
    edge = torch.arange(e).repeat_interleave(2)  # knots, sorted by edge then t
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(e)
    h = torch.stack([a, b], dim=1).reshape(2 * e, -1)
    counts = torch.zeros(e, dtype=torch.int64)
    unresolved = torch.zeros(e, dtype=torch.int64)  # crossings in pieces float64 cannot place
    for depth, layer in enumerate(hidden):
        last = depth == len(hidden) - 1  # its crossings are counted, not carried further
        z = layer.affine(h)  # affine in t between consecutive knots of the same edge
        between = (edge[1:] != edge[:-1]).nonzero()[:, 0]  # knot pairs across two edges
        new_k, new_t, new_z = [], [], []
        for bp in layer.act.breakpoints:
            above = z > bp
            changed = above[1:] != above[:-1]
            changed[between] = False
            k, j = torch.nonzero(changed, as_tuple=True)
            if len(k) == 0:
                continue
            counts.index_add_(0, edge[k], torch.ones_like(k))
            unresolved.index_add_(0, edge[k], (t[k + 1] - t[k] <= RESOLUTION).long())
            if last:
                continue
            z0, z1 = z[k, j], z[k + 1, j]
            frac = ((bp - z0) / (z1 - z0)).clamp(0.0, 1.0)
            new_k.append(k)
            new_t.append(t[k] + frac * (t[k + 1] - t[k]))
            new_z.append(torch.lerp(z[k], z[k + 1], frac[:, None]))
        if int(unresolved.max()) > MAX_UNRESOLVED:
            raise CountUnresolved(
                f"the linear pieces along an edge are finer than float64 resolves by hidden "
                f"layer {depth + 1} of {len(hidden)}: {int(unresolved.max())} crossings in "
                f"pieces of at most {RESOLUTION:.2g} of the edge (the slopes multiply layer by "
                "layer; counted, float64's rounding flips would multiply the knots)")
        if last:
            break
        if new_k:
            pieces = len(t) + sum(len(k) for k in new_k)
            if pieces * z.shape[1] > budget:
                raise CountTooLarge(
                    f"the exact count would carry {pieces:,} linear pieces of width "
                    f"{z.shape[1]} past hidden layer {depth + 1} of {len(hidden)} on {e} edges, "
                    f"more than the {budget:,} float64 values memory allows (the pieces "
                    "multiply layer by layer)")
            t, z, edge = _insert_knots(t, z, edge, torch.cat(new_k), torch.cat(new_t),
                                       torch.cat(new_z))
        h = layer.act.fn(z)
    return counts


def transitions_per_edge(model: nn.Module, vertices: torch.Tensor, closed: bool = True,
                         max_edges: int | None = None) -> torch.Tensor:
    """Exact crossings on every edge of P polygons: ``vertices`` [P, V, d] -> int64 [P, E]
    (E = V when closed, else V - 1). Edges are processed in batches of at most ``max_edges``
    (default: by a memory bound)."""
    _check_vertices(vertices, 3, closed)
    hidden = _hidden_layers(model, exact=True)
    v = vertices.detach().to(device="cpu", dtype=torch.float64)
    starts, ends = _edges(v, closed)
    p, e, d = starts.shape
    a, b = starts.reshape(-1, d), ends.reshape(-1, d)
    widest = max([d] + [l.weight.shape[0] for l in hidden])
    hidden_w = max(l.weight.shape[0] for l in hidden)
    if max_edges is None:
        # Few edges at a time, so that the knots' rows (about 2 + width / 2 per edge on
        # trained networks, each as wide as the widest hidden layer) stay in cache: the passes
        # over them are memory-bound (3x on a width-128 network against one batch of 800
        # edges; bench/README.md). A crossing-free batch needs 2 knots per edge; the memory
        # bound leaves room for many crossings.
        max_edges = max(4, min(_EXACT_ELEMENTS // (64 * widest),
                               _SAMPLED_ELEMENTS // (hidden_w * (2 + hidden_w // 2))))
    out = [_edge_crossings(hidden, a[i:i + max_edges], b[i:i + max_edges])
           for i in range(0, len(a), max_edges)]
    return torch.cat(out).reshape(p, e)


def count_transitions_batch(model: nn.Module, vertices: torch.Tensor, closed: bool = True) -> torch.Tensor:
    """Exact transition counts for P polygons, ``vertices`` [P, V, d] -> int64 [P]."""
    return transitions_per_edge(model, vertices, closed).sum(dim=1)


def count_transitions(model: nn.Module, vertices: torch.Tensor, closed: bool = True) -> int:
    """Exact number of (neuron, breakpoint) crossings along the polygon through ``vertices``
    ([V, d]; closed: the last vertex joins the first)."""
    _check_vertices(vertices, 2, closed)
    return int(count_transitions_batch(model, vertices[None], closed)[0])


def region_codes(hidden: list[Layer], x: torch.Tensor,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """c(x): the code of every hidden neuron, concatenated, [N, total hidden] (int16): the
    number of its activation's breakpoints strictly below its pre-activation, evaluated in
    ``dtype`` (the layers' own)."""
    out = []
    h = x.to(dtype)
    for layer in hidden:
        z = layer.affine(h)
        c = torch.zeros(z.shape, dtype=torch.int16)
        for bp in layer.act.breakpoints:
            c += (z > bp).to(torch.int16)
        out.append(c)
        h = layer.act.fn(z)
    return torch.cat(out, dim=1)


def codes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """c(x) for the rows of ``x`` ([N, d]) of a supported model, [N, total hidden] (int16)."""
    return region_codes(_hidden_layers(model, exact=False), x.cpu())


def polygon_points(vertices: torch.Tensor, k: int, closed: bool = True, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
    """Points ``start..stop-1`` of k equally spaced in the edge parameter along the polygon
    (each edge spans the same parameter length; point i sits at parameter i * E / k, so point 0
    is the first vertex). [V, d] -> [stop - start, d] (float64)."""
    v = vertices.detach().to(torch.float64)[None]
    starts, ends = (x[0] for x in _edges(v, closed))
    n_edges = len(starts)
    stop = k if stop is None else stop
    u = torch.arange(start, stop, dtype=torch.float64) * (n_edges / k)
    i = u.floor().long().clamp(max=n_edges - 1)
    return starts[i] + (u - i)[:, None] * (ends[i] - starts[i])


def _codes_changed(z: torch.Tensor, breakpoints) -> torch.Tensor:
    """Code changes between neighbouring rows along dim 1 of pre-activations z [L, S, w],
    summed over the breakpoints and neurons -> int64 [L]."""
    out = torch.zeros(z.shape[0], dtype=torch.int64)
    for bp in breakpoints:
        above = z > bp
        out += (above[:, 1:] != above[:, :-1]).sum(dim=(1, 2))
    return out


def sampled_transitions(model: nn.Module, vertices: torch.Tensor, k: int,
                        closed: bool = True) -> torch.Tensor:
    """Eq. 1 with k equidistant samples along each of P polygons, ``vertices`` [P, V, d] ->
    int64 [P]: the number :func:`dense_transitions` gives for each polygon (Tanh included),
    with less work. The first layer's pre-activations are affine along an edge: its code
    changes between the first and the last sample on an edge are read off those two samples
    (an affine function crosses a breakpoint at most once), and at the other samples the
    values the layers above need are interpolated between the edge's ends instead of
    multiplied out. The layers above are evaluated at every sample as in the dense count, in
    chunks that stay in cache, in float32 with a rounding bound, and again in float64 for the
    samples with a pre-activation within the bound of a breakpoint (``_upper_changes``;
    float64 throughout for networks with biases, or when float32 products are not float32:
    TF32, bfloat16).

    Raises ValueError for k < 2 or a model that is not a supported MLP. A pre-activation within
    float64 rounding of a breakpoint (a tie in exact arithmetic) may round differently from the
    dense count.
    """
    _check_vertices(vertices, 3, closed)
    if k < 2:
        raise ValueError(f"k: must be >= 2, got {k}")
    hidden = _hidden_layers(model, exact=False)
    v = vertices.detach().to(device="cpu", dtype=torch.float64)
    starts, ends = _edges(v, closed)  # [P, E, d]
    p, n_edges, _ = starts.shape
    za_edge, zb_edge = hidden[0].affine(starts), hidden[0].affine(ends)  # [P, E, w1]
    dz_edge = zb_edge - za_edge
    n_int = k if closed else k - 1  # intervals between neighbouring samples

    def where(idx):  # samples -> (edge, offset along it), polygon_points' parametrization
        if closed:
            idx = torch.where(idx == n_int, 0, idx)  # the loop closes on its first sample
        u = idx.to(torch.float64) * (n_edges / n_int)
        e = u.floor().long().clamp(max=n_edges - 1)
        return e, (u - e)[:, None]

    # first layer: along the samples that are first or last on their edge (in order, the loop
    # closed), neighbours are either the two ends of one edge's samples (affine between them:
    # a breakpoint is crossed at most once) or neighbouring samples on two edges
    every = torch.arange(n_int + 1)
    e_all, _ = where(every)
    ends_of_edges = torch.ones(n_int + 1, dtype=torch.bool)
    ends_of_edges[1:-1] = (e_all[1:-1] != e_all[:-2]) | (e_all[1:-1] != e_all[2:])
    e, f = where(every[ends_of_edges])
    z_ends = torch.addcmul(za_edge[:, e], f[None], dz_edge[:, e])  # [P, B, w1]
    counts = _codes_changed(z_ends, hidden[0].act.breakpoints)
    if len(hidden) == 1:
        return counts
    widest = max(l.weight.shape[0] for l in hidden)
    step = max(1, _SAMPLED_ELEMENTS // widest)
    # the layers above the first in float32, with a rounding bound (``_upper_changes``), when
    # there are no biases and float32 products are float32 (not TF32/bfloat16)
    fast = all(l.bias is None for l in hidden) and float32_products_exact()
    # the float32 weights and ||W||_inf of the layers above the first, made once
    ws32 = [(l.weight.to(torch.float32), float(l.weight.abs().sum(dim=1).max()))
            for l in hidden[1:]] if fast else None
    za32, dz32 = za_edge.to(torch.float32), dz_edge.to(torch.float32)
    # |z| along an edge is at most its larger end: per edge, the largest over the neurons
    z_max = torch.maximum(za_edge.abs().amax(dim=2), zb_edge.abs().amax(dim=2))  # [P, E]
    state: dict = {}  # "float64" set once the float32 pass stops paying (``_upper_changes``)
    for s0 in range(0, n_int, step):
        e, f = where(torch.arange(s0, min(n_int, s0 + step) + 1))  # chunks share a sample
        f32 = f.to(torch.float32)
        # the runs of samples on one edge: (edge, first row, end row)
        edge_ids, sizes = torch.unique_consecutive(e, return_counts=True)
        bounds = torch.cumsum(sizes, 0).tolist()
        runs = list(zip(edge_ids.tolist(), [0] + bounds[:-1], bounds))
        z32 = torch.empty(len(e), za_edge.shape[2], dtype=torch.float32)
        for q in range(p):
            def exact(rows, q=q, e=e, f=f):  # float64 first-layer values of these samples
                return torch.addcmul(za_edge[q, e[rows]], f[rows], dz_edge[q, e[rows]])

            if fast and not state.get("float64"):
                # interpolated in float32, run by run (no gathered rows): within 10 u
                # max(|za|, |zb|) of the float64 value
                for edge, a, b in runs:
                    torch.addcmul(za32[q, edge], f32[a:b], dz32[q, edge], out=z32[a:b])
                counts[q] += _upper_changes(hidden, z32, exact, z_max[q, e], ws32, state)
            else:
                z = exact(slice(None))
                counts[q] += _upper_changes(hidden, z, exact, z_max[q, e])
    return counts


def _upper_changes(hidden: list[Layer], z1: torch.Tensor, exact, z1_max: torch.Tensor,
                   ws32=None, state: dict | None = None) -> int:
    """Code changes between neighbouring samples in the hidden layers above the first, from
    the first layer's pre-activations z1 [S, w1] (float64, or float32 within 10 u ``z1_max``
    of the float64 values; ``z1_max`` [S] bounds their absolute values, row by row);
    ``exact(rows)``: the float64 values of those rows. With ``ws32`` (per layer above the
    first: its float32 weights and ||W||_inf) the layers run in
    float32 with a bound E per sample on how far each pre-activation can be from its float64
    value (rounding, the standard bound gamma_m |W| |h| with |W| |h| <= ||W||_inf ||h||_inf,
    1-Lipschitz activations evaluated within 4 u (|h| + 1)); a sample with a pre-activation
    within E of a breakpoint (or with a non-finite value) is evaluated again in float64, so the
    codes are float64's (up to float64 rounding where a pre-activation equals a breakpoint in
    exact arithmetic). ``state``: a dict whose "float64" this sets when more than
    ``workers.layers.UNSURE_LIMIT`` of the samples were evaluated again (the caller then stops
    passing ``ws32``)."""
    if ws32 is None:
        total, z = 0, z1
        for i in range(1, len(hidden)):
            z = hidden[i].affine(hidden[i - 1].act.fn(z))
            total += int(_codes_changed(z[None], hidden[i].act.breakpoints)[0])
        return total
    # a first-layer value that overflowed float32 (its interpolation) is unsure
    above, unsure = [], ~torch.isfinite(z1.sum(dim=1))
    z = z1
    # [S], float64: the float32 interpolation (u (2 |za| + 4 |dz|) <= 10 u z1_max, and margin)
    err = 12 * U32 * z1_max + TINY32
    for i in range(1, len(hidden)):
        act, layer = hidden[i - 1].act, hidden[i]
        w32, norm = ws32[i - 1]
        h = act.fn(z)
        size = ACTIVATION_BOUND.get(act.name)
        size = (torch.linalg.vector_norm(h, float("inf"), dim=1).to(torch.float64)
                if size is None else torch.full_like(err, size))
        err = activation_error(err, size)  # 1-Lipschitz, evaluated in float32
        # a partial sum that may overflow float32 (to +-inf, which a ReLU after it hides)
        unsure |= overflow_risk(norm, size, err, w32.shape[1])
        z = h @ w32.T
        err = product_error(err, norm, w32.shape[1], size)
        slack = (err * (1 + 1e-6)).to(torch.float32)
        # a row with a non-finite value or bound (a float32 overflow) is unsure: its sum is
        # non-finite then (inf, or nan from inf - inf or a nan)
        unsure |= ~(torch.isfinite(z.sum(dim=1)) & torch.isfinite(err))
        for bp in layer.act.breakpoints:
            above.append(z > bp)
            unsure |= (z.abs() if bp == 0 else (z - bp).abs()).amin(dim=1) <= slack
    if state is not None and float(unsure.double().mean()) > layers_mod.UNSURE_LIMIT:
        state["float64"] = True
    if unsure.any():  # those samples again in float64
        rows = unsure.nonzero()[:, 0]
        z, j = exact(rows), 0
        for i in range(1, len(hidden)):
            z = hidden[i].affine(hidden[i - 1].act.fn(z))
            for bp in hidden[i].act.breakpoints:
                above[j][rows] = z.to(above[j].device) > bp
                j += 1
    return int(sum((a[1:] != a[:-1]).sum() for a in above))


def dense_transitions(model: nn.Module, vertices: torch.Tensor, k: int, closed: bool = True,
                      chunk: int = 1 << 14) -> int:
    """Eq. 1 with k equidistant samples along the polygon through ``vertices`` ([V, d]):
    sum_i ||c(z_i) - c(z_{i+1})||_1, wrapping around when ``closed``. Works for Tanh (boundary
    0) too. Chunked, so k = 2^20 fits in memory."""
    _check_vertices(vertices, 2, closed)
    if k < 2:
        raise ValueError(f"k: must be >= 2, got {k}")
    hidden = _hidden_layers(model, exact=False)
    total = 0
    first = prev = None
    for s in range(0, k, chunk):
        # open path: k - 1 steps, so that the last sample is the last vertex
        pts = polygon_points(vertices, k if closed else k - 1, closed, s, min(k, s + chunk))
        c = region_codes(hidden, pts).to(torch.int32)
        if prev is not None:
            total += int((c[0] - prev).abs().sum())
        total += int((c[1:] - c[:-1]).abs().sum())
        if first is None:
            first = c[0].clone()
        prev = c[-1].clone()
    if closed:
        total += int((first - prev).abs().sum())
    return total
