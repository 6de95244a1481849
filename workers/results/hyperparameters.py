"""The hyperparameters of a trial, declared once.

A declaration holds a hyperparameter's name, its Arrow type (the same in the plan's manifest,
the trial's record and the loaded frame), its value in a trial (one meaning everywhere:
``batch_size`` is null for full-batch L-BFGS, ``train_size``/``test_size`` are numbers of
points, ``step_budget`` the budget), where it lives in a :class:`~workers.results.spec.TrialSpec`
(``field``), whether the planner samples it from ``space.<name>`` and with which validator
(``check``, :mod:`workers.results.checks`), whether the space key may be null and which
configuration key then gives its value (``optional``, ``fallback``), whether only mini-batch
optimizers draw it and what L-BFGS takes instead (``minibatch_only``, ``lbfgs``), whether its
value decides a trial's cost (``cost``), whether the statistics treat it as a hyperparameter
(the seed is the replicate; the test-set size only says how a gap was estimated), and its
identity default: a trial whose value equals ``default`` leaves it out of its identity, as
trials planned before the hyperparameter existed did, so adding one orphans no sweep.

Everything else reads this list: the configuration's ``Space`` and its validation
(``sweep.config``), the planner's mapping from a drawn point to a trial, its conditional and
cost keys and ``plan.grid``'s allowed keys (``sweep.plan``), the trial's identity
(``TrialSpec.identity``), the manifest, the record's schema and first row
(``workers.results.record``, ``workers.trial.base_summary``) and the statistics and figures
(``analysis.stats.HYPERPARAMETERS``). Adding a hyperparameter is one entry here plus the code
that uses its value (the trainer, the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from workers.results.checks import Check, boolean, integer, number, one_of

REQUIRED = object()  # no identity default: the hyperparameter is always part of the identity


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    type: pa.DataType
    # (TrialSpec, (train points, test points) it uses: workers.data.planned_sizes) -> its value
    value: Callable[[Any, tuple[int, int]], Any]
    space: bool  # sampled from space.<name> by the planner
    statistic: bool  # a hyperparameter for the statistics and figures' seed means
    doc: str
    field: str | None = None  # its attribute path in a TrialSpec: "width", "data.train_size"
    check: Check | None = None  # validates one value of space.<name>
    optional: bool = False  # space.<name> may be null: every trial takes ``fallback``'s value
    fallback: str | None = None  # the configuration key giving its value when none is drawn
    minibatch_only: bool = False  # drawn for mini-batch optimizers only
    lbfgs: str | None = None  # with minibatch_only: the key L-BFGS takes it from (None: null)
    cost: bool = False  # its value decides a trial's cost (sweep.cost); cheapest = smallest
    default: Any = REQUIRED  # identity default: at this value, left out of the identity

    @property
    def has_default(self) -> bool:
        return self.default is not REQUIRED

    def get(self, spec) -> Any:
        """Its value as a TrialSpec holds it (``field``; ``data.train_size`` None = whole)."""
        obj = spec
        for part in self.field.split("."):
            obj = getattr(obj, part)
        return obj


H = Hyperparameter

# sanity bounds far beyond the papers' space (width 1..2^16, depth 2..65): larger values only
# overflow the cost model's integers (and no machine trains them)
MAX_WIDTH = 2**24
MAX_DEPTH = 10_000
HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    H("dataset", pa.string(), lambda s, n: s.data.name, False, True, "data set",
      field="data.name"),
    H("train_size", pa.int64(), lambda s, n: n[0], True, True,
      "training points (a seeded subset, or the whole split)", field="data.train_size",
      check=integer(lo=1, hi="split", allow_none=True), optional=True,
      fallback="dataset.train_size", cost=True),
    H("test_size", pa.int64(), lambda s, n: n[1], False, False, "test points behind the gap",
      field="data.test_size"),
    H("random_labels", pa.bool_(), lambda s, n: s.data.random_labels, True, True,
      "train labels replaced by seeded random ones", field="data.random_labels",
      check=boolean(), optional=True, fallback="dataset.random_labels"),
    H("augment", pa.bool_(), lambda s, n: s.data.augment, False, True, "A.5.4 augmentation",
      field="data.augment", fallback="dataset.augment"),
    H("width", pa.int64(), lambda s, n: s.width, True, True, "hidden units per layer",
      field="width", check=integer(lo=1, cap=MAX_WIDTH), cost=True),
    H("depth", pa.int64(), lambda s, n: s.depth, True, True, "weight matrices",
      field="depth", check=integer(lo=2, cap=MAX_DEPTH), cost=True),
    H("activation", pa.string(), lambda s, n: s.activation, True, True, "non-linearity",
      field="activation", check=one_of("activation")),
    H("optimizer", pa.string(), lambda s, n: s.optimizer, True, True, "optimizer",
      field="optimizer", check=one_of("optimizer"), cost=True),
    H("lr", pa.float64(), lambda s, n: s.lr, True, True,
      "learning rate (L-BFGS: its line search's initial step)", field="lr",
      check=number(positive=True), minibatch_only=True, lbfgs="train.lbfgs.lr"),
    H("batch_size", pa.int64(), lambda s, n: s.batch_size, True, True,
      "mini-batch size (null: full-batch L-BFGS)", field="batch_size",
      check=integer(lo=1), minibatch_only=True, cost=True),
    H("init_scale", pa.float64(), lambda s, n: s.init_scale, True, True,
      "weight-std multiplier s of the initialization", field="init_scale",
      check=number(positive=True)),
    H("weight_decay", pa.float64(), lambda s, n: s.train.weight_decay, True, True,
      "L2 penalty lambda/2 ||w||^2 on the weights (Jiang et al. 2020; coupled, not AdamW's)",
      field="train.weight_decay", check=number(lo=0.0), default=0.0),
    H("seed", pa.int64(), lambda s, n: s.seed, True, False,
      "seeds initialization, shuffling, augmentation (the replicate)", field="seed",
      check=integer(lo=0)),
    H("step_budget", pa.int64(), lambda s, n: s.train.steps, False, True,
      "optimizer steps allowed (L-BFGS: iterations)", field="train.steps"),
)
del H
BY_NAME = {h.name: h for h in HYPERPARAMETERS}
FIELDS = [(h.name, h.type) for h in HYPERPARAMETERS]  # Arrow fields, in the record's order
SPACE = tuple(h for h in HYPERPARAMETERS if h.space)
SPACE_KEYS = tuple(h.name for h in SPACE)
STATISTICS_HYPERPARAMETERS = [h.name for h in HYPERPARAMETERS if h.statistic]
# what a value of each defaulted hyperparameter is in a record written before it existed
DEFAULTS = {h.name: h.default for h in HYPERPARAMETERS if h.has_default}


def values(spec, sizes: tuple[int, int]) -> dict[str, Any]:
    """Every hyperparameter's value in a trial; ``sizes``: (train points, test points) it uses
    (``workers.data.planned_sizes(spec)``)."""
    return {h.name: h.value(spec, sizes) for h in HYPERPARAMETERS}


def drop_defaults(identity: dict, spec) -> dict:
    """``identity`` (a TrialSpec's identity as nested dicts) without the hyperparameters whose
    value in ``spec`` is their identity default (changed in place, and returned)."""
    for h in HYPERPARAMETERS:
        if h.has_default and h.get(spec) == h.default:
            *path, leaf = h.field.split(".")
            d = identity
            for part in path:
                d = d[part]
            d.pop(leaf, None)
    return identity
