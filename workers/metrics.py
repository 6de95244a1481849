"""Sensitivity and accuracy metrics (§3).

``jacobian_norm`` is the per-point Frobenius norm of the Jacobian of the *softmax output* with
respect to the input, ||J(x)||_F with J = d softmax(f(x)) / dx^T. The paper's metric is its mean
over test points (not a mean of squares, not a random projection).
"""

from __future__ import annotations

import torch
from torch import nn

from workers.layers import Layer, mlp_layers

# Elements of one chunk's backward rows ([points, classes, features]) kept under this bound.
_CHUNK_ELEMENTS = 1 << 24


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _complement_basis(c: int, device) -> torch.Tensor:
    """Q [C, C-1] (float64): an orthonormal basis of the vectors orthogonal to the all-ones
    vector."""
    ones = torch.ones(c, 1, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.cat([ones, torch.eye(c, dtype=torch.float64)[:, : c - 1]], 1))
    return q[:, 1:].to(device=device)


def _mixing_rows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, scale): B = Q^T A / scale per point, [n, C-1, C] in the logits' dtype, and scale [n]
    float64, with A = diag(s) - s s^T (s = softmax(logits)).

    A is symmetric with A 1 = 0, so A = Q Q^T A and ||A G||_F = ||Q^T A G||_F for any G: C-1
    backward rows give the exact norm. Entry (k, i) is s_i (Q_ik - (s Q)_k); for a confident
    point (1 - s_top < 1e-5) that difference cancels, so it is formed with the basis shifted by
    the top class t, P = Q - 1 Q_t (P^T A = Q^T A, since 1^T A = 0): s_i (P_ik - u_k) with
    u = P^T s = sum over the other classes of s_j P_j, which has no cancellation. The rows are
    computed in float64 and divided by their largest entry per point, so that a backward pass
    in the model's dtype neither underflows nor loses the small values of confident points;
    the caller multiplies the norm back by ``scale``. With C = 1 the softmax is constant and B
    is empty.
    """
    z = logits.detach().to(torch.float64)
    n, c = z.shape
    if c == 1:
        return logits.new_zeros(n, 0, 1), z.new_ones(n)
    s = torch.softmax(z, dim=-1)  # [n, C]
    q = _complement_basis(c, z.device)  # [C, C-1]
    top = z.argmax(dim=-1)
    p = q[None] - q[top][:, None, :]  # [n, C, C-1]: P = Q - 1 Q_t, row t is 0
    u = torch.einsum("nc,nck->nk", s, p)  # [n, C-1]
    b = s[:, None, :] * (p.transpose(1, 2) - u[:, :, None])  # [n, C-1, C]
    scale = b.abs().amax(dim=(1, 2))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (b / scale[:, None, None]).to(logits.dtype), scale


def _first_layer_gram(layers: list[Layer]) -> torch.Tensor | None:
    """W1 W1^T when the first layer is narrower than the input (then ||r W1||^2 = r W1 W1^T r^T
    is cheaper through it), else None."""
    w1 = layers[0].weight
    return w1 @ w1.T if w1.shape[0] < w1.shape[1] else None


def _structured_norm(layers: list[Layer], gram: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Per-point ||Q^T A G||_F for an elementwise MLP, backpropagated by hand: every layer's
    backward is one [n (C-1), out] x [out, in] matmul, scaled by the activation's derivative."""
    derivs = []
    h = x
    for layer in layers:
        z = layer.affine(h)
        if layer.act is not None:
            derivs.append(layer.act.derivative(z))
            h = layer.act.fn(z)
        else:
            derivs.append(None)
            h = z
    n = x.shape[0]
    r, scale = _mixing_rows(h)  # [n, C-1, C]: rows of d(Q^T s)/d logits, / scale
    k = r.shape[1]
    if k == 0:
        return x.new_zeros(n, dtype=torch.float64)
    if derivs[-1] is not None:  # an activation after the last Linear: the logits are its output
        r = r * derivs[-1][:, None, :]
    # Back through every layer but the first, applying the derivative of the activation below.
    for i in range(len(layers) - 1, 0, -1):
        r = (r.reshape(n * k, -1) @ layers[i].weight).reshape(n, k, -1)
        if derivs[i - 1] is not None:
            r.mul_(derivs[i - 1][:, None, :])
    # First layer: ||r W1||^2 per row, through the Gram matrix when that is cheaper.
    rows = r.reshape(n * k, -1)
    if gram is not None:  # products of O(1) rows; summed in float64
        sq = ((rows @ gram) * rows).double().sum(dim=-1).clamp_min(0.0)
    else:
        sq = (rows @ layers[0].weight).double().square().sum(dim=-1)
    return sq.reshape(n, k).sum(dim=1).sqrt() * scale


def _autograd_norm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-point ||Q^T A G||_F for any module: one forward, one batched reverse pass."""
    xc = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xc)
        b, scale = _mixing_rows(logits.detach())  # [n, C-1, C], [n]
        if b.shape[1] == 0:
            return x.new_zeros(x.shape[0], dtype=torch.float64)
        (rows,) = torch.autograd.grad(
            logits, xc, grad_outputs=b.transpose(0, 1), is_grads_batched=True
        )  # [C-1, n, d]
    return rows.double().square().sum(dim=(0, 2)).sqrt() * scale


def jacobian_norm(model: nn.Module, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Exact ||d softmax(model(x_n)) / d x_n||_F for every row x_n of ``x`` ([N, d]) -> [N]
    float64 (unitless: softmax probability per unit of input).

    ``model`` is any module mapping [N, d] inputs to [N, C] logits, treating rows independently.
    With J = A G, A = diag(s) - s s^T (s = softmax) and G = d logits / dx^T: A annihilates the
    all-ones vector, so ||J||_F = ||Q^T A G||_F with Q an orthonormal basis of its complement,
    and C-1 vector-Jacobian products per point give the exact norm. For the paper's networks
    (an ``nn.Sequential`` of ``nn.Linear`` and elementwise activations, see
    :mod:`workers.layers`) the backward pass is done by hand as one matmul per layer over all
    rows of a chunk; any other module goes through one batched autograd pass per chunk. Only
    input gradients are formed, never parameter gradients.

    Confident points (Novak et al. 2018 §4.4 study fitted networks, whose points sit at logit
    margins of 20 and more) keep their precision: the mixing rows are formed without the
    cancellation in 1 - s_top (see ``_mixing_rows``) and squares are summed in float64, so a
    float32 model's value is within a relative 1e-4 of an mpmath reference at logit margins up
    to 30 and a float64 model's within 1e-10 up to 60 (tests/test_metrics.py), and a norm below the
    dtype's range does not become 0 until the softmax itself saturates (float32 margins of
    about 87, float64 about 745). ValueError for inputs that are not [N, d].
    """
    if x.ndim != 2:
        raise ValueError(f"x: expected [N, d] inputs, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n == 0:
        return x.new_zeros(0, dtype=torch.float64)
    try:
        layers = mlp_layers(model)
    except ValueError:
        layers = None
    with torch.no_grad():
        num_classes = model(x[:1]).shape[-1]
        widest = max([d, num_classes] + ([l.weight.shape[0] for l in layers] if layers else []))
    if chunk_size is None:
        chunk_size = max(1, min(4096, _CHUNK_ELEMENTS // (max(num_classes - 1, 1) * widest)))
        chunk_size = -(-n // -(-n // chunk_size))  # the same bound, in chunks of equal size
    out = []
    if layers is not None:
        with torch.no_grad():
            gram = _first_layer_gram(layers)
    for a, b in _chunks(n, chunk_size):
        if layers is not None:
            with torch.no_grad():
                out.append(_structured_norm(layers, gram, x[a:b]))
        else:
            out.append(_autograd_norm(model, x[a:b]))
    return torch.cat(out)


def cross_entropy_float64(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-point cross-entropy -log softmax(z)_y, [N, C] logits and [N] labels -> [N] float64,
    in the stable form (m - z_y) + log1p(sum over j != a of exp(z_j - m)), a = argmax, m = z_a.
    For a correctly classified point that is log1p(sum_{j != y} exp(z_j - z_y)), which keeps
    its value at any margin (float32 ``F.cross_entropy`` returns exactly 0 from a margin of
    about 16.6, float64 logsumexp - z_y from about 37); it is 0 only where float64 exp
    underflows (margins above about 745)."""
    z = logits.to(torch.float64)
    top = z.argmax(dim=-1, keepdim=True)
    m = z.gather(1, top)
    e = torch.exp(z - m).scatter(1, top, 0.0)
    return (m - z.gather(1, y[:, None].long())).squeeze(1) + torch.log1p(e.sum(dim=-1))


# Points per forward pass when a trial scores its network (accuracy, loss) and when a measure
# reads the same outputs (the margins): the same batches give bitwise the same float32 logits.
# (In the chaotic regime a float32 network's outputs depend on how the points are batched.)
SCORE_CHUNK = 8192


@torch.no_grad()
def per_point_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   chunk_size: int = SCORE_CHUNK):
    """Per-point cross-entropy [N] (float64, ``cross_entropy_float64``) and correctness [N]
    (bool) of ``model`` on (x, y)."""
    losses, correct = [], []
    for a, b in _chunks(len(x), chunk_size):
        logits = model(x[a:b])
        losses.append(cross_entropy_float64(logits, y[a:b]))
        correct.append(logits.argmax(dim=-1) == y[a:b])
    if not losses:
        return x.new_zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool,
                                                                device=x.device)
    return torch.cat(losses), torch.cat(correct)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 8192) -> float:
    _, correct = per_point_loss(model, x, y, chunk_size)
    return float(correct.float().mean()) if len(correct) else float("nan")
