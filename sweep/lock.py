"""One driver per sweep directory.

A driver (``sweep launch``, ``sweep resume``, ``sweep plan``) holds ``<sweep>/driver.lock`` for as
long as it writes the plan or dispatches trials: a small JSON document with the holder's host,
pid, command, start time and a heartbeat it rewrites every ``HEARTBEAT_S`` seconds. A second
driver into the same directory stops before doing anything, naming the holder (exit 2). A lock
whose holder is gone is taken over, with a printed note: on the same host when its pid no longer
exists, from another host when its heartbeat is older than ``STALE_AFTER_S`` seconds. Read-only
commands (``sweep status``, ``sweep report``, ``analysis.load_results``) never take it.

Guarantees by backend:
- local and shared POSIX paths: the lock is created with O_CREAT | O_EXCL (atomic on local disks
  and on NFSv3+), and a stale lock is taken over by renaming it aside first (a rename succeeds for
  exactly one taker), so two drivers never both hold it;
- object stores (s3://, gs://): no create-if-absent is available, so the lock is written with one
  PUT and read back ``SETTLE_S`` seconds later; of two drivers that start within that window the
  later PUT wins and the other stops. Each heartbeat reads the lock first, so a driver that finds
  another's token there (a lost race, or a takeover after it was suspended for longer than
  ``STALE_AFTER_S``) stops dispatching within one heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from sweep.config import ConfigError
from workers.storage import Store

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # another host's lock without a heartbeat for this long is taken over
SETTLE_S = 1.0  # object stores: wait before reading the lock back
FRESH_S = 10.0  # an unreadable lock file younger than this is being written: treated as live


class LockHeld(ConfigError):
    """Another driver holds the sweep directory (exit 2, one line naming it)."""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    command: str
    started: float
    heartbeat: float
    token: str

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat
        return (f"`sweep {self.command}` on host {self.host}, pid {self.pid}, since "
                f"{_iso(self.started)}, last heartbeat {max(age, 0.0):.0f} s ago")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder_state(h: Holder, now: float | None = None) -> tuple[bool, str]:
    """(live, why) for a lock's holder."""
    now = time.time() if now is None else now
    if h.host == socket.gethostname():
        if not _pid_alive(h.pid):
            return False, f"its process {h.pid} on this host is gone"
        return True, "its process is running on this host"
    age = now - h.heartbeat
    if age > STALE_AFTER_S:
        return False, f"no heartbeat for {age:.0f} s (> {STALE_AFTER_S:.0f} s)"
    return True, f"heartbeat {age:.0f} s ago"


def read_holder(st: Store) -> Holder | None:
    """The lock's holder, or None when there is no lock or it cannot be parsed."""
    try:
        doc = json.loads(st.read_text(LOCK_FILE))
        return Holder(**{k: doc[k] for k in Holder.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_status(st: Store) -> str:
    """One line for ``sweep status``: whether a driver is live, and since when."""
    h = read_holder(st)
    if h is None:
        return "driver: none running" if not st.exists(LOCK_FILE) else \
            f"driver: unreadable lock file {st.uri(LOCK_FILE)}"
    live, why = holder_state(h)
    return (f"driver: {'live' if live else 'gone (stale lock; the next driver takes it over)'}: "
            f"{h.describe()} ({why})")


class DriverLock:
    """``with DriverLock(store, "launch"):`` holds the sweep directory; ``lost`` is set (to the
    reason) if the lock was taken away, which the dispatcher checks."""

    def __init__(self, st: Store, command: str, log=None):
        self.st, self.command = st, command
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.log = log or (lambda msg: None)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> str:
        h = Holder(socket.gethostname(), os.getpid(), self.command, self.started, time.time(),
                   self.token)
        return json.dumps(asdict(h))

    # ---- acquire
    def __enter__(self) -> "DriverLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.st.makedirs()
        for _ in range(5):
            h = read_holder(self.st)
            if h is not None:
                live, why = holder_state(h)
                if live:
                    raise LockHeld(
                        f"SWEEP_DIR: {self.st} is being run by another driver ({h.describe()}); "
                        "wait for it or stop that process (sweep status shows it; read-only "
                        "commands such as status and report work meanwhile)")
                self.log(f"note: taking over the lock of a driver that is gone ({h.describe()}; "
                         f"{why})")
                if not self._set_aside(h.token):
                    continue  # another driver took it over first: look again
            elif self.st.exists(LOCK_FILE) and not self._unreadable_and_old():
                raise LockHeld(f"SWEEP_DIR: {self.st} has a lock file being written by another "
                               "driver; try again in a few seconds")
            elif self.st.exists(LOCK_FILE):
                self.log(f"note: setting aside an unreadable lock file {self.st.uri(LOCK_FILE)}")
                self._set_aside(None)
            if self._create():
                break
        else:
            raise LockHeld(f"SWEEP_DIR: {self.st}: could not take the driver lock (other drivers "
                           "keep taking it); try again")
        self._thread = threading.Thread(target=self._beat, name="sweep-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _unreadable_and_old(self) -> bool:
        try:
            mtime = self.st.entry(LOCK_FILE).mtime_ns / 1e9
        except OSError:
            return True
        return time.time() - mtime > FRESH_S

    def _set_aside(self, token: str | None) -> bool:
        """Move the stale lock away; False if it is no longer the one we judged stale."""
        if token is not None:
            h = read_holder(self.st)
            if h is None or h.token != token:
                return False
        aside = f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}"
        try:
            self.st.move(LOCK_FILE, aside)  # one rename: exactly one taker succeeds (POSIX)
        except (FileNotFoundError, OSError):
            return False
        return True

    def _create(self) -> bool:
        if self.st.local:
            try:
                fd = os.open(self.st.path(LOCK_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(self._doc())
            return True
        self.st.write_text(LOCK_FILE, self._doc())  # one PUT (object stores)
        time.sleep(SETTLE_S)
        h = read_holder(self.st)
        return h is not None and h.token == self.token

    # ---- hold
    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            h = read_holder(self.st)
            if h is None or h.token != self.token:
                self.lost = ("the driver lock was taken over by "
                             + (h.describe() if h else "nobody (it was removed)"))
                self.log(f"error: {self.lost}; stopping")
                return
            try:
                self.st.write_text(LOCK_FILE, self._doc())
            except OSError as e:  # a transient store error: try again at the next beat
                self.log(f"note: could not refresh the driver lock ({e})")

    def check(self) -> None:
        """Raise LockHeld if the lock was lost (the dispatcher calls this between waits)."""
        if self.lost:
            raise LockHeld(f"SWEEP_DIR: {self.st}: {self.lost}")

    # ---- release
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        h = read_holder(self.st)
        if h is not None and h.token == self.token:
            try:
                self.st.delete(LOCK_FILE)
            except OSError:
                pass
