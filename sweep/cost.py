"""A cost model of one trial: floating-point operations and peak memory, from its spec alone.

Used for the manifest (``est_flops``, ``est_memory_bytes``), to bias planning towards cheap
configurations as the paper did (A.5.5: "small configurations sampled more often"), and by a
scheduler to size resources. Estimates, not measurements: matmul work only (a multiply-add is
2 flops; a training example costs 6 flops per parameter: forward 2, backward 4).
"""

from __future__ import annotations

from workers.data import DATASETS
from workers.spec import TrialSpec

# optimizer state, in copies of the parameters (besides the parameters and their gradient)
_STATE_COPIES = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1, "lbfgs": 0}
_LBFGS_EVALS_PER_ITER = 1.25  # strong-Wolfe line search: mostly one evaluation per iteration
_FP32 = 4


def layer_dims(spec: TrialSpec) -> list[int]:
    info = DATASETS[spec.data.name]
    c, h, w = info.image_shape
    return [c * h * w] + [spec.width] * (spec.depth - 1) + [info.num_classes]


def n_params(spec: TrialSpec) -> int:
    dims = layer_dims(spec)
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def _sizes(spec: TrialSpec) -> tuple[int, int]:
    info = DATASETS[spec.data.name]
    return spec.data.train_size or info.train_size, spec.data.test_size or info.test_size


def estimate_flops(spec: TrialSpec) -> float:
    """Training (step budget, no early stop) plus evaluation (losses on both splits, the
    Jacobian norm with C - 1 backward rows per point)."""
    p = n_params(spec)
    n_train, n_test = _sizes(spec)
    if spec.optimizer == "lbfgs":
        iters = min(spec.train.steps, spec.train.lbfgs_max_iter)
        train = 6.0 * p * n_train * iters * _LBFGS_EVALS_PER_ITER
    else:
        train = 6.0 * p * (spec.batch_size or n_train) * spec.train.steps
    classes = layer_dims(spec)[-1]
    k = spec.metrics.jacobian_points
    jac_points = min(n_train, k or n_train) + min(n_test, k or n_test)
    evaluate = 2.0 * p * (n_train + n_test) + 2.0 * p * max(classes - 1, 1) * jac_points
    return train + evaluate


def estimate_memory(spec: TrialSpec) -> int:
    """Peak bytes: parameters, gradients and optimizer state; the data set as fp32 tensors; the
    activations of one batch kept for the backward pass; the Jacobian's backward rows."""
    dims = layer_dims(spec)
    p = n_params(spec)
    n_train, n_test = _sizes(spec)
    batch = n_train if spec.optimizer == "lbfgs" else (spec.batch_size or n_train)
    state = p * (2 + _STATE_COPIES[spec.optimizer])
    if spec.optimizer == "lbfgs":
        state += 2 * spec.train.lbfgs_history * p  # curvature pairs
    data = (n_train + n_test) * dims[0]
    activations = 2 * batch * sum(dims)
    jacobian = 1 << 24  # workers.metrics chunk bound
    return int(_FP32 * (state + data + activations + jacobian))


def resource_class(cpus: float, gpus: float) -> str:
    return "cpu" if gpus <= 0 else f"gpu:{gpus:g}"
