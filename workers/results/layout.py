"""The layout of a sweep directory: every entry it may hold, and from a file's name back to its
trial (the results contract on disk; every other module takes names from here).

    sweep.json                      the configuration and its identity hash (sweep.driver)
    plan.parquet                    the planned trials, one row each (its presence: planned)
    plan_summary.json               the plan's cost summary (sweep.cost.plan_summary)
    pairs.parquet                   with plan.factors: one row per pair (sweep.plan.plan_pairs)
    trials/<id>.parquet             a trial's record (workers.results.record): its truth
    trials/invalid/, retried/       result files resume moved aside: <id>.parquet.<time_ns>
    weights/<id>.safetensors        its trained network (workers.models)
    weights/damaged/                weights files --retrain moved aside: <id>.safetensors.<ns>
    checkpoints/<id>.pt, <id>.fallback.pt   training state while it runs (workers.checkpoint)
    curves/, grids/ <id>.parquet    its off-data studies (workers.results.record.EXTRA_SCHEMAS)
    measures/<id>.<measure>.v<v>.<settings>.parquet   the measures table (measure_table)
    measures/raised/                values evaluated again moved aside (--retry-errors)
    measures.json                   the measure settings last asked for (what load_results shows)
    journal/<time>-<host>-<pid>-<hex>.tsv   what drivers saw arrive (workers.results.index)
    running/<id>.<token>.json       a running trial's phase (workers.phase), transient
    compacted/                      the compacted copy (workers.results.compact), _manifest.parquet
    report/report.html, ...         the report (analysis.report); report/previous/<time>/
    driver.lock, driver.lock.takeover   the driver lock (sweep.lock; also .probe-<hex>, transient)

Paths are relative to the sweep directory with ``/`` separators (``workers.results.storage``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from workers.results.storage import expand

# ---- the entries of a sweep directory
SWEEP_FILE = "sweep.json"
PLAN_FILE = "plan.parquet"
PLAN_SUMMARY_FILE = "plan_summary.json"
PAIRS_FILE = "pairs.parquet"
TRIALS = "trials"  # the result files, one per trial
INVALID = "invalid"  # trials/invalid/: unreadable result files, moved aside by resume
RETRIED = "retried"  # trials/retried/: retryable failures, moved aside by resume
WEIGHTS = "weights"
DAMAGED = "damaged"  # weights/damaged/: weights files moved aside by `sweep measure --retrain`
CHECKPOINTS = "checkpoints"
CURVES = "curves"
GRIDS = "grids"
MEASURES = "measures"
RAISED = "raised"  # measures/raised/: values that raised, moved aside when evaluated again
SELECTION_FILE = "measures.json"
JOURNAL = "journal"
RUNNING = "running"  # markers of running trials (resources.trial_timeout), removed as they end
COMPACTED = "compacted"
MANIFEST = f"{COMPACTED}/_manifest.parquet"
REPORT_DIR = "report"
REPORT_PAGE = f"{REPORT_DIR}/report.html"
PREVIOUS = "previous"  # <dir>/previous/<time>/: files a new report made way for (Store.staging)
LOCK_FILE = "driver.lock"
LOCK_TAKEOVER = f"{LOCK_FILE}.takeover"
SLURM = "slurm"  # `sweep slurm` (sweep/slurm.py): the batch script, its logs, its jobs
SLURM_SCRIPT = f"{SLURM}/sweep.sbatch"
SLURM_JOBS = f"{SLURM}/jobs.tsv"
SLURM_LOGS = SLURM  # slurm-<job id>.out

RESULT_SUFFIX = ".parquet"  # trials/, curves/, grids/, measures/
WEIGHTS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIX = ".pt"
FALLBACK_SUFFIX = ".fallback.pt"
MARKER_SUFFIX = ".json"
JOURNAL_SUFFIX = ".tsv"

# every name directly in a sweep directory -> what it holds
ENTRIES = {
    SWEEP_FILE: "the configuration and its identity hash",
    PLAN_FILE: "the planned trials",
    PLAN_SUMMARY_FILE: "the plan's cost summary",
    PAIRS_FILE: "the pairs of a plan with plan.factors",
    TRIALS: "the trials' records (and invalid/, retried/: files moved aside)",
    WEIGHTS: "the trained networks (and damaged/: files moved aside)",
    CHECKPOINTS: "running trials' training state",
    CURVES: "ellipse profiles (metrics.ellipse_k)",
    GRIDS: "boundary maps (metrics.boundary_grid)",
    MEASURES: "the measures table (and raised/: values moved aside)",
    SELECTION_FILE: "the measure settings last asked for",
    JOURNAL: "the drivers' journal of arrived results",
    RUNNING: "running trials' phase markers",
    COMPACTED: "the compacted copy of the records",
    REPORT_DIR: "the report",
    LOCK_FILE: "the driver lock",
    LOCK_TAKEOVER: "the driver lock's takeover mutex (transient)",
    SLURM: "the SLURM batch script, its jobs' logs and the list of its jobs",
}
EXTRA_KINDS = (CURVES, GRIDS)  # tables a trial may store beside its record


# ---- paths, relative to the sweep directory
def trial_file(trial_id: str) -> str:
    """A trial's result file."""
    return f"{TRIALS}/{trial_id}{RESULT_SUFFIX}"


def aside_file(trial_id: str, why: str, stamp: int) -> str:
    """Where resume moves a trial's result file aside (``why``: INVALID or RETRIED; ``stamp``:
    time in ns)."""
    if why not in (INVALID, RETRIED):
        raise ValueError(f"why: {why!r}; allowed: {INVALID!r}, {RETRIED!r}")
    return f"{TRIALS}/{why}/{trial_id}{RESULT_SUFFIX}.{stamp}"


def weights_file(trial_id: str) -> str:
    return f"{WEIGHTS}/{trial_id}{WEIGHTS_SUFFIX}"


def damaged_weights_file(trial_id: str, stamp: int) -> str:
    """Where ``--retrain`` moves a damaged weights file aside (``stamp``: time in ns)."""
    return f"{WEIGHTS}/{DAMAGED}/{trial_id}{WEIGHTS_SUFFIX}.{stamp}"


def checkpoint_file(trial_id: str) -> str:
    return f"{CHECKPOINTS}/{trial_id}{CHECKPOINT_SUFFIX}"


def fallback_file(trial_id: str) -> str:
    """The weights at the fallback step (train.fallback_steps), kept while the trial runs."""
    return f"{CHECKPOINTS}/{trial_id}{FALLBACK_SUFFIX}"


def extra_file(kind: str, trial_id: str) -> str:
    """A trial's table of kind ``kind`` (CURVES or GRIDS)."""
    return f"{kind}/{trial_id}{RESULT_SUFFIX}"


def measure_file(trial_id: str, measure: str, version: int, settings_key: str) -> str:
    """One stored measure value (``settings_key``: ``workers.measures.settings_key``)."""
    return f"{MEASURES}/{trial_id}.{measure}.v{version}.{settings_key}{RESULT_SUFFIX}"


def raised_file(rel: str, stamp: int) -> str:
    """Where a measure value file ``rel`` (``measures/<name>``) is moved aside when its
    measure is evaluated again (``stamp``: time in ns)."""
    return f"{MEASURES}/{RAISED}/{rel.split('/', 1)[1]}.{stamp}"


def running_file(trial_id: str, token: str) -> str:
    """The phase marker of a trial run by the task submitted as ``token`` (workers.phase)."""
    return f"{RUNNING}/{trial_id}.{token}{MARKER_SUFFIX}"


def journal_file(name: str) -> str:
    """A driver session's journal file ``name`` (``<time>-<host>-<pid>-<hex>.tsv``)."""
    return f"{JOURNAL}/{name}"


# ---- local paths (local sweep directories only; ``~`` expanded as everywhere, storage.expand)
def trials_dir(sweep_dir: str | Path) -> Path:
    """The local directory of the result files."""
    return Path(expand(sweep_dir)) / TRIALS


def trial_path(sweep_dir: str | Path, trial_id: str) -> Path:
    """A trial's local result file (see :func:`trial_file`)."""
    return Path(expand(sweep_dir)) / trial_file(trial_id)


# ---- the inverse: from a file's name to its trial
def trial_id_of(name: str, suffix: str = RESULT_SUFFIX) -> str | None:
    """The trial id of a file named ``<trial_id><suffix>`` (a name in trials/, curves/, grids/;
    in weights/ with WEIGHTS_SUFFIX), or None for another name (or a hidden one)."""
    if not name.endswith(suffix) or name.startswith("."):
        return None
    return name[: -len(suffix)] or None


class MeasureName(NamedTuple):
    """What a measure value file's name says (the key of a stored value)."""

    trial_id: str
    measure: str
    version: int
    settings: str  # the settings key


def parse_measure_name(name: str) -> MeasureName | None:
    """(trial_id, measure, version, settings key) of a name in measures/, or None."""
    parts = name[: -len(RESULT_SUFFIX)].split(".") if name.endswith(RESULT_SUFFIX) else []
    if len(parts) != 4 or not parts[2].startswith("v") or not parts[2][1:].isdigit():
        return None
    return MeasureName(parts[0], parts[1], int(parts[2][1:]), parts[3])


def parse_marker_name(name: str) -> tuple[str, str] | None:
    """(trial_id, token) of a marker's name ``<trial_id>.<token>.json`` in running/, or None."""
    if not name.endswith(MARKER_SUFFIX):
        return None
    tid, _, token = name[: -len(MARKER_SUFFIX)].rpartition(".")
    return (tid, token) if tid and token else None


class Entry(NamedTuple):
    """What a path of a sweep directory is: its ``kind`` (the directory: TRIALS, WEIGHTS,
    CHECKPOINTS, CURVES, GRIDS, MEASURES, RUNNING) and its trial, with the measure's key for
    MEASURES, the token for RUNNING and whether a checkpoint is the fallback one."""

    kind: str
    trial_id: str
    measure: MeasureName | None = None
    token: str | None = None
    fallback: bool = False


def parse(rel: str) -> Entry | None:
    """The inverse of the path functions above: what the file at ``rel`` (relative to the sweep
    directory) is, or None for a path that is not one trial's file (sweep.json, a file moved
    aside, the journal, the compacted copy, a hidden temporary...)."""
    kind, _, name = rel.partition("/")
    if not name or "/" in name:
        return None
    if kind in (TRIALS, CURVES, GRIDS):
        tid = trial_id_of(name)
        return None if tid is None else Entry(kind, tid)
    if kind == WEIGHTS:
        tid = trial_id_of(name, WEIGHTS_SUFFIX)
        return None if tid is None else Entry(kind, tid)
    if kind == CHECKPOINTS:
        fallback = name.endswith(FALLBACK_SUFFIX)
        tid = trial_id_of(name, FALLBACK_SUFFIX if fallback else CHECKPOINT_SUFFIX)
        return None if tid is None else Entry(kind, tid, fallback=fallback)
    if kind == MEASURES:
        key = parse_measure_name(name)
        return None if key is None else Entry(kind, key.trial_id, measure=key)
    if kind == RUNNING:
        marker = parse_marker_name(name)
        return None if marker is None else Entry(kind, marker[0], token=marker[1])
    return None
