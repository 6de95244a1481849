"""Networks whose float32 values underflow or saturate (helper's audit of the space's extremes):
a measure either describes the float32 network that was scored or is undefined with its
reason, never a silent 0 (the standard "a value computed in another precision must describe the
same function"). Each case is checked against an independent computation: a float64 numpy
forward pass, torch.autograd's Jacobian in float64, mpmath's sech^2."""

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch

from workers.measures import evaluate
from workers.measures.norms import _double
from workers.measures.precision import compare_precisions
from workers.models import build_mlp


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (torch.tensor(d.data[:120] / 16, dtype=torch.float32),
            torch.tensor(d.target[:120]))


def _measures(model, x, y, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate(model, names, x_train=x, y_train=y, x_test=x, y_test=y,
                        image_shape=(1, 8, 8), settings={"transitions_test": {"points": 3}})


def _numpy_hidden(model, x):
    """Each hidden layer's pre-activations of the ReLU network ``model`` in float64 numpy."""
    h, out = x.double().numpy(), []
    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(lin):
        h = h @ m.weight.detach().double().numpy().T
        if i < len(lin) - 1:
            out.append(h.copy())
            h = np.maximum(h, 0.0)
    return out


def test_a_float32_network_whose_hidden_units_underflowed_is_not_measured_in_float64(digits):
    """ReLU, width 16, depth 65, init_scale 0.01: from some layer on every float32
    pre-activation is exactly 0 (a constant function) while the float64 values (numpy) are
    still about 1e-60 and below; its logits agree to 1e-130 "relative to 1 + |z|", which let
    float64 transitions (3167 in the audit), Fisher-Rao (7.5e-260) and a Jacobian norm of 0
    (true value about 1e-133) stand as the scored network's."""
    x, y = digits
    model = build_mlp(64, 16, 65, 10, "relu", 0.01, seed=0)
    with torch.no_grad():  # float32, layer by layer: the first hidden layer that is all 0
        h, zero_at = x, None
        for i, m in enumerate(model):
            h = m(h)
            if isinstance(m, torch.nn.Linear) and zero_at is None and not h.any():
                zero_at = i
    ref = _numpy_hidden(model, x)
    layer = [i for i, m in enumerate(model) if isinstance(m, torch.nn.Linear)].index(zero_at)
    assert 0 < np.abs(ref[layer]).max() < 1e-30  # float64: not 0, far below float32's range
    check = compare_precisions(model, _double(model), x)
    assert check["rel_diff"] < 1e-100  # (the logits alone agree)
    assert not check["agrees"] and check["hidden_rel_diff"] == math.inf
    assert check["hidden_layer"] == layer + 1
    jac = torch.autograd.functional.jacobian(  # the float64 copy's Jacobian of the softmax
        lambda v: torch.softmax(_double(model)(v[None]), dim=1)[0], x[0].double())
    assert float(jac.norm()) > 0
    v = _measures(model, x, y, ["jacobian_norm_test", "transitions_test", "fisher_rao",
                                "sharpness", "expected_sharpness"])
    assert all(math.isnan(v[k]) for k in v), dict(v)
    assert "underflows to 0" in v.reasons["jacobian_norm_test"]
    for k in ("transitions_test", "fisher_rao", "sharpness", "expected_sharpness"):
        assert (f"every float32 pre-activation of hidden layer {layer + 1} is exactly 0 "
                "(the network is constant there") in v.reasons[k], (k, v.reasons[k])
        assert "float32 underflowed" in v.reasons[k]


def test_underflow_at_some_points_only_is_found_however_large_the_others_are(digits):
    """A layer's largest |value| over the points sets the tolerance, so points whose float32
    layer underflowed to all 0 passed while other points were large (review): the digits and
    the same digits scaled by 1e-10, through a deep ReLU network of small init."""
    x, _ = digits
    model = build_mlp(64, 16, 65, 10, "relu", 0.3, seed=0)
    both = torch.cat([x[:60], x[:60] * 1e-10])
    ref = _numpy_hidden(model, both)  # float64: the scaled points' last layer is not all 0
    assert (np.abs(ref[-1][60:]).max(axis=1) > 0).all()
    with torch.no_grad():
        h = both
        for m in list(model)[:-1]:
            h = m(h)
    dead = int((h[60:] == 0).all(dim=1).sum())  # ... while float32's is, at every one of them
    assert dead == 60 and (h[:60] != 0).any()
    assert compare_precisions(model, _double(model), x[:60])["agrees"]  # (the large ones alone)
    check = compare_precisions(model, _double(model), both)
    assert not check["agrees"] and 0 < check["hidden_dead"] <= 60, check  # (its first such layer)


def test_saturated_tanh_units_leave_no_jacobian_but_clipped_hardtanh_ones_a_true_zero(digits):
    """First-layer weights scaled by 1e6: every hidden unit's |h| is far above 19, where
    1 - tanh^2 is 0 in float64, so autograd's float64 Jacobian is exactly 0, yet sech^2(h) > 0
    (mpmath): undefined, not 0. HardTanh units there are clipped: their derivative is truly 0,
    and so is the Jacobian norm (a value)."""
    x, y = digits
    x = x + 0.5  # (no input of all zeros: every unit's |h| is large)
    for act in ("tanh", "hardtanh"):
        model = build_mlp(64, 8, 3, 10, act, 1.0, seed=1)
        with torch.no_grad():
            model[0].weight.mul_(1e6)
            h = model[0](x).double()
        assert float(h.abs().min()) > 100
        jac = torch.autograd.functional.jacobian(
            lambda v: torch.softmax(_double(model)(v[None]), dim=1)[0], x[0].double())
        assert float(jac.abs().max()) == 0.0
        v = _measures(model, x, y, ["jacobian_norm_test"])
        if act == "tanh":
            assert mpmath.sech(mpmath.mpf(float(h.abs().max()))) ** 2 > 0
            assert math.isnan(v["jacobian_norm_test"])
            assert "Tanh units saturate" in v.reasons["jacobian_norm_test"]
        else:
            assert v["jacobian_norm_test"] == 0.0 and not v.reasons


def test_a_loss_change_below_float64s_resolution_is_no_sharpness(digits):
    """Width 1, depth 65, Tanh: the logits are about 1e-18 on every point, so L(w) = log 10 to
    within a rounding step and a perturbation's loss change (about 1e-20, first order: the
    float64 gradient times the box) rounds to 0: sharpness and expected sharpness are undefined
    with that reason, not 0."""
    x, y = digits
    model = build_mlp(64, 1, 65, 10, "tanh", 1.0, seed=0)
    m64 = _double(model)
    with torch.no_grad():
        z = m64(x.double())
    assert 0 < float(z.abs().max()) < 1e-15
    w = list(m64.parameters())
    loss = torch.nn.functional.cross_entropy(m64(x.double()), y)
    grads = torch.autograd.grad(loss, w)
    first_order = sum(float((5e-4 * (p.abs() + 1) * g.abs()).sum()) for p, g in zip(w, grads))
    assert 0 < first_order < 64 * math.ulp(math.log(10))  # true value > 0, below resolution
    v = _measures(model, x, y, ["sharpness", "expected_sharpness"])
    for k in ("sharpness", "expected_sharpness"):
        assert math.isnan(v[k]) and "below float64's resolution" in v.reasons[k], dict(v)


@pytest.mark.parametrize("act, depth", [("relu", 3), ("tanh", 10), ("hardtanh", 5)])
def test_ordinary_networks_still_agree_layer_by_layer(digits, act, depth):
    x, _ = digits
    model = build_mlp(64, 64, depth, 10, act, 1.0, seed=0)
    check = compare_precisions(model, _double(model), x)
    assert check["agrees"] and check["hidden_rel_diff"] < 1e-5, check


def test_a_margin_of_a_tie_is_zero_not_negative_zero(digits):
    """A tie between the true class and another (z_y - max_j z_j rounds to -0.0, as the audit's
    dead width-1 ReLU network gave) is a margin of 0.0, not -0.0 (printed as below 0): the
    5th and 10th percentile margins of 40 points of which 20 are tied."""
    from workers.measures import MeasureInputs, evaluate_outcomes

    x, y = digits
    model = build_mlp(64, 4, 2, 10, "relu", 1.0, seed=0)
    tied = torch.tensor([-0.0] * 20 + [1.0] * 20, dtype=torch.float64)
    assert torch.signbit(torch.sort(tied).values[0])  # (the k-th smallest is -0.0 itself)
    inputs = MeasureInputs(model, x[:40], y[:40], x[:40], y[:40], None, (1, 8, 8), 0, 0,
                           {"margins": tied})
    out = evaluate_outcomes(inputs, ["margin_gamma5", "margin_gamma10"])
    for k, o in out.items():
        assert o.value == 0.0 and math.copysign(1.0, o.value) == 1.0, (k, o.value, o.error)
