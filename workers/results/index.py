"""The index of a sweep directory: which trials have a result, with which status, read fast.

Each driver session appends ``trial_id, status, file size, mtime`` lines as results arrive
(:class:`Journal`, ``journal/*.tsv``). :func:`trial_statuses` takes a result file from its
journal line when the file's size and modification time still match, and reads every other
one; :func:`result_index` adds whether a failure is retryable (``sweep resume``:
``sweep.driver.pending_rows`` turns it into the trials to run); :func:`status_counts` counts a
plan's trials by :class:`Status` (``sweep status``). The result files stay the source of
truth: a journal line only saves reading a file. Reading the index never writes.

Every function takes a sweep directory as a path, a URI, a ``Store`` or a ``SweepDir``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from workers.results.layout import (
    JOURNAL, JOURNAL_SUFFIX, RESULT_SUFFIX, TRIALS, journal_file, trial_file, trial_id_of,
)
from workers.results.record import STATUSES, ResultError, Status, newer_release, read_result
from workers.results.storage import store

__all__ = ["Journal", "Status", "StatusCounts", "read_journal", "result_ids", "result_index",
           "status_counts", "trial_statuses", "valid_trial_ids"]


# ---- the drivers' journal
class Journal:
    """Records ``trial_id<TAB>status<TAB>file size<TAB>mtime_ns`` lines in a file of its own per
    driver session (``journal/<time>-<host>-<pid>-<random>.tsv``), so drivers never share a
    file. On a local path the lines are appended (flushed every ``flush_every`` lines); object
    stores cannot append, so there the session's whole file is rewritten (one atomic PUT) at most
    every ``flush_seconds``. A driver killed in between loses only its latest lines; status then
    reads those trials' files instead."""

    def __init__(self, sweep_dir, flush_every: int = 256, flush_seconds: float = 30.0):
        import socket

        self._store = store(sweep_dir)
        host = socket.gethostname().split(".")[0] or "host"
        self._rel = journal_file(f"{time.strftime('%Y%m%dT%H%M%S')}-{host}-{os.getpid()}-"
                                 f"{os.urandom(3).hex()}{JOURNAL_SUFFIX}")
        self._lines: list[str] = []
        self._pending, self._every, self._seconds = 0, flush_every, flush_seconds
        self._last = time.monotonic()
        self._f = None
        # why the journal stopped (an OSError writing it: a full disk, a read-only mount): it
        # records nothing more, and status reads the result files of this session instead
        self.error: str | None = None
        if self._store.local:
            try:
                self._store.makedirs(JOURNAL)
                self._f = open(self._store.path(self._rel), "a")
            except OSError as e:
                self._failed(e)

    def _failed(self, e: OSError) -> None:
        self.error = f"{type(e).__name__}: {e}"
        self._lines, self._pending = [], 0
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass  # (what it could not write is dropped: a torn last line does not parse)
            self._f = None

    def record(self, trial_id: str, status: str, size: int, mtime_ns: int) -> None:
        if self.error is not None:
            return
        line = f"{trial_id}\t{status}\t{size}\t{mtime_ns}\n"
        self._pending += 1
        try:
            if self._f is not None:
                self._f.write(line)
                if self._pending >= self._every:
                    self.flush()
                return
            self._lines.append(line)
            if time.monotonic() - self._last > self._seconds:
                self.flush()
        except OSError as e:
            self._failed(e)

    def flush(self) -> None:
        """Write the lines recorded so far; an OSError stops the journal (``error``)."""
        self._last = time.monotonic()
        if self._pending == 0 or self.error is not None:
            return
        self._pending = 0
        try:
            if self._f is not None:
                self._f.flush()
            else:
                self._store.write_text(self._rel, "".join(self._lines))
        except OSError as e:
            self._failed(e)

    def close(self) -> None:
        self.flush()
        if self._f is not None:
            try:
                self._f.close()
            except OSError as e:
                self._failed(e)


def read_journal(sweep_dir) -> dict[str, tuple[str, int, int]]:
    """trial_id -> (status, size, mtime_ns) over all journal files, later files winning; lines
    that do not parse are skipped."""
    out: dict[str, tuple[str, int, int]] = {}
    st = store(sweep_dir)
    for e in st.list(JOURNAL, JOURNAL_SUFFIX):
        for line in st.read_text(journal_file(e.name)).splitlines():
            parts = line.split("\t")
            if (len(parts) == 4 and parts[1] in STATUSES and parts[2].isdigit()
                    and parts[3].isdigit()):
                out[parts[0]] = (parts[1], int(parts[2]), int(parts[3]))
    return out


# ---- statuses of the result files
def result_ids(sweep_dir) -> list[str]:
    """The trial ids that have a result file (valid or not), sorted."""
    return [trial_id_of(e.name) for e in store(sweep_dir).list(TRIALS, RESULT_SUFFIX)]


def trial_statuses(sweep_dir) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(trial_id -> status for every valid result file, errors of invalid files). A file whose
    size and modification time match its journal line is taken from the journal; every other
    file is read and checked."""
    journal = read_journal(sweep_dir)
    statuses: dict[str, str] = {}
    invalid: list[tuple[str, str]] = []
    st = store(sweep_dir)
    # object stores report modification times at different resolutions in a listing and in a
    # single object's metadata: compare whole seconds there
    unit = 1 if st.local else 10**9
    for e in st.list(TRIALS, RESULT_SUFFIX):
        tid = trial_id_of(e.name)
        j = journal.get(tid)
        # a filesystem that reports no modification time (0) cannot vouch for a file
        if j is not None and e.mtime_ns and j[1] == e.size and j[2] // unit == e.mtime_ns // unit:
            statuses[tid] = j[0]
            continue
        try:
            row = read_result(st, tid, columns=["trial_id", "status"]).to_pylist()[0]
        except ResultError as err:
            invalid.append((tid, str(err)))
            continue
        if row["trial_id"] != tid:
            invalid.append((tid, f"{trial_file(tid)}: holds trial {row['trial_id']}, not {tid}"))
            continue
        statuses[tid] = row["status"]
    return statuses, invalid


def result_index(sweep_dir, trust_journal: bool = False) -> dict[str, dict]:
    """trial_id -> {"status", "retryable"} for every readable result file. Each file is read and
    checked; with ``trust_journal``, a file whose size and modification time match the drivers'
    journal is taken from it unread (as ``sweep status`` does), except a ``failed`` one, which
    is read for its ``retryable`` flag."""
    if trust_journal:
        return _journal_index(sweep_dir)
    st = store(sweep_dir)
    out: dict[str, dict] = {}
    for tid in result_ids(st):
        try:
            row = read_result(st, tid, columns=["trial_id", "status", "retryable"]).to_pylist()[0]
        except ResultError:
            continue
        if row["trial_id"] == tid:
            out[tid] = row
    return out


def valid_trial_ids(sweep_dir) -> dict[str, str]:
    """trial_id -> status for every readable result file in the sweep."""
    return {k: r["status"] for k, r in result_index(sweep_dir).items()}


def _journal_index(sweep_dir) -> dict[str, dict]:
    st = store(sweep_dir)
    statuses, _ = trial_statuses(st)
    out: dict[str, dict] = {}
    for tid, status in statuses.items():
        retryable = False
        if status == Status.FAILED:
            try:
                t = read_result(st, tid, columns=["retryable"])
            except ResultError:  # unreadable since it was listed: not a valid result
                continue
            retryable = bool(t.column("retryable")[0].as_py())
        out[tid] = {"status": status, "retryable": retryable}
    return out


# ---- a plan's trials counted by status
@dataclass
class StatusCounts:
    """A plan's trials by status: ``counts`` holds every Status (the recorded ones, INVALID for
    a result file that is not a valid result, PENDING for none yet; zero where none);
    ``failures`` the (trial_id, status) of planned trials whose record is not ``ok``, in plan
    order; ``invalid`` the (trial_id, error) of planned trials whose file is not valid; ``newer``
    those of them a newer release wrote (``record.newer_release``)."""

    planned: int
    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, Status]] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    newer: list[str] = field(default_factory=list)  # invalid here: a newer release's results

    ORDER = (Status.OK, Status.DIVERGED, Status.FAILED, Status.OOM, Status.INVALID,
             Status.PENDING)  # as ``sweep status`` lists them

    @property
    def done(self) -> int:
        """Planned trials with a valid record, whatever its status."""
        return self.planned - self.counts[Status.PENDING] - self.counts[Status.INVALID]


def status_counts(sweep_dir, planned: Iterable[str]) -> StatusCounts:
    """The trials ``planned`` (ids, in plan order) counted by status (``trial_statuses``: a
    file that matches its journal line is not opened)."""
    planned = list(planned)
    statuses, invalid = trial_statuses(sweep_dir)
    planned_set = set(planned)
    out = StatusCounts(len(planned), Counter({s: 0 for s in Status}))
    out.invalid = [(tid, msg) for tid, msg in invalid if tid in planned_set]
    bad_ids = {tid for tid, _ in out.invalid}
    out.newer = [tid for tid, _ in out.invalid if newer_release(sweep_dir, tid) is not None]
    for tid in planned:
        st = statuses.get(tid)
        if tid in bad_ids:
            out.counts[Status.INVALID] += 1
        elif st is None:
            out.counts[Status.PENDING] += 1
        else:
            out.counts[_status(st)] += 1
        if st is not None and st != Status.OK:
            out.failures.append((tid, _status(st)))
    return out


def _status(value: str) -> Status | str:
    """A record's status as a Status; a value no release wrote stays the string it is."""
    try:
        return Status(value)
    except ValueError:
        return value
