"""Sharpness (Keskar et al. 2017, as Neyshabur et al. 2017 §3 use it; ../shared/MEASURES.md).

sharpness_alpha(w) = max over nu with |nu_k| <= alpha (|w_k| + 1) of
                     (L(w + nu) - L(w)) / (1 + L(w)),

w every parameter of the network (weights and biases, if any), L the mean cross-entropy over a
seeded subset of at most ``points`` training points (with the labels the trial trained on).
The maximum is sought by projected sign-gradient ascent on L:
from a seeded random start in the box, ``steps`` steps of a quarter of the box each, projected
back into the box; the value is the largest over the start, every iterate and nu = 0 (so it is
>= 0, and 0 at alpha = 0). Everything in float64, the cross-entropy in the stable form
(``workers.metrics.cross_entropy_float64``: exact at any margin up to float64's range; beyond
it, at every point and step, undefined); the subset is seeded from the trial's data
seed (the same points across trials), the random start from the trial (``draw_seed``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from workers.measures import MeasureInputs, MeasureValue, Undefined, draw_seed, register
from workers.measures.builtin import point_subset
from workers.measures.norms import _double, model64, parameters

# torch: imported by the functions that compute, so that registering these measures does not
# (workers.measures, tests/test_cli_imports.py)
if TYPE_CHECKING:  # (annotations only)
    import torch


def sharpness_value(model, x: torch.Tensor, y: torch.Tensor, alpha: float, steps: int,
                    seed: int, m64=None) -> tuple[float, int]:
    """(sharpness, ascent steps run) of an MLP on (x, y), see the module docstring;
    ``m64``: the network's float64 copy, if the caller has one (it is not modified)."""
    import torch
    from torch.func import functional_call

    from workers.metrics import cross_entropy_float64

    parameters(model)  # an MLP (biases allowed: they are among the w_k), or Undefined
    if len(x) == 0:
        raise Undefined("no training points")
    m64 = _double(model) if m64 is None else m64
    w = {k: v.detach() for k, v in m64.named_parameters()}
    x64, yy = x.to(torch.float64), y.to(next(iter(w.values())).device)

    def loss(p):  # (the stable form: float64 logsumexp - z_y is 0 from margins of about 37)
        return cross_entropy_float64(functional_call(m64, p, (x64,)), yy).mean()

    with torch.no_grad():
        base = float(loss(w))
    if alpha <= 0 or not w:
        return 0.0, 0
    bound = {k: alpha * (v.abs() + 1.0) for k, v in w.items()}
    gen = torch.Generator().manual_seed(seed + 104729)
    nu = {k: (torch.rand(v.shape, generator=gen, dtype=torch.float64) * 2 - 1).to(v.device)
          * bound[k] for k, v in w.items()}
    best, top = 0.0, -math.inf  # (top: the largest change itself, for the resolution check)
    for step in range(steps + 1):
        p = {k: (w[k] + nu[k]).requires_grad_(step < steps) for k in w}
        value = loss(p)
        top = max(top, float(value.detach()) - base)
        best = max(best, (float(value.detach()) - base) / (1.0 + base))
        if step == steps:
            break
        grads = torch.autograd.grad(value, list(p.values()))
        with torch.no_grad():
            for (k, g) in zip(p, grads):
                nu[k] = torch.clamp(nu[k] + 0.25 * bound[k] * torch.sign(g), -bound[k], bound[k])
    if best == 0.0 and base == 0.0:  # every loss on the way below float64's range
        raise Undefined(BELOW_RANGE)
    why = below_resolution(top, base)  # (a loss that only fell, clearly, is a true 0)
    if why:
        raise Undefined(why)
    return best, steps


RESOLUTION_ULPS = 64  # a loss change within this many float64 rounding steps of L(w) is noise


def below_resolution(change: float, base: float) -> str | None:
    """Why a loss change ``change`` from L(w) = ``base`` (float64, > 0) is not a value: within
    RESOLUTION_ULPS rounding steps of ``base`` it is rounding, not the network (logits that
    hardly move, as in a network whose outputs are all about 0: L(w) ~ log C); else None."""
    import math

    if base <= 0 or abs(change) > RESOLUTION_ULPS * math.ulp(base):
        return None
    return (f"the loss changes by {change:.3g} from L(w) = {base:.17g}, within "
            f"{RESOLUTION_ULPS} float64 rounding steps of it ({math.ulp(base):.3g} each): "
            "below float64's resolution (the logits hardly move), not a value")


BELOW_RANGE = ("the training loss is below float64's range at every point and every step "
               "(logit margins above about 745): a tie at 0 of every such network")


@register("sharpness", source="Neyshabur et al. 2017, §3 (Keskar et al. 2017's sharpness)",
          needs=("model", "train_inputs", "train_labels"),
          lower={"alpha": 0.0, "steps": 0},  # (alpha 0: the value 0; steps 0: the random start)
          version=4)  # 2: the random start seeded from the trial's own seed too (draw_seed);
# 3: the loss in the stable form (cross_entropy_float64): version 2 was 0 or inexact from
# training margins of about 30 (float64 logsumexp - z_y rounds to 0 from about 37);
# 4: undefined where the float64 copy disagrees in a hidden layer (workers.measures.precision)
# and where the loss change is below float64's resolution (version 3 stored 0 there)
def sharpness(inputs: MeasureInputs, *, alpha: float = 5e-4, points: int | None = 1000,
              steps: int = 20) -> MeasureValue:
    """max_{|nu_k| <= alpha (|w_k| + 1)} (L(w + nu) - L(w)) / (1 + L(w)) over a seeded subset
    of ``points`` training points, by ``steps`` projected sign-gradient ascent steps."""
    idx = point_subset(len(inputs.x_train), points, inputs.seed)
    dev = inputs.x_train.device
    value, ran = sharpness_value(inputs.model, inputs.x_train[idx.to(dev)],
                                 inputs.y_train[idx.to(dev)], alpha, steps,
                                 draw_seed(inputs, 5),
                                 m64=model64(inputs))
    return MeasureValue(value, info={"points": len(idx), "steps": ran, "alpha": alpha})
