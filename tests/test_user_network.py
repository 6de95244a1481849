"""The measures on a user's own network (issue #26): ``nn.Sequential(nn.Linear(64, 32),
nn.ReLU(), nn.Linear(32, 10))`` with PyTorch's default biases. Every measure defined with biases
computes (checked against independent computations that include the biases); the path norms
and Neyshabur et al. 2017's measures over the margin, defined for bias-free networks, are NaN
with a reason, and ``evaluate`` warns once; the project's bias-free networks keep their values."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from workers.measures import (MeasureInputs, UndefinedMeasures, Values, available, evaluate,
                              evaluate_outcomes)
from workers.models import build_mlp

# defined for bias-free networks only (workers.measures.norms.BIAS_FREE_ONLY)
BIAS_FREE_ONLY = {*(f"{p}neyshabur_{k}" for p in ("", "log_")
                    for k in ("l2", "l1_path", "l2_path", "spectral", "l1_inf")),
                  "path_norm", "log_path_norm", "path_norm_over_margin",
                  "log_path_norm_over_margin"}


def user_network(seed=0):
    """(trained-ish model, its init, x, y, x_test): the issue's network, its labels the ones
    it predicts (every margin >= 0, so the margin measures have values)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    init = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(seed)
    x, xt = torch.randn(120, 64, generator=g), torch.randn(10, 64, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, init, x, y, xt


@pytest.fixture(scope="module")
def evaluated():
    model, init, x, y, xt = user_network()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = evaluate(model, available(), x_train=x, y_train=y, x_test=xt,
                          init_model=init, image_shape=(1, 8, 8),
                          settings={"transitions_test": {"points": 3}})
    return values, [w for w in caught if issubclass(w.category, UndefinedMeasures)], \
        (model, init, x, y, xt)


def test_every_measure_defined_with_biases_computes(evaluated):
    values, _, _ = evaluated
    defined = [n for n in available() if n not in BIAS_FREE_ONLY]
    assert len(defined) >= 30
    bad = {n: values.reasons.get(n) for n in defined if not math.isfinite(values[n])}
    assert not bad, bad
    for n in ("sharpness", "fisher_rao", "l2", "params", "param_norm", "pacbayes_orig",
              "pacbayes_mag_init", "pacbayes_flatness", "expected_sharpness", "fro_dist"):
        assert n in defined


def test_the_bias_free_measures_are_nan_with_a_reason_and_one_warning(evaluated):
    values, caught, _ = evaluated
    # the return is still a dict name -> float (older callers), NaN without a value
    assert isinstance(values, dict) and isinstance(values, Values)
    assert set(values) == set(available())
    assert {n for n, v in values.items() if math.isnan(v)} == BIAS_FREE_ONLY
    assert set(values.reasons) == BIAS_FREE_ONLY
    for n, why in values.reasons.items():
        assert "have biases" in why and "bias-free" in why, (n, why)
        assert ("path" in why) == ("path" in n), (n, why)  # each says which definition
    assert len(caught) == 1  # one warning, naming every measure without a value
    text = str(caught[0].message)
    assert all(n in text for n in BIAS_FREE_ONLY) and f"{len(BIAS_FREE_ONLY)} of" in text


def test_no_warning_when_every_measure_has_a_value():
    model = build_mlp(6, 5, 2, 3, "relu", 1.0, seed=1)
    x = torch.randn(10, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = evaluate(model, ["l2", "params"])
    assert values.reasons == {} and values["params"] == 6 * 5 + 5 * 3
    with pytest.warns(UndefinedMeasures, match="train_inputs"):
        assert math.isnan(evaluate(model, ["sharpness"], x_test=x)["sharpness"])


def test_parameter_norms_against_numpy_with_biases(evaluated):
    # params, l2 and l2_dist take every parameter (w); the Frobenius family and param_norm the
    # layers' weight matrices W_i (Jiang et al. 2019, Appendix C, Eq. 20, 40, 42)
    values, _, (model, init, *_rest) = evaluated
    p = [t.detach().double().numpy() for t in model.parameters()]
    p0 = [t.detach().double().numpy() for t in init.parameters()]
    w = [model[0].weight, model[2].weight]
    w0 = [init[0].weight, init[2].weight]
    assert values["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert values["l2"] == pytest.approx(np.sqrt(sum((a ** 2).sum() for a in p)), rel=1e-12)
    assert values["l2_dist"] == pytest.approx(
        np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(p, p0))), rel=1e-12)
    fro2 = [float((t.detach().double() ** 2).sum()) for t in w]
    assert values["param_norm"] == pytest.approx(sum(fro2), rel=1e-12)
    assert values["l2"] ** 2 > values["param_norm"]  # (the biases: in w, not in the W_i)
    assert values["fro_dist"] == pytest.approx(
        sum(float(((a.double() - b.double()).detach() ** 2).sum()) for a, b in zip(w, w0)),
        rel=1e-12)
    spec = [np.linalg.norm(t.detach().double().numpy(), 2) for t in w]
    assert values["log_prod_of_spec"] == pytest.approx(sum(2 * np.log(s) for s in spec),
                                                       rel=1e-10)


def test_fisher_rao_with_biases_equals_per_example_autograd(evaluated):
    # ((d + 1)^2 / m) sum <w, grad_w l(f_w(x), y)>^2, w every parameter, d = 2 (Eq. 45)
    values, _, (model, _init, x, y, _xt) = evaluated
    m64 = __import__("copy").deepcopy(model).double()
    params = list(m64.parameters())
    total = 0.0
    for xi, yi in zip(x.double(), y):
        loss = nn.functional.cross_entropy(m64(xi[None]), yi[None])
        grads = torch.autograd.grad(loss, params)
        total += float(sum((g * p.detach()).sum() for g, p in zip(grads, params))) ** 2
    assert values["fisher_rao"] == pytest.approx(9 / len(x) * total, rel=1e-9)


def test_sharpness_of_a_linear_model_with_a_bias_by_brute_force():
    # a 1-layer linear model with a bias: the loss is convex in (W, b), so its maximum over the
    # box |nu_k| <= alpha (|w_k| + 1) is at one of the 2^4 corners; the ascent (every
    # parameter, the bias too) comes to it, and never exceeds it
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 2)).double()
    x = torch.randn(30, 1, dtype=torch.float64)
    y = torch.randint(0, 2, (30,))
    alpha = 0.05
    w, b = model[0].weight.detach(), model[0].bias.detach()

    def loss(wt, bt):
        return float(nn.functional.cross_entropy(x @ wt.T + bt, y))

    base = loss(w, b)
    brute = max((loss(w + torch.tensor(s[:2]).reshape(2, 1) * alpha * (w.abs() + 1),
                      b + torch.tensor(s[2:]) * alpha * (b.abs() + 1)) - base) / (1 + base)
                for s in itertools.product((-1.0, 1.0), repeat=4))
    out = evaluate_outcomes(MeasureInputs(model, x, y, seed=0, trial_seed=1), ["sharpness"],
                            {"sharpness": {"alpha": alpha, "points": None}})["sharpness"]
    # (a coordinate whose gradient is near 0 may stop short of its corner: within 1e-6)
    assert brute * (1 - 1e-6) <= out.value <= brute * (1 + 1e-12)
    # with the bias left out of the box the maximum is smaller: the bias is among the w_k
    brute_w = max((loss(w + torch.tensor(s).reshape(2, 1) * alpha * (w.abs() + 1), b) - base)
                  / (1 + base) for s in itertools.product((-1.0, 1.0), repeat=2))
    assert out.value > brute_w


def test_the_batched_perturbed_networks_with_biases_are_the_network():
    # the PAC-Bayes searches and the curve evaluate w + nu through stacked parameters
    # (weights, then biases): against the network itself with the same parameters loaded
    from workers.measures.norms import parameters
    from workers.measures.pacbayes import _error_counts, _layers, batched_logits, normal_draw

    model, _, x, y, _ = user_network(seed=2)
    m64 = __import__("copy").deepcopy(model).double()
    ps = parameters(m64)
    assert [tuple(p.shape) for p in ps] == [(32, 64), (10, 32), (32,), (10,)]
    z = normal_draw([p.shape for p in ps], seed=4, sample=0)
    pert = [p + 0.1 * e for p, e in zip(ps, z)]
    got = batched_logits(m64, [p[None] for p in pert], x)[0]
    other = __import__("copy").deepcopy(m64)
    with torch.no_grad():
        other[0].weight.copy_(pert[0]); other[2].weight.copy_(pert[1])
        other[0].bias.copy_(pert[2]); other[2].bias.copy_(pert[3])
    assert torch.allclose(got, other(x.double()), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="bias-free"):  # (its float32 bound is bias-free's)
        _error_counts(_layers(m64), [p[None] for p in ps], x.double()[None], y)


def test_pacbayes_norms_take_the_biases(evaluated):
    # Eq. 49: ||w||^2 / (4 sigma'^2) + log(m / sigma') + 10, w every parameter
    values, _, (model, init, x, y, xt) = evaluated
    out = evaluate_outcomes(MeasureInputs(model, x, y, xt, None, init), ["pacbayes_orig"])
    s = out["pacbayes_orig"].info["sigma"]
    w2 = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert out["pacbayes_orig"].value == pytest.approx(
        w2 / (4 * s ** 2) + math.log(len(x) / s) + 10, rel=1e-12)
    assert values["pacbayes_orig"] == out["pacbayes_orig"].value


# Every measure on a fixed bias-free project network, as computed before measures took biases
# (the same code path for bias-free networks: the values must not move)
BEFORE = {
    'jacobian_norm_train': 0.43988562524504643,
    'jacobian_norm_test': 0.4062725478138499,
    'transitions_test': 18.75,
    'margin_gamma5': 0.02930036187171936,
    'margin_gamma10': 0.06690316274762154,
    'neyshabur_l2': 5934556.229024749,
    'log_neyshabur_l2': 15.596302811372684,
    'neyshabur_l1_path': 103086704.61591925,
    'log_neyshabur_l1_path': 18.451080984472974,
    'neyshabur_l2_path': 37531.97669083413,
    'log_neyshabur_l2_path': 10.532948560361952,
    'neyshabur_spectral': 140864.64999950424,
    'log_neyshabur_spectral': 11.855554779251795,
    'neyshabur_l1_inf': 27249677.182648275,
    'log_neyshabur_l1_inf': 17.120552232495037,
    'params': 384.0,
    'inverse_margin': 223.41210588191674,
    'log_prod_of_spec': 4.795243954322283,
    'log_prod_of_spec_over_margin': 10.204262028754716,
    'log_sum_of_spec': 2.697026940108871,
    'log_sum_of_spec_over_margin': 4.500032964919682,
    'log_prod_of_fro': 8.535991986443172,
    'log_prod_of_fro_over_margin': 13.945010060875605,
    'log_sum_of_fro': 3.943942950815834,
    'log_sum_of_fro_over_margin': 5.746948975626645,
    'fro_over_spec': 10.904494079156157,
    'log_spec_orig_main': 12.593437033857192,
    'log_spec_init_main': 8.503867235853917,
    'fro_dist': 0.9717935635000181,
    'dist_spec_init': 0.2926095391203706,
    'param_norm': 57.83059195331466,
    'path_norm': 32.221622565419885,
    'log_path_norm': 3.4726377354324383,
    'path_norm_over_margin': 7198.7005522727395,
    'log_path_norm_over_margin': 8.88165580986487,
    'l2': 7.604642789330388,
    'l2_dist': 0.985795903572346,
    'fisher_rao': 22.782561534838113,
    'pacbayes_flatness': 1024.0,
    'pacbayes_orig': 14822.191620513575,
    'pacbayes_init': 266.3392327210265,
    'pacbayes_mag_flatness': 113.77777777777777,
    'pacbayes_mag_orig': 940.9190419279832,
    'pacbayes_mag_init': 548.6875464581133,
    'expected_sharpness': -0.0010096684856765181,
    'sharpness': 0.003431431772451938,
}


def test_bias_free_project_networks_keep_their_values():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 16, generator=g)
    torch.randint(0, 4, (60,), generator=g)  # (the draw the values were made with)
    xt = torch.rand(8, 16, generator=g)
    init = build_mlp(16, 12, 3, 4, "relu", 1.0, seed=5)
    model = build_mlp(16, 12, 3, 4, "relu", 1.0, seed=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        y = model(x).argmax(1)
    out = evaluate_outcomes(MeasureInputs(model, x, y, xt, None, init, (1, 4, 4), 0, 1),
                            list(BEFORE))
    got = {n: o.value for n, o in out.items()}
    # (float32 forward passes differ in their last bits between CPUs, whose kernels take other
    # paths, e.g. AVX-512 or AVX2 in oneDNN: seen as 2e-6 relative in the margins, which
    # subtract two close logits, and so in the measures over a margin; a change of code moves
    # them by far more)
    assert got == pytest.approx(BEFORE, rel=1e-5, abs=1e-12)


def test_a_module_of_another_form_is_undefined_not_wrong():
    # a custom module holding its Linear layers: the batched PAC-Bayes networks could not
    # perturb them (they would run the module's own weights), so it is undefined, with why
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model, x = Net(), torch.randn(40, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = evaluate_outcomes(MeasureInputs(model, x, y), ["pacbayes_flatness", "sharpness", "l2"])
    assert out["pacbayes_flatness"].value is None
    assert "Net has parameters and is not a Linear layer" in out["pacbayes_flatness"].error
    assert out["sharpness"].value is not None and out["l2"].value is not None
