"""The frozen, hashable description of one trial: one trained network.

Everything that determines the trained weights lives in :class:`TrialSpec` and in its identity:
the data (set, subset sizes and seed, random labels, augmentation), the architecture, the
initialization, the optimizer with the settings that apply to it, the step budget and stop
rule, the seed. Measurement settings (:class:`MetricSpec`, which measures run and on which
points) travel with a spec to the worker but are not part of its identity: changing them never
gives a trained network a new id. Run plumbing (where the data and results live, the device)
lives in :class:`RunContext`. The trial id is a hash of the identity's canonical JSON, so the
same network gets the same id on every machine and resuming a sweep is a set difference.

Version 1 specs (plans written before measurement settings left the identity) keep their ids:
:meth:`TrialSpec.from_json` of a version-1 text records the id it was planned under.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace

from workers.results.hyperparameters import DEFAULTS, drop_defaults
from workers.results.measure_values import METRIC_ALIASES

# Bump when the meaning of a spec field changes, so old and new trials never share an id.
# 1: every field, measurement settings included; 2: only what determines the trained weights.
SPEC_VERSION = 2


def _setting(default, config: str | None = None, only: str | None = None):
    """A TrainSpec field: its default (a spec written before the field existed), the
    configuration key it is taken from (``train.<name>`` unless ``config`` says otherwise; ""
    for a hyperparameter, which the planner draws) and the optimizers it applies to (``only``:
    "minibatch" or "lbfgs"; left out of the identity of the others' trials)."""
    return field(default=default, metadata={"config": config, "only": only})


@dataclass(frozen=True)
class DataSpec:
    name: str
    train_size: int | None = None  # seeded subset of the train split; None = whole split
    test_size: int | None = None
    random_labels: bool = False  # train labels replaced by seeded uniform random labels
    augment: bool = False  # A.5.4: translation up to 4 px with wrap-around, horizontal flip
    seed: int = 0  # seeds subsets, random labels and the digits train/test split


@dataclass(frozen=True)
class TrainSpec:
    """How the network is trained. Each field names the configuration key it comes from (the
    planner reads them: ``sweep.plan._trial_spec``); its default is what a spec written before
    the field existed means."""

    steps: int = _setting(2000)  # optimizer steps (L-BFGS: iterations), the budget
    early_stop: bool = _setting(True)  # stop once the whole train set is classified 100% correctly
    check_every: int = _setting(100)  # cadence of the early-stop and divergence checks, in steps
    lr_decay_epochs: int = _setting(500, only="minibatch")  # A.5: lr x lr_decay every 500 epochs
    lr_decay: float = _setting(0.1, only="minibatch")
    lbfgs_history: int = _setting(100, "train.lbfgs.history_size", "lbfgs")
    lbfgs_tolerance_grad: float = _setting(1e-7, "train.lbfgs.tolerance_grad", "lbfgs")
    lbfgs_tolerance_change: float = _setting(1e-9, "train.lbfgs.tolerance_change", "lbfgs")
    lbfgs_max_iter: int = _setting(2684, "train.lbfgs.max_iter", "lbfgs")  # A.5.5: at most 2684
    # the hyperparameter weight_decay (workers.results.hyperparameters): coupled L2, lambda
    weight_decay: float = _setting(DEFAULTS["weight_decay"], "")

    @staticmethod
    def config_keys() -> dict[str, str]:
        """field -> the configuration key it is taken from, for the fields the configuration
        sets (the hyperparameters among them are drawn by the planner instead)."""
        return {f.name: f.metadata["config"] or f"train.{f.name}" for f in fields(TrainSpec)
                if f.metadata["config"] != ""}


# TrainSpec fields by the optimizers they apply to (the rest apply to all)
_MINIBATCH_ONLY = tuple(f.name for f in fields(TrainSpec) if f.metadata["only"] == "minibatch")
_LBFGS_ONLY = tuple(f.name for f in fields(TrainSpec) if f.metadata["only"] == "lbfgs")


@dataclass(frozen=True)
class MetricSpec:
    """How a trial's network is measured (not part of its identity): the registered measures
    it evaluates, their settings other than the defaults, and the off-data studies."""

    # aliases of measure settings (``METRIC_ALIASES``), kept so that specs of older plans and
    # callers read the same; at its default (the default its measures register) a field sets
    # nothing, otherwise it sets its measures' setting (``measure_overrides`` must then not set
    # that setting to another value):
    jacobian_points: int | None = None  # jacobian_norm_{train,test}.points (None: every point)
    transitions_points: int | None = 100  # transitions_test.points (None: all, 0: off)
    transitions_k: int = 4096  # transitions_test.k (Tanh: samples per loop)
    # off-data studies, before and after training (workers.studies); 0 = off
    ellipse_k: int = 0  # points per ellipse (Fig. 2; the paper: 2^20)
    boundary_grid: int = 0  # n for an n x n grid in the plane of three training points (Fig. 3)
    boundary_extent: float = 1.25  # the grid spans [-extent, extent]^2; the points sit at radius 1
    # the registered measures (workers.measures) each trial evaluates after training
    measures: tuple[str, ...] = ("jacobian_norm_train", "jacobian_norm_test", "transitions_test")
    # modules that register user measures (workers.measures.load_modules), imported by workers
    measure_modules: tuple[str, ...] = ()
    # the measures' settings other than their registered defaults, as canonical JSON
    # {measure: {setting: value}} (the configuration's ``measure_settings``, groups expanded:
    # ``sweep.config.SweepConfig.metric_spec``)
    measure_overrides: str = "{}"

    def measure_settings(self) -> dict[str, dict]:
        """Per measure, the settings that differ from its registered defaults: those of
        ``measure_overrides`` and of the alias fields not at their defaults. Raises ValueError
        where an alias field and ``measure_overrides`` set one setting to two values."""
        cached = self.__dict__.get("_settings")
        if cached is None:
            cached = {m: dict(st) for m, st in json.loads(self.measure_overrides).items()}
            defaults = {f.name: f.default for f in fields(self)}
            for alias, targets in METRIC_ALIASES.items():
                v = getattr(self, alias)
                if v == defaults[alias]:
                    continue
                for m, k in targets:
                    st = cached.setdefault(m, {})
                    if k in st and st[k] != v:
                        raise ValueError(f"{alias} {v!r} and measure_overrides' {m}.{k} "
                                         f"{st[k]!r}: one setting, two values; allowed: one")
                    st[k] = v
            object.__setattr__(self, "_settings", cached)
        return {m: dict(st) for m, st in cached.items()}

    def active_measures(self) -> tuple[str, ...]:
        """``measures`` less the ones switched off: asked to run on 0 points
        (``transitions_test.points`` 0)."""
        settings = self.measure_settings()
        return tuple(n for n in self.measures if settings.get(n, {}).get("points") != 0)


@dataclass(frozen=True)
class TrialSpec:
    data: DataSpec
    width: int
    depth: int
    activation: str
    optimizer: str
    lr: float  # L-BFGS: the initial step length of its line search
    batch_size: int | None  # None for full-batch L-BFGS (the train-set size is recorded)
    init_scale: float
    seed: int  # seeds initialization, shuffling and augmentation (A.5)
    train: TrainSpec = field(default_factory=TrainSpec)
    # how the trained network is measured: not part of the identity (nor of equality)
    metrics: MetricSpec = field(default_factory=MetricSpec, compare=False)
    # the id a version-1 plan gave this trial (its hash covered the measurement settings)
    legacy_id: str | None = field(default=None, compare=False)
    # the measurement settings a version-1 text carried (its id hashed them): canonical_v1
    # writes these, whatever ``metrics`` the spec is measured with now
    planned_metrics: MetricSpec | None = field(default=None, compare=False, repr=False)

    def identity(self) -> dict:
        """What determines the trained weights, as plain data: the data, architecture,
        initialization, optimizer with the settings that apply to it (no L-BFGS settings in a
        mini-batch trial, no learning-rate decay in an L-BFGS one, whose ``lr`` is its line
        search's initial step and whose ``batch_size`` is None), step budget, stop rule, seed.
        A hyperparameter at its identity default (``workers.results.hyperparameters``: e.g.
        ``weight_decay`` 0) is left out, so trials planned before it existed keep their ids."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in ("data", "train", "metrics", "legacy_id", "planned_metrics")}
        d["data"] = {f.name: getattr(self.data, f.name) for f in fields(self.data)}
        skip = _MINIBATCH_ONLY if self.optimizer == "lbfgs" else _LBFGS_ONLY
        d["train"] = {f.name: getattr(self.train, f.name) for f in fields(self.train)
                      if f.name not in skip}
        return drop_defaults(d, self)  # (a hyperparameter at its default: as before it existed)

    def canonical(self) -> str:
        """The identity as canonical JSON (sorted keys, no spaces, with the spec version);
        computed once per instance."""
        cached = self.__dict__.get("_canonical")
        if cached is None:
            cached = json.dumps({**self.identity(), "_version": SPEC_VERSION}, sort_keys=True,
                                separators=(",", ":"))
            object.__setattr__(self, "_canonical", cached)
        return cached

    def canonical_v1(self) -> str:
        """The version-1 canonical JSON (every field, measurement settings included), which
        plans written before version 2 hashed into their trial ids."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in ("legacy_id", "planned_metrics")}
        if self.planned_metrics is not None:
            d["metrics"] = self.planned_metrics
        for k in ("data", "train", "metrics"):  # flat dataclasses: one level
            d[k] = {f.name: getattr(d[k], f.name) for f in fields(d[k])
                    if f.name not in ("measures", "measure_modules",
                                      "measure_overrides")}  # (not in version 1)
        drop_defaults(d, self)
        d["_version"] = 1
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @property
    def trial_id(self) -> str:
        if self.legacy_id is not None:
            return self.legacy_id
        cached = self.__dict__.get("_trial_id")
        if cached is None:
            cached = hashlib.sha256(self.canonical().encode()).hexdigest()[:16]
            object.__setattr__(self, "_trial_id", cached)
        return cached

    @classmethod
    def from_json(cls, text: str, metrics: MetricSpec | None = None) -> "TrialSpec":
        """A spec from its canonical JSON (version 1 or 2). A version-2 text holds no
        measurement settings: ``metrics`` (default MetricSpec()) supplies them. A version-1
        text keeps the id it was planned under (``legacy_id``) and its measurement settings
        unless ``metrics`` is given."""
        d = json.loads(text)
        version = d.pop("_version", 1)
        if version not in (1, 2):
            raise ValueError(f"trial spec version {version}; this release reads 1 and 2")
        stored = d.pop("metrics", None)
        for k in ("measures", "measure_modules"):
            if stored and k in stored:
                stored[k] = tuple(stored[k])
        train = {f.name: f.default for f in fields(TrainSpec)} | d.pop("train")
        spec = cls(data=DataSpec(**d.pop("data")), train=TrainSpec(**train),
                   metrics=metrics or (MetricSpec(**stored) if stored else MetricSpec()), **d)
        if version == 1:
            planned = MetricSpec(**stored)
            v1 = replace(spec, planned_metrics=planned)
            spec = replace(v1, legacy_id=hashlib.sha256(v1.canonical_v1().encode()).hexdigest()[:16])
        return spec


@dataclass(frozen=True)
class RunContext:
    """Where a trial reads and writes; nothing here changes its numbers."""

    out_dir: str
    data_root: str | None = None
    download: bool = False
    save_weights: bool = False
    device: str = "cpu"
    num_threads: int = 1
    dry_run: bool = False  # write the trial's record without loading data or training
    # workers.checkpoint: train.checkpoint_every (steps, "10min", or None) and whether the
    # checkpoints stay once the trial's result is written
    checkpoint_every: int | str | None = None
    keep_checkpoints: bool = False
    # workers.train.TimeRule: train.time_budget (seconds, "30min", "12h") and
    # train.fallback_steps (the paper's rule for expensive trials, A.5.5)
    time_budget: float | str | None = None
    fallback_steps: int | None = None
    # resources.trial_timeout in seconds (None: no limit); with one, the task writes its trials'
    # phases for the driver (workers.phase)
    trial_timeout: float | None = None
