"""`sweep measure`: evaluate registered measures on a sweep's saved networks, no training.

Only missing or outdated values run (``sweep.evaluate``: the unit of work; ``sweep.dispatch``:
the loop, as for trials); a second call finds nothing to do and writes nothing. Trial result
files are never touched; ``--retrain`` writes the weights files of finished trials anew.
"""

from __future__ import annotations

from dataclasses import replace

from sweep.config import ConfigError, SweepConfig
from sweep.dispatch import DispatchStopped, Tasks, Work, log, stop_asked
from sweep.evaluate import (_after_timeout, _among, _measure_remote, _select,  # noqa: F401
                            missing, raised_keys, run)
from sweep.runtime import start_ray
from workers.results.record import Status
from workers.results.sweep_dir import SweepDir


STUDIES = ("ellipse_k", "boundary_grid", "boundary_extent")  # run only while a trial trains


class MeasureStopped(DispatchStopped):
    """`sweep measure` stopped before it was done: SIGTERM outside the dispatch loop (exit 143),
    or the loop's DispatchStopped (a signal, a lost Ray runtime: its ``exit_code``). The values
    written are kept. ``retrain_left``: when it stopped while retraining (``--retrain``), the
    ids whose retraining did not end (the next call names them again)."""

    def __init__(self, reason: str = "stopped by SIGTERM", exit_code: int = 143,
                 counts: dict[str, int] | None = None, retrain_left: tuple[str, ...] = ()):
        super().__init__(reason, exit_code, counts or {})
        self.retrain_left = tuple(retrain_left)


def measure_sweep(sweep_dir, overrides: list[str] = (), retry_errors: bool = False,
                  retrain: tuple[str, ...] = ()) -> dict[str, int]:
    """`sweep measure SWEEP_DIR [measures=[...]] [metrics.*=...] [cluster.*=...]`: evaluate the
    missing values under the sweep's lock; returns the counts of ``run``. ``retry_errors``:
    evaluate again the values whose measure raised (once the cause is fixed). ``retrain``: ids
    of finished trials whose networks are first trained again to write their weights files
    anew (the weights only: see ``retrain_weights``); ConfigError for an id that is not an ok
    trial of the sweep."""
    import signal

    from sweep.driver import Plan, check_writable, open_out, stored_config
    from sweep.lock import DriverLock

    studies = [o.split("=")[0] for o in overrides
               if o.split("=")[0].lstrip("+~").removeprefix("metrics.") in STUDIES]
    if studies:
        from sweep.config import resumable_keys_text, schema_keys

        metrics = [k for k in schema_keys() if k.startswith("metrics.")
                   and k.removeprefix("metrics.") not in STUDIES]
        allowed = [k for k in resumable_keys_text().split(", ") if k != "metrics.*"] + metrics
        raise ConfigError(f"measure: {', '.join(studies)}: the off-data studies (Fig. 2, 3) run "
                          "while a trial trains, before and after; sweep measure cannot add them "
                          f"to finished trials; allowed: {', '.join(allowed)}")
    out = open_out(sweep_dir, "SWEEP_DIR", write=False)  # (written to once the input is checked)
    notes: list[str] = []
    added = recorded_modules(out, overrides, notes=notes)  # (before the check of the names)
    cfg = stored_config(out, list(overrides), command="measure")
    if added:
        cfg = replace(cfg, measure_modules=cfg.measure_modules + tuple(
            m for m in added if m not in cfg.measure_modules))
    if cfg.dry_run:
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is a dry run (dry_run=true): its trials "
                          "trained no networks to measure")
    if retrain:
        ok = {t for t, r in out.index(trust_journal=True).items() if r["status"] == Status.OK}
        bad = [t for t in retrain if t not in ok]
        if bad:
            raise ConfigError(f"--retrain: {bad[0]} is not a finished (ok) trial of {out}; "
                              "allowed: ids of its ok trials, comma-separated (sweep status, "
                              "analysis.load_results)")
    check_writable(out, "SWEEP_DIR")
    if cfg.cluster.address is not None:  # before any work: one line if it cannot be used
        start_ray(cfg)
    for note in notes:
        log(note)

    def on_term(signum, frame):
        raise MeasureStopped()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with DriverLock(out, "measure", log=log) as lock:
            plan = Plan(out, cfg.metric_spec())
            if retrain:
                try:
                    retrain_trials(cfg, out, plan, retrain, log, lock)
                except DispatchStopped as e:  # (the retrainings that did not end, in order)
                    ended = getattr(e, "retrained", set())
                    raise MeasureStopped(e.reason, e.exit_code, e.counts,
                                         tuple(t for t in retrain if t not in ended)) from None
            counts = run(cfg, out, plan, log, lock, retry_errors=retry_errors,
                         again=tuple(overrides))
    except DispatchStopped as e:  # (a signal or a lost runtime in the loop)
        if isinstance(e, MeasureStopped):
            raise
        raise MeasureStopped(e.reason, e.exit_code, e.counts) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not any(counts.values()):
        if "all" in cfg.measures:
            asked = "every measure asked for"
        elif len(cfg.measures) > 3:
            asked = f"each of the {len(cfg.measures)} measures asked for"
        else:
            asked = ", ".join(cfg.measures)
        finished = sum(r["status"] == Status.OK
                       for r in out.index(trust_journal=True).values())
        log("measures: nothing to evaluate (" + (
            f"every finished trial has {asked} stored)" if finished else
            "no trial has finished yet: `sweep resume` runs them, and measures them)"))
    return counts


def recorded_modules(out, overrides: list[str] = (), base: tuple[str, ...] | None = None,
                     notes: list[str] | None = None) -> tuple[str, ...]:
    """The modules `sweep measure`, `sweep resume` and `sweep launch` of an existing sweep
    import on their own, loaded: for each measure named in ``overrides`` (``measures=[...]``)
    that neither the built-ins nor the sweep's ``measure_modules`` register, the module
    recorded with its stored values in ``measures.json`` (sweep.evaluate._select). The sweep's
    modules: ``base`` (a launch's composed ``measure_modules``, loaded), else the override,
    else ``sweep.json``'s. Nothing for a name no value is stored of (the usual "unknown"
    line follows). Raises ConfigError (one line naming the ``measure_modules=`` to pass) for
    such a measure whose recorded module cannot be imported here or no longer registers it,
    or whose values were stored without a recorded module. Bad overrides and stored modules
    that cannot be imported are left to ``stored_config``/``compose``, which say so. What it
    imported is said on stderr, or appended to ``notes`` for the caller to say once the rest
    of the input is checked (bad input: one line)."""
    import json
    from collections import Counter

    from sweep.config import _list, _modules, override_tree
    from workers.measures import available, load_modules
    from workers.results.layout import SELECTION_FILE, SWEEP_FILE
    from workers.results.measure_table import read_selection, stored_keys

    try:
        tree = override_tree(overrides)
        names = [str(n) for n in _list("measures", tree.get("measures") or [])]
        if base is None and "measure_modules" in tree:
            base = _modules(tree["measure_modules"])
        elif base is None:
            base = tuple(json.loads(out.read_text(SWEEP_FILE))["config"].get("measure_modules")
                         or ())
            load_modules(base)
    except Exception:  # (ConfigError, an unreadable sweep.json, ImportError: said later)
        return ()
    known = set(available(base))
    unknown = [n for n in dict.fromkeys(names) if n != "all" and n not in known]
    if not unknown:
        return ()
    counts = Counter(key[1] for key in stored_keys(out))
    selection = read_selection(out)
    added: dict[str, list[str]] = {}  # module -> the measures named for which it is imported
    for name in unknown:
        if not counts[name]:
            continue
        k = counts[name]
        stored = f"its {k} stored value" + (" was" if k == 1 else "s were")
        pass_it = f"pass measure_modules=[PATH] naming the module that registers {name}"
        module = (selection.get(name) or {}).get("module")
        if module is None:
            raise ConfigError(f"measures: {name} is registered by no module of this sweep, and "
                              f"{stored} measured without a record of its module (in "
                              f"{out.uri(SELECTION_FILE)}); {pass_it}")
        try:
            load_modules((module,))
        except (ImportError, ValueError) as e:
            why = str(e).partition(" (")[2].rpartition(");")[0] or str(e)
            raise ConfigError(f"measures: {name} is registered by no module of this sweep; "
                              f"{stored} measured with measure_modules=[{module}], which "
                              f"cannot be imported here ({why}); {pass_it}") from None
        if name not in available((module,)):
            raise ConfigError(f"measures: {name}: {stored} measured with measure_modules="
                              f"[{module}], which no longer registers it; {pass_it}")
        added.setdefault(module, []).append(name)
    for module, named in added.items():
        note = (f"measures: {', '.join(named)} from {module}, the module "
                f"{'its' if len(named) == 1 else 'their'} stored values were measured with")
        log(note) if notes is None else notes.append(note)
    return tuple(added)


def launch_config(overrides: list[str]):
    """The configuration of `sweep launch`/`sweep plan` (``compose``). A measure named in
    ``measures=[...]`` that neither the built-ins nor the launch's ``measure_modules`` register
    is imported, when the sweep directory holds that sweep already, from the module its stored
    values were measured with, which joins ``measure_modules`` (sweep.measure.recorded_modules,
    as `sweep measure` and `sweep resume` do). ConfigError (one line) before any work."""
    from sweep.config import ConfigError, _list, compose, override_key, override_tree
    from workers.measures import available
    from workers.results.layout import SWEEP_FILE
    from workers.results.sweep_dir import SweepDir

    try:
        names = [str(n) for n in _list("measures", override_tree(overrides).get("measures") or [])]
    except ConfigError:  # (compose says what is wrong)
        names = []
    builtin = set(available())
    if all(n == "all" or n in builtin for n in names):
        return compose(overrides)
    # the sweep directory does not depend on the measures (not in the identity): found without
    first = compose([o for o in overrides if override_key(o)[1] != "measures"])
    try:
        out = SweepDir.of(first.out_dir())
        stored = out.is_file(SWEEP_FILE)
    except (OSError, ValueError):  # (an unreachable out: the launch says so)
        stored = False
    notes: list[str] = []
    added = recorded_modules(out, overrides, base=first.measure_modules,
                             notes=notes) if stored else ()
    cfg = with_modules(compose(overrides), added)
    for note in notes:
        log(note)
    return cfg


def with_modules(cfg, added: tuple[str, ...]):
    """``cfg`` with ``added`` (sweep.measure.recorded_modules) after its ``measure_modules``:
    the workers import them too."""
    from dataclasses import replace

    if not added:
        return cfg
    return replace(cfg, measure_modules=cfg.measure_modules + tuple(
        m for m in added if m not in cfg.measure_modules))



def _retrain_remote(specs: list, out_dir: str, data_root, download: bool, device: str,
                    num_threads: int, trial_timeout: float | None = None,
                    token: str | None = None, stop=None) -> list[str | None]:
    """One Ray task: workers.retrain.retrain_weights for each of ``specs`` in order (the
    arguments are its own); per network None (written) or why not. ``stop``: the driver's stop
    flag (sweep.dispatch.stop_asked), asked before each: once it says stop, no more starts and
    the list ends there."""
    from workers.retrain import retrain_weights

    out = []
    for spec in specs:
        if stop_asked(stop):
            break  # the driver stopped: no new retraining
        out.append(retrain_weights(spec, out_dir, data_root, download, device, num_threads,
                                   trial_timeout, token))
    return out


class RetrainWork(Work):
    """Retrain networks (sweep.dispatch.Work): a unit is one TrialSpec, run by
    ``_retrain_remote`` (workers.retrain.retrain_weights), which writes the weights file itself
    where the network reproduces the record; each outcome is one log line (``written``: how
    many were)."""

    def __init__(self, specs: list, remote, args: tuple, log):
        self.specs, self.remote, self.args, self.log = specs, remote, args, log
        self.counts = {"written": 0, "not_written": 0}
        self.ended: set[str] = set()  # trials whose retraining ended (written or not)
        self.total = len(specs)

    def units(self, slots):
        return ([s] for s in self.specs)

    def submit(self, unit, token, stop):
        return self.remote.remote(unit, *self.args, token, stop)

    def trial_ids(self, unit) -> list[str]:
        return [s.trial_id for s in unit]

    def done(self, unit, results) -> int:
        for spec, why in zip(unit, results):
            self.ended.add(spec.trial_id)
            if why is None:
                self.counts["written"] += 1
                self.log(f"retrain: trial {spec.trial_id}: weights written again (the network "
                         "reproduces its record)")
            else:
                self.counts["not_written"] += 1
                self.log(f"retrain: trial {spec.trial_id}: weights not written: {why}")
        return len(results)

    def timed_out(self, unit, trial_id, phase, seconds, error) -> tuple[int, list[list]]:
        why = error + " (a longer limit: resources.trial_timeout=...)"
        return self.done(unit, [why] * len(unit)), []

    def failed(self, unit, exc: BaseException, attempts: int) -> int:
        from sweep.watch import first_line

        return self.done(unit, [first_line(exc)] * len(unit))


def retrain_trials(cfg: SweepConfig, out, plan, ids, log, lock=None) -> int:
    """Train the networks of the ok trials ``ids`` again on Ray and write their weights files
    anew where the network reproduces the trial's record (workers.retrain.retrain_weights: the
    records and measure values stay as they are); logs one line per trial. Runs in the dispatch
    loop (sweep.dispatch.run): a retraining over ``resources.trial_timeout`` is killed like a
    trial (sweep.watch): its line names the limit and the phase it was in, nothing is written
    for it, and the others go on. Returns how many were written."""
    specs = list(_among(plan, set(ids)))
    out = SweepDir.of(out)
    tasks = Tasks(cfg, _retrain_remote, out, log)
    log(f"retrain: training the networks of {len(specs)} trials again to write their weights")
    work = RetrainWork(specs, tasks.task(), (tasks.out_dir, cfg.dataset.root,
                                             cfg.dataset.download, tasks.device,
                                             tasks.num_threads, tasks.limit), log)
    try:
        return tasks.run(work, lock=lock)["written"]
    except DispatchStopped as e:
        e.retrained = set(work.ended)  # (what a stop leaves to retrain: measure_sweep)
        raise
