"""The public analysis functions called from a notebook with arguments of the wrong shape (a
helper's audit): a single name where a list is expected is that one name (it was split into
characters, or silently gave an empty table), a filter that is not a DNF list, a process count
or seed of the wrong kind, and a frame that is not one are one ValueError naming the argument;
``load_results`` with columns that leave out trial_id works (it raised KeyError)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from test_drift import _sweep

from analysis import load_measures, load_points, load_results
from analysis.stats import equivalent_measures, granulated_kendall, statistics_table


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("api") / "s")


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame({"gen_gap": rng.normal(size=n), "m": rng.normal(size=n),
                         "q": rng.normal(size=n), "width": rng.integers(1, 4, n),
                         "lr": rng.integers(1, 3, n), "seed": np.arange(n) % 2})


def test_one_name_is_that_name(sweep, frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_frame_equal(load_results(sweep, "width"), load_results(sweep, ["width"]))
        assert list(load_results(sweep, ["width", "margin_gamma5"]).columns) == [
            "width", "margin_gamma5"]  # (without trial_id: a KeyError before)
        assert_frame_equal(load_measures(sweep, "params"), load_measures(sweep, ["params"]))
        assert len(load_measures(sweep, "params")) == 6
        assert_frame_equal(load_points(sweep, trial_ids="t0002"),
                           load_points(sweep, trial_ids=["t0002"]))
        assert len(load_points(sweep, trial_ids="t0002")) == 3
    one = statistics_table(frame, "m", by=None, n_boot=0)
    assert len(one) > 0 and set(one["measure"]) == {"m"}
    assert_frame_equal(one, statistics_table(frame, ["m"], by=None, n_boot=0))
    assert_frame_equal(statistics_table(frame, ["m"], by=None, n_boot=0,
                                        hyperparameters="width"),
                       statistics_table(frame, ["m"], by=None, n_boot=0,
                                        hyperparameters=["width"]))
    assert (granulated_kendall(frame, "m", hyperparameters="width")
            == granulated_kendall(frame, "m", hyperparameters=["width"]))
    assert equivalent_measures(frame.assign(m2=2 * frame["m"]), ["m", "m2"]) == [("m", "m2")]


@pytest.mark.parametrize("filters, words", [
    ("width==8", "allowed: a list of (column, operator, value) triples"),
    ([("width", "~~", 8)], "operator '~~'"),
    ([("width", 8)], "is not a (column, operator, value) triple"),
])
def test_a_filter_of_another_shape_is_one_line(sweep, filters, words):
    with pytest.raises(ValueError, match="^filters: ") as e:
        load_results(sweep, filters=filters)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw, words", [
    (dict(processes="2"), "processes: '2'; allowed: an integer >= 1"),
    (dict(processes=0), "processes: 0; allowed"),
    (dict(seed="x"), "seed: 'x'; allowed: an integer >= 0"),
    (dict(seed=-1), "seed: -1; allowed"),
    (dict(measures=5), "measures: 5; allowed: a name or a list of names"),
    (dict(measures=["m", 5]), "measures: 5 is not a name"),
])
def test_options_of_the_wrong_kind_are_one_line(frame, kw, words):
    with pytest.raises(ValueError) as e:
        statistics_table(frame, **{"by": None, "n_boot": 0, **kw})
    assert str(e.value).startswith(words), str(e.value)


def test_a_list_for_the_frame_is_one_line():
    with pytest.raises(ValueError, match="df: a list; allowed: a pandas DataFrame"):
        statistics_table([1, 2, 3])
    with pytest.raises(ValueError, match="df: a list; allowed: a pandas DataFrame"):
        granulated_kendall([1, 2, 3], "m")
