"""The layout of a sweep directory: which file is where (the results contract on disk).

    sweep.json, plan.parquet, pairs.parquet   the sweep (sweep.driver)
    trials/<id>.parquet                       a trial's record (workers.results.record), its truth
    weights/<id>.safetensors                  its trained network (workers.models)
    curves/, grids/ <id>.parquet              its off-data studies (workers.results.record)
    measures/<id>.<measure>.v<v>.<settings>.parquet   the measures table (workers.results.measure_table)
    journal/*.tsv                             what drivers saw arrive (workers.results.journal)
    running/<id>.<token>.json                 a running trial's phase (workers.phase), transient
"""

from __future__ import annotations

from pathlib import Path

from workers.results.storage import expand

# The files of a sweep directory besides trials/ (see sweep.driver)
SWEEP_FILE = "sweep.json"
PLAN_FILE = "plan.parquet"
PAIRS_FILE = "pairs.parquet"  # with plan.factors: one row per pair (sweep.plan.plan_pairs)
TRIALS = "trials"  # the result files, one per trial
WEIGHTS = "weights"
JOURNAL = "journal"
RUNNING = "running"  # markers of running trials (resources.trial_timeout), removed as they end


def trial_file(trial_id: str) -> str:
    """A trial's result file, relative to the sweep directory."""
    return f"{TRIALS}/{trial_id}.parquet"


def trials_dir(sweep_dir: str | Path) -> Path:
    """The local directory of the result files (local sweep directories only; ``~`` expanded
    as everywhere, ``workers.results.storage.expand``)."""
    return Path(expand(sweep_dir)) / TRIALS


def trial_path(sweep_dir: str | Path, trial_id: str) -> Path:
    """A trial's local result file (local sweep directories only; see :func:`trial_file`)."""
    return Path(expand(sweep_dir)) / trial_file(trial_id)


def weights_file(trial_id: str) -> str:
    return f"{WEIGHTS}/{trial_id}.safetensors"


def extra_file(kind: str, trial_id: str) -> str:
    return f"{kind}/{trial_id}.parquet"


def running_file(trial_id: str, token: str) -> str:
    """The phase marker of a trial run by the task submitted as ``token`` (workers.phase)."""
    return f"{RUNNING}/{trial_id}.{token}.json"
