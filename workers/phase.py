"""What a running trial is doing, readable by the driver after it killed the trial's task.

With a wall-clock limit per trial (``resources.trial_timeout``), a Ray task runs its trials
inside a :class:`PhaseMarker`. The trial code names its phase as it goes (``set_phase("training")``,
``"measuring <name>"``, ...; a no-op outside a marker). The marker
``running/<trial_id>.<token>.json`` in the sweep directory (written through the storage layer,
so on every backend and from every node) is written when a trial begins, rewritten by a
background thread of the task at most once per ``tick`` seconds when the phase changed, and
removed when the trial ends. The driver lists ``running/`` to see when a trial of a task
it submitted (``token``: unique per submission) started, and reads the marker of a trial that
overran its limit to record the phase it was in. A phase that lasts longer than a tick is
always written, so the phase of a stuck trial is exact.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

from workers.results.layout import parse_marker_name, running_file  # noqa: F401 (its users)

_ACTIVE: "PhaseMarker | None" = None  # the marker of the task running in this process


def tick(limit: float) -> float:
    """Seconds between a marker's writes (and the driver's polls) for a limit of ``limit``
    seconds: a twentieth of it, within [0.25, 10], so that the limit holds to about a tenth."""
    return min(10.0, max(0.25, limit / 20.0))


def set_phase(phase: str) -> None:
    """Name what the current trial does now (``"training"``, ``"measuring <name>"``, ...)."""
    m = _ACTIVE
    if m is not None:
        m.state = (m.state[0], phase)


def read_marker(out, trial_id: str, token: str) -> dict | None:
    """A marker's content (``trial_id, phase, hostname, pid, time``), None if there is none
    or it cannot be read."""
    from workers.results.sweep_dir import SweepDir

    try:
        return json.loads(SweepDir.of(out).read_text(running_file(trial_id, token)))
    except Exception:
        return None


def remove_marker(out, trial_id: str, token: str) -> None:
    """Remove a trial's marker if it is there (a marker left by a killed task)."""
    from workers.results.sweep_dir import SweepDir

    st = SweepDir.of(out)
    try:
        if st.is_file(running_file(trial_id, token)):
            st.delete(running_file(trial_id, token))
    except OSError:
        pass


class PhaseMarker:
    """The markers of one task's trials (see the module docstring): ``with PhaseMarker(out,
    token, tick_s): marker.begin(trial_id) ... marker.end()``. Writing is best effort: a marker
    that cannot be written never fails a trial."""

    def __init__(self, out, token: str, tick_s: float):
        from workers.results.sweep_dir import SweepDir

        self.store, self.token, self.tick = SweepDir.of(out), token, tick_s
        self.state: tuple[str | None, str | None] = (None, None)  # (trial, phase): one assignment
        self._written: tuple[str | None, str | None] = (None, None)
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._failed = False  # a write failed (said once, on the worker's stderr)
        self._thread = threading.Thread(target=self._run, name="phase-marker", daemon=True)

    def begin(self, trial_id: str, phase: str = "starting") -> None:
        """A trial starts: its marker is written now (the driver's clock starts when it sees
        it)."""
        self.state = (trial_id, phase)
        self._sync()

    def end(self) -> None:
        """The trial ended: its marker is removed now."""
        self.state = (None, None)
        self._sync()

    def __enter__(self) -> "PhaseMarker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "PhaseMarker":
        """Make this the process's marker (``set_phase`` goes to it) and start its thread."""
        global _ACTIVE
        _ACTIVE = self
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and remove the last marker."""
        global _ACTIVE
        _ACTIVE = None
        self.state = (None, None)
        self._stop.set()
        self._thread.join(timeout=max(1.0, 2 * self.tick))  # a stuck store: do not hang too
        if not self._thread.is_alive():
            self._sync()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._sync()

    def _sync(self) -> None:
        with self._lock:  # one writer at a time: begin/end (the task) and the thread
            self._sync_locked()

    def _sync_locked(self) -> None:
        state = self.state
        if state == self._written:
            return
        try:
            old = self._written[0]
            if old is not None and old != state[0]:
                try:
                    self.store.delete(running_file(old, self.token))
                except OSError:  # gone already
                    pass
                self._written = (None, None)
            if state[0] is not None:
                self.store.write_text(running_file(state[0], self.token), json.dumps({
                    "trial_id": state[0], "phase": state[1], "hostname": socket.gethostname(),
                    "pid": os.getpid(), "time": time.time()}))
            self._written = state
        except Exception as e:  # best effort: the next tick tries again; the driver's own
            if not self._failed:  # clock times a task whose markers never arrive (sweep.watch)
                self._failed = True
                print(f"phase marker: cannot write {running_file(state[0] or '?', self.token)}"
                      f" ({type(e).__name__}: {e}); trying again every {self.tick:g} s",
                      file=sys.stderr, flush=True)

