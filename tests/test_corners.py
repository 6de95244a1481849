"""#22 acceptance: a sweep over the corners of the paper's space (depth 2 and 65, widths 1, 2 and
256, init_scale 0.5 to 8, all five non-linearities), briefly trained on digits, in which every
measure is a finite value or undefined with its reason: none inf, none NaN, none raised."""

import itertools
import json
import math

import pytest

from workers.measures import available, expand_settings, raised
from workers.results.record import read_trial
from workers.results.layout import trial_path
from workers.results.spec import DataSpec, MetricSpec, RunContext, TrainSpec, TrialSpec
from workers.trial import run_trial

ACTIVATIONS = ("relu", "relu6", "tanh", "hardtanh", "hardsigmoid")
# cheap settings (the values' definitions are unchanged; only fewer points, draws and steps);
# "pacbayes" is the group of the six PAC-Bayes measures: a trial's measure_overrides take
# measures, so it is expanded (expand_settings) before it goes into the spec (unexpanded, the
# worker ignored it and the deep wide HardSigmoid corner ran the searches at their defaults:
# 15 steps of 10 draws of a 65 x 256 network, most of the test's time)
CHEAP = {"sharpness": {"points": 60, "steps": 2},
         # (12 bisection steps reach sigma ~ 2 * 2^-12, where the bound's 1/sigma^2 terms are
         # large: the overflow corner is visited; 2 draws instead of 10 keep it cheap)
         "pacbayes": {"points": 60, "samples": 2, "steps": 12},
         "expected_sharpness": {"points": 60, "samples": 2, "alphas": 1, "alpha_min": 1e-3,
                                "alpha_max": 1e-3}}


def corners():
    """Every non-linearity x depth 2 and 65 x widths 1 and 2 x every init scale; width 256 at
    depth 2 at every scale; the deep wide corner (depth 65, width 256, the costliest: the exact
    transition count walks thousands of regions) where the regimes' ends are: tanh at 4
    (chaotic: float64 is another function), relu at 8 (float32 overflows), hardsigmoid at 0.5
    (vanishing)."""
    deep_wide = {("tanh", 4.0), ("relu", 8.0), ("hardsigmoid", 0.5)}
    for act, depth, width, scale in itertools.product(ACTIVATIONS, (2, 65), (1, 2, 256),
                                                      (0.5, 1.0, 4.0, 8.0)):
        if depth == 65 and width == 256 and (act, scale) not in deep_wide:
            continue
        yield act, depth, width, scale


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_measure_is_finite_or_undefined_with_its_reason_at_the_corners(tmp_path, act,
                                                                            monkeypatch):
    from workers import transitions
    from workers.measures import load_modules

    # the exact count's memory bound at 2^22 values (32 MiB), not the machine's: a deep narrow
    # HardTanh network's pieces multiply past it within seconds (undefined, with the reason)
    monkeypatch.setattr(transitions, "MAX_KNOT_ELEMENTS", 1 << 22)

    load_modules(())
    names = tuple(available())
    statuses = set()
    for a, depth, width, scale in corners():
        if a != act:
            continue
        spec = TrialSpec(DataSpec("digits", train_size=60, test_size=30), width, depth, act,
                         "sgd", 0.01, 32, scale, 1, train=TrainSpec(steps=10, check_every=5),
                         metrics=MetricSpec(measures=names, transitions_points=3,
                                            transitions_k=64, jacobian_points=30,
                                            measure_overrides=json.dumps(expand_settings(CHEAP))))
        row = run_trial(spec, RunContext(str(tmp_path)))
        stored = read_trial(trial_path(tmp_path, spec.trial_id)).to_pylist()[0]
        where = (act, depth, width, scale)
        statuses.add(row["status"])
        assert row["status"] in ("ok", "diverged"), (where, row["error"])
        if row["status"] == "diverged":  # a float32 network that is not finite: no measures
            assert "non-finite" in row["error"], where
            continue
        for col in ("train_acc", "test_acc", "gen_gap", "train_loss", "test_loss"):
            assert math.isfinite(stored[col]), (where, col)
        assert stored["float64_agrees"] in (True, False), where
        from analysis import load_measures

        long = load_measures(tmp_path)
        long = long[long.trial_id == spec.trial_id]
        assert set(long.measure) == set(names), where
        for m in long.itertuples():
            if m.value is None or (isinstance(m.value, float) and math.isnan(m.value)):
                assert m.error and m.error.startswith("undefined") and not raised(m.error), (
                    where, m.measure, m.error)
            else:
                assert math.isfinite(m.value), (where, m.measure, m.value)
                assert m.error is None or m.error != m.error, (where, m.measure)
    assert "ok" in statuses
