"""The sweep configuration as a validated, typed object.

Hydra composes ``conf/``; :func:`from_dictconfig` turns the result into a frozen
:class:`SweepConfig` or raises :class:`ConfigError` with one line naming the key, the bad value
and what is allowed. Nothing else in the code reads raw configuration dictionaries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, make_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

IDENTITY_VERSION = 2  # 1: sweeps created before measurement settings left the identity
# The keys that never change a sweep's trials (trained networks), declared once: left out of
# its identity, and the keys `sweep resume` / `sweep measure` may override (all but `out`).
NOT_IDENTITY = ("out", "save_weights", "cluster", "resources", "figure", "progress",
                "dataset.root", "dataset.download", "measures", "measure_modules", "metrics",
                "measure_settings",
                "train.checkpoint_every", "train.keep_checkpoints", "train.time_budget",
                "train.fallback_steps")
NOT_IDENTITY_V1 = tuple(k for k in NOT_IDENTITY if k != "metrics")  # version 1 hashed metrics
WEIGHTS_AUTO_BYTES = 2 * 1024**3  # save_weights: null saves them when the plan's total is below

# (torch-free: the commands that only read or check a configuration answer without it,
# tests/test_cli_imports.py; a module imported here must not import torch at module level)
from workers.data import DATASETS
from workers.names import ACTIVATION_NAMES, MINIBATCH_OPTIMIZERS, OPTIMIZERS
from workers.results import checks
from workers.results.hyperparameters import SPACE, SPACE_KEYS  # declared once; the planner's keys
from workers.measures import DEFAULT_MEASURES
from workers.results.layout import SWEEP_FILE
from workers.results.storage import expand

SAMPLERS = ("random", "qmc")
# Fig. 4: the binary factors of paired trials, and the two values each pair compares
INFEASIBLE = ("refuse", "replace", "keep")  # plan.infeasible
OPTIONAL_SPACE_KEYS = tuple(h.name for h in SPACE if h.optional)  # Space's keys that may be null
FACTORS = {
    "random_labels": (False, True),
    "augment": (False, True),
    "activation": ("relu", "hardsigmoid"),
    "optimizer": ("minibatch", "lbfgs"),  # the base's mini-batch optimizer vs full-batch L-BFGS
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line for the user."""


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    root: str | None
    download: bool
    train_size: int | None
    test_size: int | None
    random_labels: bool
    augment: bool
    seed: int


def _space_values(self, key: str) -> tuple:
    """The values of ``space.<key>``; (None,) for an optional key left null (every trial takes
    its fallback, e.g. dataset.train_size: ``sweep.plan._trial_spec``)."""
    v = getattr(self, key)
    return (None,) if v is None else v


# ``space``: one field per sampled hyperparameter (workers.results.hyperparameters), a tuple of
# its values; an optional one (train_size, random_labels: varied within one sweep as in
# Neyshabur et al.'s Fig. 1) is None when the data set's single value applies.
Space = make_dataclass(
    "Space", [(h.name, tuple | None if h.optional else tuple)
              for h in sorted(SPACE, key=lambda h: h.optional)],
    frozen=True, namespace={"values": _space_values, "__module__": __name__})


@dataclass(frozen=True)
class PlanConfig:
    sampler: str
    grid: tuple[str, ...]
    cheap_bias: float
    factors: tuple[str, ...]
    # trials whose estimated memory exceeds a worker's: refuse the plan, replace them by
    # feasible draws, or keep them (they fail as oom)
    infeasible: str


@dataclass(frozen=True)
class LbfgsConfig:
    lr: float
    max_iter: int
    history_size: int
    tolerance_grad: float
    tolerance_change: float


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    early_stop: bool
    check_every: int
    lr_decay_epochs: int
    lr_decay: float
    lbfgs: LbfgsConfig
    # workers.checkpoint (how a trial survives its worker's death; never its numbers)
    checkpoint_every: int | str | None
    keep_checkpoints: bool
    # the paper's rule for expensive trials (A.5.5; workers.train.TimeRule): not identity, the
    # record says when it applied (stopped_by_time)
    time_budget: float | str | None
    fallback_steps: int | None


@dataclass(frozen=True)
class MetricsConfig:
    # aliases of measure settings, kept so that older sweeps and commands read the same
    # (workers.results.measure_values.METRIC_ALIASES: jacobian_norm_{train,test}.points,
    # transitions_test.points and .k); at the measure's registered default an alias sets nothing
    jacobian_points: int | None
    transitions_points: int | None
    transitions_k: int
    # the off-data studies (workers.studies)
    ellipse_k: int
    boundary_grid: int
    boundary_extent: float


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None
    num_cpus: int | None
    fixed_nodes: bool | None = None  # None: not said (sweep.runtime.check_trials_fit)
    node_wait: float | str | None = "1h"  # how long trials may wait with no node to run one


@dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: float
    gpus_per_trial: float
    max_retries: int
    max_in_flight: int | None
    trials_per_task: int
    batch_below_flops: float
    # what a worker (node) holds, for the plan's feasibility; None: this machine's memory
    worker_memory_gb: float | None
    # sustained training throughput, for the plan's cost summary (FLOP/s per CPU core; per GPU)
    cpu_flops: float
    gpu_flops: float
    # wall-clock limit of one trial (and of one trial's `sweep measure` work): seconds, "90s",
    # "30min", "2h", or None for none (sweep.watch)
    trial_timeout: float | str | None


def _measure_settings_class():
    """``measure_settings``: per built-in measure with settings (and per group of
    ``workers.measures.SETTING_GROUPS``), one key per setting, None = its registered default.
    Built from the registry, so the schema and ``sweep show --keys`` list every setting."""
    from workers.measures import configurable_settings

    subs = []
    for name, defaults in configurable_settings().items():
        sub = make_dataclass(f"MeasureSettings_{name}",
                             [(k, Any, field(default=None)) for k in defaults], frozen=True)
        subs.append((name, sub, field(default_factory=sub)))
    return make_dataclass("MeasureSettings", subs, frozen=True)


MeasureSettings = _measure_settings_class()


@dataclass(frozen=True)
class SweepConfig:
    name: str
    trials: int
    seed: int
    out: str | None
    save_weights: bool | None  # None: save when the plan's weights total <= WEIGHTS_AUTO_BYTES
    dataset: DatasetConfig
    space: Space
    plan: PlanConfig
    train: TrainConfig
    metrics: MetricsConfig
    cluster: ClusterConfig
    resources: ResourcesConfig
    figure: bool
    progress: bool
    dry_run: bool  # trials write their record without training (plumbing checks, benchmarks)
    # the registered measures (workers.measures) every trial evaluates; not part of the identity
    measures: tuple[str, ...]
    measure_modules: tuple[str, ...]  # modules registering user measures (imported first)
    # the built-in measures' settings other than their defaults; not part of the identity
    measure_settings: MeasureSettings = field(default_factory=MeasureSettings)

    def identity(self, version: int = IDENTITY_VERSION) -> dict:
        """What defines the sweep's set of trials (trained networks): two configurations with
        the same identity plan the same trials. Paths, cluster, resources, display settings
        and, from version 2 on, the measurement settings (``metrics``, ``measures``) are not
        part of it. Version 1 is the identity of sweeps created before version 2 (it kept
        ``metrics``), so that they stay recognised."""
        d = asdict(self)
        if version < 2:  # version 1 hashed the measures' settings under their older names
            d["metrics"].update(self._v1_metrics())
        for key in NOT_IDENTITY if version >= 2 else NOT_IDENTITY_V1:
            section, _, name = key.rpartition(".")
            (d[section] if section else d).pop(name)
        for h in SPACE:  # as before these keys existed (the same identity): an optional key
            v = d["space"][h.name]  # left null, a hyperparameter at its identity default alone
            if (h.optional and v is None) or (h.has_default and v == (h.default,)):
                d["space"].pop(h.name)
        if d["plan"]["infeasible"] in ("refuse", "keep"):  # (the same trials, or refused)
            d["plan"].pop("infeasible")
        else:  # replace: which trials are drawn depends on the workers' memory
            d["plan"]["worker_memory_gb"] = self.resources.worker_memory_gb
        return d

    def _v1_metrics(self) -> dict:
        """The ``metrics.*`` aliases as version 1 hashed them: each the value its measure gets
        (the alias where it is not at the measure's default, else ``measure_settings``, else
        the alias as given), so a sweep created when the experiment set them as aliases keeps
        its version-1 identity now that it sets them in ``measure_settings``."""
        from workers.measures import expand_settings
        from workers.results.measure_values import METRIC_ALIASES

        given = _alias_settings(self.metrics)
        settings = expand_settings(json.loads(self.measure_overrides()))
        out = {}
        for alias, targets in METRIC_ALIASES.items():
            measure, key = targets[0]
            if (measure, key) not in given and key in settings.get(measure, {}):
                out[alias] = settings[measure][key]
        return out

    def identity_hash(self, version: int = IDENTITY_VERSION) -> str:
        text = json.dumps(self.identity(version), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def metric_spec(self):
        """The measurement settings every trial carries to its worker: per measure, the
        settings other than its defaults (``measure_settings`` with its groups expanded, and
        the ``metrics.*`` aliases not at their defaults), and the off-data studies."""
        from workers.measures import expand_settings
        from workers.results.spec import MetricSpec

        settings = expand_settings(json.loads(self.measure_overrides()))
        for (measure, key), value in _alias_settings(self.metrics).items():
            settings.setdefault(measure, {})[key] = value
        return MetricSpec(ellipse_k=self.metrics.ellipse_k,
                          boundary_grid=self.metrics.boundary_grid,
                          boundary_extent=self.metrics.boundary_extent,
                          measures=self.measures, measure_modules=self.measure_modules,
                          measure_overrides=json.dumps(settings, sort_keys=True,
                                                       separators=(",", ":")))

    def measure_overrides(self) -> str:
        """``measure_settings`` as canonical JSON {measure or group: {setting: value}}, the
        settings left at their defaults (None) out, ``points: all`` as null (every point)."""
        d = {name: {k: (None if v == "all" else v) for k, v in sub.items() if v is not None}
             for name, sub in asdict(self.measure_settings).items()}
        return json.dumps({k: v for k, v in d.items() if v}, sort_keys=True,
                          separators=(",", ":"))

    def out_dir(self) -> str:
        """The sweep directory: ``out`` (a local path, or a pyarrow filesystem URI: s3://, gs://,
        ...), else ``runs/<experiment>-<data set>-<hash>``; a directory of the same sweep under
        the name earlier versions gave it (``runs/<experiment>-<hash>``) is kept."""
        if self.out:
            return self.out
        h = self.identity_hash()
        legacy = Path("runs") / f"{self.name}-{h}"
        if (legacy / SWEEP_FILE).is_file():
            return str(legacy)
        return str(Path("runs") / f"{self.name}-{self.dataset.name}-{h}")

    @property
    def train_split_size(self) -> int:
        return self.dataset.train_size or DATASETS[self.dataset.name].train_size


# ---------------------------------------------------------------------------------------------
# Checking helpers: each raises ConfigError naming the key


def _config_error(check):
    """``check`` (workers.results.checks) raising ConfigError, with the same one-line message."""
    def checked(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    checked.__doc__ = check.__doc__
    return checked


def _address(v) -> str | None:
    """cluster.address: null, ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (a port 1-65535):
    its form only, so that `sweep plan` refuses what `sweep launch` would (whether a cluster
    answers there is asked when one is used: sweep.connect)."""
    import re

    if v is None:
        return None
    text = str(v).strip()
    m = re.fullmatch(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})", text)
    if text == "auto" or (m and 1 <= int(m.group(2)) <= 65535) or (
            text.startswith("ray://") and re.fullmatch(r"ray://[^\s:/]+", text)):
        return text  # (ray://HOST: the Ray Client's default port)
    raise ConfigError(f"cluster.address: {v!r} is not an address; allowed: null (a local Ray on "
                      "127.0.0.1), auto, HOST:PORT (the head's GCS port, e.g. 127.0.0.1:6379) "
                      "or ray://HOST:PORT")


def _fixed_nodes(v) -> bool | None:
    """cluster.fixed_nodes: true, false or null (not said)."""
    if v is not None and not isinstance(v, bool):
        raise ConfigError(f"cluster.fixed_nodes: expected true, false or null, got {v!r}")
    return v


_int = _config_error(checks.check_int)
_float = _config_error(checks.check_float)
_bool = _config_error(checks.check_bool)
_choice = _config_error(checks.check_choice)


def _list(key: str, v) -> list:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    if not items:
        raise ConfigError(f"{key}: needs at least one value")
    return items


def _section(d: dict, key: str) -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: expected a mapping, got {v!r}")
    return v


def space_limits(split: int) -> dict:
    """What the hyperparameters' validators (``Hyperparameter.check``) need from above the
    contract: ``split``, the data set's whole train split (the largest space.train_size), and
    the registered activation and optimizer names."""
    return {"split": split, "activation": ACTIVATION_NAMES, "optimizer": OPTIMIZERS}


def _space(d: dict, train_split: int, split: int) -> Space:
    """Every sampled hyperparameter's values, checked by its declaration
    (``workers.results.hyperparameters``: a list of distinct values, each valid; an optional
    key may be null), then the cross-key rule: a mini-batch optimizer's batch size at most the
    smallest train set. ``train_split``: the training points of dataset.train_size (what a
    null in space.train_size means); ``split``: the whole split (the largest
    space.train_size)."""
    limits = space_limits(split)
    out = {}
    for h in SPACE:
        key = f"space.{h.name}"
        if h.optional and d.get(h.name) is None:
            out[h.name] = None
            continue
        try:
            vals = tuple(h.check(key, x, limits) for x in _list(key, d.get(h.name)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{key}: repeated values in {list(vals)}")
        out[h.name] = vals
    sizes = out["train_size"]
    smallest = min(train_split if n is None else n for n in sizes) if sizes else train_split
    if any(o in MINIBATCH_OPTIMIZERS for o in out["optimizer"]):
        for b in out["batch_size"]:
            if b > smallest:
                raise ConfigError(
                    f"space.batch_size: {b} is larger than the train set ({smallest} points); "
                    f"allowed: 1..{smallest}"
                )
    return Space(**out)


def _checkpoint_every(v):
    from workers.checkpoint import parse_interval

    try:
        parse_interval(v)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    iv = parse_interval(v)
    if not iv.on:
        return None
    return iv.steps if iv.steps else v  # (steps as an int; minutes as written: "10min")


def _time_budget(v, key: str = "train.time_budget"):
    from workers.checkpoint import parse_budget

    try:
        parse_budget(v, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return v


def _ellipse_k(v) -> int:
    k = _int("metrics.ellipse_k", v, lo=0)
    if k == 1:
        raise ConfigError("metrics.ellipse_k: 1; allowed: 0 (off) or an integer >= 2 (points on "
                          "each ellipse)")
    return k


def _modules(v) -> tuple[str, ...]:
    import os

    from workers.measures import load_modules

    paths = (expand(m) for m in _list("measure_modules", v or [None]) if m is not None)
    mods = tuple(os.path.abspath(m) if m.endswith(".py") or os.sep in m else m for m in paths)
    try:
        load_modules(mods)
    except (ImportError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return mods


def _setting(key: str, v, measure: str, setting: str):
    """One value of a measure's setting, checked by the rule the measure registers
    (``workers.measures.setting_rule``); ``points`` may be ``all`` (kept as written)."""
    from workers.measures import setting_rule

    kind, lowest = setting_rule(measure, setting)
    if kind == "points" and v == "all":
        return v
    if kind in ("points", "int"):
        return _int(key, v, lo=lowest)
    return _float(key, v, lo=0.0 if lowest is None else lowest, positive=lowest is None)


def _metric_aliases(m: dict) -> dict:
    """``metrics.jacobian_points``, ``.transitions_points``, ``.transitions_k``
    (``METRIC_ALIASES``), each checked by the rule of the setting it names; null (or ``all``)
    as a number of points: every point."""
    from workers.results.measure_values import METRIC_ALIASES

    out = {}
    for alias, targets in METRIC_ALIASES.items():
        v = m.get(alias)
        if targets[0][1] == "points" and v in (None, "all"):
            out[alias] = None
        else:
            out[alias] = _setting(f"metrics.{alias}", v, *targets[0])
    return out


def aliases_given_win(d: dict, overrides) -> dict:
    """``d`` (a composed or stored configuration) with the measure settings that a
    ``metrics.*`` alias given in ``overrides`` names taken out of ``measure_settings`` unless
    ``overrides`` set them too: an alias on the command line overrides what the experiment's
    YAML (or a stored sweep.json) says, as any override does; the same setting given both
    ways on the command line stays a conflict (``_measure_settings``). (The other way round,
    a stored alias under a setting given by its own name: ``settings_from_aliases``.) Returns
    ``d``."""
    from workers.results.measure_values import METRIC_ALIASES
    from workers.measures import SETTING_GROUPS

    given = {override_key(o)[1] for o in overrides if "=" in o}
    settings = d.get("measure_settings") or {}
    group_of = {m: g for g, members in SETTING_GROUPS.items() for m in members}
    for alias, targets in METRIC_ALIASES.items():
        if f"metrics.{alias}" not in given:
            continue
        for measure, k in targets:
            for where in (measure, group_of.get(measure)):
                if (where in settings and isinstance(settings[where], dict)
                        and f"measure_settings.{where}.{k}" not in given):
                    settings[where].pop(k, None)
    return d


def settings_from_aliases(d: dict) -> dict:
    """``d`` (a stored configuration, changed in place) with each ``metrics.*`` alias that is
    not at its measures' default moved into ``measure_settings``: under the group its
    measures form (``jacobian_points`` -> ``jacobian_norm``), else under each measure, where
    ``measure_settings`` does not set it already; the alias back at the default. The measures
    get the same settings as before (``SweepConfig.metric_spec``; identities unchanged), and
    a setting given on the command line by its own name then merges over the stored ones key
    by key (``measure_settings.jacobian_norm_test.points=100`` leaves the train split's
    stored value, ``measure_settings.transitions_test={k: 5}`` the stored points) instead of
    meeting its alias ("set twice"). Returns ``d``."""
    from workers.measures import REGISTRY, SETTING_GROUPS
    from workers.results.measure_values import METRIC_ALIASES

    metrics = d.get("metrics")
    if not isinstance(metrics, dict):
        return d
    if not isinstance(d.get("measure_settings"), dict):
        d["measure_settings"] = {}
    settings = d["measure_settings"]
    for alias, targets in METRIC_ALIASES.items():
        if alias not in metrics:
            continue
        v = metrics[alias]
        k = targets[0][1]
        default = REGISTRY[targets[0][0]].settings[k]
        if k == "points" and v in (None, "all"):
            v = "all" if default is not None else None
        if v is None or not any(v != REGISTRY[m].settings[key] for m, key in targets):
            continue
        members = {m for m, _ in targets}
        group = next((g for g, ms in SETTING_GROUPS.items() if set(ms) == members), None)
        for where in ([group] if group and len(members) > 1 else [m for m, _ in targets]):
            if not isinstance(settings.get(where), dict):
                settings[where] = {}
            settings[where].setdefault(k, v)
        metrics[alias] = default
    return d


def _alias_settings(metrics) -> dict[tuple[str, str], Any]:
    """{(measure, setting): value} the ``metrics.*`` aliases set: those not at the default
    their measures register (at it, an alias sets nothing)."""
    from workers.measures import REGISTRY
    from workers.results.measure_values import METRIC_ALIASES

    out = {}
    for alias, targets in METRIC_ALIASES.items():
        v = metrics[alias] if isinstance(metrics, dict) else getattr(metrics, alias)
        if any(v != REGISTRY[m].settings[k] for m, k in targets):
            out.update({(m, k): v for m, k in targets})
    return out


def _measure_settings(v, metrics: dict | None = None) -> MeasureSettings:
    """``measure_settings`` checked against the registry: known measures (or groups) and
    settings only, each value by the rule its measure registers (``workers.measures.register``:
    ``points`` an integer >= 1 or ``all``, other integers >= 1, numbers finite and > 0, unless
    the measure declares another lower bound); a setting also set by its ``metrics.*`` alias
    (``metrics``: the checked aliases, ``_metric_aliases``) is refused; and every measure as it
    will run (its defaults, the aliases, its group's settings, its own) by the measure's rule
    across its settings (``register(check=...)``)."""
    import dataclasses

    from workers.measures import REGISTRY, SETTING_GROUPS, configurable_settings, expand_settings
    from workers.results.measure_values import METRIC_ALIASES

    known = configurable_settings()
    v = {} if v is None else v
    if not isinstance(v, dict):
        raise ConfigError(f"measure_settings: expected a mapping of measure -> settings, got {v!r}")
    classes = {f.name: f.type for f in dataclasses.fields(MeasureSettings)}
    out = {}
    for name, sub in v.items():
        if name not in known:
            raise ConfigError(f"measure_settings.{name}: not a measure with settings; allowed: "
                              f"{', '.join(known)}")
        sub = {} if sub is None else sub
        if not isinstance(sub, dict):
            raise ConfigError(f"measure_settings.{name}: expected a mapping of setting -> value, "
                              f"got {sub!r}")
        vals = {}
        for k, val in sub.items():
            key = f"measure_settings.{name}.{k}"
            if k not in known[name]:
                raise ConfigError(f"{key}: unknown setting; allowed: {', '.join(known[name])}")
            vals[k] = None if val is None else _setting(key, val, name, k)
        out[name] = vals
    given = {n: {k: x for k, x in vals.items() if x is not None} for n, vals in out.items()}
    aliases = _alias_settings(metrics) if metrics is not None else {}
    group_of = {m: g for g, members in SETTING_GROUPS.items() for m in members}
    for (measure, k), value in aliases.items():
        for where in (measure, group_of.get(measure)):
            if k in given.get(where, {}):
                alias = next(a for a, t in METRIC_ALIASES.items() if (measure, k) in t)
                raise ConfigError(
                    f"measure_settings.{where}.{k}: {given[where][k]}, and its alias "
                    f"metrics.{alias} is {json.dumps(value)}: one setting, set twice; allowed: "
                    f"one of them (metrics.{alias}={json.dumps(REGISTRY[measure].settings[k])},"
                    " its default, leaves it to measure_settings)")
    # each measure as it will run: its defaults, the aliases, its group's settings, its own entry
    runs = expand_settings(given)
    for measure, k in aliases:
        runs.setdefault(measure, {})
    for name, st in runs.items():
        check = REGISTRY[name].check
        if check is None:
            continue
        merged = {**REGISTRY[name].settings,
                  **{k: x for (m, k), x in aliases.items() if m == name}, **st}
        where = "measure_settings." + (name if given.get(name) else group_of.get(name, name))
        try:
            check(merged)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return MeasureSettings(**{name: classes[name](**vals) for name, vals in out.items()})


def _measures(v, modules: tuple[str, ...] = ()) -> tuple[str, ...]:
    from workers.measures import REGISTRY, available, reserved_names

    names = tuple(str(x) for x in _list("measures", v))
    if "all" in names:  # the built-in measures and those of the sweep's measure_modules
        names = tuple(dict.fromkeys([n for x in names
                                     for n in (available(modules) if x == "all" else [x])]))
    # one short line: the closest names, and where the whole list is (not the list itself)
    allowed = "allowed: all or a measure that sweep show --keys lists (yours: measure_modules)"
    reserved = sorted(set(names) & reserved_names())
    if reserved:
        raise ConfigError(f"measures: {reserved[:3]} reserved (a column of the results has that "
                          f"name); {allowed}")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        import difflib

        close = list(dict.fromkeys(c for n in unknown for c in difflib.get_close_matches(
            n, ["all", *REGISTRY], n=2, cutoff=0.6)))[:2]
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        hint = f"closest: {', '.join(close)}" if close else "no close name"
        raise ConfigError(f"measures: unknown {unknown[:3]}{more} ({hint}); {allowed}")
    twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if twice:
        raise ConfigError(f"measures: {twice[:3]} named twice; allowed: each measure once")
    return names


# What a key absent from a stored configuration meant when that sweep was launched, where it
# is not today's default (conf/config.yaml): before ``measures`` existed, trials measured the
# record's three (today's default: all).
ABSENT_MEANT = {"measures": list(DEFAULT_MEASURES)}


def _lacks_keys(d: dict) -> bool:
    """Whether ``d`` lacks a key of the schema (sections' own keys only: a section left out
    counts as lacking)."""
    for key in schema_keys():
        node = d
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return True
            node = node[part]
    return False


@lru_cache(maxsize=8)
def _defaults_json(dataset: str | None) -> str:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    overrides = ["~experiment"] + ([f"dataset={dataset}"] if dataset in available("dataset")
                                   else [])
    register_schema()
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=overrides)
    d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return json.dumps({k: v for k, v in d.items() if v != "???"})  # (name, trials: experiment's)


def defaults(dataset: str | None = None) -> dict:
    """The composed defaults, the one place they are declared: ``conf/config.yaml`` with the
    data set's group file (``conf/dataset/<dataset>.yaml``, else the root's default) and no
    experiment; ``name`` and ``trials``, which an experiment sets, left out."""
    return json.loads(_defaults_json(dataset))


def completed(stored: dict) -> dict:
    """A stored configuration (``sweep.json``) merged over the composed defaults
    (:func:`defaults` of its data set): a key it lacks, because it was written before the key
    existed, takes today's default, or what its absence meant then (``ABSENT_MEANT``). Plain
    data: no string of ``stored`` is interpreted (``merged``). ``stored`` is not changed."""
    base = defaults((stored.get("dataset") or {}).get("name"))
    base.update({k: v for k, v in ABSENT_MEANT.items() if k not in stored})
    return merged(base, stored)


def from_dict(d: dict[str, Any]) -> SweepConfig:
    """Validate a plain (resolved) configuration mapping into a :class:`SweepConfig`. A mapping
    that lacks keys (a stored ``sweep.json`` written before they existed) is first completed
    over the composed defaults (:func:`completed`)."""
    if _lacks_keys(d):
        d = completed(d)
    ds = _section(d, "dataset")
    name = _choice("dataset.name", ds.get("name"), tuple(DATASETS))
    info = DATASETS[name]
    dataset = DatasetConfig(
        name=name,
        root=None if ds.get("root") is None else expand(ds["root"]),  # ~ as a shell reads it
        download=_bool("dataset.download", ds.get("download")),
        train_size=_int("dataset.train_size", ds.get("train_size"), 1, info.train_size, True),
        test_size=_int("dataset.test_size", ds.get("test_size"), 1, info.test_size, True),
        random_labels=_bool("dataset.random_labels", ds.get("random_labels")),
        augment=_bool("dataset.augment", ds.get("augment")),
        seed=_int("dataset.seed", ds.get("seed"), lo=0),
    )
    train_split = dataset.train_size or info.train_size
    space = _space(_section(d, "space"), train_split, info.train_size)
    if dataset.augment and "lbfgs" in space.optimizer:
        raise ConfigError(
            "dataset.augment: true cannot be combined with optimizer lbfgs in space.optimizer "
            "(a full-batch line search needs a fixed objective); allowed optimizers with "
            f"augmentation: {', '.join(MINIBATCH_OPTIMIZERS)}"
        )
    p = _section(d, "plan")
    grid = tuple(_choice("plan.grid", k, SPACE_KEYS) for k in _list("plan.grid", p.get("grid") or [None])
                 if k is not None)
    factors = tuple(_choice("plan.factors", k, tuple(FACTORS))
                    for k in _list("plan.factors", p.get("factors") or [None]) if k is not None)
    if factors and not any(o in MINIBATCH_OPTIMIZERS for o in space.optimizer):
        raise ConfigError("plan.factors: paired trials need a mini-batch optimizer in "
                          f"space.optimizer; allowed: {', '.join(MINIBATCH_OPTIMIZERS)}")
    if factors and space.random_labels is not None:
        raise ConfigError("plan.factors: space.random_labels must be unset (the pairs set the "
                          "labels per trial)")
    if factors and (dataset.random_labels or dataset.augment):
        raise ConfigError("plan.factors: dataset.random_labels and dataset.augment must be false "
                          "(the pairs set them per trial)")
    if p.get("infeasible") == "replace" and _section(d, "resources").get("worker_memory_gb") is None:
        raise ConfigError("plan.infeasible: replace needs resources.worker_memory_gb (which "
                          "trials are drawn depends on it, so it must be stated, not read from "
                          "this machine); allowed: resources.worker_memory_gb=<GB per worker>")
    plan = PlanConfig(sampler=_choice("plan.sampler", p.get("sampler"), SAMPLERS), grid=grid,
                      cheap_bias=_float("plan.cheap_bias", p.get("cheap_bias"), lo=0.0),
                      factors=factors,
                      infeasible=_choice("plan.infeasible", p.get("infeasible"),
                                         INFEASIBLE))
    t = _section(d, "train")
    lb = _section(t, "lbfgs")
    train = TrainConfig(
        steps=_int("train.steps", t.get("steps"), lo=1),
        early_stop=_bool("train.early_stop", t.get("early_stop")),
        check_every=_int("train.check_every", t.get("check_every"), lo=1),
        lr_decay_epochs=_int("train.lr_decay_epochs", t.get("lr_decay_epochs"), lo=1),
        lr_decay=_float("train.lr_decay", t.get("lr_decay"), positive=True, hi=1.0),
        lbfgs=LbfgsConfig(
            lr=_float("train.lbfgs.lr", lb.get("lr"), positive=True),
            max_iter=_int("train.lbfgs.max_iter", lb.get("max_iter"), lo=1),
            history_size=_int("train.lbfgs.history_size", lb.get("history_size"), lo=1),
            tolerance_grad=_float("train.lbfgs.tolerance_grad", lb.get("tolerance_grad"), lo=0.0),
            tolerance_change=_float("train.lbfgs.tolerance_change", lb.get("tolerance_change"), lo=0.0),
        ),
        checkpoint_every=_checkpoint_every(t.get("checkpoint_every")),
        keep_checkpoints=_bool("train.keep_checkpoints", t.get("keep_checkpoints")),
        time_budget=_time_budget(t.get("time_budget")),
        fallback_steps=_int("train.fallback_steps", t.get("fallback_steps"), lo=1,
                            allow_none=True),
    )
    m = _section(d, "metrics")
    c = _section(d, "cluster")
    r = _section(d, "resources")
    address = c.get("address")
    return SweepConfig(
        name=str(d.get("name")),
        trials=_int("trials", d.get("trials"), lo=1),
        seed=_int("seed", d.get("seed"), lo=0, hi=2**32 - 1),  # (the samplers' numpy seed)
        out=None if d.get("out") is None else expand(d["out"]),  # ~ as a shell reads it
        save_weights=(None if d.get("save_weights") is None
                      else _bool("save_weights", d.get("save_weights"))),
        measure_modules=(modules := _modules(d.get("measure_modules"))),
        measures=_measures(d.get("measures"), modules),
        measure_settings=_measure_settings(d.get("measure_settings"),
                                           aliases := _metric_aliases(m)),
        dataset=dataset,
        space=space,
        plan=plan,
        train=train,
        metrics=MetricsConfig(
            **aliases,
            ellipse_k=_ellipse_k(m.get("ellipse_k")),
            boundary_grid=_int("metrics.boundary_grid", m.get("boundary_grid"), lo=0),
            boundary_extent=_float("metrics.boundary_extent", m.get("boundary_extent"),
                                   positive=True),
        ),
        cluster=ClusterConfig(
            address=_address(address),
            num_cpus=_int("cluster.num_cpus", c.get("num_cpus"), lo=1, allow_none=True),
            fixed_nodes=_fixed_nodes(c.get("fixed_nodes")),
            # (a sweep stored before the key existed: its default)
            node_wait=_time_budget(c.get("node_wait", "1h"), "cluster.node_wait"),
        ),
        resources=ResourcesConfig(
            cpus_per_trial=_float("resources.cpus_per_trial", r.get("cpus_per_trial"), positive=True),
            gpus_per_trial=_float("resources.gpus_per_trial", r.get("gpus_per_trial"), lo=0.0),
            max_retries=_int("resources.max_retries", r.get("max_retries"), lo=0),
            max_in_flight=_int("resources.max_in_flight", r.get("max_in_flight"), lo=1, allow_none=True),
            trials_per_task=_int("resources.trials_per_task", r.get("trials_per_task"), lo=1),
            batch_below_flops=_float("resources.batch_below_flops",
                                     r.get("batch_below_flops"), lo=0.0),
            worker_memory_gb=None if r.get("worker_memory_gb") is None else _float(
                "resources.worker_memory_gb", r.get("worker_memory_gb"), positive=True),
            cpu_flops=_float("resources.cpu_flops", r.get("cpu_flops"), positive=True),
            gpu_flops=_float("resources.gpu_flops", r.get("gpu_flops"), positive=True),
            trial_timeout=_time_budget(r.get("trial_timeout"), "resources.trial_timeout"),
        ),
        figure=_bool("figure", d.get("figure")),
        progress=_bool("progress", d.get("progress")),
        dry_run=_bool("dry_run", d.get("dry_run")),
    )


# ---------------------------------------------------------------------------------------------
# Hydra: the schema (structured config) derived from the dataclasses above, struct mode

SCHEMA_NAME = "sweep_schema"
# Choices of config groups, not keys of the configuration
GROUPS = ("dataset", "experiment")


def _fields(cls):
    """(field name, nested dataclass or None) of a config dataclass."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        yield f.name, (t if dataclasses.is_dataclass(t) else None)


def _schema_class(cls, name: str):
    """A mutable twin of the frozen dataclass ``cls`` for OmegaConf: the same field names, every
    leaf typed Any (the values are checked by :func:`from_dict`, which also accepts a scalar
    where a list is meant), nested dataclasses as nested schemas."""
    import dataclasses
    import typing

    fields = []
    for fname, sub in _fields(cls):
        if sub is not None:
            twin = _schema_class(sub, f"{name}_{fname}")
            fields.append((fname, twin, dataclasses.field(default_factory=twin)))
        else:
            fields.append((fname, typing.Any, dataclasses.field(default=None)))
    return dataclasses.make_dataclass(name, fields)


@lru_cache(maxsize=1)
def _schema():
    return _schema_class(SweepConfig, "SweepSchema")


def resumable_keys_text() -> str:
    """The keys `sweep resume` and `sweep measure` may override (``NOT_IDENTITY`` but ``out``),
    a group's as "group.*", comma-separated: for their help and refusals."""
    keys = schema_keys()
    return ", ".join(k + ".*" if any(x.startswith(k + ".") for x in keys) else k
                     for k in NOT_IDENTITY if k != "out")


@lru_cache(maxsize=1)
def schema_keys() -> tuple[str, ...]:
    """Every key of the configuration, dotted (``train.lbfgs.lr``), from the dataclasses."""
    def walk(cls, prefix):
        for fname, sub in _fields(cls):
            yield f"{prefix}{fname}"
            if sub is not None:
                yield from walk(sub, f"{prefix}{fname}.")

    return tuple(walk(SweepConfig, ""))


def unknown_key_message(key: str) -> str:
    """One line: ``key`` is not in the schema, and the closest valid keys."""
    import difflib

    keys = list(dict.fromkeys(schema_keys() + GROUPS))
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not close:  # e.g. a misspelled section: suggest keys of the best matching section
        head = key.split(".")[0]
        sec = difflib.get_close_matches(head, [k for k in keys if "." not in k], n=1, cutoff=0.5)
        close = [k for k in keys if sec and k.startswith(sec[0] + ".")][:3] or sec
    hint = f"; closest valid keys: {', '.join(close)}" if close else ""
    return f"{key}: unknown key{hint} (every key, its default and allowed values: sweep show --keys)"


def override_key(override: str) -> tuple[str, str]:
    """(prefix, key) of a command-line override: prefix one of "", "+", "++", "~"."""
    key = override.partition("=")[0].strip()
    for p in ("++", "+", "~"):
        if key.startswith(p):
            return p, key[len(p):]
    return "", key


def check_override_keys(overrides) -> None:
    """ConfigError naming the first override whose key is not in the schema (nor a config
    group: ``GROUPS``), with the closest valid keys; before Hydra composes anything (its own
    struct-mode error would name the key but not the alternatives)."""
    keys = set(schema_keys())
    for o in overrides:
        _, key = override_key(o)
        if key.startswith("hydra.") or key in GROUPS:  # (a group: the caller says whether it
            continue  # may be given; resume and measure refuse it as a key they cannot change)
        if not key:
            raise ConfigError(f"{o!r}: no key before '='; allowed: KEY=VALUE (every key, its "
                              "default and allowed values: sweep show --keys)")
        if key not in keys:
            raise ConfigError(unknown_key_message(key))


def register_schema() -> None:
    """Register the schema in Hydra's ConfigStore (``conf/config.yaml`` lists it first in its
    defaults), so that composing in struct mode refuses any key outside it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=_schema())


def conf_dir() -> Path:
    import conf

    return Path(conf.__file__).parent


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def compose(overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Compose ``conf/`` over the schema with command-line style overrides (struct mode: an
    unknown key, plain or with +, ++ or ~, is a ConfigError naming it and the closest valid
    keys) and validate the result."""
    return from_dict(composed(overrides))


def composed(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The composed configuration as a plain dict (what ``sweep show`` prints), checked against
    the schema but not yet validated (``from_dict`` does that). Raises ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for o in overrides:  # a group choice that does not exist gets the allowed values
        prefix, key = override_key(o)
        value = o.partition("=")[2]
        if key in GROUPS and prefix != "~" and value not in available(key):
            raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(available(key))}")
    check_override_keys(overrides)
    register_schema()
    try:
        with initialize_config_dir(str(conf_dir()), version_base=None):
            cfg = hydra_compose("config", overrides=list(overrides))
        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(_override_hint(first, overrides)) from None
    check_schema(d)
    return aliases_given_win(d, overrides)


def _unparsable(overrides) -> str | None:
    """The first override Hydra's grammar rejects, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except Exception:
            return o
    return None


def _override_hint(first: str, overrides=()) -> str:
    """Hydra's first line about an override, with how to write what was probably meant."""
    import re

    m = re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", first)
    if m:
        key, value = m.groups()
        return (f"{key}: ambiguous value {value!r}; a list is written in brackets, and quoted "
                f"for the shell: '{key}=[{value}]'")
    bad = _unparsable(overrides)
    if bad is not None:
        key, _, value = bad.partition("=")
        return (f"{key}: cannot parse {value!r} ({first}); write a list as '{key}=[a,b]', a "
                f"string with special characters in quotes: '{key}=\"...\"', and quote the "
                "whole override for the shell")
    return f"configuration: {first}"


def check_schema(d: dict) -> None:
    """OmegaConf's check of a resolved configuration against the schema (struct mode): a key
    that Hydra let in (``+``/``++`` add keys even over a structured config) or that a config
    file or stored sweep carries is a ConfigError naming it and the closest valid keys."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    def keys_only(v):  # the schema's leaves take any value: check keys, interpret no string
        return {k: keys_only(x) for k, x in v.items()} if isinstance(v, dict) else None

    try:
        OmegaConf.merge(OmegaConf.structured(_schema()), keys_only(d))
    except ConfigKeyError as e:
        raise ConfigError(unknown_key_message(str(e.full_key))) from None
    except ValidationError as e:  # a single value where the schema has a section of keys
        raise ConfigError(f"{e.full_key}: is a section of keys, not one value; allowed: "
                          f"{e.full_key}.KEY=VALUE (every key: sweep show --keys)") from None


def override_tree(overrides) -> dict:
    """KEY=VALUE ``overrides`` as a nested plain dict, parsed with Hydra's override grammar (as
    on ``sweep launch``; ``+``/``++`` prefixes ignored) and their ``${...}`` resolved on their
    own: resolvers such as ``${oc.env:VAR}`` work, other keys are not in scope, a literal
    ``${`` is written ``\\${``. What ``sweep resume`` / ``sweep measure`` apply to a stored
    configuration, which itself is plain data and never interpolated again.
    Raises ConfigError naming the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    tree = OmegaConf.create({})
    for o in overrides:
        try:
            ov = parser.parse_overrides([o])[0]
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(_override_hint(first, [o])) from None
        key, value = ov.key_or_group, o.partition("=")[2]
        if ov.is_sweep_override():
            raise ConfigError(f"{key}: ambiguous value {value!r}; a list is written in brackets, "
                              f"and quoted for the shell: '{key}=[{value}]'")
        try:
            OmegaConf.update(tree, key, ov.value(), merge=True)
            OmegaConf.to_container(tree, resolve=True)
        except OmegaConfBaseException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{key}: cannot resolve {value!r} ({first}); an override of a "
                              "stored sweep may use resolvers such as ${oc.env:VAR} but not "
                              "other keys; a literal ${ is written \\${") from None
    return OmegaConf.to_container(tree, resolve=True)


def merged(base: dict, over: dict) -> dict:
    """``base`` with ``over`` applied (both plain dicts): mappings merged key by key, any other
    value (lists too) replaced, as OmegaConf.merge does, but without interpreting any string
    of ``base`` (a stored ``${`` stays a literal). Neither argument is changed."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  else v)
    return out
