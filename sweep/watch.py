"""What keeps one task from stalling a sweep: bounded retries and a wall-clock limit per trial.
The rules the one dispatch loop (``sweep.dispatch.run``) applies to every unit of work: trials,
`sweep measure`'s evaluations and its retrainings.

**Retries.** Tasks are submitted with Ray's ``max_retries=0``, and the driver itself submits
again a task whose worker or node died, or that Ray's memory monitor killed, at most
``resources.max_retries`` times (``RETRIED``). Ray's own retries are unbounded for memory-monitor
kills (its ``task_oom_retries`` is -1 by default), which an existing cluster's configuration
decides and a driver cannot change; counted here, they are bounded on every cluster.

**Limits.** With ``resources.trial_timeout``, a task marks each trial it runs (``workers.phase``:
``running/<trial_id>.<token>.json``, ``token`` unique per submission); a trial's clock starts
when the driver first sees its marker (the driver's own clock: no skew between nodes; a task
waiting for resources has no marker and is not timed) and the driver polls the markers every
``workers.phase.tick(limit)`` seconds, so the limit holds to about a tenth of it. A trial over
its limit is reported by :meth:`Watch.overdue`; the caller kills its task
(``ray.cancel(force=True)``) and records the phase the marker names.

**Without a marker.** Writing a marker is best effort (a trial never fails for it), so a task
whose markers never reach the sweep directory is timed by the driver's fallback clock: it
starts when the task is among the ``slots`` oldest running tasks (those that can run at once:
as far as the driver can tell, it started) and the task is over after ``max(limit,
FALLBACK_GRACE_S)`` (to start) plus ``limit`` per trial it runs; its phase is then
``NO_MARKER``.

**A stuck store.** The watch lists ``running/`` and reads markers in a thread of its own and
waits at most ``STORE_WAIT_S`` seconds for it: when the sweep directory does not answer (a hung
file system) or fails, the watch keeps its last view (the clocks started go on), says so once,
and the dispatch loop goes on.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

from workers.phase import parse_marker_name, read_marker, remove_marker, tick
from workers.results.layout import MARKER_SUFFIX, RUNNING
from workers.results.sweep_dir import SweepDir


def retried_errors() -> tuple[type, ...]:
    """The Ray errors after which a task is submitted again (its worker or node died, or Ray's
    memory monitor killed it); any other error of a task is final."""
    import ray.exceptions as rex

    return (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.ObjectLostError)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


NO_MARKER = "unknown (no phase marker reached the sweep directory)"
FALLBACK_GRACE_S = 60.0  # the fallback clock: time a task may take to start, at least
STORE_WAIT_S = 5.0  # how long the watch waits for the sweep directory to answer


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    """Start ``fn()`` in a daemon thread; returns it and the dict that gets ``value`` (what
    ``fn`` returned) or ``error`` (what it raised) when it ends."""
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # (reported to the waiting side)
            box["error"] = e

    thread = threading.Thread(target=work, name="watch-store", daemon=True)
    thread.start()
    return thread, box


def bounded(fn, seconds: float, default=None):
    """``fn()``, or ``default`` if it raises or does not return within ``seconds`` (it goes
    on in its daemon thread): a read of a store, a question to a cluster whose head may hang."""
    thread, box = _in_thread(fn)
    thread.join(seconds)
    return box.get("value", default) if not thread.is_alive() else default


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Watch:
    """The markers of the running trials of one driver, against ``limit`` seconds (None: no
    limit; then nothing is written or polled). ``setting``: the limit as configured, for
    messages; ``slots``: how many of the driver's tasks can run at once (the fallback clock;
    0 where no node can run one yet: a cluster waiting for its autoscaler, whose tasks are not
    timed while they wait);
    ``log``: where a sweep directory that does not answer is reported (one line)."""

    def __init__(self, out, limit: float | None, setting=None, slots: int = 1, log=_stderr):
        self.out, self.limit, self.setting = SweepDir.of(out), limit, setting
        self.slots, self.log = max(0, int(slots)), log
        self.poll = tick(limit) if limit else None
        self.grace, self.wait = FALLBACK_GRACE_S, STORE_WAIT_S
        # token -> [trials in its task, when its fallback clock started (None: not yet)], in
        # submission order
        self.tokens: dict[str, list] = {}
        self.seen: dict[tuple[str, str], float] = {}  # (trial_id, token) -> first seen
        self.reported: set[tuple[str | None, str]] = set()
        self.last_poll = float("-inf")
        self._listing: tuple[threading.Thread, dict] | None = None  # a listing under way
        self._unanswered = False  # the last listing did not answer (said once)

    def bounded(self, fn, default=None):
        """``fn()`` (a read of the sweep directory), or ``default`` if it raises or does not
        return within ``self.wait`` seconds (it goes on in its daemon thread)."""
        return bounded(fn, self.wait, default)

    def clear_stale(self) -> None:
        """Remove the markers left by tasks of earlier drivers (killed with their driver);
        given up (one line) if the sweep directory does not answer within ``self.wait`` s (when
        it answers later, the markers of this driver's tasks are kept)."""
        if self.limit is None:
            return

        def clear():  # (late, after a hang: this driver's own markers stay)
            for e in self.out.list(RUNNING, MARKER_SUFFIX):
                key = parse_marker_name(e.name)
                if key is not None and key[1] in self.tokens:
                    continue
                try:
                    self.out.delete(f"{RUNNING}/{e.name}")
                except OSError:
                    pass

        thread, box = _in_thread(clear)
        thread.join(self.wait)
        if thread.is_alive() or "error" in box:
            why = (f"did not answer within {self.wait:g} s" if thread.is_alive()
                   else first_line(box["error"]))
            self.log(f"note: the markers of earlier drivers in {self.out.location}/{RUNNING} "
                     f"were not removed (the sweep directory {why}); they are ignored")

    def token(self, trials: int = 1) -> str | None:
        """A new submission's token (None without a limit: the task marks nothing);
        ``trials``: how many trials its task runs (its fallback clock's allowance)."""
        if self.limit is None:
            return None
        t = uuid.uuid4().hex[:16]
        self.tokens[t] = [max(1, int(trials)), None]
        return t

    def finished(self, token: str | None, trial_ids=(), killed: bool = False) -> None:
        """The task of ``token`` ended; ``killed``: it did not end by itself, so the markers of
        its trials ``trial_ids`` may be left: remove them (not waiting for a sweep directory
        that does not answer)."""
        if token is None:
            return
        self.tokens.pop(token, None)
        for key in [k for k in self.seen if k[1] == token]:
            del self.seen[key]
        self.reported = {k for k in self.reported if k[1] != token}
        if killed and trial_ids:
            self.bounded(lambda: [remove_marker(self.out, tid, token) for tid in trial_ids])

    def _names(self) -> list[str] | None:
        """The file names in ``running/``, or None when the sweep directory did not answer
        within ``self.wait`` seconds or failed (said once until it answers again). A listing
        that hangs is not started again while it hangs; its answer, when it comes, is used."""
        if self._listing is None:
            self._listing = _in_thread(
                lambda: [e.name for e in self.out.list(RUNNING, MARKER_SUFFIX)])
        thread, box = self._listing
        thread.join(self.wait)
        if thread.is_alive():
            why = f"did not answer within {self.wait:g} s"
        else:
            self._listing = None
            if "error" not in box:
                if self._unanswered:
                    self.log(f"note: the sweep directory answers again ({RUNNING}/ listed)")
                self._unanswered = False
                return box["value"]
            why = f"failed ({first_line(box['error'])})"
        if not self._unanswered:
            self.log(f"note: listing {self.out.location}/{RUNNING} {why}: the trial time "
                     "limits go on from the markers seen before, and from the driver's own "
                     "clock (sweep.watch)")
        self._unanswered = True
        return None

    def overdue(self) -> list[tuple[str, str | None, float]]:
        """(token, trial_id, seconds) of each running trial over the limit: seconds since its
        marker was first seen; and of each task over its fallback clock's allowance (trial_id
        None: no marker tells which trial; seconds since its clock started). Each is reported
        once; polls the markers at most once per tick."""
        now = time.monotonic()
        if self.limit is None or now - self.last_poll < self.poll:
            return []
        self.last_poll = now
        names = self._names()
        if names is not None:  # else: the last view stands
            present = set()
            for name in names:
                key = parse_marker_name(name)
                if key is not None and key[1] in self.tokens:
                    present.add(key)
                    self.seen.setdefault(key, now)
            for key in [k for k in self.seen if k not in present]:  # that trial ended
                del self.seen[key]
        for info in list(self.tokens.values())[:self.slots]:  # these can run: started
            if info[1] is None:
                info[1] = now
        out = []
        for key, since in self.seen.items():
            if now - since > self.limit and key not in self.reported:
                self.reported.add(key)
                out.append((key[1], key[0], now - since))
        for token, (trials, started) in self.tokens.items():
            if (started is not None and (None, token) not in self.reported
                    and now - started > max(self.limit, self.grace) + trials * self.limit):
                self.reported.add((None, token))
                out.append((token, None, now - started))
        return out

    def marker(self, trial_id: str | None, token: str) -> dict:
        """The trial's marker (``phase``: "training", "measuring <name>", ...; ``hostname``),
        ``{}`` if it cannot be read (within ``self.wait`` s); for trial_id None (the fallback
        clock), ``{"phase": NO_MARKER}``."""
        if trial_id is None:
            return {"phase": NO_MARKER}
        return self.bounded(lambda: read_marker(self.out, trial_id, token)) or {}

    def message(self, marker: dict, seconds: float) -> str:
        """The error of a trial killed over the limit after ``seconds``, naming the limit and
        the phase its ``marker`` names (NO_MARKER: a task over its fallback clock)."""
        phase = marker.get("phase") or "in a phase it did not report"
        host = f" on {marker['hostname']}" if marker.get("hostname") else ""
        setting = self.setting if self.setting is not None else self.limit
        limit = f"resources.trial_timeout={setting} ({self.limit:g} s)"
        if phase == NO_MARKER:
            return (f"TrialTimeout: its task still running after {seconds:.0f} s by the "
                    f"driver's clock, over {limit} per trial plus "
                    f"{max(self.limit, self.grace):g} s to start, phase {NO_MARKER}; its task "
                    "was killed")
        return (f"TrialTimeout: still running after {seconds:.0f} s, over {limit}, while "
                f"{phase}{host}; its task was killed")
