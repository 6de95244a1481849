"""The non-linearities of A.4, with their linear-region breakpoints and init gains.

Each activation is defined exactly as the paper does it. In particular HardSigmoid is
``min(max(x + 0.5, 0), 1)`` with breakpoints at -0.5 and 0.5; ``torch.nn.Hardsigmoid`` is a
different function (``relu6(x + 3) / 6``, breakpoints at -3 and 3) and is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from workers.names import ACTIVATION_NAMES


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    breakpoints: tuple[float, ...]  # where the linear piece changes (Tanh: 0, the sign boundary)
    piecewise_linear: bool
    init_variance: float  # v in Var(W_ij) = s^2 v / n_in (A.5)
    derivative: Callable[[torch.Tensor], torch.Tensor]  # d fn / dz, elementwise


def _window(lo: float | None, hi: float | None, closed: bool = True
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Derivative of a clamp-shaped piecewise-linear function: 1 between lo and hi, 0 outside.
    On a breakpoint itself it is 1 when ``closed`` (the convention of torch.clamp's backward,
    used by these activations) and 0 otherwise (that of torch's relu, relu6 and hardtanh), so
    hand-written backward passes match autograd exactly."""

    def d(z: torch.Tensor) -> torch.Tensor:
        m = torch.ones_like(z, dtype=torch.bool)
        if lo is not None:
            m &= (z >= lo) if closed else (z > lo)
        if hi is not None:
            m &= (z <= hi) if closed else (z < hi)
        return m.to(z.dtype)

    return d


def _tanh_derivative(z: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.tanh(z).square()


def _relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0.0)


def _relu6(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0.0, max=6.0)


def _hardtanh(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=-1.0, max=1.0)


def _hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + 0.5, min=0.0, max=1.0)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", _relu, (0.0,), True, 2.0, _window(0.0, None)),
    "relu6": Activation("relu6", _relu6, (0.0, 6.0), True, 2.0, _window(0.0, 6.0)),
    "tanh": Activation("tanh", torch.tanh, (0.0,), False, 1.0, _tanh_derivative),
    "hardtanh": Activation("hardtanh", _hardtanh, (-1.0, 1.0), True, 1.0, _window(-1.0, 1.0)),
    "hardsigmoid": Activation("hardsigmoid", _hardsigmoid, (-0.5, 0.5), True, 2.0,
                              _window(-0.5, 0.5)),
}
if tuple(ACTIVATIONS) != ACTIVATION_NAMES:  # (the names, torch-free, are declared there once)
    raise ImportError(f"workers.activations defines {tuple(ACTIVATIONS)}, workers.names."
                      f"ACTIVATION_NAMES lists {ACTIVATION_NAMES}: make them the same")


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation: unknown value {name!r}; allowed: {', '.join(ACTIVATIONS)}"
        ) from None


class PaperActivation(nn.Module):
    """An A.4 non-linearity as a module; ``breakpoints`` are its linear-region boundaries."""

    def __init__(self, name: str):
        super().__init__()
        self.spec = get_activation(name)
        self.name = name

    @property
    def breakpoints(self) -> tuple[float, ...]:
        return self.spec.breakpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.fn(x)

    def extra_repr(self) -> str:
        return self.name
