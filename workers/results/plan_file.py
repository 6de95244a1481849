"""The plan file: ``plan.parquet`` (the manifest: one row per planned trial, its canonical spec
and its cost estimates), with ``pairs.parquet`` and ``plan_summary.json`` written beside it, and
which of its trials still lack a finished result.

Written once by ``write_plan`` (its presence marks the directory planned), read by ``Plan``
without holding the specs (they are parsed in batches when iterated). The rows the planner
writes (``sweep.plan.manifest_table``) and the summary (``sweep.cost.plan_summary``) come from
the sweep; this module only stores and reads them.
"""

from __future__ import annotations

import json
import time

from workers.results.layout import (INVALID, PAIRS_FILE, PLAN_FILE, PLAN_SUMMARY_FILE, RETRIED,
                                    TRIALS, aside_file, trial_file)
from workers.results.index import result_ids, result_index
from workers.results.record import SCHEMA_VERSION, NewerResult, newer_release
from workers.results.spec import TrialSpec
from workers.results.storage import store

__all__ = ["LIGHT_COLUMNS", "PLAN_SUMMARY_FILE", "Plan", "PlanError", "Todo", "pending",
           "pending_rows", "read_plan", "write_plan"]

# what a driver holds of the manifest (10^6 trials in about 100 MB): the ids, the estimates and
# the description a plan summary names (sweep.cost.MANIFEST_COLUMNS); not the specs
LIGHT_COLUMNS = ("trial_id", "n_params", "est_flops", "est_memory_bytes", "width", "depth",
                 "optimizer", "batch_size")


class PlanError(ValueError):
    """A plan file that is unreadable or whose spec does not match its id (one line)."""


class Plan:
    """A written plan (``plan.parquet``) without holding its specs: the trial ids and the cost
    estimates (LIGHT_COLUMNS) are read at once, the specs are parsed from the manifest in
    batches when iterated (``iter(plan)``, ``plan.specs(rows)``), so that a driver of 10^6
    trials never holds them all. Each spec is checked against its id as it is parsed: the first
    one when the plan is opened (a plan of another version is refused before anything runs),
    every other one when a driver reaches it (a damaged row stops there; what ran before stays).
    ``metrics`` (a MetricSpec): the measurement settings the specs carry (default: version-2
    specs the defaults, version-1 specs the settings they were planned with). Raises
    ``self.error`` (PlanError; the sweep's reader: its ConfigError) when the manifest is
    unreadable or a spec does not match its id."""

    BATCH_ROWS = 8192
    error: type[Exception] = PlanError

    def __init__(self, out, metrics=None):
        self.out, self.metrics = store(out), metrics
        self._path = self.out.uri(PLAN_FILE)
        try:
            f = self.out.parquet_file(PLAN_FILE)
            names = set(f.schema_arrow.names)
            self.light = f.read(columns=[c for c in LIGHT_COLUMNS if c in names])
        except Exception as e:
            raise self._damaged(e) from None
        self.ids: list[str] = self.light.column("trial_id").to_pylist()
        next(self.specs([0]) if self.ids else iter(()), None)  # a plan of another version: now

    def _damaged(self, e: BaseException) -> Exception:
        return self.error(f"out: {self._path} is unreadable ({type(e).__name__}: {e}); the "
                          "sweep directory is damaged")

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return self.specs()

    def specs(self, rows=None):
        """The TrialSpecs of the manifest's ``rows`` (strictly increasing row numbers; default
        all), in order, parsed one batch of rows at a time. Raises ValueError for rows out of
        order or beyond the plan."""
        wanted = None if rows is None else iter(rows)
        nxt = None if wanted is None else next(wanted, None)
        if wanted is not None and nxt is None:
            return
        start = 0
        try:
            batches = self.out.parquet_file(PLAN_FILE).iter_batches(
                batch_size=self.BATCH_ROWS, columns=["trial_id", "spec"])
        except Exception as e:
            raise self._damaged(e) from None
        for batch in batches:
            stop = start + batch.num_rows
            ids, texts = batch.column(0), batch.column(1)
            if wanted is None:
                for tid, text in zip(ids.to_pylist(), texts.to_pylist()):
                    yield self._spec(tid, text)
            else:
                while nxt is not None and nxt < stop:
                    if nxt < start:
                        raise ValueError(f"rows: {nxt} after a later row; allowed: strictly "
                                         "increasing row numbers")
                    yield self._spec(ids[nxt - start].as_py(), texts[nxt - start].as_py())
                    nxt, last = next(wanted, None), nxt
                    if nxt is not None and nxt <= last:
                        raise ValueError(f"rows: {nxt} after {last}; allowed: strictly "
                                         "increasing row numbers")
                if nxt is None:
                    return
            start = stop
        if wanted is not None and nxt is not None:
            raise ValueError(f"rows: {nxt} is beyond the plan's {start} rows")

    def _spec(self, tid: str, text: str) -> TrialSpec:
        try:
            s = TrialSpec.from_json(text, self.metrics)
        except Exception as e:
            raise self._damaged(e) from None
        if s.trial_id != tid:
            raise self.error(f"out: {self._path}: trial {tid} does not match its spec (written "
                             "by another version?); launch into a new out directory")
        return s

    def n_params(self) -> int | None:
        """Parameters of all planned trials; None for a manifest written without them."""
        if "n_params" not in self.light.column_names:
            return None
        return int(self.light.column("n_params").to_numpy().sum())

    def memory(self, rows) -> list[int] | None:
        """Estimated memory (bytes) of the trials of ``rows``; None for a manifest written
        without the estimates."""
        if "est_memory_bytes" not in self.light.column_names:
            return None
        m = self.light.column("est_memory_bytes").to_numpy()
        return [int(m[i]) for i in rows]


class Todo:
    """The planned trials a driver runs: ``rows`` of a Plan, streamed (``len``, ``iter``)."""

    def __init__(self, plan: Plan, rows: list[int]):
        self.plan, self.rows = plan, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return self.plan.specs(self.rows)

    def memory(self) -> list[int] | None:
        return self.plan.memory(self.rows)


def read_plan(out, metrics=None) -> list[TrialSpec]:
    """The trials of a written manifest as a list (small plans, tests; a driver streams them
    with ``Plan``), checked against their ids."""
    return list(Plan(out, metrics))


def write_plan(out, manifest, pairs=None, summary: dict | None = None) -> None:
    """Write a plan: ``pairs`` (a pyarrow table, plan.factors) and ``summary`` (JSON-able) first,
    then ``manifest`` (the pyarrow table of one row per trial, with ``trial_id`` and ``spec``) as
    ``plan.parquet`` in row groups of Plan.BATCH_ROWS, whose presence marks the directory
    planned; then ``trials/``."""
    out = store(out)
    if pairs is not None:
        out.write_parquet(PAIRS_FILE, pairs)
    if summary is not None:
        out.write_text(PLAN_SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))
    out.write_parquet(PLAN_FILE, manifest, row_group_size=Plan.BATCH_ROWS)
    out.makedirs(TRIALS)


def pending_rows(out, ids: list[str], move_invalid: bool = True,
                 verify: bool = False) -> list[int]:
    """The rows of the planned trials ``ids`` without a finished result: no file, an
    unreadable file, or a retryable failure (its worker or node died). Such files are moved
    aside (never deleted), unreadable ones to ``trials/invalid/``, retryable failures to
    ``trials/retried/``, so that the re-run can write its result. A file is read and checked
    unless its size and modification time match the drivers' journal (a truncated or rewritten
    file never does); ``verify`` reads every file. A file of a newer release's schema
    (``newer_release``) raises NewerResult before anything is moved (with ``move_invalid``;
    else it is not pending: not this release's to run)."""
    out = store(out)
    readable = result_index(out, trust_journal=not verify)
    present = set(result_ids(out))
    newer = {tid: v for tid in (present & set(ids)) - set(readable)
             if (v := newer_release(out, tid)) is not None}
    if newer and move_invalid:  # a newer release's results: valid there, never set aside or
        # run again here (counting only, they are not this release's to run: not pending)
        tid, v = next(iter(newer.items()))
        raise NewerResult(
            f"{len(newer)} result file(s) of this sweep were written by a newer release of "
            f"sensitivity-sweep (schema version {v}; this release reads up to {SCHEMA_VERSION}), "
            f"e.g. {out.uri(trial_file(tid))}: upgrade sensitivity-sweep to run the rest "
            "(nothing was set aside or run)")
    todo = []
    for i, tid in enumerate(ids):
        r = readable.get(tid)
        if (r is not None and not r["retryable"]) or tid in newer:
            continue
        if move_invalid and tid in present:
            why = RETRIED if tid in readable else INVALID
            out.move(trial_file(tid), aside_file(tid, why, time.time_ns()))
        todo.append(i)
    return todo


def pending(out, specs: list[TrialSpec], move_invalid: bool = True,
            verify: bool = False) -> list[TrialSpec]:
    """``pending_rows`` for a list of specs: the specs without a finished result."""
    rows = pending_rows(out, [s.trial_id for s in specs], move_invalid, verify)
    return [specs[i] for i in rows]
