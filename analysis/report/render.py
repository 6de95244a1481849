"""The report page as HTML, from what ``analysis.report.decide`` decided (a ``Report``): this
module computes nothing about the sweep; it words, escapes and lays out. The list of statistics
and what they mean come from the statistics registry (``analysis.stats.registry``)."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from analysis.figures import at_least, percent
from analysis.report.decide import (
    BASELINES, CaptionFact, ConfigSummary, FilterAdvice, Report, Tie, UnfitValues,
    caption_facts, changed_settings, config_summary, filter_advice, unfit_values,
)
from analysis.stats.registry import LARGER_IS_BETTER, REGISTRY, STATISTICS, SUPPORTS

CAPTIONS = {
    "ranking": "The measures ranked by the statistic of --rank-by against the generalization "
               "gap, best at the top.",
    "sign_errors": "The measures' sign-errors against the generalization gap (Dziugaite et al. "
                   "2020, Fig. 1, in spirit): mean over environments with its interval, and the "
                   "worst environment; 0.5 is chance; one row per finding, as in the ranking "
                   "(measures that rank the trials identically share a row); sorted by the "
                   "mean sign-error (the table above by the statistic of --rank-by).",
    "fig1_params_loss": "Fig. 1: generalization gap against the number of parameters and the "
                        "train loss (the paper's two baselines).",
    "fig4_factor_pairs": "Fig. 4: pairs of networks identical but for one factor. Points off the "
                         "diagonal show the factor's effect on the gap and on the sensitivities.",
    "fig5_jacobian_gap": "Fig. 5: Jacobian norm (test points) against the generalization gap, "
                         "one panel per data set.",
    "fig8_transitions_gap": "App. Fig. 8: transitions along trajectories through test points "
                            "against the generalization gap, coloured by hidden neurons: "
                            "width \u00d7 hidden layers (depth \u2212 1).",
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

# drawn with the ranking (the first above its table, the others under it), not with the
# paper's figures
RANKING_FIGURES = ("ranking", "sign_errors")


def number(v: float, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals; a value that rounds to zero is "0.000", never
    "-0.000"."""
    text = f"{v:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def interval(low: float, high: float, digits: int = 3) -> str:
    """" [low, high]" (``number``), empty without an interval (NaN)."""
    if pd.isna(low) or pd.isna(high):
        return ""
    return f" [{number(low, digits)}, {number(high, digits)}]"


def _arrow(statistic: str) -> str:
    return "&uarr;" if LARGER_IS_BETTER[statistic] else "&darr;"


def strength(tau: float, low: float = math.nan, high: float = math.nan) -> str:
    """A word for the size of a rank correlation: |tau| < 0.1 none to speak of, < 0.3 weak,
    < 0.5 moderate, else strong (with its direction); with its interval [low, high], that an
    association of that size is not clear when the interval includes 0."""
    a = abs(tau)
    if a < 0.1:
        return "no association to speak of"
    word = "weak" if a < 0.3 else "moderate" if a < 0.5 else "strong"
    said = f"a {word} {'positive' if tau > 0 else 'negative'} association"
    if math.isfinite(low) and math.isfinite(high) and low <= 0 <= high:
        said += ", not a clear one: its interval includes 0"
    return said


def caption_text(facts: list[CaptionFact]) -> str:
    """The sentence a figure's caption says of the data (plain text); empty without facts."""
    said = []
    for f in facts:
        ci = interval(f.ci_low, f.ci_high, 2)
        said.append(f"{f.what}: Kendall's \u03c4 = {number(f.tau, 2)}{ci} over {f.n_trials} "
                    f"trials, {strength(f.tau, f.ci_low, f.ci_high)}")
    return ("In this sweep, against the gap: " + "; ".join(said) + ".") if said else ""


def data_caption(name: str, table: pd.DataFrame) -> str:
    """What figure ``name`` shows in this sweep, from the statistics table (Kendall's tau with
    the gap over all passing trials, its interval and trial count); empty without them."""
    return caption_text(caption_facts(name, table))


def filter_html(advice: FilterAdvice | None) -> str:
    """The warning at the top of the report when few trials fit; empty without one."""
    if advice is None:
        return ""
    at = "; ".join(f"&ge; {percent(t)}: {c}" for t, c in advice.at_lower)
    cmd = "" if advice.command is None else (
        f" To read them at a lower threshold (a departure from the paper's 100%): "
        f"<code>{html.escape(advice.command)}</code>.")
    return (f"<p class='warn'><b>Few trials fit their training set:</b> {advice.n_fit} of "
            f"{advice.n_ok} ok trials reach train accuracy {at_least(advice.train_acc, '&ge;')}, "
            "and only "
            f"those enter the figures and statistics (a statistic shows n/a where they are too "
            f"few)." + (f" At lower thresholds: {at}." if at else "") + cmd
            + " More training steps (<code>train.steps</code>) let more trials fit.</p>")


def filter_note(df: pd.DataFrame, train_acc: float, sweep_dir) -> str:
    """A warning for the top of the report when few trials pass the train-accuracy filter
    (``analysis.report.decide.filter_advice``), with the ``sweep report`` command of
    ``sweep_dir`` at a lower threshold; empty otherwise."""
    return filter_html(filter_advice(df, train_acc, sweep_dir))


def unfit_html(unfit: UnfitValues, train_acc: float) -> str:
    """The values the filter leaves out entirely, and the fitting / ok trials per value."""
    parts = []
    if unfit.left_out:
        said = [f"{h}={v} ({n} ok trial{'s' if n > 1 else ''})" for h, v, n in unfit.left_out]
        parts.append(f"<p><b>Left out entirely:</b> no ok trial of {html.escape('; '.join(said))} "
                     f"reaches train accuracy {at_least(train_acc, '&ge;')}, so the statistics say "
                     "nothing "
                     "about them (<code>analysis.load_results</code> has their numbers).</p>")
    if unfit.per_value:
        per = [f"{h}: " + ", ".join(f"{v} {f}/{n}" for v, f, n in counts)
               for h, counts in unfit.per_value]
        parts.append("<p><small>Trials that fit, of the ok trials, per value: "
                     + html.escape("; ".join(per)) + ".</small></p>")
    if unfit.lbfgs:
        parts.append(f"<p><small>{html.escape(lbfgs_text(unfit.lbfgs))}</small></p>")
    return "".join(parts)


# what the configuration key an L-BFGS trial takes a hyperparameter from is to L-BFGS
LBFGS_KEYS = {"train.lbfgs.lr": "the first step its strong-Wolfe line search tries"}


def lbfgs_text(lbfgs) -> str:
    """What the L-BFGS trials' values of the hyperparameters it does not read from the space
    (``UnfitValues.lbfgs``, ``analysis.report.decide.LBFGS_UNREAD``) mean, as a sentence."""
    from analysis.report.decide import LBFGS_UNREAD

    def meaning(h):
        key = LBFGS_UNREAD.get(h)
        if key is None:
            return "no mini-batch"
        return f"{key}, {LBFGS_KEYS[key]}" if key in LBFGS_KEYS else key

    said = [f"{h} {' and '.join(values)} ({meaning(h)})" for h, values in lbfgs]
    names = [f"space.{h}" for h, _ in lbfgs]
    reads = (f"no {names[0]}" if len(names) == 1 else
             f"neither {', '.join(names[:-1])} nor {names[-1]}")
    return ("L-BFGS is full-batch and chooses its steps by a line search, so it reads "
            f"{reads}: its trials count under {' and '.join(said)}.")


def unfit_note(df: pd.DataFrame, train_acc: float, hyperparameters) -> str:
    """The hyperparameter values none of whose ok trials fit their training set, and for each
    hyperparameter of 2 to 10 values where the filter leaves some out, the fitting and ok
    trials per value (``analysis.report.decide.unfit_values``); empty if there is nothing to
    say."""
    return unfit_html(unfit_values(df, train_acc, hyperparameters), train_acc)


def settings_line(settings) -> str:
    """The measures' settings other than their defaults, as a line of the header."""
    if not settings:
        return ""
    return ("<br>Measure settings other than their defaults, as last asked for (where a "
            "column's values are under other settings, a box at the top says so; a "
            "<code>points</code> beyond a split's size takes all of it; <code>sweep show "
            "--keys</code> lists the defaults): "
            + html.escape("; ".join(settings)))


def settings_html(st) -> str:
    """The measures' settings the report's values have where they differ from the measure's
    registered defaults (``analysis.report.decide.changed_settings``), as a line for the
    report's header; empty when all are the defaults or nothing is recorded."""
    return settings_line(changed_settings(st))


def config_summary_html(c: ConfigSummary | None) -> str:
    """The header's configuration paragraph; empty without a configuration."""
    if c is None:
        return ""
    launched = ""
    if c.launch is not None:
        command, exact = c.launch
        launched = (f"<br>Launched by"
                    f"{'' if exact else ' (approximately; sweep.json holds the exact configuration)'}: "
                    f"<code>{html.escape(command)}</code>")
    return (f"<p><b>Configuration:</b> experiment <code>{html.escape(str(c.name))}"
            f"</code>, data set <code>{html.escape(str(c.dataset))}"
            f"</code>, {c.trials} trials planned ({html.escape(str(c.sampler))}"
            f" sampler" + (f", grid over {html.escape(', '.join(c.grid))}" if c.grid else "")
            + f", {c.steps} steps). Space: varied "
            f"{html.escape(c.varied or 'nothing')}; fixed {html.escape(c.fixed or 'nothing')}."
            + launched + settings_line(c.settings) + "</p>")


def config_html(st, launch_command=None) -> str:
    """The sweep's configuration at the top of the report: experiment, data set, trials, the
    space and plan, and, given ``launch_command`` (``sweep.show.launch_command``), the command
    that launches the same sweep (marked when it is not exact: ``sweep.json`` holds the whole
    configuration)."""
    return config_summary_html(config_summary(st, launch_command))


# what a support's n counts, where its name alone does not say it (plain text)
SUPPORT_NOTES = {
    "pairs": "n = (configurations)\u00b2: the ordered pairs (i, j) include each configuration "
             "with itself, (i, i), as the PGDL scoring counts them (analysis.stats.cmi)",
}


def statistics_list(noise_filter: bool = False) -> str:
    """What each statistic of the registry is, one item each: name, direction, what it is
    computed over and rests on (n, with ``SUPPORT_NOTES``), description and source."""
    items = []
    for s in REGISTRY.values():
        how = SUPPORT_NOTES.get(s.support)
        items.append(f"<li><code>{s.name}</code> {_arrow(s.name)} over {html.escape(s.over)} "
                     f"(n: {html.escape(SUPPORTS[s.support])}): {html.escape(s.description)}. "
                     + (f"{html.escape(how)}. " if how else "")
                     + f"<small>{html.escape(s.source)}.</small></li>")
    filtered = ("<p>With the Monte-Carlo noise filter: the sign-errors' pairs of runs weighted by "
                "the Hoeffding bound on their gap difference.</p>" if noise_filter else "")
    return "<ul>" + "".join(items) + "</ul>" + filtered


def stats_html(table: pd.DataFrame, baselines=BASELINES) -> str:
    """The statistics table, one row per group and measure, a column per statistic."""
    if table.empty:
        return ("<p>No statistics: no trial passes the filter, or every measure is missing "
                "where one does.</p>")
    t = table.copy()

    def cell(r):
        n = f"<br><small>n={int(r['n_used'])}</small>" if "n_used" in r else ""
        if pd.isna(r["value"]):
            return "n/a" + n
        ci = interval(r["ci_low"], r["ci_high"])
        rough = "&dagger;" if r.get("few_seeds", False) and ci else ""
        ci = f" <span class='ci'>{ci.strip()}{rough}</span>" if ci else ""
        return f"{number(r['value'])}{ci}{n}"

    t["cell"] = t.apply(cell, axis=1)
    t["group"] = t["group"].map(html.escape)
    t["measure"] = [html.escape(m) + (" <small>(baseline)</small>" if m in baselines else "")
                    for m in t["measure"]]
    wide = t.pivot_table(index=["group", "measure", "n_trials", "n_configs"], columns="statistic",
                         values="cell", aggfunc="first", sort=False)
    order = [c for c in STATISTICS if c in wide.columns]
    wide = wide[order]
    wide.columns = [f"{c} {_arrow(c)}" for c in order]
    return scrolls(wide.reset_index().to_html(index=False, escape=False, border=0,
                                              classes="stats"))


def scrolls(table: str) -> str:
    """``table`` (HTML) in a box that scrolls sideways when the window is narrower than the
    table (its columns are never cut off: class ``wide`` in ``render``'s style)."""
    return f"<div class='wide'>{table}</div>"


def figure_html(name: str, path: Path, facts: list[CaptionFact] = (), note: str = "") -> str:
    """A figure embedded as PNG, with its caption, what it shows of the data and ``note``
    (plain text)."""
    data = base64.b64encode(path.read_bytes()).decode()
    said = " ".join(x for x in (caption_text(list(facts)), note) if x)
    return (f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape({**CAPTIONS, **STUDY_CAPTIONS}.get(name, name))} "
            + (f"{html.escape(said)} " if said else "")
            + f"(<code>{name}.png</code>, <code>{name}.svg</code>)</figcaption></figure>")


def sign_errors_note(r: Report) -> str:
    """What the sign-error figure's caption adds for this sweep (plain text), the page's one
    note on environments that rest on a single pair of runs (sign-error 0 or 1): with one
    seed per configuration, that every environment is one, on how many of the figure's rows
    the worst environment is 1, and that the figure leaves it out
    (``analysis.figures.sign_error_figure``); when only some configurations have one seed,
    how many environments (of how many) and configurations rest on one; empty when none
    does."""
    if r.merged.empty or "sign_error" not in r.merged:
        return ""
    p = r.single_pairs
    if not r.one_seed and (p is None or p.single == 0):
        return ""
    rows = r.merged.dropna(subset=["sign_error"])
    ones = int((rows["robust_sign_error"] == 1.0).sum())
    seeds = ("; robust_sign_error ranks little until every configuration has several seeds "
             "(space.seed).")
    if r.one_seed:
        return (f"One seed per configuration: every environment is a single pair of runs, so "
                f"its sign-error is 0 or 1 and the worst environment (robust_sign_error) is 1 "
                f"for {ones} of the {len(rows)} rows; the figure does not draw it, and the "
                "mean over environments is the share of pairs ordered against the gap" + seeds)
    return (f"Unequal seeds: {p.one_run} of the {p.configs} configurations have one seed, so "
            f"{p.single} of the {p.environments} environments are a single pair of runs, whose "
            f"sign-error is 0 or 1; one such pair ordered against the gap makes the worst "
            f"environment (robust_sign_error) 1, as it is for {ones} of the {len(rows)} rows"
            + seeds)


def _signs(r) -> str:
    """A ranking row's sign, or its members' signs when they differ ("+1, -1")."""
    signs = tuple(r["signs"]) if "signs" in r.index else (int(r["sign"]),)
    text = ["&minus;1" if s < 0 else "+1" for s in signs]
    return text[0] if len(set(text)) == 1 else ", ".join(text)


def ranking_html(ranking: pd.DataFrame, rank_by: str, order, single_pairs: bool = False,
                 baselines=BASELINES, figure: str = "") -> str:
    """The ranking of the measures by ``rank_by``, with the statistics ``order``; a row whose
    ``measures`` (``analysis.stats.merge_equivalent``) name several measures names them all.
    ``figure``: HTML placed between the introduction and the table (the ranking figure).
    ``single_pairs``: some environments rest on a single pair of runs; the introduction then
    points to the note under the sign-error figure (``sign_errors_note``)."""
    if ranking.empty:
        return ""

    def cell(r, s):
        v = r[s]
        if pd.isna(v):
            return "n/a"
        ci = interval(r[s + "_low"], r[s + "_high"])
        return number(v) + (f" <small class='ci'>{ci.strip()}</small>" if ci else "")

    rows = ["<tr><th>rank</th><th>measure</th><th>sign</th><th>trials</th>"
            + "".join(f"<th>{html.escape(s)} {_arrow(s)}</th>" for s in order) + "</tr>"]
    for _, r in ranking.iterrows():
        rank = "" if pd.isna(r["rank"]) else int(r["rank"])
        names = tuple(r["measures"]) if "measures" in r.index else (str(r["measure"]),)
        base = " <small>(baseline)</small>" if any(m in baselines for m in names) else ""
        same = (" <small>(the same ranks)</small>" if len(names) > 1 else "")
        rows.append(f"<tr><td>{rank}</td><td style='text-align:left'>"
                    f"{html.escape(', '.join(names))}{base}{same}</td>"
                    f"<td>{_signs(r)}</td><td>{int(r['n_trials'])}</td>"
                    + "".join(f"<td>{cell(r, s)}</td>" for s in order) + "</tr>")
    return ("<h2>Ranking of the measures</h2>"
            f"<p>Every measure of the sweep (and the baselines) over all passing trials, ranked by "
            f"<b>{html.escape(rank_by)}</b> (<code>sweep report --rank-by</code>; rank among the "
            "rows, tied rows sharing the best; a measure's rank for every statistic and group is "
            "the <code>rank</code> column of <code>statistics.csv</code>; "
            "<code>ranking.csv</code> has a row per measure: its <code>rank</code> among the "
            "measures, and <code>row_rank</code> and <code>row</code>, the rank and the name "
            "of its row here). One "
            "row per finding: measures that rank the trials identically (one an increasing "
            "function of the other on these data, so every statistic but Pearson's r is the "
            "same; <code>analysis.stats.equivalent_measures</code>) share a row. The statistics "
            "are of <i>sign &times; measure</i>: sign &minus;1 marks a measure expected to fall as "
            "the gap grows (a margin), so for every row a larger correlation and a smaller "
            "sign-error mean it predicts the gap in its expected direction. The conditional MI "
            "is the exception: it measures dependence in either direction (a measure ordered "
            "exactly against the gap scores as high as one ordered with it), so read it with "
            "the sign of Kendall's &tau;. &uarr;: larger is better; &darr;: smaller is better. "
            "Value [95% bootstrap interval]."
            + (" Environments of a single pair of runs (one seed): see under the sign-error "
               "figure for what they do to <code>robust_sign_error</code>." if single_pairs
               else "")
            + "</p>" + figure + scrolls("<table class='stats'>" + "".join(rows) + "</table>"))


def _names(rows) -> str:
    return "; ".join(", ".join(ms) for ms in rows)


def _count(lo: int, hi: int, what: str) -> str:
    return f"{lo} {what}" if lo == hi else f"{lo} to {hi} {what}"


def tie_text(t: Tie, support: str) -> str:
    """One tie of the ranking as a sentence (plain text)."""
    n = sum(len(ms) for ms in t.names)
    rows = len(t.names)
    who = f"{n} measures" if rows == n else f"{rows} rows ({n} measures)"
    return (f"{who} tie at {number(t.value)}{interval(t.ci_low, t.ci_high)} on "
            f"{_count(*t.n_used, support)} (rank {t.rank}): {_names(t.names)}")


def ranking_caption(r: Report) -> str:
    """The ranking figure's caption (plain text): what it shows, what each value rests on,
    the intervals and the seeds behind them, the rows that name several measures, the ties."""
    stat = REGISTRY[r.rank_by]
    support = SUPPORTS[stat.support]
    shown = r.merged.dropna(subset=[r.rank_by]) if len(r.merged) else r.merged
    n = [r.used[m] for ms in shown.get("measures", []) for m in ms if m in r.used]
    parts = [f"The measures ranked by {r.rank_by} of sign \u00d7 measure against the "
             f"generalization gap over the {r.n_fit} passing trials, best at the top "
             f"({stat.better} is better; dashed line: chance, {stat.chance:g}); orange squares: "
             f"the baselines ({', '.join(r.baselines)})"
             + ("; a shaded band: rows that tie." if r.ties else ".")]
    if n:
        parts.append(f"Each value rests on {_count(min(n), max(n), support)}.")
    if r.n_boot and r.n_seeds >= 2:
        parts.append(f"Bars: 95% intervals from {r.n_boot} bootstrap resamples of the "
                     f"{r.n_seeds} seeds.")
    elif r.n_boot:
        parts.append(f"Bars: 95% intervals from {r.n_boot} bootstrap resamples of the trials "
                     "(a single seed).")
    else:
        parts.append("No intervals (--bootstrap 0).")
    if r.few_seeds is not None:
        parts.append(f"Only {r.few_seeds} seeds: the seed bootstrap has a handful of distinct "
                     "resamples, so read the intervals as rough (the paper uses 8).")
    merged = [ms for ms in shown.get("measures", []) if len(ms) > 1]
    if merged:
        parts.append(f"{len(merged)} row{'s' if len(merged) > 1 else ''} name several measures "
                     "that rank the trials identically (\"the same ranks\" in the table).")
    for t in r.ties:
        parts.append(tie_text(t, support) + ".")
    if r.ties:
        parts.append("Tied rows are not ordered by the data.")
    return " ".join(parts)


def ranking_figure_html(r: Report) -> str:
    """The ranking figure with its caption; empty when it was not drawn."""
    if "ranking" not in r.figures:
        return ""
    data = base64.b64encode(r.figures["ranking"].read_bytes()).decode()
    return (f"<figure><img alt='ranking' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(ranking_caption(r))} (<code>ranking.png</code>, "
            "<code>ranking.svg</code>)</figcaption></figure>")


def ties_html(r: Report) -> str:
    """The ties of the ranking as a note above its table when the ranking figure, whose
    caption says them, was not drawn; empty otherwise."""
    if not r.ties or "ranking" in r.figures:
        return ""
    support = SUPPORTS[REGISTRY[r.rank_by].support]
    return ("<p class='warn'><b>Ties:</b> " + html.escape("; ".join(tie_text(t, support)
                                                                    for t in r.ties))
            + ". Tied rows are not ordered by the data.</p>")


def selection_html(selection: pd.DataFrame, baselines=BASELINES) -> str:
    """The label-free model selection (``analysis.selection.model_selection``, rows with a
    ``measures`` column when merged): a sentence on what regret means and the table, best mean
    regret first; empty without one."""
    if selection is None or selection.empty:
        return ""
    from analysis.selection import RANDOM

    t = selection.sort_values(["mean_regret", "worst_regret"], na_position="last", kind="stable")

    def points(v):
        return "n/a" if pd.isna(v) else number(100 * v, 2)

    rows = ["<tr><th>chosen by</th><th>sign</th><th>groups</th><th>mean regret &darr;</th>"
            "<th>worst regret &darr;</th><th>picks the best</th></tr>"]
    for _, r in t.iterrows():
        names = tuple(r["measures"]) if "measures" in r.index else (str(r["measure"]),)
        label = ("at random" if r["measure"] == RANDOM else html.escape(", ".join(names)))
        if r["kind"] == "baseline" or any(m in baselines for m in names):
            label += " <small>(baseline)</small>"
        sign = "" if r["kind"] == "random" else _signs(r)
        best = "n/a" if pd.isna(r["p_best"]) else f"{100 * r['p_best']:.0f}%"
        rows.append(f"<tr><td style='text-align:left'>{label}</td><td>{sign}</td>"
                    f"<td>{int(r['n_groups'])}</td><td>{points(r['mean_regret'])}</td>"
                    f"<td>{points(r['worst_regret'])}</td><td>{best}</td></tr>")
    return ("<h2>Model selection without test labels</h2>"
            "<p><b>Regret</b> is the test accuracy lost, in percentage points, by keeping the "
            "network a measure ranks best (smallest sign &times; measure) among networks that "
            "differ in one hyperparameter instead of the best of them; the measure reads no "
            "test label. The groups are the granulated Kendall's (configurations averaged over "
            "seeds); mean and worst over the groups; a tie in the measure counts the mean of "
            "the tied networks; at random: the mean over each group's networks, exactly. "
            "Picks the best: the share of groups where the choice is a best network (where "
            "the measure ties, the share of the tied networks that are best) "
            "(<code>analysis.selection.model_selection</code>).</p>"
            + scrolls("<table class='stats'>" + "".join(rows) + "</table>"))


def seeds_html(few_seeds: int | None) -> str:
    """The note that a handful of seeds makes the intervals rough; empty otherwise."""
    if few_seeds is None:
        return ""
    return (f"<p><b>Note:</b> {few_seeds} seeds give the seed bootstrap only a handful of "
            "distinct resamples; read the intervals as rough. The paper uses 8 seeds.</p>")


def mixed_html(mixed) -> str:
    """The warning that some measures' columns mix versions or settings (the report ranks them
    as they are: ``analysis.load.mixed_note``, a sentence each); empty when none does."""
    if not mixed:
        return ""

    def code(text: str) -> str:  # `a command` as <code>
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))

    return ("<p class='warn'><b>Measure values computed under other settings or versions than "
            "asked for.</b> The statistics, ranks and figures below use them as they are:<br>"
            + "<br>".join(code(m) for m in mixed) + "</p>")


def valueless_html(valueless) -> str:
    """The warning that some measures have no value on any passing trial (left out of the
    statistics and the ranking), each with its most common reason; empty when none."""
    if not valueless:
        return ""
    rows = "<br>".join(f"<code>{html.escape(m)}</code>: {html.escape(why)} (on all {n} passing "
                       "trials)" for m, n, why in valueless)
    return ("<p class='warn'><b>Measures without a value on any passing trial</b> (not ranked; "
            "<code>analysis.load_measures</code> has each trial's error):<br>" + rows + "</p>")


def render(r: Report) -> str:
    """The report page: header and caveats, configuration, ranking, statistics, figures."""
    status = ", ".join(f"{v} {k}" for k, v in r.statuses.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Sweep report: {html.escape(r.location)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table.stats{border-collapse:collapse;font-size:13px}table.stats td,table.stats th"
        "{border:1px solid #ccc;padding:3px 6px;text-align:right}figure{margin:1.5em 0}"
        "img{max-width:100%}figcaption{font-size:14px;color:#333}"
        ".warn{background:#fff3cd;border:1px solid #e0c36a;padding:6px 10px}"
        ".wide{overflow-x:auto;max-width:100%}.ci{white-space:nowrap}</style></head><body>",
        f"<h1>Sweep report</h1><p><code>{html.escape(r.location)}</code>: {r.n_trials} trials "
        f"({html.escape(status)}). Figures and statistics use the {r.n_fit} ok trials at train "
        f"accuracy {at_least(r.train_acc, '&ge;')} "
        "(<code>analysis.filters.fits_training_set</code>).</p>",
        mixed_html(r.mixed),
        valueless_html(r.valueless),
        filter_html(r.filter),
        unfit_html(r.unfit, r.train_acc),
        config_summary_html(r.config),
        ranking_html(r.merged if len(r.merged) else r.ranking, r.rank_by, r.ranked,
                     "sign_errors" in r.figures and bool(sign_errors_note(r)),
                     r.baselines, ranking_figure_html(r) + ties_html(r)),
        *[figure_html(n, r.figures[n], note=sign_errors_note(r) if n == "sign_errors" else "")
          for n in RANKING_FIGURES[1:] if n in r.figures],
        selection_html(r.selection, r.baselines),
        "<h2>Statistics against the generalization gap</h2>",
        f"<p>Value [95% bootstrap interval over {r.n_boot} resamples of seeds, or of trials when "
        "the sweep has a single seed] of each statistic of <i>sign &times; measure</i> against "
        "the gap; configurations are averaged over seeds; an environment is a pair of "
        "configurations that differ in one hyperparameter. n: what each rests on. &uarr;: "
        "larger is better, &darr;: smaller is better (column <code>better</code>); &dagger;: an "
        "interval resampled over fewer than 5 seeds, a handful of distinct resamples (column "
        "<code>few_seeds</code>); baselines: "
        + ", ".join(f"<code>{b}</code>" for b in r.baselines) + " (column <code>baseline</code>)."
        + (" The same table: <code>statistics.csv</code>, <code>statistics.parquet</code>."
           if len(r.table) else "") + "</p>",
        statistics_list(r.noise_filter),
        seeds_html(r.few_seeds),
        stats_html(r.table, r.baselines),
        "<h2>Figures</h2>",
    ]
    parts += [figure_html(name, path, r.captions.get(name, ())) for name, path in r.figures.items()
              if name not in RANKING_FIGURES]
    parts += [f"<p>{html.escape(n)}</p>" for n in r.notes]
    missing = [n for n in CAPTIONS if n not in r.figures and n not in RANKING_FIGURES]
    if missing:
        parts.append("<p>Not drawn (no data for them in this sweep): "
                     + ", ".join(html.escape(CAPTIONS[n].split(":")[0]) for n in missing) + ".</p>")
    parts.append(f"<p><small>Made in {r.seconds:.1f} s.</small></p></body></html>")
    return "\n".join(parts)
