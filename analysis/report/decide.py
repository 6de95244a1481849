"""What the report says, as data: the counts, the caveats, the configuration, the measures and
their ranking (``Report``), decided from the results table, the statistics table and the sweep
directory; ``analysis.report.render`` turns it into HTML and knows nothing of the data.

Only the trials that fit their training set enter the figures and statistics
(:func:`analysis.filters.fits_training_set`, threshold ``train_acc``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.figures import value_label
from analysis.filters import fits_training_set
from analysis.load import mixed_note, outdated_note
from analysis.stats.equivalent import merge_equivalent
from analysis.stats.registry import RANK_BY, REGISTRY
from workers.results.commands import sweep_command
from workers.results.hyperparameters import SPACE
from workers.results.layout import SWEEP_FILE

# Judged against the generalization gap besides every measure of the sweep (the registry's,
# workers.measures): Fig. 1's two baselines, which the paper shows do not track the gap.
BASELINES = ("n_params", "train_loss")
# What each figure's caption reports of this sweep's data: (measure, what it is) whose Kendall
# tau with the gap (the statistics table's group "all") the caption states
CAPTION_MEASURES = {
    "fig1_params_loss": (("n_params", "number of parameters"), ("train_loss", "train loss")),
    "fig5_jacobian_gap": (("jacobian_norm_test", "Jacobian norm"),),
    "fig8_transitions_gap": (("transitions_test", "transitions"),),
}
LOWER_THRESHOLDS = (0.99, 0.95, 0.9, 0.8)
# hyperparameters whose space values full-batch L-BFGS does not read, with the configuration
# key its trials take the value from (None: null): lr from train.lbfgs.lr, batch_size null
LBFGS_UNREAD = {h.name: h.lbfgs for h in SPACE if h.minibatch_only}
PER_POINT_TRIALS = 500  # Fig. 6 draws the test points of at most this many trials
FEW_SEEDS_NOTE = 5  # fewer distinct seeds than this (and at least 2): the intervals are rough
# the model selection's numbers two equivalent measures must share to be one row
SELECTION_NUMBERS = ("n_groups", "mean_regret", "worst_regret", "p_best")


# ---------------------------------------------------------------------------------------------
# Which trials and measures


def pairs_fitting(pairs: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Pairs whose two trials are both ``ok`` at train accuracy >= threshold (the filter of
    :func:`fits_training_set`, applied to both sides)."""
    keep = pd.Series(True, index=pairs.index)
    for side in ("a", "b"):
        side_df = pd.DataFrame({"status": pairs[f"status_{side}"], "train_acc": pairs[f"train_acc_{side}"]})
        keep &= pairs.index.isin(fits_training_set(side_df, threshold).index)
    return pairs[keep]


def per_point_trials(fit: pd.DataFrame, limit: int = PER_POINT_TRIALS, seed: int = 0) -> list[str]:
    """The trials whose test points Fig. 6 draws: all passing trials with per-point Jacobian
    norms, or a seeded sample of ``limit`` of them (the per-point rows of 10^5 trials would not
    fit in memory)."""
    has = fit[fit["jacobian_points_test"].fillna(0) > 0] if "jacobian_points_test" in fit else fit
    ids = sorted(has["trial_id"])
    if len(ids) > limit:
        import numpy as np

        ids = sorted(np.random.default_rng(seed).choice(ids, size=limit, replace=False))
    return list(ids)


def seeds_per_config(fit: pd.DataFrame, hyperparameters) -> int:
    """The largest number of seeds any configuration of ``fit`` has (1 without a seed column)."""
    if fit.empty or "seed" not in fit:
        return 1
    hps = [h for h in hyperparameters if h != "seed" and h in fit]
    if not hps:
        return int(fit["seed"].nunique())
    return int(fit.groupby(hps, dropna=False)["seed"].nunique().max())


@dataclass(frozen=True)
class SinglePairs:
    """How much of the sign-errors rests on one run per configuration, over the passing trials
    with a gap: ``configs`` configurations, ``one_run`` of them with a single trial (one
    seed); ``environments`` pairs of configurations that differ in one hyperparameter
    (``analysis.stats.sign_errors``), ``single`` of them a single pair of runs (one trial on
    each side), whose sign-error is therefore 0 or 1 (0.5 on a tie)."""

    configs: int
    one_run: int
    environments: int
    single: int


def single_pair_environments(fit: pd.DataFrame, hyperparameters) -> SinglePairs:
    """``SinglePairs`` of ``fit`` (trial rows; the rows without ``gen_gap`` left out),
    configurations keyed by ``hyperparameters`` (the seed excluded; a null is a value of its
    own, as the statistics key them). Counted per hyperparameter h from the sizes of the
    groups of configurations that agree on every other one: a group of k configurations, s of
    them with one trial, holds k(k - 1)/2 environments, s(s - 1)/2 of them single pairs."""
    rows = fit.dropna(subset=["gen_gap"]) if "gen_gap" in fit else fit
    hps = [h for h in hyperparameters if h != "seed" and h in rows]
    if rows.empty:
        return SinglePairs(0, 0, 0, 0)
    if not hps:
        return SinglePairs(1, int(len(rows) == 1), 0, 0)
    configs = rows.groupby(hps, dropna=False).size().rename("runs").reset_index()
    configs["one"] = (configs["runs"] == 1).astype(int)
    environments = single = 0
    for h in hps:
        others = [o for o in hps if o != h]
        groups = (configs.groupby(others, dropna=False)["one"].agg(["size", "sum"]) if others
                  else pd.DataFrame({"size": [len(configs)], "sum": [configs["one"].sum()]}))
        k, s = groups["size"].to_numpy(dtype=int), groups["sum"].to_numpy(dtype=int)
        environments += int((k * (k - 1) // 2).sum())
        single += int((s * (s - 1) // 2).sum())
    return SinglePairs(len(configs), int(configs["one"].sum()), environments, single)


def supports(table: pd.DataFrame, statistic: str, group: str = "all") -> dict[str, int]:
    """What ``statistic`` rests on per measure in ``group`` of the statistics table (its
    ``n_used``: trials, groups, ordered pairs or environments); empty without a table."""
    if table is None or table.empty:
        return {}
    t = table[(table["group"] == group) & (table["statistic"] == statistic)]
    return {str(m): int(n) for m, n in zip(t["measure"], t["n_used"])}


@dataclass(frozen=True)
class Tie:
    """Rows of the merged ranking that share a rank: ``rank``, the value of the ranking
    statistic and its interval when every tied row has the same one (else NaN), ``names`` each
    tied row's measures, ``n_used`` the smallest and largest support of the tied measures."""

    rank: int
    value: float
    ci_low: float
    ci_high: float
    names: tuple[tuple[str, ...], ...]
    n_used: tuple[int, int]


def ranking_ties(merged: pd.DataFrame, rank_by: str, used: dict[str, int]) -> list[Tie]:
    """The ties of the ranking ``merged`` (``merge_equivalent``'s rows: one per group of
    equivalent measures) by ``rank_by``: every rank shared by two or more rows, best first."""
    if merged.empty or "rank" not in merged:
        return []
    out = []
    for rank, rows in merged.dropna(subset=["rank"]).groupby("rank", sort=True):
        if len(rows) < 2:
            continue
        lows, highs = rows[f"{rank_by}_low"], rows[f"{rank_by}_high"]
        same = lows.nunique(dropna=False) == 1 and highs.nunique(dropna=False) == 1
        n = [used[m] for ms in rows["measures"] for m in ms if m in used] or [0]
        out.append(Tie(int(rank), float(rows[rank_by].iloc[0]),
                       float(lows.iloc[0]) if same else math.nan,
                       float(highs.iloc[0]) if same else math.nan,
                       tuple(tuple(ms) for ms in rows["measures"]), (min(n), max(n))))
    return out


def merged_ranking(ranking: pd.DataFrame, equivalent: Sequence[Sequence[str]],
                   rank_by: str) -> pd.DataFrame:
    """The ranking as the page shows it: ``ranking`` (``ranking_table``, one row per measure)
    with each group of ``equivalent`` measures as one row (``merge_equivalent`` on the
    statistics the ranking shows, ``ranking_statistics``), its ``rank`` recomputed among the
    rows (a merged row counts once; tied rows share the best, as ``ranking_table``'s ranks)."""
    merged = merge_equivalent(ranking, equivalent, ranking_statistics(rank_by)) \
        if len(ranking) else ranking
    if len(merged):
        merged["rank"] = merged["rank"].astype("Float64").rank(method="min").astype("Int64")
    return merged


def ranking_rows(ranking: pd.DataFrame, merged: pd.DataFrame) -> pd.DataFrame:
    """``ranking.csv``: ``ranking`` (one row per measure, its ``rank`` among the measures)
    with, after ``rank``, ``row_rank``, the rank of the page's row that holds the measure
    (``merged``: ``merged_ranking``), and ``row``, that row's measures joined by ", " as the
    page's ranking table names it (with their signs in its ``sign`` column; the figure writes
    "-name" for sign -1); a measure the page does not show has both null."""
    out = ranking.copy()
    at = {m: (r, ", ".join(ms)) for ms, r in zip(merged.get("measures", []),
                                                 merged.get("rank", [])) for m in ms}
    where = out.columns.get_loc("rank") + 1 if "rank" in out else 0
    out.insert(where, "row_rank", pd.array([at.get(m, (pd.NA,))[0] for m in out["measure"]],
                                           dtype="Int64"))
    out.insert(where + 1, "row", [at.get(m, (None, None))[1] for m in out["measure"]])
    return out


def ranking_statistics(rank_by: str) -> list[str]:
    """The statistics the ranking shows, ``rank_by`` first, then the registry's summary
    statistics (``Statistic.summary``) in registry order."""
    return [rank_by] + [s.name for s in REGISTRY.values() if s.summary and s.name != rank_by]


# ---------------------------------------------------------------------------------------------
# Caveats


@dataclass(frozen=True)
class FilterAdvice:
    """Few trials fit their training set: ``n_fit`` of ``n_ok`` ok trials at ``train_acc``;
    ``at_lower`` (threshold, trials that pass) for each lower threshold; ``command`` the
    ``sweep report`` at the suggested one (None when no lower threshold lets more in)."""

    n_fit: int
    n_ok: int
    train_acc: float
    at_lower: tuple[tuple[float, int], ...]
    command: str | None


def filter_advice(df: pd.DataFrame, train_acc: float, sweep_dir) -> FilterAdvice | None:
    """Advice when few trials pass the train-accuracy filter (some ok trials fall short, and
    fewer than 10 or fewer than half of them pass): how many pass at lower thresholds, and the
    command that rebuilds the report at the highest of them that keeps half of the ok trials,
    else the highest that lets the most in (none when no lower threshold lets more in). None
    otherwise."""
    ok = int((df["status"] == "ok").sum())
    n = len(fits_training_set(df, train_acc))
    if ok == 0 or n == ok or (n >= 10 and n >= ok / 2):
        return None
    lower = [t for t in LOWER_THRESHOLDS if t < train_acc]
    counts = [(t, len(fits_training_set(df, t))) for t in lower]
    most = max((c for _, c in counts), default=n)
    best = next((t for t, c in counts if c >= ok / 2), None)
    if best is None:
        best = next((t for t, c in counts if c == most), None) if most > n else None
    command = None if best is None else sweep_command("report", sweep_dir, "--train-acc",
                                                      f"{best:g}")
    return FilterAdvice(n, ok, train_acc, tuple(counts), command)


def value_counts(column: pd.Series) -> dict[str, int]:
    """Trials per value of ``column``, null counted as a value of its own ("null"), keyed by
    :func:`value_label`, in the order of first appearance."""
    counts: dict[str, int] = {}
    for v in column:
        key = value_label(v)
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass(frozen=True)
class UnfitValues:
    """``left_out``: (hyperparameter, value, ok trials) of the values none of whose ok trials
    fit; ``per_value``: for each hyperparameter of 2 to 10 values where the filter leaves some
    out, (hyperparameter, ((value, fitting trials, ok trials), ...)), given only when some ok
    trials do not fit; ``lbfgs``: (hyperparameter, (value, ...)) of the values the L-BFGS
    trials take of a hyperparameter whose space values L-BFGS does not read
    (``LBFGS_UNREAD``: its ``lr`` is ``train.lbfgs.lr``, its ``batch_size`` null), among the
    values listed."""

    left_out: tuple[tuple[str, str, int], ...] = ()
    per_value: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...] = ()
    lbfgs: tuple[tuple[str, tuple[str, ...]], ...] = ()


def unfit_values(df: pd.DataFrame, train_acc: float, hyperparameters) -> UnfitValues:
    """The hyperparameter values none of whose ok trials fit their training set (so the
    statistics know nothing of them), e.g. plain SGD at a small learning rate, and the fitting
    and ok trials per value of the few-valued hyperparameters. A null value (L-BFGS's batch
    size) is a value of its own, counted as such."""
    ok = df[df["status"] == "ok"]
    fit = fits_training_set(df, train_acc)
    left_out = []
    for h in hyperparameters:
        if h not in ok or ok[h].nunique(dropna=False) > 50:
            continue
        fitting = value_counts(fit[h])
        for v, n in sorted(value_counts(ok[h]).items(), key=lambda kv: -kv[1]):
            if v not in fitting:
                left_out.append((h, v, n))
    per = []  # where the filter bites: fitting / ok trials per value of a few-valued factor
    for h in hyperparameters:
        if h not in ok or not 2 <= ok[h].nunique(dropna=False) <= 10:
            continue
        fitting = value_counts(fit[h])
        counts = tuple((v, fitting.get(v, 0), n) for v, n in value_counts(ok[h]).items())
        if any(f < n for _, f, n in counts):
            per.append((h, counts))
    per = tuple(per) if len(fit) < len(ok) else ()
    listed = {(h, v) for h, v, _ in left_out} | {(h, v) for h, c in per for v, _, _ in c}
    return UnfitValues(tuple(left_out), per, lbfgs_values(ok, listed))


def lbfgs_values(ok: pd.DataFrame, listed) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Of the (hyperparameter, value) pairs ``listed`` (values as ``value_label`` writes
    them), those of a hyperparameter in ``LBFGS_UNREAD`` that the L-BFGS trials of ``ok``
    (``optimizer`` "lbfgs") take, per hyperparameter in ``LBFGS_UNREAD``'s order."""
    if "optimizer" not in ok:
        return ()
    out = []
    for h in LBFGS_UNREAD:  # (in declaration order)
        if h not in ok:
            continue
        labels = ok.loc[ok["optimizer"] == "lbfgs", h].map(value_label)
        values = tuple(v for v in dict.fromkeys(labels) if (h, v) in listed)
        if values:
            out.append((h, values))
    return tuple(out)


def seeds_caveat(fit: pd.DataFrame) -> int | None:
    """The number of distinct seeds when it gives the seed bootstrap only a handful of
    distinct resamples (2 to 4), else None."""
    n = fit["seed"].nunique() if "seed" in fit else 0
    return int(n) if 2 <= n < FEW_SEEDS_NOTE else None


# ---------------------------------------------------------------------------------------------
# The sweep's configuration


@dataclass(frozen=True)
class ConfigSummary:
    """The sweep's configuration for the report's header (``sweep.json``): ``space`` varied and
    fixed keys, the plan, and ``launch`` (the command that launches the same sweep, whether it
    is exact) when the caller can say it; ``settings``: the measures' settings that differ
    from their defaults ("name k=v, ...")."""

    name: object
    dataset: object
    trials: object
    sampler: object
    grid: tuple[str, ...]
    steps: object
    varied: str
    fixed: str
    launch: tuple[str, bool] | None
    settings: tuple[str, ...]


def config_summary(st, launch_command: Callable[[dict], tuple[str, bool]] | None = None
                   ) -> ConfigSummary | None:
    """The header's configuration from ``st``'s ``sweep.json`` (None without one).
    ``launch_command(config)``: (the command that composes the stored sweep, whether it is
    exact); the command line passes ``sweep.show.launch_command`` (composing a configuration
    is the sweep layer's), without it the header names no command."""
    try:
        config = json.loads(st.read_text(SWEEP_FILE))["config"]
    except (OSError, ValueError, KeyError):
        return None
    space = config.get("space", {})
    varied = ", ".join(f"{k} {v}" for k, v in space.items() if isinstance(v, list) and len(v) > 1)
    fixed = ", ".join(f"{k} {v[0]}" for k, v in space.items() if isinstance(v, list) and len(v) == 1)
    plan = config.get("plan", {})
    return ConfigSummary(
        config.get("name"), config.get("dataset", {}).get("name"), config.get("trials"),
        plan.get("sampler"), tuple(plan.get("grid") or ()), config.get("train", {}).get("steps"),
        varied, fixed, launch_command(config) if launch_command is not None else None,
        tuple(changed_settings(st)))


def changed_settings(st) -> list[str]:
    """The measures' settings the report's values have (``measures.json``: the settings last
    asked for) where they differ from the measure's registered defaults: "name k=v, ..." per
    measure, by name; empty when all are the defaults or nothing is recorded."""
    from workers.measures import REGISTRY as MEASURES
    from workers.results.measure_table import read_selection

    diffs = []
    for name, sel in sorted(read_selection(st).items()):
        if name not in MEASURES:
            continue
        defaults = MEASURES[name].settings
        changed = [f"{k}={v}" for k, v in sorted(sel.get("settings", {}).items())
                   if k in defaults and v != defaults[k]]
        if changed:
            diffs.append(f"{name} {', '.join(changed)}")
    return diffs


# ---------------------------------------------------------------------------------------------
# What the captions say of the data


@dataclass(frozen=True)
class CaptionFact:
    """Kendall's tau of one measure with the gap over ``n_trials`` passing trials (the
    statistics table's group "all"), with its interval (NaN without one)."""

    what: str
    tau: float
    ci_low: float
    ci_high: float
    n_trials: int


def caption_facts(name: str, table: pd.DataFrame | None) -> list[CaptionFact]:
    """What figure ``name`` shows of this sweep (``CAPTION_MEASURES``), from the statistics
    table; empty without them."""
    if table is None or table.empty or name not in CAPTION_MEASURES:
        return []
    t = table[(table["group"] == "all") & (table["statistic"] == "kendall")].set_index("measure")
    out = []
    for measure, what in CAPTION_MEASURES[name]:
        if measure not in t.index or pd.isna(t.loc[measure, "value"]):
            continue
        r = t.loc[measure]
        out.append(CaptionFact(what, float(r["value"]), float(r["ci_low"]), float(r["ci_high"]),
                               int(r["n_trials"])))
    return out


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """Everything the report page says. ``location``: the sweep directory as named; counts of
    all trials (``n_trials``, ``statuses``) and of those that fit (``n_fit`` at ``train_acc``);
    the caveats (``filter``, ``unfit``, ``few_seeds``: the distinct seeds when only 2 to 4,
    ``one_seed``: every configuration has a single seed; ``single_pairs``: the environments
    that rest on one pair of runs, ``SinglePairs``); ``config``; the measures ranked
    (``ranking``, by ``rank_by``, showing ``ranked``) and the statistics table (``table``,
    ``n_boot`` resamples, ``noise_filter``); ``merged``: the ranking with each group of
    measures that rank the trials identically as one row (``measures`` names them all;
    ``analysis.stats.equivalent``; ``rank`` among its rows), ``ties`` its shared ranks and ``used`` what the ranking
    statistic rests on per measure (groups, environments, ...); ``n_seeds`` the distinct
    seeds of the passing trials; ``selection``: the label-free model selection
    (``analysis.selection.model_selection``, empty without one); ``figures`` drawn (name -> PNG
    path, in drawing order) with what their captions say of the data (``captions``);
    ``notes`` about figures; ``seconds`` it took; ``mixed``: a sentence per measure whose values
    were computed under several versions or settings (``analysis.load.mixed_note``);
    ``valueless``: the measures without a value on any passing trial, with why
    (``valueless_measures``)."""

    location: str
    n_trials: int
    statuses: dict[str, int]
    n_fit: int
    train_acc: float
    filter: FilterAdvice | None
    unfit: UnfitValues
    config: ConfigSummary | None
    ranking: pd.DataFrame
    rank_by: str
    ranked: list[str]
    one_seed: bool
    table: pd.DataFrame
    n_boot: int
    noise_filter: bool
    few_seeds: int | None
    baselines: tuple[str, ...] = BASELINES
    figures: dict[str, Path] = field(default_factory=dict)
    captions: dict[str, list[CaptionFact]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    merged: pd.DataFrame = field(default_factory=pd.DataFrame)
    ties: list[Tie] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    valueless: tuple[tuple[str, int, str], ...] = ()
    n_seeds: int = 0
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    single_pairs: SinglePairs | None = None
    mixed: tuple[str, ...] = ()  # measures whose values mix versions or settings, or are not
    # what was asked for last, or of older versions: a sentence each


def _names_as_ranked(selection: pd.DataFrame, groups) -> pd.DataFrame:
    """The model-selection rows' merged names in the order the ranking gives them (the
    selection merges in its own row order: "params, n_params" beside the ranking's "n_params,
    params"), their signs with them."""
    order = {frozenset(g): tuple(g) for g in groups}
    out = selection.copy()
    names, signs = [], []
    for i, ms in enumerate(out["measures"]):
        want = order.get(frozenset(ms), tuple(ms))
        names.append(want)
        if "signs" in out.columns:
            by = dict(zip(ms, out["signs"].iloc[i]))
            signs.append(tuple(by[m] for m in want))
    out["measures"] = names
    if "signs" in out.columns:
        out["signs"] = signs
    return out


def valueless_measures(st, fit: pd.DataFrame, measures) -> tuple[tuple[str, int, str], ...]:
    """(measure, passing trials, the most common reason) of each of ``measures`` (columns of
    the results) without a value on any of the passing trials ``fit``: the statistics and the
    ranking leave it out, and the page says why (a measure that raised on every trial was
    otherwise a row of n/a). Only measures with stored values there (asked for and run); the
    reason is their most common error's first line (``analysis.load_measures``)."""
    from analysis.load import load_measures

    names = [m for m in measures if m in fit.columns and len(fit) and fit[m].isna().all()]
    if not names:
        return ()
    try:
        stored = load_measures(st, measures=names)
    except Exception:  # (the reasons are a courtesy: the page is made without them)
        stored = pd.DataFrame(columns=["trial_id", "measure", "error"])
    stored = stored[stored["trial_id"].isin(set(fit["trial_id"]))]
    out = []
    for m in names:
        if not (stored["measure"] == m).any():  # (never measured here: a legacy column)
            continue
        errors = stored.loc[stored["measure"] == m, "error"].dropna().astype(str)
        errors = errors.map(lambda e: e.strip().splitlines()[0] if e.strip() else "")
        errors = errors[errors != ""]
        why = errors.value_counts().index[0] if len(errors) else "no value"
        out.append((m, len(fit), why))
    return tuple(out)


def decide(st, df: pd.DataFrame, fit: pd.DataFrame, train_acc: float, table: pd.DataFrame,
           figures: dict[str, Path], n_boot: int, seconds: float, noise_filter: bool = False,
           ranking: pd.DataFrame | None = None, rank_by: str = RANK_BY,
           notes: Sequence[str] = (), sweep_dir=None, hyperparameters=(),
           launch_command: Callable[[dict], tuple[str, bool]] | None = None,
           equivalent: Sequence[Sequence[str]] = (),
           selection: pd.DataFrame | None = None) -> Report:
    """The ``Report`` of the sweep in ``st`` (named ``sweep_dir`` in commands) from its results
    ``df``, the trials that fit (``fit``), the statistics and ranking tables, the groups of
    measures that rank the trials identically (``equivalent``:
    ``analysis.stats.equivalent_measures``), the model selection and the figures drawn."""
    counts = df["status"].value_counts().to_dict()
    ranking = ranking if ranking is not None else pd.DataFrame()
    merged = merged_ranking(ranking, equivalent, rank_by)
    used = supports(table, rank_by)
    if selection is not None and len(selection):  # the ranking's rows, where the regrets agree
        same = [ms for ms in merged["measures"] if len(ms) > 1] if len(merged) else []
        selection = merge_equivalent(selection, same, columns=SELECTION_NUMBERS)
        selection = _names_as_ranked(selection, same)
    return Report(
        location=str(st), n_trials=len(df), statuses=dict(sorted(counts.items())),
        n_fit=len(fit), train_acc=train_acc,
        filter=filter_advice(df, train_acc, sweep_dir if sweep_dir is not None else st),
        unfit=unfit_values(df, train_acc, hyperparameters),
        config=config_summary(st, launch_command),
        ranking=ranking, rank_by=rank_by,
        ranked=ranking_statistics(rank_by),
        one_seed=seeds_per_config(fit, hyperparameters) <= 1, table=table, n_boot=n_boot,
        noise_filter=noise_filter, few_seeds=seeds_caveat(fit), figures=dict(figures),
        captions={name: caption_facts(name, table) for name in figures},
        notes=[n for n in notes if n], seconds=seconds, merged=merged,
        ties=ranking_ties(merged, rank_by, used), used=used,
        n_seeds=int(fit["seed"].nunique()) if "seed" in fit else 0,
        selection=selection if selection is not None else pd.DataFrame(),
        single_pairs=single_pair_environments(fit, hyperparameters),
        valueless=valueless_measures(st, fit, df.attrs.get("measures", [])),
        mixed=tuple(mixed_note(m, kinds, sweep_dir if sweep_dir is not None else st)
                    for m, kinds in sorted(df.attrs.get("mixed_settings", {}).items()))
        + ((outdated_note(df.attrs["outdated"], sweep_dir if sweep_dir is not None else st),)
           if df.attrs.get("outdated") else ()))
