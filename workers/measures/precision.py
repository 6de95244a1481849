"""Whether a float64 re-evaluation of a trained network is the function that was scored.

Training, ``train_acc``, ``test_acc`` and ``gen_gap`` come from the float32 network. Several
measures evaluate it again in float64 (Fisher-Rao, sharpness, the PAC-Bayes sigma' searches,
expected sharpness, the transition counts). Rounding aside these are one function; in the
chaotic regime (e.g. ``tanh``, depth 65, ``init_scale`` 4) float32's rounding errors grow
layer by layer until the float64 network computes another function (other predictions, margins
of the other sign). Such a measure would describe a network nobody scored.

``compare_precisions`` evaluates both on the same points; they *agree* when on every point the
largest logit difference is at most ``RTOL`` (1e-3) times 1 + the largest |float32 logit| of
the point, i.e. the two functions agree to about three significant digits everywhere. A
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


@torch.no_grad()
def compare_precisions(model, m64, x: torch.Tensor, chunk: int | None = None) -> dict:
    """Both evaluations of the network on x [N, d]: ``model`` as given (its own dtype, the
    function as scored) and its float64 copy ``m64``. Returns {"agrees": bool, "rel_diff":
    the largest over points of max_j |z64_j - z_j| / (1 + max_j |z_j|) (float; inf where a
    logit is not finite), "flips": points whose predicted class differs, "points": N,
    "nonfinite": points where a float32 logit is not finite}."""
    from workers.metrics import SCORE_CHUNK

    chunk = chunk or SCORE_CHUNK  # the batches the network was scored in
    worst, flips, n, nonfinite = 0.0, 0, len(x), 0
    dtype = next(model.parameters()).dtype
    for a in range(0, n, chunk):
        xb = x[a:a + chunk]
        z = model(xb.to(dtype)).to(torch.float64)
        z64 = m64(xb.to(torch.float64))
        rel = (z64 - z).abs().amax(dim=1) / (1 + z.abs().amax(dim=1))
        rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, math.inf))
        worst = max(worst, float(rel.max()) if len(rel) else 0.0)
        flips += int((z.argmax(dim=1) != z64.argmax(dim=1)).sum())
        nonfinite += int((~torch.isfinite(z)).any(dim=1).sum())
    return {"agrees": worst <= RTOL, "rel_diff": worst, "flips": flips, "points": n,
            "nonfinite": nonfinite}


def disagreement(check: dict, where: str) -> str:
    """The reason a measure is undefined when ``check`` (``compare_precisions``) disagrees."""
    if check.get("nonfinite"):  # (not a matter of precision: the scored network has no value)
        return (f"the float32 network's outputs are not finite at {check['nonfinite']} of "
                f"{check['points']} {where}")
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
