"""Training a finished trial's network again to write its weights file anew (``sweep measure
--retrain``), when the file is damaged or missing.

The trial's record and its measure values are the trial's result and stay as they are: the
network is trained exactly as its trial trained it (same data, initialization, optimizer and
seed: on CPU bitwise the same network, README "Checkpoints") and its weights are written only if
it reproduces the record's train and test loss and accuracy to the last bit, so that a value
measured later on these weights describes the network the record describes. A damaged file is
moved aside (``weights/damaged/``), never deleted.
"""

from __future__ import annotations

import time


def retrain_weights(spec, out_dir: str, data_root, download: bool, device: str = "cpu",
                    num_threads: int = 1, trial_timeout: float | None = None,
                    token: str | None = None) -> str | None:
    """Train ``spec``'s network again and write ``weights/<trial_id>.safetensors`` if it
    reproduces the trial's ``ok`` record (``train_acc``, ``test_acc``, ``train_loss``,
    ``test_loss`` equal as float64, and the same number of steps). Returns None when written,
    else why not (one line; nothing written). A trial stopped by its time budget
    (``stopped_by_time``) cannot be reproduced by step count alone and is refused. With
    ``trial_timeout`` (seconds, resources.trial_timeout) and the submission's ``token``, its
    phase is marked for the driver, which kills it over the limit (workers.phase,
    sweep.watch)."""
    import contextlib

    from workers.phase import PhaseMarker, tick

    marker = (PhaseMarker(out_dir, token, tick(trial_timeout))
              if trial_timeout and token else None)
    with marker or contextlib.nullcontext():
        if marker is not None:
            marker.begin(spec.trial_id, "reading its record")
        return _retrain(spec, out_dir, data_root, download, device, num_threads)


def _retrain(spec, out_dir: str, data_root, download: bool, device: str,
             num_threads: int) -> str | None:
    """``retrain_weights``' work, naming its phases (``set_phase``)."""
    from workers.data import load_data
    from workers.results.layout import damaged_weights_file, weights_file
    from workers.metrics import per_point_loss
    from workers.models import build_mlp
    from workers.phase import set_phase
    from workers.results.record import ResultError, Status, read_trial_summary
    from workers.results.sweep_dir import SweepDir
    from workers.train import strict_float32, train_model
    from workers.trial import _save_weights

    strict_float32(num_threads)
    tid = spec.trial_id
    try:
        row = read_trial_summary(out_dir, tid)
    except ResultError as e:
        return f"its result cannot be read ({e})"
    if row["status"] != Status.OK:
        return f"its status is {row['status']}: it has no trained network to restore"
    if row.get("stopped_by_time"):
        return ("it stopped by its time budget (train.time_budget) at a fallback step, which a "
                "run without that budget does not reproduce")
    d = spec.data
    set_phase("loading data")
    data = load_data(d.name, data_root, download, d.train_size, d.test_size, d.random_labels,
                     d.seed, device)
    model = build_mlp(data.input_dim, spec.width, spec.depth, data.info.num_classes,
                      spec.activation, spec.init_scale, spec.seed).to(device)
    model.eval()  # as workers.trial.execute leaves it before training
    set_phase("training")
    outcome = train_model(model, data, spec.optimizer, spec.lr, spec.batch_size, spec.train,
                          spec.seed, d.augment)
    if outcome.diverged or outcome.steps != row["steps"]:
        return (f"training again took {outcome.steps} steps"
                + (" and diverged" if outcome.diverged else "")
                + f", the record {row['steps']}: not the recorded network; nothing written")
    model.eval()
    set_phase("checking the record")
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        loss, correct = per_point_loss(model, x.flatten(1), y)
        now = {"acc": float(correct.double().mean()), "loss": float(loss.double().mean())}
        for k, v in now.items():
            was = row[f"{split}_{k}"]
            if v != was:
                return (f"the network trained again has {split}_{k} {v!r}, the record {was!r} "
                        "(training is not deterministic here, e.g. on a GPU, or the code "
                        "changed): not the recorded network; nothing written")
    set_phase("writing weights")
    st = SweepDir.of(out_dir)
    rel = weights_file(tid)
    if st.is_file(rel):  # the damaged file makes way, kept
        st.move(rel, damaged_weights_file(tid, time.time_ns()))
    _save_weights(out_dir, tid, model)
    return None
