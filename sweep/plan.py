"""Planning: draw a sweep's trials from its space with an Optuna sampler.

Keys named in ``plan.grid`` are crossed in full: trial i takes combination i mod (number of
combinations), so any ``trials`` >= that number covers every combination. The other keys are
drawn by a seeded Optuna sampler (``random``, or ``qmc``: scrambled Sobol over the value
indices), define-by-run: ``lr`` and ``batch_size`` are conditional parameters, drawn only for
mini-batch optimizers (full-batch L-BFGS uses ``train.lbfgs.lr`` and the whole train set).

``plan.cheap_bias`` (b >= 0) favours cheap configurations, as the paper did: a configuration's
probability is multiplied by (c_min / c)^b, c its estimated FLOPs (:mod:`sweep.cost`) and c_min
that of the cheapest corner of the space; b = 0 leaves the draws uniform. With the random
sampler and a space of at most ENUMERATE_MAX free configurations this is exact: each trial is
one Optuna draw of u in [0, 1) mapped through the cumulative probabilities of the enumerated
configurations. Otherwise (qmc, larger spaces) every key is suggested separately and a draw is
kept with probability (c_min / c)^b (rejection sampling: the same distribution).
The same configuration and seed give the same trials, in the same order, with the same ids.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
import warnings

import pyarrow as pa

from sweep import cost
from sweep.config import FACTORS, SPACE_KEYS, ConfigError, SweepConfig
from workers.data import planned_sizes
from workers.results.hyperparameters import BY_NAME, HYPERPARAMETERS, SPACE
from workers.results.hyperparameters import FIELDS as HYPERPARAMETER_FIELDS
from workers.results.hyperparameters import values as _values
from workers.results.spec import DataSpec, TrainSpec, TrialSpec


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


def hyperparameter_values(spec: TrialSpec) -> dict:
    """Every hyperparameter's value in a trial (``workers.results.hyperparameters.values``)."""
    return _values(spec, planned_sizes(spec))


def config_value(cfg: SweepConfig, key: str):
    """The value of a dotted configuration key: ``config_value(cfg, "train.lbfgs.lr")``."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _drawn(cfg: SweepConfig, v: dict, h) -> object:
    """Hyperparameter ``h``'s value in the trial of the drawn point ``v``: L-BFGS takes a
    mini-batch-only one from its own key (``h.lbfgs``; None: null, as full batch), a point
    without a value (an optional key left null, a factor not drawn) from ``h.fallback``."""
    if h.minibatch_only and v["optimizer"] == "lbfgs":
        return None if h.lbfgs is None else config_value(cfg, h.lbfgs)
    if v.get(h.name) is None and h.fallback is not None:
        return config_value(cfg, h.fallback)
    return v[h.name]


# The hyperparameters a drawn point gives a trial (the sampled ones and augment, which Fig. 4's
# pairs set), by their place in a TrialSpec; the rest of a trial comes from the configuration.
_DRAWN = tuple(h for h in HYPERPARAMETERS if h.space or h.fallback is not None)


def _trial_spec(cfg: SweepConfig, v: dict) -> TrialSpec:
    """The trial of a drawn point ``v`` (space key -> value) under the configuration: the
    hyperparameters from the point (``_drawn``), the data set's name, test subset and seed and
    the training settings (``TrainSpec.config_keys``: ``train.lbfgs.history_size`` is
    ``lbfgs_history``) from ``cfg``."""
    ds = cfg.dataset
    parts: dict[str, dict] = {"": {}, "data": {"name": ds.name, "test_size": ds.test_size,
                                               "seed": ds.seed},
                              "train": {f: config_value(cfg, k)
                                        for f, k in TrainSpec.config_keys().items()}}
    for h in _DRAWN:
        section, _, name = h.field.rpartition(".")
        parts[section][name] = _drawn(cfg, v, h)
    return TrialSpec(data=DataSpec(**parts["data"]), train=TrainSpec(**parts["train"]),
                     metrics=cfg.metric_spec(), **parts[""])


CONDITIONAL = tuple(h.name for h in SPACE if h.minibatch_only)  # mini-batch optimizers only


def _unset(cfg: SweepConfig, key: str):
    """What a null value of space.<key> means (its fallback's value), else None."""
    h = BY_NAME[key]
    return None if h.fallback is None else config_value(cfg, h.fallback)


def cheapest_flops(cfg: SweepConfig) -> float:
    """Estimated FLOPs of the cheapest corner of the space: the smallest value of every key
    that decides a trial's cost (``Hyperparameter.cost``: width, depth, batch size, training
    set), each optimizer in turn, the first value of the others."""
    s = cfg.space

    def cheapest(h):
        vals = s.values(h.name)
        if not h.cost:
            return vals[0]
        unset = cfg.train_split_size if h.name == "train_size" else _unset(cfg, h.name)
        return min(vals, key=lambda x: unset if x is None else x)

    base = {h.name: cheapest(h) for h in SPACE if h.name != "optimizer"}
    return min(cost.estimate_flops(_trial_spec(cfg, {**base, "optimizer": o})) for o in s.optimizer)


def space_size(cfg: SweepConfig) -> int:
    """The number of distinct configurations of the space (L-BFGS has no lr or batch_size of
    its own: one configuration per value of the other keys); for ``plan.factors``, of the
    mini-batch space the base configurations come from."""
    s = cfg.space

    def distinct(k):  # a null of train_size / random_labels is the data set's own value
        default = _unset(cfg, k)
        return len({default if v is None else v for v in s.values(k)})

    others = math.prod(distinct(k) for k in SPACE_KEYS if k not in ("optimizer",) + CONDITIONAL)
    mini = sum(1 for o in s.optimizer if o != "lbfgs")
    lbfgs = 0 if cfg.plan.factors else int("lbfgs" in s.optimizer)
    return others * (mini * math.prod(len(s.values(k)) for k in CONDITIONAL) + lbfgs)


def check_trials(cfg: SweepConfig) -> None:
    """ConfigError (at once, before planning) when ``trials`` exceeds the space's distinct
    configurations."""
    n = space_size(cfg)
    if cfg.trials > n:
        what = "base configurations" if cfg.plan.factors else "configurations"
        raise ConfigError(f"trials: {cfg.trials:,} is more than the {n:,} distinct {what} of the "
                          f"space; allowed: 1..{n}")


def plan_trials(cfg: SweepConfig) -> list[TrialSpec]:
    """The sweep's distinct trials, in plan order. Fewer than ``cfg.trials`` only when the
    cost bias (or, with ``plan.infeasible=replace``, the memory bound) rejects too many draws.
    With ``plan.factors``, the trials of :func:`plan_pairs`. Raises ConfigError when ``trials``
    exceeds the space's distinct configurations (``check_trials``)."""
    check_trials(cfg)
    if cfg.plan.factors:
        return plan_pairs(cfg)[0]
    return _draw(cfg)


def factor_value(spec: TrialSpec, factor: str):
    """The value of a Fig. 4 factor in a trial."""
    return BY_NAME[factor].get(spec)


def _pair_sides(cfg: SweepConfig, base: dict, factor: str) -> tuple[dict, dict]:
    a, b = FACTORS[factor]
    if factor == "optimizer":
        return dict(base), {**base, "optimizer": "lbfgs"}
    return {**base, factor: a}, {**base, factor: b}


def plan_pairs(cfg: SweepConfig) -> tuple[list[TrialSpec], pa.Table]:
    """Fig. 4's paired trials: ``trials`` base configurations are drawn from the space (with a
    mini-batch optimizer, true labels, no augmentation), and each gives one pair per factor in
    ``plan.factors``, identical but for that factor (FACTORS lists the two values). Pairs are
    whole by construction; a trial shared by several pairs (e.g. the ReLU, true-label side) is
    run once. Returns (distinct trials, pairs table: pair_id, factor, value_a, value_b,
    trial_a, trial_b)."""
    import hashlib

    check_trials(cfg)
    minibatch = tuple(o for o in cfg.space.optimizer if o != "lbfgs")
    base_cfg = replace(cfg, space=replace(cfg.space, optimizer=minibatch),
                       plan=replace(cfg.plan, factors=()))
    specs: dict[str, TrialSpec] = {}
    rows: dict[str, dict] = {}  # by pair_id: two bases can give the same pair (e.g. activation)
    for base in _draw(base_cfg, values=True):
        for factor in cfg.plan.factors:
            sides = [_trial_spec(cfg, v) for v in _pair_sides(cfg, base, factor)]
            for s in sides:
                specs.setdefault(s.trial_id, s)
            pid = hashlib.sha256(f"{factor}:{sides[0].trial_id}:{sides[1].trial_id}".encode())
            value = [str(factor_value(s, factor)) for s in sides]
            rows.setdefault(pid.hexdigest()[:16], {
                "pair_id": pid.hexdigest()[:16], "factor": factor, "value_a": value[0],
                "value_b": value[1], "trial_a": sides[0].trial_id, "trial_b": sides[1].trial_id})
    table = pa.Table.from_pylist(list(rows.values()), schema=PAIRS_SCHEMA)
    return list(specs.values()), table


PAIRS_SCHEMA = pa.schema([("pair_id", pa.string()), ("factor", pa.string()),
                          ("value_a", pa.string()), ("value_b", pa.string()),
                          ("trial_a", pa.string()), ("trial_b", pa.string())])


# The random sampler draws one index into the enumerated free configurations (below this many);
# larger spaces, and the qmc sampler, draw every key separately.
ENUMERATE_MAX = 300_000


# the keys that decide a trial's cost or are conditional (enumerated with the cost bias)
COST_KEYS = tuple(h.name for h in SPACE if h.cost or h.minibatch_only)


class _Enumerated:
    """The free configurations of one grid cell as a distribution that one uniform number
    picks from. The free keys that decide a trial's cost or are conditional (COST_KEYS) are
    enumerated: the optimizer uniform, lr and batch_size uniform given a mini-batch optimizer,
    the others uniform, times the cost bias (c_min / c)^b, normalized to a cumulative table.
    u in [0, 1) picks a row of that table; where u falls inside the row's interval, rescaled to
    [0, 1), picks the remaining keys (activation, init_scale, seed: uniform, independent of the
    cost) as the digits of a mixed-radix index. So every draw is kept and its distribution is
    exactly the rejection-sampling one."""

    def __init__(self, cfg: SweepConfig, cell: dict, free: list[str], c_min: float,
                 limit: int | None = None):
        import numpy as np

        space, bias = cfg.space, cfg.plan.cheap_bias
        self.tail = [k for k in free if k not in COST_KEYS]
        head = [k for k in free if k in COST_KEYS and k != "optimizer"]
        opts = [cell["optimizer"]] if "optimizer" in cell else list(space.optimizer)
        probe = {k: space.values(k)[0] for k in self.tail}  # cost does not depend on these
        self.rows: list[dict] = []
        weights = []
        for opt in opts:
            keys = [k for k in head if not (opt == "lbfgs" and k in CONDITIONAL)]
            rows = [{**cell, "optimizer": opt, **dict(zip(keys, vals))}
                    for vals in itertools.product(*(space.values(k) for k in keys))]
            logw = np.full(len(rows), -np.log(len(opts) * len(rows)))
            if bias > 0:  # in logs: a large bias must not underflow every weight to 0
                flops = np.array([cost.estimate_flops(_trial_spec(cfg, {**probe, **r}))
                                  for r in rows])
                logw += bias * (np.log(c_min) - np.log(flops))
            if limit is not None:  # plan.infeasible=replace: weight 0 where no worker fits
                memory = np.array([cost.estimate_memory(_trial_spec(cfg, {**probe, **r}))
                                   for r in rows])
                logw[memory > limit] = -np.inf
            self.rows += rows
            weights.append(logw)
        logw = np.concatenate(weights)
        if not np.isfinite(logw.max()):
            raise ConfigError(f"plan.infeasible=replace: no configuration of the grid cell {cell} "
                              "fits a worker's memory (resources.worker_memory_gb)")
        cdf = np.cumsum(np.exp(logw - logw.max()))
        self.cdf = cdf / cdf[-1]
        self.radix = [len(space.values(k)) for k in self.tail]
        self.space = space

    @staticmethod
    def size(cfg: SweepConfig, free: list[str]) -> int:
        n = 1
        for k in free:
            if k in COST_KEYS:
                n *= len(cfg.space.values(k))
        return n

    def decode(self, index: int) -> dict:
        """Configuration ``index`` of the cell: row index // R, tail digits index % R (R = the
        tail keys' combinations)."""
        row, r = divmod(int(index), int(math.prod(self.radix)))
        v = dict(self.rows[row])
        for k, n in zip(reversed(self.tail), reversed(self.radix)):
            r, digit = divmod(r, n)
            v[k] = self.space.values(k)[digit]
        return v

    def weights(self):
        """Every configuration's probability (numpy, by ``decode`` index): its row's share,
        split evenly over the tail keys' combinations."""
        import numpy as np

        rows = np.diff(np.concatenate([[0.0], self.cdf]))
        return np.repeat(rows / math.prod(self.radix), math.prod(self.radix))

    def pick(self, u: float) -> dict:
        import numpy as np

        i = min(int(np.searchsorted(self.cdf, u, side="right")), len(self.rows) - 1)
        lo = self.cdf[i - 1] if i else 0.0
        frac = min(max((u - lo) / (self.cdf[i] - lo), 0.0), np.nextafter(1.0, 0.0))
        r = int(frac * int(np.prod(self.radix)))  # mixed radix over the tail keys
        v = dict(self.rows[i])
        for k, n in zip(reversed(self.tail), reversed(self.radix)):
            r, digit = divmod(r, n)
            v[k] = self.space.values(k)[digit]
        return v


# Above this share of the space's configurations, the random sampler draws without replacement
# (_draw_dense) instead of drawing with replacement and dropping repeats, which slows down as
# the plan nears the whole space (coupon collecting).
DENSE_ABOVE = 0.25


def _draw_dense(cfg: SweepConfig, cells: list, grid_keys: list[str], free: list[str],
                c_min: float, limit: int | None, values: bool) -> list:
    """``cfg.trials`` distinct configurations drawn without replacement: in each grid cell,
    every configuration gets the key -log(U) / p (U uniform, p its probability under the
    random sampler's distribution: ``_Enumerated``, the cost bias and the memory bound
    included), and the cell's configurations are taken in increasing key order (Efraimidis and
    Spirakis' weighted sampling without replacement); trial i comes from cell i mod (cells), as
    in ``_draw``, while the cell has configurations left. Seeded by ``cfg.seed``."""
    import numpy as np

    rng = np.random.default_rng([cfg.seed, 0x5EED])
    tables, orders = [], []
    for key in cells:
        e = _Enumerated(cfg, dict(zip(grid_keys, key)), free, c_min, limit)
        p = e.weights()
        u = rng.random(len(p))
        keys = np.full(len(p), np.inf)
        ok = p > 0
        keys[ok] = -np.log(u[ok]) / p[ok]
        tables.append(e)
        orders.append(np.argsort(keys, kind="stable")[:int(ok.sum())])
    specs: dict[str, object] = {}
    pos = [0] * len(cells)
    cell = 0
    while len(specs) < cfg.trials and any(pos[c] < len(orders[c]) for c in range(len(cells))):
        if pos[cell] < len(orders[cell]):
            v = tables[cell].decode(orders[cell][pos[cell]])
            pos[cell] += 1
            spec = _trial_spec(cfg, v)
            specs.setdefault(spec.trial_id, v if values else spec)
        cell = (cell + 1) % len(cells)
    return list(specs.values())


def _draw(cfg: SweepConfig, values: bool = False) -> list:
    """Draw up to ``cfg.trials`` distinct configurations: TrialSpecs, or with ``values`` the
    drawn value dicts (distinct by the spec they give). With the random sampler, a plan of more
    than ``DENSE_ABOVE`` of the space is drawn without replacement (``_draw_dense``)."""
    import random

    import optuna

    space = cfg.space
    grid_keys = list(cfg.plan.grid)
    cells = list(itertools.product(*(space.values(k) for k in grid_keys)))
    free = [k for k in SPACE_KEYS if k not in grid_keys]
    bias = cfg.plan.cheap_bias
    c_min = cheapest_flops(cfg) if bias > 0 else 0.0
    enumerate_ = cfg.plan.sampler == "random" and _Enumerated.size(cfg, free) <= ENUMERATE_MAX
    limit = cost.worker_memory(cfg)[0] if cfg.plan.infeasible == "replace" else None
    base = replace(cfg, plan=replace(cfg.plan, factors=()))  # (plan_pairs: the base space)
    if enumerate_ and cfg.trials > DENSE_ABOVE * space_size(base):
        return _draw_dense(cfg, cells, grid_keys, free, c_min, limit, values)
    study = optuna.create_study(sampler=_sampler(cfg))
    tables: dict[tuple, _Enumerated] = {}
    accept = random.Random(cfg.seed)  # the cost bias's own seeded draws (per-key path)
    specs: dict[str, TrialSpec] = {}
    max_draws = (20 if enumerate_ or (bias == 0 and limit is None) else 200) * cfg.trials \
        + len(cells)
    cell = 0
    for _ in range(max_draws):
        if len(specs) == cfg.trials:
            break
        trial = study.ask()
        key = cells[cell % len(cells)]
        v = dict(zip(grid_keys, key))
        if enumerate_:
            if key not in tables:
                tables[key] = _Enumerated(cfg, v, free, c_min, limit)
            v = tables[key].pick(trial.suggest_float("u", 0.0, 1.0))
            spec = _trial_spec(cfg, v)
        else:
            for k in free:
                if k in CONDITIONAL and v["optimizer"] == "lbfgs":
                    continue
                vals = space.values(k)
                v[k] = vals[trial.suggest_int(k, 0, len(vals) - 1)] if len(vals) > 1 else vals[0]
            # QMC reads its search space from a finished trial; the random sampler needs no tell
            study.tell(trial, 0.0)
            spec = _trial_spec(cfg, v)
            if bias > 0 and accept.random() >= (c_min / cost.estimate_flops(spec)) ** bias:
                continue  # rejected by the cost bias; the grid cell is retried with the next draw
            if limit is not None and cost.estimate_memory(spec) > limit:
                continue  # plan.infeasible=replace: fits no worker; drawn again
        cell += 1
        specs.setdefault(spec.trial_id, v if values else spec)
    return list(specs.values())


def manifest_table(specs: list[TrialSpec], cfg: SweepConfig) -> pa.Table:
    """One row per planned trial: id, the hyperparameters with the same meaning as in the
    result files (``batch_size`` null for full-batch L-BFGS, ``train_size``/``test_size`` the
    numbers of points, ``step_budget``), the cost estimates, the resource class and the
    canonical spec: a join on the hyperparameters matches every trial's result."""
    rc = cost.resource_class(cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial)
    rows = [
        {
            "trial_id": s.trial_id, **hyperparameter_values(s), "n_params": cost.n_params(s),
            "est_flops": cost.estimate_flops(s),
            "est_memory_bytes": cost.estimate_memory(s), "resource_class": rc,
            "spec": s.canonical(),
        }
        for s in specs
    ]
    schema = pa.schema([
        ("trial_id", pa.string()), *HYPERPARAMETER_FIELDS,
        ("n_params", pa.int64()), ("est_flops", pa.float64()), ("est_memory_bytes", pa.int64()),
        ("resource_class", pa.string()), ("spec", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def grid_note(cfg: SweepConfig, specs: list[TrialSpec]) -> str | None:
    """A line for the log when ``trials`` is too small for ``plan.grid``: the grid's values
    that no planned trial has (the grid's combinations are taken in order, so a short plan
    covers the first values of its first keys only); None when every value has a trial."""
    if not cfg.plan.grid:
        return None

    def value(s: TrialSpec, key: str):
        return BY_NAME[key].get(s)

    cells = 1
    missing = []
    for key in cfg.plan.grid:
        wanted = [v for v in cfg.space.values(key) if v is not None]
        cells *= len(cfg.space.values(key))
        have = {value(s, key) for s in specs}
        lack = [v for v in wanted if v not in have]
        if lack:
            missing.append(f"{key}={', '.join(str(v) for v in lack)}")
    if not missing:
        return None
    size = space_size(cfg)
    full = min(cells, size)  # (combinations that give the same trial count once)
    more = "" if full >= size else " (or more)"
    return (f"note: plan.grid crosses {', '.join(cfg.plan.grid)} in {full} distinct "
            f"combinations, taken in order, and the {len(specs)} planned trials leave out "
            f"{'; '.join(missing)}; ask for trials={full}{more} to cross them in full")


def seed_note(cfg: SweepConfig, specs: list[TrialSpec]) -> str | None:
    """A line for the plan summary when the planned trials give their configurations (a
    trial's hyperparameters but ``seed``) unequal numbers of seeds, as a ``trials`` that is not
    the whole space does when ``seed`` is drawn (the robust sign-error and the seed means then
    rest on more replicates for some configurations than for others): the spread of counts and
    the ``trials`` of the whole space, every configuration with each of the seeds; when every
    other varied key is in ``plan.grid``, also ``seed`` last in ``plan.grid`` (each grid
    combination with all its seeds in turn) and a ``trials`` that is a multiple of the seeds.
    None with one seed, for ``plan.factors`` (pairs) or when the counts are equal."""
    from collections import Counter

    seeds = set(cfg.space.values("seed"))
    if len(seeds) < 2 or cfg.plan.factors or not specs:
        return None
    per_config = Counter()
    for s in specs:
        v = hyperparameter_values(s)
        del v["seed"]
        per_config[tuple(v.values())] += 1
    spread = Counter(per_config.values())
    if len(spread) == 1:
        return None
    n_seeds, full = len(seeds), space_size(cfg)
    have = ", ".join(f"{n} have {k}" for k, n in sorted(spread.items(), reverse=True))
    msg = (f"note: the {len(specs)} planned trials give their {len(per_config)} configurations "
           f"unequal numbers of seeds (of the {n_seeds} in space.seed: {have}); for every seed "
           f"of every configuration ask for trials={full} (the whole space)")

    def varied(k):  # a null of train_size / random_labels is the data set's own value
        default = _unset(cfg, k)
        return len({default if x is None else x for x in cfg.space.values(k)}) > 1

    if all(k in cfg.plan.grid for k in SPACE_KEYS if k != "seed" and varied(k)):
        grid = [k for k in cfg.plan.grid if k != "seed"] + ["seed"]
        m = max(1, min(len(specs), full) // n_seeds)
        msg += (f", or plan.grid=[{','.join(grid)}] with trials={m * n_seeds} ({m} "
                f"configurations, each with every seed)")
    return msg
