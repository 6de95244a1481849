"""Checks of the arguments users pass to ``analysis``'s public functions from a notebook: one
ValueError line naming the argument and what is allowed, before any work."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PYARROW_OPERATORS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in")


def frame(df, key: str = "df") -> None:
    """ValueError unless ``df`` is a pandas DataFrame (a results table, ``load_results``)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{key}: a {type(df).__name__}; allowed: a pandas DataFrame "
                         "(analysis.load_results)")


def names(value, key: str) -> list[str] | None:
    """``value`` as a list of names: None stays None; one string is one name (as pandas takes a
    column; a string was split into its characters before); an iterable of strings (a list, a
    tuple, a pandas Series or Index) as a list. ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
        raise ValueError(f"{key}: {value!r}; allowed: a name or a list of names")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{key}: {bad[0]!r} is not a name; allowed: a name or a list of names")
    return out


def dnf_filters(filters, key: str = "filters") -> None:
    """ValueError unless ``filters`` is a pyarrow DNF list: (column, operator, value) triples,
    or a list of such lists (OR of ANDs), operators in PYARROW_OPERATORS."""
    if isinstance(filters, (str, bytes)) or not isinstance(filters, (list, tuple)):
        raise ValueError(f"{key}: {filters!r}; allowed: a list of (column, operator, value) "
                         "triples such as [('width', '>=', 64)], a list of such lists (OR), "
                         "or a pyarrow.compute Expression")
    terms = ([t for conj in filters for t in conj]
             if filters and isinstance(filters[0], list) else filters)
    for t in terms:
        if not isinstance(t, (list, tuple)) or len(t) != 3 or not isinstance(t[0], str):
            raise ValueError(f"{key}: {t!r} is not a (column, operator, value) triple; "
                             "allowed: e.g. ('width', '>=', 64)")
        if t[1] not in PYARROW_OPERATORS:
            raise ValueError(f"{key}: operator {t[1]!r} in {tuple(t)!r}; allowed: "
                             + ", ".join(repr(o) for o in PYARROW_OPERATORS))


def processes(value, key: str = "processes") -> None:
    """ValueError unless ``value`` is None (one per usable CPU) or an integer >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{key}: {value!r}; allowed: an integer >= 1, or None (one per usable "
                         "CPU)")


def seed(value, key: str = "seed") -> None:
    """ValueError unless ``value`` is an integer >= 0 (numpy's generators' seeds)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{key}: {value!r}; allowed: an integer >= 0")
