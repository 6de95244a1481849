"""``make_report``: load a sweep, draw its figures, compute its statistics, decide what the
report says (``analysis.report.decide``), render it (``analysis.report.render``) and write the
page with the figures and tables beside it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis import figures, neyshabur
from analysis.figures import at_least
from analysis.ranking_figure import ranking_figure
from analysis.selection import model_selection
from analysis.filters import DEFAULT_TRAIN_ACC, fits_training_set
from analysis.load import (
    load_curves, load_grids, load_pairs, load_points, load_results, load_sharpness_curves,
)
from analysis.progress import StatsProgress
from analysis.report.decide import (
    BASELINES, decide, merged_ranking, pairs_fitting, per_point_trials, ranking_rows,
    seeds_per_config, single_pair_environments,
)
from analysis.report.render import render
from analysis.stats import (
    equivalent_measures, hyperparameter_columns, measure_columns, ranking_table,
    statistics_table, write_table,
)
from analysis.stats.registry import RANK_BY, check_statistic
from workers.results.layout import PAIRS_FILE, REPORT_DIR
from workers.results.storage import store


def _load_sweep_modules(st) -> None:
    """Import the sweep's ``measure_modules`` so its own measures' declarations (their sign)
    are known; a module that cannot be imported here is warned about, and its measures are
    ranked with sign +1."""
    import json
    import warnings

    from workers.results.layout import SWEEP_FILE
    from workers.measures import load_modules

    try:
        modules = json.loads(st.read_text(SWEEP_FILE)).get("config", {}).get("measure_modules", [])
    except (OSError, ValueError, AttributeError):
        return
    for m in modules or []:
        try:
            load_modules([m])
        except (ImportError, ValueError) as e:
            warnings.warn(f"report: {e}; its measures are ranked with sign +1", stacklevel=2)


def sampled_note(fit: pd.DataFrame) -> str:
    """Fig. 8's note when some of its points are sampled counts (Eq. 1 with k samples per
    edge, the Tanh networks') among exact ones: how many, and that sampling can miss close
    pairs of crossings (it undercounts); empty otherwise."""
    if "transitions_method" not in fit or "transitions_test" not in fit:
        return ""
    drawn = fit[fit["transitions_test"].notna()]
    sampled = drawn[drawn["transitions_method"] == "sampled"]
    if sampled.empty or len(sampled) == len(drawn):
        return ""
    ks = sorted({int(k) for k in sampled.get("transitions_k", pd.Series(dtype=float)).dropna()})
    at = f" with k = {', '.join(map(str, ks))}" if ks else ""
    return (f"App. Fig. 8: {len(sampled)} of its {len(drawn)} points are counts sampled by Eq. 1{at} "
            "(Tanh networks: the exact count walks piecewise-linear ones only), the others exact; "
            "sampling can miss close pairs of crossings, so those counts can be lower "
            "(column transitions_method).")


def make_report(sweep_dir, train_acc: float = DEFAULT_TRAIN_ACC, n_boot: int = 200,
                out: str | None = None, seed: int = 0, noise_filter: bool = False,
                processes: int | None = None, rank_by: str = RANK_BY,
                progress: bool = False,
                launch_command: Callable[[dict], tuple[str, bool]] | None = None) -> str:
    """Write the report of ``sweep_dir``; returns the location of ``report.html``.
    ``progress``: say on stderr what the report is doing and, for the statistics, how far it
    is and about how long is left (analysis.progress: a bar on a terminal, lines in a log).
    ``noise_filter``: the sign-errors with Dziugaite et al.'s Monte-Carlo noise filter, the
    test points behind each gap taken from the trials' ``test_size``. ``processes``: see
    ``analysis.stats.statistics_table`` (default, for a large table: one per usable CPU, no
    more than the usable memory holds, ``analysis.stats.process_count``). ``rank_by``: the
    statistic that orders the ranking of the measures
    (``analysis.stats.ranking_table``, over all passing trials; also ``ranking.csv``).
    ``launch_command(config)``: the command that launches the stored sweep and whether it is
    exact, for the header (``sweep report`` passes ``sweep.show.launch_command``; without it
    the header names no command)."""
    if not 0.0 <= float(train_acc) <= 1.0:
        raise ValueError(f"--train-acc: {train_acc!r}; allowed: a number in [0, 1]")
    if n_boot < 0:
        raise ValueError(f"--bootstrap: {n_boot}; allowed: an integer >= 0")
    check_statistic(rank_by, "--rank-by")
    t0 = time.perf_counter()
    st = store(sweep_dir)
    target = store(out) if out is not None else st
    rel = "" if out is not None else REPORT_DIR
    if out is not None and target.exists() and not target.is_empty() \
            and not target.is_file("report.html"):
        raise ValueError(f"--out: {out} is not empty and holds no report.html; choose a new or "
                         "empty directory (a previous report there is moved to previous/)")
    _load_sweep_modules(st)
    df = load_results(st)
    if df.empty:
        raise ValueError(f"SWEEP_DIR: {sweep_dir} holds no results yet; run the sweep first")
    fit = fits_training_set(df, train_acc)
    # one declaration of the hyperparameters for the figures' seed means and the statistics
    ranked = [*measure_columns(df), *BASELINES]
    hps = hyperparameter_columns(df, exclude=[*ranked, "gen_gap"])

    made: dict[str, Path] = {}
    notes: list[str] = []

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    say(f"report: figures of {len(df)} trials ({len(fit)} fit their training set)")
    with target.staging(rel) as d:
        def draw(name, fn, data, *extra):
            p = fn(data, d / f"{name}.png", *extra)
            if p is not None:
                made[name] = Path(p)

        draw("fig1_params_loss", figures.params_loss_figure, fit, hps)
        if st.is_file(PAIRS_FILE):
            all_pairs = load_pairs(st)
            factors = list(dict.fromkeys(all_pairs["factor"]))
            fitting = pairs_fitting(all_pairs, train_acc)
            without = [f for f in factors if f not in set(fitting["factor"])]
            if without:
                notes.append(f"Fig. 4: no pair in which both trials fit their training set "
                             f"(train accuracy {at_least(train_acc)}) for the factor(s) "
                             f"{', '.join(without)}; "
                             + ("their rows are left out." if len(without) < len(factors)
                                else "the figure is not drawn."))
            draw("fig4_factor_pairs", figures.factor_pairs_figure, fitting, factors)
        draw("fig5_jacobian_gap", figures.jacobian_gap_figure, fit, hps)
        draw("fig8_transitions_gap", figures.transitions_gap_figure, fit, hps)
        note = sampled_note(fit)
        if "fig8_transitions_gap" in made and note:
            notes.append(note)
        chosen = per_point_trials(fit)
        if chosen:
            points = load_points(st, [("split", "=", "test")], trial_ids=chosen)
            classes = fit.set_index("trial_id")["num_classes"]
            points["num_classes"] = points["trial_id"].map(classes)
            draw("fig6_per_point", figures.per_point_figure, points,
                 int(classes.max()))
        draw("fig2_trajectory", figures.trajectory_figure, load_curves(st))
        draw("fig3_boundaries", figures.boundaries_figure, load_grids(st))
        ok = df[df["status"] == "ok"]  # a study is what was trained, whatever fits
        if neyshabur.labels_study(ok, hps):  # drawn from the trials that fit (zero error)
            notes.append(neyshabur.fitted_note(fit, ok, train_acc))
            draw("neyshabur_fig1", neyshabur.labels_figure, fit)
            draw("neyshabur_fig1_all", neyshabur.labels_all_figure, fit, measure_columns(df))
            draw("neyshabur_fig2", neyshabur.sharpness_kl_figure, load_sharpness_curves(st), fit)
        if neyshabur.width_study(ok, hps):  # Fig. 4 shows the training error: every width
            draw("neyshabur_fig4", neyshabur.width_figure, ok, measure_columns(df))

        stats_measures = [m for m in ranked if m in fit]
        if progress and len(fit):
            base = [m for m in stats_measures if m in BASELINES]
            among = (f" ({len(stats_measures) - len(base)} measures and the {len(base)} "
                     f"baselines {', '.join(base)})" if base else "")
            say(f"report: statistics of {len(stats_measures)} measures{among} over {len(fit)} "
                f"trials, {n_boot} bootstrap resamples")
        table = statistics_table(fit, measures=stats_measures,
                                 n_boot=n_boot, seed=seed, hyperparameters=hps,
                                 noise_filter=noise_filter, processes=processes,
                                 progress=StatsProgress() if progress else None) \
            if len(fit) else pd.DataFrame()
        ranking = ranking_table(table, by=rank_by) if len(table) else ranking_table(table)
        # measures that rank the trials identically: one row of the ranking (and its figure)
        same = equivalent_measures(fit, stats_measures, hyperparameters=hps) if len(fit) else []
        selection = None
        if len(fit) and "test_acc" in fit:
            selection = model_selection(fit, [m for m in stats_measures if m not in BASELINES],
                                        hyperparameters=hps,
                                        baselines=[b for b in BASELINES if b in fit])
        if len(table):
            table.insert(table.columns.get_loc("sign") + 1, "baseline",
                         table["measure"].isin(BASELINES))
            write_table(table, d / "statistics")
            # the page's rows: equivalent measures merged, ranked among the rows (also in
            # ranking.csv, beside each measure's own rank)
            merged = merged_ranking(ranking, same, rank_by)
            ranking_rows(ranking, merged).to_csv(d / "ranking.csv", index=False)
            draw("ranking", ranking_figure, merged, rank_by,
                 [b for b in BASELINES if b in set(ranking["measure"])])
            pairs = single_pair_environments(fit, hps)
            draw("sign_errors", figures.sign_error_figure, merged, BASELINES,
                 seeds_per_config(fit, hps) <= 1, (pairs.single, pairs.environments))
        if selection is not None:
            selection.to_csv(d / "selection.csv", index=False)
        report = decide(st, df, fit, train_acc, table, made, n_boot, time.perf_counter() - t0,
                        noise_filter, ranking, rank_by, notes, sweep_dir, hps, launch_command,
                        same, selection)
        (d / "report.html").write_text(render(report))
    return target.uri(f"{rel}/report.html" if rel else "report.html")
