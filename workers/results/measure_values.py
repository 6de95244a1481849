"""What the contract knows of a measure's value, as plain data: the outcome of one evaluation,
the key its settings are stored under, whether a stored error is worth retrying, and the
configuration keys of older releases that name measure settings (``METRIC_ALIASES``).

``workers.measures`` (the registry, which computes values) re-exports ``Outcome``, ``raised``
and ``settings_key``; the measures table (``workers.results.measure_table``) and the trial
spec (``workers.results.spec``) read them from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

# The trial spec's measurement fields (``MetricSpec``; the configuration's ``metrics.*``) that
# set settings of registered measures: field -> ((measure, setting), ...). Kept so that plans,
# stored configurations and commands of older releases read the same; at the default its
# measures register (``MetricSpec``'s field default) an alias sets nothing.
METRIC_ALIASES: dict[str, tuple[tuple[str, str], ...]] = {
    "jacobian_points": (("jacobian_norm_train", "points"), ("jacobian_norm_test", "points")),
    "transitions_points": (("transitions_test", "points"),),
    "transitions_k": (("transitions_test", "k"),),
}


@dataclass(frozen=True)
class Outcome:
    """One evaluation: ``value`` (None if it raised or was skipped), per-point values (split ->
    {point index: value}), info (JSON-able), the settings and version it ran with, ``seconds``
    and ``error`` (the reason, if any)."""

    name: str
    value: float | None
    version: int
    settings: Mapping[str, Any]
    seconds: float
    error: str | None = None
    points: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)


def raised(error: str | None) -> bool:
    """Whether a stored error says the measure raised (a bug or an environment problem: worth
    evaluating again once fixed), as opposed to 'undefined' (no value for this network)."""
    return bool(error) and not error.startswith("undefined")


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of settings (canonical JSON), naming their stored value."""
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]
