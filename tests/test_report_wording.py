"""Wording of the report found in review: the sign-error figure says how many environments rest
on one pair of runs whenever any do (not only when every configuration has one seed); the
ranking's ties and the one-seed note are said once on the page; the conditional MI's n counts
each configuration with itself; the sign-error figure marks which way is better. Counts are
checked against enumerations written here."""

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis.filters import fits_training_set
from analysis.load import load_results
from analysis.report import make_report
from analysis.report.decide import single_pair_environments
from analysis.stats import sign_error
from test_report import _cut, _drawn_texts, _Page, _row, undrawn_figures
from workers.results.layout import SWEEP_FILE
from workers.results.record import write_trial

VARIED = ("width", "depth", "activation")


def unbalanced_sweep(d, rng, two_seeds=lambda width: width == 256):
    """3 widths x 2 depths x 2 activations on digits; a configuration has seeds 1 and 2 when
    ``two_seeds(width)``, else seed 1 only (the default: 8 configurations of one seed, 4 of
    two). Every trial fits."""
    rows, n = [], 0
    for width, depth, act in itertools.product((16, 64, 256), (2, 4), ("relu", "tanh")):
        for seed in ((1, 2) if two_seeds(width) else (1,)):
            n += 1
            jac = float(rng.lognormal(0.0, 0.7))
            gap = 0.05 + 0.1 * math.log1p(jac) + float(rng.normal(0, 0.03))
            rows.append(_row(f"t{n:03d}", dataset="digits", width=width, depth=depth,
                             activation=act, seed=seed, train_acc=1.0, test_acc=1.0 - gap,
                             gen_gap=gap, jacobian_norm_test=jac, jacobian_norm_train=0.8 * jac,
                             transitions_test=10 * jac + width / 8 + float(rng.normal(0, 1)),
                             n_params=64 * width + (depth - 2) * width ** 2 + width * 10))
    for r in rows:
        write_trial(d, r)
    (d / SWEEP_FILE).write_text('{"identity_hash": "x", "config": {}}')
    return rows


def enumerate_environments(rows):
    """(configurations, of them with one run, environments, of them single pairs of runs) by
    looking at every pair of configurations of ``rows``."""
    runs = {}
    for r in rows:
        key = tuple(r[h] for h in VARIED)
        runs[key] = runs.get(key, 0) + 1
    envs = single = 0
    for a, b in itertools.combinations(runs, 2):
        if sum(x != y for x, y in zip(a, b)) == 1:
            envs += 1
            single += runs[a] == 1 and runs[b] == 1
    return len(runs), sum(v == 1 for v in runs.values()), envs, single


def _report(d, monkeypatch, drawn: bool = True):
    """(page, {file name: Figure}, drawn texts) of ``make_report(d, n_boot=0)``; without
    ``drawn``, the figures are made but not drawn (``undrawn_figures``: no texts)."""
    import matplotlib.figure

    if not drawn:
        figs = undrawn_figures(monkeypatch)
        make_report(d, n_boot=0)
        return (d / "report" / "report.html").read_text(), figs, []
    texts = _drawn_texts(monkeypatch)  # (patches savefig: record the figures around it)
    figs = {}
    real = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *a, **kw):
        figs[str(fname).rsplit("/", 1)[-1]] = self
        return real(self, fname, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    make_report(d, n_boot=0)
    return (d / "report" / "report.html").read_text(), figs, texts


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    d = tmp_path_factory.mktemp("wording") / "s"
    rows = unbalanced_sweep(d, np.random.default_rng(11))
    with pytest.MonkeyPatch.context() as mp:
        page, figs, texts = _report(d, mp)
    return d, rows, page, figs, texts


# ---------------------------------------------------------------------------------------------
# 1. The sign-error figure's note fires whenever some environment rests on one pair of runs


def test_single_pair_environments_match_an_enumeration_and_the_sign_error():
    from analysis.stats import hyperparameter_columns

    for two_seeds in (lambda w: w == 256, lambda w: w != 16, lambda w: False, lambda w: True):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as t:
            rows = unbalanced_sweep(Path(t) / "s", np.random.default_rng(2), two_seeds)
            df = load_results(Path(t) / "s")
        hps = hyperparameter_columns(df, exclude=["jacobian_norm_test", "jacobian_norm_train",
                                                   "transitions_test", "gen_gap"])
        got = single_pair_environments(fits_training_set(df), hps)
        assert (got.configs, got.one_run, got.environments, got.single) == \
            enumerate_environments(rows)
        se = sign_error(df, "jacobian_norm_test", hyperparameters=hps)
        assert sum(se.n_environments.values()) == got.environments
    assert got.single == 0  # the last plan (every configuration two seeds) has none


def test_an_unbalanced_plan_gets_the_note_with_its_counts(unbalanced):
    d, rows, page, figs, _ = unbalanced
    n_cfg, n_one, n_env, n_single = enumerate_environments(rows)
    assert (n_cfg, n_one) == (12, 8) and 0 < n_single < n_env
    ranking = pd.read_csv(d / "report" / "ranking.csv")
    shown = ranking.dropna(subset=["sign_error"]).groupby("row", sort=False).first()
    ones = int((shown["robust_sign_error"] == 1.0).sum())
    ax = figs["sign_errors.png"].axes[0]
    note = " ".join(ax.get_xlabel().split())
    assert (f"{n_single} of {n_env} environments rest on a single pair of runs" in note
            and f"as it is for {ones} of {len(shown)} rows" in note), note
    # not every configuration has one seed: the worst environment is drawn, one cross a row
    crosses, = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert sorted(crosses.get_xdata()) == sorted(shown["robust_sign_error"])
    caption = next(c for c in _Page(page).captions if c.startswith("The measures' sign-errors"))
    assert (f"{n_one} of the {n_cfg} configurations have one seed, so {n_single} of the "
            f"{n_env} environments are a single pair of runs") in caption
    assert f"is for {ones} of the {len(shown)} rows" in caption


def test_a_balanced_plan_gets_no_note(tmp_path, monkeypatch):
    d = tmp_path / "s"
    unbalanced_sweep(d, np.random.default_rng(3), lambda w: True)
    page, figs, _ = _report(d, monkeypatch, drawn=False)  # (the page and the figure's label)
    assert "single pair of runs" not in page
    assert "single pair" not in figs["sign_errors.png"].axes[0].get_xlabel()


# ---------------------------------------------------------------------------------------------
# 2. and 3. The ties and the one-seed note are said once


def _ranking_report(tmp_path, drawn: bool):
    from test_ranking import _ranking_with_ties

    from analysis.report.decide import Report, UnfitValues, ranking_ties

    merged = _ranking_with_ties()
    used = {m: 12 for ms in merged["measures"] for m in ms}
    png = tmp_path / "ranking.png"
    png.write_bytes(b"\x89PNG")
    return Report(location="x", n_trials=24, statuses={"ok": 24}, n_fit=24, train_acc=1.0,
                  filter=None, unfit=UnfitValues(), config=None, ranking=merged,
                  rank_by="granulated_kendall", ranked=["granulated_kendall"], one_seed=False,
                  table=pd.DataFrame(), n_boot=0, noise_filter=False, few_seeds=None,
                  figures={"ranking": png} if drawn else {}, merged=merged,
                  ties=ranking_ties(merged, "granulated_kendall", used), used=used, n_seeds=1)


@pytest.mark.parametrize("drawn", [True, False])
def test_the_ties_are_listed_once(tmp_path, drawn):
    from analysis.report.render import render

    page = render(_ranking_report(tmp_path, drawn))
    tie = "3 rows (4 measures) tie at 0.681 [-0.500, 0.889] on 12 groups"
    text = _Page(page)
    said = [t for t in text.paragraphs + text.captions if tie in t]
    assert len(said) == 1, said
    assert ("Ties:" in said[0]) != drawn  # in the figure's caption, or a box without it
    assert "Tied rows are not ordered by the data." in said[0]


def test_the_one_seed_note_is_on_the_page_once(tmp_path, monkeypatch):
    d = tmp_path / "s"
    rows = unbalanced_sweep(d, np.random.default_rng(4), lambda w: False)
    page, _, _ = _report(d, monkeypatch, drawn=False)  # (the page)
    text = _Page(page)
    blocks = text.paragraphs + text.captions
    about = [t for t in blocks if re.search(r"one seed|single pair|one pair of runs", t, re.I)
             and "robust_sign_error" in t]
    full = [t for t in about if "One seed per configuration" in t]
    assert len(full) == 1 and full[0].startswith("The measures' sign-errors"), about
    assert len(re.findall("One seed per configuration", page)) == 1
    # the ranking points to it instead of repeating it
    intro = text.paragraph("Every measure of the sweep")
    assert "see under the sign-error figure" in intro
    ranking_caption = next(c for c in text.captions if c.startswith("The measures ranked"))
    assert "one pair of runs" not in ranking_caption and "One seed" not in ranking_caption
    _, _, n_env, n_single = enumerate_environments(rows)
    assert n_single == n_env > 0  # every environment a single pair


# ---------------------------------------------------------------------------------------------
# 4. The conditional MI's n counts every configuration with itself


def test_the_conditional_mis_n_is_said_to_count_self_pairs(unbalanced):
    d, rows, page, _, _ = unbalanced
    n_cfg = len({tuple(r[h] for h in VARIED) for r in rows})
    item = next(t for t in re.findall(r"<li>(.*?)</li>", page) if "conditional_mi" in t)
    assert "(i, i)" in item and "n = (configurations)\u00b2" in item and "PGDL" in item
    table = pd.read_csv(d / "report" / "statistics.csv")
    cmi = table[(table["statistic"] == "conditional_mi") & (table["group"] == "all")]
    assert len(cmi) and (cmi["n_used"] == n_cfg ** 2).all() and (cmi["n_configs"] == n_cfg).all()
    stats = next(t for t in _Page(page).tables if t[0][0] == "group")
    col = next(i for i, c in enumerate(stats[0]) if c.startswith("conditional_mi"))
    cells = [r[col] for r in stats[1:] if len(r) == len(stats[0]) and "n=" in r[col]]
    assert cells and {re.search(r"n=(\d+)", c).group(1) for c in cells} == {str(n_cfg ** 2)}


# ---------------------------------------------------------------------------------------------
# 5. The sign-error figure marks the better direction, as the ranking figure does


def test_the_sign_error_figure_marks_the_better_direction(unbalanced):
    _, _, _, figs, texts = unbalanced
    ax = figs["sign_errors.png"].axes[0]
    marks = [t for t in ax.texts if "better" in t.get_text()]
    assert [t.get_text() for t in marks] == ["\u2190 better"]  # smaller is better
    # below the last row, where no row's point is, and inside the axes
    y = marks[0].get_position()[1]
    rows = [np.min(ln.get_ydata()) for ln in ax.get_lines() if ln.get_marker() in ("o", "s")]
    assert rows and ax.get_ylim()[0] < y < min(rows) - 0.5
    assert [c for c in _cut(texts) if "sign_errors" in c[0]] == []


# ---------------------------------------------------------------------------------------------
# 6. A window narrower than a table scrolls the table, never cuts its columns off


def test_every_table_scrolls_in_its_own_box_and_the_style_says_so(unbalanced):
    _, _, page, _, _ = unbalanced
    tables = re.findall(r"<table", page)
    boxed = re.findall(r"<div class='wide'>\s*<table", page)
    assert len(tables) >= 3 and len(boxed) == len(tables), (len(tables), len(boxed))
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert re.search(r"\.wide\{[^}]*overflow-x:auto", style), style
