"""The built-in measures: Novak et al. 2018's sensitivity measures (§3).

``jacobian_norm_train`` / ``jacobian_norm_test``: the mean over points of ||J(x)||_F, J the
Jacobian of the softmax output with respect to the input (workers.metrics.jacobian_norm); test
inputs only, no labels. ``transitions_test``: the mean over test points of the number of
linear-region transitions along the point's translation loop (§3, A.1, Eq. 1): exact for
piecewise-linear networks, Eq. 1 with ``k`` samples for Tanh. Their settings are set like
every measure's (``measure_settings.transitions_test.points``); the configuration's older
``metrics.jacobian_points``, ``metrics.transitions_points`` and ``metrics.transitions_k`` name
the same settings (``workers.results.measure_values.METRIC_ALIASES``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.measures import MeasureInputs, MeasureValue, Undefined, register

# torch: imported by the functions that compute, so that registering these measures does not
# (workers.measures, tests/test_cli_imports.py)
if TYPE_CHECKING:  # (annotations only)
    import torch


def point_subset(n: int, k: int | None, seed: int) -> torch.Tensor:
    """The same seeded subset of k of n points for every trial on the same data (sorted). Every
    measure draws from the same permutation, so a smaller subset is inside a larger one."""
    import torch

    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:k].sort().values


def _jacobian(x: torch.Tensor, model, points: int | None, seed: int, split: str) -> MeasureValue:
    from workers.metrics import jacobian_norm

    idx = point_subset(len(x), points, seed)
    if not len(idx):
        raise Undefined(f"no {split} points")
    xs = x[idx.to(x.device)]
    jac = jacobian_norm(model, xs).cpu().double()
    value = float(jac.mean())
    if value == 0.0:  # a network whose logits do not move with the input is a true 0; one
        saturated = saturated_points(model, xs)  # whose softmax is saturated is not
        if saturated:
            raise Undefined(f"the Jacobian norm is below float64's range: the softmax is "
                            f"saturated at {saturated} of {len(idx)} {split} points (logit "
                            "margins above about 745): a tie at 0 of every such network")
        why = _zero_jacobian(model, xs, split)  # nor one whose float32 values underflowed
        if why:
            raise Undefined(why)
    return MeasureValue(value, {split: dict(zip(idx.tolist(), jac.tolist()))},
                        {"points": len(idx)})


def _zero_jacobian(model, x: torch.Tensor, split: str) -> str | None:
    """Why a Jacobian norm of exactly 0 at every point of x [N, d] is not the network's value,
    or None where it is (a network locally constant there: ReLU units all off, HardTanh all
    clipped). Not the value: the float64 copy's norm is above 0 (float32's activations or
    derivatives underflowed: e.g. ReLU, depth 65, init_scale 0.01), or the network has Tanh
    units, whose derivative is never 0 (1 - tanh^2 below float64's range from |h| of about
    19: saturated units, e.g. init_scale 8)."""
    import torch

    from workers.activations import PaperActivation
    from workers.metrics import jacobian_norm
    from workers.measures.norms import _double

    if next(model.parameters()).dtype != torch.float64:
        j64 = jacobian_norm(_double(model), x.to(torch.float64)).cpu().double()
        if float(j64.max()) > 0:
            return (f"the float32 network's Jacobian norm underflows to 0 at every one of the "
                    f"{len(x)} {split} points, where its float64 copy's is up to "
                    f"{float(j64.max()):.3g}: its activations or their derivatives are below "
                    "float32's range")
    if any((isinstance(m, PaperActivation) and m.name == "tanh") or isinstance(m, torch.nn.Tanh)
           for m in model.modules()):
        return (f"the Jacobian norm is below float64's range at every one of the {len(x)} "
                f"{split} points: Tanh units saturate (1 - tanh^2 rounds to 0), while its "
                "true value is above 0: a tie at 0 of every such network")
    return None


def saturated_points(model, x: torch.Tensor) -> int:
    """How many of the points x [N, d] have a softmax saturated in float64 (every class but the
    top one at probability exactly 0: logit margins above about 745), where the softmax's
    Jacobian, and any sum of its entries, is 0 in float64 however the logits move."""
    import torch

    from workers.metrics import SCORE_CHUNK

    count = 0
    with torch.no_grad():
        for a in range(0, len(x), SCORE_CHUNK):
            z = model(x[a:a + SCORE_CHUNK]).to(torch.float64)
            if z.shape[1] < 2:
                return 0
            e = torch.exp(z - z.amax(dim=1, keepdim=True))
            count += int(((e > 0).sum(dim=1) == 1).sum())
    return count


@register("jacobian_norm_train", source="Novak et al. 2018, §3 (Jacobian norm), on train points",
          needs=("model", "train_inputs"), record={"jacobian_points_train": "points"},
          group="jacobian_norm")
def jacobian_norm_train(inputs: MeasureInputs, *, points: int | None = None) -> MeasureValue:
    """Mean ||J(x)||_F over a seeded subset of ``points`` training inputs (None: all)."""
    return _jacobian(inputs.x_train, inputs.model, points, inputs.seed, "train")


@register("jacobian_norm_test", source="Novak et al. 2018, §3 (Jacobian norm)",
          needs=("model", "test_inputs"), record={"jacobian_points_test": "points"},
          group="jacobian_norm")
def jacobian_norm_test(inputs: MeasureInputs, *, points: int | None = None) -> MeasureValue:
    """Mean ||J(x)||_F over a seeded subset of ``points`` test inputs (None: all)."""
    return _jacobian(inputs.x_test, inputs.model, points, inputs.seed, "test")


def loop_transitions(model, images: torch.Tensor, k: int) -> tuple[torch.Tensor, str, int | None]:
    """Transitions along the translation loop of each image ([n, C, H, W]) -> ([n] float64,
    method, k): exact for piecewise-linear networks, Eq. 1 with k samples for Tanh."""
    import torch

    from workers.trajectories import translation_path
    from workers.transitions import count_transitions_batch, sampled_transitions, supports_exact

    exact = supports_exact(model)
    method, used_k = ("exact", None) if exact else ("sampled", k)
    if len(images) == 0:  # no loops: no counts (the measure's mean is then NaN: undefined)
        return torch.zeros(0, dtype=torch.float64), method, used_k
    paths = torch.stack([translation_path(im) for im in images.cpu()])
    count = count_transitions_batch if exact else (lambda m, p: sampled_transitions(m, p, k))
    return count(model, paths).double(), method, used_k


def _require_loops_agree(inputs: MeasureInputs, images: torch.Tensor) -> None:
    """The counts read the network's activation codes in float64 (exactly, or where float32's
    rounding could flip one): Undefined unless its float64 copy is the function that was
    scored on the loops' points (every translate of every image; workers.measures.precision)."""
    import torch

    from workers.measures.norms import _cached, _double
    from workers.measures.precision import compare_precisions, disagreement
    from workers.trajectories import translation_path

    model = inputs.model
    if len(images) == 0 or next(model.parameters()).dtype == torch.float64:
        return
    m64 = _cached(inputs, "model64", lambda: _double(model))
    pts = torch.cat([translation_path(im) for im in images.cpu()]).to(inputs.x_test.device)
    check = compare_precisions(model, m64, pts)
    if not check["agrees"]:
        raise Undefined(disagreement(check, "points of the translation loops"))


@register("transitions_test", source="Novak et al. 2018, §3 and A.1, Eq. 1 (transitions)",
          needs=("model", "test_inputs", "image_shape"),
          lower={"points": 0, "k": 2},  # points 0: off (``MetricSpec.active_measures``)
          record={"transitions_points": "points", "transitions_method": "method",
                  "transitions_k": "k"},
          version=2)  # 2: undefined where the float64 copy disagrees in a hidden layer
# (workers.measures.precision, 2026-12-08): version 1 counted an underflowed float32 network's
# float64 copy (its activation patterns are not the scored network's)
def transitions_test(inputs: MeasureInputs, *, points: int | None = 100,
                     k: int = 4096) -> MeasureValue:
    """Mean number of transitions along the translation loops of a seeded subset of
    ``points`` test images (None: all; 0: the measure is off); Tanh networks by Eq. 1 with
    ``k`` samples per loop."""
    x = inputs.x_test
    idx = point_subset(len(x), points, inputs.seed)
    images = x[idx.to(x.device)].reshape(len(idx), *inputs.image_shape)
    from workers.transitions import CountTooLarge

    _require_loops_agree(inputs, images)
    try:
        trans, method, used_k = loop_transitions(inputs.model, images, k)
    except CountTooLarge as e:  # a count beyond any machine's memory: no value, and why
        raise Undefined(str(e)) from None
    return MeasureValue(float(trans.mean()) if len(trans) else float("nan"),
                        {"test": dict(zip(idx.tolist(), trans.tolist()))},
                        {"points": len(idx), "method": method, "k": used_k})
