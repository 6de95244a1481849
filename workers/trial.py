"""One trial, end to end: data -> model -> training -> metrics -> one Parquet file.

``run_trial`` never raises for a problem of the trial itself: it records ``failed`` (with the
error text), ``oom`` or ``diverged`` and returns the summary, so a sweep goes on.
"""

from __future__ import annotations

import socket
import time
import traceback

import torch

from workers.data import load_data
from workers.metrics import jacobian_norm, per_point_loss
from workers.models import build_mlp, count_params
from workers.results import points_columns, weights_path, write_trial, atomic_write_bytes_via
from workers.spec import RunContext, TrialSpec

NAN = float("nan")
METRIC_COLUMNS = (
    "train_acc", "test_acc", "train_loss", "test_loss", "gen_gap",
    "jacobian_norm_train", "jacobian_norm_test",
)


def base_summary(spec: TrialSpec) -> dict:
    """The summary row of a trial that has not produced any numbers (yet)."""
    d = spec.data
    row = {
        "trial_id": spec.trial_id, "status": "failed", "error": None,
        "dataset": d.name, "train_size": d.train_size, "test_size": d.test_size,
        "random_labels": d.random_labels, "augment": d.augment,
        "width": spec.width, "depth": spec.depth, "activation": spec.activation,
        "optimizer": spec.optimizer, "lr": spec.lr, "batch_size": spec.batch_size,
        "init_scale": spec.init_scale, "seed": spec.seed, "step_budget": spec.train.steps,
        "steps": 0, "input_dim": None, "num_classes": None, "n_params": None,
        "jacobian_points_train": 0, "jacobian_points_test": 0,
        "wall_time_s": NAN, "hostname": socket.gethostname(), "spec": spec.canonical(),
    }
    row.update({c: NAN for c in METRIC_COLUMNS})
    return row


def failure_summary(spec: TrialSpec, status: str, error: str) -> dict:
    row = base_summary(spec)
    row.update(status=status, error=error)
    return row


def _jacobian_subset(n: int, k: int | None, seed: int) -> torch.Tensor:
    """The same seeded subset of points for every trial on the same data."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:k].sort().values


def _evaluate(model, x, y, k, seed, split, row, points):
    loss, correct = per_point_loss(model, x, y)
    idx = _jacobian_subset(len(y), k, seed).to(x.device)
    jac = jacobian_norm(model, x[idx])
    row[f"{split}_acc"] = float(correct.double().mean())
    row[f"{split}_loss"] = float(loss.double().mean())
    row[f"jacobian_norm_{split}"] = float(jac.double().mean())
    row[f"jacobian_points_{split}"] = len(idx)
    points.extend(points_columns(split, idx.cpu(), y[idx].cpu(), jac.cpu(), loss[idx].cpu(),
                                 correct[idx].cpu()))


def execute(spec: TrialSpec, ctx: RunContext) -> tuple[dict, list[dict], torch.nn.Module | None]:
    """Train and evaluate; returns (summary, points, model). Raises on trial errors."""
    from workers.train import train_model

    row = base_summary(spec)
    d = spec.data
    data = load_data(d.name, ctx.data_root, ctx.download, d.train_size, d.test_size,
                     d.random_labels, d.seed, ctx.device)
    n_train = len(data.y_train)
    row.update(train_size=n_train, test_size=len(data.y_test), input_dim=data.input_dim,
               num_classes=data.info.num_classes)
    if spec.batch_size is None:
        row["batch_size"] = n_train  # full batch
    model = build_mlp(data.input_dim, spec.width, spec.depth, data.info.num_classes,
                      spec.activation, spec.init_scale, spec.seed).to(ctx.device)
    row["n_params"] = count_params(model)
    outcome = train_model(model, data, spec.optimizer, spec.lr, spec.batch_size, spec.train,
                          spec.seed, d.augment)
    row["steps"] = outcome.steps
    points: list[dict] = []
    if outcome.diverged:
        row.update(status="diverged", error=outcome.reason)
        return row, points, None
    model.eval()
    k = spec.metrics.jacobian_points
    _evaluate(model, data.x_train.flatten(1), data.y_train, k, d.seed, "train", row, points)
    _evaluate(model, data.x_test.flatten(1), data.y_test, k, d.seed, "test", row, points)
    row["gen_gap"] = row["train_acc"] - row["test_acc"]
    row["status"] = "ok"
    return row, points, model


def run_trial(spec: TrialSpec, ctx: RunContext) -> dict:
    """Run one trial and write its result file; returns the summary row (without points)."""
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, ctx.num_threads))
    points: list[dict] = []
    try:
        row, points, model = execute(spec, ctx)
        if model is not None and ctx.save_weights:
            _save_weights(ctx.out_dir, spec.trial_id, model)
    except (torch.OutOfMemoryError, MemoryError) as e:
        row = failure_summary(spec, "oom", f"{type(e).__name__}: {e}"[:2000])
    except Exception as e:
        tb = traceback.format_exc(limit=-3)
        row = failure_summary(spec, "failed", f"{type(e).__name__}: {e}\n{tb}"[:4000])
    row["wall_time_s"] = time.perf_counter() - t0
    write_trial(ctx.out_dir, row, points)
    return row


def _save_weights(out_dir: str, trial_id: str, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes_via(weights_path(out_dir, trial_id), lambda tmp: save_file(state, tmp))
