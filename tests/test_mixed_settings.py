"""A measure's column that mixes values computed under different settings (a `sweep measure` at
new settings stopped part way: measures.json already names the new ones) is said, not silently
ranked: load_results warns once per measure with the counts under each setting and the command
that makes them one, and keeps them in ``attrs["mixed_settings"]``; the report says so at its
top. Found by a new user: an interrupted re-measure left 51 values at points=100 and 39 at 30 in
one column, and the report ranked it, its header saying the values were at 100."""

from __future__ import annotations

import os
import re
import shlex
import signal
import warnings

import pytest

from sweep.cli import main

TINY = ["experiment=demo", "trials=3", "dataset.train_size=120", "dataset.test_size=40",
        "train.steps=40", "train.check_every=20", "space.width=[8]", "space.depth=[2]",
        "space.batch_size=[32]", "metrics.transitions_points=2", "progress=false",
        "figure=false", "save_weights=true", "measures=[jacobian_norm_test]"]


def _loaded_with_notes(out):
    """load_results of ``out`` and the warnings it gave about transitions_test."""
    from analysis import load_results

    with pytest.warns(UserWarning) as caught:
        df = load_results(out)
    return df, [str(w.message) for w in caught if "transitions_test" in str(w.message)]


@pytest.mark.slow
def test_a_column_of_two_settings_is_warned_about_and_the_report_says_so(ray_local, tmp_path,
                                                                         capsys, monkeypatch):
    import sweep.evaluate
    from analysis import load_measures, load_results
    from analysis.report import make_report
    from sweep.driver import launch
    from sweep.config import compose

    out = tmp_path / "s"
    launch(compose(TINY + [f"out={out}"]))
    first = ["measures=[transitions_test]", "measure_settings.transitions_test.points=2"]
    assert main(["measure", str(out), *first]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one setting: no warning
        df = load_results(out)
    assert df.attrs["mixed_settings"] == {}
    # the same measure at new settings, stopped after its first trial
    real_done = sweep.evaluate.MeasureWork.done
    seen = []

    def done_then_interrupted(self, unit, results):
        n = real_done(self, unit, results)
        seen.extend(unit)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return n

    monkeypatch.setattr(sweep.evaluate.MeasureWork, "done", done_then_interrupted)
    again = ["measures=[transitions_test]", "measure_settings.transitions_test.points=3",
             "resources.max_in_flight=1"]
    capsys.readouterr()
    assert main(["measure", str(out), *again]) == 130
    monkeypatch.setattr(sweep.evaluate.MeasureWork, "done", real_done)
    assert len(seen) == 1
    # the slow obvious way: per trial, the settings of the value load_results shows
    long = load_measures(out, ["transitions_test"])
    points = long.assign(p=long.settings.str.extract(r'"points":(\d+)')[0].astype(int))
    by_trial = points.groupby("trial_id").p.max()  # a trial's latest is its largest here
    assert sorted(by_trial.value_counts().items()) == [(2, 2), (3, 1)]
    with pytest.warns(UserWarning) as caught:
        df = load_results(out)
    said = [str(w.message) for w in caught if "transitions_test" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith(
        "transitions_test: its 3 values were computed under 2 different settings (1 under "
        "points=3 (the settings asked for last); 2 under points=2), and the column mixes them; `")
    command = re.search(r"`(sweep measure [^`]*)`", said[0]).group(1)
    assert shlex.split(command) == ["sweep", "measure", str(out), "measures=[transitions_test]",
                                    "measure_settings.transitions_test.k=4096",
                                    "measure_settings.transitions_test.points=3"]
    kinds = df.attrs["mixed_settings"]["transitions_test"]
    assert [(k[2], k[3]) for k in kinds] == [(1, True), (2, False)]
    assert (df.transitions_points == df.trial_id.map(by_trial)).all()  # (what the note counts)
    uri = make_report(str(out), n_boot=2, processes=1)
    html = open(uri.removeprefix("file://")).read()
    top = html.split("<h2>", 1)[0]
    assert "Measure values computed under other settings or versions than asked for." in top
    assert "1 under points=3 (the settings asked for last); 2 under points=2" in top
    # the printed command makes them one: then no warning
    assert main(shlex.split(command)[1:]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = load_results(out)
    assert df.attrs["mixed_settings"] == {} and (df.transitions_points == 3).all()
    # asked for new settings, stopped before any value was written (measures.json is written
    # first): the column is one setting, but not what was asked for last, and says so
    from dataclasses import replace

    from workers.measures import REGISTRY
    from workers.results.measure_table import write_selection

    m = REGISTRY["transitions_test"]
    write_selection(str(out), {"transitions_test": (m.version, {**m.settings, "points": 5})})
    df, said = _loaded_with_notes(out)
    assert said == [
        f"transitions_test: its 3 values were computed under points=3, none under the settings "
        f"asked for last (points=5); `sweep measure {out} 'measures=[transitions_test]' "
        "measure_settings.transitions_test.k=4096 measure_settings.transitions_test.points=5` "
        "evaluates the other 3 under the settings asked for last (load_measures has each "
        "value's settings)"]
    # a release that computes a newer version: the stored ones are said to be older
    monkeypatch.setitem(REGISTRY, "transitions_test", replace(m, version=m.version + 1))
    write_selection(str(out), {"transitions_test": (m.version, {**m.settings, "points": 3})})
    df, said = _loaded_with_notes(out)
    assert said == [
        f"values of older versions than this release computes: transitions_test (version "
        f"{m.version}; now {m.version + 1}); `sweep measure {out} 'measures=[transitions_test]'` "
        "adds the current ones (the stored ones are kept; the README says what changed)"]
    assert df.attrs["outdated"] == {"transitions_test": ((m.version,), m.version + 1)}
