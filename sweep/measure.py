"""`sweep measure`: evaluate registered measures on a sweep's saved networks, no training.

Only missing or outdated values run: for every finished (``ok``) trial with saved weights and
every measure asked for, the value of (trial, measure, the measure's current version, its
settings) is computed unless its file is already in ``measures/``. Work is dispatched on Ray
like trials (several trials per task); a second call finds nothing to do. Trial result files
are never touched.
"""

from __future__ import annotations

import json
import math
import os

from sweep.config import ConfigError, SweepConfig
from sweep.driver import check_gpus
from workers.layout import WEIGHTS
from sweep.resume import result_index
from workers.spec import TrialSpec
from workers.storage import store


def missing(out, specs, retry: set | None = None) -> dict[str, list[str]]:
    """trial_id -> the measures of its spec (``spec.metrics.active_measures()``) whose value at
    the current version and the spec's settings is not stored, for every ``ok`` trial;
    ``retry``: stored keys to treat as missing (values that raised)."""
    from workers.measures import REGISTRY, load_modules, resolved_settings, settings_key
    from workers.measures.table import stored_keys

    have = stored_keys(out)
    ok = {t for t, r in result_index(out, trust_journal=True).items() if r["status"] == "ok"}
    todo: dict[str, list[str]] = {}
    if retry is not None:  # values that raised count as missing
        have -= retry
    asked: dict = {}  # MetricSpec -> [(measure, version, settings key)]: the same for a plan
    for s in _among(specs, ok):
        if s.metrics not in asked:
            load_modules(s.metrics.measure_modules)
            settings = s.metrics.measure_settings()
            asked[s.metrics] = [(name, REGISTRY[name].version,
                                 settings_key(resolved_settings(name, settings.get(name))))
                                for name in s.metrics.active_measures()]
        for name, version, key in asked[s.metrics]:
            if (s.trial_id, name, version, key) not in have:
                todo.setdefault(s.trial_id, []).append(name)
    return todo


def _among(specs, ids):
    """The specs whose trial id is in ``ids``, in plan order; from a streamed Plan only those
    rows are parsed."""
    from sweep.driver import Plan

    if isinstance(specs, Plan):
        return specs.specs([i for i, t in enumerate(specs.ids) if t in ids])
    return (s for s in specs if s.trial_id in ids)


def _measure_remote(items: list[tuple[str, str]], out_dir: str, data_root, download: bool,
                    device: str, num_threads: int, metrics: dict) -> list[tuple[str, str | None]]:
    """On a worker: for each (trial spec JSON, measure names joined by ','), rebuild the trained
    network from its weights (and the initial one from its seed, if a measure needs it), load
    its data, evaluate, write each value. Returns (trial_id, error or None, values that raised)
    per trial: an error of the trial's environment (data, weights) writes nothing, so a later
    call retries it."""
    import torch

    from workers.data import load_data
    from workers.models import load_model
    from dataclasses import replace

    from workers.measures import raised
    from workers.measures.table import write_outcome
    from workers.spec import MetricSpec
    from workers.trial import initial_model, measure

    torch.set_num_threads(max(1, num_threads))
    ms = MetricSpec(**{**metrics, "measures": tuple(metrics["measures"]),
                       "measure_modules": tuple(metrics["measure_modules"])})
    done = []
    for text, names in items:
        spec = TrialSpec.from_json(text, ms)
        only = replace(spec, metrics=replace(ms, measures=tuple(names.split(","))))
        try:
            d = spec.data
            data = load_data(d.name, data_root, download, d.train_size, d.test_size,
                             d.random_labels, d.seed, device)
            model = load_model(out_dir, spec.trial_id).to(device).eval()
            outcomes = measure(model, data, only, initial_model(only, data, device))
            for o in outcomes.values():
                write_outcome(out_dir, spec.trial_id, o, replace=True)
            done.append((spec.trial_id, None, sum(raised(o.error) for o in outcomes.values())))
        except Exception as e:
            done.append((spec.trial_id, f"{type(e).__name__}: {e}"[:500], 0))
    return done


def _select(out, specs) -> None:
    """Record the version and settings asked for now (load_results shows those values)."""
    from workers.measures import REGISTRY, load_modules, resolved_settings
    from workers.measures.table import write_selection

    first = next(iter(specs), None)
    if first is None:
        return
    ms = first.metrics
    load_modules(ms.measure_modules)
    settings = ms.measure_settings()
    write_selection(out, {n: (REGISTRY[n].version, resolved_settings(n, settings.get(n)))
                          for n in ms.active_measures()})


def raised_keys(out) -> set:
    """Stored keys of values whose measure raised (not the 'undefined' ones)."""
    from workers.measures import raised, settings_key
    from workers.measures.table import read_values

    t = read_values(out).to_pandas()
    bad = t[[raised(e) if isinstance(e, str) else False for e in t.error]]
    return {(r.trial_id, r.measure, int(r.version), settings_key(json.loads(r.settings)))
            for r in bad.itertuples()}


def run(cfg: SweepConfig, out, specs, log, lock=None,
        retry_errors: bool = False) -> dict[str, int]:
    """Evaluate what is missing (see ``missing``; with ``retry_errors`` also the values whose
    measure raised) on Ray for ``specs`` (a list, or a sweep.driver.Plan streamed twice);
    returns counts: trials measured, values written, values that
    raised, trials skipped for lack of weights, trials whose evaluation failed."""
    from dataclasses import asdict

    from sweep.driver import start_ray

    import time

    t0 = time.perf_counter()
    out = store(out)
    _select(out, specs)
    retry = raised_keys(out) if retry_errors else None
    todo = missing(out, specs, retry)
    counts = {"trials": 0, "values": 0, "no_weights": 0, "failed": 0, "raised": 0}
    if not todo:
        return counts
    weights = {e.name.split(".")[0] for e in out.list(WEIGHTS, ".safetensors")}
    runnable = {t: n for t, n in todo.items() if t in weights}
    counts["no_weights"] = len(todo) - len(runnable)
    if not runnable:
        raise ConfigError(
            f"SWEEP_DIR: {out}: {len(todo)} finished trials lack values of "
            f"{sorted({n for v in todo.values() for n in v})}, but none has saved weights (the "
            "sweep ran with save_weights=false); measures are evaluated on the saved networks: "
            "run a new sweep with save_weights=true")
    items = [(s.canonical() if s.legacy_id is None else s.canonical_v1(),
              ",".join(runnable[s.trial_id])) for s in _among(specs, runnable)]
    ray = start_ray(cfg)
    res = cfg.resources
    check_gpus(ray, res.gpus_per_trial)
    remote = ray.remote(_measure_remote).options(num_cpus=res.cpus_per_trial,
                                                 num_gpus=res.gpus_per_trial,
                                                 max_retries=res.max_retries)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // res.cpus_per_trial))
    per_task = max(1, min(res.trials_per_task, math.ceil(len(items) / (2 * slots))))
    units = [items[i:i + per_task] for i in range(0, len(items), per_task)]
    out_dir = os.path.abspath(out.location) if out.local else out.location
    metrics = asdict(cfg.metric_spec())
    args = (out_dir, cfg.dataset.root, cfg.dataset.download,
            "cuda" if res.gpus_per_trial > 0 else "cpu",
            max(1, math.floor(res.cpus_per_trial)), metrics)
    max_in_flight = res.max_in_flight or 2 * slots
    pending, queue = {}, list(reversed(units))
    log(f"measures: {sum(len(n) for n in runnable.values())} values of {len(runnable)} trials "
        f"to evaluate" + (f" ({counts['no_weights']} trials without saved weights skipped)"
                          if counts["no_weights"] else ""))
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            unit = queue.pop()
            pending[remote.remote(unit, *args)] = unit
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit = pending.pop(ref)
            try:
                results = ray.get(ref)
            except Exception as e:  # the task died after its retries: nothing recorded
                results = [(TrialSpec.from_json(t).trial_id, f"{type(e).__name__}", 0)
                           for t, _ in unit]
            for (tid, err, raised), (_, names) in zip(results, unit):
                if err is None:
                    counts["trials"] += 1
                    counts["values"] += len(names.split(","))
                    counts["raised"] += raised
                else:
                    counts["failed"] += 1
                    log(f"measures of trial {tid} not evaluated: {err}")
        if lock is not None:
            lock.check()
    log(f"measures: {counts['values']} values of {counts['trials']} trials in "
        f"{time.perf_counter() - t0:.1f} s"
        + (f"; {counts['failed']} trials failed (run sweep measure again)"
           if counts["failed"] else "")
        + (f"; {counts['raised']} values raised (reasons: analysis.load_measures; once the "
           "measure is fixed: sweep measure ... --retry-errors)" if counts["raised"] else "")
        + (f"; {counts['no_weights']} trials have no saved weights" if counts["no_weights"]
           else ""))
    return counts


STUDIES = ("ellipse_k", "boundary_grid", "boundary_extent")  # run only while a trial trains


class MeasureStopped(Exception):
    """SIGTERM during `sweep measure`: the values written are kept."""


def measure_sweep(sweep_dir, overrides: list[str] = (), retry_errors: bool = False) -> dict[str, int]:
    """`sweep measure SWEEP_DIR [measures=[...]] [metrics.*=...] [cluster.*=...]`: evaluate the
    missing values under the sweep's lock; returns the counts of ``run``. ``retry_errors``:
    evaluate again the values whose measure raised (fixed since)."""
    import signal

    from sweep.driver import Plan, log, open_out, stored_config
    from sweep.lock import DriverLock

    studies = [o.split("=")[0] for o in overrides
               if o.split("=")[0].lstrip("+~").removeprefix("metrics.") in STUDIES]
    if studies:
        raise ConfigError(f"measure: {', '.join(studies)}: the off-data studies (Fig. 2, 3) run "
                          "while a trial trains, before and after; sweep measure cannot add them "
                          "to finished trials; allowed: measures, measure_modules, "
                          "measure_settings.*, metrics.jacobian_points, "
                          "metrics.transitions_points, metrics.transitions_k, cluster.*, "
                          "resources.*")
    cfg = stored_config(sweep_dir, list(overrides), command="measure")
    if cfg.dry_run:
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is a dry run (dry_run=true): its trials "
                          "trained no networks to measure")
    out = open_out(cfg.out_dir())

    def on_term(signum, frame):
        raise MeasureStopped()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with DriverLock(out, "measure", log=log) as lock:
            counts = run(cfg, out, Plan(out, cfg.metric_spec()), log, lock,
                         retry_errors=retry_errors)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not any(counts.values()):
        log(f"measures: nothing to evaluate ({', '.join(cfg.measures)} are stored for every "
            "finished trial)")
    return counts
