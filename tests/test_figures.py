"""Figures that can be read (issue 26, item 2), checked without eyes on hand-made tables: no
two tick labels of an axis run into each other, on narrow and wide log ranges, in every
figure of analysis/figures.py and analysis/neyshabur.py; a log axis keeps at least two
numbers; a colour variable with two values gets two colours and a legend; a baseline of the
sign-error figure is labelled as one."""

import itertools

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from analysis import figures, neyshabur

HPS = ["dataset", "width", "depth", "activation", "lr"]
# (low, high) of the log-axis values: inside a few percent, inside a decade ("3x10^2" beside
# "4x10^2" was the failure), about a decade, several decades, many decades
RANGES = {"tight": (1.21, 1.25), "narrow": (250.0, 450.0), "decade": (30.0, 400.0),
          "wide": (1e-3, 1e5), "huge": (1e-20, 1e3)}


@pytest.fixture
def saved(monkeypatch):
    """Every PNG written (``Figure.savefig``), as saved: a list of (file name, per axis:
    (axes label, "x"/"y", scale, whether it shows tick labels at all (a shared axis may not),
    [(text, extent)] of the tick labels drawn in view)), read from the draw that wrote the
    PNG. The SVG beside it is not written (these tests read the PNG's labels only)."""
    out = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, fname, *a, **kw):
        if not str(fname).endswith(".png"):
            return None  # (an SVG: the same figure drawn again, as vectors)
        result = real(fig, fname, *a, **kw)  # (drawn by the canvas at the figure's dpi)
        renderer = fig.canvas.get_renderer()
        axes = []
        for ax in fig.axes:
            for axis, lim, i in ((ax.xaxis, ax.get_xlim(), 0), (ax.yaxis, ax.get_ylim(), 1)):
                lo, hi = min(lim), max(lim)
                ticks = axis.get_ticklabels() + axis.get_ticklabels(minor=True)
                shown = [(t.get_text(), t.get_window_extent(renderer)) for t in ticks
                         if t.get_visible() and t.get_text().strip()
                         and lo - 1e-12 * abs(lo) <= t.get_position()[i] <= hi + 1e-12 * abs(hi)]
                labelled = any(t.get_visible() for t in ticks)
                axes.append((ax.get_label(), "xy"[i], axis.get_scale(), labelled, shown))
        out.append((str(fname).rsplit("/", 1)[-1], axes))
        return result

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return out


def check_ticks(saved) -> int:
    """Assert no two tick labels of one axis overlap and every visible log axis of a data
    panel keeps two numbers; returns the number of axes checked."""
    n = 0
    for name, axes in saved:
        for label, xy, scale, labelled, shown in axes:
            if not labelled or (not shown and scale != "log"):
                continue  # (an axis drawn without numbers: shared, a colour bar's short side)
            n += 1
            if scale == "log" and label != "<colorbar>":
                assert len(shown) >= 2, (name, xy, [t for t, _ in shown])
            for (ta, a), (tb, b) in itertools.combinations(shown, 2):
                assert not a.overlaps(b), (name, label, xy, ta, tb)
    return n


def log_values(rng, lo, hi, n):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def results(lo, hi, widths=(16, 64), rng=None, n=24) -> pd.DataFrame:
    """A results-like table: ``n`` trials, two data sets, ``widths``, the log-axis measures
    between ``lo`` and ``hi``."""
    rng = rng or np.random.default_rng(0)
    return pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n)],
        "dataset": ["digits" if i % 2 else "mnist" for i in range(n)],
        "width": [widths[(i // 2) % len(widths)] for i in range(n)], "depth": 3,
        "activation": [["relu", "tanh"][(i // 4) % 2] for i in range(n)],
        "lr": [[0.1, 0.01, 0.001][(i // 8) % 3] for i in range(n)],
        "seed": [i // 12 for i in range(n)], "status": "ok", "train_acc": 1.0,
        "gen_gap": rng.uniform(0.0, 0.2, n), "n_params": log_values(rng, lo, hi, n),
        "train_loss": log_values(rng, lo, hi, n),
        "jacobian_norm_test": log_values(rng, lo, hi, n),
        "transitions_test": log_values(rng, lo, hi, n)})


@pytest.mark.parametrize("span", list(RANGES))
def test_tick_labels_of_the_report_figures_never_overlap(tmp_path, saved, span):
    lo, hi = RANGES[span]
    rng = np.random.default_rng(1)
    df = results(lo, hi, rng=rng)
    assert figures.params_loss_figure(df, tmp_path / "f1.png", HPS)
    assert figures.jacobian_gap_figure(df, tmp_path / "f5.png", HPS)
    assert figures.transitions_gap_figure(df, tmp_path / "f8.png", HPS)
    many = results(lo, hi, widths=tuple(2 ** k for k in range(3, 15)), rng=rng, n=48)
    assert figures.transitions_gap_figure(many, tmp_path / "f8_bar.png", HPS)  # a colour bar
    n = 8
    pairs = pd.DataFrame({"factor": ["activation"] * n + ["augment"] * n,
                          "value_a": ["relu"] * n + ["false"] * n,
                          "value_b": ["tanh"] * n + ["true"] * n})
    for side in ("a", "b"):
        pairs[f"gen_gap_{side}"] = 0.0123456 + rng.uniform(0, 1e-4, 2 * n)
        pairs[f"jacobian_norm_test_{side}"] = log_values(rng, lo, hi, 2 * n)
        pairs[f"transitions_test_{side}"] = log_values(rng, lo, hi, 2 * n)
    assert figures.factor_pairs_figure(pairs, tmp_path / "f4.png")
    k = 400
    points = pd.DataFrame({"split": "test", "trial_id": [f"t{i % 3}" for i in range(k)],
                           "loss": log_values(rng, lo, min(hi, 300.0), k),  # (exp(-l) > 0)
                           "jacobian_norm": log_values(rng, lo, hi, k)})
    assert figures.per_point_figure(points, tmp_path / "f6.png", 10)
    curves = pd.DataFrame([
        {"trial_id": t, "ellipse": e, "phase": p, "angle": a, "jacobian_norm": j, "transitions": 1}
        for t in ("t0", "t1") for e in ("random", "same_class") for p in ("init", "trained")
        for a, j in zip(np.linspace(0, 2 * np.pi, 64, endpoint=False),
                        log_values(rng, lo, hi, 64))])
    assert figures.trajectory_figure(curves, tmp_path / "f2.png", bins=16)
    assert len(saved) == 7
    assert check_ticks(saved) >= 7 * 2


@pytest.mark.parametrize("span", ["narrow", "wide"])
def test_tick_labels_of_neyshabur_figures_never_overlap(tmp_path, saved, span):
    lo, hi = RANGES[span]
    rng = np.random.default_rng(2)
    rows = []
    for size in (128, 256, 512, 1024):
        for rnd in (False, True):
            for seed in (1, 2):
                r = {"trial_id": f"t{len(rows)}", "train_size": size, "random_labels": rnd,
                     "seed": seed, "width": [8, 64, 512, 4096][len(rows) % 4], "depth": 2,
                     "train_acc": 1.0, "test_acc": 0.8 + 0.1 * rng.random()}
                r.update({m: float(log_values(rng, lo, hi, 1)[0])
                          for m in neyshabur.FIG1_MEASURES})
                rows.append(r)
    fit = pd.DataFrame(rows)
    measures = list(neyshabur.FIG1_MEASURES)
    assert neyshabur.labels_figure(fit, tmp_path / "n1.png")
    assert neyshabur.labels_all_figure(fit, tmp_path / "n1_all.png", measures)
    assert neyshabur.width_figure(fit, tmp_path / "n4.png", measures)
    curves = pd.DataFrame([{"trial_id": t, "alpha": a, "kl": k, "expected_sharpness": s}
                           for t in fit["trial_id"] for a, k, s in
                           zip(range(6), log_values(rng, lo, hi, 6), log_values(rng, lo, hi, 6))])
    assert neyshabur.sharpness_kl_figure(curves, tmp_path / "n2.png", fit)
    assert check_ticks(saved) > 0


def test_log_tick_plan_labels_decades_or_a_few_plain_numbers():
    mode, ticks = figures.log_tick_plan(250.0, 450.0)
    shown = [t for t in ticks if 250 <= t <= 450]
    assert mode == "plain" and shown == [300.0, 400.0]
    mode, ticks = figures.log_tick_plan(0.09, 1.1)  # a decade: 1, 2, 5 times its powers
    assert mode == "plain" and [t for t in ticks if 0.09 <= t <= 1.1] == [0.1, 0.2, 0.5, 1.0]
    mode, ticks = figures.log_tick_plan(30.0, 30000.0)  # decades, minor ticks unlabelled
    assert mode == "decades" and [t for t in ticks if 30 <= t <= 3e4] == [100.0, 1e3, 1e4]
    mode, ticks = figures.log_tick_plan(1e-20, 1e3, numticks=4)  # every s-th decade
    shown = [t for t in ticks if 1e-20 <= t <= 1e3]
    assert mode == "decades" and 2 <= len(shown) <= 4
    mode, ticks = figures.log_tick_plan(0.12, 9.0)  # one power of ten: 1, 2, 5 times it
    assert mode == "plain" and [t for t in ticks if 0.12 <= t <= 9] == [0.2, 0.5, 1, 2, 5]
    mode, ticks = figures.log_tick_plan(0.12, 9.0, numticks=4)  # (too many: 1 and 5)
    assert mode == "plain" and [t for t in ticks if 0.12 <= t <= 9] == [0.5, 1, 5]
    assert [figures.plain_number(v, s) for v, s in
            ((0.2, 0.3), (5.0, 3.0), (312.0, 8.0), (1.215, 0.015), (1.2e-05, 1e-6))] == \
        ["0.2", "5", "312", "1.215", "1.2e-05"]


def test_a_colour_variable_with_two_values_gets_two_colours_and_a_legend(tmp_path, monkeypatch):
    drawn = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, *a, **kw: (drawn.append(fig),
                                                                 real(fig, *a, **kw))[1])
    df = results(250.0, 450.0, widths=(16, 64))  # depth 3: 32 and 128 hidden neurons
    figures.transitions_gap_figure(df, tmp_path / "f8.png", HPS)
    fig = drawn[-1]
    assert not [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend.get_title().get_text() == figures.NEURONS_LABEL  # says what it counts
        assert [t.get_text() for t in legend.get_texts()] == ["32", "128"]
        colours = {tuple(np.round(h.lines[0].get_color(), 6)) if not isinstance(
            h.lines[0].get_color(), str) else h.lines[0].get_color()
            for h in ax.containers}
        assert len(colours) == 2
    # many values: an ordered colour bar labelled with the variable's name
    many = results(250.0, 450.0, widths=tuple(2 ** k for k in range(3, 15)), n=48)
    figures.transitions_gap_figure(many, tmp_path / "f8b.png", HPS)
    bars = [ax for ax in drawn[-1].axes if ax.get_label() == "<colorbar>"]
    assert bars and all("hidden neurons" in ax.get_ylabel() for ax in bars)


def ranking(measures, signs=None) -> pd.DataFrame:
    n = len(measures)
    e = np.linspace(0.05, 0.45, n)
    return pd.DataFrame({"rank": range(1, n + 1), "measure": measures,
                         "sign": signs or [1] * n, "sign_error": e, "sign_error_low": e - 0.02,
                         "sign_error_high": e + 0.03, "robust_sign_error": e + 0.2})


def test_the_sign_error_figure_labels_the_baselines(tmp_path, monkeypatch):
    drawn = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, *a, **kw: (drawn.append(fig),
                                                                 real(fig, *a, **kw))[1])
    r = ranking(["train_loss", "jacobian_norm_test", "n_params", "inverse_margin"],
                [1, 1, 1, -1])
    figures.sign_error_figure(r, tmp_path / "s.png", ("n_params", "train_loss"))
    labels = [t.get_text() for t in drawn[-1].axes[0].get_yticklabels()]
    assert labels == ["train_loss (baseline)", "jacobian_norm_test", "n_params (baseline)",
                      "-inverse_margin"][::-1] or labels == [
        "train_loss (baseline)", "jacobian_norm_test", "n_params (baseline)", "-inverse_margin"]
    legend = [t.get_text() for t in drawn[-1].axes[0].get_legend().get_texts()]
    assert any("baseline" in t for t in legend)
    # a ``baseline`` column (the report's statistics) marks them too
    figures.sign_error_figure(r.assign(baseline=r["measure"] == "train_loss"), tmp_path / "t.png")
    labels = [t.get_text() for t in drawn[-1].axes[0].get_yticklabels()]
    assert "train_loss (baseline)" in labels and "n_params" in labels
    # no baseline: no such label or legend entry
    figures.sign_error_figure(r, tmp_path / "u.png")
    assert not any("baseline" in t.get_text() for t in drawn[-1].axes[0].get_yticklabels())


def test_the_report_marks_its_baselines_in_the_sign_error_figure(tmp_path, monkeypatch):
    from test_report import synthetic_sweep, undrawn_figures

    from analysis.report import BASELINES
    from sweep.cli import main

    undrawn_figures(monkeypatch)  # (the figure's arguments are checked, not its drawing)
    drawn = []
    real = figures.sign_error_figure

    def spy(ranking, path, *a, **kw):
        drawn.append((ranking, a, kw))
        return real(ranking, path, *a, **kw)

    monkeypatch.setattr(figures, "sign_error_figure", spy)
    d = tmp_path / "s"
    synthetic_sweep(d, np.random.default_rng(3))
    assert main(["report", str(d), "--bootstrap", "0"]) == 0
    (ranking_, a, kw), = drawn
    assert tuple(a[0] if a else kw["baselines"]) == tuple(BASELINES)
    assert set(BASELINES) & set(ranking_["measure"])
