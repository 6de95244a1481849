"""#22.1: a measure describes the network that was scored. In the chaotic regime (tanh, depth
65, init_scale 4) the float64 re-evaluation of a float32 network is another function: the
margins must be the float32 network's, and every measure that evaluates the network in float64
must be undefined with the reason, not a number about a network nobody scored."""

import math

import pytest
import torch

from workers.data import load_data
from workers.measures import MeasureInputs, REGISTRY, evaluate_outcomes
from workers.measures.precision import RTOL, compare_precisions
from workers.models import build_mlp


@pytest.fixture(scope="module")
def chaotic():
    """A fitted network of the chaotic regime: its labels are the float32 network's own
    predictions (train accuracy 1.00 as scored)."""
    d = load_data("digits", train_size=200, test_size=60)
    m = build_mlp(64, 256, 65, 10, "tanh", 4.0, 0).eval()
    x, xt = d.x_train.flatten(1), d.x_test.flatten(1)
    with torch.no_grad():
        y, yt = m(x).argmax(1), m(xt).argmax(1)
    return m, x, y, xt, yt


def _slow_margins(model, x, y):
    """The float32 network's margins as scored (all points in one batch, as the trial scores
    200 points; in this regime float32's outputs depend on the batching), then one point at a
    time in Python, sorted."""
    with torch.no_grad():
        zs = model(x).double().tolist()
    out = []
    for z, yi in zip(zs, y.tolist()):
        out.append(z[yi] - max(v for j, v in enumerate(z) if j != yi))
    return sorted(out)


def test_the_float64_copy_of_a_chaotic_network_is_another_function(chaotic):
    m, x, y, _, _ = chaotic
    m64 = build_mlp(64, 256, 65, 10, "tanh", 4.0, 0).double().eval()  # rebuilt independently
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    with torch.no_grad():
        z64 = m64(x.double())
    flips = int((z64.argmax(1) != y).sum())
    assert flips > len(y) // 2  # most float64 "margins" are negative
    check = compare_precisions(m, m64, x)
    assert not check["agrees"] and check["flips"] == flips and check["rel_diff"] > RTOL


def test_measures_describe_the_scored_network_or_are_undefined(chaotic):
    m, x, y, xt, yt = chaotic
    names = ["margin_gamma5", "margin_gamma10", "log_neyshabur_l2", "fisher_rao", "sharpness",
             "pacbayes_flatness", "pacbayes_mag_flatness", "expected_sharpness",
             "transitions_test"]
    settings = {"sharpness": {"points": 50, "steps": 2},
                "pacbayes_flatness": {"points": 50, "samples": 2, "steps": 2},
                "pacbayes_mag_flatness": {"points": 50, "samples": 2, "steps": 2},
                "expected_sharpness": {"points": 50, "samples": 2, "alphas": 1},
                "transitions_test": {"points": 3, "k": 64}}
    out = evaluate_outcomes(MeasureInputs(m, x, y, xt, yt, None, (1, 8, 8), 0, 1), names,
                            settings)
    mg = _slow_margins(m, x, y)
    assert mg[0] >= 0  # fitted as scored: no negative margin
    assert out["margin_gamma5"].value == pytest.approx(mg[math.floor(5 * 200 / 100) - 1],
                                                       rel=1e-6, abs=1e-9)
    assert out["margin_gamma10"].value == pytest.approx(mg[math.floor(10 * 200 / 100) - 1],
                                                        rel=1e-6, abs=1e-9)
    for name in ("fisher_rao", "sharpness", "pacbayes_flatness", "pacbayes_mag_flatness",
                 "expected_sharpness", "transitions_test"):
        o = out[name]
        assert o.value is None, name
        assert o.error.startswith("undefined") and "float64 re-evaluation" in o.error, (name,
                                                                                          o.error)


def test_a_regular_network_agrees_and_keeps_its_values():
    """Away from the chaotic regime the precisions agree to float32 rounding, and the float64
    measures are defined."""
    d = load_data("digits", train_size=100, test_size=40)
    for act, depth, scale in (("relu", 3, 1.0), ("tanh", 65, 1.0), ("tanh", 2, 8.0)):
        m = build_mlp(64, 32, depth, 10, act, scale, 1).eval()
        m64 = build_mlp(64, 32, depth, 10, act, scale, 1).double().eval()
        m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
        check = compare_precisions(m, m64, d.x_train.flatten(1))
        assert check["agrees"] and check["rel_diff"] < 1e-5, (act, depth, scale, check)
    x, y = d.x_train.flatten(1), d.y_train
    out = evaluate_outcomes(MeasureInputs(m, x, y, None, None, None, None, 0, 1),
                            ["fisher_rao", "sharpness"], {"sharpness": {"steps": 2}})
    assert all(o.value is not None and math.isfinite(o.value) for o in out.values())


def test_the_trial_records_whether_float64_agreed(tmp_path):
    from workers.results.record import read_trial
    from workers.results.layout import trial_path
    from workers.results.spec import DataSpec, MetricSpec, RunContext, TrainSpec, TrialSpec
    from workers.trial import run_trial

    rows = {}
    for scale in (1.0, 4.0):
        spec = TrialSpec(DataSpec("digits", train_size=100, test_size=40), 256, 65, "tanh",
                         "sgd", 1e-4, 32, scale, 1, train=TrainSpec(steps=2, early_stop=False),
                         metrics=MetricSpec(measures=("jacobian_norm_test",)))
        run_trial(spec, RunContext(str(tmp_path)))
        rows[scale] = read_trial(trial_path(tmp_path, spec.trial_id)).to_pylist()[0]
    assert rows[1.0]["status"] == rows[4.0]["status"] == "ok"
    assert rows[1.0]["float64_agrees"] is True and rows[1.0]["float64_rel_diff"] < RTOL
    assert rows[4.0]["float64_agrees"] is False and rows[4.0]["float64_rel_diff"] > RTOL


def test_the_studies_describe_the_scored_network(chaotic):
    """Fig. 2's ellipse transitions (counted in float64) are null where float64 is another
    function on the ellipse; Fig. 3's boundaries come from the network's own region codes, as
    its predicted classes do."""
    import pandas as pd

    from analysis.figures import density_bins
    from workers.studies import boundary_map, boundary_plane, ellipse_rows, study_ellipses

    m, x, y, _, _ = chaotic
    ell = study_ellipses(x, y, 0)
    rows = ellipse_rows(m, ell, 64, "init")
    assert rows and all(r["transitions"] is None and r["density"] is None for r in rows)
    assert all(math.isfinite(r["jacobian_norm"]) for r in rows)
    dens = density_bins(pd.DataFrame(rows).assign(trial_id="t"), 8)
    assert dens["density"].isna().all()  # not 0
    ok = build_mlp(64, 16, 3, 10, "relu", 1.0, 0).eval()
    assert all(r["transitions"] is not None for r in ellipse_rows(ok, ell, 64, "init"))

    plane, _ = boundary_plane(x, y, 0)
    out = boundary_map(m, plane, 16, 1.25)
    # independently: the last hidden layer's float32 signs (tanh's breakpoint is 0) on the grid
    c = torch.linspace(-1.25, 1.25, 16, dtype=torch.float64)
    b, a = torch.meshgrid(c, c, indexing="ij")
    pts = (plane.centre + a.reshape(-1, 1) * plane.u + b.reshape(-1, 1) * plane.v).float()
    with torch.no_grad():
        h = pts
        for lin in [mod for mod in m if isinstance(mod, torch.nn.Linear)][:-1]:
            z = lin(h)
            h = torch.tanh(z)
        code = (z > 0).reshape(16, 16, -1)
    edge = torch.zeros(16, 16, dtype=torch.bool)
    edge[:, :-1] |= (code[:, 1:] != code[:, :-1]).any(-1)
    edge[:-1, :] |= (code[1:, :] != code[:-1, :]).any(-1)
    assert torch.equal(out["boundary"], edge)
