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

from sweep.commands import sweep_command
from sweep.config import ConfigError, SweepConfig
from sweep.driver import check_gpus
from workers.results.layout import WEIGHTS
from workers.results.resume import result_index
from workers.results.spec import TrialSpec
from workers.results.storage import store


def missing(out, specs, retry: set | None = None) -> dict[str, list[str]]:
    """trial_id -> the measures of its spec (``spec.metrics.active_measures()``) whose value at
    the current version and the spec's settings is not stored, for every ``ok`` trial;
    ``retry``: stored keys to treat as missing (values that raised)."""
    from workers.measures import REGISTRY, load_modules, resolved_settings, settings_key
    from workers.results.measure_table import stored_keys

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
                    device: str, num_threads: int, metrics: dict,
                    trial_timeout: float | None = None,
                    token: str | None = None) -> list[tuple[str, str | None]]:
    """On a worker: for each (trial spec JSON, measure names joined by ','), rebuild the trained
    network from its weights (and the initial one from its seed, if a measure needs it), load
    its data, evaluate, write each value. Returns (trial_id, error or None, values that raised)
    per trial: an error of the trial's environment (data, weights) writes nothing, so a later
    call retries it. With ``trial_timeout`` (seconds) and the submission's ``token``, each
    trial's phase is marked for the driver (workers.phase, sweep.watch)."""
    import contextlib
    from dataclasses import replace

    import torch

    from workers.data import load_data
    from workers.models import load_model

    from workers.measures import raised
    from workers.results.measure_table import write_outcome
    from workers.phase import PhaseMarker, set_phase, tick
    from workers.results.spec import MetricSpec
    from workers.trial import initial_model, measure

    torch.set_num_threads(max(1, num_threads))
    ms = MetricSpec(**{**metrics, "measures": tuple(metrics["measures"]),
                       "measure_modules": tuple(metrics["measure_modules"])})
    marker = (PhaseMarker(out_dir, token, tick(trial_timeout))
              if trial_timeout and token else None)
    done = []
    with marker or contextlib.nullcontext():  # (closed, its last marker removed, on any error)
        for text, names in items:
            spec = TrialSpec.from_json(text, ms)
            only = replace(spec, metrics=replace(ms, measures=tuple(names.split(","))))
            if marker is not None:
                marker.begin(spec.trial_id)  # (and the previous trial's marker removed)
            try:
                d = spec.data
                set_phase("loading data")
                data = load_data(d.name, data_root, download, d.train_size, d.test_size,
                                 d.random_labels, d.seed, device)
                set_phase("loading weights")
                model = load_model(out_dir, spec.trial_id).to(device).eval()
                outcomes = measure(model, data, only, initial_model(only, data, device))
                set_phase("writing")
                for o in outcomes.values():
                    write_outcome(out_dir, spec.trial_id, o, replace=True)
                done.append((spec.trial_id, None,
                             sum(raised(o.error) for o in outcomes.values())))
            except Exception as e:
                done.append((spec.trial_id, f"{type(e).__name__}: {e}"[:500], 0))
    return done


def _select(out, specs) -> None:
    """Record the version and settings asked for now (load_results shows those values)."""
    from workers.measures import REGISTRY, load_modules, resolved_settings
    from workers.results.measure_table import write_selection

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
    from workers.results.measure_table import read_values

    t = read_values(out).to_pandas()
    bad = t[[raised(e) if isinstance(e, str) else False for e in t.error]]
    return {(r.trial_id, r.measure, int(r.version), settings_key(json.loads(r.settings)))
            for r in bad.itertuples()}


def run(cfg: SweepConfig, out, specs, log, lock=None,
        retry_errors: bool = False, again: tuple = ()) -> dict[str, int]:
    """Evaluate what is missing (see ``missing``; with ``retry_errors`` also the values whose
    measure raised) on Ray for ``specs`` (a list, or a sweep.driver.Plan streamed twice);
    returns counts: trials measured, values written, values that
    raised, trials skipped for lack of weights, trials whose evaluation failed (``damaged``:
    of those, the trials whose weights file is damaged, named with the ``sweep measure
    --retrain`` command that repairs them; ``again``: the overrides that command repeats)."""
    from dataclasses import asdict

    import ray.exceptions as rex

    from sweep.driver import KILL_GRACE_S, start_ray
    from sweep.watch import Watch, first_line, retried_errors
    from workers.checkpoint import parse_budget

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
    damaged: list[str] = []  # trials whose weights file could not be loaded
    # no retries by Ray (its retries of memory-monitor kills are unbounded): this loop retries
    remote = ray.remote(_measure_remote).options(num_cpus=res.cpus_per_trial,
                                                 num_gpus=res.gpus_per_trial, max_retries=0)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // res.cpus_per_trial))
    per_task = max(1, min(res.trials_per_task, math.ceil(len(items) / (2 * slots))))
    units = [items[i:i + per_task] for i in range(0, len(items), per_task)]
    out_dir = os.path.abspath(out.location) if out.local else out.location
    metrics = asdict(cfg.metric_spec())
    limit = parse_budget(res.trial_timeout, "resources.trial_timeout")
    args = (out_dir, cfg.dataset.root, cfg.dataset.download,
            "cuda" if res.gpus_per_trial > 0 else "cpu",
            max(1, math.floor(res.cpus_per_trial)), metrics, limit)
    max_in_flight = res.max_in_flight or 2 * slots
    watch = Watch(out, limit, res.trial_timeout, slots=slots, log=log)
    watch.clear_stale()
    # pending: ref -> (unit, attempt, token); queue: (unit, attempt), popped from the end
    pending, queue, timed_out = {}, [(u, 0) for u in reversed(units)], {}
    log(f"measures: {sum(len(n) for n in runnable.values())} values of {len(runnable)} trials "
        f"to evaluate" + (f" ({counts['no_weights']} trials without saved weights skipped)"
                          if counts["no_weights"] else ""))
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            unit, attempt = queue.pop()
            token = watch.token(len(unit))
            pending[remote.remote(unit, *args, token)] = (unit, attempt, token)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        by_token = {v[2]: r for r, v in pending.items() if v[2] is not None}
        for token, tid, seconds in watch.overdue():  # over resources.trial_timeout: kill
            ref = by_token.get(token)
            if ref is not None and ref not in timed_out:
                m = watch.marker(tid, token)
                timed_out[ref] = (tid, m.get("phase") or "", seconds, watch.message(m, seconds),
                                  time.monotonic())
                ray.cancel(ref, force=True)
        waited = [r for r, v in timed_out.items()  # killed, yet its worker lives on: given up
                  if r in pending and r not in ready and time.monotonic() - v[-1] > KILL_GRACE_S]
        for ref in [*ready, *waited]:
            unit, attempt, token = pending.pop(ref)
            try:
                results = ray.get(ref, timeout=0 if ref in waited else None)
                watch.finished(token)
                timed_out.pop(ref, None)  # (it finished before it was killed)
            except Exception as e:
                watch.finished(token, [TrialSpec.from_json(t).trial_id for t, _ in unit],
                               killed=True)
                if ref in timed_out:
                    unit, results, rest = _after_timeout(out, unit, *timed_out.pop(ref)[:-1],
                                                         cfg.metric_spec())
                    queue.extend((u, attempt) for u in reversed(rest))
                elif isinstance(e, retried_errors()) and attempt < res.max_retries:
                    parts = ([[it] for it in unit] if isinstance(e, rex.OutOfMemoryError)
                             else [unit])  # (one by one after a memory-monitor kill)
                    queue.extend((p, attempt + 1) for p in reversed(parts))
                    log(f"note: a measure task of {len(unit)} trial(s) ended with "
                        f"{type(e).__name__}; running it again (retry {attempt + 1} of "
                        f"{res.max_retries})")
                    continue
                else:  # nothing recorded: a later call evaluates them
                    why = f"{first_line(e)} ({attempt + 1} attempt{'s' if attempt else ''})"
                    results = [(TrialSpec.from_json(t).trial_id, why, 0) for t, _ in unit]
            for (tid, err, raised), (_, names) in zip(results, unit):
                if err is None:
                    counts["trials"] += 1
                    counts["values"] += len(names.split(","))
                    counts["raised"] += raised
                else:
                    counts["failed"] += 1
                    if err.startswith("DamagedWeights:"):  # (workers.models.DamagedWeights)
                        damaged.append(tid)
                        err = err.partition("; train its network again")[0]
                    log(f"measures of trial {tid} not evaluated: {err}")
        if lock is not None:
            lock.check()
    counts["damaged"] = len(damaged)
    other = counts["failed"] - len(damaged)
    log(f"measures: {counts['values']} values of {counts['trials']} trials in "
        f"{time.perf_counter() - t0:.1f} s"
        + (f"; {other} trials failed (run sweep measure again)" if other else "")
        + (f"; {len(damaged)} trials have a damaged weights file: train their networks again "
           "(the weights only: their results stay) and evaluate with: "
           + sweep_command("measure", out, "--retrain", ",".join(sorted(damaged)), *again)
           if damaged else "")
        + (f"; {counts['raised']} values raised (reasons: analysis.load_measures; once the "
           "measure is fixed: sweep measure ... --retry-errors)" if counts["raised"] else "")
        + (f"; {counts['no_weights']} trials have no saved weights" if counts["no_weights"]
           else ""))
    return counts


def _after_timeout(out, unit, trial_id: str | None, phase: str, seconds: float, error: str, ms):
    """The outcome of a measure task killed over resources.trial_timeout while trial
    ``trial_id`` was in ``phase`` (its marker's; ``error``: sweep.watch.Watch.message), as
    (the items settled, their results as ``_measure_remote`` gives them, the units still to
    run). The trials before it had finished (a task runs its items in order: counted, their
    values written); one stuck ``measuring <name>`` gets that value recorded as raised with
    ``error`` (a later call runs it with --retry-errors only) and its other measures run again;
    one stuck elsewhere (data, weights, writing) is failed, nothing written (a later call
    retries it); the trials after it run again. ``trial_id`` None (the driver's clock: no
    marker said which trial ran): every trial of the task is failed with ``error``, nothing
    recorded (a later call evaluates what is missing; values the task wrote stay)."""
    from workers.measures import REGISTRY, Outcome, resolved_settings
    from workers.results.measure_table import write_outcome

    ids = [TrialSpec.from_json(t).trial_id for t, _ in unit]
    if trial_id not in ids:  # (a marker names a trial of its task: only None)
        return list(unit), [(t, error, 0) for t in ids], []
    i = ids.index(trial_id)
    settled = list(unit[:i])
    results = [(t, None, 0) for t in ids[:i]]
    text, names = unit[i]
    rest = [list(unit[i + 1:])] if unit[i + 1:] else []
    stuck = phase[len("measuring "):] if phase.startswith("measuring ") else None
    if stuck in names.split(",") and stuck in REGISTRY:
        settings = resolved_settings(stuck, ms.measure_settings().get(stuck))
        write_outcome(out, trial_id, Outcome(stuck, None, REGISTRY[stuck].version, settings,
                                             seconds, error), replace=True)
        settled.append((text, stuck))
        results.append((trial_id, None, 1))
        others = [n for n in names.split(",") if n != stuck]
        if others:
            rest.insert(0, [(text, ",".join(others))])
    else:
        settled.append((text, names))
        results.append((trial_id, error, 0))
    return settled, results, rest


STUDIES = ("ellipse_k", "boundary_grid", "boundary_extent")  # run only while a trial trains


class MeasureStopped(Exception):
    """SIGTERM during `sweep measure`: the values written are kept."""


def measure_sweep(sweep_dir, overrides: list[str] = (), retry_errors: bool = False,
                  retrain: tuple[str, ...] = ()) -> dict[str, int]:
    """`sweep measure SWEEP_DIR [measures=[...]] [metrics.*=...] [cluster.*=...]`: evaluate the
    missing values under the sweep's lock; returns the counts of ``run``. ``retry_errors``:
    evaluate again the values whose measure raised (fixed since). ``retrain``: ids of finished
    trials whose networks are first trained again to write their weights files anew (the
    weights only: see ``retrain_weights``); ConfigError for an id that is not an ok trial of
    the sweep."""
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
    if retrain:
        ok = {t for t, r in result_index(out, trust_journal=True).items() if r["status"] == "ok"}
        bad = [t for t in retrain if t not in ok]
        if bad:
            raise ConfigError(f"--retrain: {bad[0]} is not a finished (ok) trial of {out}; "
                              "allowed: ids of its ok trials, comma-separated (sweep status, "
                              "analysis.load_results)")
    if cfg.cluster.address is not None:  # before any work: one line if it cannot be used
        from sweep.driver import start_ray

        start_ray(cfg)

    def on_term(signum, frame):
        raise MeasureStopped()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with DriverLock(out, "measure", log=log) as lock:
            plan = Plan(out, cfg.metric_spec())
            if retrain:
                retrain_trials(cfg, out, plan, retrain, log)
            counts = run(cfg, out, plan, log, lock, retry_errors=retry_errors,
                         again=tuple(overrides))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not any(counts.values()):
        log(f"measures: nothing to evaluate ({', '.join(cfg.measures)} are stored for every "
            "finished trial)")
    return counts


def retrain_trials(cfg: SweepConfig, out, plan, ids, log) -> int:
    """Train the networks of the ok trials ``ids`` again on Ray and write their weights files
    anew where the network reproduces the trial's record (workers.retrain.retrain_weights: the
    records and measure values stay as they are); logs one line per trial. A retraining over
    ``resources.trial_timeout`` is killed like a trial (sweep.watch): its line names the limit
    and the phase it was in, nothing is written for it, and the others go on. Returns how many
    were written."""
    import time

    from sweep.driver import KILL_GRACE_S, start_ray
    from sweep.watch import Watch, first_line
    from workers.checkpoint import parse_budget
    from workers.retrain import retrain_weights

    specs = list(_among(plan, set(ids)))
    ray = start_ray(cfg)
    res = cfg.resources
    check_gpus(ray, res.gpus_per_trial)
    remote = ray.remote(retrain_weights).options(num_cpus=res.cpus_per_trial,
                                                 num_gpus=res.gpus_per_trial, max_retries=0)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // res.cpus_per_trial))
    limit = parse_budget(res.trial_timeout, "resources.trial_timeout")
    watch = Watch(out, limit, res.trial_timeout, slots=slots, log=log)
    watch.clear_stale()
    out_dir = os.path.abspath(out.location) if out.local else out.location
    log(f"retrain: training the networks of {len(specs)} trials again to write their weights")
    pending = {}  # ref -> (spec, token)
    for s in specs:
        token = watch.token()
        pending[remote.remote(s, out_dir, cfg.dataset.root, cfg.dataset.download,
                              "cuda" if res.gpus_per_trial > 0 else "cpu",
                              max(1, math.floor(res.cpus_per_trial)), limit, token)] = (s, token)
    timed_out: dict = {}  # ref -> (error, when killed) of a retraining over the limit
    written = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        by_token = {v[1]: r for r, v in pending.items() if v[1] is not None}
        for token, tid, seconds in watch.overdue():  # over resources.trial_timeout: kill
            ref = by_token.get(token)
            if ref is not None and ref not in timed_out:
                timed_out[ref] = (watch.message(watch.marker(tid, token), seconds)
                                  + " (a longer limit: resources.trial_timeout=...)",
                                  time.monotonic())
                ray.cancel(ref, force=True)
        waited = [r for r, v in timed_out.items()  # killed, yet its worker lives on: given up
                  if r in pending and r not in ready and time.monotonic() - v[-1] > KILL_GRACE_S]
        for ref in [*ready, *waited]:
            spec, token = pending.pop(ref)
            try:
                why = ray.get(ref, timeout=0 if ref in waited else None)
                watch.finished(token)
                timed_out.pop(ref, None)  # (it finished before it was killed)
            except Exception as e:
                watch.finished(token, [spec.trial_id], killed=True)
                why = timed_out.pop(ref)[0] if ref in timed_out else first_line(e)
            if why is None:
                written += 1
                log(f"retrain: trial {spec.trial_id}: weights written again (the network "
                    "reproduces its record)")
            else:
                log(f"retrain: trial {spec.trial_id}: weights not written: {why}")
    return written
