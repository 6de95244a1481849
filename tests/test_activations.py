import pytest
import torch

from workers.activations import ACTIVATIONS, PaperActivation, get_activation

# (input, expected output) pairs at and around every breakpoint, from the A.4 formulas by hand.
CASES = {
    "relu": [(-1.0, 0.0), (-1e-6, 0.0), (0.0, 0.0), (1e-6, 1e-6), (2.5, 2.5)],
    "relu6": [(-1.0, 0.0), (0.0, 0.0), (1e-6, 1e-6), (5.999, 5.999), (6.0, 6.0), (6.001, 6.0), (9.0, 6.0)],
    "hardtanh": [(-3.0, -1.0), (-1.001, -1.0), (-1.0, -1.0), (-0.999, -0.999), (0.3, 0.3),
                 (0.999, 0.999), (1.0, 1.0), (1.5, 1.0)],
    "hardsigmoid": [(-3.0, 0.0), (-0.501, 0.0), (-0.5, 0.0), (-0.499, 0.001), (0.0, 0.5),
                    (0.25, 0.75), (0.499, 0.999), (0.5, 1.0), (0.501, 1.0), (3.0, 1.0)],
    "tanh": [(0.0, 0.0), (1.0, 0.7615941559557649), (-2.0, -0.9640275800758169)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_at_and_around_breakpoints(name):
    xs = torch.tensor([c[0] for c in CASES[name]], dtype=torch.float64)
    want = torch.tensor([c[1] for c in CASES[name]], dtype=torch.float64)
    got = PaperActivation(name)(xs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_hardsigmoid_is_not_torchs():
    x = torch.tensor([-1.0, 1.0])
    ours = PaperActivation("hardsigmoid")(x)
    assert ours.tolist() == [0.0, 1.0]
    assert not torch.allclose(ours, torch.nn.Hardsigmoid()(x))  # torch's breaks at -3, 3


@pytest.mark.parametrize("name", ["relu", "relu6", "hardtanh", "hardsigmoid"])
def test_piecewise_linear_slopes_change_only_at_breakpoints(name):
    act = get_activation(name)
    bps = act.breakpoints
    grid = torch.linspace(-8, 8, 16001, dtype=torch.float64)
    y = act.fn(grid)
    slope = torch.diff(y) / torch.diff(grid)
    changes = torch.nonzero(torch.abs(torch.diff(slope)) > 1e-9).flatten()
    # every slope change sits within one grid step of a declared breakpoint, and vice versa
    locs = grid[changes + 1]
    for loc in locs:
        assert min(abs(float(loc) - b) for b in bps) <= 2e-3
    for b in bps:
        assert any(abs(float(loc) - b) <= 2e-3 for loc in locs)


def test_init_variances_and_unknown_name():
    assert {k: a.init_variance for k, a in ACTIVATIONS.items()} == {
        "relu": 2.0, "relu6": 2.0, "hardsigmoid": 2.0, "tanh": 1.0, "hardtanh": 1.0}
    with pytest.raises(ValueError, match="allowed: relu, relu6, tanh, hardtanh, hardsigmoid"):
        get_activation("gelu")
