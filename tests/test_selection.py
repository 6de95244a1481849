"""Label-free model selection (analysis.selection) on a hand-made table, regrets by hand."""

import numpy as np
import pandas as pd
import pytest

from analysis.selection import RANDOM, model_selection

# (width, depth): test accuracy per seed, jacobian (sign +1) per seed, a measure with ties,
# train loss. (64, 3) is missing, so width 64 has no depth group.
CONFIGS = {
    (16, 2): ((0.79, 0.81), (2.0, 4.0), 1.0, 0.01),
    (32, 2): ((0.90, 0.90), (1.0, 1.0), 1.0, 0.02),
    (64, 2): ((0.84, 0.86), (2.0, 2.0), 2.0, 0.03),
    (16, 3): ((0.70, 0.70), (0.5, 1.5), 0.0, 0.05),
    (32, 3): ((0.75, 0.75), (5.0, 5.0), 0.0, 0.04),
}


def hand_table() -> pd.DataFrame:
    rows = []
    for (width, depth), (accs, jacs, tied, loss) in CONFIGS.items():
        for seed, (acc, jac) in enumerate(zip(accs, jacs)):
            rows.append({"width": width, "depth": depth, "seed": seed, "test_acc": acc,
                         "jacobian_norm_test": jac, "margin_gamma10": -jac,
                         "transitions_test": tied, "train_loss": loss})
    return pd.DataFrame(rows)


def test_regrets_by_hand():
    """Groups (the granulated Kendall's): width at depth 2 {16, 32, 64}, width at depth 3
    {16, 32}, depth at width 16, depth at width 32. Seed means: accuracy 0.80, 0.90, 0.85,
    0.70, 0.75; Jacobian 3, 1, 2, 1, 5."""
    out = model_selection(hand_table(), ["jacobian_norm_test", "margin_gamma10",
                                         "transitions_test"]).set_index("measure")
    assert list(out.index) == ["jacobian_norm_test", "margin_gamma10", "transitions_test",
                               "train_loss", RANDOM]
    assert (out["n_groups"] == 4).all()
    # Jacobian picks (32,2): 0; (16,3): 0.75 - 0.70; (16,3): 0.80 - 0.70; (32,2): 0
    jac = out.loc["jacobian_norm_test"]
    assert jac["mean_regret"] == pytest.approx((0.05 + 0.10) / 4)
    assert jac["worst_regret"] == pytest.approx(0.10)
    assert jac["p_best"] == pytest.approx(0.5)
    assert jac["kind"] == "measure" and jac["sign"] == 1
    # the margin (sign -1) chooses its largest value: -Jacobian, the same picks
    marg = out.loc["margin_gamma10"]
    assert marg["sign"] == -1
    assert marg[["mean_regret", "worst_regret", "p_best"]].tolist() == pytest.approx(
        jac[["mean_regret", "worst_regret", "p_best"]].tolist())
    # ties: the mean over the tied picks. width|2: {16, 32} tie -> 0.90 - 0.85; width|3: both
    # tie -> 0.75 - 0.725; depth|16: (16,3) -> 0.10; depth|32: (32,3) -> 0.15
    tie = out.loc["transitions_test"]
    assert tie["mean_regret"] == pytest.approx((0.05 + 0.025 + 0.10 + 0.15) / 4)
    assert tie["worst_regret"] == pytest.approx(0.15)
    assert tie["p_best"] == pytest.approx((0.5 + 0.5 + 0 + 0) / 4)
    # train loss picks (16,2): 0.10; (32,3): 0; (16,2): 0; (32,2): 0
    tl = out.loc["train_loss"]
    assert tl["kind"] == "baseline"
    assert tl["mean_regret"] == pytest.approx(0.10 / 4) and tl["worst_regret"] == pytest.approx(0.10)
    # at random: the mean over the group, exactly
    rnd = out.loc[RANDOM]
    assert rnd["kind"] == "random"
    assert rnd["mean_regret"] == pytest.approx((0.05 + 0.025 + 0.05 + 0.075) / 4)
    assert rnd["worst_regret"] == pytest.approx(0.075)


def test_per_group_rows_and_missing_values():
    df = hand_table()
    groups = model_selection(df, ["jacobian_norm_test"], per_group=True, random=False,
                             baselines=())
    assert len(groups) == 4 and set(groups["hyperparameter"]) == {"width", "depth"}
    assert sorted(groups["n_networks"]) == [2, 2, 2, 3]
    assert (groups["regret"] >= 0).all()
    assert np.allclose(groups["regret"], groups["best"] - groups["picked"])
    # a trial without the measure leaves its configuration out of that measure's groups
    df.loc[(df.width == 64), "jacobian_norm_test"] = np.nan
    one = model_selection(df, ["jacobian_norm_test"], per_group=True, random=False, baselines=())
    assert sorted(one["n_networks"]) == [2, 2, 2, 2]
    # without any group: NaN regrets, no error
    lone = hand_table().query("width == 16 and depth == 2")
    row = model_selection(lone, ["jacobian_norm_test"]).iloc[0]
    assert row["n_groups"] == 0 and np.isnan(row["mean_regret"])
    with pytest.raises(ValueError, match="nope"):
        model_selection(hand_table(), ["nope"])
