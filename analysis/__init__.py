"""Loading sweep results into pandas and drawing the paper's figures."""

from analysis.load import (
    load_curves, load_grids, load_measures, load_pairs, load_points, load_results,
    load_sharpness_curves, measure_files, result_files,
)

__all__ = ["load_results", "load_measures", "load_points", "load_pairs", "load_curves",
           "load_grids", "load_sharpness_curves", "measure_files", "result_files"]
