"""The measure registry: every measure of a trained network, declared once.

A measure is a function of a trained model (and, if it says so, the initial weights, the
training inputs and labels, the test inputs) returning one number; it is declared with its
name, its source (paper and section or equation), what it needs and a version (bump it when the
value it computes changes; values of an older version are then "outdated" and ``sweep
measure`` computes them again). Its settings are its function's keyword-only parameters with
their defaults; the rules the configuration checks them by (lower bounds, a rule across
settings, a group that sets several measures at once) are declared with it. The paper's
measures are registered like any other (``builtin``). Sweeps run the measures named in the
configuration's ``measures`` list in every trial, and ``sweep measure`` evaluates them later on
the saved weights of a finished sweep, without training anything again.

The science is importable without Ray or Hydra::

    from workers.measures import REGISTRY, evaluate, register

    @register("weight_l2", source="Neyshabur et al. 2017, Sec. 2.1 (l2 norm)", needs=("model",))
    def weight_l2(inputs):
        return float(sum((p.detach().double() ** 2).sum() for p in inputs.model.parameters()) ** 0.5)

    values = evaluate(model, ["jacobian_norm_test", "weight_l2"], x_train=x, y_train=y, x_test=xt)
    values.reasons  # {name: why} for the measures without a value (NaN), also warned once

Inputs are [N, d] as the model takes them (float32, on the model's device); ``image_shape`` =
(C, H, W) for measures that need images (the translation loops of ``transitions_test``).

Importing the registry does not import torch: the built-in modules import it inside the
functions that compute, so the commands that only read or check a configuration (``sweep
show``, the configuration's checks of ``measures`` and ``measure_settings``) answer without it
(tests/test_cli_imports.py). A user's module (``measure_modules``) may import it at its top: it
is loaded only for the sweeps that name it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

# (the plain-data pieces live with the contract; re-exported: ``from workers.measures import
# Outcome`` works)
from workers.results.measure_values import Outcome, raised, settings_key  # noqa: F401

NEEDS = ("model", "init_model", "train_inputs", "train_labels", "test_inputs", "test_labels",
         "image_shape")


@dataclass(frozen=True)
class MeasureInputs:
    """What a measure function receives. Tensors are [N, d] float32 (labels [N] int64) on the
    model's device; None where the caller did not give them (a measure that needs them is not
    called then: its outcome is an error naming what is missing)."""

    model: Any
    x_train: Any = None
    y_train: Any = None
    x_test: Any = None
    y_test: Any = None
    init_model: Any = None
    image_shape: tuple[int, int, int] | None = None
    seed: int = 0  # seeds the point subsets (the trial's data seed: the same points across trials)
    # the trial's own seed (its spec's seed): with ``seed``, seeds the Monte-Carlo draws
    # (``draw_seed``), so two trials differing in their seed draw independently
    trial_seed: int | None = None
    # what several measures share within one evaluation (weights, margins, norms), by key
    cache: dict = field(default_factory=dict, compare=False, repr=False)


def draw_seed(inputs: "MeasureInputs", tag: int) -> int:
    """The seed of a measure's Monte-Carlo draws: from the trial (its data seed and its own
    seed) and a tag that tells the measure's draws apart; a non-negative int below 2^62."""
    text = f"{inputs.seed}:{inputs.trial_seed}:{tag}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 2


class Undefined(ValueError):
    """Raised by a measure that has no value for this network (e.g. it divides by a margin
    <= 0): recorded as a null value with the message as its reason."""


@dataclass(frozen=True)
class MeasureValue:
    """A measure's value with its per-point values (split -> {point index: value}, indices
    into the given inputs) and facts about how it was computed (``info``, JSON-able)."""

    value: float
    points: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    """A registered measure (``register``): its settings are ``{setting: default}``, read from
    the function's signature; ``lower`` the inclusive lower bound of a setting where it is not
    the default rule (an integer >= 1, a number > 0, ``points`` an integer >= 1 or all);
    ``check`` the rule across its settings (ValueError naming them); ``group`` the name under
    which ``measure_settings`` sets it with others; ``record`` the trial record's columns that
    say how its value was computed: {column: key of its ``info``}."""

    name: str
    fn: Callable[..., Any]
    source: str
    needs: tuple[str, ...]
    settings: Mapping[str, Any]
    version: int
    doc: str = ""
    sign: int = 1  # +1: larger is expected to mean a larger generalization gap; -1: a smaller
    lower: Mapping[str, float] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    group: str | None = None
    record: Mapping[str, str] = field(default_factory=dict)


REGISTRY: dict[str, Measure] = {}
# the built-in measures whose values the trial's record keeps in columns of their own name
RECORD_MEASURES = ("jacobian_norm_train", "jacobian_norm_test", "transitions_test")


def reserved_names() -> frozenset[str]:
    """Names no measure may take: every column of a trial's record (``workers.results.record``:
    the trial's outcome, hyperparameters and bookkeeping, its per-point records) and of the
    measures table (``workers.results.measure_table``), other than the built-in measures the
    record keeps (``RECORD_MEASURES``), and ``all`` (the configuration's word for every
    measure). A measure of such a name would replace that column in ``analysis.load_results``."""
    from workers.results.measure_table import MEASURE_SCHEMA
    from workers.results.record import POINT_TYPE, SUMMARY_COLUMNS

    names = (set(SUMMARY_COLUMNS) | {f.name for f in POINT_TYPE} | set(MEASURE_SCHEMA.names)
             | {"all", "sign"})
    return frozenset(names - set(RECORD_MEASURES))


_NEED_OF = {"model": "model", "init_model": "init_model", "train_inputs": "x_train",
            "train_labels": "y_train", "test_inputs": "x_test", "test_labels": "y_test",
            "image_shape": "image_shape"}


def _signature_settings(name: str, fn: Callable, given: Mapping[str, Any] | None) -> dict:
    """{setting: default}: ``fn``'s keyword-only parameters (``fn(inputs, *, points=100)``),
    each with its default. ``given`` (``register``'s ``settings=``, an explicit list of
    them) must agree: it names every keyword-only parameter with its default, and otherwise
    only parameters of ``fn`` (or any, if ``fn`` takes ``**settings``). ValueError otherwise,
    for a keyword-only parameter without a default, or (without ``given``) for a parameter
    with a default that is not keyword-only (it would be no setting: ``fn(inputs,
    points=200)`` stored its values as if it had none, and kept them when the default
    changed)."""
    import inspect

    params = list(inspect.signature(fn).parameters.values())[1:]
    kwonly = {}
    for p in params:
        if p.kind is p.KEYWORD_ONLY:
            if p.default is p.empty:
                raise ValueError(f"measure {name!r}: setting {p.name!r} has no default; "
                                 "allowed: fn(inputs, *, setting=default, ...)")
            kwonly[p.name] = p.default
    if given is None:
        plain = [p.name for p in params
                 if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty]
        if plain:  # (not a setting: its values would be stored as if it had none, and kept
            # when its default changes)
            raise ValueError(f"measure {name!r}: parameter {plain[0]!r} has a default but is "
                             "not keyword-only, so it would not be a setting; allowed: "
                             f"fn(inputs, *, {plain[0]}=default, ...)")
        return kwonly
    given, named = dict(given), {p.name: p for p in params}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    wrong = [k for k, v in given.items()
             if (k not in named and not var_kw)
             or (k in named and named[k].default is not named[k].empty
                 and named[k].default != v)]
    if wrong or set(kwonly) - set(given):
        raise ValueError(f"measure {name!r}: settings {given} disagree with its function's "
                         f"parameters; allowed: leave settings out and declare each as a "
                         "keyword-only parameter with its default, fn(inputs, *, setting=default)")
    return given


def register(name: str, *, source: str, needs: Iterable[str] = ("model",),
             settings: Mapping[str, Any] | None = None, version: int = 1,
             replace: bool = False, sign: int = 1, lower: Mapping[str, float] | None = None,
             check: Callable[[Mapping[str, Any]], None] | None = None,
             group: str | None = None, record: Mapping[str, str] | None = None) -> Callable:
    """Decorator: declare ``fn(inputs: MeasureInputs, *, setting=default, ...) -> float |
    MeasureValue`` as measure ``name``. Its settings are its parameters after ``inputs``, with
    their defaults (JSON values; ``settings``, if given, must agree). ``needs`` from NEEDS;
    ``version`` an integer >= 1; ``sign`` the direction the measure is expected to predict the
    generalization gap in: +1 (the default, a complexity measure: larger means a larger gap)
    or -1 (e.g. a margin: larger means a smaller gap); the statistics are computed on sign *
    value and say so (``analysis.stats.statistics_table``). The configuration's rules for its
    settings (``measure_settings``): ``lower`` {setting: inclusive lower bound} where it is not
    the default rule (see ``Measure``), ``check(settings)`` raising ValueError(one line) for
    settings that do not go together, ``group`` a name that sets every measure of the group.
    Raises ValueError for a bad declaration or a name already registered by another function
    (unless ``replace``; the same definition run again, as a notebook cell, replaces its
    earlier self)."""
    needs = tuple(needs)
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"measure {name!r}: needs {bad}; allowed: {', '.join(NEEDS)}")
    if not name.isidentifier():
        raise ValueError(f"measure name {name!r}: allowed: a Python identifier (it becomes a "
                         "column name)")
    if name in reserved_names():
        raise ValueError(f"measure name {name!r} is reserved: a column of the results or the "
                         "measures table already has that name (it would replace it); allowed: "
                         f"any other identifier, e.g. {name}_measure")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"measure {name!r}: version {version!r}; allowed: an integer >= 1")
    if sign not in (1, -1):
        raise ValueError(f"measure {name!r}: sign {sign!r}; allowed: 1 or -1")
    if check is not None and not callable(check):
        raise ValueError(f"measure {name!r}: check {check!r}; allowed: a function of the "
                         "settings")

    def deco(fn):
        st = _signature_settings(name, fn, settings)
        json.dumps(st)  # JSON-able, or TypeError now rather than when stored
        from workers.results.record import SUMMARY_COLUMNS

        columns = sorted(set(record or {}) - set(SUMMARY_COLUMNS))
        if columns:
            raise ValueError(f"measure {name!r}: record columns {columns}, not columns of a "
                             "trial's record (workers.results.record.SUMMARY_COLUMNS)")
        unknown = sorted(set(lower or {}) - set(st))
        if unknown:
            raise ValueError(f"measure {name!r}: lower bounds of {unknown}, not settings of it; "
                             f"allowed: {', '.join(st) or 'none'}")
        old = REGISTRY.get(name)
        same = old is not None and (getattr(old.fn, "__module__", None),
                                    getattr(old.fn, "__qualname__", None)) == (
            getattr(fn, "__module__", None), getattr(fn, "__qualname__", None))
        if old is not None and not (replace or same):  # (same: a notebook cell run again)
            raise ValueError(f"measure {name!r} is already registered; pass replace=True to "
                             "redefine it (and bump its version if its values change)")
        REGISTRY[name] = Measure(name, fn, source, needs, st, version,
                                 (fn.__doc__ or "").strip(), sign, dict(lower or {}), check,
                                 group, dict(record or {}))
        return fn

    return deco


def check_names(names: Sequence[str]) -> None:
    """ValueError naming the unknown measures and the registered ones."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"measures: unknown {unknown}; registered: {', '.join(REGISTRY)}")


def resolved_settings(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The measure's settings: its defaults updated by ``overrides`` (unknown keys refused)."""
    m = REGISTRY[name]
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k not in m.settings]
    if bad:
        raise ValueError(f"measure {name!r}: settings {bad}; allowed: "
                         f"{', '.join(m.settings) or 'none'}")
    return {**m.settings, **overrides}


def evaluate_outcomes(inputs: MeasureInputs, names: Sequence[str],
                      settings: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Outcome]:
    """Every measure in ``names`` on ``inputs``; a measure that raises (or lacks an input it
    needs) gives an Outcome with ``value`` None and its ``error``, and the others still run.
    ``settings``: per measure, or per group of ``SETTING_GROUPS`` (applied to each member, a
    member's own entry over it: ``expand_settings``), the settings that override defaults."""
    from workers.phase import set_phase

    check_names(names)
    if settings and any(g in SETTING_GROUPS for g in settings):  # (a group read as a name
        settings = expand_settings(settings)  # would set nothing, silently)
    out = {}
    for name in names:
        set_phase(f"measuring {name}")  # (for a trial's wall-clock limit: workers.phase)
        m = REGISTRY[name]
        st = resolved_settings(name, (settings or {}).get(name))
        t0 = time.perf_counter()
        missing = [n for n in m.needs if getattr(inputs, _NEED_OF[n]) is None]
        if missing:
            out[name] = Outcome(name, None, m.version, st, 0.0,
                                f"needs {', '.join(missing)}, which were not given")
            continue
        try:
            r = m.fn(inputs, **st)
            if not isinstance(r, MeasureValue):
                r = MeasureValue(float(r))
            value = float(r.value)
            if not math.isfinite(value):  # NaN or +-inf: no value, and say so
                out[name] = Outcome(name, None, m.version, st, time.perf_counter() - t0,
                                    f"undefined: the measure returned {value} (not finite)",
                                    r.points, r.info)
                continue
            out[name] = Outcome(name, value, m.version, st, time.perf_counter() - t0,
                                None, r.points, r.info)
        except Undefined as e:  # no value for this network: null, with the reason
            out[name] = Outcome(name, None, m.version, st, time.perf_counter() - t0,
                                f"undefined: {e}")
        except Exception as e:  # the measure's own error: recorded, the trial goes on
            tb = traceback.format_exc(limit=-2)
            out[name] = Outcome(name, None, m.version, st, time.perf_counter() - t0,
                                f"{type(e).__name__}: {e}\n{tb}"[:4000])
    return out


class UndefinedMeasures(UserWarning):
    """Warned once by ``evaluate`` when measures have no value: it lists them with their
    reasons (also in the returned ``Values.reasons``)."""


class Values(dict):
    """What ``evaluate`` returns: a dict name -> value (float; NaN for a measure without a
    value), and ``reasons``: name -> why, for each measure without a value (undefined for this
    network, an input it needs not given, or the measure's own error)."""

    def __init__(self, values: Mapping[str, float], reasons: Mapping[str, str]):
        super().__init__(values)
        self.reasons = dict(reasons)


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[:limit - 3] + "..."


def evaluate(model, names: Sequence[str], *, x_train=None, y_train=None, x_test=None,
             y_test=None, init_model=None, image_shape=None, seed: int = 0,
             trial_seed: int | None = None,
             settings: Mapping[str, Mapping[str, Any]] | None = None) -> Values:
    """The measures ``names`` of ``model``: a ``Values``, the dict name -> value (NaN where the
    measure has no value) whose ``reasons`` say why for each such measure; one
    ``UndefinedMeasures`` warning lists them (``evaluate_outcomes`` gives every Outcome).
    Inputs [N, d] as the model takes them; ``init_model`` the network at initialization (the
    distance-to-initialization measures), ``image_shape`` (C, H, W) (``transitions_test``);
    ``seed`` seeds the measures' point subsets and, with ``trial_seed``, their Monte-Carlo
    draws; ``settings`` per measure (or group: ``evaluate_outcomes``) override its defaults.
    Raises ValueError for an unknown measure or setting."""
    import warnings

    inputs = MeasureInputs(model, x_train, y_train, x_test, y_test, init_model, image_shape,
                           seed, trial_seed)
    outcomes = evaluate_outcomes(inputs, names, settings)
    reasons = {n: o.error or "no value" for n, o in outcomes.items() if o.value is None}
    if reasons:  # one line per reason, naming the measures that have it
        by_reason: dict[str, list[str]] = {}
        for n, r in reasons.items():
            by_reason.setdefault(_first_line(r), []).append(n)
        listed = "\n".join(f"  {', '.join(ns)}: {r}" for r, ns in by_reason.items())
        warnings.warn(f"{len(reasons)} of {len(outcomes)} measures have no value (NaN; the "
                      f"result's .reasons has each one's):\n{listed}",
                      UndefinedMeasures, stacklevel=2)
    return Values({n: (float("nan") if o.value is None else o.value)
                   for n, o in outcomes.items()}, reasons)


_LOADED: dict[str, object] = {}
_PROVIDED: dict[str, tuple[str, ...]] = {}  # measure module -> the measures it registers


def available(modules: Sequence[str] = ()) -> list[str]:
    """What ``measures: [all]`` means for a sweep with these ``measure_modules`` (loaded with
    ``load_modules``): the built-in measures and those the modules register, in registration
    order. A measure registered otherwise in this process (a notebook cell, another sweep's
    module) is not included: the sweep's workers could not evaluate it."""
    own = {n for m in modules for n in _PROVIDED.get(m, ())}
    return [n for n, m in REGISTRY.items()
            if n in own or str(getattr(m.fn, "__module__", "")).startswith("workers.measures")]


def load_modules(modules: Sequence[str]) -> None:
    """Import the modules that register a user's measures: importable module names
    (``my_lab.measures``) or paths to ``.py`` files (``/shared/lab/measures.py``, which every
    worker must see at that path). Each is imported once per process. Raises ValueError naming
    a module that cannot be imported."""
    import importlib
    import importlib.util
    import os

    for m in modules:
        if m in _LOADED:
            continue
        before = set(REGISTRY)
        try:
            if m.endswith(".py") or os.sep in m:
                spec = importlib.util.spec_from_file_location(
                    "sensitivity_sweep_user_" + hashlib.sha256(m.encode()).hexdigest()[:8], m)
                if spec is None or not os.path.isfile(m):
                    raise FileNotFoundError(m)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            else:
                mod = importlib.import_module(m)
        except ValueError as e:  # (a measure declared wrongly in it): say which module
            raise ValueError(f"measure_modules: {m}: {e}") from None
        except Exception as e:  # an ImportError: on a worker, an environment failure (retryable)
            raise ImportError(f"measure_modules: cannot import {m!r} ({type(e).__name__}: {e});"
                              " allowed: an importable module name or the path of a .py file "
                              "that registers measures (on every worker)") from None
        _LOADED[m] = mod
        _PROVIDED[m] = tuple(n for n, meas in REGISTRY.items() if n not in before
                             or getattr(meas.fn, "__module__", None) == mod.__name__)


from workers.measures import builtin, norms, pacbayes, sharpness  # noqa: E402,F401  (the built-in measures)

# What a configuration without a ``measures`` key evaluates: the paper's measures, as every sweep
# did before the registry existed (sweep.json files of those sweeps lack the key). A new sweep's
# default is ``measures: [all]`` (conf/config.yaml).
DEFAULT_MEASURES = RECORD_MEASURES

# ``measure_settings.<group>.*`` sets every measure registered with that ``group`` at once (the
# six PAC-Bayes measures: they share their two sigma' searches only when their settings agree)
SETTING_GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(n for n, m in REGISTRY.items() if m.group == g)
    for g in dict.fromkeys(m.group for m in REGISTRY.values() if m.group is not None)}


def configurable_settings() -> dict[str, dict[str, Any]]:
    """{name: its default settings} of the built-in measures with settings, with the groups of
    ``SETTING_GROUPS`` (the settings of their first member): what the configuration's
    ``measure_settings`` may set and ``sweep show --keys`` lists as
    ``measure_settings.<name>.<setting>``."""
    out = {g: dict(REGISTRY[members[0]].settings) for g, members in SETTING_GROUPS.items()}
    for name in available():
        if REGISTRY[name].settings:
            out[name] = dict(REGISTRY[name].settings)
    return out


def setting_rule(name: str, key: str) -> tuple[str, float | None]:
    """How the configuration reads setting ``key`` of measure (or group) ``name``: ("points",
    lowest) an integer >= lowest or ``all``, ("int", lowest) an integer >= lowest, or
    ("number", lowest) a finite number >= lowest (None: > 0). From the measure's declaration
    (``register(lower=...)``) and its default's type."""
    m = REGISTRY[SETTING_GROUPS[name][0] if name in SETTING_GROUPS else name]
    default, lowest = m.settings[key], m.lower.get(key)
    if key == "points":
        return "points", 1 if lowest is None else lowest
    if isinstance(default, int) and not isinstance(default, bool):
        return "int", 1 if lowest is None else lowest
    return "number", lowest


def expand_settings(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-measure settings from ``measure_settings``-style overrides: a group's settings apply
    to each of its members, a member's own entry over them."""
    out: dict[str, dict[str, Any]] = {}
    for name, st in overrides.items():
        for member in SETTING_GROUPS.get(name, ()):
            out.setdefault(member, {}).update(st)
    for name, st in overrides.items():
        if name not in SETTING_GROUPS:
            out.setdefault(name, {}).update(st)
    return out
