"""Norm- and margin-based measures of generalization (../shared/MEASURES.md).

Neyshabur et al. 2017, "Exploring Generalization in Deep Learning" (NeurIPS 2017), §2 and
Fig. 1: norms over the margin gamma_5; Jiang et al. 2019, "Fantastic Generalization Measures and
Where to Find Them" (ICLR 2020), Appendix C, Eq. 20-45: the margin gamma_10 and the spectral,
Frobenius, distance-to-initialization, path-norm and Fisher-Rao families. For MLPs
f_w(x) = W_d phi(W_{d-1} ... phi(W_1 x + b_1) ...) + b_d with any non-linearity (the project's
networks are bias-free; a user's may have biases); d = number of weight matrices, W_i^0 the
weights at initialization (``init_model``, rebuilt from the trial's seed), S the training set as
the trial saw it (random labels included), m = |S|.

Biases. A measure defined on the layers' matrices W_i (Jiang et al. Eq. 29-42: the spectral and
Frobenius families, ``param_norm``, the distances to initialization) reads the weight matrices;
the biases are not part of them and do not enter. A measure defined on the parameter vector w
(``params``, Eq. 20; ``l2``, ``l2_dist``; Fisher-Rao, Eq. 45, <w, grad_w l>) takes every
parameter, biases included; so do sharpness and the PAC-Bayes measures (``sharpness``,
``pacbayes``). Defined for bias-free networks only, and undefined with that reason on a network
with biases (``require_bias_free``): the path norms (Neyshabur et al. 2015, "Norm-Based Capacity
Control in Neural Networks" and "Path-SGD": a sum over input-output paths; Jiang et al. Eq.
43-44) and Neyshabur et al. 2017's five measures over gamma_5^2 (§2 defines them on
f_w(x) = W_d phi(... phi(W_1 x)), without biases; its normalization by the margin rests on the
margin scaling as c^d under w -> c w, which biases break).

Everything is computed in float64 from the weights. The margin of a point is
f(x)[y] - max_{j != y} f(x)[j] of the network as scored (a trial's float32 network; the logits
subtracted in float64); gamma_q is the k-th smallest margin over S with
k = max(1, floor(q m / 100)). A measure divided by a margin is undefined when that margin is
<= 0: it raises ``Undefined``, recorded as a null value with the reason.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from workers.measures import MeasureInputs, Undefined, register

# torch: imported by the functions that compute, so that registering these measures does not
# (workers.measures, tests/test_cli_imports.py)
if TYPE_CHECKING:  # (annotations only)
    import torch


def _linears(model) -> list[torch.nn.Linear]:
    import torch

    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not lins:
        raise Undefined("the model has no Linear layers (these measures need an MLP)")
    return lins


def weights(model) -> list[torch.Tensor]:
    """The weight matrices W_1..W_d (float64, detached) of an MLP, in order; its biases, if
    any, are not among them (``parameters``). Undefined without Linear layers."""
    import torch

    return [m.weight.detach().to(torch.float64) for m in _linears(model)]


def parameters(model) -> list[torch.Tensor]:
    """Every parameter of an MLP as w (float64, detached): the weight matrices W_1..W_d, then
    the biases b_i of the layers that have one, in order (for a bias-free MLP: ``weights``).
    Undefined without Linear layers, or when the model has parameters outside its Linear
    layers (w would leave them out)."""
    import torch

    lins = _linears(model)
    out = weights(model) + [m.bias.detach().to(torch.float64) for m in lins
                            if m.bias is not None]
    total = sum(p.numel() for p in model.parameters())
    if sum(p.numel() for p in out) != total:
        raise Undefined(f"the model has {total - sum(p.numel() for p in out)} parameters "
                        "outside its Linear layers (these measures need an MLP of Linear layers "
                        "and parameter-free non-linearities)")
    return out


def biased_layers(model) -> list[int]:
    """The positions (0-based, among the Linear layers) of the layers with a bias."""
    return [k for k, m in enumerate(_linears(model)) if m.bias is not None]


BIAS_FREE_ONLY = {
    "path": "path norms are defined for bias-free networks (a sum over input-output paths of "
            "products of weights, which no bias is on: Neyshabur et al. 2015, Jiang et al. "
            "2019 Eq. 43-44)",
    "neyshabur": "Neyshabur et al. 2017 §2 define it for bias-free networks (normalizing by "
                 "gamma_5^2 rests on the margin scaling as c^d under w -> c w, which biases "
                 "break)",
}


def require_bias_free(model, why: str) -> None:
    """Undefined, naming the biased layers and ``BIAS_FREE_ONLY[why]``, for a model whose
    Linear layers have biases."""
    biased = biased_layers(model)
    if biased:
        raise Undefined(f"Linear layers {biased} (0-based) have biases; {BIAS_FREE_ONLY[why]}")


def _cached(inputs: MeasureInputs, key: str, fn):
    if key not in inputs.cache:
        inputs.cache[key] = fn()
    return inputs.cache[key]


def _w(inputs):
    return _cached(inputs, "w", lambda: weights(inputs.model))


def _w0(inputs):
    return _cached(inputs, "w0", lambda: weights(inputs.init_model))


def _p(inputs):
    """w: every parameter (``parameters``), cached."""
    return _cached(inputs, "p", lambda: parameters(inputs.model))


def _p0(inputs):
    """w^0: every parameter of ``init_model``; Undefined if its shapes are not the model's."""
    def get():
        p0 = parameters(inputs.init_model)
        if [t.shape for t in p0] != [t.shape for t in _p(inputs)]:
            raise Undefined("init_model's parameters have other shapes than the model's")
        return p0

    return _cached(inputs, "p0", get)


def _bias_free(inputs, why: str) -> None:
    require_bias_free(inputs.model, why)


def spectral_norm(w: torch.Tensor) -> float:
    """||w||_2 of a matrix [out, in]: its largest singular value (exact)."""
    import torch

    return float(torch.linalg.matrix_norm(w, ord=2))


def _spec(inputs) -> list[float]:
    """||W_i||_2 (exact: the largest singular value)."""
    return _cached(inputs, "spec", lambda: [spectral_norm(w) for w in _w(inputs)])


def _fro2(inputs) -> list[float]:
    return _cached(inputs, "fro2", lambda: [float((w * w).sum()) for w in _w(inputs)])


def margins(model, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Per-point margins f(x)[y] - max_{j != y} f(x)[j] ([m] float64) of the network as it is
    (its own dtype: for a trial, the float32 network that was trained and scored, in the
    batches it was scored in, ``workers.metrics.SCORE_CHUNK``), the logits subtracted in
    float64."""
    import torch

    from workers.metrics import SCORE_CHUNK

    chunk = chunk or SCORE_CHUNK
    dtype = next(model.parameters()).dtype
    out = []
    with torch.no_grad():
        for a in range(0, len(x), chunk):
            z = model(x[a:a + chunk].to(dtype)).to(torch.float64)
            yy = y[a:a + chunk].to(z.device)
            true = z.gather(1, yy[:, None])[:, 0]
            other = z.scatter(1, yy[:, None], float("-inf")).amax(dim=1)
            out.append((true - other).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _double(model):
    import torch

    import copy

    return copy.deepcopy(model).to(torch.float64).eval()


def model64(inputs: MeasureInputs):
    """The trained network in float64, copied once per evaluation, for the measures that
    evaluate it in float64; Undefined (with the numbers) where that copy is another function
    than the network as scored on the training points (workers.measures.precision)."""
    from workers.measures.precision import require_agreement

    m64 = _cached(inputs, "model64", lambda: _double(inputs.model))
    require_agreement(inputs, m64)
    return m64


def gamma(inputs: MeasureInputs, q: float) -> float:
    """gamma_q: the k-th smallest training margin, k = max(1, floor(q m / 100))."""
    import torch

    mg = _cached(inputs, "margins", lambda: margins(inputs.model, inputs.x_train, inputs.y_train))
    if len(mg) == 0:
        raise Undefined("no training points")
    bad = int((~torch.isfinite(mg)).sum())
    if bad:  # (sorting would put NaN last and take the k-th of the others as if they were all)
        raise Undefined(f"the network's outputs are not finite at {bad} of {len(mg)} training "
                        "points: no margin there")
    k = max(1, math.floor(q * len(mg) / 100))
    return float(torch.sort(mg).values[k - 1]) + 0.0  # (+ 0.0: a tie's -0.0 is stored as 0.0)


def _positive_gamma(inputs, q) -> float:
    g = gamma(inputs, q)
    if not g > 0:
        raise Undefined(f"margin gamma_{q:g} = {g:.4g} <= 0: the measure divides by it")
    return g


def _log(x: float, what: str) -> float:
    """log x of a positive norm, or Undefined naming the zero (its log is -inf)."""
    if not x > 0:
        raise Undefined(f"{what} = {x:g}: its log is not finite")
    return math.log(x)


def _log_path(inputs, power: int) -> float:
    """log(1^T |W_d|^p ... |W_1|^p 1): the log of the sum over all input-output paths of the
    product of the p-th powers of the absolute weights (no non-linearity in between). The
    vector is rescaled to a largest entry of 1 after each layer and the scales' logs summed,
    so no partial product overflows or underflows float64 (depth 65: the sum itself is often
    beyond float64's range). Undefined for a network with biases (``require_bias_free``)."""
    import torch

    _bias_free(inputs, "path")

    def compute():
        v = torch.ones(_w(inputs)[0].shape[1], dtype=torch.float64)
        log_scale = 0.0
        for w in _w(inputs):
            v = w.abs().pow(power) @ v
            top = float(v.max()) if v.numel() else 0.0
            if not top > 0:
                raise Undefined(f"the l{power}-path norm is 0 (no path with nonzero weights)")
            if not math.isfinite(top):  # (float32 weights cannot: |w|^2 * width < 1e83)
                raise Undefined(f"a layer's l{power}-path sum overflows float64")
            v = v / top
            log_scale += math.log(top)
        return log_scale + math.log(float(v.sum()))

    return _cached(inputs, f"log_path{power}", compute)


def _log_gamma_q(inputs, q) -> float:
    return math.log(_positive_gamma(inputs, q))


def _log_l1_inf(i) -> float:
    """sum_i log max_j ||W_i[j, :]||_1."""
    return sum(_log(float(w.abs().sum(dim=1).max()), "a layer's largest row l1 norm")
               for w in _w(i))


# log(float64's largest finite value): a measure whose log is above it has no float64 value
_LOG_MAX = math.log(sys.float_info.max)  # (torch.finfo(torch.float64).max)
_LOG_MIN = math.log(sys.float_info.min)  # the smallest normal float64 (torch.finfo's tiny)


def from_log(name: str, log_value: float, has_log: bool = True) -> float:
    """exp(log_value), the measure ``name`` itself, when float64 holds it; else Undefined naming
    the log, which ``log_<name>`` stores (the values keep their order there, no tie at inf)."""
    if not _LOG_MIN <= log_value <= _LOG_MAX:  # (below: a tie at 0 of every such network)
        raise Undefined(f"{name} = exp({log_value:.6g}) is beyond float64's range"
                        + (f"; log_{name} holds its log" if has_log else ""))
    return math.exp(log_value)


TRAIN = ("model", "train_inputs", "train_labels")
NEY = "Neyshabur et al. 2017, §2 and Fig. 1"
JIANG = "Jiang et al. 2019, Appendix C, Eq."


# Version 2 of the measures built on a margin: the margins are the float32 network's, as scored
# (version 1 evaluated it again in float64, another function in the chaotic regime).
_MARGIN_V2 = {"margin_gamma5", "margin_gamma10", "inverse_margin", "path_norm_over_margin",
              "log_spec_orig_main", "log_spec_init_main",
              *(f"neyshabur_{k}" for k in ("l2", "l1_path", "l2_path", "spectral", "l1_inf")),
              *(f"log_{f}_of_{k}_over_margin" for f in ("prod", "sum") for k in ("spec", "fro"))}


def _reg(name, source, needs, fn, doc, sign=1, version=None):
    fn.__doc__ = doc
    fn.__name__ = fn.__qualname__ = name
    register(name, source=source, needs=needs, sign=sign,
             version=version or (2 if name in _MARGIN_V2 else 1))(fn)


# --- margins --------------------------------------------------------------------------------
_reg("margin_gamma5", NEY, TRAIN, lambda i: gamma(i, 5),
     "gamma_5: the 5th-percentile training margin (Neyshabur et al.'s normalizer).", sign=-1)
_reg("margin_gamma10", f"{JIANG} 22 (gamma)", TRAIN, lambda i: gamma(i, 10),
     "gamma_10: the 10th-percentile training margin (Jiang et al.'s gamma).", sign=-1)

# --- Neyshabur et al. 2017, §2 (terms depending only on depth and width dropped) ------------------
# Each is a product over layers over gamma_5^2: computed as its natural log (sums of logs, the
# path sums rescaled per layer), stored as ``log_<name>`` (every network, in order, however
# deep), and as ``<name>`` itself where float64 holds it (undefined beyond, naming the log).
def _log_neyshabur(kind):
    def logs(i):
        _bias_free(i, "path" if kind.endswith("path") else "neyshabur")
        if kind == "l2":
            num = sum(_log(f, "a layer's ||W_i||_F^2") for f in _fro2(i))
        elif kind == "l1_path":
            num = 2 * _log_path(i, 1)
        elif kind == "l2_path":
            num = _log_path(i, 2)
        elif kind == "spectral":
            num = sum(2 * _log(s, "a layer's ||W_i||_2") for s in _spec(i))
        else:
            num = 2 * _log_l1_inf(i)
        return num - 2 * _log_gamma_q(i, 5)
    return logs


_NEYSHABUR = {
    "l2": "prod_i ||W_i||_F^2 / gamma_5^2 (l2 norm over the margin)",
    "l1_path": "(1^T |W_d| ... |W_1| 1)^2 / gamma_5^2 (l1-path norm over the margin)",
    "l2_path": "1^T |W_d|^2 ... |W_1|^2 1 / gamma_5^2 (l2-path norm over the margin)",
    "spectral": "prod_i ||W_i||_2^2 / gamma_5^2 (spectral norm over the margin)",
    "l1_inf": "(prod_i max_j ||W_i[j, :]||_1)^2 / gamma_5^2 (l_{1,inf} norm over the margin: the "
              "largest l1 norm of a unit's incoming weights)",
}
def _from_log_of(name: str, logf):
    """The measure ``name`` from its log ``logf`` (a closure: a default argument would read as
    a setting of the measure)."""
    return lambda i: from_log(name, logf(i))


for _kind, _doc in _NEYSHABUR.items():
    _logf = _log_neyshabur(_kind)
    _reg(f"neyshabur_{_kind}", NEY, TRAIN, _from_log_of(f"neyshabur_{_kind}", _logf),
         f"{_doc}; undefined beyond float64's range (log_neyshabur_{_kind} holds its log).")
    _reg(f"log_neyshabur_{_kind}", NEY, TRAIN, _logf,
         f"log of {_doc}, computed in log space (defined at any depth).")


# --- Jiang et al. 2019, Appendix C ------------------------------------------------------------
def _log_prod_spec(i):
    return sum(2 * _log(s, "a layer's ||W_i||_2") for s in _spec(i))


def _log_prod_fro(i):
    return sum(_log(f, "a layer's ||W_i||_F^2") for f in _fro2(i))


def _log_gamma(i):
    return _log_gamma_q(i, 10)


def _d(i):
    return len(_w(i))


def _dist_fro2(i):
    return [float(((w - w0) ** 2).sum()) for w, w0 in zip(_w(i), _w0(i))]


INIT = ("model", "init_model")
INIT_TRAIN = ("model", "init_model", "train_inputs", "train_labels")
_reg("params", f"{JIANG} 20", ("model",), lambda i: float(sum(w.numel() for w in _p(i))),
     "n_w: the number of parameters (weights and biases, if any).")
_reg("inverse_margin", f"{JIANG} 22", TRAIN,
     lambda i: from_log("inverse_margin", -2 * _log_gamma(i), has_log=False),
     "1 / gamma_10^2.")
def _families():
    """The spectral and Frobenius families (Eq. 31-32, 34-35 and 36-39): for each of
    sum_i log ||W_i||_2^2 and sum_i log ||W_i||_F^2, the product form, over the margin, and the
    sum form log d + (1/d) (...), with and without the margin."""
    for kind, norm, logprod, eqs in (("spec", "||W_i||_2^2", _log_prod_spec, (32, 31, 35, 34)),
                                     ("fro", "||W_i||_F^2", _log_prod_fro, (37, 36, 39, 38))):
        _reg(f"log_prod_of_{kind}", f"{JIANG} {eqs[0]}", ("model",), logprod,
             f"sum_i log {norm}.")
        over, total, total_over = _forms(logprod)
        _reg(f"log_prod_of_{kind}_over_margin", f"{JIANG} {eqs[1]}", TRAIN, over,
             f"sum_i log {norm} - 2 log gamma_10.")
        _reg(f"log_sum_of_{kind}", f"{JIANG} {eqs[2]}", ("model",), total,
             f"log d + (1/d) log_prod_of_{kind}.")
        _reg(f"log_sum_of_{kind}_over_margin", f"{JIANG} {eqs[3]}", TRAIN, total_over,
             f"log d + (1/d) (log_prod_of_{kind} - 2 log gamma_10).")


def _forms(lp):
    """The over-margin, sum and sum-over-margin forms of the log product ``lp`` (closures: a
    default argument would read as a setting of the measure)."""
    return (lambda i: lp(i) - 2 * _log_gamma(i),
            lambda i: math.log(_d(i)) + lp(i) / _d(i),
            lambda i: math.log(_d(i)) + (lp(i) - 2 * _log_gamma(i)) / _d(i))


_families()
def _fro_over_spec(i, num=None):
    """sum_i num_i / ||W_i||_2^2 (num: ||W_i||_F^2 by default), each ratio by logs."""
    num = _fro2(i) if num is None else num
    return sum(math.exp(math.log(f) - 2 * _log(s, "a layer's ||W_i||_2")) if f > 0 else 0.0
               for f, s in zip(num, _spec(i)))


_reg("fro_over_spec", f"{JIANG} 33", ("model",), lambda i: _fro_over_spec(i),
     "sum_i ||W_i||_F^2 / ||W_i||_2^2.")
_reg("log_spec_orig_main", f"{JIANG} 30", TRAIN,
     lambda i: _log_prod_spec(i) - 2 * _log_gamma(i)
     + _log(_fro_over_spec(i), "fro_over_spec"),
     "log_prod_of_spec_over_margin + log fro_over_spec.")
_reg("log_spec_init_main", f"{JIANG} 29", INIT_TRAIN,
     lambda i: _log_prod_spec(i) - 2 * _log_gamma(i)
     + _log(_fro_over_spec(i, _dist_fro2(i)), "sum_i ||W_i - W_i^0||_F^2 / ||W_i||_2^2"),
     "log_prod_of_spec_over_margin + log sum_i ||W_i - W_i^0||_F^2 / ||W_i||_2^2.")
_reg("fro_dist", f"{JIANG} 40", INIT, lambda i: sum(_dist_fro2(i)),
     "sum_i ||W_i - W_i^0||_F^2.")
_reg("dist_spec_init", f"{JIANG} 41", INIT,
     lambda i: sum(spectral_norm(w - w0) ** 2 for w, w0 in zip(_w(i), _w0(i))),
     "sum_i ||W_i - W_i^0||_2^2.")
_reg("param_norm", f"{JIANG} 42", ("model",), lambda i: sum(_fro2(i)),
     "sum_i ||W_i||_F^2.")
_reg("path_norm", f"{JIANG} 44", ("model",),
     lambda i: from_log("path_norm", _log_path(i, 2)),
     "1^T |W_d|^2 ... |W_1|^2 1 (the sum over all paths of the product of squared weights); "
     "undefined beyond float64's range (log_path_norm holds its log).")
_reg("log_path_norm", f"{JIANG} 44", ("model",), lambda i: _log_path(i, 2),
     "log path_norm, computed in log space (defined at any depth).")
_reg("path_norm_over_margin", f"{JIANG} 43", TRAIN,
     lambda i: from_log("path_norm_over_margin", _log_path(i, 2) - 2 * _log_gamma(i)),
     "path_norm / gamma_10^2; undefined beyond float64's range (log_path_norm_over_margin "
     "holds its log).")
_reg("log_path_norm_over_margin", f"{JIANG} 43", TRAIN,
     lambda i: _log_path(i, 2) - 2 * _log_gamma(i),
     "log path_norm - 2 log gamma_10, computed in log space.")
_reg("l2", f"{JIANG} C (the l2 norm of the weights)", ("model",),
     lambda i: math.sqrt(sum(float((p * p).sum()) for p in _p(i))),
     "||w||_2, all parameters (weights and biases, if any) as one vector.")
_reg("l2_dist", f"{JIANG} C (the distance to initialization)", INIT,
     lambda i: math.sqrt(sum(float(((p - p0) ** 2).sum()) for p, p0 in zip(_p(i), _p0(i)))),
     "||w - w^0||_2, all parameters (weights and biases, if any).")


def fisher_rao_value(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048,
                     m64=None) -> float:
    """((d + 1)^2 / m) sum_{(x, y) in S} <w, grad_w l(f_w(x), y)>^2 (Jiang et al. 2019, Eq. 45;
    Liang et al. 2019), l the cross-entropy. <w, grad_w l> = sum_c (softmax(f)_c - [c = y])
    <w, grad_w f_c(x)>, and <w, grad_w f_c(x)> is the derivative of f_c(x) along w: one
    forward-mode pass (a JVP in the direction of the parameters) for a whole batch, float64.
    w is every parameter, biases included (Jiang et al.'s networks had biases); for a bias-free
    ReLU network <w, grad_w f_c> = d f_c."""
    import torch

    from torch.func import functional_call, jvp

    parameters(model)  # an MLP, biases allowed (w is every parameter), or Undefined
    if not len(x):
        raise Undefined("no training points")
    m64 = _double(model) if m64 is None else m64
    params = {k: v.detach() for k, v in m64.named_parameters()}
    d = len([m for m in m64.modules() if isinstance(m, torch.nn.Linear)])
    m, saturated, inners = len(x), 0, []
    for a in range(0, m, chunk):
        xb = x[a:a + chunk].to(torch.float64)
        f, df = jvp(lambda p: functional_call(m64, p, (xb,)), (params,), (params,))
        s = torch.softmax(f, dim=1)
        yb = y[a:a + chunk].to(s.device)
        # sum_c (s_c - [c = y]) df_c = sum_c s_c (df_c - df_y): no 1 - s_y, which rounds to 0
        # from margins of about 37 and took the -df_y term with it
        inners.append((s * (df - df.gather(1, yb[:, None]))).sum(dim=1).cpu())
        others = s.scatter(1, yb[:, None], 0.0)
        saturated += int(((others == 0).all(dim=1) & (s.shape[1] > 1)).sum())
    inner = torch.cat(inners)
    top = float(inner.abs().max())
    if top == 0.0:
        if saturated:  # (a network whose derivative along w is 0 is a true 0)
            raise Undefined(f"the Fisher-Rao sum is below float64's range: the softmax is "
                            f"saturated at {saturated} of {m} training points (logit margins "
                            "above about 745): a tie at 0 of every such network")
        return 0.0
    # the squares summed relative to the largest term (inner^2 underflows from margins of
    # about 372, long before the softmax saturates), scaled back at the end
    value = (d + 1) ** 2 / m * top * top * float(((inner / top) ** 2).sum()) if math.isfinite(
        top) else math.inf
    if value == 0.0:
        raise Undefined(f"the Fisher-Rao sum is below float64's range (its largest term "
                        f"{top:.3g}^2; logit margins above about 370): a tie at 0 of every "
                        "such network")
    if not math.isfinite(value):  # the derivative along w overflows float64 (deep, large w)
        raise Undefined(f"the Fisher-Rao sum is not finite in float64 ({value})")
    return value


# version 2: sum_c s_c (df_c - df_y), exact at large margins (version 1 formed s_y - 1, which
# rounds to 0 from margins of about 37: values about 10x too large there); version 3: undefined
# where the float64 copy disagrees in a hidden layer (workers.measures.precision, 2026-12-08)
_reg("fisher_rao", f"{JIANG} 45 (Liang et al. 2019)", TRAIN,
     lambda i: fisher_rao_value(i.model, i.x_train, i.y_train, m64=model64(i)),
     "((d + 1)^2 / m) sum_S <w, grad_w l(f_w(x), y)>^2, by forward-mode differentiation.",
     version=3)
