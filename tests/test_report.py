"""The train-accuracy filter, seed means, the A.3 curves, every report figure from a synthetic
results set, and `sweep report` on it (the statistics file against scipy)."""

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as sps

from analysis import figures
from analysis.filters import fits_training_set
from analysis.load import load_results
from analysis.report import make_report
from sweep.cli import main
from workers.results.record import SUMMARY_COLUMNS, points_columns, write_trial
from workers.results.layout import SWEEP_FILE


def test_fits_training_set_keeps_ok_trials_at_the_threshold():
    df = pd.DataFrame({
        "trial_id": list("abcdef"),
        "status": ["ok", "ok", "ok", "failed", "ok", "diverged"],
        "train_acc": [1.0, 0.999, np.nan, 1.0, 0.95, 1.0],
    })
    assert list(fits_training_set(df)["trial_id"]) == ["a"]
    assert list(fits_training_set(df, 0.95)["trial_id"]) == ["a", "b", "e"]
    assert list(fits_training_set(df, 0.0)["trial_id"]) == ["a", "b", "e"]  # NaN never passes
    with pytest.raises(ValueError, match=r"allowed: a number in \[0, 1\]"):
        fits_training_set(df, 1.5)


def test_seed_means_are_means_and_standard_errors_over_seeds():
    base = dict(dataset="digits", train_size=None, random_labels=False, augment=False, width=8,
                depth=3, activation="relu", optimizer="lbfgs", lr=0.1, batch_size=None,
                init_scale=1.0, step_budget=100)
    df = pd.DataFrame([{**base, "seed": 1, "gen_gap": 0.1}, {**base, "seed": 2, "gen_gap": 0.3},
                       {**base, "seed": 3, "gen_gap": 0.8}, {**base, "width": 16, "seed": 1,
                                                             "gen_gap": 0.5}])
    m = figures.seed_means(df, ["gen_gap"]).set_index("width")
    assert m.loc[8, "gen_gap"] == pytest.approx(0.4)
    # s.e. by hand: deviations -0.3, -0.1, 0.4 -> variance 0.26/2 = 0.13; s.e. sqrt(0.13/3)
    assert m.loc[8, "gen_gap_se"] == pytest.approx(math.sqrt(0.13 / 3))
    assert m.loc[8, "n_seeds"] == 3 and m.loc[16, "gen_gap_se"] == 0.0
    assert pd.isna(m.loc[8, "batch_size"])  # a null hyperparameter stays missing


def test_seed_means_never_merge_configurations_of_an_unknown_column():
    """Issue example: widths [8,8,8,8], dropout [0,0,.1,.1], seeds [1,2,1,2], gap
    [.1,.2,.5,.6] are two configurations (0.15 +- 0.05, 0.55 +- 0.05), not one (0.35)."""
    df = pd.DataFrame({"width": [8, 8, 8, 8], "dropout": [0, 0, 0.1, 0.1],
                       "seed": [1, 2, 1, 2], "gen_gap": [0.1, 0.2, 0.5, 0.6]})
    with pytest.warns(UserWarning, match="dropout"):
        m = figures.seed_means(df, ["gen_gap"]).set_index("dropout")
    assert len(m) == 2
    # by hand: mean of two seeds, s.e. = |a - b| / 2
    assert m.loc[0.0, "gen_gap"] == pytest.approx(0.15) and m.loc[0.1, "gen_gap"] == pytest.approx(0.55)
    assert m.loc[0.0, "gen_gap_se"] == pytest.approx(0.05)
    assert m.loc[0.1, "gen_gap_se"] == pytest.approx(0.05)
    # the statistics group on the same declaration
    from analysis.stats import hyperparameter_columns

    with pytest.warns(UserWarning):
        assert hyperparameter_columns(df, exclude=["gen_gap"]) == ["width", "dropout"]
    # an explicit list still wins
    one = figures.seed_means(df, ["gen_gap"], hyperparameters=["width"])
    assert len(one) == 1 and one.loc[0, "gen_gap"] == pytest.approx(0.35)


def test_per_point_bounds_at_tiny_loss():
    """1 - exp(-l) cancels for a confident point; -expm1(-l) does not: lower = s_y (1 - s_y)
    = e^-l (1 - e^-l) ~ l for tiny l."""
    lo, up = figures.per_point_bounds([1e-12, 1e-30], num_classes=10)
    assert lo[0] == pytest.approx(1e-12, rel=1e-9) and lo[1] == pytest.approx(1e-30, rel=1e-9)
    assert np.all(up >= lo) and np.all(lo > 0)


def test_per_point_bounds_by_hand():
    lo, up = figures.per_point_bounds([math.log(2.0), 20.0], num_classes=10)
    # l = ln 2: s_y = 1/2, lower 1/4; others 1/18 each: rows (1/18)(17/18)
    assert lo[0] == pytest.approx(0.25)
    assert up[0] == pytest.approx(math.sqrt(0.25 ** 2 + 9 * (17 / 18 ** 2) ** 2))
    assert lo[1] == pytest.approx(math.exp(-20.0), rel=1e-6)  # confident and wrong: s_y ~ e^-l
    assert np.all(up >= lo)


def _row(tid, **kw):
    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id=tid, status="ok", train_size=None, random_labels=False, augment=False,
               optimizer="sgd", lr=0.01, batch_size=32, init_scale=1.0, step_budget=1000,
               steps=1000, input_dim=64, num_classes=10, train_loss=1e-3, test_loss=0.5,
               transitions_method="exact", jacobian_points_test=20)
    row.update(kw)
    return row


def synthetic_sweep(d, rng):
    """Two data sets x 3 widths x 2 depths x 2 activations x 2 seeds, gap growing with the
    Jacobian norm plus noise; a few trials short of 100% train accuracy; per-point rows; and
    factor pairs."""
    rows, n = [], 0
    for ds in ("digits", "mnist"):
        for width in (16, 64, 256):
            for depth in (2, 4):
                for act in ("relu", "tanh"):
                    for seed in (1, 2):
                        jac = float(rng.lognormal(0.0, 0.7))
                        gap = 0.05 + 0.1 * math.log1p(jac) + float(rng.normal(0, 0.01))
                        n += 1
                        rows.append(_row(
                            f"t{n:03d}", dataset=ds, width=width, depth=depth, activation=act,
                            seed=seed, train_acc=1.0 if n % 7 else 0.98, test_acc=1.0 - gap,
                            gen_gap=gap if n % 7 else gap - 0.02, jacobian_norm_test=jac,
                            jacobian_norm_train=jac * 0.8, transitions_test=10 * jac + width / 8,
                            n_params=64 * width + (depth - 2) * width ** 2 + width * 10))
    for r in rows:
        k = 20
        loss = rng.lognormal(-2.0, 1.5, k)
        jac = 3.0 * np.exp(-loss) * (1 - np.exp(-loss)) * rng.lognormal(0, 0.2, k)
        pts = points_columns("test", range(k), rng.integers(0, 10, k), jac, loss, loss < 0.7)
        write_trial(d, r, pts)
    pairs = []
    for i, factor in enumerate(("random_labels", "activation")):
        for j in range(4):
            a, b = rows[8 * i + 2 * j], rows[8 * i + 2 * j + 1]
            pairs.append({"pair_id": f"p{i}{j}", "factor": factor, "value_a": "false",
                          "value_b": "true", "trial_a": a["trial_id"], "trial_b": b["trial_id"]})
    pq.write_table(pa.Table.from_pylist(pairs), d / "pairs.parquet")
    (d / SWEEP_FILE).write_text(json.dumps({"identity_hash": "x", "config": {}}))
    return rows


def undrawn_figures(monkeypatch) -> dict:
    """For a test of a report's text and tables: every figure is made (its data, axes, labels
    and notes, by the figure functions themselves) but not laid out, drawn or encoded; ``_save``
    writes a stand-in PNG (and SVG) where the figure would be and closes it. Returns {file
    name: Figure}, filled as the figures are saved. The drawn figures are checked by the tests
    that do not call this (test_every_figure_renders_from_a_synthetic_sweep, the first report
    of test_report_statistics_match_scipy, test_figures.py, the fixtures of
    test_report_wording.py and test_report_frictions.py, ...)."""
    from analysis import neyshabur, ranking_figure

    made = {}

    def save(fig, path, vector=False, rect=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
        if vector:
            path.with_suffix(".svg").write_text("<?xml version='1.0'?><svg/>")
        made[path.name] = fig
        figures._pyplot().close(fig)
        return path

    for module in (figures, neyshabur, ranking_figure):
        monkeypatch.setattr(module, "_save", save)
    return made


def test_every_figure_renders_from_a_synthetic_sweep(tmp_path):
    d = tmp_path / "s"
    synthetic_sweep(d, np.random.default_rng(0))
    df = fits_training_set(load_results(d))
    from analysis.load import load_pairs, load_points

    made = {
        "f1": figures.params_loss_figure(df, tmp_path / "f1.png"),
        "f4": figures.factor_pairs_figure(load_pairs(d), tmp_path / "f4.png"),
        "f5": figures.jacobian_gap_figure(df, tmp_path / "f5.png"),
        "f8": figures.transitions_gap_figure(df, tmp_path / "f8.png"),
        "f6": figures.per_point_figure(load_points(d), tmp_path / "f6.png", 10),
    }
    for name, p in made.items():
        assert p is not None and p.stat().st_size > 10_000, name
        assert p.with_suffix(".svg").read_text().lstrip().startswith("<?xml"), name
    empty = df.iloc[:0]
    assert figures.params_loss_figure(empty, tmp_path / "x.png") is None
    assert figures.jacobian_gap_figure(empty, tmp_path / "x.png") is None
    assert figures.transitions_gap_figure(df.assign(transitions_test=np.nan), tmp_path / "x.png") is None


def test_report_statistics_match_scipy(tmp_path, monkeypatch):
    d = tmp_path / "s"
    synthetic_sweep(d, np.random.default_rng(1))
    assert main(["report", str(d), "--bootstrap", "20"]) == 0
    rep = d / "report"
    page = (rep / "report.html").read_text()
    # Fig. 1, 4, 5, 6, 8, the ranking and the sign-errors embedded
    assert page.count("data:image/png;base64,") == 7
    assert (rep / "fig5_jacobian_gap.svg").is_file()
    table = pd.read_csv(rep / "statistics.csv")
    # (the CSV reads a rank column with nulls as float; the Parquet keeps Int64)
    pd.testing.assert_frame_equal(table, pd.read_parquet(rep / "statistics.parquet"),
                                  check_dtype=False)
    fit = fits_training_set(load_results(d))
    assert len(fit) == 48 - 48 // 7  # every 7th trial is short of 100% train accuracy
    for group, rows in [("all", fit), ("mnist", fit[fit["dataset"] == "mnist"])]:
        for measure in ("jacobian_norm_test", "transitions_test", "n_params"):
            got = table[(table.group == group) & (table.measure == measure)].set_index("statistic")
            x, y = rows[measure], rows["gen_gap"]
            assert got.loc["kendall", "value"] == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)
            assert got.loc["spearman", "value"] == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
            assert got.loc["pearson", "value"] == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12)
            assert (got["n_trials"] == len(rows)).all()
    # the ranking: every measure and baseline, ordered by granulated Kendall, with its ranks
    ranking = pd.read_csv(rep / "ranking.csv")
    gk = table[(table.group == "all") & (table.statistic == "granulated_kendall")]
    assert sorted(ranking["measure"]) == sorted(gk["measure"])
    assert list(ranking["measure"]) == list(gk.sort_values("value", ascending=False,
                                                           kind="stable")["measure"]) \
        or list(ranking["rank"]) == sorted(ranking["rank"])
    assert (np.diff(ranking["granulated_kendall"].dropna()) <= 0).all()
    assert "Ranking of the measures" in page
    assert "n_params <small>(baseline)</small>" in page
    # issue 26: the ranking figure heads the ranking; the model selection; no "-0.000"
    assert page.index("<img alt='ranking'") < page.index("<table class='stats'>")
    assert "jacobian_norm_test, jacobian_norm_train" in page  # train = 0.8 x test: one row
    assert "Model selection without test labels" in page
    selection = pd.read_csv(rep / "selection.csv")
    assert {"jacobian_norm_test", "train_loss", "(random)"} <= set(selection["measure"])
    assert not re.search(r"-0\.0+(?![0-9]*[1-9])", page)
    undrawn_figures(monkeypatch)  # the reports below: their tables only
    assert main(["report", str(d), "--bootstrap", "0", "--rank-by", "sign_error",
                 "--out", str(tmp_path / "r1")]) == 0
    by_se = pd.read_csv(tmp_path / "r1" / "ranking.csv")
    assert (np.diff(by_se["sign_error"].dropna()) >= 0).all()
    assert main(["report", str(d), "--rank-by", "auc"]) == 2
    # a looser threshold lets the 98% trials in
    assert main(["report", str(d), "--train-acc", "0.9", "--bootstrap", "0",
                 "--out", str(tmp_path / "r2")]) == 0
    t2 = pd.read_csv(tmp_path / "r2" / "statistics.csv")
    assert (t2.loc[t2.group == "all", "n_trials"] == 48).all()


def test_report_refuses_bad_input(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    d = tmp_path / "s"
    synthetic_sweep(d, np.random.default_rng(2))
    assert main(["report", str(d), "--train-acc", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep: error: --train-acc") and "\n" not in err
    assert not (d / "report").exists()  # refused before any work
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["report", str(d), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty and holds no report.html" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_report_to_a_uri(tmp_path, monkeypatch):
    d = tmp_path / "s"
    undrawn_figures(monkeypatch)  # (the figures' files are written, not drawn)
    synthetic_sweep(d, np.random.default_rng(3))
    uri = f"file://{tmp_path}/r"
    assert main(["report", str(d), "--bootstrap", "0", "--out", uri]) == 0
    assert (tmp_path / "r" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "r" / "statistics.parquet").is_file()
    assert main(["report", str(d), "--bootstrap", "0", "--out", uri]) == 0  # again: old kept
    assert len(list((tmp_path / "r" / "previous").rglob("report.html"))) == 1


def test_report_edge_cases_mixed_classes_and_missing_dataset(tmp_path, capsys):
    d = tmp_path / "s"
    rows = synthetic_sweep(d, np.random.default_rng(4))
    # a trial without a data set name and one with 100 classes still give a report
    write_trial(d, {**rows[0], "trial_id": "zz1", "dataset": None},
                points_columns("test", [0, 1], [1, 2], [0.01, 0.02], [0.1, 0.2], [True, True]))
    write_trial(d, {**rows[1], "trial_id": "zz2", "num_classes": 100},
                points_columns("test", [0, 1], [1, 2], [0.01, 0.02], [0.1, 0.2], [True, True]))
    assert main(["report", str(d), "--bootstrap", "0"]) == 0
    assert (d / "report" / "fig6_per_point.png").is_file()
    table = pd.read_csv(d / "report" / "statistics.csv", keep_default_na=False)
    assert "null" in set(table["group"])
    pts = pd.DataFrame({"trial_id": ["a", "a", "b"], "split": "test", "loss": [0.1, 0.5, 0.2],
                        "jacobian_norm": [0.3, 0.2, 0.1], "num_classes": [10, 10, 100]})
    fig = figures.per_point_figure(pts, tmp_path / "f6.png", 10)
    assert fig is not None and fig.stat().st_size > 10_000


def test_resume_accepts_verify_among_the_overrides(tmp_path, capsys):
    assert main(["resume", str(tmp_path), "progress=false", "--verify"]) == 2
    err = capsys.readouterr().err
    assert "not a sweep directory" in err and "unrecognized" not in err


def test_the_report_says_when_few_trials_fit_and_how_to_read_more(tmp_path, monkeypatch):
    d = tmp_path / "s"
    undrawn_figures(monkeypatch)  # (the page's text)
    rows = synthetic_sweep(d, np.random.default_rng(3))
    ok = len(rows)
    # rewrite: only 3 trials at 100%, 20 at >= 0.95, the rest at 0.9
    import shutil

    shutil.rmtree(d / "trials")
    for i, r in enumerate(rows):
        write_trial(d, {**r, "train_acc": 1.0 if i < 3 else 0.96 if i < 23 else 0.9})
    assert main(["report", str(d), "--bootstrap", "0"]) == 0
    page = (d / "report" / "report.html").read_text()
    top = page[:page.index("Ranking of the measures")] if "Ranking of the measures" in page else page
    assert f"Few trials fit their training set:</b> 3 of {ok} ok trials" in top
    assert "&ge; 99%: 3; &ge; 95%: 23; &ge; 90%: 48; &ge; 80%: 48" in top  # accuracy: percent
    assert f"sweep report {d} --train-acc 0.9</code>" in top
    assert main(["report", str(d), "--bootstrap", "0", "--train-acc", "0.9",
                 "--out", str(tmp_path / "r")]) == 0
    assert "Few trials fit" not in (tmp_path / "r" / "report.html").read_text()
    from analysis.report import filter_note

    df = load_results(d)
    assert filter_note(df.iloc[:6].assign(train_acc=1.0), 1.0, d) == ""  # all of few fit
    none_better = df.assign(train_acc=[1.0] * 3 + [0.5] * (len(df) - 3))
    note = filter_note(none_better, 1.0, d)  # no lower threshold lets more in: no command
    assert "3 of 48 ok trials" in note and "--train-acc" not in note


def test_statistics_state_direction_baselines_and_few_seeds_and_captions_state_the_data(
        tmp_path, monkeypatch):
    d = tmp_path / "s"
    undrawn_figures(monkeypatch)  # (the table, the page's text and captions)
    synthetic_sweep(d, np.random.default_rng(4))
    assert main(["report", str(d), "--bootstrap", "10"]) == 0
    rep = d / "report"
    table = pd.read_csv(rep / "statistics.csv")
    assert {"better", "baseline", "few_seeds", "n_seeds"} <= set(table.columns)
    assert set(table.loc[table.measure.isin(["n_params", "train_loss"]), "baseline"]) == {True}
    assert not table.loc[~table.measure.isin(["n_params", "train_loss"]), "baseline"].any()
    assert set(table.loc[table.statistic == "robust_sign_error", "better"]) == {"smaller"}
    assert set(table.loc[table.statistic == "kendall", "better"]) == {"larger"}
    assert table["few_seeds"].all()  # the synthetic sweep has 2 seeds
    page = (rep / "report.html").read_text()
    assert "granulated_kendall &uarr;" in page and "sign_error &darr;" in page
    assert "&dagger;" in page
    # Fig. 1's caption states this sweep's Kendall tau, computed here by scipy
    fit = fits_training_set(load_results(d))
    tau = sps.kendalltau(fit["n_params"], fit["gen_gap"]).statistic
    assert "neither predicts it" not in page
    import html

    page = html.unescape(page)
    assert f"number of parameters: Kendall's \u03c4 = {tau:.2f}" in page
    tau_j = sps.kendalltau(fit["jacobian_norm_test"], fit["gen_gap"]).statistic
    assert f"Jacobian norm: Kendall's \u03c4 = {tau_j:.2f}" in page
    from analysis.report import strength

    assert strength(0.05) == "no association to speak of"
    assert strength(-0.35) == "a moderate negative association"
    assert strength(-0.12, -0.27, 0.07) == ("a weak negative association, not a clear one: its "
                                             "interval includes 0")  # (the demo's Fig. 8)
    assert strength(0.37, 0.17, 0.53) == "a moderate positive association"
    assert f"trials, {strength(tau_j).split(',')[0]}" in page


def test_a_factor_without_a_fitting_pair_is_named(tmp_path, monkeypatch):
    d = tmp_path / "s"
    undrawn_figures(monkeypatch)  # (the page's text)
    rows = synthetic_sweep(d, np.random.default_rng(5))
    # the activation pairs use rows 8..15: make one side of each short of 100%
    import shutil

    shutil.rmtree(d / "trials")
    for i, r in enumerate(rows):
        write_trial(d, {**r, "train_acc": 0.5 if 8 <= i < 16 and i % 2 else 1.0})
    assert main(["report", str(d), "--bootstrap", "0"]) == 0
    page = (d / "report" / "report.html").read_text()
    assert "Fig. 4: no pair in which both trials fit their training set (train accuracy 100%) " \
           "for the factor(s) activation; their rows are left out." in page


def _captured(monkeypatch):
    """The figures passed to figures._save, drawn, each with its tick labels' boxes per axis
    (taken before saving closes it)."""
    figs = []
    real = figures._save

    def save(fig, path, vector=False):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        def shown(ticks, lim, i):  # the labels drawn inside the axis' view (i: 0 x, 1 y)
            lo, hi = min(lim), max(lim)
            return [(t.get_text(), t.get_window_extent(renderer)) for t in ticks
                    if t.get_visible() and t.get_text() and lo <= t.get_position()[i] <= hi]

        fig.tick_boxes = []
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            xt, yt = ax.get_xticklabels(), ax.get_yticklabels()
            fig.tick_boxes.append([shown(xt, ax.get_xlim(), 0), shown(yt, ax.get_ylim(), 1)])
        figs.append(fig)
        return real(fig, path, vector)

    monkeypatch.setattr(figures, "_save", save)
    return figs


def test_figure_axes_fit_the_data_and_tick_labels_do_not_overlap(tmp_path, monkeypatch):
    d = tmp_path / "s"
    synthetic_sweep(d, np.random.default_rng(6))
    from analysis.load import load_pairs, load_points

    figs = _captured(monkeypatch)
    pts = load_points(d)
    pts = pts.assign(loss=pts["loss"] * 1e-18)  # confident points: bounds run to ~1e-20
    figures.per_point_figure(pts, tmp_path / "f6.png", 10)
    ax = figs[-1].axes[0]
    jac = pts["jacobian_norm"].to_numpy()
    lo, hi = ax.get_ylim()
    assert jac.min() / 2 <= lo <= jac.min() and jac.max() <= hi <= jac.max() * 2
    pairs = load_pairs(d)
    rng = np.random.default_rng(0)
    n = len(pairs)
    for side in ("a", "b"):  # what crowds a small panel's labels: a log axis inside one
        # decade (labelled minor ticks), long numbers on a linear one
        pairs[f"jacobian_norm_test_{side}"] = rng.uniform(2.1, 9.3, n)
        pairs[f"transitions_test_{side}"] = rng.uniform(1200.0, 9800.0, n)
        pairs[f"gen_gap_{side}"] = 0.0123456 + rng.uniform(0, 1e-4, n)
    figures.factor_pairs_figure(pairs, tmp_path / "f4.png", ["random_labels", "activation",
                                                              "optimizer"])
    fig = figs[-1]
    assert "no pair to draw for optimizer" in fig._suptitle.get_text()
    assert len(fig.tick_boxes) == 6  # 2 factors x 3 panels
    for axis_boxes in fig.tick_boxes:
        for labelled in axis_boxes:
            assert len(labelled) >= 2, [t for t, _ in labelled]  # every axis keeps numbers
            for (ta, a), (tb, b) in zip(labelled, labelled[1:]):
                assert not a.overlaps(b), (ta, tb)


def test_the_report_names_values_that_never_fit_and_explains_robust_sign_error_on_one_seed(
        tmp_path, monkeypatch):
    import shutil

    undrawn_figures(monkeypatch)  # (the page's text)
    d = tmp_path / "s"
    rows = synthetic_sweep(d, np.random.default_rng(7))
    shutil.rmtree(d / "trials")
    for r in rows:  # every tanh trial short of 100%; one seed only
        if r["seed"] == 1:
            write_trial(d, {**r, "train_acc": 0.97 if r["activation"] == "tanh" else 1.0})
    assert main(["report", str(d), "--bootstrap", "0"]) == 0
    page = (d / "report" / "report.html").read_text()
    n_tanh = sum(1 for r in rows if r["seed"] == 1 and r["activation"] == "tanh")
    assert f"no ok trial of activation=tanh ({n_tanh} ok trials) reaches train accuracy" in page
    assert "One seed per configuration:" in page
    fitting = sum(1 for r in rows if r["seed"] == 1 and r["activation"] == "relu")
    assert f"activation: relu {fitting}/{fitting}, tanh 0/{n_tanh}" in page  # per value
    assert "<th>trials</th>" in page  # the ranking says what each row rests on
    # two seeds: no such note, and no value left out
    d2 = tmp_path / "s2"
    synthetic_sweep(d2, np.random.default_rng(7))
    assert main(["report", str(d2), "--bootstrap", "0"]) == 0
    page2 = (d2 / "report" / "report.html").read_text()
    assert "One seed per configuration:" not in page2 and "Left out entirely" not in page2


# --- the page shows what was measured (issue 22, item 11) -----------------------------------

from html.parser import HTMLParser


class _Page(HTMLParser):
    """The text of each paragraph, caption and table row of a report page (tags dropped,
    entities resolved), in order; images are left out."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.paragraphs, self.captions, self.tables = [], [], []
        self._text, self._row, self._cell, self._in = None, None, None, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag in ("p", "figcaption"):
            self._in.append(tag)
            self._text = []
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("p", "figcaption") and self._in and self._in[-1] == tag:
            self._in.pop()
            text = " ".join("".join(self._text).split())
            (self.paragraphs if tag == "p" else self.captions).append(text)
            self._text = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._text is not None:
            self._text.append(data)

    def paragraph(self, start: str) -> str:
        found = [p for p in self.paragraphs if start in p]
        assert len(found) == 1, (start, self.paragraphs)
        return found[0]


def _drawn_texts(monkeypatch):
    """Every text drawn into each figure file as it is written (PNG and SVG): (file name,
    text, its extent, the figure's box), recorded by matplotlib's own ``Text.draw`` during
    ``Figure.savefig``."""
    import matplotlib.figure
    import matplotlib.text

    drawn, saving = [], {}
    real_draw = matplotlib.text.Text.draw

    def draw(self, renderer):
        real_draw(self, renderer)
        if saving and self.get_visible() and self.get_text().strip():
            drawn.append((saving["name"], self.get_text(), self.get_window_extent(renderer),
                          self.figure.get_figure(root=True).bbox.frozen()))

    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *a, **kw):
        saving["name"] = Path(fname).name
        try:
            return real_savefig(self, fname, *a, **kw)
        finally:
            saving.clear()

    monkeypatch.setattr(matplotlib.text.Text, "draw", draw)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return drawn


def _cut(drawn) -> list:
    """The drawn texts that extend past their figure's edge (one pixel of rounding allowed),
    and the pairs of texts drawn into one image that run into each other (more than a pixel
    of overlap: tick labels of a crowded axis, a title over a label)."""
    cut = [(name, text, tuple(round(v) for v in box.extents), tuple(fig.extents))
           for name, text, box, fig in drawn
           if box.x0 < fig.x0 - 1 or box.y0 < fig.y0 - 1 or box.x1 > fig.x1 + 1
           or box.y1 > fig.y1 + 1]
    by_image = {}  # (a text drawn twice in one save, e.g. a layout pass, is one text)
    for name, text, box, _ in drawn:
        by_image.setdefault(name, {})[text, tuple(np.round(box.extents, 1))] = box.padded(-1.0)
    by_image = {name: [(t, box) for (t, _), box in texts.items()]
                for name, texts in by_image.items()}
    for name, texts in by_image.items():
        for (ta, a), (tb, b) in itertools.combinations(texts, 2):
            if a.overlaps(b):
                cut.append((name, ta, tb))
    return cut


def lbfgs_sweep(d, rng):
    """A sweep with a null hyperparameter: full-batch L-BFGS (batch_size null, every trial
    fits), SGD at batch 128 (every other trial short of 100%), momentum at batch 128 (every
    trial fits), over two widths, two depths and two seeds; one failed and one diverged trial;
    per-point rows of which some have a loss of exactly 0 (beyond float64: not on Fig. 6's log
    axes); a real configuration in sweep.json."""
    from dataclasses import asdict

    from sweep.config import compose

    rows, n = [], 0
    for opt, bs in (("sgd", 128), ("momentum", 128), ("lbfgs", None)):
        for width in (16, 64):
            for depth in (2, 3):
                for seed in (1, 2):
                    n += 1
                    jac = float(rng.lognormal(0.0, 0.7))
                    gap = 0.05 + 0.1 * math.log1p(jac) + float(rng.normal(0, 0.01))
                    rows.append(_row(
                        f"t{n:03d}", dataset="digits", width=width, depth=depth,
                        activation="relu", seed=seed, optimizer=opt, batch_size=bs,
                        lr=0.1 if opt == "lbfgs" else 0.01,
                        train_acc=0.97 if opt == "sgd" and n % 2 else 1.0, test_acc=1.0 - gap,
                        gen_gap=gap, jacobian_norm_test=jac, jacobian_norm_train=jac * 0.8,
                        transitions_test=10 * jac + width / 8,
                        n_params=64 * width + (depth - 2) * width ** 2 + width * 10))
    rows.append(_row("f001", dataset="digits", width=16, depth=2, activation="relu", seed=3,
                     status="failed", error="boom", train_loss=None, test_loss=None))
    rows.append(_row("v001", dataset="digits", width=64, depth=3, activation="relu", seed=3,
                     status="diverged", error="non-finite training loss", train_loss=None,
                     test_loss=None))
    for i, r in enumerate(rows):
        k = 30
        loss = rng.lognormal(-2.0, 1.5, k)
        loss[: i % 4] = 0.0  # 0, 1, 2 or 3 points beyond float64 per trial
        jac = 3.0 * np.exp(-loss) * (1 - np.exp(-loss)) * rng.lognormal(0, 0.2, k)
        write_trial(d, r, points_columns("test", range(k), rng.integers(0, 10, k), jac, loss,
                                         loss < 0.7) if r["status"] == "ok" else None)
    cfg = compose(["trials=26", "dataset=digits"])
    (d / SWEEP_FILE).write_text(json.dumps({"identity_hash": "x", "config": asdict(cfg)}))
    return rows, cfg


def _counted(column: pd.Series, value: str) -> pd.Series:
    """Rows of ``column`` equal to the page's ``value`` ("null": missing), compared as text
    (the page writes 128 for a float column's 128.0)."""
    if value == "null":
        return column.isna()
    return column.map(lambda v: not pd.isna(v) and f"{v:g}" if isinstance(v, float)
                      else str(v)) == value


def test_every_count_on_the_page_is_the_datas_and_no_figure_text_is_cut(tmp_path, monkeypatch):
    """Issue 22 item 11: the per-value fit counts said "batch_size: 128.0 43/80, nan 0/10"
    when all 10 L-BFGS trials (batch_size null) fit, and Fig. 6's subtitle, wider than the
    figure, read "59 test points" for 559. Every number of the page is read back and
    counted again from the tables with pandas; every text drawn into every figure lies
    inside its figure."""
    import re

    d = tmp_path / "s"
    rows, cfg = lbfgs_sweep(d, np.random.default_rng(11))
    drawn = _drawn_texts(monkeypatch)
    assert main(["report", str(d), "--bootstrap", "0"]) == 0
    page = _Page((d / "report" / "report.html").read_text())
    df = load_results(d)
    ok = df[df["status"] == "ok"]
    fit = ok[ok["train_acc"] >= 1.0]
    assert len(df) == 26 and len(fit) == 8 + 4 + 8  # sgd: half fit; momentum, lbfgs: all
    # the header: trials, per status, and those that pass
    head = page.paragraph("Figures and statistics use the")
    m = re.search(r": (\d+) trials \(([^)]*)\)\. Figures and statistics use the (\d+) ok", head)
    assert int(m.group(1)) == len(df) and int(m.group(3)) == len(fit)
    assert dict((s, int(c)) for c, s in (x.split() for x in m.group(2).split(", "))) == \
        df["status"].value_counts().to_dict()
    # trials that fit, per value: every value of every hyperparameter listed, null included
    per = page.paragraph("Trials that fit, of the ok trials, per value:")
    per = per.split("per value: ", 1)[1].rstrip(".")
    seen = {}
    for part in per.split("; "):
        h, values = part.split(": ", 1)
        for item in values.split(", "):
            value, frac = item.rsplit(" ", 1)
            f, n = map(int, frac.split("/"))
            assert (f, n) == (int(_counted(fit[h], value).sum()), int(_counted(ok[h], value).sum())), \
                (h, value)
            seen[h, value] = (f, n)
    assert seen["batch_size", "null"] == (8, 8)  # every L-BFGS trial fits (it read 0/10)
    assert seen["batch_size", "128"] == (12, 16)
    assert seen["optimizer", "lbfgs"] == (8, 8) and seen["optimizer", "sgd"] == (4, 8)
    assert sum(n for (h, _), (_, n) in seen.items() if h == "batch_size") == len(ok)
    assert "Left out entirely" not in " ".join(page.paragraphs)  # every value has a fitting trial
    # the configuration: the sweep's
    conf = page.paragraph("Configuration:")
    assert f"{cfg.trials} trials planned" in conf and f"{cfg.train.steps} steps" in conf
    # the ranking: per measure, the trials it rests on
    ranking = next(t for t in page.tables if t[0][:4] == ["rank", "measure", "sign", "trials"])
    for r in ranking[1:]:
        names = r[1].replace("(baseline)", "").replace("(the same ranks)", "").strip()
        for measure in names.split(", "):  # a row names every measure of identical ranks
            assert int(r[3]) == int((fit[measure].notna() & fit["gen_gap"].notna()).sum()), \
                measure
    # the statistics table: trials and configurations (seed means) per row
    stats = next(t for t in page.tables if t[0][:4] == ["group", "measure", "n_trials", "n_configs"])
    hps = ["optimizer", "batch_size", "lr", "width", "depth"]
    for r in stats[1:]:
        measure = r[1].replace("(baseline)", "").strip()
        rows_ = fit[fit[measure].notna() & fit["gen_gap"].notna()]
        assert int(r[2]) == len(rows_), measure
        assert int(r[3]) == len(rows_[hps].astype(str).drop_duplicates()), measure
    # the captions: Kendall's tau over the passing trials
    said = [c for c in page.captions if "Kendall's" in c]
    assert said
    for c in said:
        for n in re.findall(r"over (\d+) trials", c):
            assert int(n) == len(fit)
    # Fig. 6: the points log axes cannot show, counted from the per-point rows
    from analysis.load import load_points

    pts = load_points(d, [("split", "=", "test")], trial_ids=list(fit["trial_id"]))
    pts = pts.dropna(subset=["loss", "jacobian_norm"])
    zero = int(((pts["loss"] <= 0) | (pts["jacobian_norm"] <= 0)).sum())
    assert zero == sum(i % 4 for i, r in enumerate(rows) if r["trial_id"] in set(fit["trial_id"]))
    sup = [t for name, t, _, _ in drawn if name == "fig6_per_point.png"
           and t.startswith("Fig. 6")]
    assert sup and all(re.search(rf"(?<!\d){zero} test points", t) for t in sup), sup
    # no figure text cut: each drawn text inside its figure, in every figure the report made
    made = {name for name, *_ in drawn}
    assert {"fig1_params_loss.png", "fig5_jacobian_gap.png", "fig6_per_point.png",
            "sign_errors.png", "ranking.png"} <= made
    assert _cut(drawn) == []


def test_long_figure_titles_are_wrapped_inside_the_figure(tmp_path, monkeypatch):
    """The kind of item 11's clipped subtitle: a title or label longer than its figure is
    wrapped (its numbers whole), or the figure made larger, in every figure function."""
    import re

    drawn = _drawn_texts(monkeypatch)
    # Fig. 6 with 559 points at loss 0: the subtitle is wider than the 6-inch figure
    pts = pd.DataFrame({"trial_id": ["a"] * 600, "split": "test",
                        "loss": np.r_[np.zeros(559), np.linspace(0.1, 1.0, 41)],
                        "jacobian_norm": np.linspace(0.1, 1.0, 600)})
    figures.per_point_figure(pts, tmp_path / "f6.png", 10)
    sup = [t for name, t, _, _ in drawn if name == "f6.png" and t.startswith("Fig. 6")]
    assert sup and all(re.search(r"(?<!\d)559 test points", t) for t in sup)
    # Fig. 4 naming many factors without a pair, and Fig. 5 with one data set of a long name
    d = tmp_path / "s"
    synthetic_sweep(d, np.random.default_rng(12))
    from analysis.load import load_pairs

    many = [f"factor_with_a_long_name_{i}" for i in range(12)]
    figures.factor_pairs_figure(load_pairs(d), tmp_path / "f4.png", ["random_labels", *many])
    df = fits_training_set(load_results(d))
    one = df[df["dataset"] == "digits"].assign(dataset="a_data_set_with_a_very_long_name_" * 3)
    figures.jacobian_gap_figure(one, tmp_path / "f5.png")
    figures.transitions_gap_figure(one, tmp_path / "f8.png")
    assert {"f6.png", "f4.png", "f5.png", "f8.png"} <= {name for name, *_ in drawn}
    assert any(many[-1] in t for name, t, _, _ in drawn if name == "f4.png")
    assert _cut(drawn) == []


def test_fit_text_wraps_only_what_overflows():
    plt = figures._pyplot()
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.set_title("short")
    fig.suptitle("a suptitle " * 20)
    fig.tight_layout()
    figures.fit_text(fig)
    assert ax.get_title() == "short"
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) > 1 and " ".join(" ".join(lines).split()) == ("a suptitle " * 20).strip()
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1
    plt.close(fig)


def test_fig8s_note_says_how_many_points_are_sampled_counts():
    """Fig. 8 pooled exact and sampled transition counts unmarked (a review of the demo's
    report: 9 of its 52 points sampled, which undercount); the note counts them."""
    import pandas as pd

    from analysis.report.build import sampled_note

    fit = pd.DataFrame({"transitions_test": [10.0, 12.0, None, 9.0, 30.0],
                        "transitions_method": ["exact", "sampled", "sampled", "sampled", "exact"],
                        "transitions_k": [None, 4096, 4096, 4096, None]})
    want = int(((fit.transitions_method == "sampled") & fit.transitions_test.notna()).sum())
    note = sampled_note(fit)
    assert note.startswith(f"App. Fig. 8: {want} of its 4 points are counts sampled by Eq. 1 with "
                           "k = 4096"), note
    assert sampled_note(fit[fit.transitions_method == "exact"]) == ""
    assert sampled_note(fit[fit.transitions_method == "sampled"]) == ""  # (all alike: no mix)


def test_the_model_selection_names_merged_measures_as_the_ranking_does():
    """The selection merged equivalent measures in its own row order ("params, n_params")
    beside the ranking's ("n_params, params"); the same names now, signs with them."""
    import pandas as pd

    from analysis.report.decide import _names_as_ranked

    sel = pd.DataFrame({"measure": ["params", "margin_gamma5"],
                        "measures": [("params", "n_params"), ("margin_gamma5",)],
                        "signs": [(1, -1), (-1,)]})
    out = _names_as_ranked(sel, [("n_params", "params")])
    assert list(out["measures"]) == [("n_params", "params"), ("margin_gamma5",)]
    assert list(out["signs"]) == [(-1, 1), (-1,)]
    assert list(sel["measures"]) == [("params", "n_params"), ("margin_gamma5",)]  # a copy


def test_a_measure_without_any_value_is_named_with_its_reason(tmp_path, monkeypatch):
    """A user measure that raised on every trial was only a row of n/a in the model selection
    (a new user's finding): the page now names it and its error, and the statistics leave it
    out."""
    from workers.measures import Outcome
    from workers.results.measure_table import write_outcome

    undrawn_figures(monkeypatch)
    d = tmp_path / "s"
    rows = synthetic_sweep(d, np.random.default_rng(3))
    for r in rows:
        write_outcome(d, r["trial_id"], Outcome("boom", None, 1, {}, 0.01,
                                                "RuntimeError: no convergence\n  (traceback)"))
    page = Path(make_report(d, n_boot=0, processes=1)).read_text()
    n_fit = len(fits_training_set(load_results(d)))
    assert ("<b>Measures without a value on any passing trial</b>" in page
            and f"<code>boom</code>: RuntimeError: no convergence (on all {n_fit} passing "
                "trials)" in page), page[:3000]
    stats = pd.read_csv(d / "report" / "statistics.csv")
    assert "boom" not in set(stats["measure"])
