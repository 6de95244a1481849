"""Launching a sweep: check everything, write the plan, dispatch the trials to Ray.

The sweep directory holds ``sweep.json`` (the configuration and its identity), ``plan.parquet``
(the manifest: one row per planned trial), ``trials/<trial_id>.parquet`` (one result per trial,
the source of truth) and ``report/`` (``sweep report``). Launching into a directory of the same sweep runs exactly
the planned trials that have no valid result file yet; a directory of a different sweep is
refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from sweep.config import IDENTITY_VERSION, NOT_IDENTITY, ConfigError, SweepConfig
from sweep.lock import LOCK_FILE, DriverLock
from sweep import cost
from sweep.commands import sweep_command
from sweep.plan import grid_note, manifest_table, plan_pairs, plan_trials
from workers.data import check_available
from workers.results.journal import Journal
from workers.results.resume import result_ids, result_index
from workers.results.layout import PAIRS_FILE, PLAN_FILE, SWEEP_FILE, TRIALS, trial_file
from workers.results.record import ResultError, read_result, write_trial
from workers.results.spec import RunContext, TrialSpec
from workers.results.storage import Store, store


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def open_out(location, key: str = "out") -> Store:
    """The Store of the sweep directory ``location`` once it is reachable and writable
    (workers.results.storage.check_location); ConfigError (one line, naming ``key``) if not."""
    from workers.results.storage import check_location

    try:
        return check_location(location, key, write=True)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_out_dir(out: Store, cfg: SweepConfig) -> None:
    """Refuse a directory that holds something other than this sweep."""
    if not out.exists():
        return
    if not out.is_dir():
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
    elif any(not n.startswith(LOCK_FILE) for n in out.names()):  # a lock alone: a new sweep
        raise ConfigError(f"out: {out} is not empty and holds no {SWEEP_FILE}; choose another out directory")


class Plan:
    """A written plan (``plan.parquet``) without holding its specs: the trial ids and the cost
    estimates are read at once (a few columns; 10^6 trials in about 100 MB), the specs are
    parsed from the manifest in batches when iterated (``iter(plan)``, ``plan.specs(rows)``), so
    that a driver of 10^6 trials never holds them all. Each spec is checked against its id as
    it is parsed: the first one when the plan is opened (a plan of another version is refused
    before anything runs), every other one when a driver reaches it (a damaged row stops the
    dispatch there, with a ConfigError; what ran before stays).
    ``metrics`` (a MetricSpec): the measurement settings the specs carry (default: version-2
    specs the defaults, version-1 specs the settings they were planned with). Raises
    ConfigError when the manifest is unreadable or a spec does not match its id."""

    BATCH_ROWS = 8192

    def __init__(self, out: Store, metrics=None):
        self.out, self.metrics = out, metrics
        self._path = out.uri(PLAN_FILE)
        try:
            f = out.parquet_file(PLAN_FILE)
            names = set(f.schema_arrow.names)
            self.light = f.read(columns=[c for c in cost.MANIFEST_COLUMNS + ("n_params",)
                                         if c in names])
        except Exception as e:
            raise self._damaged(e) from None
        self.ids: list[str] = self.light.column("trial_id").to_pylist()
        next(self.specs([0]) if self.ids else iter(()), None)  # a plan of another version: now

    def _damaged(self, e: BaseException) -> ConfigError:
        return ConfigError(f"out: {self._path} is unreadable ({type(e).__name__}: {e}); the "
                           "sweep directory is damaged")

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return self.specs()

    def specs(self, rows=None):
        """The TrialSpecs of the manifest's ``rows`` (strictly increasing row numbers; default
        all), in order, parsed one batch of rows at a time. Raises ValueError for rows out of
        order or beyond the plan."""
        wanted = None if rows is None else iter(rows)
        nxt = None if wanted is None else next(wanted, None)
        if wanted is not None and nxt is None:
            return
        start = 0
        try:
            batches = self.out.parquet_file(PLAN_FILE).iter_batches(
                batch_size=self.BATCH_ROWS, columns=["trial_id", "spec"])
        except Exception as e:
            raise self._damaged(e) from None
        for batch in batches:
            stop = start + batch.num_rows
            ids, texts = batch.column(0), batch.column(1)
            if wanted is None:
                for tid, text in zip(ids.to_pylist(), texts.to_pylist()):
                    yield self._spec(tid, text)
            else:
                while nxt is not None and nxt < stop:
                    if nxt < start:
                        raise ValueError(f"rows: {nxt} after a later row; allowed: strictly "
                                         "increasing row numbers")
                    yield self._spec(ids[nxt - start].as_py(), texts[nxt - start].as_py())
                    nxt, last = next(wanted, None), nxt
                    if nxt is not None and nxt <= last:
                        raise ValueError(f"rows: {nxt} after {last}; allowed: strictly "
                                         "increasing row numbers")
                if nxt is None:
                    return
            start = stop
        if wanted is not None and nxt is not None:
            raise ValueError(f"rows: {nxt} is beyond the plan's {start} rows")

    def _spec(self, tid: str, text: str) -> TrialSpec:
        try:
            s = TrialSpec.from_json(text, self.metrics)
        except Exception as e:
            raise self._damaged(e) from None
        if s.trial_id != tid:
            raise ConfigError(f"out: {self._path}: trial {tid} does not match its spec (written "
                              "by another version?); launch into a new out directory")
        return s

    def summary(self, cfg: SweepConfig) -> dict:
        """cost.plan_summary of the plan, from the estimates written with it (recomputed from
        the specs for a manifest written without them)."""
        if all(c in self.light.column_names for c in cost.MANIFEST_COLUMNS):
            return cost.manifest_summary(self.light, cfg)
        return cost.plan_summary(list(self), cfg)

    def n_params(self) -> int:
        """Parameters of all planned trials."""
        if "n_params" in self.light.column_names:
            return int(self.light.column("n_params").to_numpy().sum())
        return sum(cost.n_params(s) for s in self)

    def memory(self, rows) -> list[int]:
        """Estimated memory (bytes) of the trials of ``rows``."""
        if "est_memory_bytes" in self.light.column_names:
            m = self.light.column("est_memory_bytes").to_numpy()
            return [int(m[i]) for i in rows]
        return [cost.estimate_memory(s) for s in self.specs(rows)]


class Todo:
    """The planned trials a driver runs: ``rows`` of a Plan, streamed (``len``, ``iter``)."""

    def __init__(self, plan: Plan, rows: list[int]):
        self.plan, self.rows = plan, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return self.plan.specs(self.rows)

    def memory(self) -> list[int]:
        return self.plan.memory(self.rows)


def read_plan(out: Store, metrics=None) -> list[TrialSpec]:
    """The trials of a written manifest as a list (small plans, tests; a driver streams them
    with ``Plan``), checked against their ids."""
    return list(Plan(out, metrics))


PLAN_SUMMARY_FILE = "plan_summary.json"  # sweep/cost.plan_summary of the plan, written with it


def prepare(cfg: SweepConfig, planned: tuple | None = None) -> tuple[Store, Plan]:
    """All checks, then the sweep directory with its configuration and plan. An existing plan
    (same sweep) is read, not redrawn; else ``planned`` (``_new_plan``, made before the lock)
    is written, or a plan is made. Returns the written plan (streamed: the caller drops
    ``planned``). Raises ConfigError/DataError before anything is written."""
    out = open_out(cfg.out_dir())
    check_out_dir(out, cfg)
    check_available(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download)
    if out.exists(PLAN_FILE):  # (another driver may have planned it since: read, as planned)
        plan = Plan(out, cfg.metric_spec())
        for line in cost.summary_lines(plan.summary(cfg)):
            log(line)
        return out, plan
    specs, pairs, summary = planned if planned is not None else _new_plan(cfg)
    out.makedirs()
    if not out.exists(SWEEP_FILE):
        doc = {"identity_hash": cfg.identity_hash(), "identity_version": IDENTITY_VERSION,
               "config": asdict(cfg), "created": time.time()}
        out.write_text(SWEEP_FILE, json.dumps(doc, indent=2, sort_keys=True))
    if pairs is not None:  # before the plan, whose presence marks the directory planned
        out.write_parquet(PAIRS_FILE, pairs)
    out.write_text(PLAN_SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))
    out.write_parquet(PLAN_FILE, manifest_table(specs, cfg), row_group_size=Plan.BATCH_ROWS)
    out.makedirs(TRIALS)
    del specs, planned
    return out, Plan(out, cfg.metric_spec())


def pending_rows(out, ids: list[str], move_invalid: bool = True,
                 verify: bool = False) -> list[int]:
    """The rows of the planned trials ``ids`` without a finished result: no file, an
    unreadable file, or a retryable failure (its worker or node died). Such files are moved
    aside (never deleted), unreadable ones to ``trials/invalid/``, retryable failures to
    ``trials/retried/``, so that the re-run can write its result. A file is read and checked
    unless its size and modification time match the drivers' journal (a truncated or rewritten
    file never does); ``verify`` reads every file."""
    out = store(out)
    readable = result_index(out, trust_journal=not verify)
    present = set(result_ids(out)) if move_invalid else set()
    todo = []
    for i, tid in enumerate(ids):
        r = readable.get(tid)
        if r is not None and not r["retryable"]:
            continue
        if tid in present:
            aside = "retried" if tid in readable else "invalid"
            out.move(trial_file(tid), f"{TRIALS}/{aside}/{tid}.parquet.{time.time_ns()}")
        todo.append(i)
    return todo


def pending(out, specs: list[TrialSpec], move_invalid: bool = True,
            verify: bool = False) -> list[TrialSpec]:
    """``pending_rows`` for a list of specs: the specs without a finished result."""
    rows = pending_rows(out, [s.trial_id for s in specs], move_invalid, verify)
    return [specs[i] for i in rows]


def _run_remote(specs: list[TrialSpec], ctx: RunContext,
                token: str | None = None) -> list[tuple[str, int | None, int | None]]:
    """One Ray task: run a unit of trials in order; per trial its status and its result file's
    size and modification time (for the driver's journal; None if the file cannot be seen). A
    retried unit (its worker died) skips the trials that had already written a valid result.
    With ``ctx.trial_timeout`` and the submission's ``token``, each trial's phase is marked for
    the driver (workers.phase, sweep.watch)."""
    import contextlib

    from workers.phase import PhaseMarker, tick
    from workers.trial import run_trial

    marker = (PhaseMarker(ctx.out_dir, token, tick(ctx.trial_timeout))
              if ctx.trial_timeout and token else None)
    out = []
    with marker or contextlib.nullcontext():
        for spec in specs:
            status = None
            if len(specs) > 1:
                try:
                    t = read_result(ctx.out_dir, spec.trial_id, columns=["status"])
                    status = t.column("status")[0].as_py()
                except ResultError:  # none yet (or a torn one): run the trial
                    pass
            if status is None:
                if marker is not None:
                    marker.begin(spec.trial_id)
                status = run_trial(spec, ctx)["status"]
                if marker is not None:
                    marker.end()
            out.append((status, *_file_stamp(ctx.out_dir, spec.trial_id)))
    return out


def _file_stamp(out, trial_id: str) -> tuple[int | None, int | None]:
    try:
        e = store(out).entry(trial_file(trial_id))
        return e.size, e.mtime_ns
    except OSError:  # a shared file system may not show the file yet
        return None, None


def largest_node_memory(ray, cpus: float = 1.0, gpus: float = 0.0) -> int:
    """The largest ``memory`` resource (bytes) of the live nodes that can run a trial (at
    least ``cpus`` CPUs and ``gpus`` GPUs: not a head node without workers, nor a CPU node for
    GPU trials); 0 if none says."""
    return int(max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes()
                    if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= cpus
                    and n.get("Resources", {}).get("GPU", 0) >= gpus), default=0))


def task_memory(unit: list[TrialSpec], node_memory: int) -> int:
    """The memory (bytes, Ray's ``memory`` resource) a task of ``unit``'s trials asks for: its
    largest trial's estimate (sweep/cost.py; they run one after another), so that Ray places
    it only on a node with that much unclaimed, capped at the largest node's memory (a trial
    estimated above every node still runs somewhere, and ends ``oom`` if it really does not
    fit; ``plan.infeasible`` keeps such trials out of plans by default). 0: no request."""
    from sweep.cost import estimate_memory

    if node_memory <= 0:
        return 0
    return int(min(max(estimate_memory(s) for s in unit), node_memory))


def memory_note(memory: list[int], node_memory: int) -> str | None:
    """A line for the log when trials to run (their estimated ``memory``, bytes) are estimated
    above the memory of every node of the connected cluster that can run them (the plan was
    checked against ``resources.worker_memory_gb`` or the planning machine); None otherwise."""
    from sweep.cost import human_bytes

    if node_memory <= 0:
        return None
    over = [m for m in memory if m > node_memory]
    if not over:
        return None
    return (f"note: {len(over):,} of {len(memory):,} trials to run are estimated above the "
            f"largest node's memory here ({human_bytes(node_memory)}; the largest needs "
            f"{human_bytes(max(over))}): they run on that node and may end oom")


def make_units(cfg: SweepConfig, todo, slots: int = 1) -> list[list[TrialSpec]]:
    """``iter_units`` as a list."""
    return list(iter_units(cfg, todo, slots))


def iter_units(cfg: SweepConfig, todo, slots: int = 1):
    """Trials grouped into Ray tasks, one unit at a time as ``todo`` (a sized iterable of
    TrialSpecs: a list or a streamed ``Todo``) yields them: cheap ones (estimated FLOPs below
    ``resources.batch_below_flops``; every dry-run trial) in units of up to
    ``resources.trials_per_task``, so that per-task overhead does not dominate them, but never
    so large that there are fewer than 4 units per slot (load balance of small sweeps); every
    other trial alone, so that expensive trials spread over the cluster."""
    from sweep.cost import estimate_flops

    res = cfg.resources
    size = max(1, min(res.trials_per_task, len(todo) // (4 * max(1, slots))))
    cur = []
    for s in todo:
        cheap = cfg.dry_run or estimate_flops(s) < res.batch_below_flops
        if not cheap or size == 1:
            yield [s]
            continue
        cur.append(s)
        if len(cur) == size:
            yield cur
            cur = []
    if cur:
        yield cur


def _record_system_failure(out, spec: TrialSpec, exc: BaseException, unit_size: int = 1,
                           keep_checkpoints: bool = False, attempts: int = 1) -> str:
    """A trial whose worker died (after ``attempts`` attempts: the driver's retries,
    sweep.watch) gets a result recording why. Ray's memory monitor killing a task of one trial
    makes it ``oom``; any other death, and an oom kill of a task that ran several trials (which
    of them used the memory is unknown), is a retryable ``failed`` that resume runs again."""
    from workers.trial import failure_summary

    try:  # the worker may have written its result just before it died
        t = read_result(out, spec.trial_id, columns=["status"])
        return t.column("status")[0].as_py()
    except ResultError:
        pass
    import ray.exceptions as rex

    status = "oom" if isinstance(exc, rex.OutOfMemoryError) and unit_size == 1 else "failed"
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    said = " ".join(lines[:2])  # Ray's memory monitor: the kill, then the node's memory in use
    row = failure_summary(spec, status, f"{type(exc).__name__} ({attempts} attempt"
                          f"{'s' if attempts != 1 else ''}): {said}"[:4000])
    row["retryable"] = status == "failed"  # the system failed, not the trial: resume retries it
    write_trial(out, row)
    if not row["retryable"] and not keep_checkpoints:  # final: its checkpoints are not needed
        from workers.checkpoint import remove_checkpoints

        remove_checkpoints(out, spec.trial_id)
    return status


def _result_status(out, trial_id: str) -> str | None:
    """The status of a trial's valid result file, or None if it has none."""
    try:
        return read_result(out, trial_id, columns=["status"]).column("status")[0].as_py()
    except ResultError:
        return None


def _record_timeout(out, spec: TrialSpec, error: str) -> str:
    """A trial killed over resources.trial_timeout (``error``: sweep.watch.Watch.message) gets
    a retryable ``failed`` result, unless it wrote its own result just before (that stands).
    Its checkpoints stay: resume continues from them."""
    from workers.trial import failure_summary

    status = _result_status(out, spec.trial_id)
    if status is not None:
        return status
    row = failure_summary(spec, "failed", error[:4000])
    row["retryable"] = True  # a stuck file system, a slow node, a limit too tight: run again
    write_trial(out, row)
    return "failed"


def _local_ray_roots(ray) -> list[tuple[str, object]]:
    """(name, Popen) of the raylet and GCS of a local Ray this driver started (Ray's node
    object; private API, in one place); empty when connected to an existing cluster."""
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    if node is None or not getattr(node, "head", False):
        return []
    return [(name, i.process) for name, infos in getattr(node, "all_processes", {}).items()
            if name in ("raylet", "gcs_server") for i in infos if i.process is not None]


def _start_reaper(ray) -> None:
    """A watcher in its own session that stops this driver's local Ray (its raylet, GCS and all
    they started, by PID) if the driver dies without shutting it down (SIGKILL): see
    sweep.reaper."""
    import subprocess

    roots = [p.pid for _, p in _local_ray_roots(ray)]
    if roots:
        subprocess.Popen([sys.executable, "-m", "sweep.reaper", str(os.getpid()), *map(str, roots)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)


class _TokenNotice:
    """Drops Ray's notice that it enabled token authentication for a new local cluster (its
    default, printed on every start; README "Network exposure" says what it means); every
    other record passes."""

    @staticmethod
    def filter(record) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


def _quiet_token_notice() -> None:
    import logging

    log_ = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenNotice) for f in log_.filters):
        log_.addFilter(_TokenNotice())


LOOPBACK = "127.0.0.1"
_RAY_CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_node():
    """While a local Ray starts inside this block (``ray.init(address="local",
    _node_ip_address="127.0.0.1")``): make 127.0.0.1 its node address, which is where Ray 2.60
    binds every server of the node (GCS, raylet, the workers' and the driver's gRPC servers,
    runtime-env and dashboard agents, metrics): on a loopback node address it binds to loopback,
    on any other to all interfaces (``::``/``0.0.0.0``) or that address.

    Ray turns a requested loopback node address into the machine's network address unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is 0, and reads that variable once, when ``ray`` is
    first imported: setting it later has no effect. So this sets both the variable (for the
    processes Ray starts) and Ray's constant read from it (``ray._private.ray_constants``,
    private: kept in this one place; ``check_loopback`` catches a Ray where it no longer
    works), and restores both on exit (a later join of a cluster keeps Ray's own default)."""
    from ray._private import ray_constants

    env, const = os.environ.get(_RAY_CLUSTER_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const
        if env is None:
            os.environ.pop(_RAY_CLUSTER_VAR, None)
        else:
            os.environ[_RAY_CLUSTER_VAR] = env


def check_loopback(ray) -> None:
    """Raises RuntimeError (after shutting the local Ray down) unless the local Ray this driver
    just started has a loopback node address (then all its servers listen on loopback only,
    see ``loopback_node``); the message names the address it got."""
    import ipaddress

    got = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(got).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"the local Ray started on {got}, not {LOOPBACK}, so its servers would "
                           f"listen on the network (Ray {ray.__version__}; README \"Network "
                           "exposure\"): stopped it")


def start_ray(cfg: SweepConfig):
    """A local Ray on 127.0.0.1 without dashboard, all of whose servers listen on loopback only
    (``loopback_node``; RuntimeError if Ray does not comply), or the cluster at
    cluster.address."""
    import logging

    import ray

    if ray.is_initialized():
        return ray
    common = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    if cfg.cluster.address is None:
        _quiet_token_notice()
        with loopback_node():
            ray.init(address="local", num_cpus=cfg.cluster.num_cpus, _node_ip_address=LOOPBACK,
                     **common)
        check_loopback(ray)
        _start_reaper(ray)
    else:  # checked first: one line (ClusterUnreachable, a ConfigError) if it cannot be used
        from sweep.connect import connect

        common.pop("include_dashboard")
        connect(ray, cfg.cluster.address, **common)
    return ray


def check_gpus(ray, per_trial: float) -> None:
    """A one-line refusal when trials ask for GPUs the Ray cluster does not have (they would
    wait forever)."""
    have = ray.cluster_resources().get("GPU", 0)
    if per_trial > 0 and have < per_trial:
        raise ConfigError(f"resources.gpus_per_trial: {per_trial:g}, but the Ray cluster has "
                          f"{have:g} GPUs; allowed: 0 here (CPU), or a cluster with GPUs")


GRACE_S = 30.0  # after Ctrl-C / SIGTERM: how long running trials may take to finish
KILL_GRACE_S = 30.0  # a task killed over resources.trial_timeout: how long its end may take
PROGRESS_LINE_S = 60.0  # progress=true without a terminal: one progress line per minute
RUNTIME_PROBE_S = 5.0  # how long the Ray runtime may take to answer before it counts as gone
EXIT_RUNTIME_LOST = 3


class DispatchStopped(Exception):
    """The dispatcher stopped before every trial ran. ``exit_code``: 128 + the signal for
    Ctrl-C / SIGTERM, EXIT_RUNTIME_LOST for a dead Ray runtime; ``counts`` by status of what
    finished in this session."""

    def __init__(self, reason: str, exit_code: int, counts: dict[str, int]):
        super().__init__(reason)
        self.reason, self.exit_code, self.counts = reason, exit_code, counts


def _runtime_stop(why: str, counts: dict[str, int]) -> "DispatchStopped":
    return DispatchStopped(f"{why}: stopped dispatching", EXIT_RUNTIME_LOST, counts)


def local_runtime_exited(ray) -> str | None:
    """For a local Ray this driver started: which of its raylet and GCS processes exited (a
    cheap poll of processes we hold), else None."""
    for name, proc in _local_ray_roots(ray):
        if proc.poll() is not None:
            return f"the local Ray runtime's {name} exited"
    return None


def runtime_lost(ray, exc: BaseException | None = None) -> str | None:
    """Why the Ray runtime as a whole is gone (not a single worker or node), or None.

    A local Ray that this driver started is gone once its raylet or GCS process has exited (we
    hold their processes); any runtime is gone when it does not answer a cluster query within
    RUNTIME_PROBE_S seconds (a dead head of a remote cluster, a killed local GCS)."""
    import threading

    import ray.exceptions as rex

    why = local_runtime_exited(ray)
    if why is not None:
        return why
    if isinstance(exc, rex.LocalRayletDiedError):
        return "the local raylet died"
    answer: list = []
    probe = threading.Thread(target=lambda: answer.append(ray.cluster_resources()), daemon=True)
    probe.start()
    probe.join(RUNTIME_PROBE_S)
    if not answer:
        return f"the Ray runtime did not answer for {RUNTIME_PROBE_S:.0f} s"
    return None


def saves_weights(cfg: SweepConfig, specs) -> bool:
    """``save_weights``, or for null: whether the plan's weights (float32) total at most
    WEIGHTS_AUTO_BYTES (then `sweep measure` can add measures later without retraining).
    ``specs``: a Plan or an iterable of TrialSpecs."""
    from sweep.config import WEIGHTS_AUTO_BYTES

    if cfg.save_weights is not None:
        return cfg.save_weights
    if isinstance(specs, Todo):  # the plan's weights, not only those left to run
        specs = specs.plan
    total = specs.n_params() if isinstance(specs, Plan) else sum(cost.n_params(s) for s in specs)
    return 4 * total <= WEIGHTS_AUTO_BYTES


def dispatch(cfg: SweepConfig, out, todo, lock=None,
             save_weights: bool | None = None) -> dict[str, int]:
    """Run ``todo`` (a list of TrialSpecs, or a ``Todo`` streamed from the manifest) on Ray with
    bounded in-flight work, submitting units as they are formed; returns counts by status.

    Stops early with DispatchStopped, recording nothing for the trials that did not run (resume
    runs them): on Ctrl-C or SIGTERM (no new submissions; running trials get GRACE_S seconds to
    finish, a second Ctrl-C cancels them; exit 130 / 143), and when the Ray runtime itself is
    gone (``runtime_lost``). A task whose worker or node died, or that Ray's memory monitor
    killed, is submitted again by this loop, at most ``resources.max_retries`` times (then its
    trials are recorded: ``oom`` for a memory-monitor kill of one trial, else a retryable
    ``failed``); a trial running longer than ``resources.trial_timeout`` is killed and recorded
    ``failed`` (retryable) with the phase it was in, and the other trials of its task run on
    (sweep.watch). With a ``lock`` (sweep.lock.DriverLock), stops (LockHeld) once it was lost."""
    import signal
    import threading

    import ray.exceptions as rex
    from tqdm import tqdm

    from sweep.watch import Watch, retried_errors
    from workers.checkpoint import parse_budget

    out = store(out)
    ray = start_ray(cfg)
    res = cfg.resources
    check_gpus(ray, res.gpus_per_trial)
    ctx = RunContext(
        out_dir=os.path.abspath(out.location) if out.local else out.location, data_root=cfg.dataset.root, download=cfg.dataset.download,
        save_weights=saves_weights(cfg, todo) if save_weights is None else save_weights,
        device="cuda" if res.gpus_per_trial > 0 else "cpu",
        num_threads=max(1, math.floor(res.cpus_per_trial)), dry_run=cfg.dry_run,
        checkpoint_every=cfg.train.checkpoint_every, keep_checkpoints=cfg.train.keep_checkpoints,
        time_budget=cfg.train.time_budget, fallback_steps=cfg.train.fallback_steps,
        trial_timeout=parse_budget(res.trial_timeout, "resources.trial_timeout"),
    )
    remote = ray.remote(_run_remote)
    # no retries by Ray: its retries of memory-monitor kills are unbounded (sweep.watch)
    options = dict(num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial,
                   max_retries=0, retry_exceptions=False)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // res.cpus_per_trial))
    node_memory = 0 if cfg.dry_run else largest_node_memory(  # (dry runs use none)
        ray, res.cpus_per_trial, res.gpus_per_trial)
    note = None if node_memory <= 0 else memory_note(
        todo.memory() if isinstance(todo, Todo) else [cost.estimate_memory(s) for s in todo],
        node_memory)
    if note:
        log(note)
    max_in_flight = res.max_in_flight or 2 * slots
    counts = {"ok": 0, "failed": 0, "diverged": 0, "oom": 0}
    units = iter_units(cfg, todo, slots)
    unit = next(units, None)  # the next unit to submit; None: all submitted
    in_flight: dict = {}  # ref -> (unit, attempt: 0 for the first submission, token)
    retry: list = []  # (unit, attempt) to submit again, before new units
    timed_out: dict = {}  # ref -> (trial_id, error) of a task killed over the trial limit
    watch = Watch(out, ctx.trial_timeout, res.trial_timeout, slots=slots, log=log)
    watch.clear_stale()
    stop: dict = {"signal": None, "count": 0, "since": None}

    def on_signal(signum, frame):
        stop["count"] += 1
        if stop["signal"] is None:
            stop["signal"], stop["since"] = signum, time.monotonic()
            log(f"\n{signal.Signals(signum).name}: no new trials; waiting up to {GRACE_S:.0f} s "
                f"for the {len(in_flight)} running task(s) (Ctrl-C again cancels them)")
        elif stop["count"] == 2:
            log("cancelling the running trials")

    handled = (signal.SIGINT, signal.SIGTERM)
    old = ({s: signal.signal(s, on_signal) for s in handled}
           if threading.current_thread() is threading.main_thread() else {})
    # a live bar on a terminal; into a file or pipe, one plain line per PROGRESS_LINE_S instead
    # of the bar's carriage-return frames
    live = cfg.progress and sys.stderr.isatty()
    bar = tqdm(total=len(todo), disable=not live, unit="trial", dynamic_ncols=True,
               file=sys.stderr, mininterval=0.5)
    lines = {"last": time.monotonic(), "t0": time.monotonic()}
    journal = Journal(out)
    quiet_since = time.monotonic()

    def submit(unit: list[TrialSpec], attempt: int) -> None:
        token = watch.token(len(unit))
        in_flight[remote.options(**options, memory=task_memory(unit, node_memory))
                  .remote(unit, ctx, token)] = (unit, attempt, token)

    def land(spec: TrialSpec, status: str, size=None, mtime_ns=None) -> None:
        if size is not None:  # else no journal line: status reads the file instead
            journal.record(spec.trial_id, status, size, mtime_ns)
        counts[status] += 1
        bar.update(1)

    def land_finished(unit: list[TrialSpec]) -> list[TrialSpec]:
        """Count the trials of a killed task that wrote their result; the others, in order."""
        left = []
        for spec in unit:
            status = _result_status(out, spec.trial_id)
            if status is None:
                left.append(spec)
            else:
                land(spec, status, *_file_stamp(out, spec.trial_id))
        return left

    try:
        while unit is not None or in_flight or retry:
            if lock is not None:
                lock.check()
            if stop["signal"] is not None:
                unit = None  # submit nothing more
                retry.clear()  # (no record: resume runs them)
                if stop["count"] >= 2 or time.monotonic() - stop["since"] > GRACE_S:
                    for ref in in_flight:
                        ray.cancel(ref, force=True)
                    break  # cancelled trials get no record: resume runs them
            while (retry or unit is not None) and len(in_flight) < max_in_flight:
                if retry:
                    submit(*retry.pop(0))
                else:
                    submit(unit, 0)
                    unit = next(units, None)
            if not in_flight:
                break
            try:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            except Exception as e:  # Ray itself failed (its raylet or GCS went away)
                why = runtime_lost(ray, e) or f"Ray failed ({type(e).__name__}: {e})"
                raise _runtime_stop(why, counts) from None
            why = local_runtime_exited(ray)  # a local GCS gone: the raylet follows in 60 s
            if why is not None:
                raise _runtime_stop(why, counts)
            if ready:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > RUNTIME_PROBE_S:  # nothing arrives: is Ray up?
                why = runtime_lost(ray)
                if why is not None:
                    raise _runtime_stop(why, counts)
                quiet_since = time.monotonic()
            by_token = {v[2]: r for r, v in in_flight.items() if v[2] is not None}
            for token, tid, seconds in watch.overdue():  # over resources.trial_timeout: kill
                ref = by_token.get(token)
                if ref is None or ref in timed_out or (tid is not None and watch.bounded(
                        lambda: _result_status(out, tid)) is not None):
                    continue  # (a trial that just wrote its result stands)
                timed_out[ref] = (tid, watch.message(watch.marker(tid, token), seconds)
                                  + "; `sweep resume` runs it again (a longer limit: "
                                  "resources.trial_timeout=...)", time.monotonic())
                ray.cancel(ref, force=True)
            waited = [r for r, (_, _, t) in timed_out.items()  # killed, yet its worker lives on
                      if r in in_flight and r not in ready  # (stuck in the kernel): given up
                      and time.monotonic() - t > KILL_GRACE_S]
            for ref in [*ready, *waited]:
                done, attempt, token = in_flight.pop(ref)
                try:
                    results = ray.get(ref, timeout=0 if ref in waited else None)
                    watch.finished(token)
                    timed_out.pop(ref, None)  # (it finished before it was killed)
                except Exception as e:
                    watch.finished(token, [s.trial_id for s in done], killed=True)
                    if ref in timed_out:  # killed over the limit (or it died meanwhile)
                        tid, error, _ = timed_out.pop(ref)
                        left = land_finished(done)
                        if tid is None and left:  # the driver's clock (no marker): the task
                            tid = left[0].trial_id  # runs in order, so it ran the first left
                        for spec in [s for s in left if s.trial_id == tid]:
                            land(spec, _record_timeout(out, spec, error),
                                 *_file_stamp(out, spec.trial_id))
                        rest = [s for s in left if s.trial_id != tid]
                        if rest:  # the task's other trials run on
                            retry.append((rest, attempt))
                        continue
                    if isinstance(e, rex.TaskCancelledError):
                        continue  # Ctrl-C: no record, resume runs them
                    why = runtime_lost(ray, e)  # Ray itself, or a worker or node, died
                    if why is not None:
                        raise _runtime_stop(why, counts) from None
                    if isinstance(e, retried_errors()) and attempt < res.max_retries:
                        left = land_finished(done)
                        # a memory-monitor kill of several trials: again one by one, so that
                        # the trial that does not fit is the one recorded oom
                        parts = ([[s] for s in left] if isinstance(e, rex.OutOfMemoryError)
                                 else [left] if left else [])
                        retry.extend((p, attempt + 1) for p in parts)
                        log(f"note: a task of {len(done)} trial(s) ended with "
                            f"{type(e).__name__}; running its {len(left)} unfinished trial(s) "
                            f"again (retry {attempt + 1} of {res.max_retries})")
                        continue
                    results = [(_record_system_failure(out, spec, e, len(done),
                                                       cfg.train.keep_checkpoints, attempt + 1),
                                *_file_stamp(out, spec.trial_id)) for spec in done]
                for spec, (status, size, mtime_ns) in zip(done, results):
                    land(spec, status, size, mtime_ns)
            bar.set_postfix(ok=counts["ok"], failed=counts["failed"] + counts["oom"],
                            diverged=counts["diverged"], running=min(len(in_flight), slots),
                            refresh=False)
            bar.refresh()
            now = time.monotonic()
            if cfg.progress and not live and now - lines["last"] >= PROGRESS_LINE_S:
                lines["last"] = now
                log(f"progress: {sum(counts.values())}/{len(todo)} trials in "
                    f"{now - lines['t0']:.0f} s (" + ", ".join(
                        f"{v} {k}" for k, v in counts.items() if v) + ")")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
        journal.close()
    if stop["signal"] is not None and sum(counts.values()) < len(todo):  # else: all ran
        name = signal.Signals(stop["signal"]).name
        raise DispatchStopped(f"stopped by {name}", 128 + int(stop["signal"]), counts)
    return counts


# What `sweep resume` may change: where and how the trials run, never which trials there are.
RESUMABLE_KEYS = tuple(k for k in NOT_IDENTITY if k != "out")  # sweep.config, declared once


def stored_config(sweep_dir: str | Path, overrides: list[str] = (),
                  command: str = "resume") -> SweepConfig:
    """The configuration a sweep directory was launched with (``sweep.json``), with ``out`` set
    to that directory and ``overrides`` (KEY=VALUE, keys in RESUMABLE_KEYS only) applied."""
    from sweep.config import (check_override_keys, check_schema, from_dict, merged,
                              override_key, override_tree)

    d = open_out(sweep_dir, "SWEEP_DIR")
    meta = d.uri(SWEEP_FILE)
    if not d.is_file(SWEEP_FILE):
        raise ConfigError(f"SWEEP_DIR: {d} is not a sweep directory (no {SWEEP_FILE})")
    try:
        doc = json.loads(d.read_text(SWEEP_FILE))
        stored, conf = doc["identity_hash"], doc["config"]
        version = int(doc.get("identity_version", 1))
    except Exception as e:
        raise ConfigError(f"SWEEP_DIR: {meta} is unreadable ({type(e).__name__})") from None
    check_override_keys(overrides, allow_groups=False)  # an unknown key: its closest keys
    plain = []
    for o in overrides:
        prefix, key = override_key(o)
        if prefix == "~" or "=" not in o or not any(key == k or key.startswith(k + ".")
                                                     for k in RESUMABLE_KEYS):
            raise ConfigError(f"{command}: cannot override {prefix + key!r}; allowed: KEY=VALUE with "
                              f"KEY in {', '.join(RESUMABLE_KEYS)} (other keys change the "
                              "sweep's trials)")
        plain.append(o)  # + and ++ of a schema key: a plain value
    # sweep.json holds the resolved configuration: plain data, never interpolated again (a
    # literal ${ in it stays one); only the overrides' own ${...} are resolved
    conf = merged(conf, override_tree(plain))
    conf["out"] = d.location
    check_schema(conf)
    cfg = from_dict(conf)
    if cfg.identity_hash(version) != stored:
        raise ConfigError(f"SWEEP_DIR: {meta} does not match its own identity hash {stored}; "
                          "it was edited or written by another version")
    return cfg


def _checked_out(cfg: SweepConfig) -> tuple[Store, tuple | None]:
    """The sweep directory after every check that needs no lock (prepare repeats them under
    it), and a new plan when it has none (``_new_plan``): bad input, ``trials`` above the space
    and plans with trials that fit nowhere are refused before the lock is taken or anything is
    written."""
    out = open_out(cfg.out_dir())
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
    note = grid_note(cfg, specs)
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
        out, plan = prepare(cfg, planned)
        del planned
        todo = pending_rows(out, plan.ids, move_invalid=False)
    log(f"{len(plan)} trials planned ({out.uri(PLAN_FILE)}), {len(plan) - len(todo)} already "
        f"have results; run them with: {sweep_command('resume', out)}")
    return out.location


def launch(cfg: SweepConfig, verify: bool = False, command: str = "launch") -> str:
    """Plan (or read the plan), run the planned trials that lack a valid result, then evaluate
    the measures asked for that finished trials lack (from their saved weights); returns the
    sweep directory. Progress and diagnostics go to stderr; the caller prints the result."""
    if cfg.cluster.address is not None:  # before any work: one line if it cannot be used
        start_ray(cfg)
    out, planned = _checked_out(cfg)
    with DriverLock(out, command, log=log) as lock:
        out, plan = prepare(cfg, planned)
        del planned  # a new plan's specs: from here on streamed from the manifest
        todo = Todo(plan, pending_rows(out, plan.ids, verify=verify))
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
                    + sweep_command("resume", out))
                raise
            log("finished in {:.1f} s: ".format(time.perf_counter() - t0)
                + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        if not cfg.dry_run:  # finished trials that lack a measure asked for now: from weights
            from sweep import measure

            try:
                measure.run(cfg, out, plan, log, lock)
            except ConfigError as e:  # no saved weights: the trials' own results stand
                log(f"note: {e}")
    return out.location
