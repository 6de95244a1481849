"""A cost model of one trial: floating-point operations and peak memory, from its spec alone.

Used for the manifest (``est_flops``, ``est_memory_bytes``), to bias planning towards cheap
configurations as the paper did (A.5.5: "small configurations sampled more often"), and by a
scheduler to size resources. Estimates, not measurements: matmul work only (a multiply-add is
2 flops; a training example costs 6 flops per parameter: forward 2, backward 4).
"""

from __future__ import annotations

from workers.data import DATASETS
from workers.results.hyperparameters import HYPERPARAMETERS
from workers.results.spec import TrialSpec

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
    st = spec.metrics.measure_settings()  # (None: every point)
    k_train, k_test = (st.get(f"jacobian_norm_{s}", {}).get("points") for s in ("train", "test"))
    jac_points = min(n_train, k_train or n_train) + min(n_test, k_test or n_test)
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


def worker_memory(cfg) -> tuple[int, str]:
    """(bytes a worker holds, where the figure comes from): ``resources.worker_memory_gb``;
    else, for a sweep on an existing cluster (``cluster.address``), the largest ``memory``
    resource of its live nodes that can run a trial (``cpus_per_trial`` CPUs and
    ``gpus_per_trial`` GPUs; this connects the process to the cluster, as the launch that
    follows does); else, or when the cluster cannot be reached or reports no such node, this
    machine's total memory."""
    gb = cfg.resources.worker_memory_gb
    if gb is not None:
        return int(gb * (1 << 30)), "resources.worker_memory_gb"
    import psutil

    here = int(psutil.virtual_memory().total)
    address = cfg.cluster.address
    if address is None:
        return here, "this machine's memory; resources.worker_memory_gb sets another"
    from sweep.runtime import largest_node_memory, start_ray

    try:
        ray = start_ray(cfg)
        largest = largest_node_memory(ray, cfg.resources.cpus_per_trial,
                                      cfg.resources.gpus_per_trial)
    except Exception as e:  # unreachable: the launch itself will say so
        first = (str(e).strip().splitlines() or [""])[0]  # (whole: it may hold a command)
        return here, (f"this machine: the cluster at {address} did not answer "
                      f"({type(e).__name__}: {first}); set resources.worker_memory_gb")
    if largest <= 0:
        return here, (f"this machine: no node of the cluster at {address} can run a trial "
                      "now; set resources.worker_memory_gb")
    return largest, f"the largest node of the cluster at {address} that can run a trial"


def human_bytes(n: float) -> str:
    """A byte count for people: "23.5 GB"."""
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} KB"


# what names a trial in a plan summary: the hyperparameters that decide its cost
# (``Hyperparameter.cost``) of the network and its training, not of its data (the same size for
# most trials): width, depth, optimizer, batch_size
DESCRIBED = tuple(h for h in HYPERPARAMETERS if h.cost and not h.field.startswith("data."))
# how a value reads there where not as ``_shown`` says
_SHOWN = {"batch_size": lambda v: "full batch" if v is None else f"batch {v}"}


def _shown(name: str, value) -> str:
    """A hyperparameter's value for people: ``_SHOWN``, else a string alone (the optimizer),
    else "<name> <value>"."""
    if name in _SHOWN:
        return _SHOWN[name](value)
    return value if isinstance(value, str) else f"{name} {value}"


def _describe(values) -> str:
    """A trial for people from its values of DESCRIBED, in order: "width 64, depth 3, sgd,
    batch 32"."""
    return ", ".join(_shown(h.name, v) for h, v in zip(DESCRIBED, values))


def plan_summary(specs: list[TrialSpec], cfg) -> dict:
    """What a plan will cost and what cannot run, before anything runs: per resource class the
    trials, estimated FLOPs and device-hours (core-hours at ``resources.cpu_flops`` per core,
    GPU-hours at ``resources.gpu_flops`` per GPU), the share of all FLOPs held by the costliest
    1% of trials, the largest per-trial memory against a worker's (``worker_memory``), and the
    trials that fit nowhere (estimated memory above a worker's) with the largest of them.
    JSON-able. ``manifest_summary``: the same from a written plan's estimates."""
    return _summary([estimate_flops(s) for s in specs], [estimate_memory(s) for s in specs],
                    [s.trial_id for s in specs],
                    lambda i: _describe(h.get(specs[i]) for h in DESCRIBED), cfg)


MANIFEST_COLUMNS = ("trial_id", "est_flops", "est_memory_bytes",
                    *(h.name for h in DESCRIBED))  # what ``manifest_summary`` reads of the plan


def manifest_summary(table, cfg) -> dict:
    """``plan_summary`` from a manifest's columns (a pyarrow table holding MANIFEST_COLUMNS):
    the estimates written with the plan, without parsing one spec (10^6 trials in a second)."""
    col = {k: table.column(k) for k in MANIFEST_COLUMNS}

    def describe(i: int) -> str:
        return _describe(col[h.name][i].as_py() for h in DESCRIBED)

    return _summary(col["est_flops"].to_numpy(), col["est_memory_bytes"].to_numpy(),
                    col["trial_id"], describe, cfg)


def _summary(flops, memory, ids, describe, cfg) -> dict:
    import math

    import numpy as np

    res = cfg.resources
    flops = np.asarray(flops, dtype=np.float64)
    memory = np.asarray(memory, dtype=np.int64)
    n = len(flops)
    total = float(flops.sum())
    rc = resource_class(res.cpus_per_trial, res.gpus_per_trial)
    per_device = res.gpu_flops if res.gpus_per_trial > 0 else res.cpu_flops
    unit = "GPU-hours" if res.gpus_per_trial > 0 else "core-hours"
    k = max(1, math.ceil(0.01 * n))
    top = float(np.sort(flops)[::-1][:k].sum()) if n else 0.0
    limit, source = worker_memory(cfg)
    over = np.flatnonzero(memory > limit)
    over = over[np.argsort(-memory[over], kind="stable")]
    ident = (lambda i: ids[i].as_py()) if hasattr(ids, "to_pylist") else ids.__getitem__
    return {
        "trials": n,
        "flops": total,
        "classes": {rc: {"trials": n, "flops": total, unit: total / per_device / 3600,
                         "flops_per_second_per_device": per_device}},
        "top_1_percent_share": top / total if total > 0 else 0.0,
        "largest_memory_bytes": int(memory.max()) if n else 0,
        "largest_memory_trial": describe(int(np.argmax(memory))) if n else None,
        "worker_memory_bytes": limit,
        "worker_memory_source": source,
        "infeasible": int(len(over)),
        "infeasible_largest": [{"trial_id": ident(int(i)), "memory_bytes": int(memory[i]),
                                "trial": describe(int(i))} for i in over[:5]],
    }


def summary_lines(summary: dict) -> list[str]:
    """The summary as the lines ``sweep plan`` and ``sweep launch`` print."""
    lines = [f"plan: {summary['trials']:,} trials, {summary['flops']:.3g} FLOPs estimated"]
    for rc, c in summary["classes"].items():
        unit = next(k for k in c if k.endswith("-hours"))
        lines.append(f"plan: {rc}: {c['trials']:,} trials, {c[unit]:.3g} {unit} at "
                     f"{c['flops_per_second_per_device']:.3g} FLOP/s per "
                     f"{unit.rsplit('-', 1)[0]}")
    lines.append(f"plan: the costliest 1% of trials hold {100 * summary['top_1_percent_share']:.0f}%"
                 " of the FLOPs")
    lines.append(f"plan: largest trial memory {human_bytes(summary['largest_memory_bytes'])} "
                 f"({summary['largest_memory_trial']}) against {human_bytes(summary['worker_memory_bytes'])}"
                 f" per worker ({summary['worker_memory_source']}); "
                 f"{summary['infeasible']:,} trials fit nowhere")
    return lines


def infeasible_message(summary: dict) -> str:
    """One line refusing a plan with trials that fit nowhere."""
    big = summary["infeasible_largest"][0]
    return (f"plan: {summary['infeasible']:,} of {summary['trials']:,} trials need more memory "
            f"than a worker's {human_bytes(summary['worker_memory_bytes'])} "
            f"({summary['worker_memory_source']}), the largest {human_bytes(big['memory_bytes'])} "
            f"({big['trial']}); allowed: plan.infeasible=replace with resources.worker_memory_gb "
            "(draw feasible trials instead), "
            "plan.infeasible=keep (run them; they fail as oom), or resources.worker_memory_gb="
            "<the memory of your workers>")
