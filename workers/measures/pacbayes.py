"""PAC-Bayes measures, flatness and the expected-sharpness curve (../shared/MEASURES.md).

Jiang et al. 2019, "Fantastic Generalization Measures and Where to Find Them" (ICLR 2020),
Appendix C.6-C.7, Eq. 48-49, 53 and 56-57, 61, with their sigma' search; Neyshabur et al.
2017, "Exploring Generalization in Deep Learning", §3 and Fig. 2 (expected sharpness against KL).
w is every parameter of the network, biases included where it has them (Jiang et al.'s networks
had biases): every w_k is perturbed, and ||w||, ||w - w^0||, n_w and the KL sum over all of them.

The sigma' search (Jiang et al. §C, flatness): the largest sigma such that the Monte-Carlo mean
training error of w + nu, nu_k ~ N(0, sigma^2), exceeds err(w) by at most ``target`` (0.1):
bisection on [0, ``upper``] (2), at most ``steps`` (15) steps of ``samples`` (10) draws, stopped
when the gap is within ``tolerance`` (0.01) of the target. The magnitude-aware sigma'_mag is the
same with nu_k ~ N(0, sigma^2 w_k^2 + eps^2), eps = 1e-3: a standard deviation of
sqrt(sigma^2 w_k^2 + eps^2) (the paper's definition; a public implementation passes the variance
where torch.normal takes a standard deviation).

Cost and determinism: the ``samples`` perturbed networks of one sigma are evaluated as one
batch (stacked weight matrices, one batched matrix product per layer), in groups of samples and
chunks of points that keep them within ``BUDGET`` elements (wide networks). Losses are computed
in float64. Error counts (the sigma' searches) are float64's (up to float64 rounding at exact
ties), computed in float32 with a bound on the rounding and the near-ties evaluated again in
float64 (``_error_counts``; from a hidden width of ``FLOAT32_MIN_WIDTH`` on). A pass of the
search stops once the errors counted so far put the gap above target + tolerance (the search
then only moves down, whatever the exact gap). Where the
perturbation is linear in the searched parameter (sigma' without magnitude, expected
sharpness), the first layer's products are made once per measure (``_FirstLayer``). The
draws are common random numbers: draw k is a standard-normal z_k from a generator of its own,
seeded from the trial (its data seed and its own seed, ``workers.measures.draw_seed``) and k, so
the perturbation at sigma is sigma * z_k (or sqrt(sigma^2 w^2 + eps^2) * z_k), the same trial
gives the same sigma', another seed of the same configuration draws independently, and the
error curve the bisection walks is a fixed function of sigma. If no midpoint comes within the
tolerance in 15 steps, sigma' is the largest midpoint whose gap was at most the target; the
measures are undefined (null, with the reason) when there is none, or when the error never rises
by the target below sigma = 2 (a network at chance on its training set). Errors and
losses are over a seeded subset of at most ``points`` (500) training points: 5,000 evaluations
per step with 10 draws, a binomial standard error of 0.004 near the target error gap 0.1 (more
where the draws differ from each other), against the search's tolerance 0.01; ``points`` null
takes all of them. The labels are those the trial trained on; ``point_subset`` draws the subset
(a smaller subset is inside a larger one); the bounds use m = |S|, all of the training set.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from workers.measures import MeasureInputs, MeasureValue, Undefined, draw_seed, register
from workers.measures.builtin import point_subset
from workers.measures.norms import _cached, _double, _p, _p0, model64, parameters

# torch (and workers.layers, which imports it): imported by the functions that compute, so
# that registering these measures does not (workers.measures, tests/test_cli_imports.py)
if TYPE_CHECKING:  # (annotations only)
    import torch

EPS = 1e-3  # Jiang et al. C.7's epsilon of the magnitude-aware perturbation
JIANG = "Jiang et al. 2019, Appendix C"


# the entry of ``_layers`` that adds a layer's bias
BIAS = "bias"


def _layers(m64):
    """(parameter index or None, module) along a Sequential MLP (nesting allowed; ``Flatten``
    and ``Identity`` skipped, as ``workers.layers.mlp_layers`` reads it): its Linear layers (by
    position in ``parameters``: the weight matrices first), each followed, if it has a bias, by
    (index of the bias in ``parameters``, ``BIAS``), and the element-wise non-linearities
    between them (index None). For a bias-free MLP the indices are those of ``weights``.
    Undefined for a module of another form (one whose own weights these would not perturb)."""
    import torch

    from workers.layers import _flatten

    mods = _flatten(m64)
    for mod in mods:
        if not isinstance(mod, torch.nn.Linear) and any(True for _ in mod.parameters()):
            raise Undefined(f"{type(mod).__name__} has parameters and is not a Linear layer; "
                            "allowed: an nn.Sequential of Linear layers and element-wise "
                            "non-linearities")
    d = sum(isinstance(mod, torch.nn.Linear) for mod in mods)
    out, i, j = [], 0, 0
    for mod in mods:
        if isinstance(mod, torch.nn.Linear):
            out.append((i, mod))
            i += 1
            if mod.bias is not None:
                out.append((d + j, BIAS))
                j += 1
        else:
            out.append((None, mod))
    return out


def _has_bias(layers) -> bool:
    return any(mod is BIAS for _, mod in layers)


# float64 elements the perturbed networks (weights and activations) may hold at once: the
# samples of one sigma run in groups, and the points in chunks, within it (2^25: 256 MB)
BUDGET = 1 << 25


# The float32 error counts are tried from this widest hidden layer on: below it their bound's
# bookkeeping costs more than the float32 products save (on the demo's width-32 networks);
# at width 128 the two paths cost about the same (`bench/measure_paths.py --fmnist`)
FLOAT32_MIN_WIDTH = 128


# float64 elements of a layer's values that stay in cache (2 MB): the passes over them
# (activations, additions) are memory-bound, so points go through in chunks of this size
CACHE = 1 << 18


def _chunk_size(s: int, widths) -> int:
    """Points per chunk for S networks whose widest layer is max(widths): S * chunk * widest
    <= min(BUDGET, CACHE)."""
    return max(1, min(BUDGET, CACHE) // (s * max(widths)))


def _stoppable(chunk: int, n: int, stop_above: float) -> int:
    """Points per chunk for a pass that may stop early (``stop_above`` finite): at most a
    quarter of the n points, so that a pass whose gap is far above the target stops after a
    quarter of its work."""
    return chunk if stop_above == math.inf else max(1, min(chunk, -(-n // 4)))


def _through(layers, ws: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """h [S, n, .] through ``layers`` (``_layers``) with the stacked parameters ``ws`` (weight
    matrices [S, out, in], biases [S, out])."""
    import torch

    for i, mod in layers:
        if i is None:
            h = mod(h)
        elif mod is BIAS:
            h = h + ws[i][:, None, :]
        else:
            h = torch.bmm(h, ws[i].transpose(1, 2))
    return h


def batched_logits(m64, ws: list[torch.Tensor], x: torch.Tensor,
                   chunk: int | None = None) -> torch.Tensor:
    """Logits [S, N, C] of the S networks whose parameters are ``ws`` (``parameters`` order:
    weight matrices [S, h_i, h_{i-1}], then biases [S, h_i], float64), with the architecture
    (non-linearities) of ``m64``, on x [N, d]; points in chunks of ``chunk`` (default:
    S * chunk * widest layer <= BUDGET)."""
    import torch

    layers = _layers(m64)
    if chunk is None:
        chunk = _chunk_size(ws[0].shape[0], [x.shape[1]] + [w.shape[1] for w in ws])
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), chunk):
            h = x[a:a + chunk].to(torch.float64).unsqueeze(0).expand(ws[0].shape[0], -1, -1)
            outs.append(_through(layers, ws, h))
    return torch.cat(outs, dim=1)


# --- error counts in float32, exact as float64's (bound: workers.layers) ---------------------


def _one_lipschitz(layers) -> bool:
    """Whether every non-linearity between the Linear layers is one of the element-wise,
    1-Lipschitz activations (the paper's five, torch's ReLU, ReLU6, Hardtanh, Tanh), for which
    ``_error_counts``'s error bound holds."""
    import torch

    from workers.activations import PaperActivation

    def known(mod):
        if isinstance(mod, PaperActivation):
            return mod.spec.name in ("relu", "relu6", "tanh", "hardtanh", "hardsigmoid")
        return isinstance(mod, (torch.nn.ReLU, torch.nn.Hardtanh, torch.nn.Tanh))  # (ReLU6)

    return all(known(mod) for i, mod in layers if i is None)


def _act_bound(mod) -> float | None:
    """A bound on |mod(z)| for every z (tanh, HardTanh, HardSigmoid: 1; ReLU6: 6), or None
    (ReLU: unbounded)."""
    import torch

    from workers.activations import PaperActivation
    from workers.layers import ACTIVATION_BOUND

    if isinstance(mod, PaperActivation):
        return ACTIVATION_BOUND.get(mod.spec.name)
    if isinstance(mod, torch.nn.Tanh):
        return 1.0
    if isinstance(mod, torch.nn.Hardtanh):  # (nn.ReLU6 too)
        return max(abs(float(mod.min_val)), abs(float(mod.max_val)))
    return None


def _float32_weights(ws: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Per weight matrix [S, out, in] (float64; None kept): its float32 copy and ||W||_inf (the
    largest row sum of |W|, in float64) per network, [S, 1]: what ``_error_counts`` needs,
    made once for all chunks of points."""
    import torch

    return [None if w is None else (w.to(torch.float32), w.abs().sum(dim=2).amax(dim=1)[:, None])
            for w in ws]


def _error_counts(layers, ws: list[torch.Tensor], h64: torch.Tensor, y: torch.Tensor,
                  ws32=None, state: dict | None = None, size0=None) -> torch.Tensor:
    """Misclassified points of each of the S networks ``ws`` ([S, out, in] float64) on inputs
    h64 [S, n, d] (float64) of ``layers`` -> [S] int64: the counts of the float64 forward pass
    (up to float64 rounding where two logits tie in exact arithmetic), at float32's speed. The
    pass runs in float32 and carries, per network and point, a bound E
    on how far every float32 value can be from the float64 one (rounding the weights and the
    input, and the standard bound gamma_m |W| |h| on an m-term product, m u / (1 - m u),
    u = 2^-24, with |W| |h| <= ||W||_inf ||h||_inf; the activations are 1-Lipschitz, their
    float32 evaluation within 4 u (|h| + 1)). A point whose top two float32 logits differ by
    more than 2 E (plus an absolute term for values below float32's normal range) has the same
    argmax in float64; the others (near-ties, rows with a non-finite float32 logit or bound)
    are evaluated again in float64. ``ws32``: ``_float32_weights(ws)``, if the caller has it.
    ``state``: a dict whose "float64" this sets when more than UNSURE_LIMIT of the points were
    evaluated again (the caller then stops calling it for this pass, and the search at this
    sigma or larger: the bound grows with the perturbation). ``size0``: a bound on |h64| per
    network and point, [S, n] float64, if the caller has one (else it is taken from h64).
    Beyond the input, |h| is bounded without a pass over the values: after a product by
    ||W||_inf (||h|| + its error) plus the product's error, after a bounded activation by its
    bound, after a ReLU as before it (|relu(z)| <= |z|)."""
    import torch

    import workers.layers as layers_mod
    from workers.layers import TINY32, U32, activation_error, overflow_risk, product_error

    def inf_norm(t):  # max |t| over the last dim, in float64: [S, n] (one pass, no temporary)
        lo, hi = torch.aminmax(t, dim=2)
        return torch.maximum(hi, -lo).to(torch.float64)

    if _has_bias(layers):  # (the bound's bookkeeping is for bias-free layers)
        raise ValueError("_error_counts: bias-free MLPs only; biased ones are counted in float64")
    ws32 = _float32_weights(ws) if ws32 is None else ws32
    n_nets = h64.shape[0]
    shared = h64.stride(0) == 0  # the same points for every network (an expanded [n, d])
    h = (h64[:1] if shared else h64).to(torch.float32)
    # a bound on |h| of the current (float32) values: [S, n]
    size = (inf_norm(h).expand(n_nets, -1) if size0 is None
            else size0.to(torch.float64) * (1 + 4 * U32))  # (h64 rounded to float32)
    err = U32 * size + TINY32  # (rounding the input to float32)
    risky = torch.zeros(err.shape, dtype=torch.bool, device=err.device)
    with torch.no_grad():
        for i, mod in layers:
            if i is None:
                h = mod(h)
                bound = _act_bound(mod)
                if bound is not None:
                    size = torch.full_like(err, bound)
                # else a ReLU (``_one_lipschitz`` lets no other unbounded one in): |h| <= |z|
                err = activation_error(err, size)
                continue
            w32, norm = ws32[i]
            m = w32.shape[2]
            if h.shape[0] == n_nets:
                h = torch.bmm(h, w32.transpose(1, 2))
            else:  # shared points: one product [S * out, d] x [d, n] for all networks
                h = (w32.reshape(-1, m) @ h[0].T).reshape(n_nets, -1, h.shape[1]).transpose(1, 2)
            # a partial sum that may overflow float32 (to +-inf, which a ReLU after it hides)
            risky = risky | overflow_risk(norm, size, err, m)
            exact_size = norm * (size + err)  # |W h| for the exact h, |h - h32| <= err
            err = product_error(err, norm, m, size)
            size = exact_size + err  # |fl32(W32 h32)| <= |W h| + err
        if h.shape[2] > 1:
            top = h.topk(2, dim=2).values.to(torch.float64)
            sure = (top[..., 0] - top[..., 1]) > 2 * err * (1 + 1e-6)  # False for NaN
            # an infinite logit (a float32 overflow) is unsure whatever the gap
            sure &= torch.isfinite(h).all(dim=2)
        else:  # one class: argmax 0 whatever the value
            sure = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        sure &= (torch.isfinite(err) & ~risky).to(sure.device)
        yy = y.to(h.device)
        wrong = h.argmax(dim=2) != yy[None, :]
        unsure = ~sure
        if state is not None and float(unsure.double().mean()) > layers_mod.UNSURE_LIMIT:
            state["float64"] = True
        if unsure.any():  # again in float64, all networks in one pass over their unsure points
            per = unsure.sum(dim=1)
            rank = unsure.cumsum(dim=1) - 1  # a point's place among its network's unsure ones
            pick = torch.zeros(n_nets, int(per.max()), dtype=torch.long, device=h64.device)
            nets, pts = unsure.nonzero(as_tuple=True)
            pick[nets, rank[nets, pts]] = pts
            again = torch.gather(h64, 1, pick[..., None].expand(-1, -1, h64.shape[2]))
            logits = _through(layers, ws, again)
            wrong[nets, pts] = logits[nets, rank[nets, pts]].argmax(dim=1) != yy[pts]
    return wrong.sum(dim=1)


def _errors(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Misclassified points of each of the S networks: logits [S, N, C] -> [S] (int64)."""
    return (logits.argmax(dim=2) != y.to(logits.device)[None, :]).sum(dim=1)


def _losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each of the S networks: logits [S, N, C] -> [S] (float64), each
    point's in the stable form (``workers.metrics.cross_entropy_float64``: float64 logsumexp -
    z_y is 0 from margins of about 37)."""
    from workers.metrics import cross_entropy_float64

    n_nets, n, c = logits.shape
    yy = y.to(logits.device)
    per = cross_entropy_float64(logits.reshape(n_nets * n, c), yy.repeat(n_nets))
    return per.reshape(n_nets, n).sum(dim=1)


def sample_seed(seed: int, sample: int) -> int:
    """The seed of draw ``sample`` of a measure whose draws are seeded by ``seed``."""
    return (int(seed) + 7919 * (sample + 1)) % (1 << 62)


def normal_draw(shapes, seed: int, sample: int, device="cpu") -> list[torch.Tensor]:
    """Draw ``sample``: one standard-normal tensor per weight shape (float64), from a generator
    of its own (``sample_seed``), so a draw does not depend on how draws are grouped."""
    import torch

    gen = torch.Generator().manual_seed(sample_seed(seed, sample))
    return [torch.randn(*s, generator=gen, dtype=torch.float64).to(device) for s in shapes]


class _Draws:
    """``samples`` seeded standard-normal draws of the weights, in groups whose perturbed
    networks fit the memory budget; kept once made when all of them fit, else made again for
    every pass (the same numbers either way)."""

    def __init__(self, ws: list[torch.Tensor], samples: int, seed: int):
        self.shapes = [w.shape for w in ws]
        self.device = ws[0].device
        self.samples, self.seed = samples, seed
        n_w = sum(w.numel() for w in ws)
        self.per_group = max(1, min(samples, BUDGET // (3 * n_w)))  # draw, perturbed, temporary
        self.kept = None
        if self.per_group == samples:
            self.kept = [self._group(0, samples)]

    def _group(self, a: int, b: int) -> list[torch.Tensor]:
        import torch

        draws = [normal_draw(self.shapes, self.seed, k, self.device) for k in range(a, b)]
        return [torch.stack([d[i] for d in draws]) for i in range(len(self.shapes))]

    def groups(self):
        if self.kept is not None:
            yield from self.kept
            return
        for a in range(0, self.samples, self.per_group):
            yield self._group(a, min(self.samples, a + self.per_group))


class _FirstLayer:
    """The first layer of the perturbed networks when the perturbation is t * c(w) * z, linear
    in the search's parameter t (sigma' without magnitude: c = 1; expected sharpness:
    c(w) = 10 |w| + 1): x (w_1 + t c(w_1) z)^T = x w_1^T + t x (c(w_1) z)^T, so both products
    are made once per measure and every t costs an addition instead of a d x h_1 product per
    point (most of the work when the input is wide). Made only when the products of all draws
    fit half the memory budget with their buffer (``usable``); equal to the direct product up
    to float64 rounding."""

    def __init__(self, ws: list[torch.Tensor], draws: "_Draws", x: torch.Tensor, c):
        import torch

        self.usable = False
        if (draws.samples + draws.per_group + 1) * len(x) * ws[0].shape[0] > BUDGET // 2:
            return
        x64 = x.to(torch.float64)
        with torch.no_grad():
            self.base = x64 @ ws[0].T  # [N, h1]
            self.per_draw = [x64 @ (c(ws[0]) * z[0]).transpose(1, 2) for z in draws.groups()]
            # max |.| per point: |base + t b| <= these, for the float32 error counts' bound
            self.base_max = self.base.abs().amax(dim=1)  # [N]
            self.per_draw_max = [b.abs().amax(dim=2) for b in self.per_draw]  # [S, N] each
        self.buffer = torch.empty_like(self.per_draw[0])  # (reused: no fresh pages per t)
        self.usable = True


def _perturbed_mean(m64, ws, draws: _Draws, scale, x, y, statistic,
                    first: tuple[_FirstLayer, float] | None = None,
                    state: dict | None = None, stop_above: float = math.inf) -> float:
    """The mean over the draws z of statistic(w + scale(w) * z) per point, where ``statistic``
    sums over points (``_errors``, ``_losses``) and ``scale`` maps each weight matrix to the
    standard deviation of its perturbation (a number or a tensor of its shape). ``first``:
    (``_FirstLayer``, t) when scale(w) = t * c(w), to start from its first-layer products.
    ``state``: a dict for this pass; its "float64" is set if the float32 error counts stopped
    paying during it (``_error_counts``), and if it holds "float64" already they are not tried.
    ``stop_above``: for a non-negative statistic, the pass stops as soon as the mean of the
    points seen so far over all draws and points (a lower bound of the mean) exceeds it, and
    returns that bound (the caller only needs to know it is above)."""
    import torch

    from workers.layers import float32_products_exact

    total = 0.0
    evaluations = draws.samples * len(x)
    layers = _layers(m64)
    state = {} if state is None else state
    # error counts: in float32, exactly as float64's (``_error_counts``), while it pays: not
    # for narrow networks, whose products cost less than the bound's bookkeeping
    fast = (statistic is _errors and _one_lipschitz(layers) and not _has_bias(layers)
            and float32_products_exact()
            and max((w.shape[0] for w in ws[:-1]), default=0) >= FLOAT32_MIN_WIDTH
            and not state.get("float64"))  # (the widest hidden layer)

    def stat(layers, pert, h, yy, ws32, size0=None):
        if fast and not state.get("float64"):
            return _error_counts(layers, pert, h, yy, ws32, state, size0)
        return statistic(_through(layers, pert, h), yy)

    with torch.no_grad():
        if first is not None and first[0].usable and not _has_bias(layers):
            fl, t = first
            for z, b, b_max in zip(draws.groups(), fl.per_draw, fl.per_draw_max):
                pert = [None] + [w[None] + scale(w) * e for w, e in zip(ws[1:], z[1:])]
                h1 = torch.add(fl.base[None], b, alpha=t, out=fl.buffer[:len(b)])  # [S, N, h1]
                chunk = _stoppable(_chunk_size(len(b), [w.shape[0] for w in ws]), len(x),
                                   stop_above)
                ws32 = _float32_weights(pert) if fast else None
                for a in range(0, len(x), chunk):
                    size0 = (fl.base_max[None, a:a + chunk] + t * b_max[:, a:a + chunk]
                             if fast else None)  # (t >= 0)
                    total += float(stat(layers[1:], pert, h1[:, a:a + chunk],
                                        y[a:a + chunk], ws32, size0).sum())
                    if total / evaluations > stop_above:
                        return total / evaluations
            return total / evaluations
        for z in draws.groups():
            pert = [w[None] + scale(w) * e for w, e in zip(ws, z)]
            # (the points are shared, so the input's width does not count on the fast path)
            chunk = _stoppable(_chunk_size(len(pert[0]), ([] if fast else [x.shape[1]])
                                           + [w.shape[0] for w in ws]), len(x), stop_above)
            ws32 = _float32_weights(pert) if fast else None
            for a in range(0, len(x), chunk):
                h = x[a:a + chunk].to(torch.float64).unsqueeze(0).expand(len(pert[0]), -1, -1)
                total += float(stat(layers, pert, h, y[a:a + chunk], ws32).sum())
                if total / evaluations > stop_above:
                    return total / evaluations
    return total / evaluations


def _setup(model, m64, x, y, samples: int, seed: int, statistic):
    """(float64 network, its parameters on its device (``parameters``: weight matrices, then
    biases), statistic of the unperturbed network per point, the draws): what the sigma'
    search and the curve start from."""
    ws = parameters(model)  # an MLP (biases allowed: they are perturbed too), or Undefined
    m64 = _double(model) if m64 is None else m64
    dev = next(m64.parameters()).device
    ws = [w.to(dev) for w in ws]
    base = float(statistic(batched_logits(m64, [w[None] for w in ws], x), y)[0]) / len(x)
    return m64, ws, base, _Draws(ws, samples, seed)


def _subset(inputs: MeasureInputs, points):
    idx = point_subset(len(inputs.x_train), points, inputs.seed)
    dev = inputs.x_train.device
    return inputs.x_train[idx.to(dev)], inputs.y_train[idx.to(dev)]


def sigma_search(model, x: torch.Tensor, y: torch.Tensor, *, magnitude: bool, seed: int,
                 samples: int = 10, steps: int = 15, upper: float = 2.0, target: float = 0.1,
                 tolerance: float = 0.01, m64=None) -> dict:
    """sigma' (or sigma'_mag if ``magnitude``) of an MLP on (x [N, d], y [N]), see the
    module docstring; ``seed`` seeds the draws (``normal_draw``). Bisection on [0, ``upper``]:
    at each midpoint sigma the gap = mean training error of w + nu minus err(w); the search
    stops once |gap - target| <= ``tolerance``, else moves down (gap > target) or up. Returns
    {"sigma", "gap", "steps" (run), "converged", "base_error"}: sigma is the midpoint where it
    stopped, or, if no midpoint came within the tolerance, the largest midpoint whose gap was
    <= target. Raises ``Undefined`` when there is none (every midpoint raised the error by more
    than the target) or when no midpoint raised it by more than target - tolerance (the error
    never rises by the target below ``upper``: the search is open, e.g. a network at chance)."""
    import torch

    m64, ws, base, draws = _setup(model, m64, x, y, samples, seed, _errors)
    # without magnitude the perturbation is sigma * z: the first layer's products are reused
    biased = _has_bias(_layers(m64))
    first = None if magnitude or biased else _FirstLayer(ws, draws, x, lambda w: 1.0)
    # the float32 error counts stop paying above some sigma (the bound grows with the noise):
    # the smallest sigma where they did not, for the later steps
    no32 = [math.inf]

    def gap(sigma: float) -> float:
        if magnitude:
            def scale(w):
                return torch.sqrt(sigma ** 2 * w[None] ** 2 + EPS ** 2)
        else:
            def scale(w):
                return sigma
        state = {"float64": True} if sigma >= no32[0] else {}
        # a gap certainly above target + tolerance only moves the search down: the pass stops
        # once the errors seen so far prove it (the gap returned is then a lower bound, never
        # stored; the 1e-9 keeps the comparisons below exact under rounding)
        mean = _perturbed_mean(m64, ws, draws, scale, x, y, _errors,
                               None if first is None else (first, sigma), state,
                               stop_above=base + target + tolerance + 1e-9)
        if state.get("float64"):
            no32[0] = min(no32[0], sigma)
        return mean - base

    lo, hi = 0.0, float(upper)
    best = None  # (sigma, gap) of the largest midpoint with gap <= target
    sigma, g, ran, converged, rose = hi / 2, float("nan"), 0, False, False
    for ran in range(1, steps + 1):
        sigma = (lo + hi) / 2
        g = gap(sigma)
        rose = rose or g >= target - tolerance
        if abs(g - target) <= tolerance:
            converged = True
            break
        if g > target:
            hi = sigma
        else:
            lo = sigma
            best = (sigma, g)
    if not rose:
        raise Undefined(f"the training error rises by at most {g:.3g} < {target:g} - "
                        f"{tolerance:g} for every sigma up to {upper:g} (base error {base:.3g})")
    if not converged:
        if best is None:
            raise Undefined(f"no sigma > 0 keeps the training error within {target:g} of "
                            f"err(w) in {steps} bisection steps")
        sigma, g = best
    return {"sigma": sigma, "gap": g, "steps": ran, "converged": converged, "base_error": base}


def _sigma(inputs: MeasureInputs, magnitude: bool, settings: dict) -> dict:
    key = ("sigma_mag" if magnitude else "sigma",) + tuple(sorted(settings.items()))

    def run():
        x, y = _subset(inputs, settings["points"])
        if len(x) == 0:
            return Undefined("no training points")
        s = {k: v for k, v in settings.items() if k != "points"}
        try:
            found = sigma_search(inputs.model, x, y, magnitude=magnitude,
                                 seed=draw_seed(inputs, 7 if magnitude else 3),
                                 m64=model64(inputs), **s)
        except Undefined as e:  # kept too: the three measures of this sigma' share the search
            return Undefined(str(e))  # (without its traceback, which holds the search's tensors)
        return {**found, "points": len(x)}

    found = _cached(inputs, key, run)
    if isinstance(found, Undefined):
        raise Undefined(str(found))
    return found


def _flat(w) -> torch.Tensor:
    import torch

    return torch.cat([t.reshape(-1) for t in w])


def _pacbayes(inputs, magnitude: bool, kind: str, settings: dict) -> MeasureValue:
    import torch

    found = _sigma(inputs, magnitude, settings)
    s, m = found["sigma"], len(inputs.x_train)
    info = {k: found[k] for k in ("sigma", "gap", "steps", "converged", "points", "base_error")}
    if kind == "flatness":
        return MeasureValue(1.0 / s ** 2, info=info)
    w = _flat(_p(inputs))  # every parameter, biases included
    w0 = _flat(_p0(inputs))
    r = w if kind == "orig" else w - w0
    if not magnitude:  # Eq. 49 (orig) / 48 (init)
        value = float((r * r).sum()) / (4 * s ** 2) + math.log(m / s) + 10
    else:  # Eq. 57 (orig) / 56 (init)
        num = EPS ** 2 + (s ** 2 + 1) * float((r * r).sum()) / len(w)
        den = EPS ** 2 + s ** 2 * (w - w0) ** 2
        value = 0.25 * float(torch.log(num / den).sum()) + math.log(m / s) + 10
    return MeasureValue(value, info=info)


TRAIN = ("model", "train_inputs", "train_labels")
INIT_TRAIN = ("model", "init_model", "train_inputs", "train_labels")


def _search_check(name):
    """The sigma' search's rule across its settings (``register(check=...)``)."""
    def check(st) -> None:
        if st["target"] >= 1:
            raise ValueError(f"target {st['target']:g}: a training error rises by less than 1; "
                             "allowed: 0 < target < 1")
        if st["tolerance"] >= st["target"]:
            raise ValueError(f"tolerance {st['tolerance']:g} >= target {st['target']:g} (for "
                             f"{name}); allowed: tolerance < target")
    return check


def _define(name, eq, magnitude, kind, doc):
    needs = TRAIN if kind == "flatness" else INIT_TRAIN

    def fn(inputs: MeasureInputs, *, points: int | None = 500, samples: int = 10,
           steps: int = 15, upper: float = 2.0, target: float = 0.1,
           tolerance: float = 0.01) -> MeasureValue:
        return _pacbayes(inputs, magnitude, kind,
                         {"points": points, "samples": samples, "steps": steps, "upper": upper,
                          "target": target, "tolerance": tolerance})

    fn.__doc__ = doc + " sigma' by the seeded bisection of the module docstring."
    fn.__name__ = fn.__qualname__ = name
    # version 2: undefined where the float64 copy disagrees in a hidden layer
    # (workers.measures.precision, 2026-12-08; version 1 checked the logits alone)
    register(name, source=f"{JIANG}, Eq. {eq}", needs=needs, group="pacbayes",
             check=_search_check(name), version=2)(fn)


_define("pacbayes_flatness", 53, False, "flatness", "1 / sigma'^2.")
_define("pacbayes_orig", 49, False, "orig", "||w||^2 / (4 sigma'^2) + log(m / sigma') + 10.")
_define("pacbayes_init", 48, False, "init",
        "||w - w^0||^2 / (4 sigma'^2) + log(m / sigma') + 10.")
_define("pacbayes_mag_flatness", 61, True, "flatness", "1 / sigma'_mag^2.")
_define("pacbayes_mag_orig", 57, True, "orig",
        "(1/4) sum_k log((eps^2 + (sigma'^2 + 1) ||w||^2 / n_w) / (eps^2 + sigma'^2 "
        "|w_k - w_k^0|^2)) + log(m / sigma') + 10, sigma' = sigma'_mag, eps = 1e-3.")
_define("pacbayes_mag_init", 56, True, "init",
        "(1/4) sum_k log((eps^2 + (sigma'^2 + 1) ||w - w^0||^2 / n_w) / (eps^2 + sigma'^2 "
        "|w_k - w_k^0|^2)) + log(m / sigma') + 10, sigma' = sigma'_mag, eps = 1e-3.")


# --- Neyshabur et al. 2017, §3 and Fig. 2: expected sharpness against KL ------------------------
def _curve_check(st) -> None:
    """The curve's rule across its settings (``register(check=...)``)."""
    if st["alpha_min"] > st["alpha_max"]:
        raise ValueError(f"alpha_min {st['alpha_min']:g} > alpha_max {st['alpha_max']:g}; "
                         "allowed: alpha_min <= alpha_max")
    if st["alphas"] == 1 and st["alpha_max"] != st["alpha_min"]:
        raise ValueError(f"alphas 1 takes alpha_min ({st['alpha_min']:g}) alone, alpha_max "
                         f"{st['alpha_max']:g} would not be used; allowed: alpha_max = "
                         "alpha_min, or alphas >= 2")


def expected_sharpness_curve(model, x: torch.Tensor, y: torch.Tensor, alphas, *, samples: int,
                             seed: int, m64=None) -> list[dict]:
    """For each alpha: nu_k ~ N(0, sigma_k^2), sigma_k = alpha (10 |w_k| + 1) (a standard
    deviation), expected sharpness E_nu[L(w + nu)] - L(w) by ``samples`` seeded draws (the same
    standard-normal draws, ``normal_draw`` from ``seed``, scaled for every alpha), and
    KL = sum_k w_k^2 / (2 sigma_k^2) (Neyshabur et al. 2017, §3). Returns
    [{"alpha", "kl", "expected_sharpness", "base": L(w)}] in float64, L the mean cross-entropy
    (the stable form, ``_losses``) on (x [N, d], y [N])."""
    m64, ws, base, draws = _setup(model, m64, x, y, samples, seed, _losses)
    first = (None if _has_bias(_layers(m64))
             else _FirstLayer(ws, draws, x, lambda w: 10 * w.abs() + 1))
    rows = []
    for alpha in alphas:
        def scale(w, a=alpha):
            return a * (10 * w[None].abs() + 1)

        loss = _perturbed_mean(m64, ws, draws, scale, x, y, _losses,
                               None if first is None else (first, alpha))
        kl = sum(float((w * w / (2 * (alpha * (10 * w.abs() + 1)) ** 2)).sum()) for w in ws)
        rows.append({"alpha": float(alpha), "kl": kl, "expected_sharpness": loss - base,
                     "base": base})
    return rows


@register("expected_sharpness", source="Neyshabur et al. 2017, §3 and Fig. 2",
          needs=TRAIN, check=_curve_check,
          version=3)  # 2: the loss in the stable form (_losses): version 1 was 0 or inexact
# from training margins of about 30; 3: undefined where the float64 copy disagrees in a hidden
# layer (workers.measures.precision) and where the loss change is below float64's resolution
def expected_sharpness(inputs: MeasureInputs, *, alpha_min: float = 1e-4, alpha_max: float = 1e-1,
                       alphas: int = 10, alpha: float = 1e-3, samples: int = 10,
                       points: int | None = 500) -> MeasureValue:
    """E_nu[L(w + nu)] - L(w) at ``alpha`` (nu_k ~ N(0, (alpha (10 |w_k| + 1))^2)), and in
    ``info["curve"]`` the table (alpha, kl, expected_sharpness) over ``alphas`` log-spaced
    values from ``alpha_min`` to ``alpha_max`` (with ``alpha`` added), for Neyshabur et al.'s
    Fig. 2; ``analysis.load_curves`` reads the tables of a sweep."""
    import torch

    if not (0 < alpha_min <= alpha_max) or alphas < 1 or alpha <= 0:
        raise ValueError("expected_sharpness: need 0 < alpha_min <= alpha_max, alphas >= 1 and "
                         f"alpha > 0; got {alpha_min}, {alpha_max}, {alphas}, {alpha}")
    grid = sorted({float(a) for a in torch.logspace(math.log10(alpha_min), math.log10(alpha_max),
                                                   alphas, dtype=torch.float64).tolist()}
                  | {float(alpha)})
    x, y = _subset(inputs, points)
    if len(x) == 0:
        raise Undefined("no training points")
    rows = expected_sharpness_curve(inputs.model, x, y, grid, samples=samples,
                                    seed=draw_seed(inputs, 11), m64=model64(inputs))
    at = next(r for r in rows if r["alpha"] == float(alpha))
    if at["expected_sharpness"] == 0.0 and at["base"] == 0.0:
        raise Undefined("the training loss is below float64's range, perturbed and not (logit "
                        "margins above about 745): a tie at 0 of every such network")
    from workers.measures.sharpness import below_resolution

    why = below_resolution(at["expected_sharpness"], at["base"])
    if why:
        raise Undefined(why)
    return MeasureValue(at["expected_sharpness"],
                        info={"curve": {k: [r[k] for r in rows]
                                        for k in ("alpha", "kl", "expected_sharpness")},
                              "points": len(x), "samples": samples})
