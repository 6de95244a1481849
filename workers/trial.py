"""One trial, end to end: data -> model -> training -> measures -> its files.

The trial's record (``trials/<id>.parquet``) is the trained network: its configuration, how
training went, accuracy and loss, and a snapshot of the built-in measures with their per-point
values. Every measure the configuration lists is evaluated through the registry
(``workers.measures``) and stored in the measures table (``measures/``), written before the
record, which alone marks the trial done.

``run_trial`` never raises for a problem of the trial itself: it records ``failed`` (with the
error text), ``oom`` or ``diverged`` and returns the summary, so a sweep goes on.
"""

from __future__ import annotations

import errno
import socket
import time
import traceback

import torch

from workers.data import load_data, planned_sizes
from workers.results.hyperparameters import values as hyperparameter_values
from workers.results.measure_table import write_outcome
from workers.metrics import per_point_loss
from workers.models import build_mlp, count_params
from workers.phase import set_phase
from workers.results.record import (points_columns, read_trial_summary, write_extra,
                                     write_trial)
from workers.results.layout import trial_file, weights_file
from workers.results.spec import RunContext, TrialSpec

NAN = float("nan")
METRIC_COLUMNS = (
    "train_acc", "test_acc", "train_loss", "test_loss", "gen_gap",
    "jacobian_norm_train", "jacobian_norm_test", "transitions_test",
)


def base_summary(spec: TrialSpec) -> dict:
    """The summary row of a trial that has not produced any numbers (yet). Every column has one
    meaning in the plan and the results: ``batch_size`` is the planned hyperparameter (null for
    full-batch L-BFGS), ``train_size``/``test_size`` the numbers of points, ``step_budget`` the
    budget and ``steps`` the steps run."""
    row = {
        "trial_id": spec.trial_id, "status": "failed", "error": None, "retryable": False,
        **hyperparameter_values(spec, planned_sizes(spec)),
        "steps": 0, "stopped_by_time": None, "input_dim": None, "num_classes": None,
        "n_params": None,
        "jacobian_points_train": 0, "jacobian_points_test": 0,
        "transitions_method": None, "transitions_k": None, "transitions_points": 0,
        "float64_agrees": None, "float64_rel_diff": NAN,
        "wall_time_s": NAN, "hostname": socket.gethostname(), "spec": spec.canonical(),
    }
    row.update({c: NAN for c in METRIC_COLUMNS})
    return row


def failure_summary(spec: TrialSpec, status: str, error: str) -> dict:
    row = base_summary(spec)
    row.update(status=status, error=error)
    return row


def nonfinite_outputs(loss_correct: dict) -> str | None:
    """Why the trained network is not a finite function (its float32 outputs overflow to inf
    or NaN on some train or test point, so its loss there is not finite), or None.
    ``loss_correct``: split -> (per-point loss [N], correct [N]) as ``per_point_loss`` gives."""
    bad = {split: int((~torch.isfinite(loss)).sum()) for split, (loss, _) in loss_correct.items()}
    if not any(bad.values()):
        return None
    where = ", ".join(f"{n} of {len(loss_correct[s][0])} {s} points" for s, n in bad.items() if n)
    return (f"non-finite outputs after training: the float32 network's loss is not finite on "
            f"{where} (its logits overflow)")


def float64_agreement(model, data) -> tuple[dict, dict]:
    """(the record's ``float64_agrees`` and ``float64_rel_diff``: whether the trained network
    evaluated in float64 is the float32 network that was scored, on every train and test point
    (workers.measures.precision.compare_precisions); the measures' cache entries it made: the
    float64 copy and the training points' check, which the measures then do not make again)."""
    from workers.measures.norms import _double
    from workers.measures.precision import compare_precisions

    m64 = _double(model)
    checks = [compare_precisions(model, m64, x.flatten(1)) for x in (data.x_train, data.x_test)]
    return ({"float64_agrees": all(c["agrees"] for c in checks),
             "float64_rel_diff": max(c["rel_diff"] for c in checks)},
            {"model64": m64, "float64_agreement": checks[0]})


def measure_inputs(model, data, spec: TrialSpec, init_model=None, cache: dict | None = None):
    """The registry's inputs for a trial's network: its train and test data as the model
    takes them ([N, d]), the image shape, the trial's data seed (point subsets) and its own
    seed (with the data seed, the Monte-Carlo draws); ``cache``: what is already computed."""
    from workers.measures import MeasureInputs

    return MeasureInputs(model, data.x_train.flatten(1), data.y_train, data.x_test.flatten(1),
                         data.y_test, init_model, tuple(data.info.image_shape), spec.data.seed,
                         spec.seed, dict(cache or {}))


def initial_model(spec: TrialSpec, data, device):
    """The network as initialized (rebuilt from the seed), if a measure of the trial needs it;
    else None."""
    from workers.measures import REGISTRY, load_modules

    load_modules(spec.metrics.measure_modules)
    if not any("init_model" in REGISTRY[n].needs for n in spec.metrics.active_measures()
               if n in REGISTRY):
        return None
    return build_mlp(data.input_dim, spec.width, spec.depth, data.info.num_classes,
                     spec.activation, spec.init_scale, spec.seed).to(device).eval()


def measure(model, data, spec: TrialSpec, init_model=None, cache: dict | None = None) -> dict:
    """The trial's measures (``spec.metrics.active_measures()``), name -> Outcome; a measure
    that raises is an Outcome with its error, the others still run."""
    from workers.measures import evaluate_outcomes, load_modules

    load_modules(spec.metrics.measure_modules)
    return evaluate_outcomes(measure_inputs(model, data, spec, init_model, cache),
                             spec.metrics.active_measures(), spec.metrics.measure_settings())


def _record(row: dict, points: list[dict], data, loss_correct: dict, outcomes: dict) -> None:
    """The built-in measures' values in the trial's row (a snapshot; the measures table holds
    every value), with the columns their registration names (``register(record=...)``: how
    the value was computed, from its info), and the per-point records: loss and correctness at
    every point where a built-in measure has a value."""
    from workers.measures import RECORD_MEASURES, REGISTRY

    for name in RECORD_MEASURES:
        o = outcomes.get(name)
        if o is not None and o.value is not None:
            row[name] = o.value
            row.update({col: o.info.get(key) for col, key in REGISTRY[name].record.items()})
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        jac = outcomes.get(f"jacobian_norm_{split}")
        jac = jac.points.get(split, {}) if jac is not None else {}
        trans = outcomes.get("transitions_test") if split == "test" else None
        trans = trans.points.get(split, {}) if trans is not None else {}
        idx = sorted(set(jac) | set(trans))
        if not idx:
            continue
        loss, correct = loss_correct[split]
        ii = torch.tensor(idx, dtype=torch.long)
        points.extend(points_columns(split, idx, y.cpu()[ii], [jac.get(i) for i in idx],
                                     loss.cpu()[ii], correct.cpu()[ii],
                                     [trans.get(i) for i in idx]))


def _studies(model, data, spec: TrialSpec, phase: str, setup: dict, extras: dict) -> None:
    """Ellipse profiles and boundary maps of ``model`` (phase "init" or "trained"), if asked."""
    from workers import studies

    m, seed = spec.metrics, spec.data.seed
    if m.ellipse_k > 0:
        if "ellipses" not in setup:
            setup["ellipses"] = studies.study_ellipses(data.x_train, data.y_train, seed)
        extras.setdefault("curves", []).extend(
            studies.ellipse_rows(model, setup["ellipses"], m.ellipse_k, phase))
    if m.boundary_grid > 0:
        if "plane" not in setup:
            setup["plane"] = studies.boundary_plane(data.x_train, data.y_train, seed)
        plane, idx = setup["plane"]
        out = studies.boundary_map(model, plane, m.boundary_grid, m.boundary_extent)
        extras.setdefault("grids", []).append({
            "phase": phase, "n": m.boundary_grid, "extent": m.boundary_extent,
            "boundary": out["boundary"].reshape(-1).tolist(),
            "predicted": out["predicted"].reshape(-1).tolist(),
            "anchor_labels": data.y_train.cpu()[idx].tolist()})


def _checkpointer(spec: TrialSpec, ctx: RunContext):
    """The trial's Checkpointer (workers.checkpoint), or None when checkpoints are off."""
    from workers.checkpoint import Checkpointer, parse_interval

    interval = parse_interval(ctx.checkpoint_every)
    if not interval.on:
        return None
    return Checkpointer(ctx.out_dir, spec.trial_id, spec.canonical(), interval)


def execute(spec: TrialSpec, ctx: RunContext) -> tuple[dict, list[dict], torch.nn.Module | None, dict]:
    """Train and evaluate; returns (summary, points, model, extra tables by kind). Raises on
    trial errors."""
    from workers.checkpoint import parse_budget
    from workers.train import TimeRule, train_model

    row = base_summary(spec)
    d = spec.data
    set_phase("loading data")
    data = load_data(d.name, ctx.data_root, ctx.download, d.train_size, d.test_size,
                     d.random_labels, d.seed, ctx.device)
    n_train = len(data.y_train)
    row.update(train_size=n_train, test_size=len(data.y_test), input_dim=data.input_dim,
               num_classes=data.info.num_classes)
    model = build_mlp(data.input_dim, spec.width, spec.depth, data.info.num_classes,
                      spec.activation, spec.init_scale, spec.seed).to(ctx.device)
    row["n_params"] = count_params(model)
    setup: dict = {}
    extras: dict[str, list[dict]] = {}
    model.eval()
    set_phase("off-data studies at initialization")
    _studies(model, data, spec, "init", setup, extras)
    rule = TimeRule(parse_budget(ctx.time_budget), ctx.fallback_steps) \
        if ctx.time_budget is not None else None
    set_phase("training")
    outcome = train_model(model, data, spec.optimizer, spec.lr, spec.batch_size, spec.train,
                          spec.seed, d.augment, checkpoint=_checkpointer(spec, ctx),
                          time_rule=rule)
    row["steps"] = outcome.steps
    row["stopped_by_time"] = outcome.stopped_by_time
    points: list[dict] = []
    if outcome.diverged:
        row.update(status="diverged", error=outcome.reason)
        return row, points, None, {}
    if outcome.out_of_time:  # no network to evaluate: the trial's own, final outcome
        row.update(status="failed", error=outcome.out_of_time)
        return row, points, None, {}
    model.eval()
    set_phase("evaluating the trained network")
    loss_correct = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        loss_correct[split] = per_point_loss(model, x.flatten(1), y)
    reason = nonfinite_outputs(loss_correct)
    if reason:  # finite weights whose outputs overflow: no network to score
        row.update(status="diverged", error=reason)
        return row, points, None, {}
    for split, (loss, correct) in loss_correct.items():
        row[f"{split}_acc"] = float(correct.double().mean())
        row[f"{split}_loss"] = float(loss.double().mean())
    row["gen_gap"] = row["train_acc"] - row["test_acc"]
    agreement, cache = float64_agreement(model, data)
    row.update(agreement)
    outcomes = measure(model, data, spec, init_model=initial_model(spec, data, ctx.device),
                       cache=cache)
    _record(row, points, data, loss_correct, outcomes)
    extras["measures"] = list(outcomes.values())
    set_phase("off-data studies after training")
    _studies(model, data, spec, "trained", setup, extras)
    row["status"] = "ok"
    return row, points, model, extras


_OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory",
                 "out of memory")


def is_out_of_memory(e: BaseException) -> bool:
    """Out of memory, however torch reports it: torch.OutOfMemoryError (CUDA), MemoryError, or
    the CPU allocator's RuntimeError."""
    cuda_oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(e, (cuda_oom, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _OOM_MESSAGES)


_NO_DEVICE = ("no CUDA GPUs are available", "Torch not compiled with CUDA enabled",
              "Found no NVIDIA driver", "CUDA driver version is insufficient",
              "invalid device ordinal", "CUDA-capable device", "no kernel image is available")
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EACCES, errno.EDQUOT,
                   errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def is_environment_failure(e: BaseException) -> bool:
    """A failure of where the trial ran, not of the trial: its data files missing on that
    worker (DataMissing), an import that fails there (ImportError), a device that is not there
    (CUDA unavailable, a bad device ordinal), a disk or file-table problem of the machine
    (ENOSPC, EROFS, EIO, EACCES, EDQUOT, EMFILE, ...). Recorded ``retryable`` so that ``sweep
    resume`` runs the trial again once the environment is fixed; anything else (a bad
    configuration, a NaN, a bug) is the trial's own and final."""
    from workers.data import DataMissing

    if isinstance(e, (DataMissing, ImportError)):
        return True
    if isinstance(e, OSError) and e.errno in _MACHINE_ERRNOS:
        return True
    return isinstance(e, (RuntimeError, AssertionError)) and any(m in str(e) for m in _NO_DEVICE)


def run_trial(spec: TrialSpec, ctx: RunContext) -> dict:
    """Run one trial and write its result file; returns the summary row (without points) of
    the result that stands on disk: this attempt's as written (not read back), or, if another
    attempt of the trial wrote its result first (a stale attempt, whose own is then dropped),
    that one, read back. A standing result file that cannot be read raises ResultError
    (workers.results.record)."""
    from workers.train import strict_float32

    t0 = time.perf_counter()
    strict_float32(ctx.num_threads)  # true float32 on a GPU as on a CPU (no TF32)
    points: list[dict] = []
    try:
        if ctx.dry_run:
            row, points, model, extras = {**base_summary(spec), "status": "ok",
                                          "error": "dry run: not trained"}, [], None, {}
        else:
            row, points, model, extras = execute(spec, ctx)
        set_phase("writing")
        if _finished_elsewhere(ctx.out_dir, spec.trial_id):
            # a stale attempt (its node stalled, Ray ran the trial again and that attempt
            # finished): the result, weights and values that stand describe one network, so
            # this attempt writes none of its files (its result row is dropped by write_trial)
            model, extras = None, {}
        if model is not None and ctx.save_weights:
            _save_weights(ctx.out_dir, spec.trial_id, model)
        for o in extras.pop("measures", []):  # before the result file, which marks the trial done
            write_outcome(ctx.out_dir, spec.trial_id, o)
        for kind, rows in extras.items():
            write_extra(ctx.out_dir, kind, spec.trial_id, rows)
    except Exception as e:
        points = []
        if is_out_of_memory(e):
            row = failure_summary(spec, "oom", f"{type(e).__name__}: {e}"[:2000])
        else:
            tb = traceback.format_exc(limit=-3)
            row = failure_summary(spec, "failed", f"{type(e).__name__}: {e}\n{tb}"[:4000])
            row["retryable"] = is_environment_failure(e)
    row["wall_time_s"] = time.perf_counter() - t0
    set_phase("writing")
    wrote = write_trial(ctx.out_dir, row, points)
    # the record that stands, so that what the driver journals is what is on disk: this
    # attempt's as stored, or, when its write was dropped because another attempt's result was
    # there first, that one, read back
    row = wrote.summary if wrote.written else read_trial_summary(ctx.out_dir, spec.trial_id)
    if (ctx.checkpoint_every is not None and not ctx.keep_checkpoints
            and not row.get("retryable")):  # the result stands: its checkpoints are not needed
        from workers.checkpoint import remove_checkpoints

        remove_checkpoints(ctx.out_dir, spec.trial_id)
    return row


def _finished_elsewhere(out_dir: str, trial_id: str) -> bool:
    """Whether another attempt of the trial has written its result already (``sweep resume``
    moves a result it re-runs aside first, so a file there means a finished attempt)."""
    from workers.results.storage import store

    return store(out_dir).exists(trial_file(trial_id))


def _save_weights(out_dir: str, trial_id: str, model: torch.nn.Module) -> None:
    from safetensors.torch import save

    from workers.results.storage import store

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    store(out_dir).write_bytes(weights_file(trial_id), save(state))
