import mpmath
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.activations import ACTIVATIONS
from workers.metrics import accuracy, cross_entropy_float64, jacobian_norm, per_point_loss
from workers.models import build_mlp


def reference_jacobian_norm(model, x):
    """The slow obvious way: the full Jacobian of each point with torch.autograd.functional."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v: torch.softmax(model(v[None]), -1)[0], xi)
        out.append(torch.linalg.matrix_norm(J, "fro"))
    return torch.stack(out).double()  # jacobian_norm returns float64


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("width", [16, 7])  # wider than the input; narrower (Gram path)
def test_matches_autograd_functional_jacobian(act, scale, width):
    model = build_mlp(12, width, 4, 6, act, init_scale=scale, seed=2).double()
    x = torch.randn(23, 12, dtype=torch.float64)
    got = jacobian_norm(model, x, chunk_size=5)  # several chunks, last one partial
    torch.testing.assert_close(got, reference_jacobian_norm(model, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.3, 2.0), nn.Tanh()])
def test_torch_activation_modules_with_bias(act):
    # the hand-written backward path on torch's own modules, biases included, nested Sequential
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 13), act,
                          nn.Sequential(nn.Linear(13, 5), act), nn.Linear(5, 4)).double()
    x = torch.randn(17, 9, dtype=torch.float64)
    torch.testing.assert_close(jacobian_norm(model, x), reference_jacobian_norm(model, x),
                               rtol=1e-10, atol=1e-12)


def test_on_a_breakpoint_matches_autograd():
    # pre-activations exactly on ReLU6's breakpoints 0 and 6: the derivative convention must be
    # the one autograd uses for clamp
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU6(), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 1.0]]))
    model = model.double()
    x = torch.tensor([[0.0, 6.0], [6.0, 3.0], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(jacobian_norm(model, x), reference_jacobian_norm(model, x))


def test_single_class_has_zero_jacobian():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    assert jacobian_norm(model, torch.randn(5, 3)).tolist() == [0.0] * 5


def test_fp32_close_to_fp64():
    model = build_mlp(64, 32, 5, 10, "hardsigmoid", seed=3)
    x = torch.randn(40, 64)
    got = jacobian_norm(model, x)
    assert got.dtype == torch.float64  # squares summed in float64 whatever the model's dtype
    want = reference_jacobian_norm(model.double(), x.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)


def test_hand_derived_linear_model():
    # logits = W x, so d softmax/dx = (diag(s) - s s^T) W, computed here in closed form.
    W = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]], dtype=torch.float64)
    model = nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(W)
    x = torch.tensor([[0.2, -0.1], [1.0, 1.0]], dtype=torch.float64)
    want = []
    for xi in x:
        s = torch.softmax(W @ xi, 0)
        want.append(torch.linalg.norm((torch.diag(s) - torch.outer(s, s)) @ W))
    torch.testing.assert_close(jacobian_norm(model, x), torch.stack(want))


def test_any_module_and_fp32():
    # a user's own module with biases and a different non-linearity
    model = nn.Sequential(nn.Linear(5, 9), nn.GELU(), nn.Linear(9, 4))
    x = torch.randn(11, 5)
    torch.testing.assert_close(jacobian_norm(model, x), reference_jacobian_norm(model, x),
                               rtol=1e-4, atol=1e-6)
    assert jacobian_norm(model, x).dtype == torch.float64
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients formed


def test_input_validation_and_empty():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        jacobian_norm(model, torch.randn(3))
    assert jacobian_norm(model, torch.randn(0, 3)).shape == (0,)


def test_per_point_loss_and_accuracy():
    model = build_mlp(7, 8, 3, 5, "relu", seed=1)
    x, y = torch.randn(50, 7), torch.randint(0, 5, (50,))
    loss, correct = per_point_loss(model, x, y, chunk_size=16)
    logits = model(x)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, F.cross_entropy(logits.double(), y, reduction="none"))
    assert correct.tolist() == (logits.argmax(1) == y).tolist()
    assert accuracy(model, x, y) == pytest.approx(correct.float().mean().item())


def test_model_ending_in_an_activation():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.Tanh()).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    torch.testing.assert_close(jacobian_norm(model, x), reference_jacobian_norm(model, x),
                               rtol=1e-10, atol=1e-12)


# --- confident points (§4.4: fitted networks, logit margins of 20 and more) -------------------
# Reference: mpmath at 60 digits from the model's own (exactly representable) weights and input.


def _mp_jacobian_norm(w: torch.Tensor, x: torch.Tensor):
    """||(diag(s) - s s^T) W||_F for logits W x, in mpmath."""
    mpmath.mp.dps = 60
    wm = [[mpmath.mpf(float(v)) for v in row] for row in w.tolist()]
    xm = [mpmath.mpf(float(v)) for v in x.tolist()]
    z = [mpmath.fsum(wi[j] * xm[j] for j in range(len(xm))) for wi in wm]
    e = [mpmath.e ** (zi - max(z)) for zi in z]
    s = [v / mpmath.fsum(e) for v in e]
    c, d = len(z), len(xm)
    total = mpmath.fsum(
        mpmath.fsum(((s[i] if i == j else 0) - s[i] * s[j]) * wm[j][k] for j in range(c)) ** 2
        for i in range(c) for k in range(d))
    return mpmath.sqrt(total)


def _diag_model(dtype):
    lin = nn.Linear(3, 3, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([4.0, 1.0, 1.0])))
    return lin


class _Wrapped(nn.Module):  # not an nn.Sequential: takes the batched-autograd path
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("dtype,margins,rtol", [
    (torch.float32, [0, 5, 10, 15, 17, 20, 25, 30], 1e-4),
    (torch.float64, [0, 10, 20, 30, 36, 40, 50, 60], 1e-10),
])
@pytest.mark.parametrize("path", ["structured", "autograd"])
def test_jacobian_norm_of_confident_points_against_mpmath(dtype, margins, rtol, path):
    """Issue example: Linear(3, 3) with W = diag(4, 1, 1), an input at logit margin 17. The
    textbook s_i (Q_ik - (sQ)_k) cancels once 1 - s_max < 1e-5 (80% error in float32 at margin
    17, float64 fails from about 36)."""
    lin = _diag_model(dtype)
    model = nn.Sequential(lin) if path == "structured" else _Wrapped(lin)
    x = torch.tensor([[m / 4.0, 0.0, 0.0] for m in margins], dtype=dtype)  # logit margin m
    logits = lin(x).detach().double()
    assert torch.allclose(logits[:, 0] - logits[:, 1], torch.tensor(margins, dtype=torch.float64),
                          atol=1e-4)
    got = jacobian_norm(model, x)
    for i in range(len(margins)):
        want = float(_mp_jacobian_norm(lin.weight.detach(), x[i]))
        assert abs(float(got[i]) - want) <= rtol * want, (margins[i], float(got[i]), want)


def test_tiny_jacobian_norms_do_not_underflow():
    """A float32 model at margin 60: the norm is about 1e-26, whose square underflows float32;
    summed in float64 it keeps its value."""
    lin = _diag_model(torch.float32)
    x = torch.tensor([[15.0, 0.0, 0.0]])  # margin 60
    got = float(jacobian_norm(nn.Sequential(lin), x)[0])
    want = float(_mp_jacobian_norm(lin.weight.detach(), x[0]))
    assert want < 1e-22 and abs(got - want) <= 1e-4 * want


def _mp_cross_entropy(z, y):
    mpmath.mp.dps = 60
    zm = [mpmath.mpf(float(v)) for v in z]
    return mpmath.log(mpmath.fsum(mpmath.e ** (v - zm[y]) for v in zm))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_float64_against_mpmath(dtype):
    """float32 F.cross_entropy is exactly 0 from a margin of about 16.6; the stable float64
    form keeps every point's loss (correct, confident, wrong, tied)."""
    rows = [[20.0, 0.0, 0.0], [16.6, 0.0, 0.0], [40.0, 1.0, -3.0], [0.0, 30.0, 0.0],
            [2.0, 2.0, 2.0], [100.0, 0.0, 50.0], [-5.0, 300.0, 1.0]]
    z = torch.tensor(rows, dtype=dtype)
    y = torch.tensor([0, 0, 0, 0, 1, 0, 2])
    got = cross_entropy_float64(z, y)
    assert got.dtype == torch.float64
    assert float(F.cross_entropy(z[:1].float(), y[:1])) == 0.0 or dtype == torch.float64
    for i in range(len(rows)):
        want = float(_mp_cross_entropy(z[i].tolist(), int(y[i])))
        assert want > 0 and abs(float(got[i]) - want) <= 1e-12 * want, (rows[i], float(got[i]), want)
