"""The frozen, hashable description of one trial.

Everything that changes a trial's numbers lives in :class:`TrialSpec`; run plumbing (where the
data and results live, the device) lives in :class:`RunContext`. The trial id is a hash of the
spec's canonical JSON, so the same configuration gets the same id on every machine and resuming
a sweep is a set difference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields

# Bump when the meaning of a spec field changes, so old and new trials never share an id.
SPEC_VERSION = 1


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
    steps: int = 2000  # optimizer steps (L-BFGS: iterations), the budget
    early_stop: bool = True  # stop once the whole train set is classified 100% correctly
    check_every: int = 100  # cadence of the early-stop and divergence checks, in steps
    lr_decay_epochs: int = 500  # A.5: lr x lr_decay every 500 epochs
    lr_decay: float = 0.1
    lbfgs_history: int = 100
    lbfgs_tolerance_grad: float = 1e-7
    lbfgs_tolerance_change: float = 1e-9
    lbfgs_max_iter: int = 2684  # A.5.5: at most 2684 L-BFGS iterations


@dataclass(frozen=True)
class MetricSpec:
    jacobian_points: int | None = None  # per split, seeded subset; None = every point
    # test points whose translation loop is walked for transitions (seeded subset; None = all,
    # 0 = off); Tanh networks are counted by dense sampling with transitions_k points per loop
    transitions_points: int | None = 100
    transitions_k: int = 4096
    # off-data studies, before and after training (workers.studies); 0 = off
    ellipse_k: int = 0  # points per ellipse (Fig. 2; the paper: 2^20)
    boundary_grid: int = 0  # n for an n x n grid in the plane of three training points (Fig. 3)
    boundary_extent: float = 1.25  # the grid spans [-extent, extent]^2; the points sit at radius 1


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
    metrics: MetricSpec = field(default_factory=MetricSpec)

    def canonical(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces); computed once per instance."""
        cached = self.__dict__.get("_canonical")
        if cached is None:
            d = {f.name: getattr(self, f.name) for f in fields(self)}
            for k in ("data", "train", "metrics"):  # flat dataclasses: one level
                d[k] = {f.name: getattr(d[k], f.name) for f in fields(d[k])}
            d["_version"] = SPEC_VERSION
            cached = json.dumps(d, sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_canonical", cached)
        return cached

    @property
    def trial_id(self) -> str:
        cached = self.__dict__.get("_trial_id")
        if cached is None:
            cached = hashlib.sha256(self.canonical().encode()).hexdigest()[:16]
            object.__setattr__(self, "_trial_id", cached)
        return cached

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        d = json.loads(text)
        d.pop("_version", None)
        return cls(
            data=DataSpec(**d.pop("data")),
            train=TrainSpec(**d.pop("train")),
            metrics=MetricSpec(**d.pop("metrics")),
            **d,
        )


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
