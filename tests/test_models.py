import math

import pytest
import torch
from torch import nn

from workers.models import build_mlp, count_params


def test_structure_is_bias_free_with_depth_weight_matrices():
    m = build_mlp(10, 7, 4, 3, "relu")
    linears = [l for l in m if isinstance(l, nn.Linear)]
    assert len(linears) == 4
    assert all(l.bias is None for l in linears)
    assert [tuple(l.weight.shape) for l in linears] == [(7, 10), (7, 7), (7, 7), (3, 7)]
    assert count_params(m) == 70 + 49 + 49 + 21
    assert m(torch.randn(5, 10)).shape == (5, 3)


def test_forward_equals_manual_composition():
    m = build_mlp(6, 5, 3, 4, "hardsigmoid", seed=3)
    w = [l.weight for l in m if isinstance(l, nn.Linear)]
    x = torch.randn(9, 6)
    hs = lambda z: torch.clamp(z + 0.5, 0, 1)
    want = hs(hs(x @ w[0].T) @ w[1].T) @ w[2].T
    torch.testing.assert_close(m(x), want)


@pytest.mark.parametrize("act,v", [("relu", 2), ("relu6", 2), ("hardsigmoid", 2), ("tanh", 1), ("hardtanh", 1)])
@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_init_variance(act, v, scale):
    n_in = 400
    m = build_mlp(n_in, 500, 2, 10, act, init_scale=scale, seed=1)
    w = m[0].weight.detach().double()
    want = scale**2 * v / n_in
    # 200k samples: the sample variance has relative standard error sqrt(2/200000) ~ 0.3%
    assert abs(w.var().item() / want - 1) < 0.02
    assert abs(w.mean().item()) < 4 * math.sqrt(want / w.numel())
    w2 = m[2].weight.detach().double()  # second layer: n_in = width
    assert abs(w2.var().item() / (scale**2 * v / 500) - 1) < 0.05


def test_seeded_and_independent_of_global_rng():
    torch.manual_seed(0)
    a = build_mlp(8, 16, 3, 2, "tanh", seed=5)
    torch.manual_seed(123)
    b = build_mlp(8, 16, 3, 2, "tanh", seed=5)
    c = build_mlp(8, 16, 3, 2, "tanh", seed=6)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize("kw,msg", [({"depth": 1}, "depth"), ({"width": 0}, "width"),
                                    ({"activation": "swish"}, "activation")])
def test_bad_arguments(kw, msg):
    args = dict(input_dim=4, width=3, depth=2, num_classes=2, activation="relu")
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        build_mlp(**args)
