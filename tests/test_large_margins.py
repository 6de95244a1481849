"""The measures that take a loss or a softmax keep their values at the margins fitted networks
have (Novak et al. 2018 §4.4 study networks at logit margins of 20 and more), checked against
references in mpmath (review of the measures at the extremes, 2026-12-07): float64 logsumexp -
z_y rounds to 0 from margins of about 37, and 1 - s_y with it, which made sharpness and expected
sharpness 0 and Fisher-Rao about 10x too large. Beyond float64's range (softmax saturated,
margins above about 745) a value would be 0 for every such network: it is undefined, with the
reason, while a network whose output does not move is a true 0. Non-finite outputs and empty
inputs are undefined with their own reasons."""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import torch

from workers.measures import MeasureInputs, evaluate_outcomes
from workers.measures.pacbayes import expected_sharpness_curve, normal_draw

mpmath.mp.dps = 50


def mlp(dims, seed=0, dtype=torch.float64):
    """A bias-free ReLU MLP."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(torch.nn.Linear(a, b, bias=False).to(dtype))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def at_margin(model, x, margin):
    """Labels the network gives, and its last layer scaled so that the smallest training margin
    is ``margin`` (a bias-free ReLU network is positively homogeneous in each layer)."""
    with torch.no_grad():
        z = model(x)
        top = z.topk(2, dim=1).values
        keep = top[:, 0] - top[:, 1] > 1e-3
        x, z = x[keep], z[keep]
        y = z.argmax(1)
        smallest = float((top[keep, 0] - top[keep, 1]).min())
        model[-1].weight.mul_(margin / smallest)
    return x, y


def mp_loss(z: np.ndarray, y: int):
    """-log softmax(z)_y in mpmath from float64 logits."""
    zs = [mpmath.mpf(float(v)) for v in z]
    top = max(zs)
    return top + mpmath.log(sum(mpmath.exp(v - top) for v in zs)) - zs[y]


def mp_softmax(z: np.ndarray):
    zs = [mpmath.mpf(float(v)) for v in z]
    total = sum(mpmath.exp(v - max(zs)) for v in zs)
    return [mpmath.exp(v - max(zs)) / total for v in zs]


@pytest.mark.parametrize("margin", [20, 40, 120, 300, 360, 600])
def test_fisher_rao_at_large_margins_against_homogeneity_and_mpmath(margin):
    """For a bias-free ReLU network of d layers <w, grad_w f_c> = d f_c (f(t w) = t^d f(w)), so
    Eq. 45 is ((d + 1)^2 d^2 / m) sum_x (sum_{c != y} s_c (f_c - f_y))^2, s in mpmath. At a
    smallest margin of 600 the sum (about e^-1200) is below float64's range: undefined."""
    if margin == 360:  # every point at that margin: each square about e^-720, the sum near
        return _fisher_rao_at_one_margin(margin)  # float64's smallest normal
    model = mlp((5, 12, 12, 4), seed=3)
    x, y = at_margin(model, torch.randn(60, 5, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1)), margin)
    d = 3
    with torch.no_grad():
        z = model(x).numpy()
    total = mpmath.mpf(0)
    for zi, yi in zip(z, y.tolist()):
        s = mp_softmax(zi)
        total += sum(s[c] * d * (mpmath.mpf(float(zi[c])) - mpmath.mpf(float(zi[yi])))
                     for c in range(len(zi)) if c != yi) ** 2
    want = (d + 1) ** 2 * total / len(x)
    out = evaluate_outcomes(MeasureInputs(model, x, y, x, y, None, None, 0),
                            ["fisher_rao"])["fisher_rao"]
    if want < mpmath.mpf("1e-300"):
        assert out.value is None and "below float64's range" in out.error, (out, want)
        return
    assert out.value == pytest.approx(float(want), rel=1e-9, abs=0), (out.value, want, out.error)


def _fisher_rao_at_one_margin(margin):
    """20 copies of one point at the given margin (the review's case: margins between about
    372 and 745 gave a silent 0, the squares underflowing before the softmax saturates)."""
    model = mlp((5, 12, 12, 4), seed=3)
    x = torch.randn(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x, y = at_margin(model, x.repeat(20, 1), margin)
    with torch.no_grad():
        z = model(x).numpy()
    s = mp_softmax(z[0])
    yi = int(y[0])
    term = sum(s[c] * 3 * (mpmath.mpf(float(z[0][c])) - mpmath.mpf(float(z[0][yi])))
               for c in range(len(s)) if c != yi) ** 2
    want = 16 * term  # (d + 1)^2 / m * m identical terms
    out = evaluate_outcomes(MeasureInputs(model, x, y, x, y, None, None, 0),
                            ["fisher_rao"])["fisher_rao"]
    assert want > mpmath.mpf("1e-310") and out.value == pytest.approx(float(want), rel=1e-6,
                                                                       abs=0), (out, want)
    for beyond in (400, 700):  # each square below float64's range, the softmax not saturated
        xb, yb = at_margin(model, x, beyond)
        o = evaluate_outcomes(MeasureInputs(model, xb, yb, xb, yb, None, None, 0),
                              ["fisher_rao"])["fisher_rao"]
        assert o.value is None and "below float64's range" in o.error, (beyond, o)


def test_sharpness_at_a_margin_of_60_against_the_brute_force_maximum_in_mpmath():
    """The 3-weight network of test_norms' brute-force check, its last layer scaled to a
    smallest margin of 60, at the paper's alpha: the loss is about 1e-26 in all of the box, and
    float64 logsumexp - z_y gave exactly 0 everywhere (the measure 0). The registered ascent is
    within 10% below the maximum over a grid of the box, losses in mpmath, and never above it."""
    from workers.measures.sharpness import sharpness_value

    tiny = mlp((1, 1, 2), seed=7)
    xs = torch.randn(40, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    xs, ys = at_margin(tiny, xs, 60.0)
    lins = [m for m in tiny if isinstance(m, torch.nn.Linear)]
    w = [m.weight.detach().clone() for m in lins]
    alpha = 5e-4

    def loss():
        with torch.no_grad():
            z = tiny(xs).numpy()
        return sum(mp_loss(zi, yi) for zi, yi in zip(z, ys.tolist())) / len(z)

    base = loss()
    brute = mpmath.mpf(0)
    for grid in itertools.product(*[np.linspace(-1, 1, 11)] * 3):
        nus = [torch.tensor(grid[:1]).reshape(1, 1), torch.tensor(grid[1:]).reshape(2, 1)]
        with torch.no_grad():
            for m, w0, nu in zip(lins, w, nus):
                m.weight.copy_(w0 + nu * alpha * (w0.abs() + 1))
        brute = max(brute, (loss() - base) / (1 + base))
    with torch.no_grad():
        for m, w0 in zip(lins, w):
            m.weight.copy_(w0)
    got = sharpness_value(tiny, xs, ys, alpha, 40, 0)[0]
    assert 1e-40 < float(brute) < 1e-20
    assert 0.9 * float(brute) <= got <= float(brute) * (1 + 1e-9), (got, float(brute))


@pytest.mark.parametrize("margin", [20, 60])
def test_expected_sharpness_at_large_margins_against_the_same_draws_in_mpmath(margin):
    model = mlp((5, 12, 12, 4), seed=4)
    x, y = at_margin(model, torch.randn(50, 5, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(2)), margin)
    alpha, samples, seed = 1e-3, 4, 5
    rows = expected_sharpness_curve(model, x, y, [alpha], samples=samples, seed=seed)
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    ws = [m.weight.detach().clone() for m in lins]

    def loss(noise):
        with torch.no_grad():
            for m, w0, e in zip(lins, ws, noise):
                m.weight.copy_(w0 + e)
            z = model(x).numpy()
            for m, w0 in zip(lins, ws):
                m.weight.copy_(w0)
        return sum(mp_loss(zi, yi) for zi, yi in zip(z, y.tolist())) / len(z)

    shapes = [w.shape for w in ws]
    base = loss([0 * w for w in ws])
    mean = sum(loss([alpha * (10 * w.abs() + 1) * e for w, e in
                     zip(ws, normal_draw(shapes, seed, k))]) for k in range(samples)) / samples
    want = float(mean - base)
    assert want != 0.0
    assert rows[0]["expected_sharpness"] == pytest.approx(want, rel=1e-7, abs=0), (rows, want)


def saturated(dtype=torch.float32):
    """A network whose softmax is saturated in float64 at every training point (margins of
    about 1e4), and its points."""
    model = mlp((5, 12, 12, 4), seed=5, dtype=dtype)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(6)).to(dtype)
    x, y = at_margin(model, x, 1e4)
    return model, x, y


def test_beyond_float64s_range_the_measures_are_undefined_not_zero():
    model, x, y = saturated()
    names = ["jacobian_norm_train", "jacobian_norm_test", "fisher_rao", "sharpness"]
    out = evaluate_outcomes(MeasureInputs(model, x, y, x, y, None, None, 0), names)
    for name in names:
        o = out[name]
        assert o.value is None and "below float64's range" in o.error, (name, o.value, o.error)
    assert f"saturated at {len(x)} of {len(x)} train points" in out["jacobian_norm_train"].error
    # expected sharpness: every perturbed copy saturated too (margins of 1e7, alpha 1e-4)
    with torch.no_grad():
        model[-1].weight.mul_(1e3)
    es = evaluate_outcomes(MeasureInputs(model, x, y, x, y, None, None, 0), ["expected_sharpness"],
                           {"expected_sharpness": dict(alpha=1e-4, alpha_min=1e-4,
                                                       alpha_max=1e-4, alphas=1)})
    o = es["expected_sharpness"]
    assert o.value is None and "below float64's range" in o.error, o
    # a network whose logits do not move with the input is a true 0 (not saturated)
    dead = mlp((5, 12, 12, 4), seed=5, dtype=torch.float32)
    with torch.no_grad():
        dead[0].weight.zero_()
    o = evaluate_outcomes(MeasureInputs(dead, x, y, x, y, None, None, 0),
                          ["jacobian_norm_test"])["jacobian_norm_test"]
    assert o.value == 0.0 and not o.error


def test_non_finite_outputs_and_empty_inputs_say_so():
    model = mlp((5, 12, 12, 4), seed=8, dtype=torch.float32)
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        y = model(x).argmax(1)
    bad = x.clone()
    bad[3, 2] = float("nan")
    out = evaluate_outcomes(MeasureInputs(model, bad, y, x, y, None, None, 0),
                            ["margin_gamma5", "inverse_margin", "fisher_rao", "sharpness"])
    for name in ("margin_gamma5", "inverse_margin"):
        assert out[name].value is None
        assert "outputs are not finite at 1 of 30 training points" in out[name].error, out[name]
    for name in ("fisher_rao", "sharpness"):
        assert out[name].value is None
        assert "float32 network's outputs are not finite at 1 of 30" in out[name].error
    empty = evaluate_outcomes(MeasureInputs(model, x[:0], y[:0], x[:0], y[:0], None, None, 0),
                              ["sharpness", "fisher_rao", "jacobian_norm_train",
                               "jacobian_norm_test"])
    for name, o in empty.items():
        assert o.value is None and "no t" in o.error and "points" in o.error, (name, o.error)
