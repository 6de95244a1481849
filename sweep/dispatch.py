"""The one dispatch loop: units of work run as Ray tasks with bounded in-flight work, by
``sweep launch`` / ``sweep resume`` (train trials: ``sweep.trials``) and ``sweep measure``
(measure trials: ``sweep.evaluate``; retrain networks: ``sweep.measure.retrain_trials``).

What a unit is and how its outcome lands is a ``Work``; everything else is here, once:

- **signals**: on Ctrl-C or SIGTERM no trial starts any more, anywhere: no new units are
  submitted, and the driver sets its stop flag (``StopFlag``, a Ray actor that every task asks
  before each trial, ``stop_asked``), so that a task submitted earlier that starts only now, and
  the next trial of a running task of several, return without running it (no record: a later
  call runs it); the trials already running get GRACE_S seconds to finish, a second Ctrl-C
  cancels them; then DispatchStopped (exit 130 / 143). A task that cannot reach the flag (its
  actor killed, e.g. by Ray's memory monitor) runs its trials as if it had none;
- **runtime loss**: when the Ray runtime itself is gone (``sweep.runtime.runtime_lost``),
  DispatchStopped (exit EXIT_RUNTIME_LOST), nothing recorded for what did not run;
- **a sweep directory the driver cannot write**: when landing an outcome raises OSError (the
  Work's own writes, each tried again first: a full disk, a read-only mount, a store that
  refuses), the running tasks are cancelled and DispatchStopped (exit EXIT_SWEEP_DIR) names
  the error: what could not be recorded runs again on resume;
- **no node**: on a cluster, when no live node can run a task for ``cluster.node_wait`` (an
  autoscaler that starts none, a fixed cluster's nodes lost), the waiting tasks are cancelled
  and DispatchStopped (exit EXIT_NO_NODES): a later call runs them;
- **retries**: a task whose worker or node died, or that Ray's memory monitor killed
  (``sweep.watch.retried_errors``), is submitted again at most ``resources.max_retries`` times
  with its unfinished trials (one by one after a memory-monitor kill); then its failure lands;
- **time limits**: a trial over ``resources.trial_timeout`` (``sweep.watch.Watch``) has its task
  killed; the Work records it and says which of the task's trials run again;
- **progress**: a bar on a terminal, else one line per PROGRESS_LINE_S with ``progress=true``;
- **the lock**: with a ``sweep.lock.DriverLock``, stops (LockHeld) once it was lost.
"""

from __future__ import annotations

import sys
import time

from analysis.progress import duration
from sweep.config import ConfigError
from sweep.runtime import RUNTIME_PROBE_S, local_runtime_exited, runtime_lost

GRACE_S = 30.0  # after Ctrl-C / SIGTERM: how long running trials may take to finish
STOP_CHECK_S = 10.0  # how long a task waits for the stop flag's answer (none: it goes on)
KILL_GRACE_S = 30.0  # a task killed over resources.trial_timeout: how long its end may take
PROGRESS_LINE_S = 60.0  # progress=true without a terminal: one progress line per minute
CAPACITY_POLL_S = 10.0  # on a cluster: how often the trials its nodes can run are counted again
EXIT_RUNTIME_LOST = 3
EXIT_SWEEP_DIR = 4  # the sweep directory could not be written (a full disk, a read-only mount)
EXIT_NO_NODES = 5  # no node of the cluster could run a trial for cluster.node_wait


def log(msg: str) -> None:
    """Progress and diagnostics of a driver: one line on stderr."""
    print(msg, file=sys.stderr, flush=True)


class DispatchStopped(Exception):
    """The dispatcher stopped before every unit ran. ``exit_code``: 128 + the signal for
    Ctrl-C / SIGTERM, EXIT_RUNTIME_LOST for a dead Ray runtime; ``counts`` (the Work's) of what
    finished in this session."""

    def __init__(self, reason: str, exit_code: int, counts: dict[str, int]):
        super().__init__(reason)
        self.reason, self.exit_code, self.counts = reason, exit_code, counts


def _runtime_stop(why: str, counts: dict[str, int]) -> DispatchStopped:
    return DispatchStopped(f"{why}: stopped dispatching", EXIT_RUNTIME_LOST, counts)


class _Flag:
    """The stop flag's actor (``StopFlag``): set once, asked by the tasks."""

    def __init__(self):
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped


class StopFlag:
    """The driver's "no new trials" flag for its tasks: a Ray actor (``_Flag``: no CPU, placed
    on the driver's node when Ray says which, owned by the driver, so it dies with it) whose
    ``handle`` every task gets and asks before each trial (``stop_asked``). ``set`` is
    idempotent and never raises; ``close`` sets it and kills the actor. The flag only stops
    trials from starting after a signal: a task that cannot reach it goes on, as without one."""

    def __init__(self, ray):
        self.ray = ray
        self.handle = self._start()
        self.stopped = False

    def _start(self):
        try:  # next to the driver, so that it dies only with it (under Ray Client: the head
            # node; where Ray cannot say, its default placement)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            where = NodeAffinitySchedulingStrategy(
                self.ray.get_runtime_context().get_node_id(), soft=True)
        except Exception:
            where = "DEFAULT"
        return self.ray.remote(_Flag).options(num_cpus=0, max_restarts=0,
                                              scheduling_strategy=where).remote()

    def set(self) -> None:
        """Tasks asking from now on stop (one actor call, not waited for)."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.handle.set.remote()
        except Exception:  # (Ray itself failing: the loop finds out; a task that cannot ask
            pass  # runs its trials, as with no flag)

    def close(self) -> None:
        """Set (a task still asking it stops), then the actor killed (one asking later runs
        its trials, as with no flag: by then its driver's loop has ended)."""
        self.set()
        try:
            self.ray.kill(self.handle, no_restart=True)
        except Exception:  # (already gone, or the runtime with it)
            pass


_UNREACHABLE: set[str] = set()  # in a worker process: flags that did not answer (not asked again)


def stop_asked(stop) -> bool:
    """In a task, before each trial: whether the driver's ``StopFlag`` (its ``handle``; None:
    never) says to start no trial. A few milliseconds (one actor call). A flag that does not
    answer within STOP_CHECK_S seconds or raises (its actor killed, e.g. by Ray's memory
    monitor, or its driver gone) says go on, and this process does not ask it again: the flag
    only keeps trials from starting after a signal, and a trial must never be lost to it (a
    task whose driver died is ended by Ray; a stale attempt's write is refused by the
    write-once guard). Waits on the call's future, not in ``ray.get``: a task blocked in
    ``ray.get`` hands its CPU back to Ray meanwhile, which may start a queued task on it (two
    trials on one CPU)."""
    if stop is None:
        return False
    key = repr(stop)
    if key in _UNREACHABLE:
        return False
    try:
        return bool(stop.is_set.remote().future().result(timeout=STOP_CHECK_S))
    except Exception:
        _UNREACHABLE.add(key)
        return False


class Work:
    """What one dispatch runs. A unit is a list of items (one per trial, in the order its task
    runs them); each method that lands outcomes returns how many trials it settled (the
    progress). Subclasses define every method below but ``close``."""

    counts: dict[str, int]  # by outcome, what DispatchStopped and the progress line report
    total: int  # trials to settle

    def units(self, slots):
        """The units to submit, formed as they are taken (a generator is fine). ``slots()``:
        how many trials the nodes can run at once now (at least 1; on a cluster it follows the
        nodes that join, so a unit formed later may be sized for more of them)."""
        raise NotImplementedError

    def submit(self, unit: list, token: str | None, stop):
        """Submit the unit's Ray task (``token``: its phase markers', sweep.watch; ``stop``:
        the ``StopFlag.handle`` its task asks, ``stop_asked``, before each trial); its ref."""
        raise NotImplementedError

    def trial_ids(self, unit: list) -> list[str]:
        raise NotImplementedError

    def done(self, unit: list, results: list) -> int:
        """The task returned ``results``, one per trial it ran, in order: the first
        ``len(results)`` of the unit (fewer than all when the stop flag told it to start no
        more: those get no record). Land them; returns ``len(results)``."""
        raise NotImplementedError

    def settled(self, trial_id: str) -> bool:
        """Whether the trial already wrote its outcome (a trial over the limit that did is not
        killed)."""
        return False

    def unfinished(self, unit: list) -> tuple[list, int]:
        """After the task died (to be run again): land what it finished; the items left."""
        return list(unit), 0

    def timed_out(self, unit: list, trial_id: str | None, phase: str, seconds: float,
                  error: str) -> tuple[int, list[list]]:
        """The task was killed while ``trial_id`` (None: the driver's clock, no marker) was in
        ``phase`` over the limit after ``seconds`` (``error``: sweep.watch.Watch.message):
        land what is settled; the units still to run."""
        raise NotImplementedError

    def failed(self, unit: list, exc: BaseException, attempts: int) -> int:
        """The task failed for good after ``attempts`` attempts: land that."""
        raise NotImplementedError

    def postfix(self) -> dict:
        """What the progress bar shows beside the count."""
        return {k: v for k, v in self.counts.items() if v}

    def close(self) -> None:
        """The loop ended (normally or not)."""


def progress_line(settled: int, total: int, seconds: float, counts: dict[str, int],
                  running: int) -> str:
    """The plain progress line of a run without a terminal (what the bar shows): trials settled
    of ``total`` after ``seconds``, the counts by outcome, the running tasks and, once a trial
    has settled, the time left at the rate so far (as the bar's estimate: rough while the
    trials' costs differ)."""
    parts = [", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none settled",
             f"{running} running"]
    if 0 < settled < total:
        left = seconds / settled * (total - settled)
        parts.append(f"about {duration(left)} left at the rate so far")
    return f"progress: {settled}/{total} trials in {seconds:.0f} s ({'; '.join(parts)})"


def run(work: Work, ray, out, resources, slots: int, watch, lock=None,
        progress: bool = False, capacity=None, node_wait: float | None = None) -> dict[str, int]:
    """Run ``work`` on ``ray`` (a started runtime) with at most ``resources.max_in_flight``
    (default 2 per slot) tasks in flight; returns ``work.counts``. ``watch``: the
    sweep.watch.Watch of ``resources.trial_timeout`` for this sweep directory ``out``;
    ``slots``: tasks that can run at once; ``capacity``: None, or a function giving that number
    as nodes join or leave (a cluster's), asked every CAPACITY_POLL_S: the default bound
    follows it, so that an autoscaler sees the demand of twice the trials the cluster runs and
    the nodes it adds are used (a bound fixed at the start, on a cluster whose workers start at
    zero, kept 2 tasks in flight for good). ``node_wait``: with ``capacity``, how many seconds
    in a row no live node may be able to run a task (None: no limit); then the tasks waiting
    are cancelled and DispatchStopped (EXIT_NO_NODES). ``progress``: a bar on a terminal, else
    a line per PROGRESS_LINE_S. Raises DispatchStopped (nothing recorded for what did not run)
    after a signal, when the runtime is gone or no node came; LockHeld when ``lock`` was lost. Its ``StopFlag``
    lives while it runs: set at the first signal, set and killed when it ends."""
    import signal
    import threading

    import ray.exceptions as rex
    from tqdm import tqdm

    from sweep.watch import bounded, retried_errors

    max_in_flight = resources.max_in_flight or 2 * slots
    units = iter(work.units(lambda: max(1, watch.slots)))
    unit = next(units, None)  # the next unit to submit; None: all submitted
    in_flight: dict = {}  # ref -> (unit, attempt: 0 for the first submission, token)
    retry: list = []  # (unit, attempt) to submit again, before new units
    timed_out: dict = {}  # ref -> (trial_id, phase, seconds, error, when killed)
    stop: dict = {"signal": None, "count": 0, "since": None}
    settled = 0
    flag = StopFlag(ray)

    def running() -> int:  # (as far as the driver can tell: 0 while no node can run one)
        return min(len(in_flight), watch.slots)

    def on_signal(signum, frame):  # (said in the loop, after a fresh count of the nodes)
        stop["count"] += 1
        if stop["signal"] is None:
            stop["signal"], stop["since"] = signum, time.monotonic()
        elif stop["count"] == 2:
            log("cancelling the running trials")

    handled = (signal.SIGINT, signal.SIGTERM)
    old, unrelay = {}, None
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, on_signal) for s in handled}
        unrelay = _relay_signals(handled, flag)
    # a live bar on a terminal; into a file or pipe, one plain line per PROGRESS_LINE_S instead
    # of the bar's carriage-return frames
    live = progress and sys.stderr.isatty()
    bar = tqdm(total=work.total, disable=not live, unit="trial", dynamic_ncols=True,
               file=sys.stderr, mininterval=0.5)
    lines = {"last": time.monotonic(), "t0": time.monotonic()}
    quiet_since = time.monotonic()
    asked = float("-inf")  # when ``capacity`` was last asked (first: at once)
    no_node_since = None  # since when no live node can run a task (None: one can)

    def follow_capacity() -> None:
        nonlocal max_in_flight, asked
        asked = time.monotonic()
        now = bounded(capacity, RUNTIME_PROBE_S)  # (a hung head: the last count stands,
        if now is None or now == watch.slots:  # runtime_lost is the loop's to find)
            return
        before, watch.slots = watch.slots, now  # (0: no node can run one; none is timed)
        if resources.max_in_flight is None:
            max_in_flight = 2 * max(1, now)
        log(f"note: the cluster's nodes now run {now} trial(s) at once (were {before})"
            + (f"; up to {max_in_flight} tasks in flight" if resources.max_in_flight is None
               else ""))

    def submit(u: list, attempt: int) -> None:
        token = watch.token(len(u))
        in_flight[work.submit(u, token, flag.handle)] = (u, attempt, token)

    def landed(n: int) -> None:
        nonlocal settled
        settled += n
        bar.update(n)

    def settle(fn, *args):  # a Work method that lands outcomes (it writes the sweep directory)
        try:
            return fn(*args)
        except BrokenPipeError:  # (stderr's reader gone: not the sweep directory's fault)
            raise
        except OSError as e:  # nothing more can be recorded: stop, naming why
            from sweep.watch import first_line

            _cancel(ray, list(in_flight))
            raise DispatchStopped(
                f"the sweep directory {out} could not be written ({first_line(e)}): stopped "
                "dispatching", EXIT_SWEEP_DIR, work.counts) from None

    try:
        while unit is not None or in_flight or retry:
            if lock is not None:
                lock.check()
            if stop["signal"] is not None:
                flag.set()  # (the relay set it when the signal came; else now: a no-op then)
                unit = None  # submit nothing more
                retry.clear()  # (no record: a later call runs them)
                if not stop.get("said"):
                    stop["said"] = True
                    if capacity is not None:
                        follow_capacity()  # (a node may have joined since the last count)
                    name = signal.Signals(stop["signal"]).name
                    if running() == 0:
                        log(f"\n{name}: no new trials; none is running (no node can run one "
                            "yet)")
                    else:
                        log(f"\n{name}: no new trials; waiting up to {GRACE_S:.0f} s for the "
                            f"{running()} running task(s) (Ctrl-C again cancels them)")
                if (stop["count"] >= 2 or time.monotonic() - stop["since"] > GRACE_S
                        or running() == 0):
                    _cancel(ray, list(in_flight))
                    break  # cancelled units get no record: a later call runs them
            if capacity is not None and time.monotonic() - asked >= CAPACITY_POLL_S:
                follow_capacity()
            if capacity is not None and node_wait is not None and stop["signal"] is None:
                if watch.slots > 0:
                    no_node_since = None
                elif no_node_since is None:
                    no_node_since = time.monotonic()
                elif time.monotonic() - no_node_since > node_wait:
                    _cancel(ray, list(in_flight))  # (waiting for a node: none of them runs)
                    raise DispatchStopped(
                        f"no node of the Ray cluster could run a trial for "
                        f"{duration(node_wait)} (cluster.node_wait): stopped dispatching",
                        EXIT_NO_NODES, work.counts)
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
                raise _runtime_stop(why, work.counts) from None
            why = local_runtime_exited(ray)  # a local GCS gone: the raylet follows in 60 s
            if why is not None:
                raise _runtime_stop(why, work.counts)
            if ready:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > RUNTIME_PROBE_S:  # nothing arrives: is Ray up?
                why = runtime_lost(ray)
                if why is not None:
                    raise _runtime_stop(why, work.counts)
                quiet_since = time.monotonic()
            by_token = {v[2]: r for r, v in in_flight.items() if v[2] is not None}
            for token, tid, seconds in watch.overdue():  # over resources.trial_timeout: kill
                ref = by_token.get(token)
                if ref is None or ref in timed_out or (tid is not None and watch.bounded(
                        lambda: work.settled(tid), False)):
                    continue  # (a trial that just wrote its outcome stands)
                marker = watch.marker(tid, token)
                timed_out[ref] = (tid, marker.get("phase") or "", seconds,
                                  watch.message(marker, seconds), time.monotonic())
                ray.cancel(ref, force=True)
            waited = [r for r, v in timed_out.items()  # killed, yet its worker lives on
                      if r in in_flight and r not in ready  # (stuck in the kernel): given up
                      and time.monotonic() - v[-1] > KILL_GRACE_S]
            for ref in [*ready, *waited]:
                done, attempt, token = in_flight.pop(ref)
                try:
                    results = ray.get(ref, timeout=0 if ref in waited else None)
                    watch.finished(token)
                    timed_out.pop(ref, None)  # (it finished before it was killed)
                except Exception as e:
                    watch.finished(token, work.trial_ids(done), killed=True)
                    if ref in timed_out:  # killed over the limit (or it died meanwhile)
                        n, rest = settle(work.timed_out, done, *timed_out.pop(ref)[:-1])
                        landed(n)
                        retry.extend((u, attempt) for u in rest)  # the task's others run on
                        continue
                    if isinstance(e, rex.TaskCancelledError):
                        continue  # Ctrl-C: no record, a later call runs them
                    why = runtime_lost(ray, e)  # Ray itself, or a worker or node, died
                    if why is not None:
                        raise _runtime_stop(why, work.counts) from None
                    if isinstance(e, retried_errors()) and attempt < resources.max_retries:
                        left, n = settle(work.unfinished, done)
                        landed(n)
                        # a memory-monitor kill of several trials: again one by one, so that
                        # the trial that does not fit is the one recorded oom
                        parts = ([[x] for x in left] if isinstance(e, rex.OutOfMemoryError)
                                 else [left] if left else [])
                        retry.extend((p, attempt + 1) for p in parts)
                        log(f"note: a task of {len(done)} trial(s) ended with "
                            f"{type(e).__name__}; running its {len(left)} unfinished trial(s) "
                            f"again (retry {attempt + 1} of {resources.max_retries})")
                        continue
                    landed(settle(work.failed, done, e, attempt + 1))
                    continue
                landed(settle(work.done, done, results))
                rest = done[len(results):]  # not run: the stop flag said so
                if rest and stop["signal"] is None:  # (only a signal sets it while this runs)
                    retry.append((rest, attempt))
            bar.set_postfix(**work.postfix(), running=running(), refresh=False)
            bar.refresh()
            now = time.monotonic()
            if progress and not live and now - lines["last"] >= PROGRESS_LINE_S:
                lines["last"] = now
                log(progress_line(settled, work.total, now - lines["t0"], work.counts,
                                  running()))
    finally:
        if unrelay is not None:  # (first: the wakeup fd back before its socket closes)
            unrelay()
        try:  # (the handlers last: a Ctrl-C meanwhile is counted, not a KeyboardInterrupt)
            flag.close()
            bar.close()
            work.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    if stop["signal"] is not None and settled < work.total:  # else: all ran
        name = signal.Signals(stop["signal"]).name
        raise DispatchStopped(f"stopped by {name}", 128 + int(stop["signal"]), work.counts)
    return work.counts


def _cancel(ray, refs: list, wait_s: float = 2.0) -> None:
    """Cancel the tasks ``refs`` (force: their workers are killed) and take the outcome of those
    that end within ``wait_s``: a task that failed just before (say, on the full disk the loop
    stops for) would otherwise have Ray print its traceback as an "unhandled error" after the
    driver's own last line. Nothing of theirs is recorded: a later call runs them."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # (a task that ended meanwhile, a runtime going away)
            pass
    try:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s) if refs else ([], [])
    except Exception:
        return
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # (its error, now handled: not printed by Ray)
            pass


def _relay_signals(handled, flag: StopFlag):
    """Set ``flag`` the moment one of the signals ``handled`` arrives, from a thread: Python
    runs the driver's handler only when its main thread is back in Python, which inside Ray's
    wait is up to a second later, while the wakeup file descriptor (``signal.set_wakeup_fd``)
    gets the signal's number at once. Call only from the main thread, with handlers for
    ``handled`` installed; returns the function that restores the previous wakeup fd and ends
    the thread."""
    import signal
    import socket
    import threading

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    numbers = {int(s) for s in handled}

    def relay():
        with reader:
            while True:
                try:
                    data = reader.recv(64)
                except OSError:
                    return
                if not data:  # the writer closed: the loop ended
                    return
                if numbers & set(data):
                    flag.set()

    thread = threading.Thread(target=relay, name="dispatch-stop-relay", daemon=True)
    thread.start()

    def undo() -> None:
        signal.set_wakeup_fd(previous)
        writer.close()
        thread.join(timeout=5)

    return undo


class Tasks:
    """Ray set up to run the task function ``fn`` over the sweep directory ``out`` (a Store)
    for ``cfg``, as every dispatch needs it: ``ray`` (``sweep.runtime.start_ray``; a ConfigError
    if trials ask for GPUs it lacks), ``remote`` (the task function, no options yet),
    ``options`` (what each task asks for: a trial's CPUs and GPUs; no retries by Ray, whose
    retries of memory-monitor kills are unbounded: this loop retries, sweep.watch), ``slots``
    (tasks that can run at once), ``limit`` (``resources.trial_timeout`` in seconds; None: none)
    and its ``watch`` (sweep.watch.Watch, stale markers cleared), and what a task is told of
    where it runs: ``out_dir`` (an OS path when local, else the URI), ``device`` and
    ``num_threads`` (the trial's CPUs, at least 1)."""

    def __init__(self, cfg, fn, out, log):
        import math
        import os

        from sweep.runtime import check_trials_fit, start_ray
        from sweep.watch import Watch
        from workers.checkpoint import parse_budget

        self.cfg, self.out = cfg, out
        self.ray = start_ray(cfg)
        res = cfg.resources
        # (a local Ray's nodes are all there; a cluster's may join later, unless
        # cluster.fixed_nodes=true)
        local = cfg.cluster.address is None
        try:
            note = check_trials_fit(self.ray, res.cpus_per_trial, res.gpus_per_trial,
                                    True if local else cfg.cluster.fixed_nodes, local=local)
            runs = self.capacity()
        except ConfigError:
            raise
        except Exception as e:  # Ray itself failed answering (a head gone since connecting)
            why = runtime_lost(self.ray, e) or f"Ray failed ({type(e).__name__}: {e})"
            raise _runtime_stop(why, {}) from None
        if note:
            wait = parse_budget(cfg.cluster.node_wait, "cluster.node_wait")
            log(note + ("" if wait is None else f"; at most {duration(wait)} in a row, then "
                        "the driver stops (cluster.node_wait)"))
        self.remote = self.ray.remote(fn)
        self.options = dict(num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial,
                            max_retries=0, retry_exceptions=False)
        self.slots = max(1, runs)
        self.limit = parse_budget(res.trial_timeout, "resources.trial_timeout")
        self.watch = Watch(out, self.limit, res.trial_timeout, slots=runs, log=log)
        self.watch.clear_stale()
        self.out_dir = os.path.abspath(out.location) if out.local else out.location
        self.device = "cuda" if res.gpus_per_trial > 0 else "cpu"
        self.num_threads = max(1, math.floor(res.cpus_per_trial))

    def task(self, **options):
        """The remote function with ``options`` and any more (e.g. ``memory``) set."""
        return self.remote.options(**self.options, **options)

    def capacity(self) -> int:
        """How many trials the live nodes can run at once (0: none yet): per node, its CPUs over
        ``resources.cpus_per_trial`` and, where trials ask for GPUs, its GPUs over
        ``resources.gpus_per_trial``, the smaller, rounded down (a task runs on one node);
        summed over the nodes."""
        res = self.cfg.resources
        total = 0
        for node in self.ray.nodes():
            if not node.get("Alive"):
                continue
            have = node.get("Resources", {})
            fits = _fits(have.get("CPU", 0), res.cpus_per_trial)
            if res.gpus_per_trial > 0:
                fits = min(fits, _fits(have.get("GPU", 0), res.gpus_per_trial))
            total += fits
        return total

    def run(self, work: Work, lock=None) -> dict[str, int]:
        """``run`` of ``work`` with these tasks (``cfg.progress``); on a cluster the number of
        trials that can run at once is followed as nodes join and leave (``capacity``)."""
        from workers.checkpoint import parse_budget

        local = self.cfg.cluster.address is None  # (a local Ray's nodes are all there)
        return run(work, self.ray, self.out, self.cfg.resources, self.slots, self.watch,
                   lock=lock, progress=self.cfg.progress,
                   capacity=None if local else self.capacity,
                   node_wait=parse_budget(self.cfg.cluster.node_wait, "cluster.node_wait"))


def _fits(have: float, per_trial: float) -> int:
    """How many trials asking ``per_trial`` of a resource ``have`` holds (Ray counts fractions
    of a resource to 1e-4: 1 GPU holds ten trials of 0.1)."""
    return int((have + 1e-6) // per_trial)
