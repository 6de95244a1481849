"""Compatibility names: what ``workers.results`` held before it was split by job.

The trial's record is ``workers.record``, the sweep directory's layout ``workers.layout``, the
drivers' journal ``sweep.journal`` and the resume bookkeeping ``sweep.resume``. Importing from
here keeps scripts written against earlier releases working.
"""

from workers.layout import (  # noqa: F401
    JOURNAL, PAIRS_FILE, PLAN_FILE, SWEEP_FILE, TRIALS, WEIGHTS, extra_file, trial_file,
    trial_path, trials_dir, weights_file,
)
from workers.record import (  # noqa: F401
    EXTRA_SCHEMAS, POINT_FIELDS, POINT_TYPE, SCHEMA, SCHEMA_VERSION, STATUSES, SUMMARY_COLUMNS,
    SUMMARY_FIELDS, ResultError, points_columns, read_result, read_trial, read_trial_summary,
    write_extra, write_trial,
)


def __getattr__(name):  # the driver-side modules import lazily (they import this package)
    if name in ("Journal", "read_journal", "trial_statuses"):
        from sweep import journal

        return getattr(journal, name)
    if name in ("result_ids", "result_index", "valid_trial_ids"):
        from sweep import resume

        return getattr(resume, name)
    raise AttributeError(f"module 'workers.results' has no attribute {name!r}")
