"""Whether a float64 re-evaluation of a trained network is the function that was scored.

Training, ``train_acc``, ``test_acc`` and ``gen_gap`` come from the float32 network. Several
measures evaluate it again in float64 (Fisher-Rao, sharpness, the PAC-Bayes sigma' searches,
expected sharpness, the transition counts). Rounding aside these are one function; in the
chaotic regime (e.g. ``tanh``, depth 65, ``init_scale`` 4) float32's rounding errors grow
layer by layer until the float64 network computes another function (other predictions, margins
of the other sign). Such a measure would describe a network nobody scored.

``compare_precisions`` evaluates both on the same points; they *agree* when on every point the
largest logit difference is at most ``RTOL`` (1e-3) times 1 + the largest |float32 logit| of
the point, i.e. the two functions agree to about three significant digits everywhere, and when
every hidden layer's pre-activations agree to ``RTOL`` of that layer's largest |float32 value|
over the points: the logits alone miss a float32 network whose hidden activations underflowed
(e.g. ``relu``, depth 65, ``init_scale`` 0.01: from some layer on every float32 pre-activation
is exactly 0, a constant function, while the float64 copy still carries values of 1e-130, its
activation patterns, transitions and gradients those of another function). A
measure whose float64 evaluation disagrees is undefined with the numbers as its reason
(``require_agreement``); the margins are computed from the float32 outputs themselves, in the
batches the trial scored them in (in the chaotic regime even float32's outputs depend on how
the points are batched).
"""

from __future__ import annotations

import math

import torch

from workers.measures import MeasureInputs, Undefined

RTOL = 1e-3  # largest logit difference allowed, relative to 1 + max |logit| of the point


def _hidden_layers(model, m64) -> list[int] | None:
    """The positions in ``model`` (an nn.Sequential, as ``workers.models.build_mlp`` builds)
    of the Linear layers whose outputs are hidden pre-activations (all but the last); None for
    another kind of network or a copy of another structure (then only the logits are
    compared)."""
    from torch import nn

    if not (isinstance(model, nn.Sequential) and isinstance(m64, nn.Sequential)
            and len(model) == len(m64)):
        return None
    linear = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    return linear[:-1] if linear else None  # (none at the top level: nested, not walked)


ROWS = 1024  # the float64 differences of a hidden layer are taken this many points at a time


def _layer_stats(st: list, z: torch.Tensor, z64: torch.Tensor) -> None:
    """Add one chunk of a hidden layer's pre-activations (``z`` as scored, ``z64`` its float64
    copy's, [n, width]) to ``st`` = [largest |z|, largest |z64|, largest |z64 - z|, points
    whose float32 row is all 0 while the float64 row is not], with at most ROWS x width
    float64 values allocated at a time (a float64 copy of a wide layer is large)."""
    if not z.numel():
        return
    inf = float("inf")
    st[0] = max(st[0], float(torch.linalg.vector_norm(z, ord=inf)))
    st[1] = max(st[1], float(torch.linalg.vector_norm(z64, ord=inf)))
    for a in range(0, len(z), ROWS):
        d = z[a:a + ROWS].to(torch.float64)
        d.sub_(z64[a:a + ROWS])
        st[2] = max(st[2], float(d.abs_().max()))
        st[3] += int(((z[a:a + ROWS] == 0).all(dim=1)
                      & (z64[a:a + ROWS] != 0).any(dim=1)).sum())


@torch.no_grad()
def compare_precisions(model, m64, x: torch.Tensor, chunk: int | None = None) -> dict:
    """Both evaluations of the network on x [N, d]: ``model`` as given (its own dtype, the
    function as scored) and its float64 copy ``m64``. Returns {"agrees": bool, "rel_diff":
    the largest over points of max_j |z64_j - z_j| / (1 + max_j |z_j|) (float; inf where a
    logit is not finite), "flips": points whose predicted class differs, "points": N,
    "nonfinite": points where a float32 logit is not finite, "hidden_rel_diff": the largest
    over hidden layers of max |h64 - h| / max |h| over the points (0 where both are 0
    everywhere, inf where only the float32 layer is: it underflowed), "hidden_layer": that
    layer's number (1 = the first hidden layer; None: the layers were not compared),
    "hidden_scale": (the largest |h| of that layer in float32, in float64), "hidden_dead":
    the points where that layer's float32 row is all 0 and the float64 row is not (counted
    as inf: underflow there, however large the layer is at other points)}."""
    from workers.metrics import SCORE_CHUNK

    chunk = chunk or SCORE_CHUNK  # the batches the network was scored in
    worst, flips, n, nonfinite = 0.0, 0, len(x), 0
    dtype = next(model.parameters()).dtype
    hidden = _hidden_layers(model, m64)
    # per hidden layer: the largest |h| in float32 and in float64, the largest difference
    stats = [[0.0, 0.0, 0.0, 0] for _ in hidden or []]
    for a in range(0, n, chunk):
        xb = x[a:a + chunk]
        if hidden is None:
            z = model(xb.to(dtype)).to(torch.float64)
            z64 = m64(xb.to(torch.float64))
        else:  # layer by layer: the same operations as the whole network's forward pass
            z, z64, q = xb.to(dtype), xb.to(torch.float64), 0
            for i, (m, m2) in enumerate(zip(model, m64)):
                z, z64 = m(z), m2(z64)
                if q < len(hidden) and i == hidden[q]:
                    _layer_stats(stats[q], z, z64)
                    q += 1
            z = z.to(torch.float64)
        rel = (z64 - z).abs().amax(dim=1) / (1 + z.abs().amax(dim=1))
        rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, math.inf))
        worst = max(worst, float(rel.max()) if len(rel) else 0.0)
        flips += int((z.argmax(dim=1) != z64.argmax(dim=1)).sum())
        nonfinite += int((~torch.isfinite(z)).any(dim=1).sum())
    h_worst, h_layer, h_scale, h_dead = 0.0, None, None, 0
    for q, (s32, s64, diff, dead) in enumerate(stats):
        if not (math.isfinite(s32) and math.isfinite(diff)):
            continue  # (non-finite: said by the logits' check)
        r = 0.0 if diff == 0 else (diff / s32 if s32 > 0 else math.inf)
        if dead:  # points whose float32 layer is all 0 where float64's is not: underflow
            r, s32 = math.inf, 0.0  # there, however large the layer is at other points
        if h_layer is None or r > h_worst:
            h_worst, h_layer, h_scale, h_dead = r, q + 1, (s32, s64), dead
    return {"agrees": worst <= RTOL and h_worst <= RTOL, "rel_diff": worst, "flips": flips,
            "points": n, "nonfinite": nonfinite, "hidden_rel_diff": h_worst,
            "hidden_layer": h_layer, "hidden_scale": h_scale, "hidden_dead": h_dead}


def disagreement(check: dict, where: str) -> str:
    """The reason a measure is undefined when ``check`` (``compare_precisions``) disagrees."""
    if check.get("nonfinite"):  # (not a matter of precision: the scored network has no value)
        return (f"the float32 network's outputs are not finite at {check['nonfinite']} of "
                f"{check['points']} {where}")
    if check["rel_diff"] <= RTOL and check.get("hidden_rel_diff", 0.0) > RTOL:
        layer, (s32, s64) = check["hidden_layer"], check["hidden_scale"]
        if s32 == 0:
            dead = check.get("hidden_dead") or check["points"]
            at = (f"on {check['points']} {where}" if dead >= check["points"] else
                  f"at {dead} of {check['points']} {where}")
            return (f"the float64 re-evaluation is another function than the float32 network "
                    f"that was scored: {at} every float32 pre-activation of hidden layer "
                    f"{layer} is exactly 0 (the network is constant there from that layer on) "
                    f"where the float64 copy's are not"
                    + (f" (up to {s64:.3g})" if dead >= check["points"] else "")
                    + ": float32 underflowed")
        return (f"the float64 re-evaluation is another function than the float32 network that "
                f"was scored: on {check['points']} {where} the pre-activations of hidden layer "
                f"{layer} differ by up to {check['hidden_rel_diff']:.3g} of the layer's largest "
                f"({s32:.3g}; allowed {RTOL:g})")
    return (f"the float64 re-evaluation is another function than the float32 network that was "
            f"scored: on {check['points']} {where} its logits differ by up to "
            f"{check['rel_diff']:.3g} (relative; allowed {RTOL:g}) and {check['flips']} "
            "predicted classes differ")


def train_agreement(inputs: MeasureInputs, m64) -> dict:
    """``compare_precisions`` on every training point (a superset of the points each measure
    that evaluates the network in float64 uses), once per evaluation."""
    key = "float64_agreement"
    if key not in inputs.cache:
        inputs.cache[key] = compare_precisions(inputs.model, m64, inputs.x_train)
    return inputs.cache[key]


def require_agreement(inputs: MeasureInputs, m64) -> None:
    """Undefined (with the numbers) unless the float64 copy ``m64`` agrees with the network as
    scored on the training points; nothing to check for a model that is float64 already."""
    if next(inputs.model.parameters()).dtype == torch.float64 or inputs.x_train is None:
        return
    check = train_agreement(inputs, m64)
    if not check["agrees"]:
        raise Undefined(disagreement(check, "training points"))
