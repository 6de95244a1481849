"""Ellipse profiles and boundary maps (Fig. 2 / Fig. 3): per trial, stored, and drawn."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis import load_curves, load_grids
from analysis.figures import boundaries_figure, density_bins, trajectory_figure
from workers.data import load_data
from workers.models import load_model
from workers.results.spec import DataSpec, MetricSpec, RunContext, TrainSpec, TrialSpec
from workers.studies import boundary_map, boundary_plane, study_ellipses
from workers.trajectories import THROUGH_ANGLES, Ellipse, angles
from workers.transitions import count_transitions
from workers.trial import run_trial


def test_boundary_map_of_the_coordinate_axes():
    # relu(x1), relu(x2) on the plane x = a e1 + b e2: the last (only) hidden layer changes code
    # where a or b passes 0, i.e. between grid columns/rows 5 (0.0) and 6 (0.2) of 11.
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(2, 3))
    plane = Ellipse(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    out = boundary_map(model, plane, 11, 1.0)
    want = torch.zeros(11, 11, dtype=torch.bool)
    want[:, 5] = True
    want[5, :] = True
    assert torch.equal(out["boundary"], want)
    pts = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 11), torch.linspace(-1, 1, 11),
                                     indexing="ij")[::-1], -1).reshape(-1, 2)
    assert torch.equal(out["predicted"].reshape(-1), model(pts).argmax(-1))


def test_study_ellipses_pass_through_their_training_points_and_are_seeded():
    data = load_data("digits", train_size=200, test_size=20)
    a = study_ellipses(data.x_train, data.y_train, seed=3)
    b = study_ellipses(data.x_train, data.y_train, seed=3)
    x = data.x_train.flatten(1).double()
    for name in ("same_class", "three_classes"):
        e, idx = a[name]
        assert idx == b[name][1]
        torch.testing.assert_close(e.points(torch.tensor(THROUGH_ANGLES, dtype=torch.float64)), x[idx])
    assert len(set(data.y_train[a["same_class"][1]].tolist())) == 1
    assert len(set(data.y_train[a["three_classes"][1]].tolist())) == 3
    assert torch.equal(a["random"][0].u, b["random"][0].u)
    plane, idx = boundary_plane(data.x_train, data.y_train, seed=3)
    assert len(set(data.y_train[idx].tolist())) == 3


def test_trial_stores_curves_and_grids_that_match_an_independent_count(tmp_path):
    s = TrialSpec(data=DataSpec("digits", train_size=200, test_size=50), width=16, depth=3,
                  activation="relu6", optimizer="adam", lr=0.01, batch_size=50, init_scale=1.0,
                  seed=2, train=TrainSpec(steps=60, check_every=20),
                  metrics=MetricSpec(transitions_points=5, ellipse_k=30, boundary_grid=9))
    row = run_trial(s, RunContext(str(tmp_path), save_weights=True))
    assert row["status"] == "ok", row["error"]
    curves = load_curves(tmp_path)
    assert len(curves) == 3 * 2 * 30
    assert set(curves["phase"]) == {"init", "trained"}
    model = load_model(tmp_path, s.trial_id)
    data = load_data("digits", train_size=200, test_size=50)
    ell = study_ellipses(data.x_train, data.y_train, 0)
    for name, (e, _) in ell.items():
        c = curves[(curves.ellipse == name) & (curves.phase == "trained")].sort_values("angle")
        assert int(c["transitions"].sum()) == count_transitions(model, e.points(angles(30)))
        np.testing.assert_allclose(c["density"], c["transitions"] / (2 * math.pi / 30))
    grids = load_grids(tmp_path)
    assert sorted(grids["phase"]) == ["init", "trained"]
    trained = grids.set_index("phase").loc["trained"]
    plane, idx = boundary_plane(data.x_train, data.y_train, 0)
    want = boundary_map(model, plane, 9, s.metrics.boundary_extent)
    assert list(trained["boundary"]) == want["boundary"].reshape(-1).tolist()
    assert list(trained["anchor_labels"]) == data.y_train[idx].tolist()


def test_density_bins_by_hand():
    k = 8
    a = angles(k).numpy()
    curves = pd.DataFrame({"trial_id": "t", "ellipse": "random", "phase": "trained", "angle": a,
                           "jacobian_norm": 1.0, "transitions": [1, 2, 3, 4, 5, 6, 7, 8],
                           "density": 0.0})
    d = density_bins(curves, 4).sort_values("angle")
    np.testing.assert_allclose(d["density"], np.array([3, 7, 11, 15]) / (math.pi / 2))
    np.testing.assert_allclose(d["angle"], (np.arange(4) + 0.5) * math.pi / 2)


def test_figures_render_from_synthetic_results(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for t in ("a", "b"):
        for e in ("random", "same_class", "three_classes"):
            for ph in ("init", "trained"):
                for a in angles(60).numpy():
                    rows.append((t, e, ph, a, rng.uniform(0.1, 1), int(rng.integers(0, 5)), 0.0))
    curves = pd.DataFrame(rows, columns=["trial_id", "ellipse", "phase", "angle", "jacobian_norm",
                                         "transitions", "density"])
    p = trajectory_figure(curves, tmp_path / "f2.png")
    assert p.stat().st_size > 10_000
    n = 20
    grids = pd.DataFrame([{"trial_id": "a", "phase": ph, "n": n, "extent": 1.5,
                           "boundary": list(rng.random(n * n) < 0.2),
                           "predicted": list(rng.integers(0, 10, n * n)),
                           "anchor_labels": [1, 4, 7]} for ph in ("init", "trained")])
    assert boundaries_figure(grids, tmp_path / "f3.png").stat().st_size > 10_000
    assert trajectory_figure(curves.iloc[:0], tmp_path / "x.png") is None
    assert boundaries_figure(grids.iloc[:0], tmp_path / "y.png") is None
