"""Checkpoints of a trial's training state, so that a trial retried after its worker or node died
resumes instead of starting again from step 0 (and, on CPU, ends bitwise equal to an
uninterrupted run).

A checkpoint is ``checkpoints/<trial_id>.pt`` in the sweep directory (local or an object store),
written atomically (a reader sees the previous checkpoint or the new one, whole): the weights,
the optimizer's state, the training loop's random generator, its position in the current
permutation of the data, the step, the learning rate in use and the loop's other state, with
the trial's id and spec so that a checkpoint is only ever loaded into the trial that wrote it.
The interval is a number of steps, or minutes of training time (``train.checkpoint_every``:
``500`` or ``"10min"``); checkpoints are removed once the trial's result is written unless
``train.keep_checkpoints``. None of this changes a trial's numbers: it is not part of the
trial's identity.

A save is dropped (logged) when it is stale: the trial has a result already, or the checkpoint
there holds a later or equal step (written by another attempt of the trial, e.g. the retry of
an attempt whose node stalled and woke up). The file is read for its step only when it is not
the one this attempt last saved or loaded (its size and modification time differ).
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
from dataclasses import dataclass

# where they are: the sweep directory's layout (names kept here for their users)
from workers.results.layout import CHECKPOINTS, checkpoint_file, fallback_file  # noqa: F401
from workers.results.layout import trial_file

# torch: imported by the methods that load and save, so that the configuration's checks
# (parse_interval, parse_budget) load without it (tests/test_cli_imports.py)

_log = logging.getLogger(__name__)


def remove_checkpoints(out_dir, trial_id: str) -> None:
    """Delete a trial's checkpoint and fallback files (once its result stands)."""
    from workers.results.sweep_dir import SweepDir

    st = SweepDir.of(out_dir)
    for rel in (checkpoint_file(trial_id), fallback_file(trial_id)):
        if st.is_file(rel):
            try:
                st.delete(rel)
            except FileNotFoundError:  # (removed meanwhile by another attempt: gone either way)
                pass


def parse_budget(value, key: str = "train.time_budget") -> float | None:
    """A duration such as ``train.time_budget`` or ``resources.trial_timeout`` (``key``, for
    the message): seconds (a positive, finite number), ``"90s"``, ``"30min"`` or ``"12h"``;
    null for none. Returns seconds or None; raises ValueError naming what is allowed."""
    if value is None:
        return None
    if (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e300
            and math.isfinite(value)):  # (an int beyond float64's range is refused below)
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|min|h)\s*", str(value))
    if m and float(m.group(1)) > 0 and math.isfinite(float(m.group(1))):
        return float(m.group(1)) * {"s": 1.0, "min": 60.0, "h": 3600.0}[m.group(2)]
    raise ValueError(f"{key}: {value!r}; allowed: seconds (3600), '90s', '30min', '12h', "
                     "or null for none")


@dataclass(frozen=True)
class Interval:
    """Every ``steps`` optimizer steps, or every ``seconds`` of training time; neither: off."""

    steps: int | None = None
    seconds: float | None = None

    @property
    def on(self) -> bool:
        return bool(self.steps) or bool(self.seconds)


def parse_interval(value) -> Interval:
    """``train.checkpoint_every``: a positive number of steps (``500``), minutes (``"10min"``,
    ``"0.5min"``), or null / 0 / ``"off"`` for none. Raises ValueError naming what is allowed."""
    if value is None or value == 0 or value is False or str(value).strip().lower() in ("off", "0"):
        return Interval()
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Interval(steps=value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*min\s*", str(value))
    if m and float(m.group(1)) > 0:
        return Interval(seconds=60.0 * float(m.group(1)))
    if re.fullmatch(r"\s*\d+\s*", str(value)) and int(value) > 0:
        return Interval(steps=int(value))
    raise ValueError(f"train.checkpoint_every: {value!r}; allowed: a number of steps (500), "
                     "minutes ('10min'), or null / 0 for none")


class Checkpointer:
    """Saves and loads one trial's training state in its sweep directory (see the module
    docstring). ``clock`` is the time source (seconds, monotonic)."""

    def __init__(self, out_dir: str, trial_id: str, spec_text: str, interval: Interval,
                 clock=time.monotonic):
        from workers.results.sweep_dir import SweepDir

        self.store = SweepDir.of(out_dir)
        self.rel = checkpoint_file(trial_id)
        self.trial_id, self.spec_text = trial_id, spec_text
        self.interval, self.clock = interval, clock
        self.last_step, self.last_time = 0, clock()
        self.saves = 0
        self._seen = None  # (size, mtime_ns) of the checkpoint as this attempt last wrote or read it

    def _read(self, rel: str) -> dict | None:
        """The state in ``rel`` if this trial and spec wrote it; None if there is none, it is
        unreadable or another's (left where it is)."""
        import torch

        if not self.store.is_file(rel):
            return None
        try:
            state = torch.load(io.BytesIO(self.store.read_bytes(rel)), map_location="cpu",
                               weights_only=True)
        except Exception:
            return None
        if state.get("trial_id") != self.trial_id or state.get("spec") != self.spec_text:
            return None
        return state

    def load(self) -> dict | None:
        """The state saved by this trial, or None (then training starts from step 0)."""
        state = self._read(self.rel)
        if state is not None:
            self.last_step = int(state["step"])
            self._seen = self._stamp(self.rel)
        return state

    def _stamp(self, rel: str) -> tuple[int, int] | None:
        try:
            e = self.store.entry(rel)
        except OSError:
            return None
        return e.size, e.mtime_ns

    def stale(self, step: int) -> str | None:
        """Why a save at ``step`` would be stale (see the module docstring), or None."""
        if self.store.is_file(trial_file(self.trial_id)):
            return "the trial has a result"
        stamp = self._stamp(self.rel)
        if stamp is None or stamp == self._seen:
            return None
        state = self._read(self.rel)
        if state is not None and int(state["step"]) >= step:
            return f"the checkpoint there is at step {int(state['step'])}"
        return None

    def due(self, step: int) -> bool:
        """Whether to save at ``step`` (after it ran)."""
        iv = self.interval
        if iv.steps and step - self.last_step >= iv.steps:
            return True
        return bool(iv.seconds) and self.clock() - self.last_time >= iv.seconds

    def save(self, step: int, state: dict) -> None:
        """Save the state after ``step``, unless that is stale (then only logged)."""
        import torch

        why = self.stale(step)
        if why is not None:
            _log.warning("%s: a save at step %d is dropped (%s)", self.store.uri(self.rel), step,
                         why)
            self.last_step, self.last_time = step, self.clock()
            return
        buf = io.BytesIO()
        torch.save({**state, "trial_id": self.trial_id, "spec": self.spec_text, "step": step},
                   buf)
        self.store.write_bytes(self.rel, buf.getvalue())
        self._seen = self._stamp(self.rel)
        self.last_step, self.last_time = step, self.clock()
        self.saves += 1

    def save_fallback(self, step: int, weights: dict, nonfinite) -> None:
        """The weights at fallback step ``step`` (and the loop's non-finite flag then), for a
        retry that resumes after it; not once the trial has a result (a stale attempt)."""
        import torch

        if self.store.is_file(trial_file(self.trial_id)):
            _log.warning("%s: the trial has a result; the fallback weights are dropped",
                         self.store.uri(fallback_file(self.trial_id)))
            return
        buf = io.BytesIO()
        torch.save({"trial_id": self.trial_id, "spec": self.spec_text, "step": step,
                    "model": weights, "nonfinite": nonfinite}, buf)
        self.store.write_bytes(fallback_file(self.trial_id), buf.getvalue())

    def load_fallback(self, step: int) -> tuple[dict, object] | None:
        """(weights, non-finite flag) saved at fallback step ``step``; None if there are none
        for this trial, spec and step (a fallback step changed between attempts)."""
        state = self._read(fallback_file(self.trial_id))
        if state is None or state.get("step") != step:
            return None
        return state["model"], state["nonfinite"]
