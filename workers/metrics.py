"""Sensitivity and accuracy metrics (§3).

``jacobian_norm`` is the per-point Frobenius norm of the Jacobian of the *softmax output* with
respect to the input, ||J(x)||_F with J = d softmax(f(x)) / dx^T. The paper's metric is its mean
over test points (not a mean of squares, not a random projection).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Elements of one chunk's batched backward ([classes, points, features]) kept under this bound.
_CHUNK_ELEMENTS = 1 << 24


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def jacobian_norm(model: nn.Module, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Exact ||d softmax(model(x_n)) / d x_n||_F for every row x_n of ``x`` ([N, d]) -> [N].

    ``model`` is any module mapping [N, d] inputs to [N, C] logits, treating rows independently.
    Using J = A G with A = diag(s) - s s^T (s = softmax) and G = d logits / dx^T, row i of J is
    the vector-Jacobian product of the logits with row i of A. All C rows are computed in one
    forward pass and one batched reverse pass per chunk (``is_grads_batched``); only input
    gradients are formed, never parameter gradients.
    """
    if x.ndim != 2:
        raise ValueError(f"x: expected [N, d] inputs, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n == 0:
        return x.new_zeros(0)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[-1]
    if chunk_size is None:
        chunk_size = max(1, min(4096, _CHUNK_ELEMENTS // (num_classes * max(d, 1))))
    out = []
    for a, b in _chunks(n, chunk_size):
        xc = x[a:b].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xc)
            s = torch.softmax(logits.detach(), dim=-1)  # [n, C]
            jac_mix = torch.diag_embed(s) - s[:, :, None] * s[:, None, :]  # A, [n, C, C]
            (rows,) = torch.autograd.grad(
                logits, xc, grad_outputs=jac_mix.transpose(0, 1), is_grads_batched=True
            )  # [C, n, d]: rows[i, n] = d s_i / dx at x_n
        out.append(rows.pow(2).sum(dim=(0, 2)).sqrt())
    return torch.cat(out)


@torch.no_grad()
def per_point_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 8192):
    """Per-point cross-entropy [N] and correctness [N] (bool) of ``model`` on (x, y)."""
    losses, correct = [], []
    for a, b in _chunks(len(x), chunk_size):
        logits = model(x[a:b])
        losses.append(F.cross_entropy(logits, y[a:b], reduction="none"))
        correct.append(logits.argmax(dim=-1) == y[a:b])
    if not losses:
        return x.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=x.device)
    return torch.cat(losses), torch.cat(correct)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 8192) -> float:
    _, correct = per_point_loss(model, x, y, chunk_size)
    return float(correct.float().mean()) if len(correct) else float("nan")
