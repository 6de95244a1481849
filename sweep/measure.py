"""`sweep measure`: evaluate registered measures on a sweep's saved networks, no training.

Only missing or outdated values run (``sweep.evaluate``: the unit of work; ``sweep.dispatch``:
the loop, as for trials); a second call finds nothing to do and writes nothing. Trial result
files are never touched; ``--retrain`` writes the weights files of finished trials anew.
"""

from __future__ import annotations

import math
import os

from sweep.config import ConfigError, SweepConfig
from sweep.dispatch import DispatchStopped, Work, log, run as run_work
from sweep.evaluate import (_after_timeout, _among, _measure_remote, _select,  # noqa: F401
                            missing, raised_keys, run)
from sweep.runtime import check_gpus, start_ray
from workers.results.index import result_index


STUDIES = ("ellipse_k", "boundary_grid", "boundary_extent")  # run only while a trial trains


class MeasureStopped(DispatchStopped):
    """`sweep measure` stopped before it was done: SIGTERM outside the dispatch loop (exit 143),
    or the loop's DispatchStopped (a signal, a lost Ray runtime: its ``exit_code``). The values
    written are kept."""

    def __init__(self, reason: str = "stopped by SIGTERM", exit_code: int = 143,
                 counts: dict[str, int] | None = None):
        super().__init__(reason, exit_code, counts or {})


def measure_sweep(sweep_dir, overrides: list[str] = (), retry_errors: bool = False,
                  retrain: tuple[str, ...] = ()) -> dict[str, int]:
    """`sweep measure SWEEP_DIR [measures=[...]] [metrics.*=...] [cluster.*=...]`: evaluate the
    missing values under the sweep's lock; returns the counts of ``run``. ``retry_errors``:
    evaluate again the values whose measure raised (fixed since). ``retrain``: ids of finished
    trials whose networks are first trained again to write their weights files anew (the
    weights only: see ``retrain_weights``); ConfigError for an id that is not an ok trial of
    the sweep."""
    import signal

    from sweep.driver import Plan, open_out, stored_config
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
        start_ray(cfg)

    def on_term(signum, frame):
        raise MeasureStopped()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with DriverLock(out, "measure", log=log) as lock:
            plan = Plan(out, cfg.metric_spec())
            if retrain:
                retrain_trials(cfg, out, plan, retrain, log, lock)
            counts = run(cfg, out, plan, log, lock, retry_errors=retry_errors,
                         again=tuple(overrides))
    except DispatchStopped as e:  # (a signal or a lost runtime in the loop)
        if isinstance(e, MeasureStopped):
            raise
        raise MeasureStopped(e.reason, e.exit_code, e.counts) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not any(counts.values()):
        log(f"measures: nothing to evaluate ({', '.join(cfg.measures)} are stored for every "
            "finished trial)")
    return counts


class RetrainWork(Work):
    """Retrain networks (sweep.dispatch.Work): a unit is one TrialSpec, run by
    workers.retrain.retrain_weights, which writes the weights file itself where the network
    reproduces the record; each outcome is one log line (``written``: how many were)."""

    def __init__(self, specs: list, remote, args: tuple, log):
        self.specs, self.remote, self.args, self.log = specs, remote, args, log
        self.counts = {"written": 0, "not_written": 0}
        self.total = len(specs)

    def units(self, slots: int):
        return ([s] for s in self.specs)

    def submit(self, unit, token):
        return self.remote.remote(unit[0], *self.args, token)

    def trial_ids(self, unit) -> list[str]:
        return [s.trial_id for s in unit]

    def done(self, unit, results) -> int:
        (spec,), why = unit, results
        if why is None:
            self.counts["written"] += 1
            self.log(f"retrain: trial {spec.trial_id}: weights written again (the network "
                     "reproduces its record)")
        else:
            self.counts["not_written"] += 1
            self.log(f"retrain: trial {spec.trial_id}: weights not written: {why}")
        return 1

    def timed_out(self, unit, trial_id, phase, seconds, error) -> tuple[int, list[list]]:
        return self.done(unit, error + " (a longer limit: resources.trial_timeout=...)"), []

    def failed(self, unit, exc: BaseException, attempts: int) -> int:
        from sweep.watch import first_line

        return self.done(unit, first_line(exc))


def retrain_trials(cfg: SweepConfig, out, plan, ids, log, lock=None) -> int:
    """Train the networks of the ok trials ``ids`` again on Ray and write their weights files
    anew where the network reproduces the trial's record (workers.retrain.retrain_weights: the
    records and measure values stay as they are); logs one line per trial. Runs in the dispatch
    loop (sweep.dispatch.run): a retraining over ``resources.trial_timeout`` is killed like a
    trial (sweep.watch): its line names the limit and the phase it was in, nothing is written
    for it, and the others go on. Returns how many were written."""
    from sweep.watch import Watch
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
    work = RetrainWork(specs, remote, (out_dir, cfg.dataset.root, cfg.dataset.download,
                                       "cuda" if res.gpus_per_trial > 0 else "cpu",
                                       max(1, math.floor(res.cpus_per_trial)), limit), log)
    return run_work(work, ray, out, res, slots, watch, lock=lock,
                    progress=cfg.progress)["written"]
