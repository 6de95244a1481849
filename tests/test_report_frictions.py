"""What a new user stumbled on in the report (issue #26 follow-ups): the bootstrap count the
progress announces is the one it counts, and its time left is the bootstrap's; accuracies read
as percentages; the L-BFGS values of lr and batch_size are explained; the sign-error figure has
the ranking's rows and says what one seed does to its worst environment; Fig. 8's legend says
what a hidden neuron count is; ranking.csv carries the page's rank. Every number is checked
against the data the report reads."""

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures, neyshabur
from analysis.figures import at_least, percent, value_label
from analysis.filters import fits_training_set
from analysis.load import load_results
from analysis.progress import StatsProgress
from analysis.report import make_report
from analysis.report.decide import FilterAdvice, unfit_values
from analysis.report.render import filter_html
from analysis.stats import statistics_table
from test_report import _Page, _row
from workers.results.layout import SWEEP_FILE
from workers.results.record import points_columns, write_trial

README = Path(__file__).resolve().parents[1] / "README.md"

from test_report_progress import Terminal, table as progress_table  # noqa: E402 (shared)


# ---------------------------------------------------------------------------------------------
# 1. The progress counts what it announces


def _table():
    """test_report_progress's table with a third measure unrelated to the gap."""
    df = progress_table()
    df["m2"] = np.random.default_rng(1).normal(size=len(df))
    return df


def test_the_bootstrap_evaluations_announced_are_the_ones_counted():
    """The first line's "N bootstrap evaluations follow" is measures x groups x resamples,
    counted here from the table; every later line counts k/N with that same N, and so does
    the bar on a terminal (it once announced 9600 and counted to 9648)."""
    df, n_boot, measures = _table(), 7, ["m0", "m1", "m2"]
    n = len(measures) * (1 + df["dataset"].nunique()) * n_boot  # groups: all + per data set
    log = io.StringIO()
    statistics_table(df, measures=measures, n_boot=n_boot, hyperparameters=["width", "depth"],
                     progress=StatsProgress(log, live=False, line_s=0.0))
    lines = log.getvalue().splitlines()
    announced = int(re.search(r"; (\d+) bootstrap evaluations follow", lines[0]).group(1))
    assert announced == n
    counted = [tuple(map(int, m.groups())) for m in
               (re.search(r"statistics: (\d+)/(\d+) bootstrap evaluations", x) for x in lines[1:])]
    assert counted and all(total == n and 0 < k <= n for k, total in counted)
    assert counted[-1] == (n, n) and [k for k, _ in counted] == sorted(k for k, _ in counted)
    bar = Terminal()
    statistics_table(df, measures=measures, n_boot=n_boot, hyperparameters=["width", "depth"],
                     progress=StatsProgress(bar))
    frames = re.findall(r"bootstrap: +\d+%\|[^|]*\| *(\d+)/(\d+)", bar.getvalue())
    assert frames and {int(t) for _, t in frames} == {n} and int(frames[-1][0]) == n


def test_the_time_left_is_the_bootstrap_rates(monkeypatch):
    """The time left comes from the rate once the bootstrap runs, over 5 s at least: not from
    the wait for the worker processes' first evaluation (which made it 59 min for a 52 s
    bootstrap), nor from two evaluations arriving together (0 s). A clock driven by hand:
    estimates at 0 s, the first bootstrap evaluations at 30 s, then 10 a second."""
    import analysis.progress as progress

    clock = {"t": 0.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["t"])
    out = io.StringIO()
    p = StatsProgress(out, live=False)
    first, total = 100, 1000
    p(first, total, 2)
    calls = [(30.0, 110), (30.1, 120)] + [(30.0 + s, 110 + 10 * s) for s in range(1, 8)]
    for t, done in calls:
        clock["t"] = t
        p(done, total, 2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # the announcement, then one line once 5 s of rate exist
    m = re.search(r"(\d+)/(\d+) bootstrap evaluations in (\d+) s, about (\d+) s left", lines[1])
    done, n, elapsed, left = map(int, m.groups())
    assert (n, done, elapsed) == (total - first, 160 - first, 35)  # at t = 35 s
    rate = (done - (110 - first)) / (35.0 - 30.0)  # from the first bootstrap call on
    assert left == round((n - done) / rate)


# ---------------------------------------------------------------------------------------------
# A one-seed sweep with L-BFGS, SGD that fits only at its larger learning rate, momentum, two
# widths and depths, two activations; a measure equivalent to another (0.8 x); reported once.

LBFGS_LR = 1.0


def one_seed_sweep(d, rng):
    rows, n = [], 0
    for opt, lr, bs in (("sgd", 0.01, 128), ("sgd", 0.1, 128), ("momentum", 0.1, 128),
                        ("lbfgs", LBFGS_LR, None)):
        for width in (16, 64):
            for depth in (2, 3):
                for act in ("relu", "tanh"):
                    n += 1
                    jac = float(rng.lognormal(0.0, 0.7))
                    gap = 0.05 + 0.1 * math.log1p(jac) + float(rng.normal(0, 0.03))
                    rows.append(_row(
                        f"t{n:03d}", dataset="digits", width=width, depth=depth, activation=act,
                        seed=1, optimizer=opt, lr=lr, batch_size=bs,
                        train_acc=0.97 if lr == 0.01 else 1.0, test_acc=1.0 - gap, gen_gap=gap,
                        jacobian_norm_test=jac, jacobian_norm_train=0.8 * jac,
                        transitions_test=10 * jac + width / 8 + float(rng.normal(0, 1)),
                        n_params=64 * width + (depth - 2) * width ** 2 + width * 10))
    for r in rows:
        k = 12
        loss = rng.lognormal(-2.0, 1.0, k)
        jac = 3.0 * np.exp(-loss) * (1 - np.exp(-loss))
        write_trial(d, r, points_columns("test", range(k), rng.integers(0, 10, k), jac, loss,
                                         loss < 0.7))
    (d / SWEEP_FILE).write_text('{"identity_hash": "x", "config": {}}')
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(sweep directory, report directory, page, {figure file: Figure}) of ``one_seed_sweep``
    (its figures drawn as PNGs; the SVGs beside them, which these tests do not read, not
    written)."""
    import matplotlib.figure

    d = tmp_path_factory.mktemp("frictions") / "s"
    one_seed_sweep(d, np.random.default_rng(5))
    drawn = {}
    real = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *a, **kw):
        drawn[Path(fname).name] = self
        if Path(fname).suffix == ".svg":
            return None
        return real(self, fname, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig", savefig)
        make_report(d, n_boot=0)
    rep = d / "report"
    return d, rep, (rep / "report.html").read_text(), drawn


# ---------------------------------------------------------------------------------------------
# 2. Accuracies as percentages


def test_accuracies_read_as_percentages(report):
    assert [percent(x) for x in (1.0, 0.99, 0.995, 0.29, 0.0)] == \
        ["100%", "99%", "99.5%", "29%", "0%"]
    assert (at_least(1.0), at_least(0.99, "&ge;")) == ("100%", "&ge; 99%")  # no "≥ 100%"
    d, _, page, _ = report
    df = load_results(d)
    head = _Page(page).paragraph("Figures and statistics use the")
    n_fit = len(fits_training_set(df, 1.0))
    assert f"the {n_fit} ok trials at train accuracy 100%" in head
    assert not re.search(r"(&ge;|\u2265|>=) ?[01](\.\d+)?(?![\d%])", page)  # no bare fraction
    advice = FilterAdvice(3, 48, 1.0, ((0.99, 3), (0.95, 23)), None)
    assert "train accuracy 100%, and only" in filter_html(advice)
    assert "At lower thresholds: &ge; 99%: 3; &ge; 95%: 23." in filter_html(advice)
    ok = df[df["status"] == "ok"].assign(train_size=128, random_labels=False)
    assert "train accuracy \u2265 99%;" in neyshabur.fitted_note(ok, ok, 0.99)


# ---------------------------------------------------------------------------------------------
# 3. The L-BFGS values of lr and batch_size


def test_the_lbfgs_values_of_lr_and_batch_size_are_explained(report):
    """The per-value line lists L-BFGS's lr (train.lbfgs.lr) and batch_size (null); the line
    after it names exactly the values the data's L-BFGS trials have and what they are."""
    d, _, page, _ = report
    df = load_results(d)
    lb = df[df["optimizer"] == "lbfgs"]
    p = _Page(page)
    per = p.paragraph("Trials that fit, of the ok trials, per value:")
    lr = sorted(set(lb["lr"].map(value_label)))
    assert lr == [value_label(LBFGS_LR)] and "lr: " in per
    assert f"{lr[0]} {len(lb)}/{len(lb)}" in per.split("lr: ", 1)[1].split(";")[0]
    said = p.paragraph("L-BFGS is full-batch")
    assert f"lr {lr[0]} (train.lbfgs.lr, the first step its strong-Wolfe line search tries)" \
        in said
    assert "batch_size null (no mini-batch)" in said and lb["batch_size"].isna().all()
    assert "neither space.lr nor space.batch_size" in said
    # without L-BFGS trials: nothing to explain
    assert unfit_values(df[df["optimizer"] != "lbfgs"], 1.0, ["optimizer", "lr",
                                                            "batch_size"]).lbfgs == ()


# ---------------------------------------------------------------------------------------------
# 4. The sign-error figure: the ranking's rows, and what one seed does


def _labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_yticklabels()]


def test_the_sign_error_figure_has_the_rankings_rows_and_says_what_one_seed_does(report):
    d, rep, page, drawn = report
    ranking = pd.read_csv(rep / "ranking.csv")
    rows = ranking.dropna(subset=["sign_error"]).groupby("row", sort=False).first()
    fig = drawn["sign_errors.png"]
    labels = [x.replace("\n", " ").replace(" (baseline)", "") for x in _labels(fig)]
    shown = {", ".join(("-" if s < 0 else "") + m for m, s in zip(
        name.split(", "), ranking.set_index("measure").loc[name.split(", "), "sign"]))
        for name in rows.index}
    assert sorted(labels) == sorted(shown) and len(labels) == len(rows)
    assert "jacobian_norm_test, jacobian_norm_train" in labels  # 0.8 x: one row, as the ranking
    ranked = {x.replace("\n", " ") for x in _labels(drawn["ranking.png"])}
    assert set(labels) <= ranked
    # one seed: the worst environment (0 or 1 per pair) is not drawn, and the note says so
    ax = fig.axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    ones = int((rows["robust_sign_error"] == 1.0).sum())
    note = " ".join(ax.get_xlabel().split())
    assert f"worst environment is 1 for {ones} of {len(rows)} rows; it is not drawn" in note
    caption = next(c for c in _Page(page).captions if c.startswith("The measures' sign-errors"))
    assert f"(robust_sign_error) is 1 for {ones} of the {len(rows)} rows" in caption


def test_the_sign_error_figure_draws_the_worst_environment_with_several_seeds(tmp_path,
                                                                              monkeypatch):
    import matplotlib.figure

    drawn = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **kw: (drawn.append(self), real(self, *a, **kw))[1])
    merged = pd.DataFrame({
        "rank": [1, 2], "measure": ["a", "c"], "sign": [1, -1], "n_trials": [8, 8],
        "measures": [("a", "b"), ("c",)], "signs": [(1, 1), (-1,)],
        "sign_error": [0.25, 0.5], "sign_error_low": [0.1, 0.3], "sign_error_high": [0.4, 0.7],
        "robust_sign_error": [0.5, 0.75]})
    figures.sign_error_figure(merged, tmp_path / "se.png", (), one_seed=False)
    ax = drawn[-1].axes[0]
    crosses, = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert sorted(crosses.get_xdata()) == [0.5, 0.75]
    assert _labels(drawn[-1]) == ["a, b", "-c"]  # best first (at the top); a row names its measures
    assert "not drawn" not in ax.get_xlabel()


# ---------------------------------------------------------------------------------------------
# 5. Fig. 8's legend says what it counts


def test_fig8s_legend_says_hidden_neurons_are_width_times_hidden_layers(report):
    d, _, page, drawn = report
    fit = fits_training_set(load_results(d))
    ax = drawn["fig8_transitions_gap.png"].axes[0]
    legend = ax.get_legend()
    assert "hidden neurons" in legend.get_title().get_text()
    assert "width \u00d7 hidden layers" in legend.get_title().get_text()
    neurons = sorted({int(w * (dp - 1)) for w, dp in zip(fit["width"], fit["depth"])})
    assert [int(t.get_text()) for t in legend.get_texts()] == neurons
    caption = next(c for c in _Page(page).captions if c.startswith("App. Fig. 8"))
    assert "width \u00d7 hidden layers" in caption


# ---------------------------------------------------------------------------------------------
# 6. ranking.csv and the page agree on the rank


def test_ranking_csv_carries_the_pages_rank_and_row(report):
    """Every row of the page's ranking (rank, the measures it names) is in ranking.csv as
    row_rank and row of each of its measures; row_rank is the rank of the row's value among
    the rows (tied rows the best), computed here from the CSV; rank stays the measure's."""
    _, rep, page, _ = report
    csv = pd.read_csv(rep / "ranking.csv")
    table = next(t for t in _Page(page).tables if t[0][:2] == ["rank", "measure"])
    seen = set()
    for r in table[1:]:
        names = r[1].replace("(baseline)", "").replace("(the same ranks)", "").strip()
        for m in names.split(", "):
            got = csv.set_index("measure").loc[m]
            assert (int(got["row_rank"]), got["row"]) == (int(r[0]), names), m
            seen.add(m)
    assert seen == set(csv["measure"])
    rows = csv.groupby("row", sort=False)["granulated_kendall"].first()
    want = rows.rank(method="min", ascending=False).astype(int)
    assert csv["row_rank"].tolist() == csv["row"].map(want).tolist()
    per_measure = csv["granulated_kendall"].rank(method="min", ascending=False).astype(int)
    assert csv["rank"].tolist() == per_measure.tolist()
    assert (csv["rank"] >= csv["row_rank"]).all() and len(rows) < len(csv)  # a merged row
    assert csv["row_rank"].max() <= len(rows)
    analysis = README.read_text().split("## Analysis", 1)[1]
    assert "`row_rank`" in analysis and "`row`" in analysis
