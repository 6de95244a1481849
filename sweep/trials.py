"""Training trials on Ray, the unit of work of ``sweep launch`` and ``sweep resume``: trials
grouped into tasks (``iter_units``), the task that runs them (``_run_remote``), what a task asks
of a node (``task_memory``), and how a trial's outcome lands: its status counted and journaled
(workers.results.journal), a dead or timed-out trial recorded. The loop is sweep.dispatch.
"""

from __future__ import annotations

import time

from sweep import cost
from sweep.config import SweepConfig
from sweep.dispatch import Tasks, Work, log, stop_asked
from sweep.runtime import largest_node_memory
from workers.results.plan_file import Plan, Todo
from workers.results.record import RECORDED, ResultError, read_result, write_trial
from workers.results.spec import RunContext, TrialSpec
from workers.results.sweep_dir import SweepDir


def _run_remote(specs: list[TrialSpec], ctx: RunContext, token: str | None = None,
                stop=None) -> list[tuple[str, int | None, int | None]]:
    """One Ray task: run a unit of trials in order; per trial its status and its result file's
    size and modification time (for the driver's journal; None if the file cannot be seen). A
    retried unit (its worker died) skips the trials that had already written a valid result.
    With ``ctx.trial_timeout`` and the submission's ``token``, each trial's phase is marked for
    the driver (workers.phase, sweep.watch). ``stop``: the driver's stop flag
    (sweep.dispatch.stop_asked), asked before each trial: once it says stop, no more trial
    starts and the list ends there (the trials after it get nothing: a later call runs them)."""
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
                if stop_asked(stop):
                    break  # the driver stopped: no new trial (nor a record of it)
                if marker is not None:
                    marker.begin(spec.trial_id)
                status = run_trial(spec, ctx)["status"]
                if marker is not None:
                    marker.end()
            out.append((status, *_file_stamp(ctx.out_dir, spec.trial_id)))
    return out


def _file_stamp(out, trial_id: str) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of the trial's result file in the sweep directory ``out`` (a SweepDir,
    or on a worker the location it was told), or (None, None) if it cannot be seen."""
    try:
        d = SweepDir.of(out)
        e = d.entry(d.trial_file(trial_id))
        return e.size, e.mtime_ns
    except OSError:  # a shared file system may not show the file yet
        return None, None


def task_memory(unit: list[TrialSpec], node_memory: int) -> int:
    """The memory (bytes, Ray's ``memory`` resource) a task of ``unit``'s trials asks for: its
    largest trial's estimate (sweep/cost.py; they run one after another), so that Ray places
    it only on a node with that much unclaimed, capped at the largest node's memory (a trial
    estimated above every node still runs somewhere, and ends ``oom`` if it really does not
    fit; ``plan.infeasible`` keeps such trials out of plans by default). 0: no request."""
    if node_memory <= 0:
        return 0
    return int(min(max(cost.estimate_memory(s) for s in unit), node_memory))


def memory_note(memory: list[int], node_memory: int) -> str | None:
    """A line for the log when trials to run (their estimated ``memory``, bytes) are estimated
    above the memory of every node of the connected cluster that can run them (the plan was
    checked against ``resources.worker_memory_gb`` or the planning machine); None otherwise."""
    if node_memory <= 0:
        return None
    over = [m for m in memory if m > node_memory]
    if not over:
        return None
    return (f"note: {len(over):,} of {len(memory):,} trials to run are estimated above the "
            f"largest node's memory here ({cost.human_bytes(node_memory)}; the largest needs "
            f"{cost.human_bytes(max(over))}): they run on that node and may end oom")


def make_units(cfg: SweepConfig, todo, slots: int = 1) -> list[list[TrialSpec]]:
    """``iter_units`` as a list."""
    return list(iter_units(cfg, todo, slots))


def iter_units(cfg: SweepConfig, todo, slots=1):
    """Trials grouped into Ray tasks, one unit at a time as ``todo`` (a sized iterable of
    TrialSpecs: a list or a streamed ``Todo``) yields them: cheap ones (estimated FLOPs below
    ``resources.batch_below_flops``; every dry-run trial) in units of up to
    ``resources.trials_per_task``, so that per-task overhead does not dominate them, but never
    so large that there are fewer than 4 units per slot (load balance of small sweeps); every
    other trial alone, so that expensive trials spread over the cluster. ``slots``: how many
    trials can run at once, an int or a function giving it now (asked as each unit is started:
    on a cluster whose nodes join later, later units are sized for them)."""
    res = cfg.resources
    count = slots if callable(slots) else (lambda: slots)
    total = len(todo)

    def size() -> int:
        return max(1, min(res.trials_per_task, total // (4 * max(1, count()))))

    cur, cap = [], None
    for s in todo:
        cheap = cfg.dry_run or cost.estimate_flops(s) < res.batch_below_flops
        if cheap and not cur:
            cap = size()
        if not cheap or cap == 1:
            yield [s]
            continue
        cur.append(s)
        if len(cur) >= cap:
            yield cur
            cur = []
    if cur:
        yield cur


# the driver's own records (a failure row): attempts at a write that raises OSError, and the
# waits between them (a transient error of a store or a shared file system), before the
# dispatch loop stops with the reason (sweep.dispatch: a sweep directory it cannot write)
RECORD_WAITS_S = (2.0, 8.0)


def _write_record(out, row: dict):
    """``write_trial`` of the driver's record ``row``, tried again after each of
    RECORD_WAITS_S on an OSError (write-once: an attempt that did write leaves a file the next
    one finds, and its row is dropped); the last OSError is raised."""
    for wait in (*RECORD_WAITS_S, None):
        try:
            return write_trial(out, row)
        except OSError:
            if wait is None:
                raise
            time.sleep(wait)


def _record_system_failure(out, spec: TrialSpec, exc: BaseException, unit_size: int = 1,
                           keep_checkpoints: bool = False, attempts: int = 1) -> str | None:
    """A trial whose worker died (after ``attempts`` attempts: the driver's retries,
    sweep.watch) gets a result recording why. Ray's memory monitor killing a task of one trial
    makes it ``oom``; any other death, and an oom kill of a task that ran several trials (which
    of them used the memory is unknown), is a retryable ``failed`` that resume runs again.
    Returns the status that stands, or None when a result file stands there that cannot be read
    (damaged: a node that crashed while writing it; resume moves it aside and runs the trial
    again). OSError when the sweep directory cannot be written (``_write_record``)."""
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
    wrote = _write_record(out, row)
    if not wrote.written:  # a stale attempt's result landed first meanwhile (that one stands),
        return _result_status(out, spec.trial_id)  # or a damaged file is there (None)
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


def _record_timeout(out, spec: TrialSpec, error: str) -> str | None:
    """A trial killed over resources.trial_timeout (``error``: sweep.watch.Watch.message) gets
    a retryable ``failed`` result, unless it wrote its own result just before (that stands).
    Its checkpoints stay: resume continues from them. None, OSError: as
    ``_record_system_failure``."""
    from workers.trial import failure_summary

    status = _result_status(out, spec.trial_id)
    if status is not None:
        return status
    row = failure_summary(spec, "failed", error[:4000])
    row["retryable"] = True  # a stuck file system, a slow node, a limit too tight: run again
    if not _write_record(out, row).written:  # its own result landed meanwhile (that one
        return _result_status(out, spec.trial_id)  # stands), or a damaged file is there (None)
    return "failed"


def saves_weights(cfg: SweepConfig, specs) -> bool:
    """``save_weights``, or for null: whether the plan's weights (float32) total at most
    WEIGHTS_AUTO_BYTES (then `sweep measure` can add measures later without retraining).
    ``specs``: a Plan or an iterable of TrialSpecs."""
    from sweep.config import WEIGHTS_AUTO_BYTES

    if cfg.save_weights is not None:
        return cfg.save_weights
    if isinstance(specs, Todo):  # the plan's weights, not only those left to run
        specs = specs.plan
    total = specs.n_params() if isinstance(specs, Plan) else None
    if total is None:  # a list, or a manifest written without the estimates
        total = sum(cost.n_params(s) for s in specs)
    return 4 * total <= WEIGHTS_AUTO_BYTES


class TrialWork(Work):
    """Train trials (sweep.dispatch.Work): a unit is a list of TrialSpecs run in order by one
    ``_run_remote`` task; a trial's outcome lands as its status, counted and journaled (with
    its result file's size and modification time); a trial whose task died for good, or that
    ran over the limit, gets a record saying why (``_record_system_failure``,
    ``_record_timeout``)."""

    def __init__(self, cfg: SweepConfig, out: SweepDir, todo, ctx: RunContext, tasks: Tasks,
                 node_memory: int):
        self.cfg, self.out, self.todo, self.ctx = cfg, out, todo, ctx
        self.tasks, self.node_memory = tasks, node_memory
        self.counts = {s.value: 0 for s in RECORDED}
        self.total = len(todo)
        self.journal = out.journal()
        self._journal_said = False

    def units(self, slots):
        return iter_units(self.cfg, self.todo, slots)

    def submit(self, unit: list[TrialSpec], token: str | None, stop):
        return (self.tasks.task(memory=task_memory(unit, self.node_memory))
                .remote(unit, self.ctx, token, stop))

    def trial_ids(self, unit: list[TrialSpec]) -> list[str]:
        return [s.trial_id for s in unit]

    def _land(self, spec: TrialSpec, status: str | None, size=None, mtime_ns=None) -> None:
        if status is None:  # a damaged result file stands: no journal line, counted failed
            where = self.out.uri(self.out.trial_file(spec.trial_id))
            log(f"trial {spec.trial_id}: its result file {where} cannot be read (damaged); "
                "`sweep resume` sets it aside and runs the trial again")
            self.counts["failed"] += 1
            return
        if size is not None:  # else no journal line: status reads the file instead
            self.journal.record(spec.trial_id, status, size, mtime_ns)
            if self.journal.error is not None and not self._journal_said:
                self._journal_said = True
                log(f"note: the sweep directory's journal could not be written "
                    f"({self.journal.error}); status and resume read the result files instead")
        self.counts[status] += 1

    def done(self, unit: list[TrialSpec], results) -> int:
        for spec, (status, size, mtime_ns) in zip(unit, results):
            self._land(spec, status, size, mtime_ns)
        return len(results)

    def settled(self, trial_id: str) -> bool:
        return _result_status(self.out, trial_id) is not None

    def unfinished(self, unit: list[TrialSpec]) -> tuple[list[TrialSpec], int]:
        """Count the trials of a killed task that wrote their result; the others, in order."""
        left = []
        for spec in unit:
            status = _result_status(self.out, spec.trial_id)
            if status is None:
                left.append(spec)
            else:
                self._land(spec, status, *_file_stamp(self.out, spec.trial_id))
        return left, len(unit) - len(left)

    def timed_out(self, unit, trial_id, phase, seconds, error) -> tuple[int, list[list]]:
        """The trial over the limit is recorded failed (retryable); the task's trials before it
        had finished, those after it run again."""
        left, n = self.unfinished(unit)
        if trial_id is None and left:  # the driver's clock (no marker): the task runs in
            trial_id = left[0].trial_id  # order, so it ran the first left
        error += ("; `sweep resume` runs it again (a longer limit: "
                  "resources.trial_timeout=...)")
        for spec in [s for s in left if s.trial_id == trial_id]:
            self._land(spec, _record_timeout(self.out, spec, error),
                       *_file_stamp(self.out, spec.trial_id))
            n += 1
        rest = [s for s in left if s.trial_id != trial_id]
        return n, [rest] if rest else []

    def failed(self, unit: list[TrialSpec], exc: BaseException, attempts: int) -> int:
        for spec in unit:
            status = _record_system_failure(self.out, spec, exc, len(unit),
                                            self.cfg.train.keep_checkpoints, attempts)
            self._land(spec, status, *_file_stamp(self.out, spec.trial_id))
        return len(unit)

    def postfix(self) -> dict:
        c = self.counts
        return dict(ok=c["ok"], failed=c["failed"] + c["oom"], diverged=c["diverged"])

    def close(self) -> None:
        self.journal.close()


def dispatch(cfg: SweepConfig, out, todo, lock=None,
             save_weights: bool | None = None) -> dict[str, int]:
    """Run ``todo`` (a list of TrialSpecs, or a ``Todo`` streamed from the manifest) on Ray with
    bounded in-flight work, submitting units as they are formed (sweep.dispatch.run: signals,
    runtime loss, retries, time limits, progress; DispatchStopped, LockHeld); returns counts by
    status. A task whose worker or node died, or that Ray's memory monitor killed, is submitted
    again at most ``resources.max_retries`` times, then its trials are recorded: ``oom`` for a
    memory-monitor kill of one trial, else a retryable ``failed``; a trial running longer than
    ``resources.trial_timeout`` is killed and recorded ``failed`` (retryable) with the phase it
    was in, and the other trials of its task run on (sweep.watch)."""
    out = SweepDir.of(out)
    tasks = Tasks(cfg, _run_remote, out, log)
    res = cfg.resources
    ctx = RunContext(
        out_dir=tasks.out_dir,
        data_root=cfg.dataset.root, download=cfg.dataset.download,
        save_weights=saves_weights(cfg, todo) if save_weights is None else save_weights,
        device=tasks.device, num_threads=tasks.num_threads, dry_run=cfg.dry_run,
        checkpoint_every=cfg.train.checkpoint_every, keep_checkpoints=cfg.train.keep_checkpoints,
        time_budget=cfg.train.time_budget, fallback_steps=cfg.train.fallback_steps,
        trial_timeout=tasks.limit,
    )
    node_memory = 0 if cfg.dry_run else largest_node_memory(  # (dry runs use none)
        tasks.ray, res.cpus_per_trial, res.gpus_per_trial)
    if node_memory > 0:
        memory = todo.memory() if isinstance(todo, Todo) else None
        if memory is None:  # a list, or a manifest written without the estimates
            memory = [cost.estimate_memory(s) for s in todo]
        note = memory_note(memory, node_memory)
        if note:
            log(note)
    return tasks.run(TrialWork(cfg, out, todo, ctx, tasks, node_memory), lock=lock)
