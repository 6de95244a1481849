import math

import pytest
import torch
from torch import nn

from workers.activations import PaperActivation
from workers.models import build_mlp
from workers.trajectories import (
    THROUGH_ANGLES, angles, ellipse_profile, ellipse_through, pick_three, random_ellipse,
    translation_path,
)
from workers.transitions import (
    codes, count_transitions, count_transitions_batch, dense_transitions, sampled_transitions,
    transitions_per_edge,
)


def net(*layers):
    """nn.Sequential from (weight, bias, activation-or-None) triples, float64."""
    mods = []
    for w, b, act in layers:
        w = torch.tensor(w, dtype=torch.float64)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None).double()
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(torch.tensor(b, dtype=torch.float64))
        mods.append(lin)
        if act is not None:
            mods.append(PaperActivation(act) if isinstance(act, str) else act)
    return nn.Sequential(*mods)


def seg(*xs):
    """Vertices on the x1 axis of R^2."""
    return torch.tensor([[x, 0.0] for x in xs], dtype=torch.float64)


def test_square_around_the_origin_relu():
    # h = relu(x): each coordinate crosses 0 twice around the square -> 4
    model = net(([[1, 0], [0, 1]], None, "relu"), ([[1, 1]], None, None))
    square = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float64)
    assert count_transitions(model, square) == 4
    assert transitions_per_edge(model, square[None]).tolist() == [[1, 1, 1, 1]]


def test_second_layer_crossings_between_first_layer_knots():
    # layer 1: relu(x1), relu(-x1) (both cross at 0); layer 2: z = |x1| - 0.5, which is 0.5 at
    # both ends of [-1, 1] but crosses 0 at -0.5 and 0.5: only found by walking the regions.
    model = net(([[1, 0], [-1, 0]], None, "relu"), ([[1, 1]], [-0.5], "relu"),
                ([[1], [2]], None, None))
    assert count_transitions(model, seg(-1, 1), closed=False) == 2 + 2
    assert count_transitions(model, seg(-1, 1), closed=True) == 8  # there and back
    assert count_transitions(model, seg(-0.2, 0.3), closed=False) == 2  # only layer 1


@pytest.mark.parametrize("act,lo,hi", [("relu6", 0.0, 6.0), ("hardtanh", -1.0, 1.0),
                                       ("hardsigmoid", -0.5, 0.5)])
def test_both_breakpoints_inside_one_edge(act, lo, hi):
    model = net(([[1, 0]], None, act), ([[1], [-1]], None, None))
    a, b = lo - 1.0, hi + 1.0
    assert count_transitions(model, seg(a, b), closed=False) == 2
    assert count_transitions(model, seg(a, b), closed=True) == 4
    assert count_transitions(model, seg(a, (lo + hi) / 2), closed=False) == 1
    assert count_transitions(model, seg(lo + 0.01, hi - 0.01), closed=False) == 0


def test_nested_hardtanh_hand_count():
    # h = clamp(x, -1, 1); z = 4h - 2 crosses -1 at h = 0.25 and 1 at h = 0.75: both inside the
    # linear piece of layer 1 between its own two crossings. 2 + 2 along [-2, 2].
    model = net(([[1, 0]], None, "hardtanh"), ([[4]], [-2.0], "hardtanh"), ([[1], [0]], None, None))
    assert count_transitions(model, seg(-2, 2), closed=False) == 4
    # and with ReLU6 on top of HardSigmoid: h in [0, 1], z = 12 h - 3 crosses 0 and 6
    model = net(([[1, 0]], None, "hardsigmoid"), ([[12]], [-3.0], "relu6"), ([[1]], None, None))
    assert count_transitions(model, seg(-1, 1), closed=False) == 2 + 2


def test_torch_modules_supported():
    model = net(([[1, 0], [0, 1]], [0.5, 0.0], nn.ReLU()), ([[1, -1]], None, nn.Hardtanh(-0.2, 0.2)),
                ([[1]], None, None))
    square = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float64)
    assert count_transitions(model, square) == dense_transitions(model, square, k=1 << 14)


def random_setup(act, seed, d=6, width=12, depth=4, verts=5):
    model = build_mlp(d, width, depth, 3, act, init_scale=2.0, seed=seed).double()
    v = 3.0 * torch.randn(verts, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model, v


@pytest.mark.parametrize("act", ["relu", "relu6", "hardtanh", "hardsigmoid"])
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_never_exceeds_exact_and_converges(act, seed):
    model, v = random_setup(act, seed)
    exact = count_transitions(model, v)
    assert exact > 0
    dense = [dense_transitions(model, v, k) for k in (2 ** 6, 2 ** 10, 2 ** 14, 2 ** 21)]
    assert all(x <= exact for x in dense), (dense, exact)
    assert dense[0] <= dense[-1]
    assert dense[-1] == exact, (dense, exact)


def test_batch_equals_one_by_one_and_open_paths():
    model, _ = random_setup("relu", 3)
    vs = torch.randn(4, 7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    got = count_transitions_batch(model, vs).tolist()
    assert got == [count_transitions(model, v) for v in vs]
    # small edge batches give the same counts
    assert transitions_per_edge(model, vs, max_edges=3).sum(1).tolist() == got
    for v in vs[:2]:
        assert count_transitions(model, v, closed=False) == dense_transitions(model, v, 1 << 16,
                                                                              closed=False)


def test_tanh_dense_only():
    model, v = random_setup("tanh", 0)
    with pytest.raises(ValueError, match="dense_transitions"):
        count_transitions(model, v)
    # tanh's code is the sign; the dense count equals the brute-force sign changes
    k = 512
    from workers.transitions import polygon_points
    c = codes(model, polygon_points(v, k)).int()
    assert dense_transitions(model, v, k) == int((torch.roll(c, -1, 0) - c).abs().sum())


@pytest.mark.parametrize("act", ["tanh", "relu", "relu6", "hardtanh", "hardsigmoid"])
def test_sampled_count_equals_the_dense_count(act):
    # The interpolated first layer and the chunked samples give Eq. 1's number: against the
    # dense count (every sample through the network, one polygon at a time), closed and open,
    # with k across several chunks (a chunk holds 2^18 / width samples) and not a multiple of
    # the number of edges.
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    for depth in (2, 4):
        model = build_mlp(6, 256, depth, 3, act, 1.0, seed=depth)
        vs = torch.randn(3, 7, 6, generator=gen, dtype=torch.float64) * 2
        for closed in (True, False):
            for k in (2, 1000, 2 * 1024 + 3):
                got = sampled_transitions(model, vs, k, closed=closed).tolist()
                assert got == [dense_transitions(model, v, k, closed=closed) for v in vs], (
                    depth, closed, k)
    # a pre-activation float32 cannot see: two equal first-layer units, and a second-layer unit
    # computing 1 * h_a - (1 - 1e-9) * h_b = 1e-9 h_a (float32 rounds its weight to -1 and
    # gets 0): its sign follows h_a's, which only float64 sees, so the sampled count must
    # evaluate those samples again in float64 to equal the dense one
    for act in ("tanh", "relu"):
        model = build_mlp(6, 8, 3, 3, act, 1.0, seed=1).double()
        with torch.no_grad():
            model[0].weight[1] = model[0].weight[0]
            model[2].weight[0] = 0.0
            model[2].weight[0, 0], model[2].weight[0, 1] = 1.0, -(1 - 1e-9)
        want = [dense_transitions(model, v, 999) for v in vs]
        assert sampled_transitions(model, vs, 999).tolist() == want
    # float32 overflow: partial sums of 2e38 become inf - inf in the second layer, where
    # float64 gets -1e38; those samples are evaluated again in float64
    big = nn.Sequential(nn.Linear(1, 4, bias=False), PaperActivation("relu"),
                        nn.Linear(4, 1, bias=False), PaperActivation("relu"),
                        nn.Linear(1, 2, bias=False)).double()
    with torch.no_grad():
        big[0].weight.fill_(2e38)
        big[2].weight.copy_(torch.tensor([[1.0, 1.0, -1.5, -1.5]]))
        big[4].weight.fill_(1.0)
    line = torch.tensor([[[0.5], [1.0]]], dtype=torch.float64)
    for closed in (True, False):
        assert sampled_transitions(big, line, 20, closed).tolist() == [
            dense_transitions(big, line[0], 20, closed)]
    # float32 overflow in the first layer's interpolation (|zb - za| > 3.4e38) and a partial
    # sum of the next product overflowing to -inf, hidden by the ReLU after it (a reviewer's
    # cases): those samples are evaluated again in float64
    wide = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False),
                         nn.ReLU(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        wide[0].weight.copy_(torch.tensor([[1e38, 0.0], [0.0, 0.5e38]]))
        wide[2].weight.copy_(torch.tensor([[-1e-30, 1e-30]]))
        wide[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    tri = torch.tensor([[[-3.0, 1.0], [2.0, 1.0], [-1.5, 1.0]]], dtype=torch.float64)
    for closed in (True, False):
        assert sampled_transitions(wide, tri, 4, closed).tolist() == [
            dense_transitions(wide, tri[0], 4, closed)]
    big2 = nn.Sequential(nn.Linear(5, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False),
                         nn.ReLU(), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        big2[0].weight.copy_(torch.tensor([[1.0] * 5, [0.0, 0, 0, 0, 1e-30]]))
        big2[2].weight.copy_(torch.tensor([[-1.0, 3e38], [1e-29, 1.0]]))
        big2[4].weight.fill_(1.0)
    ramp = torch.stack([torch.linspace(-1, 1, 4)[:, None].expand(-1, 5) * 3e37
                        + torch.tensor([0, 0, 0, 0, 1e30])], 0).double()
    for closed in (True, False):
        assert sampled_transitions(big2, ramp, 50, closed).tolist() == [
            dense_transitions(big2, ramp[0], 50, closed)]
    # with biases, torch's own modules
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 40), nn.ReLU6(),
                          nn.Linear(40, 3)).double()
    assert sampled_transitions(model, vs, 777).tolist() == [dense_transitions(model, v, 777)
                                                             for v in vs]
    with pytest.raises(ValueError, match="k: must be >= 2"):
        sampled_transitions(model, vs, 1)


def test_sampled_count_goes_to_float64_when_most_samples_are_unsure(monkeypatch):
    # past workers.layers.UNSURE_LIMIT the remaining chunks skip the float32 pass, same counts
    import workers.transitions as tr

    model = build_mlp(6, 64, 4, 3, "tanh", 1.0, seed=2)
    vs = torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = [dense_transitions(model, v, 10000) for v in vs]  # 3 chunks of 4096 a loop
    fast_calls = []
    real = tr._upper_changes
    monkeypatch.setattr(tr, "_upper_changes", lambda h, z, ex, m, ws32=None, st=None:
                        fast_calls.append(ws32 is not None) or real(h, z, ex, m, ws32, st))
    monkeypatch.setattr("workers.layers.UNSURE_LIMIT", -1.0)
    assert sampled_transitions(model, vs, 10000).tolist() == want
    assert fast_calls[0] and not any(fast_calls[1:]) and len(fast_calls) > 2


def test_unsupported_module_is_named():
    with pytest.raises(ValueError, match="GELU"):
        count_transitions(nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 2)), seg(-1, 1))
    with pytest.raises(ValueError, match=r"\[V, d\]"):
        count_transitions(build_mlp(2, 3, 2, 2, "relu"), torch.zeros(3))


def test_translation_path_is_the_closed_loop_of_shifts():
    img = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    path = translation_path(img)
    assert path.shape == (5, 30)
    for s in range(5):
        want = torch.cat([img[:, :, -s:], img[:, :, :-s]], dim=-1) if s else img
        assert torch.equal(path[s], want.reshape(-1))
    # one more shift after the last vertex is the first vertex again: the loop closes
    assert torch.equal(torch.roll(path[-1].reshape(2, 3, 5), 1, -1).reshape(-1), path[0])
    assert translation_path(img[0]).shape == (5, 15)


def test_ellipse_through_three_points():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 10, generator=g, dtype=torch.float64)
    e = ellipse_through(*p)
    torch.testing.assert_close(e.points(torch.tensor(THROUGH_ANGLES, dtype=torch.float64)), p)
    # the circumcircle of the triangle maps to the ellipse: centre is the centroid
    torch.testing.assert_close(e.centre, p.mean(0))
    r = random_ellipse(10, g)
    assert torch.count_nonzero(r.centre) == 0
    pts = r.points(angles(8))
    torch.testing.assert_close(pts[0], r.u)
    torch.testing.assert_close(pts[2], r.v, atol=1e-12, rtol=0)


def test_pick_three():
    y = torch.tensor([0, 1, 1, 2, 1, 0, 2, 3])
    g = torch.Generator().manual_seed(1)
    same = pick_three(y, True, g)
    assert len(set(same)) == 3 and len(set(y[same].tolist())) == 1
    diff = pick_three(y, False, g)
    assert len(set(y[diff].tolist())) == 3


def test_ellipse_profile_matches_exact_count():
    model, _ = random_setup("relu", 2)
    e = random_ellipse(6, torch.Generator().manual_seed(3))
    prof = ellipse_profile(model, e, k=256)
    pts = e.points(angles(256))
    assert int(prof["transitions"].sum()) == count_transitions(model, pts)
    torch.testing.assert_close(prof["density"].sum() * (2 * math.pi / 256),
                               prof["transitions"].sum().double())
    assert prof["jacobian_norm"].shape == (256,)


def test_crossings_close_to_an_edge_end_are_ordered_on_every_edge():
    # on an edge from 0 to 1: layer 1 crosses at 1 - 1e-11 and 1 - 0.5e-11; the layer-2 neuron
    # h1 - 3 h2 - 2e-12 crosses 0 twice between them and the end. A sort key that rounds t
    # (e.g. edge + t/2 in float64) misorders these knots on edges with a large index.
    c1, c2 = 1 - 1e-11, 1 - 0.5e-11
    model = net(([[1.0], [1.0]], [-c1, -c2], "relu"), ([[1.0, -3.0]], [-2e-12], "relu"),
                ([[1.0]], None, None))
    n_edges = 200_001
    x = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(n_edges // 2 + 1)[: n_edges + 1, None]
    per_edge = transitions_per_edge(model, x[None], closed=False)[0]
    assert per_edge.tolist() == [4] * n_edges


def test_supports_exact_names_the_networks_the_exact_count_handles():
    from torch import nn

    from workers.models import build_mlp
    from workers.transitions import supports_exact

    assert supports_exact(build_mlp(4, 8, 3, 3, "hardsigmoid"))
    assert supports_exact(nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 3)))
    assert not supports_exact(build_mlp(4, 8, 3, 3, "tanh"))
    assert not supports_exact(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)))
    assert not supports_exact(nn.Sequential(nn.Linear(4, 3)))  # no hidden layer


# --- Tanh's code is the sign (issue 22, item 14) ----------------------------------------------

# The paper's breakpoints (A.4; PAPER_NOTES "Networks"), written here, not read from the code
PAPER_BREAKPOINTS = {"relu": (0.0,), "relu6": (0.0, 6.0), "tanh": (0.0,),
                     "hardtanh": (-1.0, 1.0), "hardsigmoid": (-0.5, 0.5)}


def test_every_activation_has_the_papers_breakpoints():
    from workers.activations import ACTIVATIONS

    assert {k: tuple(a.breakpoints) for k, a in ACTIVATIONS.items()} == PAPER_BREAKPOINTS


def _tanh_circle_net(depth: int):
    """A bias-free tanh network on R^2 whose transitions around the circle of radius r are
    known analytically: layer 1 is the identity (z = (r cos t, r sin t): each unit changes
    sign twice), layer 2 computes tanh(z1) - tanh(z2), zero where cos t = sin t (tanh is
    injective): two sign changes; each further layer multiplies by 1, keeping those two."""
    model = build_mlp(2, 2, depth, 2, "tanh", seed=0).double()
    lin = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        lin[0].weight.copy_(torch.eye(2, dtype=torch.float64))
        lin[1].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]], dtype=torch.float64))
        for m in lin[2:-1]:
            m.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    return model


@pytest.mark.parametrize("depth,want", [(2, 4), (3, 4 + 2 + 0), (5, 4 + 2 + 2 + 2 + 0)])
def test_tanh_transitions_of_a_hand_built_network_are_its_sign_changes(depth, want):
    """Issue 22 item 14: moving Tanh's breakpoint from 0 to 0.5 changed the transitions of
    every tanh network and passed every test (they compared the counts with each other).
    Around the circle of radius 0.3 (the 32-gon through it), the hidden units of
    ``_tanh_circle_net`` change sign 4 times in layer 1, twice per unit computing
    tanh(z1) - tanh(z2) or a copy of it, never for a unit fixed at 0: ``want``. With a
    breakpoint at 0.5 no unit would cross it (|z| <= 0.3 in layer 1, <= 2 tanh(0.3 / sqrt 2) =
    0.42 above). The second hidden layer's units are one live unit and one dead (weight 0)."""
    model = _tanh_circle_net(depth)
    t = torch.arange(32, dtype=torch.float64) * (2 * math.pi / 32) + 0.01
    circle = 0.3 * torch.stack([t.cos(), t.sin()], dim=1)
    k = 4096
    assert dense_transitions(model, circle, k) == want
    assert sampled_transitions(model, circle[None], k).tolist() == [want]
    # the code of each unit is its sign, at points where the signs are known
    c = codes(model, torch.tensor([[0.25, -0.1], [-0.2, 0.05]], dtype=torch.float64))
    assert c[0, :2].tolist() == [1, 0] and c[1, :2].tolist() == [0, 1]
    if depth > 2:  # tanh(0.25) - tanh(-0.1) > 0; tanh(-0.2) - tanh(0.05) < 0
        assert c[0, 2] == 1 and c[1, 2] == 0


def test_a_count_beyond_memory_is_undefined_not_a_killed_process(monkeypatch):
    """The exact count's pieces past its memory bound (here 2^12 values; a trained width-1
    HardTanh network of depth 65 at init_scale 8 reaches any bound): CountTooLarge, and
    transitions_test is undefined with that reason, never a process killed for memory."""
    from workers import transitions
    from workers.data import load_data
    from workers.measures import MeasureInputs, evaluate_outcomes
    from workers.models import build_mlp
    from workers.results.spec import TrainSpec
    from workers.train import train_model

    monkeypatch.setattr(transitions, "MAX_KNOT_ELEMENTS", 1 << 12)
    d = load_data("digits", train_size=60, test_size=30)
    m = build_mlp(64, 1, 65, 10, "hardtanh", 8.0, 1)
    train_model(m, d, "sgd", 0.01, 32, TrainSpec(steps=10, check_every=5), 1)
    m.eval()
    x = d.x_test.flatten(1)[:1]
    out = evaluate_outcomes(MeasureInputs(m, x_test=x, image_shape=(1, 8, 8)),
                            ["transitions_test"], {"transitions_test": {"points": 1}})
    o = out["transitions_test"]
    assert o.value is None and o.error.startswith("undefined") and "linear pieces" in o.error


def test_pieces_finer_than_float64_resolves_make_the_count_undefined_not_inflated():
    """A trained width-1 HardTanh network of depth 65 at init_scale 8: its slopes multiply by
    about 8 a layer; from about layer 30 on crossings fall in pieces float64 cannot place, and
    counted, rounding flips doubled the knots a layer (6 million pieces by layer 50, and 111
    'crossings' on an edge where dense sampling sees 64). Undefined, with the reason; a regular
    network's count is unchanged (the exact-vs-dense tests above)."""
    from workers import transitions
    from workers.data import load_data
    from workers.models import build_mlp
    from workers.results.spec import TrainSpec
    from workers.train import train_model
    from workers.trajectories import translation_path

    d = load_data("digits", train_size=60, test_size=30)
    m = build_mlp(64, 1, 65, 10, "hardtanh", 8.0, 1)
    train_model(m, d, "sgd", 0.01, 32, TrainSpec(steps=10, check_every=5), 1)
    m.eval()
    path = translation_path(d.x_test[0].reshape(1, 8, 8))
    edge = torch.stack([path[5], path[6]])[None]
    with pytest.raises(transitions.CountUnresolved, match="finer than float64 resolves"):
        transitions.transitions_per_edge(m, edge, closed=False)
    # independently: the dense count's code changes along the edge, one unit per layer at most
    # once per breakpoint (a width-1 chain of monotone maps): at most 2 x 64
    ts = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None]
    c = transitions.codes(m, edge[0, 0].double() * (1 - ts) + edge[0, 1].double() * ts)
    assert 0 < int((c[1:] != c[:-1]).sum()) <= 128
