"""Closed trajectories in input space (§3, §4.1, A.5.2).

- :func:`translation_path`: the trajectory through a test image used for the transitions metric:
  its W horizontal circular shifts by whole pixels as polygon vertices; the edges between
  neighbouring shifts are the linear interpolations (sub-pixel shifts). The loop closes because
  shifting W times returns the image.
- Ellipses off the data (A.5.2), each as ``Ellipse(centre, u, v)`` = {centre + u cos a + v sin a}:
  :func:`random_ellipse` (zero-centred, axis vectors with N(0, 1) entries) and
  :func:`ellipse_through` (through three points: the plane in which the points are the vertices
  of an equilateral triangle, its circumcircle mapped back, so the points sit at angles 0,
  2pi/3 and 4pi/3).
- :func:`ellipse_profile`: the Jacobian norm at k points along an ellipse and the exact
  transitions on each edge of the inscribed k-gon (transition density per radian).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# The angles at which ellipse_through places its three points.
THROUGH_ANGLES = (0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0)


def translation_path(image: torch.Tensor) -> torch.Tensor:
    """The W horizontal circular shifts of ``image`` ([H, W] or [C, H, W]), flattened: [W, d].
    Row s is the image shifted right by s pixels (row 0 is the image itself)."""
    if image.ndim not in (2, 3):
        raise ValueError(f"image: expected [H, W] or [C, H, W], got shape {tuple(image.shape)}")
    w = image.shape[-1]
    return torch.stack([torch.roll(image, s, dims=-1).reshape(-1) for s in range(w)])


@dataclass(frozen=True)
class Ellipse:
    centre: torch.Tensor  # [d]
    u: torch.Tensor  # [d], the point at angle 0 is centre + u
    v: torch.Tensor  # [d]

    def points(self, angles: torch.Tensor) -> torch.Tensor:
        """[k] angles -> [k, d] points (float64)."""
        a = angles.to(torch.float64)[:, None]
        c, u, v = (t.to(torch.float64) for t in (self.centre, self.u, self.v))
        return c + torch.cos(a) * u + torch.sin(a) * v


def angles(k: int) -> torch.Tensor:
    """k equally spaced angles 2 pi i / k, i = 0..k-1 (float64)."""
    return torch.arange(k, dtype=torch.float64) * (2.0 * math.pi / k)


def random_ellipse(d: int, generator: torch.Generator) -> Ellipse:
    """A zero-centred ellipse whose two axis vectors have i.i.d. N(0, 1) entries."""
    u = torch.randn(d, generator=generator, dtype=torch.float64)
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    return Ellipse(torch.zeros(d, dtype=torch.float64), u, v)


def ellipse_through(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> Ellipse:
    """The ellipse through three points that is the image of the circumcircle of an equilateral
    triangle under the affine map taking its vertices to the points: centre = their mean, and
    p_i = centre + u cos a_i + v sin a_i at a_i = 0, 2pi/3, 4pi/3."""
    p = torch.stack([q.reshape(-1).to(torch.float64) for q in (p0, p1, p2)])  # [3, d]
    c = p.mean(dim=0)
    a = torch.tensor(THROUGH_ANGLES, dtype=torch.float64)
    u = (2.0 / 3.0) * (torch.cos(a)[:, None] * (p - c)).sum(dim=0)
    v = (2.0 / 3.0) * (torch.sin(a)[:, None] * (p - c)).sum(dim=0)
    return Ellipse(c, u, v)


def pick_three(labels: torch.Tensor, same_class: bool, generator: torch.Generator) -> list[int]:
    """Indices of three training points: of one class (drawn among classes with >= 3 points),
    or of three different classes. Seeded by ``generator``."""
    labels = labels.cpu()
    classes = torch.unique(labels)
    if same_class:
        ok = [c for c in classes.tolist() if int((labels == c).sum()) >= 3]
        if not ok:
            raise ValueError("no class has three training points")
        c = ok[int(torch.randint(len(ok), (1,), generator=generator))]
        idx = torch.nonzero(labels == c).flatten()
        return idx[torch.randperm(len(idx), generator=generator)[:3]].tolist()
    if len(classes) < 3:
        raise ValueError("fewer than three classes in the training set")
    chosen = classes[torch.randperm(len(classes), generator=generator)[:3]]
    out = []
    for c in chosen.tolist():
        idx = torch.nonzero(labels == c).flatten()
        out.append(int(idx[int(torch.randint(len(idx), (1,), generator=generator))]))
    return out


def ellipse_profile(model: nn.Module, ellipse: Ellipse, k: int, exact_transitions: bool = True,
                    count: bool = True) -> dict[str, torch.Tensor]:
    """Sensitivity along an ellipse at k equally spaced angles.

    Returns ``angle`` [k]; ``jacobian_norm`` [k] at those points (float64); and,
    for piecewise-linear networks, ``transitions`` [k]: the exact crossings on the edge of the
    inscribed k-gon from angle i to angle i+1, and ``density`` [k] = transitions per radian.
    For Tanh (or ``exact_transitions=False``) the transitions are the code changes between
    neighbouring samples (Eq. 1's terms). ``count=False``: the Jacobian norms alone
    (``transitions`` and ``density`` None).
    """
    from workers.metrics import jacobian_norm
    from workers.transitions import codes, supports_exact, transitions_per_edge

    a = angles(k)
    pts = ellipse.points(a)
    p = next(model.parameters())
    jac = jacobian_norm(model, pts.to(device=p.device, dtype=p.dtype)).cpu()
    if not count:  # (the Jacobian norms alone)
        return {"angle": a, "jacobian_norm": jac, "transitions": None, "density": None}
    if exact_transitions and supports_exact(model):
        per_edge = transitions_per_edge(model, pts[None], closed=True)[0]
    else:
        c = codes(model, pts).to(torch.int32)
        per_edge = (torch.roll(c, -1, dims=0) - c).abs().sum(dim=1)
    return {"angle": a, "jacobian_norm": jac, "transitions": per_edge,
            "density": per_edge.to(torch.float64) / (2.0 * math.pi / k)}
