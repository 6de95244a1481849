"""Progress of the report's statistics table, with the trials' conventions (sweep.driver): a
bar on a terminal; into a file or pipe, plain lines (one a minute, and the first and last);
before the bootstrap starts, an estimate of its time from the estimates' own."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PROGRESS_LINE_S = 60.0  # without a terminal: one progress line per minute (as the trials')


def duration(seconds: float) -> str:
    """``seconds`` for people: "45 s", "12.5 min", "3.2 h" (the statistics' progress lines and
    the trials', sweep.dispatch)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


FIRST_ESTIMATE_S = 5.0  # seconds of bootstrap evaluations before the first estimate of the rest


class StatsProgress:
    """``analysis.stats.statistics_table``'s ``progress`` callback. The first call comes once
    the estimates (evaluation 0 of every measure and group) are made, in one process: it
    prints how many bootstrap evaluations follow (``total - done`` of that call); the bar and
    the lines count those same evaluations, from 0 to that number, so the total announced is
    the total counted. Later calls move the bar (with its estimate), or print a line with the
    time left after ``FIRST_ESTIMATE_S`` and then a line a minute; the last says how long it
    took. ``stream`` (default stderr) and ``live`` (default: whether the stream is a terminal)
    choose bar or lines."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None,
                 line_s: float = PROGRESS_LINE_S):
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.line_s = line_s
        self.t0 = self.last = time.monotonic()
        self.first: tuple[float, int] | None = None
        self.since: tuple[float, int] | None = None  # (time, evaluations) the rate starts at
        self.bar = None
        self.finished = False
        self.processes_note = ""  # why fewer processes than CPUs (statistics_table sets it)

    def _line(self, text: str) -> None:
        print(f"report: statistics: {text}", file=self.stream, flush=True)

    def __call__(self, done: int, total: int, processes: int) -> None:
        now = time.monotonic()
        if self.finished:
            return
        if self.first is None:
            self.first = (now, done)
            # (no time yet: the estimates' own time includes one-off work - compiling the
            # kernels, preparing each measure - that the bootstrap evaluations do not repeat,
            # and overstated it up to 40x; the first line of the bootstrap gives one)
            made = (f"estimates of {done} (measure, group) pair{'s' if done != 1 else ''} in "
                    f"{duration(now - self.t0)}")
            if done >= total:  # (--bootstrap 0: nothing follows, nothing to count)
                self.finished = True
                self._line(f"{made}; no bootstrap resamples")
                return
            why = f" ({self.processes_note})" if self.processes_note else ""
            self._line(f"{made}; {total - done} bootstrap evaluations follow on {processes} "
                       f"process{'es' if processes > 1 else ''}{why}; their time is estimated "
                       f"after {FIRST_ESTIMATE_S:.0f} s")
            # the first line after 5 s (or line_s, if shorter)
            self.last = now - self.line_s + min(FIRST_ESTIMATE_S, self.line_s)
            if self.live and done < total:
                from tqdm import tqdm

                self.bar = tqdm(total=total - done, initial=0, unit="evaluation",
                                desc="report: statistics: bootstrap", dynamic_ncols=True,
                                file=self.stream, mininterval=0.5)
        t, d = self.first
        boot, n = done - d, total - d  # the bootstrap evaluations made, of those announced
        if boot > 0 and self.since is None:
            # the rate is taken from the first bootstrap evaluation on, over FIRST_ESTIMATE_S
            # at least: the time before it holds the worker processes' start (their kernels
            # compiled again; the estimate read 59 min for a 52 s bootstrap), and the
            # processes' first evaluations arrive together (it read 0 s)
            self.since = (now, boot)
        if self.bar is not None:
            self.bar.update(boot - self.bar.n)
        elif self.since is not None and boot > self.since[1] and done < total \
                and now - self.since[0] >= min(FIRST_ESTIMATE_S, self.line_s) \
                and now - self.last >= self.line_s:  # (a rate over 5 s at least: not a burst)
            self.last = now
            rate = (boot - self.since[1]) / max(now - self.since[0], 1e-9)
            eta = (n - boot) / rate if rate > 0 else float("nan")
            self._line(f"{boot}/{n} bootstrap evaluations in {duration(now - t)}, about "
                       f"{duration(eta)} left")
        if done >= total:
            self.finished = True
            if self.bar is not None:
                self.bar.close()
            self._line(f"{n}/{n} bootstrap evaluations in {duration(now - t)} (the statistics "
                       f"in {duration(now - self.t0)})")
