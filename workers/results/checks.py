"""Checks of one configured value, each with a one-line message naming the key, the bad value and
what is allowed.

The primitives (:func:`check_int`, :func:`check_float`, :func:`check_bool`,
:func:`check_choice`) raise ``ValueError``; ``sweep.config`` turns it into its ``ConfigError``.
The validators (:func:`integer`, :func:`number`, :func:`boolean`, :func:`one_of`) are what a
hyperparameter's declaration carries (``workers.results.hyperparameters``): a function
``(key, value, limits) -> value`` where ``limits`` holds what the layer above knows and the
contract does not (``split``: the data set's whole train split; ``activation``,
``optimizer``: the registered names).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

Check = Callable[[str, Any, Mapping[str, Any]], Any]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_bounds(key: str, v, lo, hi, fmt: str = "") -> None:
    """ValueError unless lo <= v <= hi (a None bound: none); ``fmt``: how ``v`` is shown."""
    if lo is not None and v < lo:
        raise ValueError(f"{key}: must be >= {lo}, got {v:{fmt}}")
    if hi is not None and v > hi:
        raise ValueError(f"{key}: must be <= {hi}, got {v:{fmt}}")


INT64_MAX = 2**63 - 1  # every integer setting is stored as int64 (the plan, the records)


def check_int(key: str, v, lo: int | None = None, hi: int | None = None,
              allow_none=False) -> int | None:
    """An integer in [lo, hi] (a float with an integer value counts), or None if allowed;
    ``hi`` None: at most INT64_MAX."""
    if v is None and allow_none:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v):
        where = (f" in [{lo}, {hi}]" if lo is not None and hi is not None else
                 f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise ValueError(f"{key}: expected an integer, got {v!r}; allowed: an integer{where}")
    if hi is None and v > INT64_MAX:
        raise ValueError(f"{key}: {v} does not fit in 64 bits; allowed: an integer"
                         + (f" in [{lo}, {INT64_MAX}]" if lo is not None else f" <= {INT64_MAX}"))
    _check_bounds(key, v, lo, hi)
    return v


def check_float(key: str, v, positive=False, lo=None, hi=None) -> float:
    """A finite number (as a float), > 0 if ``positive``, in [lo, hi]."""
    if not (isinstance(v, (int, float)) and not isinstance(v, bool)):
        raise ValueError(f"{key}: expected a number, got {v!r}")
    try:
        v = float(v)
    except OverflowError:  # (an integer beyond float64's range: 10**400)
        raise ValueError(f"{key}: must be finite, got an integer of {len(str(abs(v)))} "
                         "digits") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{key}: must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{key}: must be > 0, got {v:g}")
    _check_bounds(key, v, lo, hi, "g")
    return v


def check_bool(key: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{key}: expected true or false, got {v!r}")
    return v


def check_choice(key: str, v, allowed) -> str:
    if v not in allowed:
        raise ValueError(f"{key}: unknown value {v!r}; allowed: {', '.join(allowed)}")
    return v


def integer(lo: int | None = None, hi: str | None = None, allow_none=False,
            cap: int | None = None) -> Check:
    """An integer >= lo and, with ``hi`` (a name in ``limits``), <= that limit; with ``cap``,
    <= that number."""
    def check(key, v, limits):
        top = None if hi is None else limits[hi]
        if cap is not None:
            top = cap if top is None else min(top, cap)
        return check_int(key, v, lo, top, allow_none)

    return check


def number(positive=False, lo: float | None = None) -> Check:
    """A finite number, > 0 if ``positive``, >= lo."""
    return lambda key, v, limits: check_float(key, v, positive=positive, lo=lo)


def boolean() -> Check:
    return lambda key, v, limits: check_bool(key, v)


def one_of(limit: str) -> Check:
    """One of ``limits[limit]`` (names registered above the contract: activations, optimizers)."""
    return lambda key, v, limits: check_choice(key, v, tuple(limits[limit]))
