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
  exactly one taker), so two drivers never both hold it. The holder keeps the file open: its
  heartbeat is written through that descriptor, after checking that the path is still that file,
  so a driver suspended between the check and the write only writes into its own lock (moved
  aside), never over the lock of a driver that took over meanwhile; it removes its lock only
  holding the takeover file (``driver.lock.takeover``), so no takeover can move it in between;
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
from workers.results.layout import LOCK_FILE, LOCK_TAKEOVER
from workers.results.storage import Store

HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # another host's lock without a heartbeat for this long is taken over
# ... or for this long when the SLURM job its driver ran in has ended (a driver can outlive its
# job's end briefly, or for good under salloc without --kill-command: three missed heartbeats)
SLURM_ENDED_AFTER_S = 3 * HEARTBEAT_S + 1.0
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
    boot_id: str = ""  # the host's boot (Linux): a lock from before a reboot is stale
    pid_started: float = 0.0  # the process's start time: a reused pid is not the holder
    slurm_job: str = ""  # the SLURM job the driver ran in (SLURM_JOB_ID), "" outside SLURM

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat
        return (f"`sweep {self.command}` on host {self.host}, pid {self.pid}, since "
                f"{_iso(self.started)}, last heartbeat {max(age, 0.0):.0f} s ago")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_started(pid: int) -> float | None:
    """The start time of process ``pid`` (psutil), None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # exists, not ours to inspect
        return 0.0


def holder_state(h: Holder, st: Store | None = None, token: str | None = None) -> tuple[bool, str]:
    """(live, why) for a lock's holder. Same host: its process must exist with the start time
    the lock recorded (a reused pid, a restarted container that is pid 1 again, a reboot: gone).
    Another host: its heartbeat must be younger than STALE_AFTER_S, measured on the store's
    clock (the lock file's mtime against a probe file written now), so clock skew between
    hosts does not matter. A driver that ran in a SLURM job the scheduler reports ended is gone
    after SLURM_ENDED_AFTER_S without a heartbeat (the next job of a ``sweep slurm`` chain
    does not wait out STALE_AFTER_S)."""
    if h.host == socket.gethostname():
        if h.boot_id and h.boot_id != _boot_id():
            return False, "the host rebooted since"
        started = _pid_started(h.pid)
        if started is None:
            return False, f"its process {h.pid} on this host is gone"
        if h.pid_started and started and abs(started - h.pid_started) > 1.0:
            return False, f"pid {h.pid} is another process now"
        return True, "its process is running on this host"
    age = _age_on_store(st, h) if st is not None else time.time() - h.heartbeat
    if (h.slurm_job and age > SLURM_ENDED_AFTER_S
            and (ended := slurm_job_ended(h.slurm_job))):
        return False, f"{ended}, no heartbeat for {age:.0f} s"
    if age > STALE_AFTER_S:
        return False, f"no heartbeat for {age:.0f} s (> {STALE_AFTER_S:.0f} s)"
    return True, f"heartbeat {age:.0f} s ago"


# squeue's states of a job that has ended (``man squeue``, JOB STATE CODES)
SLURM_ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                         "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"})


def slurm_job_state(job_id: str, timeout: float = 10.0) -> str | None:
    """SLURM job ``job_id``'s state as ``squeue`` prints it (RUNNING, COMPLETING, COMPLETED,
    ...), ``GONE`` when the scheduler no longer knows it ("Invalid job id": squeue keeps an
    ended job for MinJobAge, 300 s by default), or None when ``squeue`` is missing, fails or
    does not answer in ``timeout`` s."""
    import shutil
    import subprocess

    if not job_id or shutil.which("squeue") is None:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-o", "%T", "-j", str(job_id)], capture_output=True,
                           text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return GONE if "invalid job id" in r.stderr.lower() else None
    return r.stdout.strip().split("\n")[0].strip() or None


GONE = "GONE"  # slurm_job_state: the scheduler no longer knows the job


def slurm_job_ended(job_id: str, timeout: float = 10.0) -> str | None:
    """Why SLURM job ``job_id`` has certainly ended ("its SLURM job 42 ended (COMPLETED)"), or
    None when it has not (COMPLETING: its processes are still being ended), or when the
    scheduler cannot say (``slurm_job_state`` None: then the heartbeat decides)."""
    state = slurm_job_state(job_id, timeout)
    if state in SLURM_ENDED:
        return f"its SLURM job {job_id} ended ({state})"
    if state == GONE:
        return f"its SLURM job {job_id} ended (no longer known to the scheduler)"
    return None


def _age_on_store(st: Store, h: Holder) -> float:
    """Seconds since the lock was last written, both times read from the store's clock."""
    probe = f"{LOCK_FILE}.probe-{uuid.uuid4().hex[:8]}"
    try:
        st.write_text(probe, "")
        try:
            return (st.entry(probe).mtime_ns - st.entry(LOCK_FILE).mtime_ns) / 1e9
        finally:
            st.delete(probe)
    except OSError:
        return time.time() - h.heartbeat


def read_holder(st: Store, strict: bool = False) -> Holder | None:
    """The lock's holder; None when there is no lock file or it cannot be parsed. With
    ``strict``, other read errors (a store's transient 503) are raised, not taken for
    'no lock'."""
    try:
        text = st.read_text(LOCK_FILE)
    except FileNotFoundError:
        return None
    except OSError:
        if strict:
            raise
        return None
    try:
        doc = json.loads(text)
        return Holder(**{k: doc[k] for k in Holder.__dataclass_fields__ if k in doc})
    except (ValueError, KeyError, TypeError):
        return None


def lock_state(st: Store) -> tuple[str, bool]:
    """(one line for ``sweep status``: whether a driver is live, and since when; whether a
    driver holds the sweep directory now: a live holder, or a lock file that cannot be read,
    which a driver may be writing)."""
    h = read_holder(st)
    if h is None:
        if not st.exists(LOCK_FILE):
            return "driver: none running", False
        return f"driver: unreadable lock file {st.uri(LOCK_FILE)}", True
    live, why = holder_state(h, st)
    return (f"driver: {'live' if live else 'gone (stale lock; the next driver takes it over)'}: "
            f"{h.describe()} ({why})", live)


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
        self._fd: int | None = None  # local paths: the lock file, open while held

    def _ended_job_settles(self, h: Holder) -> bool:
        """True once the live-looking lock of ``h``, a driver on another host in a SLURM job
        the scheduler reports ended, has gone SLURM_ENDED_AFTER_S without a heartbeat (then
        it is stale), waiting at most that long (after the job's COMPLETING state, at most
        STALE_AFTER_S): the next job of a ``sweep slurm`` chain
        starts as soon as a job killed hard at its time limit has ended, its driver's last
        heartbeat a few seconds old. False at once for any other lock, or when the heartbeat
        goes on (a driver that outlived its job, e.g. under salloc: LockHeld)."""
        if not h.slurm_job or h.host == socket.gethostname():
            return False
        # COMPLETING: the job's processes are being ended (the chain's next job may start
        # meanwhile: afterany is satisfied); wait for it to end, at most STALE_AFTER_S
        until = time.monotonic() + STALE_AFTER_S
        while slurm_job_state(h.slurm_job) == "COMPLETING" and time.monotonic() < until:
            time.sleep(2.0)
        ended = slurm_job_ended(h.slurm_job)
        if not ended:
            return False
        self.log(f"note: the lock's driver ran in a SLURM job that ended ({ended}); waiting up "
                 f"to {SLURM_ENDED_AFTER_S:.0f} s for its heartbeat to stop")
        deadline = time.monotonic() + SLURM_ENDED_AFTER_S + 1.0
        while time.monotonic() < deadline:
            time.sleep(min(2.0, SLURM_ENDED_AFTER_S / 4))
            now = read_holder(self.st)
            if now is None or now.token != h.token:
                return True  # released or taken over: look again
            if not holder_state(now, self.st, self.token)[0]:
                return True
        return False

    def _doc(self) -> str:
        h = Holder(socket.gethostname(), os.getpid(), self.command, self.started, time.time(),
                   self.token, _boot_id(), _pid_started(os.getpid()) or 0.0,
                   os.environ.get("SLURM_JOB_ID", ""))
        return json.dumps(asdict(h))

    # ---- acquire
    def __enter__(self) -> "DriverLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.st.makedirs()
        for _ in range(15):
            h = read_holder(self.st)
            if h is not None:
                live, why = holder_state(h, self.st, self.token)
                if live and self._ended_job_settles(h):
                    continue  # its heartbeat stopped with its SLURM job: look again
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
                time.sleep(0.2)  # another driver is writing its lock: read it again
                continue
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

    def _takeover_mutex(self) -> bool:
        """Local paths: create the takeover file (O_EXCL), which serialises takers and the
        holder's release; False if another holds it (one that died holding it is freed after
        FRESH_S). Object stores: True (best effort)."""
        if not self.st.local:
            return True
        try:
            fd = os.open(self.st.path(LOCK_TAKEOVER), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            return True
        except FileExistsError:
            try:  # a taker that died holding it: free it after FRESH_S
                if time.time() - self.st.entry(LOCK_TAKEOVER).mtime_ns / 1e9 > FRESH_S:
                    self.st.delete(LOCK_TAKEOVER)
            except OSError:
                pass
            return False

    def _free_mutex(self) -> None:
        if self.st.local:
            try:
                self.st.delete(LOCK_TAKEOVER)
            except OSError:
                pass

    def _set_aside(self, token: str | None) -> bool:
        """Move the stale lock away; False if it is no longer the one we judged stale. Takers
        are serialised by a second O_EXCL file (``driver.lock.takeover``), so that no taker
        can move aside a lock another taker has just created (object stores: best effort)."""
        if not self._takeover_mutex():
            time.sleep(0.1)
            return False
        try:
            h = read_holder(self.st)
            if token is not None and (h is None or h.token != token):
                return False
            aside = f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}"
            try:
                self.st.move(LOCK_FILE, aside)  # kept, never deleted
            except OSError:
                return False
            return True
        finally:
            self._free_mutex()

    def _create(self) -> bool:
        if self.st.local:
            try:
                fd = os.open(self.st.path(LOCK_FILE), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, self._doc().encode())
            except OSError as e:  # a full disk: no lock left behind, one line
                os.close(fd)
                try:
                    os.unlink(self.st.path(LOCK_FILE))
                except OSError:
                    pass
                raise self._unwritable(e) from None
            self._fd = fd  # kept open while held: the heartbeat writes through it
            return True
        try:
            self.st.write_text(LOCK_FILE, self._doc())  # one PUT (object stores)
        except OSError as e:
            raise self._unwritable(e) from None
        time.sleep(SETTLE_S)
        h = read_holder(self.st)
        return h is not None and h.token == self.token

    def _unwritable(self, e: OSError) -> ConfigError:
        return ConfigError(f"SWEEP_DIR: {self.st}: the driver lock cannot be written "
                           f"({type(e).__name__}: {e}); free space or choose a writable "
                           "directory")

    # ---- hold
    def _ours_local(self) -> bool | None:
        """Local paths: whether the lock's path is still the file this driver created (the
        same device and inode as the descriptor it holds); None when that cannot be told (a
        read error other than a missing file: transient on a shared file system)."""
        try:  # (open, not stat: on NFS an open revalidates, a stat may answer from a cache)
            fd = os.open(self.st.path(LOCK_FILE), os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as e:
            self.log(f"note: could not look at the driver lock ({e})")
            return None
        try:
            there, mine = os.fstat(fd), os.fstat(self._fd)
        finally:
            os.close(fd)
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _refresh(self) -> str | None:
        """One heartbeat; the reason the lock was lost, or None. Local paths: checked by inode,
        then written through the held descriptor (padded with spaces, never shorter, so that no
        reader sees a shorter document with the end of the last one), which only ever writes
        this driver's own lock file, wherever it has been moved. Object stores: read, then one
        PUT (a driver suspended between the two can overwrite a taker's lock; the taker then
        stops at its next heartbeat, and one driver goes on)."""
        if self._fd is not None:
            ours = self._ours_local()
            if ours is None:
                return None
            if ours:
                data = self._doc().encode()
                try:
                    size = os.fstat(self._fd).st_size
                    os.pwrite(self._fd, data.ljust(max(size, len(data))), 0)
                    os.fsync(self._fd)  # (on NFS: the heartbeat and its mtime reach the server,
                    # where other hosts judge its age, now, not at the client's writeback)
                except OSError as e:  # a full disk: try again at the next beat
                    self.log(f"note: could not refresh the driver lock ({e})")
                return None
            h = read_holder(self.st)
            return "the driver lock was taken over by " + (
                h.describe() if h else "nobody (it was removed)")
        try:
            h = read_holder(self.st, strict=True)
        except OSError as e:  # a transient store error: look again at the next beat
            self.log(f"note: could not read the driver lock ({e})")
            return None
        if h is None or h.token != self.token:
            return "the driver lock was taken over by " + (
                h.describe() if h else "nobody (it was removed)")
        try:
            self.st.write_text(LOCK_FILE, self._doc())
        except OSError as e:  # a transient store error: try again at the next beat
            self.log(f"note: could not refresh the driver lock ({e})")
        return None

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            lost = self._refresh()
            if lost:
                self.lost = lost
                self.log(f"error: {self.lost}; stopping")
                return

    def check(self) -> None:
        """Raise LockHeld if the lock was lost (the dispatcher calls this between waits)."""
        if self.lost:
            raise LockHeld(f"SWEEP_DIR: {self.st}: {self.lost}")

    # ---- release
    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this driver's. Local paths:
        while holding the takeover file (waiting up to FRESH_S for a taker to finish), so that
        no takeover moves it between the check and the removal; never another driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._thread is not None and self._thread.is_alive():  # a heartbeat stuck in a hung
            return  # file system: the lock is left (judged by its process), its file open
        if self._fd is None:
            if self.st.local:
                return  # (never held)
            h = read_holder(self.st)
            if h is not None and h.token == self.token:
                try:
                    self.st.delete(LOCK_FILE)
                except OSError:
                    pass
            return
        try:
            deadline = time.monotonic() + FRESH_S + 1.0
            while not self._takeover_mutex():
                if time.monotonic() > deadline:
                    return  # (left for the next driver to judge: its process is gone by then)
                time.sleep(0.05)
            try:
                if self._ours_local():
                    self.st.delete(LOCK_FILE)
            except OSError:
                pass
            finally:
                self._free_mutex()
        finally:
            os.close(self._fd)
            self._fd = None
