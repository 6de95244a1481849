"""Launching a sweep: check everything, write the plan, run its trials, evaluate the measures
they lack (``launch``; ``sweep resume`` is a launch of ``stored_config``; ``plan_only``).

The sweep directory holds ``sweep.json`` (the configuration and its identity), ``plan.parquet``
(the manifest: one row per planned trial; workers.results.plan_file), ``trials/<trial_id>.parquet``
(one result per trial, the source of truth) and ``report/`` (``sweep report``). Launching into a
directory of the same sweep runs exactly the planned trials that have no valid result file yet;
a directory of a different sweep is refused before anything is written. The trials run in
sweep.dispatch's loop (sweep.trials: the unit of work) on sweep.runtime's Ray.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

from sweep import cost
from sweep.commands import sweep_command
from sweep.config import IDENTITY_VERSION, NOT_IDENTITY, ConfigError, SweepConfig
# the names of the dispatch loop (sweep.dispatch), the Ray runtime (sweep.runtime) and training
# trials (sweep.trials) import from here too, for callers of their older path sweep.driver
from sweep.dispatch import (EXIT_RUNTIME_LOST, GRACE_S, KILL_GRACE_S,  # noqa: F401
                            PROGRESS_LINE_S, DispatchStopped, log)
from sweep.evaluate import run as evaluate_missing
from sweep.lock import LOCK_FILE, DriverLock
from sweep.plan import grid_note, manifest_table, plan_pairs, plan_trials, seed_note
from sweep.runtime import (LOOPBACK, RUNTIME_PROBE_S, check_loopback,  # noqa: F401
                           check_resources, check_trials_fit, largest_node_memory,
                           local_runtime_exited, loopback_node, runtime_lost, start_ray)
from sweep.trials import (_file_stamp, _record_system_failure, _record_timeout,  # noqa: F401
                          _result_status, _run_remote, dispatch, iter_units, make_units,
                          memory_note, saves_weights, task_memory)
from workers.data import check_available
from workers.results import plan_file
from workers.results.layout import PLAN_FILE, SWEEP_FILE
from workers.results.plan_file import (PLAN_SUMMARY_FILE, Todo, pending,  # noqa: F401
                                       pending_rows)
from workers.results.record import NewerResult
from workers.results.spec import TrialSpec
from workers.results.storage import PROBE_PREFIX
from workers.results.sweep_dir import SweepDir


def open_out(location, key: str = "out", write: bool = True) -> SweepDir:
    """The sweep directory ``location`` once it is reachable and writable (``SweepDir.checked``:
    what a command opens once and passes down); ConfigError (one line, naming ``key``) if not.
    ``write=False``: reachable only (a command that checks the rest of its input first, then
    ``check_writable``: no probe is written for bad input)."""
    try:
        return SweepDir.checked(location, key, write=write)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_writable(out: SweepDir, key: str = "out") -> None:
    """ConfigError (one line, naming ``key``) unless the sweep directory ``out`` can be written
    (``storage.check_location``'s probe)."""
    open_out(out.location, key)


def check_out_dir(out: SweepDir, cfg: SweepConfig) -> None:
    """Refuse a directory that holds something other than this sweep."""
    kind = out.kind()  # (one look: another driver's objects may come and go meanwhile)
    if kind == "none":
        return
    if kind == "file":
        raise ConfigError(f"out: {out} exists and is not a directory")
    meta = out.uri(SWEEP_FILE)
    if out.is_file(SWEEP_FILE):
        try:
            doc = json.loads(out.read_text(SWEEP_FILE))
            stored, version = doc["identity_hash"], int(doc.get("identity_version", 1))
        except Exception:
            raise ConfigError(f"out: {meta} is unreadable; choose another out directory") from None
        if stored != cfg.identity_hash(version):
            raise ConfigError(
                f"out: {out} holds a different sweep (identity {stored}, this configuration "
                f"{cfg.identity_hash(version)}); choose another out directory or the same "
                + ("configuration (measurement settings may differ)" if version >= 2 else
                   "configuration with the measurement settings it was created with (a sweep "
                   "created before identity version 2 keeps metrics.* in its identity; `"
                   + sweep_command("resume", out) + "` runs what is left with its own settings)")
            )
    elif any(not n.startswith((LOCK_FILE, PROBE_PREFIX))  # a lock alone (and another
             for n in out.names()):  # driver's write probe, there a moment): a new sweep
        raise ConfigError(f"out: {out} is not empty and holds no {SWEEP_FILE}; choose another out directory")


class Plan(plan_file.Plan):
    """The written plan as the driver reads it (workers.results.plan_file.Plan): a damaged
    manifest or a spec that does not match its id is a ConfigError (one line for the user), and
    the cost model fills in what a manifest written without the estimates lacks."""

    error = ConfigError

    def summary(self, cfg: SweepConfig) -> dict:
        """cost.plan_summary of the plan, from the estimates written with it (recomputed from
        the specs for a manifest written without them)."""
        if all(c in self.light.column_names for c in cost.MANIFEST_COLUMNS):
            return cost.manifest_summary(self.light, cfg)
        return cost.plan_summary(list(self), cfg)

    def n_params(self) -> int:
        """Parameters of all planned trials."""
        n = super().n_params()
        return sum(cost.n_params(s) for s in self) if n is None else n

    def memory(self, rows) -> list[int]:
        """Estimated memory (bytes) of the trials of ``rows``."""
        m = super().memory(rows)
        return [cost.estimate_memory(s) for s in self.specs(rows)] if m is None else m


def read_plan(out, metrics=None) -> list[TrialSpec]:
    """The trials of a written manifest as a list (small plans, tests; a driver streams them
    with ``Plan``), checked against their ids."""
    return list(Plan(out, metrics))


def prepare(cfg: SweepConfig, planned: tuple | None = None,
            out: SweepDir | None = None) -> tuple[SweepDir, Plan]:
    """All checks, then the sweep directory with its configuration and plan. An existing plan
    (same sweep) is read, not redrawn; else ``planned`` (``_new_plan``, made before the lock)
    is written, or a plan is made. ``out``: the sweep directory ``cfg.out_dir()`` as opened
    already (``open_out``); None: opened here. Returns the written plan (streamed: the caller
    drops ``planned``). Raises ConfigError/DataError before anything is written."""
    out = open_out(cfg.out_dir()) if out is None else out
    check_out_dir(out, cfg)
    check_available(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download)
    if out.exists(PLAN_FILE):  # (another driver may have planned it since: read, as planned)
        plan = Plan(out, cfg.metric_spec())
        for line in cost.summary_lines(plan.summary(cfg)):
            log(line)
        return out, plan
    specs, pairs, summary = planned if planned is not None else _new_plan(cfg)
    manifest = manifest_table(specs, cfg)  # (before anything is written: it may fail)
    del specs, planned
    out.makedirs()
    if not out.exists(SWEEP_FILE):
        doc = {"identity_hash": cfg.identity_hash(), "identity_version": IDENTITY_VERSION,
               "config": asdict(cfg), "created": time.time()}
        out.write_text(SWEEP_FILE, json.dumps(doc, indent=2, sort_keys=True))
    plan_file.write_plan(out, manifest, pairs, summary)
    del manifest
    return out, Plan(out, cfg.metric_spec())


# What `sweep resume` may change: where and how the trials run, never which trials there are.
RESUMABLE_KEYS = tuple(k for k in NOT_IDENTITY if k != "out")  # sweep.config, declared once


def stored_config(sweep_dir: str | Path | SweepDir, overrides: list[str] = (),
                  command: str = "resume") -> SweepConfig:
    """The configuration a sweep directory was launched with (``sweep.json``), with ``out`` set
    to that directory and ``overrides`` (KEY=VALUE, keys in RESUMABLE_KEYS only) applied.
    ``sweep_dir``: a location (opened here: ``open_out``) or a SweepDir opened already."""
    from sweep.config import (aliases_given_win, check_override_keys, check_schema, from_dict,
                              merged, override_key, override_tree, resumable_keys_text,
                              settings_from_aliases)

    d = sweep_dir if isinstance(sweep_dir, SweepDir) else open_out(sweep_dir, "SWEEP_DIR")
    meta = d.uri(SWEEP_FILE)
    if not d.is_file(SWEEP_FILE):
        raise ConfigError(f"SWEEP_DIR: {d} is not a sweep directory (no {SWEEP_FILE})")
    try:
        doc = json.loads(d.read_text(SWEEP_FILE))
        stored, conf = doc["identity_hash"], doc["config"]
        version = int(doc.get("identity_version", 1))
    except Exception as e:
        raise ConfigError(f"SWEEP_DIR: {meta} is unreadable ({type(e).__name__})") from None
    check_override_keys(overrides)  # an unknown key: its closest keys
    plain = []
    for o in overrides:
        prefix, key = override_key(o)
        if prefix == "~" or "=" not in o or not any(key == k or key.startswith(k + ".")
                                                     for k in RESUMABLE_KEYS):
            raise ConfigError(f"{command}: cannot override {prefix + key!r}; allowed: KEY=VALUE with "
                              f"KEY in {resumable_keys_text()} (other keys change the "
                              "sweep's trials)")
        plain.append(o)  # + and ++ of a schema key: a plain value
    # sweep.json holds the resolved configuration: plain data, never interpolated again (a
    # literal ${ in it stays one); only the overrides' own ${...} are resolved
    # the stored configuration is checked against its own identity hash as written (a version-1
    # hash covers the measures' settings, which the overrides may change); then the overrides
    # must leave the trials as they are (the current identity of both)
    base = {**copy.deepcopy(conf), "out": d.location}
    check_schema(base)
    base_cfg = from_dict(base)
    if base_cfg.identity_hash(version) != stored:
        raise ConfigError(f"SWEEP_DIR: {meta} does not match its own identity hash {stored}; "
                          "it was edited or written by another version")
    if not plain:
        return base_cfg
    conf = settings_from_aliases(copy.deepcopy(conf))  # the stored aliases: settings, as today's
    conf = aliases_given_win(merged(conf, override_tree(plain)), plain)
    conf["out"] = d.location
    check_schema(conf)
    cfg = from_dict(conf)
    if cfg.identity_hash() != base_cfg.identity_hash():
        raise ConfigError(f"{command}: {' '.join(plain)} would change the sweep's trials (e.g. "
                          "resources.worker_memory_gb with plan.infeasible=replace); allowed: "
                          "overrides that keep them")
    return cfg


def _checked_out(cfg: SweepConfig, out: SweepDir | None = None) -> tuple[SweepDir, tuple | None]:
    """The sweep directory (``out``, or ``cfg.out_dir()`` opened here) after every check that
    needs no lock (prepare repeats them under it), and a new plan when it has none
    (``_new_plan``): bad input, ``trials`` above the space and plans with trials that fit
    nowhere are refused before the lock is taken or anything is written."""
    out = open_out(cfg.out_dir()) if out is None else out
    check_out_dir(out, cfg)
    check_available(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download)
    return out, (None if out.exists(PLAN_FILE) else _new_plan(cfg))


def _new_plan(cfg: SweepConfig) -> tuple:
    """(specs, pairs or None, summary) of a new plan, its summary printed; ConfigError for a
    plan that cannot run (``trials`` above the space, trials that fit nowhere)."""
    pairs = None
    if cfg.plan.factors:
        specs, pairs = plan_pairs(cfg)
    else:
        specs = plan_trials(cfg)
    if len(specs) < cfg.trials and pairs is None:
        log(f"note: {len(specs)} distinct configurations were drawn (the cost bias or the memory "
            f"bound rejected the others); planning {len(specs)} trials instead of {cfg.trials}")
    for note in (grid_note(cfg, specs), seed_note(cfg, specs)):
        if note:
            log(note)
    summary = cost.plan_summary(specs, cfg)
    for line in cost.summary_lines(summary):
        log(line)
    if summary["infeasible"] and cfg.plan.infeasible == "refuse":
        raise ConfigError(cost.infeasible_message(summary))
    return specs, pairs, summary


def plan_only(cfg: SweepConfig) -> str:
    """Write the sweep directory with its configuration and plan; run nothing."""
    out, planned = _checked_out(cfg)
    with DriverLock(out, "plan", log=log):
        out, plan = prepare(cfg, planned, out)
        del planned
        todo = pending_rows(out, plan.ids, move_invalid=False)
    log(f"{len(plan)} trials planned ({out.uri(PLAN_FILE)}), {len(plan) - len(todo)} already "
        f"have results; run them with: {sweep_command('resume', out)}")
    if cfg.cluster.address is not None or cfg.resources.gpus_per_trial == 0:
        try:  # (a plan may be for another machine: said, not refused; no local Ray started to
            # ask; a cluster is connected to)
            check_resources(cfg)
        except ConfigError as e:
            if cfg.cluster.address is None:
                log(f"note: a local resume here would refuse it: {e}; resume it on a cluster "
                    "(cluster.address=...) or a machine where it fits")
            elif type(e).__name__ == "ClusterUnreachable":  # (sweep.connect's)
                log(f"note: could not ask the cluster whether its nodes hold the trials: {e}")
            else:
                log(f"note: a resume on the cluster at {cfg.cluster.address} would refuse it "
                    f"as it is now: {e}")
    return out.location


def launch(cfg: SweepConfig, verify: bool = False, command: str = "launch",
           out: SweepDir | None = None, again: tuple[str, ...] = ()) -> str:
    """Plan (or read the plan), run the planned trials that lack a valid result, then evaluate
    the measures asked for that finished trials lack (from their saved weights); returns the
    sweep directory. ``out``: ``cfg.out_dir()`` as opened already (``open_out``: `sweep
    resume` opens it to read its configuration); None: opened here. ``again``: the overrides
    of a `sweep resume` (not stored with the sweep), repeated in the resume command said
    after a stop. Progress and diagnostics go to stderr; the caller prints the result."""
    out = open_out(cfg.out_dir()) if out is None else out
    if cfg.cluster.address is not None:  # before any work: one line if it cannot be used
        start_ray(cfg)
    if not out.exists(PLAN_FILE):  # a new sweep: before it is planned, one line if its trials
        check_resources(cfg)  # cannot run here (a planned one: once it has trials to run)
    out, planned = _checked_out(cfg, out)
    with DriverLock(out, command, log=log) as lock:
        out, plan = prepare(cfg, planned, out)
        del planned  # a new plan's specs: from here on streamed from the manifest
        try:
            todo = Todo(plan, pending_rows(out, plan.ids, verify=verify))
        except NewerResult as e:  # (one line: nothing was set aside or run)
            raise ConfigError(f"out: {e}") from None
        log(f"sweep directory: {out}")
        log(f"{len(plan)} trials planned, {len(plan) - len(todo)} already have results, "
            f"{len(todo)} to run")
        t0 = time.perf_counter()
        if todo:
            try:
                counts = dispatch(cfg, out, todo, lock=lock,
                                  save_weights=saves_weights(cfg, plan))
            except DispatchStopped as e:
                done = sum(e.counts.values())
                left = len(pending_rows(out, plan.ids, move_invalid=False))
                log(f"{e.reason} after {time.perf_counter() - t0:.1f} s: {done} trials finished "
                    "in this session ("
                    + (", ".join(f"{v} {k}" for k, v in e.counts.items() if v) or "none")
                    + f"); {left} of {len(plan)} left. Run them with: "
                    + sweep_command("resume", out, *again))
                raise
            log("finished in {:.1f} s: ".format(time.perf_counter() - t0)
                + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        if not cfg.dry_run:  # finished trials that lack a measure asked for now: from weights
            try:
                evaluate_missing(cfg, out, plan, log, lock)
            except ConfigError as e:  # no saved weights: the trials' own results stand
                log(f"note: {e}")
    return out.location
