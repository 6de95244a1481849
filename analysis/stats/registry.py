"""The statistics that judge a measure against the gap, each declared once.

A ``Statistic`` says what the statistic is called, which function computes it, whether larger
or smaller is better, what it rests on (its ``support``: the table's ``n_used``), what it is
computed over, a one-line description and the paper and equation it computes. ``REGISTRY``
holds them in the order of the statistics table. Everything that lists the statistics derives
from it: ``STATISTICS`` and ``LARGER_IS_BETTER``, the table's rows per measure (values and
supports come from the evaluations keyed by name and by support, never lined up by position:
``values_in_order``, ``supports_in_order``), the report's list and prose, and
``sweep report --rank-by``'s help and check.

This module imports no statistic's code (``Statistic.function`` loads it on first use), so the
command line can read the declarations without loading scipy or the compiled kernels.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# What a statistic rests on (``support``) -> how the report says it (the table's ``n_used``)
SUPPORTS = {
    "trials": "trials",
    "groups": "groups where one hyperparameter varies",
    "pairs": "ordered pairs",
    "environments": "environments",
}
# What a statistic is computed over (``over``), in the order the report describes them
OVER = ("trials", "configurations averaged over seeds", "pairs of runs")


@dataclass(frozen=True)
class Statistic:
    """One statistic of ``sign * measure`` against the target.

    ``function``: ``"module:name"`` in ``analysis.stats``; ``takes`` "xy" for a function of two
    arrays (``f(x, y)``, over trial rows) or "table" for one of the results table
    (``f(df, measure, target, hyperparameters=..., **options)``); ``field``: the attribute of the
    function's result that holds the statistic (None: the result is the number).
    ``larger_is_better``: the rank order (True: larger agrees more with the gap).
    ``support``: a key of ``SUPPORTS``; ``over``: one of ``OVER``. ``description``: one line
    of plain text; ``source``: the paper and equation it computes. ``summary``: one of the
    statistics the report's ranking shows (Pearson's and Spearman's are left to the full table:
    Kendall's tau-b speaks there for the correlations over trial rows). ``chance``: its value
    for a measure unrelated to the target (0 for a correlation, 0.5 for a sign-error), the
    reference line of the report's ranking figure."""

    name: str
    function_name: str
    takes: str
    field: str | None
    larger_is_better: bool
    support: str
    over: str
    description: str
    source: str
    summary: bool = True
    chance: float = 0.0

    def __post_init__(self):
        if self.support not in SUPPORTS:
            raise ValueError(f"{self.name}: support {self.support!r}; allowed: "
                             f"{', '.join(SUPPORTS)}")
        if self.over not in OVER:
            raise ValueError(f"{self.name}: over {self.over!r}; allowed: {', '.join(OVER)}")
        if self.takes not in ("xy", "table"):
            raise ValueError(f"{self.name}: takes {self.takes!r}; allowed: xy or table")

    @property
    def better(self) -> str:
        """"larger" or "smaller": the statistics table's ``better`` column."""
        return "larger" if self.larger_is_better else "smaller"

    @property
    def function(self) -> Callable:
        """The function that computes it (imported on first use)."""
        module, name = self.function_name.split(":")
        return getattr(importlib.import_module(f"analysis.stats.{module}"), name)

    def compute(self, df, measure: str, target: str = "gen_gap",
                hyperparameters: Sequence[str] | None = None, **options) -> float:
        """The statistic of ``df[measure]`` (as it is: no sign applied, no interval) against
        ``df[target]``, through its own function; ``options`` go to a table function (``k``,
        ``noise_filter``). The number ``statistics_table`` gives for a measure of sign +1."""
        if self.takes == "xy":
            out = self.function(df[measure], df[target])
        else:
            out = self.function(df, measure, target, hyperparameters=hyperparameters, **options)
        return float(out if self.field is None else getattr(out, self.field))


REGISTRY: dict[str, Statistic] = {s.name: s for s in (
    Statistic(
        "pearson", "correlations:pearson", "xy", None, True, "trials", "trials",
        "Pearson's r over trial rows (scipy.stats.pearsonr)",
        "Novak et al. 2018 §4.3 (the measure against the gap across trials)", summary=False),
    Statistic(
        "spearman", "correlations:spearman", "xy", None, True, "trials", "trials",
        "Spearman's rho over trial rows (scipy.stats.spearmanr)",
        "Novak et al. 2018 §4.3 (the measure against the gap across trials)", summary=False),
    Statistic(
        "kendall", "correlations:kendall", "xy", None, True, "trials", "trials",
        "Kendall's tau-b over trial rows (scipy.stats.kendalltau)",
        "Novak et al. 2018 §4.3 (the measure against the gap across trials)"),
    Statistic(
        "granulated_kendall", "granulated:granulated_kendall", "table", "value", True,
        "groups", "configurations averaged over seeds",
        "Psi: within each group of configurations that differ in one hyperparameter, tau = the "
        "mean over ordered pairs of sign(\u0394\u03bc) sign(\u0394g), a tie counting 0; averaged "
        "over groups, then over hyperparameters",
        "Jiang et al. 2019, Fantastic generalization measures and where to find them, Eq. 2-3"),
    Statistic(
        "conditional_mi", "cmi:conditional_mutual_information", "table", "value", True,
        "pairs", "configurations averaged over seeds",
        "normalized conditional mutual information of the two orders of a pair of "
        "configurations, counted over all ordered pairs, minimum over pairs of hyperparameters "
        "conditioned on; blind to the direction of the relation (nearly: the pairs (i, i) "
        "count too); a plug-in estimate, larger on fewer distinct configurations, so on a "
        "resample (which holds fewer) it tends to rise: its interval can lie above its value",
        "Jiang et al. 2019 (conditional-independence criterion); the PGDL scoring, Jiang et al. "
        "2020"),
    Statistic(
        "sign_error", "sign_errors:sign_error", "table", "value", False, "environments",
        "pairs of runs",
        "per environment (two configurations that differ in one hyperparameter) the mean over "
        "every seed of one against every seed of the other of (1 - sign(\u0394\u03bc) "
        "sign(\u0394g))/2; the mean over environments; 0 is perfect, 0.5 chance",
        "Dziugaite et al. 2020, In search of robust measures of generalization (sign-error)",
        chance=0.5),
    Statistic(
        "robust_sign_error", "sign_errors:sign_error", "table", "robust", False,
        "environments", "pairs of runs",
        "the worst environment's sign-error (max over environments)",
        "Dziugaite et al. 2020, In search of robust measures of generalization (robust "
        "sign-error)", chance=0.5),
)}

STATISTICS = tuple(REGISTRY)
LARGER_IS_BETTER = {name: s.larger_is_better for name, s in REGISTRY.items()}
RANK_BY = "granulated_kendall"  # the statistic the report ranks the measures by, by default


def check_statistic(name: str, what: str = "statistic") -> str:
    """``name`` if it is a registered statistic; else ValueError naming ``what`` (the option)
    and the allowed values."""
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(str(name), STATISTICS, n=2, cutoff=0.6)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise ValueError(f"{what}: {name!r}{hint}; allowed: {', '.join(STATISTICS)}")
    return name


def values_in_order(values: Mapping[str, float]) -> np.ndarray:
    """(len(STATISTICS),) float: ``values`` (statistic name -> value) in registry order;
    KeyError for a statistic an evaluation did not compute."""
    return np.array([values[name] for name in STATISTICS])


def supports_in_order(counts: Mapping[str, int]) -> list[int]:
    """Per statistic, in registry order, the count of what it rests on: ``counts`` maps a
    ``SUPPORTS`` key (trials, groups, pairs, environments) to its count."""
    return [counts[s.support] for s in REGISTRY.values()]
