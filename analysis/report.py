"""``sweep report SWEEP_DIR``: the paper's figures and the statistics table of a sweep, as one
self-contained HTML file (figures embedded) with the PNG/SVG figures and the statistics as CSV
and Parquet beside it, in ``SWEEP_DIR/report/`` (or ``out``).

Only the trials that fit their training set enter the figures and statistics
(:func:`analysis.filters.fits_training_set`, threshold ``train_acc``); the report says how many
trials that leaves. Each figure is drawn when the sweep holds its data: Fig. 1, 5 and the
statistics from any sweep; App. Fig. 8 with transitions; Fig. 4 with ``plan.factors``; Fig. 6
with per-point Jacobian norms; Fig. 2/3 with ellipse profiles / boundary maps.
"""

from __future__ import annotations

import base64
import html
import sys
import time
from pathlib import Path

import pandas as pd

from analysis import figures, neyshabur
from analysis.figures import value_label
from analysis.filters import DEFAULT_TRAIN_ACC, fits_training_set
from analysis.progress import StatsProgress
from analysis.load import (
    load_curves, load_grids, load_pairs, load_points, load_results, load_sharpness_curves,
)
from analysis.stats import (
    LARGER_IS_BETTER, STATISTICS, hyperparameter_columns, measure_columns, ranking_table,
    statistics_table, write_table,
)
from workers.results.storage import store

REPORT_DIR = "report"
# Judged against the generalization gap besides every measure of the sweep (the registry's,
# workers.measures): Fig. 1's two baselines, which the paper shows do not track the gap.
BASELINES = ("n_params", "train_loss")

CAPTIONS = {
    "sign_errors": "The measures' sign-errors against the generalization gap (Dziugaite et al. "
                   "2020, Fig. 1, in spirit): mean over environments with its interval, and the "
                   "worst environment; 0.5 is chance; sorted by the mean sign-error (the "
                   "table above by the statistic of --rank-by).",
    "fig1_params_loss": "Fig. 1: generalization gap against the number of parameters and the "
                        "train loss (the paper's two baselines).",
    "fig4_factor_pairs": "Fig. 4: pairs of networks identical but for one factor. Points off the "
                         "diagonal show the factor's effect on the gap and on the sensitivities.",
    "fig5_jacobian_gap": "Fig. 5: Jacobian norm (test points) against the generalization gap, "
                         "one panel per data set.",
    "fig8_transitions_gap": "App. Fig. 8: transitions along trajectories through test points "
                            "against the generalization gap, coloured by hidden neurons.",
    "fig6_per_point": "Fig. 6 / App. 11: per-point Jacobian norm against per-point "
                      "cross-entropy, with A.3's approximate bounds.",
    "fig2_trajectory": "Fig. 2: Jacobian norm and transition density along ellipses through "
                       "the data, before and after training.",
    "fig3_boundaries": "Fig. 3: transition boundaries of the last hidden layer in the plane of "
                       "three training points.",
}


# Neyshabur et al. 2017's figures: drawn for a sweep that holds their study (analysis.neyshabur),
# not listed as missing otherwise
STUDY_CAPTIONS = {
    "neyshabur_fig1": "Neyshabur et al. 2017, Fig. 1 (MLPs for VGG): the norms over the margin "
                      "against the training-set size, true and random labels.",
    "neyshabur_fig1_all": "Every measure against the training-set size, true (blue) and random "
                          "(red) labels.",
    "neyshabur_fig2": "Neyshabur et al. 2017, Fig. 2: expected sharpness against KL for each "
                      "training-set size, true and random labels.",
    "neyshabur_fig4": "Neyshabur et al. 2017, Fig. 4: train and test error and every measure "
                      "against the number of hidden units (every ok trial, including those "
                      "short of zero training error).",
}


# What each figure's caption reports of this sweep's data: (measure, what it is) whose Kendall
# tau with the gap (the statistics table's group "all") the caption states
CAPTION_MEASURES = {
    "fig1_params_loss": (("n_params", "number of parameters"), ("train_loss", "train loss")),
    "fig5_jacobian_gap": (("jacobian_norm_test", "Jacobian norm"),),
    "fig8_transitions_gap": (("transitions_test", "transitions"),),
}


def strength(tau: float) -> str:
    """A word for the size of a rank correlation: |tau| < 0.1 none to speak of, < 0.3 weak,
    < 0.5 moderate, else strong (with its direction)."""
    a = abs(tau)
    if a < 0.1:
        return "no association to speak of"
    word = "weak" if a < 0.3 else "moderate" if a < 0.5 else "strong"
    return f"a {word} {'positive' if tau > 0 else 'negative'} association"


def data_caption(name: str, table: pd.DataFrame) -> str:
    """What figure ``name`` shows in this sweep, from the statistics table (Kendall's tau with
    the gap over all passing trials, its interval and trial count); empty without them."""
    if table is None or table.empty or name not in CAPTION_MEASURES:
        return ""
    t = table[(table["group"] == "all") & (table["statistic"] == "kendall")].set_index("measure")
    said = []
    for measure, what in CAPTION_MEASURES[name]:
        if measure not in t.index or pd.isna(t.loc[measure, "value"]):
            continue
        r = t.loc[measure]
        ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        said.append(f"{what}: Kendall's \u03c4 = {r['value']:.2f}{ci} over {int(r['n_trials'])} "
                    f"trials, {strength(r['value'])}")
    return ("In this sweep, against the gap: " + "; ".join(said) + ".") if said else ""


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


def _pairs_fitting(pairs: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Pairs whose two trials are both ``ok`` at train accuracy >= threshold (the filter of
    :func:`fits_training_set`, applied to both sides)."""
    keep = pd.Series(True, index=pairs.index)
    for side in ("a", "b"):
        side_df = pd.DataFrame({"status": pairs[f"status_{side}"], "train_acc": pairs[f"train_acc_{side}"]})
        keep &= pairs.index.isin(fits_training_set(side_df, threshold).index)
    return pairs[keep]


PER_POINT_TRIALS = 500  # Fig. 6 draws the test points of at most this many trials


def _per_point_trials(fit: pd.DataFrame, limit: int = PER_POINT_TRIALS, seed: int = 0) -> list[str]:
    """The trials whose test points Fig. 6 draws: all passing trials with per-point Jacobian
    norms, or a seeded sample of ``limit`` of them (the per-point rows of 10^5 trials would not
    fit in memory)."""
    has = fit[fit["jacobian_points_test"].fillna(0) > 0] if "jacobian_points_test" in fit else fit
    ids = sorted(has["trial_id"])
    if len(ids) > limit:
        import numpy as np

        ids = sorted(np.random.default_rng(seed).choice(ids, size=limit, replace=False))
    return list(ids)


def make_report(sweep_dir, train_acc: float = DEFAULT_TRAIN_ACC, n_boot: int = 200,
                out: str | None = None, seed: int = 0, noise_filter: bool = False,
                processes: int | None = None, rank_by: str = "granulated_kendall",
                progress: bool = False) -> str:
    """Write the report of ``sweep_dir``; returns the location of ``report.html``.
    ``progress``: say on stderr what the report is doing and, for the statistics, how far it
    is and about how long is left (analysis.progress: a bar on a terminal, lines in a log).
    ``noise_filter``: the sign-errors with Dziugaite et al.'s Monte-Carlo noise filter, the
    test points behind each gap taken from the trials' ``test_size``. ``processes``: see
    ``analysis.stats.statistics_table`` (default: one per core for a large table). ``rank_by``:
    the statistic that orders the ranking of the measures (``analysis.stats.ranking_table``,
    over all passing trials; also ``ranking.csv``)."""
    if not 0.0 <= float(train_acc) <= 1.0:
        raise ValueError(f"--train-acc: {train_acc!r}; allowed: a number in [0, 1]")
    if n_boot < 0:
        raise ValueError(f"--bootstrap: {n_boot}; allowed: an integer >= 0")
    if rank_by not in STATISTICS:
        raise ValueError(f"--rank-by: {rank_by!r}; allowed: {', '.join(STATISTICS)}")
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
        if st.is_file("pairs.parquet"):
            all_pairs = load_pairs(st)
            factors = list(dict.fromkeys(all_pairs["factor"]))
            fitting = _pairs_fitting(all_pairs, train_acc)
            without = [f for f in factors if f not in set(fitting["factor"])]
            if without:
                notes.append(f"Fig. 4: no pair in which both trials fit their training set "
                             f"(train accuracy >= {train_acc:g}) for the factor(s) "
                             f"{', '.join(without)}; "
                             + ("their rows are left out." if len(without) < len(factors)
                                else "the figure is not drawn."))
            draw("fig4_factor_pairs", figures.factor_pairs_figure, fitting, factors)
        draw("fig5_jacobian_gap", figures.jacobian_gap_figure, fit, hps)
        draw("fig8_transitions_gap", figures.transitions_gap_figure, fit, hps)
        chosen = _per_point_trials(fit)
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
            say(f"report: statistics of {len(stats_measures)} measures over {len(fit)} trials, "
                f"{n_boot} bootstrap resamples")
        table = statistics_table(fit, measures=stats_measures,
                                 n_boot=n_boot, seed=seed, hyperparameters=hps,
                                 noise_filter=noise_filter, processes=processes,
                                 progress=StatsProgress() if progress else None) \
            if len(fit) else pd.DataFrame()
        ranking = ranking_table(table, by=rank_by) if len(table) else ranking_table(table)
        if len(table):
            table.insert(table.columns.get_loc("sign") + 1, "baseline",
                         table["measure"].isin(BASELINES))
            write_table(table, d / "statistics")
            ranking.to_csv(d / "ranking.csv", index=False)
            draw("sign_errors", figures.sign_error_figure, ranking)
        page = _html(st, df, fit, train_acc, table, made, n_boot, time.perf_counter() - t0,
                     noise_filter, ranking, rank_by, notes, sweep_dir, hps)
        (d / "report.html").write_text(page)
    return target.uri(f"{rel}/report.html" if rel else "report.html")


def _stats_html(table: pd.DataFrame) -> str:
    if table.empty:
        return ("<p>No statistics: no trial passes the filter, or every measure is missing "
                "where one does.</p>")
    t = table.copy()

    def cell(r):
        n = f"<br><small>n={int(r['n_used'])}</small>" if "n_used" in r else ""
        if pd.isna(r["value"]):
            return "n/a" + n
        ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        rough = "&dagger;" if r.get("few_seeds", False) and ci else ""
        return f"{r['value']:.3f}{ci}{rough}{n}"

    t["cell"] = t.apply(cell, axis=1)
    t["group"] = t["group"].map(html.escape)
    t["measure"] = [html.escape(m) + (" <small>(baseline)</small>" if m in BASELINES else "")
                    for m in t["measure"]]
    wide = t.pivot_table(index=["group", "measure", "n_trials", "n_configs"], columns="statistic",
                         values="cell", aggfunc="first", sort=False)
    order = [c for c in STATISTICS if c in wide.columns]
    wide = wide[order]
    wide.columns = [f"{c} {'&uarr;' if LARGER_IS_BETTER[c] else '&darr;'}" for c in order]
    return wide.reset_index().to_html(index=False, escape=False, border=0,
                                             classes="stats")


RANKING_FIGURES = ("sign_errors",)  # drawn under the ranking table, not with the paper's figures


def _figure_html(name: str, path: Path, table: pd.DataFrame | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    said = data_caption(name, table)
    return (f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape({**CAPTIONS, **STUDY_CAPTIONS}.get(name, name))} "
            + (f"{html.escape(said)} " if said else "")
            + f"(<code>{name}.png</code>, <code>{name}.svg</code>)</figcaption></figure>")


RANKED_STATISTICS = ("kendall", "granulated_kendall", "conditional_mi", "sign_error",
                     "robust_sign_error")


def _seeds_per_config(fit: pd.DataFrame, hyperparameters) -> int:
    """The largest number of seeds any configuration of ``fit`` has (1 without a seed column)."""
    if fit.empty or "seed" not in fit:
        return 1
    hps = [h for h in hyperparameters if h != "seed" and h in fit]
    if not hps:
        return int(fit["seed"].nunique())
    return int(fit.groupby(hps, dropna=False)["seed"].nunique().max())


def _ranking_html(ranking: pd.DataFrame, rank_by: str, seeds: int = 2) -> str:
    if ranking.empty:
        return ""
    order = [rank_by] + [s for s in RANKED_STATISTICS if s != rank_by]

    def cell(r, s):
        v = r[s]
        if pd.isna(v):
            return "n/a"
        lo, hi = r[s + "_low"], r[s + "_high"]
        return f"{v:.3f}" + ("" if pd.isna(lo) else f" <small>[{lo:.3f}, {hi:.3f}]</small>")

    rows = ["<tr><th>rank</th><th>measure</th><th>sign</th><th>trials</th>"
            + "".join(f"<th>{html.escape(s)} {'&uarr;' if LARGER_IS_BETTER[s] else '&darr;'}</th>"
                      for s in order) + "</tr>"]
    for _, r in ranking.iterrows():
        rank = "" if pd.isna(r["rank"]) else int(r["rank"])
        base = " <small>(baseline)</small>" if r["measure"] in BASELINES else ""
        rows.append(f"<tr><td>{rank}</td><td style='text-align:left'>"
                    f"{html.escape(str(r['measure']))}{base}</td>"
                    f"<td>{'&minus;1' if r['sign'] < 0 else '+1'}</td><td>{int(r['n_trials'])}</td>"
                    + "".join(f"<td>{cell(r, s)}</td>" for s in order) + "</tr>")
    return ("<h2>Ranking of the measures</h2>"
            f"<p>Every measure of the sweep (and the baselines) over all passing trials, ranked by "
            f"<b>{html.escape(rank_by)}</b> (<code>sweep report --rank-by</code>; the same ranks "
            "for every statistic and group are the <code>rank</code> column of "
            "<code>statistics.csv</code>; this table is <code>ranking.csv</code>). The statistics "
            "are of <i>sign &times; measure</i>: sign &minus;1 marks a measure expected to fall as "
            "the gap grows (a margin), so for every row a larger correlation and a smaller "
            "sign-error mean it predicts the gap in its expected direction. The conditional MI "
            "is the exception: it measures dependence in either direction (a measure ordered "
            "exactly against the gap scores as high as one ordered with it), so read it with "
            "the sign of Kendall's &tau;. &uarr;: larger is better; &darr;: smaller is better. "
            "Value [95% bootstrap interval].</p>"
            + ("<p><b>One seed per configuration:</b> each environment's sign-error is then 0 or "
               "1 (one pair of runs), so <code>robust_sign_error</code>, the worst environment, "
               "is 1 as soon as one environment orders its pair against the gap (with many "
               "environments, for nearly every measure) and ranks little; it needs several "
               "seeds per configuration (<code>space.seed</code>).</p>" if seeds <= 1 else "")
            + "<table class='stats'>" + "".join(rows) + "</table>")


def _seeds_note(fit: pd.DataFrame) -> str:
    n = fit["seed"].nunique() if "seed" in fit else 0
    if 2 <= n < 5:
        return (f"<p><b>Note:</b> {n} seeds give the seed bootstrap only a handful of distinct "
                "resamples; read the intervals as rough. The paper uses 8 seeds.</p>")
    return ""


LOWER_THRESHOLDS = (0.99, 0.95, 0.9, 0.8)


def filter_note(df: pd.DataFrame, train_acc: float, sweep_dir) -> str:
    """A warning for the top of the report when few trials pass the train-accuracy filter
    (some ok trials fall short, and fewer than 10 or fewer than half of them pass): how many
    pass at lower thresholds, and the command that rebuilds the report at the highest of them
    that keeps half of the ok trials, else the highest that lets the most in (none when no
    lower threshold lets more in). Empty otherwise."""
    from sweep.commands import sweep_command

    ok = int((df["status"] == "ok").sum())
    n = len(fits_training_set(df, train_acc))
    if ok == 0 or n == ok or (n >= 10 and n >= ok / 2):
        return ""
    lower = [t for t in LOWER_THRESHOLDS if t < train_acc]
    counts = [(t, len(fits_training_set(df, t))) for t in lower]
    most = max((c for _, c in counts), default=n)
    best = next((t for t, c in counts if c >= ok / 2), None)
    if best is None:
        best = next((t for t, c in counts if c == most), None) if most > n else None
    at = "; ".join(f"&ge; {t:g}: {c}" for t, c in counts)
    cmd = "" if best is None else (
        f" To read them at a lower threshold (a departure from the paper's 100%): "
        f"<code>{html.escape(sweep_command('report', sweep_dir, '--train-acc', f'{best:g}'))}"
        "</code>.")
    return (f"<p class='warn'><b>Few trials fit their training set:</b> {n} of {ok} ok trials "
            f"reach train accuracy &ge; {train_acc:g}, and only those enter the figures and "
            f"statistics (a statistic shows n/a where they are too few)."
            + (f" At lower thresholds: {at}." if at else "") + cmd
            + " More training steps (<code>train.steps</code>) let more trials fit.</p>")


def value_counts(column: pd.Series) -> dict[str, int]:
    """Trials per value of ``column``, null counted as a value of its own ("null"), keyed by
    :func:`value_label`, in the order of first appearance."""
    counts: dict[str, int] = {}
    for v in column:
        key = value_label(v)
        counts[key] = counts.get(key, 0) + 1
    return counts


def unfit_note(df: pd.DataFrame, train_acc: float, hyperparameters) -> str:
    """The hyperparameter values none of whose ok trials fit their training set (so the
    statistics know nothing of them), e.g. plain SGD at a small learning rate; empty if
    every value has a fitting trial. Then, for each hyperparameter of 2 to 10 values where
    the filter leaves some out, the fitting and ok trials per value. A null value (L-BFGS's
    batch size) is a value of its own, counted as such."""
    ok = df[df["status"] == "ok"]
    fit = fits_training_set(df, train_acc)
    said = []
    for h in hyperparameters:
        if h not in ok or ok[h].nunique(dropna=False) > 50:
            continue
        fitting = value_counts(fit[h])
        for v, n in sorted(value_counts(ok[h]).items(), key=lambda kv: -kv[1]):
            if v not in fitting:
                said.append(f"{h}={v} ({n} ok trial{'s' if n > 1 else ''})")
    parts = []
    if said:
        parts.append(f"<p><b>Left out entirely:</b> no ok trial of {html.escape('; '.join(said))} "
                     f"reaches train accuracy &ge; {train_acc:g}, so the statistics say nothing "
                     "about them (<code>analysis.load_results</code> has their numbers).</p>")
    per = []  # where the filter bites: fitting / ok trials per value of a few-valued factor
    for h in hyperparameters:
        if h not in ok or not 2 <= ok[h].nunique(dropna=False) <= 10:
            continue
        fitting = value_counts(fit[h])
        counts = [(v, fitting.get(v, 0), n) for v, n in value_counts(ok[h]).items()]
        if any(f < n for _, f, n in counts):
            per.append(f"{h}: " + ", ".join(f"{v} {f}/{n}" for v, f, n in counts))
    if per and len(fit) < len(ok):
        parts.append("<p><small>Trials that fit, of the ok trials, per value: "
                     + html.escape("; ".join(per)) + ".</small></p>")
    return "".join(parts)


def config_html(st) -> str:
    """The sweep's configuration at the top of the report: experiment, data set, trials, the
    space and plan, and the command that launches the same sweep (``sweep.show.launch_command``,
    marked when it is not exact: ``sweep.json`` holds the whole configuration)."""
    import json

    from sweep.show import launch_command
    from workers.results.layout import SWEEP_FILE

    try:
        config = json.loads(st.read_text(SWEEP_FILE))["config"]
    except (OSError, ValueError, KeyError):
        return ""
    space = config.get("space", {})
    varied = ", ".join(f"{k} {v}" for k, v in space.items() if isinstance(v, list) and len(v) > 1)
    fixed = ", ".join(f"{k} {v[0]}" for k, v in space.items() if isinstance(v, list) and len(v) == 1)
    plan = config.get("plan", {})
    command, exact = launch_command(config)
    return (f"<p><b>Configuration:</b> experiment <code>{html.escape(str(config.get('name')))}"
            f"</code>, data set <code>{html.escape(str(config.get('dataset', {}).get('name')))}"
            f"</code>, {config.get('trials')} trials planned ({html.escape(str(plan.get('sampler')))}"
            f" sampler" + (f", grid over {html.escape(', '.join(plan['grid']))}"
                           if plan.get("grid") else "")
            + f", {config.get('train', {}).get('steps')} steps). Space: varied "
            f"{html.escape(varied or 'nothing')}; fixed {html.escape(fixed or 'nothing')}.<br>"
            f"Launched by{'' if exact else ' (approximately; sweep.json holds the exact configuration)'}: "
            f"<code>{html.escape(command)}</code>" + settings_html(st) + "</p>")


def settings_html(st) -> str:
    """The measures' settings the report's values have (``measures.json``: the settings last
    asked for) where they differ from the measure's registered defaults, as a line for the
    report's header; empty when all are the defaults or nothing is recorded."""
    from workers.measures import REGISTRY
    from workers.results.measure_table import read_selection

    diffs = []
    for name, sel in sorted(read_selection(st).items()):
        if name not in REGISTRY:
            continue
        defaults = REGISTRY[name].settings
        changed = [f"{k}={v}" for k, v in sorted(sel.get("settings", {}).items())
                   if k in defaults and v != defaults[k]]
        if changed:
            diffs.append(f"{name} {', '.join(changed)}")
    if not diffs:
        return ""
    return ("<br>Measure settings other than their defaults (the values below are these; "
            "<code>sweep show --keys</code> lists the defaults): "
            + html.escape("; ".join(diffs)))


def _html(st, df, fit, train_acc, table, made, n_boot, seconds, noise_filter=False,
          ranking=None, rank_by="granulated_kendall", notes=(), sweep_dir=None,
          hps=()) -> str:
    counts = df["status"].value_counts().to_dict()
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Sweep report: {html.escape(str(st))}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table.stats{border-collapse:collapse;font-size:13px}table.stats td,table.stats th"
        "{border:1px solid #ccc;padding:3px 6px;text-align:right}figure{margin:1.5em 0}"
        "img{max-width:100%}figcaption{font-size:14px;color:#333}"
        ".warn{background:#fff3cd;border:1px solid #e0c36a;padding:6px 10px}</style></head><body>",
        f"<h1>Sweep report</h1><p><code>{html.escape(str(st))}</code>: {len(df)} trials "
        f"({html.escape(status)}). Figures and statistics use the {len(fit)} ok trials at train "
        f"accuracy &ge; {train_acc:g} (<code>analysis.filters.fits_training_set</code>).</p>",
        filter_note(df, train_acc, sweep_dir if sweep_dir is not None else st),
        unfit_note(df, train_acc, hps),
        config_html(st),
        _ranking_html(ranking if ranking is not None else pd.DataFrame(), rank_by,
                      _seeds_per_config(fit, hps)),
        *[_figure_html(n, made[n]) for n in RANKING_FIGURES if n in made],
        "<h2>Statistics against the generalization gap</h2>",
        f"<p>Value [95% bootstrap interval over {n_boot} resamples of seeds, or of trials when "
        "the sweep has a single seed]. Over trials: Pearson, Spearman and Kendall's &tau;-b "
        "(scipy.stats). Over configurations averaged over seeds: the granulated Kendall &Psi; "
        "(Jiang et al. 2019, Eq. 2-3: within each group of configurations that differ in one "
        "hyperparameter, &tau; = the mean over ordered pairs of sign(&Delta;&mu;) "
        "sign(&Delta;g), a tie counting 0; averaged over groups, then over hyperparameters), "
        "the conditional mutual information (PGDL, counted over all ordered pairs, minimum over "
        "pairs of hyperparameters). Over pairs of runs: the sign-error (Dziugaite et al. 2020; "
        "per environment, i.e. pair of configurations that differ in one hyperparameter, the "
        "mean over every seed of one against every seed of the other of "
        "(1 - sign(&Delta;&mu;) sign(&Delta;g))/2; <code>sign_error</code> is the mean over "
        "environments, <code>robust_sign_error</code> the worst environment; 0 is perfect, "
        "lower is better"
        + ("; with the Monte-Carlo noise filter: pairs weighted by the Hoeffding bound on their "
           "gap difference" if noise_filter else "")
        + "). n: what each rests on (trials; groups where one hyperparameter varies; ordered "
        "pairs; environments). &uarr;: larger is better, &darr;: smaller is better (column "
        "<code>better</code>); &dagger;: an interval resampled over fewer than 5 seeds, a "
        "handful of distinct resamples (column <code>few_seeds</code>); baselines: "
        + ", ".join(f"<code>{b}</code>" for b in BASELINES) + " (column <code>baseline</code>)."
        + (" The same table: <code>statistics.csv</code>, <code>statistics.parquet</code>."
           if len(table) else "") + "</p>",
        _seeds_note(fit),
        _stats_html(table),
        "<h2>Figures</h2>",
    ]
    parts += [_figure_html(name, path, table) for name, path in made.items()
              if name not in RANKING_FIGURES]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes if n]
    missing = [n for n in CAPTIONS if n not in made and n not in RANKING_FIGURES]
    if missing:
        parts.append("<p>Not drawn (no data for them in this sweep): "
                     + ", ".join(html.escape(CAPTIONS[n].split(":")[0]) for n in missing) + ".</p>")
    parts.append(f"<p><small>Made in {seconds:.1f} s.</small></p></body></html>")
    return "\n".join(parts)
