"""PAC-Bayes measures, flatness and the expected-sharpness curve (../shared/MEASURES.md).

Jiang et al. 2019, "Fantastic Generalization Measures and Where to Find Them" (ICLR 2020),
Appendix C.6-C.7, Eq. 48-49, 53 and 56-57, 61, with their sigma' search; Neyshabur et al.
2017, "Exploring Generalization in Deep Learning", §3 and Fig. 2 (expected sharpness against KL).

The sigma' search (Jiang et al. §C, flatness): the largest sigma such that the Monte-Carlo mean
training error of w + nu, nu_k ~ N(0, sigma^2), exceeds err(w) by at most ``target`` (0.1):
bisection on [0, ``upper``] (2), at most ``steps`` (15) steps of ``samples`` (10) draws, stopped
when the gap is within ``tolerance`` (0.01) of the target. The magnitude-aware sigma'_mag is the
same with nu_k ~ N(0, sigma^2 w_k^2 + eps^2), eps = 1e-3: a standard deviation of
sqrt(sigma^2 w_k^2 + eps^2) (the paper's definition; a public implementation passes the variance
where torch.normal takes a standard deviation).

Cost and determinism: the ``samples`` perturbed networks of one sigma are evaluated as one
batch (stacked weight matrices, one batched matrix product per layer), in float64. The draws are
common random numbers: one seeded standard-normal draw z per search (seeded from the trial), so
the perturbation at sigma is sigma * z (or sqrt(sigma^2 w^2 + eps^2) * z), the same trial gives
the same sigma', and the error curve the bisection walks is a fixed function of sigma. Errors and
losses are over a seeded subset of at most ``points`` (500) training points: 5,000 evaluations
per step with 10 draws, a binomial standard error of 0.004 near the target error gap 0.1 (more
where the draws differ from each other), against the search's tolerance 0.01; ``points`` null
takes all of them. The labels are those the trial trained on; ``point_subset`` draws the subset
(a smaller subset is inside a larger one); the bounds use m = |S|, all of the training set.
"""

from __future__ import annotations

import math

import torch

from workers.measures import MeasureInputs, MeasureValue, Undefined, register
from workers.measures.builtin import point_subset
from workers.measures.norms import _cached, _double, _w, _w0, model64, weights

EPS = 1e-3  # Jiang et al. C.7's epsilon of the magnitude-aware perturbation
SEARCH = {"points": 500, "samples": 10, "steps": 15, "upper": 2.0, "target": 0.1,
          "tolerance": 0.01}
JIANG = "Jiang et al. 2019, Appendix C"


def _layers(m64):
    """(weight index or None, module) along a bias-free Sequential MLP: its Linear layers (by
    position in ``weights``) and the element-wise non-linearities between them."""
    out, i = [], 0
    for mod in m64:
        if isinstance(mod, torch.nn.Linear):
            out.append((i, mod))
            i += 1
        else:
            out.append((None, mod))
    return out


def batched_logits(m64, ws: list[torch.Tensor], x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Logits [S, N, C] of the S networks whose weight matrices are ``ws`` ([S, h_i, h_{i-1}]
    each, float64), with the architecture (non-linearities) of ``m64``, on x [N, d]."""
    layers = _layers(m64)
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), chunk):
            h = x[a:a + chunk].to(torch.float64).unsqueeze(0).expand(ws[0].shape[0], -1, -1)
            for i, mod in layers:
                h = torch.bmm(h, ws[i].transpose(1, 2)) if i is not None else mod(h)
            outs.append(h)
    return torch.cat(outs, dim=1)


def _errors(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Training error (1 - accuracy) of each of the S networks: logits [S, N, C] -> [S]."""
    return (logits.argmax(dim=2) != y.to(logits.device)[None, :]).double().mean(dim=1)


def _losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each of the S networks: logits [S, N, C] -> [S] (float64)."""
    yy = y.to(logits.device)
    lse = torch.logsumexp(logits, dim=2)
    true = logits.gather(2, yy[None, :, None].expand(logits.shape[0], -1, 1))[..., 0]
    return (lse - true).mean(dim=1)


def _normal(shapes, samples: int, seed: int, device) -> list[torch.Tensor]:
    """One seeded standard-normal draw [samples, *shape] per weight matrix (float64)."""
    gen = torch.Generator().manual_seed(int(seed))
    return [torch.randn(samples, *s, generator=gen, dtype=torch.float64).to(device)
            for s in shapes]


def _subset(inputs: MeasureInputs, points):
    idx = point_subset(len(inputs.x_train), points, inputs.seed)
    dev = inputs.x_train.device
    return inputs.x_train[idx.to(dev)], inputs.y_train[idx.to(dev)]


def sigma_search(model, x: torch.Tensor, y: torch.Tensor, *, magnitude: bool, seed: int,
                 samples: int = 10, steps: int = 15, upper: float = 2.0, target: float = 0.1,
                 tolerance: float = 0.01, m64=None) -> dict:
    """sigma' (or sigma'_mag if ``magnitude``) of a bias-free MLP on (x [N, d], y [N]), see the
    module docstring. Returns {"sigma", "gap" (mean error of w + nu minus err(w) at sigma),
    "steps" (bisection steps run), "base_error"}."""
    ws = weights(model)
    m64 = _double(model) if m64 is None else m64
    dev = next(m64.parameters()).device
    ws = [w.to(dev) for w in ws]
    base = float(_errors(batched_logits(m64, [w[None] for w in ws], x), y)[0])
    z = _normal([w.shape for w in ws], samples, seed + (7 if magnitude else 3), dev)

    def gap(sigma: float) -> float:
        if magnitude:
            pert = [w[None] + torch.sqrt(sigma ** 2 * w[None] ** 2 + EPS ** 2) * e
                    for w, e in zip(ws, z)]
        else:
            pert = [w[None] + sigma * e for w, e in zip(ws, z)]
        return float(_errors(batched_logits(m64, pert, x), y).mean()) - base

    lo, hi = 0.0, float(upper)
    sigma, g, ran = hi / 2, float("nan"), 0
    for ran in range(1, steps + 1):
        sigma = (lo + hi) / 2
        g = gap(sigma)
        if abs(g - target) <= tolerance:
            break
        if g > target:
            hi = sigma
        else:
            lo = sigma
    return {"sigma": sigma, "gap": g, "steps": ran, "base_error": base}


def _sigma(inputs: MeasureInputs, magnitude: bool, settings: dict) -> dict:
    key = ("sigma_mag" if magnitude else "sigma",) + tuple(sorted(settings.items()))

    def run():
        x, y = _subset(inputs, settings["points"])
        if len(x) == 0:
            raise Undefined("no training points")
        s = {k: v for k, v in settings.items() if k != "points"}
        found = sigma_search(inputs.model, x, y, magnitude=magnitude, seed=inputs.seed,
                             m64=model64(inputs), **s)
        if not found["sigma"] > 0:
            raise Undefined("sigma' search ended at 0")
        return {**found, "points": len(x)}

    return _cached(inputs, key, run)


def _flat(w) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in w])


def _pacbayes(inputs, magnitude: bool, kind: str, settings: dict) -> MeasureValue:
    found = _sigma(inputs, magnitude, settings)
    s, m = found["sigma"], len(inputs.x_train)
    info = {k: found[k] for k in ("sigma", "gap", "steps", "points", "base_error")}
    if kind == "flatness":
        return MeasureValue(1.0 / s ** 2, info=info)
    w = _flat(_w(inputs))
    w0 = _flat(_w0(inputs))
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


def _define(name, eq, magnitude, kind, doc):
    needs = TRAIN if kind == "flatness" else INIT_TRAIN

    def fn(inputs: MeasureInputs, **settings) -> MeasureValue:
        return _pacbayes(inputs, magnitude, kind, settings)

    fn.__doc__ = doc + " sigma' by the seeded bisection of the module docstring."
    fn.__name__ = fn.__qualname__ = name
    register(name, source=f"{JIANG}, Eq. {eq}", needs=needs, settings=dict(SEARCH))(fn)


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
CURVE = {"alpha_min": 1e-4, "alpha_max": 1e-1, "alphas": 10, "alpha": 1e-3, "samples": 10,
         "points": 500}


def expected_sharpness_curve(model, x: torch.Tensor, y: torch.Tensor, alphas, *, samples: int,
                             seed: int, m64=None) -> list[dict]:
    """For each alpha: nu_k ~ N(0, sigma_k^2), sigma_k = alpha (10 |w_k| + 1) (a standard
    deviation), expected sharpness E_nu[L(w + nu)] - L(w) by ``samples`` seeded draws (the same
    standard-normal draw scaled for every alpha), and KL = sum_k w_k^2 / (2 sigma_k^2)
    (Neyshabur et al. 2017, §3). Returns [{"alpha", "kl", "expected_sharpness"}] in float64,
    L the mean cross-entropy on (x [N, d], y [N])."""
    ws = weights(model)
    m64 = _double(model) if m64 is None else m64
    dev = next(m64.parameters()).device
    ws = [w.to(dev) for w in ws]
    base = float(_losses(batched_logits(m64, [w[None] for w in ws], x), y)[0])
    z = _normal([w.shape for w in ws], samples, seed + 11, dev)
    rows = []
    for alpha in alphas:
        sig = [alpha * (10 * w.abs() + 1) for w in ws]
        pert = [w[None] + s[None] * e for w, s, e in zip(ws, sig, z)]
        loss = float(_losses(batched_logits(m64, pert, x), y).mean())
        kl = sum(float((w * w / (2 * s * s)).sum()) for w, s in zip(ws, sig))
        rows.append({"alpha": float(alpha), "kl": kl, "expected_sharpness": loss - base})
    return rows


@register("expected_sharpness", source="Neyshabur et al. 2017, §3 and Fig. 2",
          needs=TRAIN, settings=dict(CURVE))
def expected_sharpness(inputs: MeasureInputs, alpha_min: float = 1e-4, alpha_max: float = 1e-1,
                       alphas: int = 10, alpha: float = 1e-3, samples: int = 10,
                       points: int | None = 500) -> MeasureValue:
    """E_nu[L(w + nu)] - L(w) at ``alpha`` (nu_k ~ N(0, (alpha (10 |w_k| + 1))^2)), and in
    ``info["curve"]`` the table (alpha, kl, expected_sharpness) over ``alphas`` log-spaced
    values from ``alpha_min`` to ``alpha_max`` (with ``alpha`` added), for Neyshabur et al.'s
    Fig. 2; ``analysis.load_curves`` reads the tables of a sweep."""
    if not (0 < alpha_min <= alpha_max) or alphas < 1 or alpha <= 0:
        raise ValueError("expected_sharpness: need 0 < alpha_min <= alpha_max, alphas >= 1 and "
                         f"alpha > 0; got {alpha_min}, {alpha_max}, {alphas}, {alpha}")
    grid = sorted({float(a) for a in torch.logspace(math.log10(alpha_min), math.log10(alpha_max),
                                                   alphas, dtype=torch.float64).tolist()}
                  | {float(alpha)})
    x, y = _subset(inputs, points)
    if len(x) == 0:
        raise Undefined("no training points")
    rows = expected_sharpness_curve(inputs.model, x, y, grid, samples=samples, seed=inputs.seed,
                                    m64=model64(inputs))
    at = next(r for r in rows if r["alpha"] == float(alpha))
    return MeasureValue(at["expected_sharpness"],
                        info={"curve": {k: [r[k] for r in rows]
                                        for k in ("alpha", "kl", "expected_sharpness")},
                              "points": len(x), "samples": samples})
