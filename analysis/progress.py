"""Progress of the report's statistics table, with the trials' conventions (sweep.driver): a
bar on a terminal; into a file or pipe, plain lines (one a minute, and the first and last);
before the bootstrap starts, an estimate of its time from the estimates' own."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PROGRESS_LINE_S = 60.0  # without a terminal: one progress line per minute (as the trials')


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


FIRST_ESTIMATE_S = 5.0  # seconds of bootstrap evaluations before the first estimate of the rest


class StatsProgress:
    """``analysis.stats.statistics_table``'s ``progress`` callback. The first call comes once
    the estimates (evaluation 0 of every measure and group) are made, in one process: it
    prints how many evaluations follow; later calls move the bar (with its estimate), or print
    a line with the time left after ``FIRST_ESTIMATE_S`` and then a line a minute; the last
    says how long it took. ``stream`` (default stderr) and ``live`` (default:
    whether the stream is a terminal) choose bar or lines."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None,
                 line_s: float = PROGRESS_LINE_S):
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.line_s = line_s
        self.t0 = self.last = time.monotonic()
        self.first: tuple[float, int] | None = None
        self.bar = None
        self.finished = False

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
            self._line(f"estimates of {done} measure(s) x group(s) in {_minutes(now - self.t0)}; "
                       f"{total - done} bootstrap evaluations follow on {processes} "
                       f"process{'es' if processes > 1 else ''}; their time is estimated "
                       f"after {FIRST_ESTIMATE_S:.0f} s")
            # the first line after 5 s (or line_s, if shorter)
            self.last = now - self.line_s + min(FIRST_ESTIMATE_S, self.line_s)
            if self.live and done < total:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, unit="evaluation",
                                desc="report: statistics", dynamic_ncols=True, file=self.stream,
                                mininterval=0.5)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif now - self.last >= self.line_s and done < total:
            self.last = now
            t, d = self.first
            rate = (done - d) / max(now - t, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("nan")
            self._line(f"{done}/{total} evaluations in {_minutes(now - self.t0)}, about "
                       f"{_minutes(eta)} left")
        if done >= total:
            self.finished = True
            if self.bar is not None:
                self.bar.close()
            self._line(f"{total}/{total} evaluations in {_minutes(now - self.t0)}")
