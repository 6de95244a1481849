"""The hyperparameters of a trial, declared once.

Each is declared with its name, its Arrow type (the same in the plan's manifest, the trial's
record and the loaded frame), its value in a trial (one meaning everywhere: ``batch_size`` is
null for full-batch L-BFGS, ``train_size``/``test_size`` are numbers of points, ``step_budget``
the budget), whether the planner samples it from ``space.<name>``, and whether the statistics
treat it as a hyperparameter (the seed is the replicate; the test-set size only says how a gap
was estimated). Every one of them is part of the trial's identity (``TrialSpec.identity``).
The planner (``sweep.config.SPACE_KEYS``), the manifest (``sweep.plan.manifest_table``), the
record's schema and its first row (``workers.results.record``, ``workers.trial.base_summary``) and the
statistics and figures (``analysis.stats.HYPERPARAMETERS``) read this list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    type: pa.DataType
    value: Callable[[Any], Any]  # TrialSpec -> its value
    space: bool  # sampled from space.<name> by the planner
    statistic: bool  # a hyperparameter for the statistics and figures' seed means
    doc: str


def _sizes(spec):
    from workers.data import planned_sizes

    return planned_sizes(spec)


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("dataset", pa.string(), lambda s: s.data.name, False, True, "data set"),
    Hyperparameter("train_size", pa.int64(), lambda s: _sizes(s)[0], True, True,
                   "training points (a seeded subset, or the whole split)"),
    Hyperparameter("test_size", pa.int64(), lambda s: _sizes(s)[1], False, False,
                   "test points behind the gap"),
    Hyperparameter("random_labels", pa.bool_(), lambda s: s.data.random_labels, True, True,
                   "train labels replaced by seeded random ones"),
    Hyperparameter("augment", pa.bool_(), lambda s: s.data.augment, False, True,
                   "A.5.4 augmentation"),
    Hyperparameter("width", pa.int64(), lambda s: s.width, True, True, "hidden units per layer"),
    Hyperparameter("depth", pa.int64(), lambda s: s.depth, True, True, "weight matrices"),
    Hyperparameter("activation", pa.string(), lambda s: s.activation, True, True,
                   "non-linearity"),
    Hyperparameter("optimizer", pa.string(), lambda s: s.optimizer, True, True, "optimizer"),
    Hyperparameter("lr", pa.float64(), lambda s: s.lr, True, True,
                   "learning rate (L-BFGS: its line search's initial step)"),
    Hyperparameter("batch_size", pa.int64(), lambda s: s.batch_size, True, True,
                   "mini-batch size (null: full-batch L-BFGS)"),
    Hyperparameter("init_scale", pa.float64(), lambda s: s.init_scale, True, True,
                   "weight-std multiplier s of the initialization"),
    Hyperparameter("seed", pa.int64(), lambda s: s.seed, True, False,
                   "seeds initialization, shuffling, augmentation (the replicate)"),
    Hyperparameter("step_budget", pa.int64(), lambda s: s.train.steps, False, True,
                   "optimizer steps allowed (L-BFGS: iterations)"),
)
BY_NAME = {h.name: h for h in HYPERPARAMETERS}
FIELDS = [(h.name, h.type) for h in HYPERPARAMETERS]  # Arrow fields, in the record's order
SPACE_KEYS = tuple(h.name for h in HYPERPARAMETERS if h.space)
STATISTICS_HYPERPARAMETERS = [h.name for h in HYPERPARAMETERS if h.statistic]


def values(spec) -> dict[str, Any]:
    """Every hyperparameter's value in a trial."""
    return {h.name: h.value(spec) for h in HYPERPARAMETERS}
