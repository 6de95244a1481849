"""PAC-Bayes measures, flatness and the expected-sharpness curve (workers/measures/pacbayes.py)
against independent computations: each perturbed network evaluated one at a time by copying the
model and adding the noise (the slow obvious way), the bounds' formulas in numpy from the sigma'
the search reports, and the search's stopping rule."""

import copy
import math

import numpy as np
import pytest
import torch

from workers.measures import MeasureInputs, evaluate_outcomes
from workers.measures import Undefined
from workers.measures.pacbayes import (EPS, batched_logits, expected_sharpness_curve, normal_draw,
                                       sigma_search)
from workers.models import build_mlp

@pytest.fixture(autouse=True)
def float32_counts_at_every_width(monkeypatch):
    """The float32 error counts run from width FLOAT32_MIN_WIDTH (128) on; these networks are
    narrower, so it is lowered here for every test to exercise that path (the tests that want
    the float64 path switch it off their own way)."""
    from workers.measures import pacbayes

    monkeypatch.setattr(pacbayes, "FLOAT32_MIN_WIDTH", 0)


@pytest.fixture
def error_count_calls(monkeypatch):
    """The calls of the float32 error counts (``_error_counts``), one entry each."""
    from workers.measures import pacbayes

    calls = []
    real = pacbayes._error_counts
    monkeypatch.setattr(pacbayes, "_error_counts", lambda *a: calls.append(1) or real(*a))
    return calls


PB = ["pacbayes_flatness", "pacbayes_orig", "pacbayes_init", "pacbayes_mag_flatness",
      "pacbayes_mag_orig", "pacbayes_mag_init"]


def trained(act="relu", seed=0, steps=150):
    torch.manual_seed(seed)
    x = torch.randn(300, 6)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    init = build_mlp(6, 16, 3, 3, act, seed=seed)
    model = copy.deepcopy(init)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, init, x, y


def perturbed(model, noise):
    """A float64 copy of ``model`` with ``noise`` (one tensor per Linear) added to its weights."""
    m = copy.deepcopy(model).double()
    lins = [l for l in m if isinstance(l, torch.nn.Linear)]
    with torch.no_grad():
        for l, e in zip(lins, noise):
            l.weight += e
    return m


def draws(model, samples, seed):
    """The draws one at a time, stacked: [samples, *shape] per weight matrix."""
    shapes = [l.weight.shape for l in model if isinstance(l, torch.nn.Linear)]
    each = [normal_draw(shapes, seed, k) for k in range(samples)]
    return [torch.stack([d[i] for d in each]) for i in range(len(shapes))]


def slow_gap(model, x, y, z, sigma, magnitude):
    """Mean training error of the perturbed copies minus err(w), one network at a time."""
    ws = [l.weight.detach().double() for l in model if isinstance(l, torch.nn.Linear)]
    base = float((perturbed(model, [0 * w for w in ws])(x.double()).argmax(1) != y).double().mean())
    errs = []
    for s in range(z[0].shape[0]):
        if magnitude:
            noise = [torch.sqrt(sigma ** 2 * w ** 2 + EPS ** 2) * e[s] for w, e in zip(ws, z)]
        else:
            noise = [sigma * e[s] for e in z]
        out = perturbed(model, noise)(x.double())
        errs.append(float((out.argmax(1) != y).double().mean()))
    return float(np.mean(errs)) - base


@pytest.mark.parametrize("act", ["relu", "tanh", "relu6", "hardtanh", "hardsigmoid"])
def test_batched_networks_equal_each_network_alone(act):
    model, _, x, _ = trained(act, steps=20)
    ws = [l.weight.detach().double() for l in model if isinstance(l, torch.nn.Linear)]
    z = draws(model, 4, 1)
    pert = [w[None] + 0.3 * e for w, e in zip(ws, z)]
    got = batched_logits(copy.deepcopy(model).double(), pert, x, chunk=70)
    for s in range(4):
        want = perturbed(model, [0.3 * e[s] for e in z])(x.double()).detach()
        torch.testing.assert_close(got[s], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "tanh", "relu6", "hardtanh", "hardsigmoid"])
def test_error_counts_in_float32_are_float64s(act):
    # _error_counts runs in float32 with a rounding bound and re-evaluates near-ties in
    # float64: its counts against float64 argmaxes, for perturbations small and large, logits
    # scaled to margins in the thousands, and exact ties (every logit equal: all re-evaluated,
    # argmax takes the first class, as in float64)
    from workers.measures.pacbayes import _error_counts, _errors, _layers

    model, _, x, y = trained(act, steps=60)
    m64 = copy.deepcopy(model).double()
    ws = [l.weight.detach().double() for l in model if isinstance(l, torch.nn.Linear)]
    z = draws(model, 6, 3)
    h = x.double()[None].expand(6, -1, -1)
    for scale, last in ((0.05, 1.0), (0.5, 1.0), (0.01, 1e3)):
        pert = [w[None] + scale * e for w, e in zip(ws, z)]
        pert[-1] = pert[-1] * last
        want = _errors(batched_logits(m64, pert, x), y)
        assert torch.equal(_error_counts(_layers(m64), pert, h, y), want), (scale, last)
    tie = [w[None] + 0.1 * e for w, e in zip(ws, z)]
    tie[-1] = tie[-1][:, :1].expand(-1, ws[-1].shape[0], -1).clone()
    got = _error_counts(_layers(m64), tie, h, y)
    assert got.tolist() == [int((y != 0).sum())] * 6
    # near-ties float32 cannot see: class 1's row is class 0's times (1 + 1e-12), so in float64
    # class 1 wins wherever class 0's logit is positive, and float32 sees a tie
    near = [t.clone() for t in tie]
    near[-1][:, 1] = near[-1][:, 0] * (1 + 1e-12)
    want = _errors(batched_logits(m64, near, x), y)
    assert torch.equal(_error_counts(_layers(m64), near, h, y), want)
    assert not torch.equal(want, got)


@pytest.mark.parametrize("magnitude", [False, True])
def test_sigma_search_stops_by_its_rule_and_reports_the_gap_it_found(magnitude):
    model, _, x, y = trained()
    found = sigma_search(model, x, y, magnitude=magnitude, seed=4)
    assert found["base_error"] < 0.1
    # The same draws, one network at a time.
    gap = slow_gap(model, x, y, draws(model, 10, 4), found["sigma"], magnitude)
    assert gap == pytest.approx(found["gap"], abs=1e-12)
    assert abs(gap - 0.1) <= 0.01 if found["converged"] else gap <= 0.1
    # sigma is a bisection midpoint of [0, 2]: k / 2^steps
    assert (found["sigma"] * 2 ** found["steps"] / 2) == pytest.approx(
        round(found["sigma"] * 2 ** found["steps"] / 2))


def test_bounds_follow_jiang_et_al_from_the_sigma_found():
    model, init, x, y = trained()
    out = evaluate_outcomes(MeasureInputs(model, x, y, x, y, init, None, seed=9), PB)
    m = len(x)
    w = np.concatenate([l.weight.detach().double().numpy().ravel() for l in model
                        if isinstance(l, torch.nn.Linear)])
    w0 = np.concatenate([l.weight.detach().double().numpy().ravel() for l in init
                         if isinstance(l, torch.nn.Linear)])
    s = out["pacbayes_orig"].info["sigma"]
    assert out["pacbayes_init"].info["sigma"] == s == out["pacbayes_flatness"].info["sigma"]
    assert out["pacbayes_flatness"].value == pytest.approx(1 / s ** 2, rel=1e-12)
    assert out["pacbayes_orig"].value == pytest.approx(
        (w @ w) / (4 * s ** 2) + math.log(m / s) + 10, rel=1e-12)
    assert out["pacbayes_init"].value == pytest.approx(
        ((w - w0) @ (w - w0)) / (4 * s ** 2) + math.log(m / s) + 10, rel=1e-12)
    sm = out["pacbayes_mag_orig"].info["sigma"]
    assert out["pacbayes_mag_flatness"].value == pytest.approx(1 / sm ** 2, rel=1e-12)
    for name, r in (("pacbayes_mag_orig", w), ("pacbayes_mag_init", w - w0)):
        terms = [math.log((EPS ** 2 + (sm ** 2 + 1) * (r @ r) / len(w))
                          / (EPS ** 2 + sm ** 2 * (wk - w0k) ** 2)) for wk, w0k in zip(w, w0)]
        assert out[name].value == pytest.approx(0.25 * sum(terms) + math.log(m / sm) + 10,
                                                rel=1e-10)


def test_the_same_trial_gives_the_same_values_and_another_seed_other_draws():
    model, init, x, y = trained()
    names = PB + ["expected_sharpness"]
    a = evaluate_outcomes(MeasureInputs(model, x, y, x, y, init, None, 3, 1), names)
    b = evaluate_outcomes(MeasureInputs(model, x, y, x, y, init, None, 3, 1), names)
    c = evaluate_outcomes(MeasureInputs(model, x, y, x, y, init, None, 3, 2), names)
    assert {k: o.value for k, o in a.items()} == {k: o.value for k, o in b.items()}
    # another seed of the same trial configuration draws other perturbations (same points)
    assert a["expected_sharpness"].value != c["expected_sharpness"].value
    assert a["expected_sharpness"].info["points"] == c["expected_sharpness"].info["points"]


def test_expected_sharpness_curve_against_copies_and_the_kl_by_hand():
    model, _, x, y = trained()
    alphas = [1e-3, 1e-2]
    rows = expected_sharpness_curve(model, x, y, alphas, samples=5, seed=2)
    ws = [l.weight.detach().double() for l in model if isinstance(l, torch.nn.Linear)]
    z = draws(model, 5, 2)

    def loss(m):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x.double()), y))

    base = loss(perturbed(model, [0 * w for w in ws]))
    for row, alpha in zip(rows, alphas):
        sig = [alpha * (10 * w.abs() + 1) for w in ws]
        want = np.mean([loss(perturbed(model, [s * e[k] for s, e in zip(sig, z)]))
                        for k in range(5)]) - base
        assert row["expected_sharpness"] == pytest.approx(want, rel=1e-9, abs=1e-15)
        kl = sum(float(((w / s) ** 2).sum()) / 2 for w, s in zip(ws, sig))
        assert row["kl"] == pytest.approx(kl, rel=1e-12)
    assert rows[0]["kl"] > rows[1]["kl"]


def test_expected_sharpness_value_is_the_curve_at_alpha_and_undefined_without_points():
    model, init, x, y = trained()
    out = evaluate_outcomes(MeasureInputs(model, x, y, x, y, init, None, seed=1),
                            ["expected_sharpness"])["expected_sharpness"]
    curve = out.info["curve"]
    assert len(curve["alpha"]) == 10 and 1e-3 in curve["alpha"]
    assert out.value == curve["expected_sharpness"][curve["alpha"].index(1e-3)]
    empty = evaluate_outcomes(MeasureInputs(model, x[:0], y[:0], x, y, init, None, seed=1),
                              ["expected_sharpness"] + PB)
    assert all(o.value is None and o.error.startswith("undefined") for o in empty.values())


def test_draws_do_not_depend_on_the_memory_budget(monkeypatch):
    """Samples in groups and points in chunks (wide networks) give the same numbers as all at
    once: each draw has its own generator; error counts add up exactly."""
    from workers.measures import pacbayes

    model, _, x, y = trained()
    whole = {m: sigma_search(model, x, y, magnitude=m, seed=8) for m in (True, False)}
    curve = expected_sharpness_curve(model, x, y, [1e-3, 1e-2], samples=4, seed=8)
    # one sample per group, few points a chunk, no first-layer products (the direct path)
    monkeypatch.setattr(pacbayes, "BUDGET", 3 * 400)
    for m in (True, False):
        assert sigma_search(model, x, y, magnitude=m, seed=8) == whole[m]
    small = expected_sharpness_curve(model, x, y, [1e-3, 1e-2], samples=4, seed=8)
    for a, b in zip(curve, small):
        assert b["expected_sharpness"] == pytest.approx(a["expected_sharpness"], rel=1e-9)
    # three samples per group (draws made again for every pass), with the first-layer products
    # of _FirstLayer kept: (4 + 1) draws x 10 points x 16 units <= budget / 2
    monkeypatch.setattr(pacbayes, "BUDGET", 1 << 25)
    few = expected_sharpness_curve(model, x[:10], y[:10], [1e-3, 1e-2], samples=4, seed=8)
    monkeypatch.setattr(pacbayes, "BUDGET", 3600)
    assert pacbayes.BUDGET // (3 * 400) == 3
    grouped = expected_sharpness_curve(model, x[:10], y[:10], [1e-3, 1e-2], samples=4, seed=8)
    for a, b in zip(few, grouped):
        assert b["expected_sharpness"] == pytest.approx(a["expected_sharpness"], rel=1e-9)


def at_chance(model, x):
    """The model with zero weights (every logit 0) and random labels: a network at chance."""
    chance = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(0))
    flat = copy.deepcopy(model)
    with torch.no_grad():
        for l in flat:
            if isinstance(l, torch.nn.Linear):
                l.weight.zero_()
    return flat, chance


def test_sigma_search_is_undefined_when_it_cannot_find_sigma():
    model, _, x, y = trained()
    # every midpoint raises the error by more than the target: no sigma keeps it within
    with pytest.raises(Undefined, match="no sigma"):
        sigma_search(model, x, y, magnitude=False, seed=1, upper=1e6, steps=3)
    # at chance (random labels it never fitted), noise cannot raise the error by 0.1
    flat, chance = at_chance(model, x)
    with pytest.raises(Undefined, match="rises by at most"):
        sigma_search(flat, x, chance, magnitude=False, seed=1, upper=1e-9)


def test_an_undefined_search_is_run_once_for_its_three_measures(monkeypatch):
    # A network at chance: both searches are undefined. Each runs once per evaluation (the three
    # measures of one sigma' share it, undefined too), and each measure carries the reason.
    from workers.measures import pacbayes

    model, init, x, _ = trained()
    flat, chance = at_chance(model, x)
    calls = []
    real = pacbayes.sigma_search

    def counted(*a, **k):
        calls.append(k["magnitude"])
        return real(*a, **k)

    monkeypatch.setattr(pacbayes, "sigma_search", counted)
    out = evaluate_outcomes(MeasureInputs(flat, x, chance, x, chance, init, None, seed=2), PB)
    assert sorted(calls) == [False, True]
    assert all(o.value is None and "rises by at most" in o.error for o in out.values())


def test_error_counts_stay_in_float64_when_float32_products_are_not_float32(monkeypatch):
    # TF32 / bfloat16 products break the float32 rounding bound: the float64 path is used then
    from workers.measures import pacbayes

    from workers.layers import float32_products_exact

    assert float32_products_exact()
    model, _, x, y = trained()
    want = sigma_search(model, x, y, magnitude=False, seed=8)
    used = []
    real = pacbayes._error_counts
    monkeypatch.setattr(pacbayes, "_error_counts", lambda *a: used.append(1) or real(*a))
    assert sigma_search(model, x, y, magnitude=False, seed=8) == want and used
    used.clear()
    torch.set_float32_matmul_precision("medium")
    try:
        assert not float32_products_exact()
        assert sigma_search(model, x, y, magnitude=False, seed=8) == want and not used
    finally:
        torch.set_float32_matmul_precision("highest")
    # the per-backend setting (with which torch refuses to report the global one)
    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        assert not float32_products_exact()
        assert sigma_search(model, x, y, magnitude=False, seed=8) == want and not used
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    assert float32_products_exact()


def test_error_counts_at_float32s_limits():
    # Overflow: float32 turns a logit of 1e38 into inf next to a finite 2e38 (the float64
    # argmax is the finite one); underflow: logits of 2.2e-45 and 2.55e-45 round to subnormals
    # in the wrong order. Both rows are evaluated again in float64.
    from torch import nn

    from workers.activations import PaperActivation
    from workers.measures.pacbayes import _error_counts, _errors, _layers, _through

    def case(first, last, label):
        m = nn.Sequential(nn.Linear(1, len(first), bias=False), PaperActivation("relu"),
                          nn.Linear(len(first), 2, bias=False)).double()
        ws = [torch.tensor([[v] for v in first], dtype=torch.float64)[None],
              torch.tensor(last, dtype=torch.float64)[None]]
        x, y = torch.ones(1, 1, 1, dtype=torch.float64), torch.tensor([label])
        want = _errors(_through(_layers(m), ws, x), y)
        assert torch.equal(_error_counts(_layers(m), ws, x, y), want)
        return int(want)

    assert case([2e38] * 3, [[1, 1, -1.5], [1, 0, 0]], 0) == 1
    assert case([2e38] * 4, [[-1, -1, 1, 1.1], [0.05, 0, 0, 0]], 0) == 0
    assert case([1.0, 1.0], [[2.2e-45, 0.0], [1.9e-45, 0.65e-45]], 1) == 0


def test_a_kept_undefined_search_holds_no_traceback():
    # the kept reason must not keep the search's frames (and their tensors) alive
    from workers.measures import pacbayes

    model, init, x, _ = trained()
    flat, chance = at_chance(model, x)
    inputs = MeasureInputs(flat, x, chance, x, chance, init, None, seed=2)
    evaluate_outcomes(inputs, PB[:1])
    kept = [v for k, v in inputs.cache.items() if isinstance(v, pacbayes.Undefined)]
    assert kept and all(v.__traceback__ is None for v in kept)


def test_error_counts_go_to_float64_when_most_points_are_unsure(monkeypatch):
    # Deep or wide networks (and large sigmas) compound the bound until most points are
    # evaluated again: then the pass goes on in float64 after its first chunk, and the search
    # tries float32 again only below the smallest sigma where it did not pay; same result.
    from workers.measures import pacbayes

    model, _, x, y = trained()
    want = sigma_search(model, x, y, magnitude=True, seed=8)
    calls = []
    real = pacbayes._error_counts
    monkeypatch.setattr(pacbayes, "_error_counts", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr("workers.layers.UNSURE_LIMIT", -1.0)  # every call: mostly unsure
    monkeypatch.setattr(pacbayes, "CACHE", 3 * 400)  # several chunks of points a pass
    assert sigma_search(model, x, y, magnitude=True, seed=8) == want
    # at most one chunk per pass, and only in passes at a new smallest sigma
    assert 1 <= len(calls) <= want["steps"]


@pytest.mark.parametrize("magnitude", [False, True])
def test_sigma_search_stopping_a_pass_early_changes_nothing(monkeypatch, magnitude):
    """A pass whose errors so far already put the gap above target + tolerance stops there
    (the search only needs to know it is above): the search returns exactly what the full
    passes give, and fewer points are evaluated. Small chunks so a pass has many."""
    from workers.measures import pacbayes

    monkeypatch.setattr(pacbayes, "CACHE", 10 * 16 * 20)  # 20 points a chunk
    real = pacbayes._perturbed_mean
    for act in ("relu", "tanh", "hardsigmoid"):
        model, _, x, y = trained(act)
        seen = {"early": 0, "full": 0}

        def counting(kind, stop):
            def run(*a, **k):
                if not stop:
                    k["stop_above"] = math.inf
                calls = []
                orig = pacbayes._error_counts
                monkeypatch.setattr(pacbayes, "_error_counts",
                                    lambda *b: calls.append(1) or orig(*b))
                try:
                    return real(*a, **k)
                finally:
                    monkeypatch.setattr(pacbayes, "_error_counts", orig)
                    seen[kind] += len(calls)
            return run

        monkeypatch.setattr(pacbayes, "_perturbed_mean", counting("full", False))
        full = sigma_search(model, x, y, magnitude=magnitude, seed=3)
        monkeypatch.setattr(pacbayes, "_perturbed_mean", counting("early", True))
        early = sigma_search(model, x, y, magnitude=magnitude, seed=3)
        assert early == full
        assert 0 < seen["early"] < seen["full"]


def test_narrow_networks_count_errors_in_float64(monkeypatch, error_count_calls):
    # below FLOAT32_MIN_WIDTH the float32 pass is not tried: the same search, no _error_counts
    from workers.measures import pacbayes

    model, _, x, y = trained()
    want = sigma_search(model, x, y, magnitude=False, seed=8)
    used = error_count_calls
    used.clear()
    monkeypatch.setattr(pacbayes, "FLOAT32_MIN_WIDTH", 17)  # the widest layer has 16 units
    assert sigma_search(model, x, y, magnitude=False, seed=8) == want and not used
    monkeypatch.setattr(pacbayes, "FLOAT32_MIN_WIDTH", 16)
    assert sigma_search(model, x, y, magnitude=False, seed=8) == want and used


def test_error_counts_see_a_partial_sum_overflow_that_a_relu_hides():
    # a reviewer's case: the float32 product's running sum -1 - 1 + 1 + 1 + 1 of 3e38 terms
    # overflows to -inf, ReLU makes it 0 and the logits stay finite; the row must be evaluated
    # again in float64 (exact logits 3e9 and 1e9: class 0, no error)
    from torch import nn

    from workers.activations import PaperActivation
    from workers.measures.pacbayes import _error_counts, _errors, _layers, _through

    for act in (nn.ReLU(), PaperActivation("relu")):
        m = nn.Sequential(nn.Linear(5, 2, bias=False), act, nn.Linear(2, 2, bias=False)).double()
        with torch.no_grad():
            m[0].weight.copy_(torch.tensor([[-1.0, -1, 1, 1, 1], [0, 0, 0, 0, 1 / 3]]))
            m[2].weight.copy_(torch.diag(torch.tensor([1e-29, 1e-29])))
        ws = [m[0].weight[None].clone(), m[2].weight[None].clone()]
        h = torch.full((1, 1, 5), 3e38, dtype=torch.float64)
        y = torch.tensor([0])
        want = _errors(_through(_layers(m), ws, h), y)
        assert want.tolist() == [0]
        assert _error_counts(_layers(m), ws, h, y).tolist() == want.tolist()


def test_the_float32_counts_are_gated_by_the_hidden_width_not_the_input(monkeypatch,
                                                                         error_count_calls):
    # 784 inputs into 16 hidden units: narrow, so float64 (no _error_counts) at a gate of 17
    from workers.measures import pacbayes

    torch.manual_seed(0)
    model = build_mlp(784, 16, 3, 3, "relu", seed=0)
    x = torch.randn(200, 784)
    y = model(x).argmax(1)
    monkeypatch.setattr(pacbayes, "FLOAT32_MIN_WIDTH", 17)
    want = sigma_search(model, x, y, magnitude=False, seed=2)
    assert not error_count_calls
    monkeypatch.setattr(pacbayes, "FLOAT32_MIN_WIDTH", 16)
    assert sigma_search(model, x, y, magnitude=False, seed=2) == want and error_count_calls
