"""The report's ranking: measures that rank the trials identically merged into one row
(detected from the data, on the issue's examples built by hand), ties, the ranking figure,
and numbers that never read "-0.000"."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis.stats import (
    equivalent_measures, merge_equivalent, ranking_table, spearman, statistics_table,
)

HPS = ["width", "depth"]
BASE = {(16, 2): 1.0, (32, 2): 2.0, (64, 2): 3.0, (16, 3): 4.0, (32, 3): 5.0, (64, 3): 6.0}
# two configurations whose seed means order differently under a square root
SHARP = {(16, 2): (1.0, 9.0), (32, 2): (4.0, 4.5), (64, 2): (20.0, 21.0), (16, 3): (30.0, 31.0),
         (32, 3): (40.0, 41.0), (64, 3): (50.0, 51.0)}


def params_of(w: int, d: int) -> float:
    return float(64 * w + (d - 1) * w * w + 10 * w)  # weights only (no biases)


def hand_table(seed: int = 0) -> pd.DataFrame:
    """width x depth x 2 seeds, the gap noisy, and measure columns that are (or are not)
    monotone functions of each other."""
    rng = np.random.default_rng(seed)
    rows = []
    for (w, d), b in BASE.items():
        for s in (0, 1):
            x = b * 10 * (1 + 0.01 * s)  # well apart between configurations
            g = (0.5 + (7 - b) / 4) * (1 + 0.01 * s)  # the margin, close over the seeds
            # log_prod larger at depth 3 than at depth 2, log_sum not: (16, 2) 9 -> 5.19,
            # (32, 3) 10.4 -> 4.57
            lp = ({16: 9, 32: 3, 64: 6}[w] if d == 2 else 10 + {16: 0.6, 32: 0.4, 64: 0.5}[w]) \
                + 0.01 * s
            jac = float(rng.uniform(0, 3))
            rows.append({
                "width": w, "depth": d, "seed": s, "gen_gap": float(rng.uniform(0, 0.3)),
                "test_acc": float(rng.uniform(0.6, 0.9)),
                "fro_dist": x, "l2_dist": math.sqrt(x),
                "params": params_of(w, d), "n_params": params_of(w, d) + w * d + 10,
                "margin_gamma10": g, "inverse_margin": 1.0 / g ** 2,
                "log_prod_of_spec": lp, "log_sum_of_spec": math.log(d) + lp / d,
                "jacobian_norm_test": jac, "transitions_test": -jac,  # opposite orders
                "jacobian_norm_train": float(round(jac)),  # other ties
                "sharpness": SHARP[w, d][s], "expected_sharpness": math.sqrt(SHARP[w, d][s]),
                "pacbayes_orig": x if (w, d, s) != (16, 2, 0) else np.nan,  # other rows
            })
    return pd.DataFrame(rows)


MEASURES = ["fro_dist", "l2_dist", "params", "n_params", "margin_gamma10", "inverse_margin",
            "log_prod_of_spec", "log_sum_of_spec", "jacobian_norm_test", "transitions_test",
            "jacobian_norm_train", "sharpness", "expected_sharpness", "pacbayes_orig"]


def test_the_issues_examples_are_detected_from_the_data():
    df = hand_table()
    # the margin's sign -1 makes 1/g^2 and -g agree, though Spearman's rho of the raw values is -1
    assert spearman(df["margin_gamma10"], df["inverse_margin"]) == pytest.approx(-1)
    groups = equivalent_measures(df, MEASURES, hyperparameters=HPS)
    assert groups == [("fro_dist", "l2_dist"), ("params", "n_params"),
                      ("margin_gamma10", "inverse_margin")]
    # at a fixed depth log_sum_of_spec = log d + log_prod_of_spec / d: the same ranks
    fixed = df[df["depth"] == 2]
    assert ("log_prod_of_spec", "log_sum_of_spec") in equivalent_measures(
        fixed, MEASURES, hyperparameters=HPS)
    # across depths they are not (depth 3's products are larger, its sums are not)
    assert not any("log_sum_of_spec" in g for g in groups)
    # the same ranks over the trials but seed means in another order: not merged
    assert spearman(df["sharpness"], df["expected_sharpness"]) == pytest.approx(1)
    assert not any("sharpness" in g for g in groups)
    # signs given: the margin as +1 orders against 1/g^2, so it is left alone
    assert ("margin_gamma10", "inverse_margin") not in equivalent_measures(
        df, MEASURES, hyperparameters=HPS, signs={"margin_gamma10": 1})


def test_merged_rows_carry_every_name_and_the_same_statistics():
    df = hand_table()
    table = statistics_table(df, measures=MEASURES, n_boot=20, hyperparameters=HPS, by=None)
    ranking = ranking_table(table)
    groups = equivalent_measures(df, MEASURES, hyperparameters=HPS)
    # every statistic but Pearson's r is the same for the members of a group
    for g in groups:
        t = table[table["statistic"] != "pearson"].set_index(["statistic", "measure"])
        for m in g[1:]:
            for col in ("value", "ci_low", "ci_high"):
                a = t.xs(g[0], level="measure")[col]
                b = t.xs(m, level="measure")[col]
                np.testing.assert_allclose(a, b, atol=1e-12, err_msg=f"{g} {col}")
    merged = merge_equivalent(ranking, groups)
    assert len(merged) == len(ranking) - 3
    named = {frozenset(ms) for ms in merged["measures"]}  # (in the ranking's order)
    assert {frozenset(g) for g in groups} <= named
    assert sorted(m for ms in merged["measures"] for m in ms) == sorted(ranking["measure"])
    signs = dict(zip(ranking["measure"], ranking["sign"]))
    for ms, ss in zip(merged["measures"], merged["signs"]):  # each member keeps its sign
        assert list(ss) == [signs[m] for m in ms]
    assert signs["margin_gamma10"] == -1 and signs["inverse_margin"] == 1
    # the order of the ranking is kept
    order = list(ranking["measure"])
    assert [order.index(ms[0]) for ms in merged["measures"]] == sorted(
        order.index(ms[0]) for ms in merged["measures"])


def test_members_with_other_numbers_are_not_merged():
    ranking = pd.DataFrame({"rank": [1, 2, 2, 4], "measure": ["a", "b", "c", "d"],
                            "sign": [1, 1, 1, 1], "n_trials": [10, 10, 10, 10],
                            "kendall": [0.5, 0.3, 0.3, 0.1], "kendall_low": [0.1, 0.0, 0.0, 0.0],
                            "kendall_high": [0.9, 0.6, 0.7, 0.2]})
    out = merge_equivalent(ranking, [("b", "c"), ("a", "zz")], statistics=["kendall"])
    assert [tuple(m) for m in out["measures"]] == [("a",), ("b",), ("c",), ("d",)]
    ranking.loc[2, "kendall_high"] = 0.6
    out = merge_equivalent(ranking, [("c", "b")], statistics=["kendall"])
    assert [tuple(m) for m in out["measures"]] == [("a",), ("b", "c"), ("d",)]


def _ranking_with_ties():
    return pd.DataFrame({
        "rank": pd.array([1, 2, 2, 2, 5], dtype="Int64"),
        "measure": ["a", "b", "c", "e", "n_params"], "sign": [1, 1, -1, 1, 1],
        "n_trials": [12] * 5,
        "granulated_kendall": [0.9, 0.681, 0.681, 0.681, -0.00004],
        "granulated_kendall_low": [0.8, -0.5, -0.5, -0.5, -0.2],
        "granulated_kendall_high": [1.0, 0.889, 0.889, 0.889, 0.00001],
        "measures": [("a",), ("b", "d"), ("c",), ("e",), ("n_params",)],
        "signs": [(1,), (1, -1), (-1,), (1,), (1,)]})


def test_ties_are_said_with_their_value_interval_and_support():
    from analysis.report.decide import ranking_ties
    from analysis.report.render import tie_text

    merged = _ranking_with_ties()
    used = {"a": 12, "b": 12, "c": 12, "d": 12, "e": 12, "n_params": 12}
    (tie,) = ranking_ties(merged, "granulated_kendall", used)
    assert tie.rank == 2 and tie.names == (("b", "d"), ("c",), ("e",))
    said = tie_text(tie, "groups where one hyperparameter varies")
    assert said == ("3 rows (4 measures) tie at 0.681 [-0.500, 0.889] on 12 groups where one "
                    "hyperparameter varies (rank 2): b, d; c; e")
    merged.loc[1, "granulated_kendall_low"] = -0.4  # other intervals: no interval said
    (tie,) = ranking_ties(merged, "granulated_kendall", {**used, "e": 10})
    assert tie_text(tie, "groups").startswith("3 rows (4 measures) tie at 0.681 on 10 to 12 groups")


def test_no_negative_zero_anywhere():
    from analysis.report.render import (
        caption_text, interval, number, ranking_html, selection_html, stats_html,
    )
    from analysis.report.decide import CaptionFact

    assert number(-0.0004) == "0.000" and number(-0.0) == "0.000" and number(0.0004) == "0.000"
    assert number(-0.0006) == "-0.001" and number(-0.004, 2) == "0.00"
    assert interval(-1e-9, 1e-9) == " [0.000, 0.000]" and interval(np.nan, 1.0) == ""
    merged = _ranking_with_ties()
    html = ranking_html(merged, "granulated_kendall", ["granulated_kendall"])
    assert "0.000 <small class='ci'>[-0.200, 0.000]</small>" in html
    assert "<td>+1, &minus;1</td>" in html and "b, d <small>(the same ranks)</small>" in html
    table = pd.DataFrame({"group": ["all"], "measure": ["a"], "n_trials": [5], "n_configs": [3],
                          "statistic": ["kendall"], "value": [-1e-5], "ci_low": [-3e-4],
                          "ci_high": [2e-4], "n_used": [5]})
    html += stats_html(table)
    html += caption_text([CaptionFact("x", -0.001, -0.004, 0.3, 5)])
    sel = pd.DataFrame({"measure": ["a", "(random)"], "kind": ["measure", "random"],
                        "sign": [1, 0], "n_groups": [3, 3], "mean_regret": [-1e-7, 0.01],
                        "worst_regret": [0.0, 0.02], "p_best": [1.0, 0.3]})
    html += selection_html(sel)
    assert not re.search(r"-0\.0+(?!\d*[1-9])", html), html
    assert "at random" in html and "Regret" in html


def test_the_ranking_figure_marks_baselines_ties_and_direction(tmp_path, monkeypatch):
    import analysis.ranking_figure as rf

    seen = {}
    real = rf._save

    def save(fig, path, vector=False, rect=None):
        fig.canvas.draw()
        ax = fig.axes[0]
        seen["labels"] = [t.get_text() for t in ax.get_yticklabels()]
        seen["colours"] = [t.get_color() for t in ax.get_yticklabels()]
        seen["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["texts"] = [t.get_text() for t in ax.texts]
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
        seen["overlap"] = any(a.overlaps(b.padded(-1.0)) for i, a in enumerate(boxes)
                              for b in boxes[i + 1:])
        return real(fig, path, vector, rect)

    monkeypatch.setattr(rf, "_save", save)
    p = rf.ranking_figure(_ranking_with_ties(), tmp_path / "r.png", "granulated_kendall",
                          ["n_params", "train_loss"])
    assert p.is_file() and p.with_suffix(".svg").is_file()
    # best at the top (the labels from the top row down)
    assert seen["labels"] == ["a", "b, -d", "-c", "e", "n_params"]  # each member's sign
    assert seen["colours"][-1] == "C1" and seen["colours"][0] != "C1"  # as the baseline's marker
    assert any(t.startswith("baseline (n_params, train_loss)") for t in seen["legend"])
    assert "tied rows (same value)" in seen["legend"]
    assert "better \u2192" in seen["texts"]
    assert not seen["overlap"]
    by_se = _ranking_with_ties().rename(columns=lambda c: c.replace("granulated_kendall",
                                                                    "sign_error"))
    rf.ranking_figure(by_se, tmp_path / "s.png", "sign_error")
    assert "\u2190 better" in seen["texts"]
    assert rf.ranking_figure(by_se.iloc[:0], tmp_path / "x.png", "sign_error") is None


def test_the_ranking_caption_states_support_seeds_merges_and_ties(tmp_path):
    from analysis.report.decide import Report, UnfitValues, ranking_ties
    from analysis.report.render import ranking_caption

    merged = _ranking_with_ties()
    used = {m: 12 for ms in merged["measures"] for m in ms}
    r = Report(location="x", n_trials=24, statuses={"ok": 24}, n_fit=24, train_acc=1.0,
               filter=None, unfit=UnfitValues(), config=None, ranking=merged,
               rank_by="granulated_kendall", ranked=["granulated_kendall"], one_seed=False,
               table=pd.DataFrame(), n_boot=200, noise_filter=False, few_seeds=3,
               merged=merged, ties=ranking_ties(merged, "granulated_kendall", used), used=used,
               n_seeds=3)
    text = ranking_caption(r)
    assert "Each value rests on 12 groups where one hyperparameter varies." in text
    assert "200 bootstrap resamples of the 3 seeds" in text and "Only 3 seeds" in text
    assert "1 row name several measures" in text
    assert "3 rows (4 measures) tie at 0.681 [-0.500, 0.889] on 12 groups" in text
    assert "baselines (n_params, train_loss)" in text and "-0.000" not in text
