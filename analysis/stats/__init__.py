"""Statistics that judge a sensitivity measure against the generalization gap.

Input: a results table such as ``analysis.load.load_results`` gives (one row per trial), already
filtered by the caller (status ok, 100% train accuracy). Per measure, rows whose measure or
target is NaN are dropped; +-inf are values (larger / smaller than every finite one). No
statistic turns a NaN into a number: what is undefined is NaN.

One module per algorithm:

- ``registry``: every statistic declared once (name, function, direction, support,
  description, source); ``STATISTICS`` and ``LARGER_IS_BETTER`` derive from it;
- ``configs``: the hyperparameter columns, the trial rows of a measure, their seed means per
  configuration and the pairs of configurations that differ in one hyperparameter;
- ``correlations``: ``pearson``, ``spearman``, ``kendall`` (tau-b) over trial rows (scipy);
- ``granulated``: ``granulated_kendall`` (Jiang et al. 2019, Eq. 2-3, Psi);
- ``cmi``: ``conditional_mutual_information`` (Jiang et al. 2019; PGDL scoring, Jiang et al.
  2020), counted exactly over all ordered pairs of configurations;
- ``sign_errors``: ``sign_error`` and the robust sign-error (Dziugaite et al. 2020), with the
  paper's optional Monte-Carlo noise filter;
- ``bootstrap``: ``bootstrap_ci``, percentile intervals from resampling whole seeds;
- ``evaluate``: one evaluation of every statistic of the measures that share their rows;
- ``table``: ``statistics_table`` (all of the above in long form, in processes for a large
  table), ``ranking_table``, ``write_table`` (CSV + Parquet).
- ``equivalent``: ``equivalent_measures`` (measures that rank the trials identically, one a
  monotone function of another on the data) and ``merge_equivalent`` (one ranking row each).

Every name of these modules imports from ``analysis.stats`` as well (loaded on first use, so
that reading the registry loads no statistic).
"""

from __future__ import annotations

import importlib

_NAMES = {
    "registry": ("REGISTRY", "STATISTICS", "LARGER_IS_BETTER", "RANK_BY", "SUPPORTS", "OVER",
                 "Statistic", "check_statistic", "values_in_order", "supports_in_order"),
    "configs": ("HYPERPARAMETERS", "NOT_HYPERPARAMETERS", "measure_sign", "measure_columns",
                "hyperparameter_columns", "_Prepared", "_Configs", "_check_columns",
                "_row_keys", "_numeric", "_prepare", "_configs", "_one_factor_pairs", "_sgn",
                "_kernels", "_dense_rank"),
    "correlations": ("pearson", "spearman", "kendall", "_xy", "_scipy"),
    "granulated": ("GranulatedKendall", "granulated_kendall", "_granulated"),
    "sign_errors": ("SignError", "sign_error", "hoeffding_weight", "MIN_ESS", "_run_pairs",
                    "_RunPairs", "_sign_error"),
    "cmi": ("ConditionalMI", "conditional_mutual_information", "_SetClasses", "_pair_counts",
            "_xlogx", "_normalized_cmi", "_cmi"),
    "bootstrap": ("BootstrapCI", "bootstrap_ci", "_seed_codes", "_bootstrap_indices",
                  "_percentiles", "_as_values"),
    "evaluate": ("_Shared", "_JobRows", "_replicate_statistics", "_with_mu", "_all_statistics",
                 "_each_statistics"),
    "table": ("PARALLEL_ABOVE", "FIXED_COST_TRIALS", "usable_cores", "usable_memory",
              "PROCESS_BYTES", "PROCESS_TRIAL_BYTES", "PROCESS_TRIAL_MEASURE_BYTES",
              "MEMORY_SHARE", "process_bytes", "process_count", "TABLE_COLUMNS", "FEW_SEEDS",
              "statistics_table", "ranking_table", "write_table", "_worker_start",
              "_evaluations", "_same_rows", "_group_label", "_n_seeds", "_ranks"),
    "equivalent": ("rank_key", "equivalent_measures", "merge_equivalent"),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}
__all__ = [name for name in _WHERE if not name.startswith("_")]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
