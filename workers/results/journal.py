"""The drivers' journal and the statuses of a sweep's trials, read fast.

Each driver session appends ``trial_id, status, file size, mtime`` lines as results arrive
(``Journal``); ``trial_statuses`` takes a result file from its journal line when the file's
size and modification time still match, and reads every other one. The result files stay the
source of truth: a journal line only saves reading a file (``sweep status``, ``sweep resume``,
``analysis.result_files``).
"""

from __future__ import annotations

import os
import time

from workers.results.layout import JOURNAL, TRIALS, trial_file
from workers.results.record import STATUSES, ResultError, read_result
from workers.results.storage import store

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
        self._rel = (f"{JOURNAL}/{time.strftime('%Y%m%dT%H%M%S')}-{host}-{os.getpid()}-"
                     f"{os.urandom(3).hex()}.tsv")
        self._lines: list[str] = []
        self._pending, self._every, self._seconds = 0, flush_every, flush_seconds
        self._last = time.monotonic()
        self._f = None
        if self._store.local:
            self._store.makedirs(JOURNAL)
            self._f = open(self._store.path(self._rel), "a")

    def record(self, trial_id: str, status: str, size: int, mtime_ns: int) -> None:
        line = f"{trial_id}\t{status}\t{size}\t{mtime_ns}\n"
        self._pending += 1
        if self._f is not None:
            self._f.write(line)
            if self._pending >= self._every:
                self.flush()
            return
        self._lines.append(line)
        if time.monotonic() - self._last > self._seconds:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if self._pending == 0:
            return
        self._pending = 0
        if self._f is not None:
            self._f.flush()
        else:
            self._store.write_text(self._rel, "".join(self._lines))

    def close(self) -> None:
        self.flush()
        if self._f is not None:
            self._f.close()


def read_journal(sweep_dir) -> dict[str, tuple[str, int, int]]:
    """trial_id -> (status, size, mtime_ns) over all journal files, later files winning; lines
    that do not parse are skipped."""
    out: dict[str, tuple[str, int, int]] = {}
    st = store(sweep_dir)
    for e in st.list(JOURNAL, ".tsv"):
        for line in st.read_text(f"{JOURNAL}/{e.name}").splitlines():
            parts = line.split("\t")
            if (len(parts) == 4 and parts[1] in STATUSES and parts[2].isdigit()
                    and parts[3].isdigit()):
                out[parts[0]] = (parts[1], int(parts[2]), int(parts[3]))
    return out


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
    for e in st.list(TRIALS, ".parquet"):
        tid = e.name[: -len(".parquet")]
        j = journal.get(tid)
        # a filesystem that reports no modification time (0) cannot vouch for a file
        if j is not None and e.mtime_ns and j[1] == e.size and j[2] // unit == e.mtime_ns // unit:
            statuses[tid] = j[0]
            continue
        try:
            row = read_result(sweep_dir, tid, columns=["trial_id", "status"]).to_pylist()[0]
        except ResultError as err:
            invalid.append((tid, str(err)))
            continue
        if row["trial_id"] != tid:
            invalid.append((tid, f"{trial_file(tid)}: holds trial {row['trial_id']}, not {tid}"))
            continue
        statuses[tid] = row["status"]
    return statuses, invalid
