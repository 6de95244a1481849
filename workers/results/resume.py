"""Which planned trials have a finished result: the bookkeeping of `sweep resume`.

``result_index`` reads (or, trusting the journal, mostly skips reading) every result file and
says its status and whether a failure is retryable; ``sweep.driver.pending`` turns that into the
trials to run.
"""

from __future__ import annotations

from workers.results.journal import trial_statuses
from workers.results.layout import TRIALS
from workers.results.record import ResultError, read_result
from workers.results.storage import store


def result_ids(sweep_dir) -> list[str]:
    """The trial ids that have a result file (valid or not), sorted."""
    return [e.name[: -len(".parquet")] for e in store(sweep_dir).list(TRIALS, ".parquet")]


def result_index(sweep_dir, trust_journal: bool = False) -> dict[str, dict]:
    """trial_id -> {"status", "retryable"} for every readable result file. Each file is read and
    checked; with ``trust_journal``, a file whose size and modification time match the drivers'
    journal is taken from it unread (as ``sweep status`` does), except a ``failed`` one, which
    is read for its ``retryable`` flag."""
    if trust_journal:
        return _journal_index(sweep_dir)
    out: dict[str, dict] = {}
    for tid in result_ids(sweep_dir):
        try:
            row = read_result(sweep_dir, tid, columns=["trial_id", "status", "retryable"]).to_pylist()[0]
        except ResultError:
            continue
        if row["trial_id"] == tid:
            out[tid] = row
    return out


def valid_trial_ids(sweep_dir) -> dict[str, str]:
    """trial_id -> status for every readable result file in the sweep."""
    return {k: r["status"] for k, r in result_index(sweep_dir).items()}


def _journal_index(sweep_dir) -> dict[str, dict]:
    statuses, _ = trial_statuses(sweep_dir)
    out: dict[str, dict] = {}
    for tid, status in statuses.items():
        retryable = False
        if status == "failed":
            try:
                t = read_result(sweep_dir, tid, columns=["retryable"])
            except ResultError:  # unreadable since it was listed: not a valid result
                continue
            retryable = bool(t.column("retryable")[0].as_py())
        out[tid] = {"status": status, "retryable": retryable}
    return out
