"""``sweep report SWEEP_DIR``: the paper's figures and the statistics table of a sweep, as one
self-contained HTML file (figures embedded) with the PNG/SVG figures and the statistics as CSV
and Parquet beside it, in ``SWEEP_DIR/report/`` (or ``out``).

Only the trials that fit their training set enter the figures and statistics
(:func:`analysis.filters.fits_training_set`, threshold ``train_acc``); the report says how many
trials that leaves. Each figure is drawn when the sweep holds its data: Fig. 1, 5 and the
statistics from any sweep; App. Fig. 8 with transitions; Fig. 4 with ``plan.factors``; Fig. 6
with per-point Jacobian norms; Fig. 2/3 with ellipse profiles / boundary maps.

- ``build``: ``make_report`` (load, draw, compute, decide, render, write);
- ``decide``: what the report says, as data (``Report``: counts, caveats, configuration,
  measures and ranking);
- ``render``: the HTML of a ``Report``.
"""

from analysis.report.build import _load_sweep_modules, make_report
from analysis.report.decide import (
    BASELINES, CAPTION_MEASURES, LOWER_THRESHOLDS, PER_POINT_TRIALS, Report, decide,
    pairs_fitting, per_point_trials, value_counts,
)
from analysis.report.render import (
    CAPTIONS, RANKING_FIGURES, STUDY_CAPTIONS, config_html, data_caption, filter_note, render,
    settings_html, strength, unfit_note,
)
from workers.results.layout import REPORT_DIR

_pairs_fitting = pairs_fitting
_per_point_trials = per_point_trials

__all__ = ["make_report", "REPORT_DIR", "BASELINES", "CAPTIONS", "STUDY_CAPTIONS",
           "CAPTION_MEASURES", "LOWER_THRESHOLDS", "PER_POINT_TRIALS", "RANKING_FIGURES",
           "Report", "decide", "render", "config_html", "data_caption", "filter_note",
           "settings_html", "strength", "unfit_note", "value_counts"]
