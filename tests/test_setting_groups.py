"""A group's settings (``measure_settings.pacbayes``, ``.jacobian_norm``) given straight to the
measures (``evaluate``, a trial's ``MetricSpec.measure_overrides``) apply to every member, as
the configuration's do; before, a group's name was read as a measure's and set nothing."""

import torch

from workers.measures import MeasureInputs, SETTING_GROUPS, evaluate_outcomes
from workers.models import build_mlp


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return MeasureInputs(build_mlp(6, 8, 3, 3, "relu", 1.0, 0).eval(), x, y, x, y)


def test_a_groups_settings_reach_each_member_and_a_members_own_wins():
    names = list(SETTING_GROUPS["jacobian_norm"])
    by_group = evaluate_outcomes(_inputs(), names, {"jacobian_norm": {"points": 5},
                                                     "jacobian_norm_test": {"points": 7}})
    by_name = evaluate_outcomes(_inputs(), names, {"jacobian_norm_train": {"points": 5},
                                                    "jacobian_norm_test": {"points": 7}})
    defaults = evaluate_outcomes(_inputs(), names)
    for n in names:
        assert by_group[n].settings == by_name[n].settings, n
        assert by_group[n].value == by_name[n].value, n
    assert (by_group["jacobian_norm_train"].settings["points"],
            by_group["jacobian_norm_test"].settings["points"]) == (5, 7)
    assert by_group["jacobian_norm_train"].value != defaults["jacobian_norm_train"].value
