"""Loading sweep results into pandas and drawing the paper's figures.

The loaders (``analysis.load``) import on first use, so that importing a submodule (the
statistics' registry for ``sweep --help``, say) does not load pandas and pyarrow."""

import importlib

__all__ = ["load_results", "load_measures", "load_points", "load_pairs", "load_curves",
           "load_grids", "load_sharpness_curves", "measure_files", "result_files"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("analysis.load"), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
