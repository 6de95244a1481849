"""Per-trial measurements off the data: ellipse profiles (Fig. 2, A.5.2) and region-boundary maps
in the plane of three training points (Fig. 3, A.5.3).

A trial computes them before and after training when its ``MetricSpec`` asks for them
(``ellipse_k`` > 0, ``boundary_grid`` > 0) and stores one table each beside its result file
(``<sweep>/curves/`` and ``<sweep>/grids/``, see :mod:`workers.results`). The curves and planes
depend only on the data and the data seed, so every trial of a sweep (e.g. repeated trainings
with different seeds) is measured along the same ellipses and on the same plane.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.trajectories import (
    THROUGH_ANGLES, Ellipse, ellipse_profile, ellipse_through, pick_three, random_ellipse,
)
from workers.layers import mlp_layers
from workers.transitions import region_codes, _hidden_layers

ELLIPSES = ("random", "same_class", "three_classes")
_SEED_OFFSET = 104729  # keeps these draws apart from the data subsets drawn with the same seed


def study_ellipses(x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> dict[str, tuple[Ellipse, list[int]]]:
    """The three ellipses of A.5.2 for this data and seed: name -> (ellipse, train indices it
    passes through; [] for the random one)."""
    gen = torch.Generator().manual_seed(seed + _SEED_OFFSET)
    x = x_train.flatten(1).cpu()
    out = {"random": (random_ellipse(x.shape[1], gen), [])}
    for name, same in (("same_class", True), ("three_classes", False)):
        idx = pick_three(y_train, same, gen)
        out[name] = (ellipse_through(*x[idx]), idx)
    return out


def ellipse_rows(model: nn.Module, ellipses: dict, k: int, phase: str) -> list[dict]:
    """One record per (ellipse, angle) for this model: the Jacobian norm and transitions. The
    transitions are counted in float64: where that copy is another function than the network
    itself on the ellipse's points (workers.measures.precision), and where the exact count
    would exceed its memory bound (``workers.transitions.CountTooLarge``), they are null (and
    so is the density): a float64 count in the chaotic regime describes no network that was
    trained."""
    from workers.measures.norms import _double
    from workers.measures.precision import compare_precisions
    from workers.trajectories import angles
    from workers.transitions import CountTooLarge

    p = next(model.parameters())
    m64 = _double(model) if p.dtype != torch.float64 else None
    rows = []
    for name, (e, _) in ellipses.items():
        try:
            prof = ellipse_profile(model, e, k)
            same = m64 is None or compare_precisions(
                model, m64, e.points(angles(k)).to(p.device))["agrees"]
        except CountTooLarge:
            prof, same = ellipse_profile(model, e, k, count=False), False
        for i, (a, j) in enumerate(zip(prof["angle"].tolist(), prof["jacobian_norm"].tolist())):
            rows.append({"ellipse": name, "phase": phase, "angle": a, "jacobian_norm": j,
                         "transitions": int(prof["transitions"][i]) if same else None,
                         "density": float(prof["density"][i]) if same else None})
    return rows


def boundary_plane(x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> tuple[Ellipse, list[int]]:
    """The plane of three training points of different classes: x(a, b) = c + a u + b v, with
    the points at (cos t, sin t), t = 0, 2pi/3, 4pi/3 (see ``ellipse_through``)."""
    gen = torch.Generator().manual_seed(seed + _SEED_OFFSET + 1)
    idx = pick_three(y_train, False, gen)
    return ellipse_through(*x_train.flatten(1).cpu()[idx]), idx


def grid_coords(n: int, extent: float) -> torch.Tensor:
    """n equally spaced plane coordinates in [-extent, extent] (float64)."""
    return torch.linspace(-extent, extent, n, dtype=torch.float64)


def boundary_map(model: nn.Module, plane: Ellipse, n: int, extent: float) -> dict[str, torch.Tensor]:
    """On an n x n grid of the plane (row i: b = coords[i], column j: a = coords[j]):
    ``boundary`` [n, n] bool, True where the last hidden layer's region code differs from the
    pixel to the right or below (a transition boundary of that layer), and ``predicted`` [n, n]
    int64, the network's class."""
    c = grid_coords(n, extent)
    b, a = torch.meshgrid(c, c, indexing="ij")
    pts = plane.centre + a.reshape(-1, 1) * plane.u + b.reshape(-1, 1) * plane.v  # [n*n, d]
    p = next(model.parameters())
    # the codes of the network itself (its own dtype), as ``predicted`` is: in the chaotic
    # regime a float64 copy would draw the boundaries of another function
    hidden = [l for l in mlp_layers(model, p.dtype, "cpu")[:-1]]
    _hidden_layers(model, exact=False)  # (the same checks of the form)
    last = hidden[-1].weight.shape[0]
    codes = torch.cat([region_codes(hidden, pts[i:i + 8192], p.dtype)[:, -last:]
                       for i in range(0, len(pts), 8192)]).reshape(n, n, last)
    edge = torch.zeros(n, n, dtype=torch.bool)
    edge[:, :-1] |= (codes[:, 1:] != codes[:, :-1]).any(dim=-1)
    edge[:-1, :] |= (codes[1:, :] != codes[:-1, :]).any(dim=-1)
    with torch.no_grad():
        pred = torch.cat([model(pts[i:i + 8192].to(device=p.device, dtype=p.dtype)).argmax(-1).cpu()
                          for i in range(0, len(pts), 8192)]).reshape(n, n)
    return {"boundary": edge, "predicted": pred}


def anchor_coords() -> list[tuple[float, float]]:
    """Plane coordinates (a, b) of the three training points."""
    import math

    return [(math.cos(t), math.sin(t)) for t in THROUGH_ANGLES]
