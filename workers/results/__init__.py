"""The sweep directory's contract: the bottom layer every other part of the project stands on.

What a trial is and what a sweep directory holds, in one package that imports nothing of the
project above it (``tests/test_layers.py`` checks):

- ``spec``: the trial's specification and identity (``TrialSpec``, ``trial_id``);
- ``hyperparameters``: every hyperparameter declared once (type, space key, identity rule);
- ``layout``: every path of a sweep directory, and from a path back to its trial;
- ``storage``: local directories and object stores behind one ``Store``;
- ``sweep_dir``: ``SweepDir``, the sweep directory as a value (a ``Store`` with its layout and
  its index);
- ``conform``: a file's schema cast to the current one;
- ``record``: a trial's record (``trials/<id>.parquet``) and its ``Status``;
- ``measure_table``: the measures table (``measures/<id>.<measure>.v<v>.<settings>.parquet``);
- ``index``: the journal, what is valid and retryable (resume) and the status counts (the
  modules ``journal`` and ``resume`` are names of it);
- ``compact``: the compacted copy ``sweep compact`` writes.

The names older code imports from ``workers.results`` itself (``write_trial``, ``read_result``,
``Journal``, ...) import from here too (``_COMPAT``).
"""

from __future__ import annotations

import importlib

_COMPAT = {
    "layout": ("JOURNAL", "PAIRS_FILE", "PLAN_FILE", "SWEEP_FILE", "TRIALS", "WEIGHTS",
               "extra_file", "trial_file", "trial_path", "trials_dir", "weights_file"),
    "record": ("EXTRA_SCHEMAS", "POINT_FIELDS", "POINT_TYPE", "SCHEMA", "SCHEMA_VERSION",
               "STATUSES", "SUMMARY_COLUMNS", "SUMMARY_FIELDS", "ResultError", "points_columns",
               "read_result", "read_trial", "read_trial_summary", "write_extra", "write_trial"),
    "index": ("Journal", "read_journal", "trial_statuses", "result_ids", "result_index",
              "valid_trial_ids", "Status", "StatusCounts", "status_counts"),
    "sweep_dir": ("SweepDir",),
}
_WHERE = {name: module for module, names in _COMPAT.items() for name in names}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
