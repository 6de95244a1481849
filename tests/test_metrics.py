import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.activations import ACTIVATIONS
from workers.metrics import accuracy, jacobian_norm, per_point_loss
from workers.models import build_mlp


def reference_jacobian_norm(model, x):
    """The slow obvious way: the full Jacobian of each point with torch.autograd.functional."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v: torch.softmax(model(v[None]), -1)[0], xi)
        out.append(torch.linalg.matrix_norm(J, "fro"))
    return torch.stack(out)


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
    assert got.dtype == torch.float32
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
    assert jacobian_norm(model, x).dtype == torch.float32
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
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, reduction="none"))
    assert correct.tolist() == (logits.argmax(1) == y).tolist()
    assert accuracy(model, x, y) == pytest.approx(correct.float().mean().item())


def test_model_ending_in_an_activation():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.Tanh()).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    torch.testing.assert_close(jacobian_norm(model, x), reference_jacobian_norm(model, x),
                               rtol=1e-10, atol=1e-12)
