"""Planning: draw a sweep's trials from its space with an Optuna sampler.

Keys named in ``plan.grid`` are crossed in full: trial i takes combination i mod (number of
combinations), so any ``trials`` >= that number covers every combination. The other keys are
drawn by a seeded Optuna sampler (``random``, or ``qmc``: scrambled Sobol over the value
indices). The same configuration and
seed give the same trials, in the same order, with the same ids. Every key is drawn for every
trial (a fixed search space, as quasi-random sampling needs); ``batch_size`` is then dropped for
full-batch L-BFGS, which uses ``train.lbfgs.lr`` in place of the sampled ``lr``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
import warnings

import pyarrow as pa

from sweep.config import SPACE_KEYS, SweepConfig
from workers.spec import DataSpec, MetricSpec, TrainSpec, TrialSpec


def _sampler(cfg: SweepConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if cfg.plan.sampler == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=cfg.seed, warn_independent_sampling=False,
                warn_asynchronous_seeding=False,
            )
    return optuna.samplers.RandomSampler(seed=cfg.seed)


def _trial_spec(cfg: SweepConfig, v: dict) -> TrialSpec:
    t = cfg.train
    lbfgs = v["optimizer"] == "lbfgs"
    ds = cfg.dataset
    return TrialSpec(
        data=DataSpec(ds.name, ds.train_size, ds.test_size, ds.random_labels, ds.augment, ds.seed),
        width=v["width"], depth=v["depth"], activation=v["activation"], optimizer=v["optimizer"],
        lr=t.lbfgs.lr if lbfgs else v["lr"],
        batch_size=None if lbfgs else v["batch_size"],
        init_scale=v["init_scale"], seed=v["seed"],
        train=TrainSpec(
            steps=t.steps, early_stop=t.early_stop, check_every=t.check_every,
            lr_decay_epochs=t.lr_decay_epochs, lr_decay=t.lr_decay,
            lbfgs_history=t.lbfgs.history_size, lbfgs_tolerance_grad=t.lbfgs.tolerance_grad,
            lbfgs_tolerance_change=t.lbfgs.tolerance_change, lbfgs_max_iter=t.lbfgs.max_iter,
        ),
        metrics=MetricSpec(**asdict(cfg.metrics)),
    )


def plan_trials(cfg: SweepConfig) -> list[TrialSpec]:
    """The sweep's distinct trials, in plan order. Fewer than ``cfg.trials`` only when the space
    holds fewer distinct configurations."""
    import optuna

    space = cfg.space
    grid_keys = list(cfg.plan.grid)
    cells = list(itertools.product(*(space.values(k) for k in grid_keys)))
    free = [k for k in SPACE_KEYS if k not in grid_keys]
    study = optuna.create_study(sampler=_sampler(cfg))
    specs: dict[str, TrialSpec] = {}
    max_draws = 20 * cfg.trials + len(cells)
    for i in range(max_draws):
        if len(specs) == cfg.trials:
            break
        trial = study.ask()

        def draw(key: str):
            vals = space.values(key)
            return vals[trial.suggest_int(key, 0, len(vals) - 1)] if len(vals) > 1 else vals[0]

        v = dict(zip(grid_keys, cells[i % len(cells)]))
        # Every free key is drawn in every trial, so a QMC sampler sees one fixed search
        # space; _trial_spec drops batch_size (and the sampled lr) for full-batch L-BFGS.
        v.update({k: draw(k) for k in free})
        study.tell(trial, 0.0)
        spec = _trial_spec(cfg, v)
        specs.setdefault(spec.trial_id, spec)
    return list(specs.values())


def manifest_table(specs: list[TrialSpec]) -> pa.Table:
    """One row per planned trial: id, the sampled hyperparameters and the canonical spec."""
    rows = [
        {
            "trial_id": s.trial_id, "dataset": s.data.name, "width": s.width, "depth": s.depth,
            "activation": s.activation, "optimizer": s.optimizer, "lr": s.lr,
            "batch_size": s.batch_size, "init_scale": s.init_scale, "seed": s.seed,
            "spec": s.canonical(),
        }
        for s in specs
    ]
    schema = pa.schema([
        ("trial_id", pa.string()), ("dataset", pa.string()), ("width", pa.int64()),
        ("depth", pa.int64()), ("activation", pa.string()), ("optimizer", pa.string()),
        ("lr", pa.float64()), ("batch_size", pa.int64()), ("init_scale", pa.float64()),
        ("seed", pa.int64()), ("spec", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)
