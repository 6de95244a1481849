"""Measuring trials on Ray, the unit of work of `sweep measure` (and of a launch that asks for
measures its finished trials lack): which values are missing (``missing``), the task that
evaluates them on a trial's saved network (``_measure_remote``), and how its outcome lands (the
values written by the task, counted; a trial stuck over the limit, ``_after_timeout``). The loop
is sweep.dispatch.

Only missing or outdated values run: for every finished (``ok``) trial with saved weights and
every measure asked for, the value of (trial, measure, the measure's current version, its
settings) is computed unless its file is already in ``measures/``; a second call finds nothing
to do and writes nothing. Trial result files are never touched.
"""

from __future__ import annotations

import json
import math

from sweep.commands import sweep_command
from sweep.config import ConfigError, SweepConfig
from sweep.dispatch import DispatchStopped, Tasks, Work, stop_asked
from workers.results.plan_file import Plan
from workers.results.record import Status
from workers.results.spec import TrialSpec
from workers.results.sweep_dir import SweepDir


def missing(out, specs, retry: set | None = None) -> dict[str, list[str]]:
    """trial_id -> the measures of its spec (``spec.metrics.active_measures()``) whose value at
    the current version and the spec's settings is not stored, for every ``ok`` trial;
    ``retry``: stored keys to treat as missing (values that raised)."""
    from workers.measures import REGISTRY, load_modules, resolved_settings, settings_key
    from workers.results.measure_table import stored_keys

    d = SweepDir.of(out)
    have = stored_keys(d)
    ok = {t for t, r in d.index(trust_journal=True).items() if r["status"] == Status.OK}
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
    if isinstance(specs, Plan):
        return specs.specs([i for i, t in enumerate(specs.ids) if t in ids])
    return (s for s in specs if s.trial_id in ids)


def _measure_remote(items: list[tuple[str, str]], out_dir: str, data_root, download: bool,
                    device: str, num_threads: int, metrics: dict,
                    trial_timeout: float | None = None, token: str | None = None,
                    stop=None) -> list[tuple[str, str | None]]:
    """On a worker: for each (trial spec JSON, measure names joined by ','), rebuild the trained
    network from its weights (and the initial one from its seed, if a measure needs it), load
    its data, evaluate, write each value. Returns (trial_id, error or None, values that raised)
    per trial: an error of the trial's environment (data, weights) writes nothing, so a later
    call retries it. With ``trial_timeout`` (seconds) and the submission's ``token``, each
    trial's phase is marked for the driver (workers.phase, sweep.watch). ``stop``: the driver's
    stop flag (sweep.dispatch.stop_asked), asked before each trial: once it says stop, no more
    trial starts and the list ends there (nothing written for the others)."""
    import contextlib
    from dataclasses import replace

    from workers.data import load_data
    from workers.models import load_model

    from workers.measures import raised
    from workers.results.measure_table import write_outcome
    from workers.phase import PhaseMarker, set_phase, tick
    from workers.results.spec import MetricSpec
    from workers.train import strict_float32
    from workers.trial import initial_model, measure

    strict_float32(num_threads)
    ms = MetricSpec(**{**metrics, "measures": tuple(metrics["measures"]),
                       "measure_modules": tuple(metrics["measure_modules"])})
    marker = (PhaseMarker(out_dir, token, tick(trial_timeout))
              if trial_timeout and token else None)
    done = []
    with marker or contextlib.nullcontext():  # (closed, its last marker removed, on any error)
        for text, names in items:
            if stop_asked(stop):
                break  # the driver stopped: no new trial
            spec = TrialSpec.from_json(text, ms)
            only = replace(spec, metrics=replace(ms, measures=tuple(names.split(","))))
            if marker is not None:
                marker.begin(spec.trial_id)
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
            if marker is not None:  # (ended: the next stop-flag question is not its time)
                marker.end()
    return done


def module_of(modules) -> dict[str, str]:
    """measure name -> the entry of ``modules`` (``measure_modules``, loaded) that registers it,
    for the measures those modules register (the built-in ones are in none)."""
    from workers.measures import available

    builtin = set(available(()))
    return {n: m for m in modules for n in available((m,)) if n not in builtin}


def _select(out, specs) -> None:
    """Record the version and settings asked for now (load_results shows those values), and the
    module of each user measure (``module_of``: what `sweep measure` imports again, see
    sweep.measure.recorded_modules); the file is left as it is when it already says so."""
    from workers.measures import REGISTRY, load_modules, resolved_settings
    from workers.results.measure_table import read_selection, write_selection

    first = next(iter(specs), None)
    if first is None:
        return
    ms = first.metrics
    load_modules(ms.measure_modules)
    settings = ms.measure_settings()
    asked = {n: (REGISTRY[n].version, resolved_settings(n, settings.get(n)))
             for n in ms.active_measures()}
    modules = {n: m for n, m in module_of(ms.measure_modules).items() if n in asked}
    have = read_selection(out)
    if all(json.dumps(have.get(n), sort_keys=True)
           == json.dumps({"version": v, "settings": dict(st),
                          **({"module": modules[n]} if n in modules else {})}, sort_keys=True)
           for n, (v, st) in asked.items()):
        return
    write_selection(out, asked, modules)


def raised_keys(out) -> set:
    """Stored keys of values whose measure raised (not the 'undefined' ones)."""
    from workers.measures import raised, settings_key
    from workers.results.measure_table import read_values

    t = read_values(out).to_pandas()
    bad = t[[raised(e) if isinstance(e, str) else False for e in t.error]]
    return {(r.trial_id, r.measure, int(r.version), settings_key(json.loads(r.settings)))
            for r in bad.itertuples()}


class MeasureWork(Work):
    """Measure trials (sweep.dispatch.Work): a unit is a list of (trial spec JSON, measure
    names joined by ',') evaluated in order by one ``_measure_remote`` task, which writes the
    values itself; their outcome lands as counts (trials, values, values that raised, trials
    that failed: nothing written, a later call evaluates them), each failure logged, damaged
    weights files noted (``damaged``) for the ``--retrain`` advice."""

    def __init__(self, out, items: list[tuple[str, str]], per_task: int, remote, args: tuple,
                 ms, counts: dict[str, int], log):
        self.out, self.items, self.per_task = out, items, per_task
        self.remote, self.args, self.ms, self.log = remote, args, ms, log
        self.counts, self.total = counts, len(items)
        self.damaged: list[str] = []  # trials whose weights file could not be loaded

    def units(self, slots):
        """Up to ``per_task`` items per unit, but at least 2 units per trial the nodes can run
        at once (``slots()``, asked as each unit is formed: nodes that join later get units)."""
        i = 0
        while i < len(self.items):
            size = max(1, min(self.per_task, math.ceil(len(self.items) / (2 * max(1, slots())))))
            yield self.items[i:i + size]
            i += size

    def submit(self, unit, token, stop):
        return self.remote.remote(unit, *self.args, token, stop)

    def trial_ids(self, unit) -> list[str]:
        return [TrialSpec.from_json(t).trial_id for t, _ in unit]

    def done(self, unit, results) -> int:
        for (tid, err, raised), (_, names) in zip(results, unit):
            if err is None:
                self.counts["trials"] += 1
                self.counts["values"] += len(names.split(","))
                self.counts["raised"] += raised
            else:
                self.counts["failed"] += 1
                if err.startswith("DamagedWeights:"):  # (workers.models.DamagedWeights)
                    self.damaged.append(tid)
                    err = err.partition("; train its network again")[0]
                self.log(f"measures of trial {tid} not evaluated: {err}")
        return len(results)

    def unfinished(self, unit) -> tuple[list, int]:
        return list(unit), 0  # (evaluated again whole: missing() was read before the loop)

    def timed_out(self, unit, trial_id, phase, seconds, error) -> tuple[int, list[list]]:
        settled, results, rest = _after_timeout(self.out, unit, trial_id, phase, seconds, error,
                                                self.ms)
        return self.done(settled, results), rest

    def failed(self, unit, exc: BaseException, attempts: int) -> int:
        from sweep.watch import first_line

        # nothing recorded: a later call evaluates them
        why = f"{first_line(exc)} ({attempts} attempt{'s' if attempts > 1 else ''})"
        return self.done(unit, [(t, why, 0) for t in self.trial_ids(unit)])

    def postfix(self) -> dict:
        c = self.counts
        return dict(values=c["values"], failed=c["failed"])


def run(cfg: SweepConfig, out, specs, log, lock=None,
        retry_errors: bool = False, again: tuple = ()) -> dict[str, int]:
    """Evaluate what is missing (see ``missing``; with ``retry_errors`` also the values whose
    measure raised) on Ray for ``specs`` (a list, or a Plan streamed twice) in the dispatch loop
    (sweep.dispatch.run: signals, runtime loss, retries, time limits, progress); returns counts:
    trials measured, values written, values that raised, trials skipped for lack of weights,
    trials whose evaluation failed (``damaged``: of those, the trials whose weights file is
    damaged, named with the ``sweep measure --retrain`` command that repairs them; ``again``:
    the overrides that command repeats). Nothing is written when nothing is missing. Raises
    DispatchStopped (the values written are kept) after a signal or when Ray is gone."""
    import time
    from dataclasses import asdict

    t0 = time.perf_counter()
    out = SweepDir.of(out)
    retry = raised_keys(out) if retry_errors else None
    todo = missing(out, specs, retry)
    counts = {"trials": 0, "values": 0, "no_weights": 0, "failed": 0, "raised": 0}
    weights = out.weights_ids() if todo else set()
    runnable = {t: n for t, n in todo.items() if t in weights}
    counts["no_weights"] = len(todo) - len(runnable)
    if todo and not runnable:  # (refused: nothing is written, measures.json neither)
        raise ConfigError(
            f"SWEEP_DIR: {out}: {len(todo)} finished trials lack values of "
            f"{sorted({n for v in todo.values() for n in v})}, but none has saved weights (the "
            "sweep ran with save_weights=false); measures are evaluated on the saved networks: "
            "run a new sweep with save_weights=true")
    _select(out, specs)
    if not todo:
        return counts
    items = [(s.canonical() if s.legacy_id is None else s.canonical_v1(),
              ",".join(runnable[s.trial_id])) for s in _among(specs, runnable)]
    tasks = Tasks(cfg, _measure_remote, out, log)
    args = (tasks.out_dir, cfg.dataset.root, cfg.dataset.download, tasks.device,
            tasks.num_threads, asdict(cfg.metric_spec()), tasks.limit)
    log(f"measures: {sum(len(n) for n in runnable.values())} values of {len(runnable)} trials "
        f"to evaluate" + (f" ({counts['no_weights']} trials without saved weights skipped)"
                          if counts["no_weights"] else ""))
    work = MeasureWork(out, items, cfg.resources.trials_per_task, tasks.task(), args,
                       cfg.metric_spec(), counts, log)
    try:
        tasks.run(work, lock=lock)
    except DispatchStopped as e:
        log(f"measures: {e.reason} after {time.perf_counter() - t0:.1f} s: {counts['values']} "
            f"values of {counts['trials']} trials written; the others are evaluated by: "
            + sweep_command("measure", out, *again))
        raise
    damaged = work.damaged
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


