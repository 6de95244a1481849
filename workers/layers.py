"""A plain view of an MLP as a list of (affine map, elementwise activation) layers.

Metrics that exploit the structure of the paper's networks (the fast Jacobian path, exact
transition counting) read a model through :func:`mlp_layers`. A model has this view when it is
an ``nn.Sequential`` (nesting allowed) of ``nn.Linear`` layers, with or without bias, each but the
last followed by one elementwise activation whose derivative and breakpoints are known:
:class:`~workers.activations.PaperActivation`, ``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh`` (any
min/max) or ``nn.Tanh``; ``nn.Flatten`` and ``nn.Identity`` are skipped. The networks of
:func:`workers.models.build_mlp` are of this form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workers.activations import ACTIVATIONS, Activation, PaperActivation, _window


@dataclass(frozen=True)
class Layer:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None  # [out] or None
    act: Activation | None  # the activation after this layer; None for the output layer

    def affine(self, h: torch.Tensor) -> torch.Tensor:
        z = h @ self.weight.T
        return z if self.bias is None else z + self.bias


def _torch_clamp(lo: float | None, hi: float | None, name: str, v: float) -> Activation:
    """torch's ReLU / ReLU6 / Hardtanh: same function as a clamp, but their backward is 0 on a
    breakpoint (open window)."""
    bps = tuple(b for b in (lo, hi) if b is not None)
    return Activation(name, lambda z: torch.clamp(z, lo, hi), bps, True, v,
                      _window(lo, hi, closed=False))


def _as_activation(m: nn.Module) -> Activation | None:
    if isinstance(m, PaperActivation):
        return m.spec
    if isinstance(m, nn.ReLU):
        return _torch_clamp(0.0, None, "nn.ReLU", 2.0)
    if isinstance(m, nn.Tanh):
        return ACTIVATIONS["tanh"]
    if isinstance(m, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh with (0, 6)
        lo, hi = float(m.min_val), float(m.max_val)
        return _torch_clamp(lo, hi, f"nn.Hardtanh({lo}, {hi})", 1.0)
    return None


def _flatten(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _flatten(child)]
    if isinstance(model, (nn.Flatten, nn.Identity)):
        return []
    return [model]


def mlp_layers(model: nn.Module, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> list[Layer]:
    """The model as :class:`Layer` objects (weights detached, moved to ``dtype`` and ``device``
    if given).

    Raises ValueError naming the first module that does not fit the supported form (see the
    module docstring).
    """
    flat = _flatten(model)
    layers: list[Layer] = []
    i = 0
    while i < len(flat):
        lin = flat[i]
        if not isinstance(lin, nn.Linear):
            raise ValueError(
                f"unsupported module {type(lin).__name__} at position {i}; expected nn.Linear "
                "layers separated by PaperActivation, ReLU, ReLU6, Hardtanh or Tanh"
            )
        w = lin.weight.detach()
        b = None if lin.bias is None else lin.bias.detach()
        w = w.to(dtype=dtype, device=device)
        b = None if b is None else b.to(dtype=dtype, device=device)
        act = None
        if i + 1 < len(flat):
            act = _as_activation(flat[i + 1])
            if act is None:
                raise ValueError(
                    f"unsupported activation {type(flat[i + 1]).__name__} after a Linear layer; "
                    "supported: PaperActivation, ReLU, ReLU6, Hardtanh, Tanh"
                )
        layers.append(Layer(w, b, act))
        i += 2 if act is not None else 1
    if not layers:
        raise ValueError("the model has no nn.Linear layer")
    return layers


def float32_products_exact() -> bool:
    """Whether float32 matrix products are computed in float32 (IEEE), so that a rounding bound
    with float32's unit roundoff 2^-24 holds for them: not when TF32 or bfloat16 is allowed
    (``torch.set_float32_matmul_precision``, ``torch.backends.cuda.matmul.allow_tf32`` or the
    per-backend ``fp32_precision`` settings), nor when the setting cannot be read. The float32
    fast paths of the measures (error counts, the Tanh transition count) fall back to float64
    then."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
        if torch.backends.cuda.matmul.allow_tf32:
            return False
        for where in (torch.backends, torch.backends.mkldnn.matmul, torch.backends.cuda.matmul,
                      getattr(torch.backends.mkldnn, "conv", None)):
            if where is not None and getattr(where, "fp32_precision", "none") not in ("none",
                                                                                       "ieee"):
                return False
    except Exception:  # a setting torch itself refuses to report
        return False
    return True


# --- float32 passes with a bound on their distance to float64 ------------------------------
# Used where a float64 outcome (an argmax, a code z > b) is computed in float32 and re-checked
# in float64 where the bound cannot decide it: the sigma' searches' error counts
# (workers.measures.pacbayes._error_counts) and the Tanh transition count
# (workers.transitions._upper_changes).
U32 = 2.0 ** -24  # float32's unit roundoff
TINY32 = 2.0 ** -126  # float32's smallest normal number: below it rounding errors are absolute
# Above this share of rows evaluated again in float64, a float32 pass costs more than it saves
# (its bound compounds over depth and width): the callers go on in float64.
UNSURE_LIMIT = 0.2
# |f(z)| <= bound for every z, for the bounded activations (by ``Activation.name``)
ACTIVATION_BOUND = {"tanh": 1.0, "hardtanh": 1.0, "hardsigmoid": 1.0, "relu6": 6.0}


def _gamma(m: int) -> float:
    """gamma_m = m u / (1 - m u): the relative error bound of an m-term float32 sum."""
    return m * U32 / (1 - m * U32)


def product_error(err, norm, m: int, size):
    """Bound on |fl32(W32 h32) - W h| for a float32 product of m terms: W's rounding, the
    standard gamma_m |W| |h| bound with |W| |h| <= ||W||_inf ||h||_inf (``norm``: ||W||_inf,
    ``size``: ||h32||_inf), the input's error ``err`` carried through W, and an absolute term
    for results below float32's normal range."""
    return norm * (err + (U32 + _gamma(m) * (1 + U32)) * size) + (m + 2) * TINY32 * (size + 1)


F32_MAX = float(torch.finfo(torch.float32).max)


def overflow_risk(norm, size, err, m: int):
    """Where a float32 product of m terms by W (||W||_inf = ``norm``) of values within ``err``
    of h (|h| <= ``size``) may overflow in a partial sum (|sum| <= ||W||_inf (|h| + err),
    rounded): such a sum can become +-inf and be hidden by the activation after it (ReLU of
    -inf is 0), so those rows must be evaluated in float64 whatever their bound says. Boolean,
    the shape of ``size + err``; True where the bound itself is not finite."""
    reach = norm * (size + err) * (1 + _gamma(m)) * (1 + U32)
    return ~(reach < F32_MAX / 2)  # (True for nan and inf too)


def activation_error(err, size):
    """Bound after a 1-Lipschitz activation evaluated in float32 (within 4 u (|h| + 1)), whose
    input was within ``err``; ``size`` bounds |h|."""
    return err + 4 * U32 * (size + 1) + TINY32
