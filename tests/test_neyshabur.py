"""Neyshabur et al.'s studies recognised from a results table, and their figures drawn from
synthetic tables (analysis/neyshabur.py)."""

import numpy as np
import pandas as pd
import pytest

from analysis import neyshabur
from analysis.stats import HYPERPARAMETERS


def table(factors: dict, seeds=(1, 2), rng=None) -> pd.DataFrame:
    """A results-like table: every hyperparameter constant but ``factors`` (crossed) and the
    seed; measures that grow with the training set and with random labels."""
    rng = rng or np.random.default_rng(0)
    base = {"dataset": "digits", "train_size": 1000, "random_labels": False, "augment": False,
            "width": 64, "depth": 2, "activation": "relu", "optimizer": "sgd", "lr": 0.01,
            "batch_size": 64, "init_scale": 1.0, "step_budget": 1000}
    rows = []
    keys = list(factors)
    for combo in pd.MultiIndex.from_product([factors[k] for k in keys]):
        combo = combo if isinstance(combo, tuple) else (combo,)
        for seed in seeds:
            r = {**base, **dict(zip(keys, combo)), "seed": seed, "status": "ok",
                 "trial_id": f"t{len(rows)}"}
            scale = r["train_size"] * (4.0 if r["random_labels"] else 1.0) * r["width"]
            for i, m in enumerate(neyshabur.FIG1_MEASURES):
                r[m] = scale * (i + 1) * (1 + 0.01 * rng.random())
            r["jacobian_norm_test"] = scale ** 0.5
            r["train_acc"], r["test_acc"] = 1.0, 0.9 - 0.4 * r["random_labels"]
            rows.append(r)
    return pd.DataFrame(rows)


def test_studies_are_recognised_from_what_varies():
    labels = table({"train_size": [128, 256, 512], "random_labels": [False, True]})
    assert neyshabur.labels_study(labels, HYPERPARAMETERS)
    assert not neyshabur.width_study(labels, HYPERPARAMETERS)
    width = table({"width": [8, 64, 512]})
    assert neyshabur.width_study(width, HYPERPARAMETERS)
    assert not neyshabur.labels_study(width, HYPERPARAMETERS)
    mixed = table({"width": [8, 64, 512], "depth": [2, 3]})
    assert not neyshabur.width_study(mixed, HYPERPARAMETERS)  # a second factor varies
    assert not neyshabur.labels_study(table({"random_labels": [False, True]}), HYPERPARAMETERS)
    assert not neyshabur.labels_study(labels.iloc[:0], HYPERPARAMETERS)


def test_figures_are_drawn_for_their_studies(tmp_path):
    labels = table({"train_size": [128, 256, 512], "random_labels": [False, True]})
    measures = list(neyshabur.FIG1_MEASURES) + ["jacobian_norm_test"]
    for name, fn, extra in (("f1", neyshabur.labels_figure, ()),
                            ("f1all", neyshabur.labels_all_figure, (measures,))):
        p = fn(labels, tmp_path / f"{name}.png", *extra)
        assert p is not None and p.stat().st_size > 10_000
    curves = pd.DataFrame([(t, a, 1.0 / a ** 2, a * n) for t, n in
                           zip(labels["trial_id"], labels["train_size"])
                           for a in (1e-3, 1e-2, 1e-1)],
                          columns=["trial_id", "alpha", "kl", "expected_sharpness"])
    p = neyshabur.sharpness_kl_figure(curves, tmp_path / "f2.png", labels)
    assert p is not None and p.with_suffix(".svg").is_file()
    width = table({"width": [8, 64, 512]})
    p = neyshabur.width_figure(width, tmp_path / "f4.png", measures)
    assert p is not None and p.stat().st_size > 10_000
    # nothing to draw: None, no file
    assert neyshabur.labels_figure(labels.drop(columns=list(neyshabur.FIG1_MEASURES)),
                                   tmp_path / "none.png") is None
    assert neyshabur.sharpness_kl_figure(curves.iloc[:0], tmp_path / "none.png", labels) is None
    assert not (tmp_path / "none.png").exists()


def test_fig1_divides_each_measure_by_its_true_label_value_at_the_smallest_size(tmp_path,
                                                                                  monkeypatch):
    labels = table({"train_size": [128, 256], "random_labels": [False, True]}, seeds=(1,))
    drawn = {}
    import matplotlib.axes

    real = matplotlib.axes.Axes.plot

    def spy(self, x, y, *a, label=None, **kw):
        drawn.setdefault(self, {})[label] = (list(x), list(y))
        return real(self, x, y, *a, label=label, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    neyshabur.labels_figure(labels, tmp_path / "f1.png")
    drawn = {ax.get_title(): lines for ax, lines in drawn.items()}  # (titles set after plotting)
    for name, label in neyshabur.FIG1_LABELS.items():
        true = labels[~labels.random_labels].sort_values("train_size")[name].to_numpy()
        rnd = labels[labels.random_labels].sort_values("train_size")[name].to_numpy()
        assert drawn["true labels"][label][1] == pytest.approx(list(true / true[0]))
        assert drawn["random labels"][label][1] == pytest.approx(list(rnd / true[0]))


@pytest.mark.slow
def test_scaled_down_labels_experiment_draws_fig1_and_fig2_and_ranks_every_measure(ray_local,
                                                                                   tmp_path):
    from analysis import load_results, load_sharpness_curves
    from sweep.cli import main
    from workers.measures import available

    out = tmp_path / "labels"
    assert main(["launch", "experiment=neyshabur_labels", "dataset=digits",
                 "space.train_size=[64,128]", "space.width=[128]", "space.seed=[1]", "trials=4",
                 "train.check_every=50", "metrics.transitions_points=2", "progress=false",
                 f"out={out}"]) == 0
    df = load_results(out)
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert sorted(zip(df["train_size"], df["random_labels"])) == [
        (64, False), (64, True), (128, False), (128, True)]
    assert (df["train_acc"] == 1.0).all()  # trained to zero training error, random labels too
    assert set(available()) <= set(df.attrs["measures"])  # every measure by default
    curves = load_sharpness_curves(out)
    assert set(curves["trial_id"]) == set(df["trial_id"]) and len(curves) == 4 * 10
    rep = out / "report"
    for name in ("neyshabur_fig1", "neyshabur_fig1_all", "neyshabur_fig2", "sign_errors"):
        assert (rep / f"{name}.png").is_file(), name
    ranking = pd.read_csv(rep / "ranking.csv")
    assert set(available()) | {"n_params", "train_loss"} == set(ranking["measure"])
    assert len(ranking) >= 30 + 2


def test_fitted_note_names_the_cells_without_a_fitted_trial():
    ok = table({"train_size": [128, 256], "random_labels": [False, True]})
    fit = ok[~(ok.random_labels & (ok.train_size == 256))]
    note = neyshabur.fitted_note(fit, ok, 1.0)
    assert f"{len(fit)} of {len(ok)} trained trials" in note
    assert note.endswith("No trial does at: random labels, 256 points.")
    assert "No trial" not in neyshabur.fitted_note(ok, ok, 1.0)


def test_the_report_knows_the_sign_of_a_sweeps_own_measure(tmp_path):
    import json

    from analysis.report import _load_sweep_modules
    from analysis.stats import measure_sign
    from workers.measures import REGISTRY
    from workers.results.storage import store

    mod = tmp_path / "lab_margin.py"
    mod.write_text("from workers.measures import register\n"
                   "@register('lab_margin_test', source='test', sign=-1)\n"
                   "def lab_margin_test(inputs):\n    return 1.0\n")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(
        {"config": {"measure_modules": [str(mod)]}}))
    try:
        assert measure_sign("lab_margin_test") == 1  # unknown before the sweep's modules load
        _load_sweep_modules(store(tmp_path / "s"))
        assert measure_sign("lab_margin_test") == -1
    finally:
        REGISTRY.pop("lab_margin_test", None)


def test_a_null_training_set_size_is_counted_not_dropped_and_titles_fit(tmp_path, monkeypatch):
    """Issue 22 item 11's kind (a null hyperparameter compared with ==, grouped without
    dropna=False): trials of the whole split (train_size null) cannot sit on the size axis;
    each figure says how many it leaves out, the report's note names their cell, and every
    text drawn lies inside its figure."""
    import re

    from test_report import _cut, _drawn_texts

    drawn = _drawn_texts(monkeypatch)
    labels = table({"train_size": [128, 256, None], "random_labels": [False, True]})
    whole = int(labels["train_size"].isna().sum())
    assert whole == 4  # 2 label kinds x 2 seeds
    measures = list(neyshabur.FIG1_MEASURES) + ["jacobian_norm_test"]
    curves = pd.DataFrame([(t, a, 1.0 / a ** 2, a) for t in labels["trial_id"]
                           for a in (1e-3, 1e-2, 1e-1)],
                          columns=["trial_id", "alpha", "kl", "expected_sharpness"])
    assert neyshabur.labels_figure(labels, tmp_path / "f1.png") is not None
    assert neyshabur.labels_all_figure(labels, tmp_path / "f1all.png", measures) is not None
    assert neyshabur.sharpness_kl_figure(curves, tmp_path / "f2.png", labels) is not None
    for name in ("f1.png", "f1all.png", "f2.png"):
        titles = {" ".join(t.split()) for n, t, _, _ in drawn if n == name and "trials" in t}
        assert any(re.search(rf"\({len(labels) - whole} trials; {whole} trials without a "
                             "training-set size", t) for t in titles), (name, titles)
    assert _cut(drawn) == []
    # the note: a cell of the whole split where no trial fits is named as such
    fit = labels[~(labels["train_size"].isna() & labels["random_labels"])]
    note = neyshabur.fitted_note(fit, labels, 1.0)
    assert note.endswith("No trial does at: random labels, the whole training set.")
    assert neyshabur.fitted_note(labels, labels, 1.0).endswith("only those are drawn.")
