"""The report says what it is doing and how far its statistics are (issue #24): a bar on a
terminal, plain lines in a log, an estimate before the bootstrap starts."""

import io
import re

import numpy as np
import pandas as pd
import pytest

from analysis.progress import StatsProgress
from analysis.stats import statistics_table


class Terminal(io.StringIO):
    def isatty(self):
        return True


def table(n=240, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"dataset": rng.choice(["a", "b"], n), "width": rng.integers(0, 4, n),
                       "depth": rng.integers(0, 3, n), "lr": rng.integers(0, 3, n),
                       "seed": rng.integers(1, 5, n)})
    df["gen_gap"] = 0.1 * df.width + rng.normal(scale=0.1, size=n)
    df["m0"] = df.gen_gap + rng.normal(scale=0.1, size=n)
    df["m1"] = rng.normal(size=n)
    return df


@pytest.mark.parametrize("processes", [1, 2])
def test_statistics_table_reports_every_evaluation_and_the_same_table(processes):
    """progress(done, total, processes) runs from the estimates (2 measures x 3 groups) to
    measures x groups x (n_boot + 1), never backwards, in this process and from 2 worker
    processes (through a queue); the table is the one made without progress."""
    df = table()
    calls = []
    hps = ["dataset", "width", "depth", "lr"]
    got = statistics_table(df, measures=["m0", "m1"], n_boot=9, hyperparameters=hps,
                           processes=processes, progress=lambda *a: calls.append(a))
    want = statistics_table(df, measures=["m0", "m1"], n_boot=9, hyperparameters=hps)
    pd.testing.assert_frame_equal(got, want)
    total = 2 * 3 * 10
    assert calls[0][0] == 6 and all(c[1] == total and c[2] == processes for c in calls)
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == total


def test_lines_in_a_log_with_what_follows_first_and_the_time_last():
    """Into a file: a line once the estimates are made (their time and what follows), a line
    per interval (here every call: line_s=0) with the time left, the last line
    with the total, nothing after it; no carriage returns (no bar)."""
    out = io.StringIO()
    p = StatsProgress(out, line_s=0.0)
    for done in (6, 18, 30, 42, 60, 60):  # (the rate: from the first bootstrap call, 18, on)
        p(done, 60, 2)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 4
    assert re.fullmatch(r"report: statistics: estimates of 6 \(measure, group\) pairs in "
                        r"\d+ s; 54 bootstrap evaluations follow on 2 processes; their time "
                        r"is estimated after 5 s", lines[0])
    assert lines[1].startswith("report: statistics: 24/54 bootstrap evaluations in ")
    assert "left" in lines[1] and lines[3].startswith("report: statistics: 54/54 bootstrap evaluations")


def test_a_bar_on_a_terminal():
    out = Terminal()
    p = StatsProgress(out)
    for done in (2, 5, 10):
        p(done, 10, 1)
    text = out.getvalue()
    assert "\r" in text and "8/8" in text  # tqdm's frames: the 8 bootstrap evaluations
    assert text.splitlines()[0].startswith("report: statistics: estimates of 2")


@pytest.mark.slow
def test_a_launch_log_shows_the_reports_progress(tmp_path):
    """`sweep launch ... 2> log`: the log holds the report's stages and its statistics'
    estimate and last line."""
    import os
    import subprocess
    import sys

    from procs import run

    out, log = tmp_path / "s", tmp_path / "launch.log"
    cmd = [sys.executable, "-m", "sweep.cli", "launch", "trials=4", "dataset.train_size=100",
           "dataset.test_size=80", "train.steps=1500", "train.check_every=50",
           "space.width=[32,64]", "space.depth=[2,3]", "space.batch_size=[32]",
           "space.activation=[relu]", "space.optimizer=[adam]", "space.lr=[0.005]",
           # one measure (and the baselines): the report says the same stages as with all of
           # them (48 ranked), whose measuring and statistics took most of this test's time
           "measures=[jacobian_norm_test]", "progress=false", f"out={out}"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with open(log, "w") as err:
        r = run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=900, env=env)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert re.search(r"^report: figures of 4 trials", text, re.M), text[-3000:]
    assert re.search(r"^report: statistics of (\d+) measures \(\d+ measures and the 2 baselines "
                     r"n_params, train_loss\) over \d+ trials, \d+ bootstrap", text, re.M), \
        text[-3000:]
    assert re.search(r"^report: statistics: estimates of \d+ .* bootstrap evaluations follow "
                     r"on \d+ process", text, re.M)
    assert re.search(r"^report: statistics: (\d+)/\1 bootstrap evaluations in ", text, re.M)
    assert "\r" not in text
