"""Figures drawn from the results table; each function writes one image."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TEXT_PAD_PX = 3.0  # the margin a figure's texts keep from its edge, in pixels


def _titles_and_labels(fig) -> list:
    """The texts of ``fig`` a figure function writes, with the width (pixels) each may take:
    the suptitle (the figure's), each axes' titles and x label (the axes'), its y label (the
    axes' height: it is rotated); a colorbar's label too. Empty texts are left out."""
    out = []
    if fig._suptitle is not None:
        out.append((fig._suptitle, fig.bbox.width - 2 * TEXT_PAD_PX))
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        box = ax.get_position().transformed(fig.transFigure)
        for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label):
            out.append((t, max(box.width, 0.3 * fig.bbox.width)))
        out.append((ax.yaxis.label, max(box.height, 0.3 * fig.bbox.height)))
    return [(t, w) for t, w in out if t.get_visible() and t.get_text().strip()]


def _along(t, box) -> float:
    """The length of text ``t``'s extent ``box`` along its baseline (its width, or its height
    when rotated by 90 degrees)."""
    return box.height if abs(t.get_rotation() % 180 - 90) < 1 else box.width


def _wrap(text: str, chars: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width=max(8, chars), break_long_words=False)
                     if len(line) > chars else line for line in text.split("\n"))


def fit_text(fig, rect=None, rounds: int = 4) -> None:
    """Make every text of ``fig`` visible whole: a title or label longer than the width it may
    take (``_titles_and_labels``) is wrapped at spaces (its numbers never cut), the layout made
    again (``tight_layout(rect=rect)``), and, when some text still extends past the figure (a
    word longer than the room), the figure is widened or heightened to hold it. Drawn with the
    figure's renderer; call after the figure is complete."""
    fresh = False  # drawn, and unchanged since
    for _ in range(rounds):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        changed = False
        for t, room in _titles_and_labels(fig):
            length = _along(t, t.get_window_extent(renderer))
            if length <= room:
                continue
            text = t.get_text()
            longest = max(len(line) for line in text.split("\n"))
            wrapped = _wrap(text, int(longest * room / length * 0.95))
            if wrapped != text:
                t.set_text(wrapped)
                changed = True
        if not changed:
            fresh = True
            break
        fig.tight_layout(rect=rect)
    for _ in range(rounds):  # still past the edge: a larger figure, laid out again
        if not fresh:  # (a draw of an unchanged figure is the figure's costliest step)
            fig.canvas.draw()
        fresh = False
        inside = fig.bbox.padded(-1.0)  # (a pixel of rounding)
        tight = fig.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans)
        grow_w = max(inside.x0 - tight.x0, 0) + max(tight.x1 - inside.x1, 0)
        grow_h = max(inside.y0 - tight.y0, 0) + max(tight.y1 - inside.y1, 0)
        if grow_w <= 0 and grow_h <= 0:
            break
        w, h = fig.get_size_inches()  # (twice the excess: the layout may not centre it)
        fig.set_size_inches(w + 2 * (grow_w + TEXT_PAD_PX) / fig.dpi,
                            h + 2 * (grow_h + TEXT_PAD_PX) / fig.dpi)
        fig.tight_layout(rect=rect)


# --------------------------------------------------------------------------------------------
# Tick labels of a base-10 log axis. Matplotlib labels the minor ticks of an axis spanning
# about a decade ("3x10^2" beside "4x10^2" reads as "3x10^24"); these label only ticks far
# enough apart, decided from the axis' view when it is drawn (a later change of limits is
# followed).

def log_tick_plan(lo: float, hi: float, numticks: int = 6) -> tuple[str, list[float]]:
    """The labelled ticks of a log axis whose view is [lo, hi] (0 < lo < hi), at most
    ``numticks`` of them in view: 1, 2 and 5 times powers of ten, as plain numbers ("plain"),
    when two to ``numticks`` of those are in view and at most two powers of ten (0.1, 0.2, 0.5,
    1); else ("decades", powers of ten) when the view holds two or more of them: every s-th
    power, s the smallest round stride (1, 2, 3, 5, 10, 20, ...) that keeps at most
    ``numticks`` and two or more in view; else ("plain", 1 and 5 times powers of ten) when
    two or more of those are in view; else ("plain", up to four evenly spaced round
    numbers). Ticks outside the view may be included (matplotlib drops them)."""
    import math

    from matplotlib.ticker import MaxNLocator

    k0, k1 = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    n = k1 - k0 + 1  # powers of ten in view
    marks = [m * 10.0 ** k for k in range(max(k0 - 2, -320), min(k1 + 2, 306))
             for m in (1, 2, 5)]
    shown = sum(1 for v in marks if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9))
    if n <= 2 and 2 <= shown <= max(2, numticks):
        return "plain", marks
    if n >= 2:
        # a round stride (10^0, 10^-20, 10^-40, not 10^-17), the smallest that keeps at most
        # numticks labels, and two or more in view
        nice = [m * 10 ** e for e in range(0, 4) for m in (1, 2, 3, 5) if m * 10 ** e <= n]
        fits = [s for s in nice if sum(1 for k in range(k0, k1 + 1) if k % s == 0) >= 2]
        stride = next((s for s in fits if len(range(k0 + (-k0) % s, k1 + 1, s))
                       <= max(2, numticks)), fits[-1])
        return "decades", [10.0 ** k for k in range(max(k0 - stride, -320),
                                                    min(k1 + stride, 308) + 1) if k % stride == 0]
    if shown >= 2:  # (more than numticks 1-2-5 marks around one power of ten: 1 and 5)
        return "plain", [v for v in marks if round(v / 10.0 ** math.floor(math.log10(v))) != 2]
    locator = MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10])
    return "plain", [float(v) for v in locator.tick_values(lo, hi) if v > 0]


def plain_number(v: float, step: float) -> str:
    """``v`` (a tick of ticks ``step`` apart) with the fewest decimals that write it exactly,
    no trailing zeros ("0.2", "5", "312", "1.215"); scientific ("1.2e-05") below 1e-4 or from
    1e6 up."""
    v, step = float(v), abs(float(step)) or abs(float(v)) or 1.0
    tol = 1e-6 * step
    if v != 0 and not 1e-4 <= abs(v) < 1e6:
        return next(f"{v:.{d}g}" for d in range(1, 12) if abs(float(f"{v:.{d}g}") - v) <= tol
                    or d == 11)
    decimals = next(d for d in range(0, 12) if abs(round(v, d) - v) <= tol or d == 11)
    return f"{v:.{decimals}f}"


@functools.cache
def _log_ticks_classes():
    """(``ReadableLogLocator``, ``ReadableLogFormatter``), made on first use (matplotlib is
    imported only when a figure is drawn)."""
    from matplotlib.ticker import Formatter, Locator

    class ReadableLogLocator(Locator):
        """The major ticks of :func:`log_tick_plan` for the axis' current view."""

        def __init__(self, numticks: int | None = None):
            self.numticks = numticks

        def limit(self) -> int:  # at most this many labels: what fits along the axis
            if self.numticks is not None:
                return self.numticks
            try:
                return max(2, min(6, int(self.axis.get_tick_space())))
            except Exception:  # (an axis not yet laid out)
                return 6

        def __call__(self):
            lo, hi = sorted(self.axis.get_view_interval())
            return self.tick_values(lo, hi)

        def tick_values(self, vmin, vmax):
            lo, hi = sorted((float(vmin), float(vmax)))
            if not 0 < lo < hi < float("inf"):
                return []
            return log_tick_plan(lo, hi, self.limit())[1]

    class ReadableLogFormatter(Formatter):
        """Powers of ten as 10^k on an axis spanning decades, plain numbers otherwise
        (:func:`plain_number`, as many digits as the ticks' spacing needs)."""

        ticks: list[float] = []

        def set_locs(self, locs):  # (the ticks about to be labelled: their spacing)
            self.ticks = [float(v) for v in locs]

        def __call__(self, x, pos=None):
            import math

            lo, hi = sorted(self.axis.get_view_interval())
            if not (0 < lo < hi < float("inf")) or x <= 0:
                return ""
            locator = self.axis.get_major_locator()
            mode, _ = log_tick_plan(lo, hi, locator.limit() if hasattr(locator, "limit") else 6)
            if mode == "decades":
                k = round(math.log10(x))
                return f"$\\mathdefault{{10^{{{k}}}}}$" if math.isclose(x, 10.0 ** k) else ""
            locs = sorted(v for v in self.ticks if v > 0)
            gaps = [b - a for a, b in zip(locs, locs[1:]) if b > a]
            return plain_number(x, min(gaps) if gaps else x)

    return ReadableLogLocator, ReadableLogFormatter


def readable_log_ticks(axis, numticks: int | None = None) -> None:
    """Give a base-10 log ``axis`` (``ax.xaxis``, ``ax.yaxis``) labels that never run into
    each other: major ticks at powers of ten when its view spans two or more of them (at most
    ``numticks``, default what fits along the axis; minor ticks unlabelled), else a few plain
    numbers (:func:`log_tick_plan`). Any other axis (linear, symlog, base 2) is left alone."""
    from matplotlib.ticker import NullFormatter

    if axis.get_scale() != "log" or getattr(axis.get_transform(), "base", 10) != 10:
        return
    locator, formatter = _log_ticks_classes()
    axis.set_major_locator(locator(numticks))
    axis.set_major_formatter(formatter())
    axis.set_minor_formatter(NullFormatter())


def _readable_log_axes(fig) -> None:
    """:func:`readable_log_ticks` on every base-10 log axis of ``fig`` (colour bars included)
    that a figure function did not give such ticks already."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if not isinstance(axis.get_major_locator(), _log_ticks_classes()[0]):
                readable_log_ticks(axis)


def _clear_suptitle(fig, rect=None, pad_px: float = 4.0) -> None:
    """Put ``fig``'s suptitle ``pad_px`` pixels below the top edge and lay the axes out below
    it: ``tight_layout`` leaves the suptitle out of its reckoning (a panel's title can touch
    it, or a tall figure keeps an empty band above it)."""
    title = fig._suptitle
    if title is None or not title.get_visible() or not title.get_text().strip():
        return
    title.set_verticalalignment("top")
    title.set_y(1.0 - pad_px / fig.bbox.height)
    x0, y0, x1, y1 = rect or (0, 0, 1, 1)
    top = None
    for _ in range(2):  # (tight_layout pads the rectangle: the second pass takes that back)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        limit = title.get_window_extent(renderer).y0 - pad_px
        if top is None:
            top = limit
        else:
            reach = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_visible())
            if reach >= limit - pad_px:
                break
            top += limit - reach
        fig.tight_layout(rect=(x0, y0, x1, min(y1, top / fig.bbox.height)))


def _save(fig, path: str | Path, vector: bool = False, rect=None) -> Path:
    """Write ``fig`` to ``path`` (PNG) and, with ``vector``, an SVG beside it, after
    :func:`readable_log_ticks` on its log axes, :func:`fit_text` and :func:`_clear_suptitle`
    (``rect``: the figure's ``tight_layout`` rectangle, if not the whole)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _readable_log_axes(fig)
    fit_text(fig, rect)
    _clear_suptitle(fig, rect)
    fig.savefig(path)
    if vector:
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


ELLIPSE_TITLES = {"random": "random ellipse", "same_class": "through 3 points of one class",
                  "three_classes": "through 3 points of 3 classes"}


def density_bins(curves: pd.DataFrame, bins: int) -> pd.DataFrame:
    """Transitions per radian in ``bins`` equal angle bins: per (trial, ellipse, phase, bin), the
    transitions on the k-gon edges starting in the bin divided by the bin's width. Columns:
    trial_id, ellipse, phase, angle (bin centre), density."""
    width = 2 * np.pi / bins
    b = np.minimum((curves["angle"].to_numpy() / width).astype(int), bins - 1)
    # (a bin whose counts are all null - float64 another function there - stays NaN, not 0)
    g = curves.assign(bin=b).groupby(["trial_id", "ellipse", "phase", "bin"])[
        "transitions"].sum(min_count=1)
    out = g.reset_index()
    out["angle"] = (out["bin"] + 0.5) * width
    out["density"] = out["transitions"] / width
    return out.drop(columns=["bin", "transitions"])


def trajectory_figure(curves: pd.DataFrame, path: str | Path, bins: int = 128) -> Path | None:
    """Fig. 2: the Jacobian norm (top) and the transition density (bottom: exact transitions per
    radian, in ``bins`` angle bins) against the angle along each ellipse; mean +- standard error
    over the sweep's trials (e.g. training seeds), after training (solid) and at initialization
    (dashed). Training points are marked by vertical lines. Returns the path, or None without
    data."""
    if curves.empty:
        return None

    k = curves.groupby(["trial_id", "ellipse", "phase"]).size().min()
    dens = density_bins(curves, int(min(bins, k)))
    plt = _pyplot()
    names = [e for e in ELLIPSE_TITLES if e in set(curves["ellipse"])]
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.0), dpi=120,
                             squeeze=False, sharex=True)
    n_trials = curves["trial_id"].nunique()
    for col, name in enumerate(names):
        for row, metric in enumerate(("jacobian_norm", "density")):
            src = curves if metric == "jacobian_norm" else dens
            sub = src[src["ellipse"] == name]
            ax = axes[row, col]
            for phase, style in (("trained", "-"), ("init", "--")):
                g = sub[sub["phase"] == phase].groupby("angle")[metric]
                if not len(g):
                    continue
                mean, sem = g.mean(), g.sem().fillna(0.0)
                a = mean.index.to_numpy()
                ax.plot(a, mean.to_numpy(), style, color="C0" if phase == "trained" else "C7",
                        lw=1.0, label=phase)
                ax.fill_between(a, (mean - sem).to_numpy(), (mean + sem).to_numpy(),
                                color="C0" if phase == "trained" else "C7", alpha=0.25, lw=0)
            if name != "random":
                for t in (0.0, 2 * np.pi / 3, 4 * np.pi / 3):
                    ax.axvline(t, color="C3", lw=0.8, alpha=0.7)
            ax.set_yscale("log" if metric == "jacobian_norm" else "linear")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(ELLIPSE_TITLES[name], fontsize=10)
            else:
                ax.set_xlabel("angle along the ellipse (rad); red: training points")
        axes[0, col].set_ylabel("Jacobian norm ||J||_F" if col == 0 else "")
        axes[1, col].set_ylabel("transitions per radian" if col == 0 else "")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Sensitivity along ellipses (mean +- s.e. over {n_trials} trainings)")
    fig.tight_layout()
    return _save(fig, path, vector=True)


def boundaries_figure(grids: pd.DataFrame, path: str | Path) -> Path | None:
    """Fig. 3: last-hidden-layer transition boundaries (black) in the plane of three training
    points (red, labelled with their class) before and after training, over the network's
    predicted class (faint colours), for the first trial of the sweep. None without data."""
    if grids.empty:
        return None

    from workers.studies import anchor_coords

    plt = _pyplot()
    tid = sorted(grids["trial_id"].unique())[0]
    g = grids[grids["trial_id"] == tid].set_index("phase")
    phases = [p for p in ("init", "trained") if p in g.index]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.0 * len(phases), 5.0), dpi=120,
                             squeeze=False)
    for ax, phase in zip(axes[0], phases):
        r = g.loc[phase]
        n, ext = int(r["n"]), float(r["extent"])
        box = (-ext, ext, -ext, ext)
        pred = np.asarray(r["predicted"]).reshape(n, n)
        edge = np.asarray(r["boundary"], dtype=bool).reshape(n, n)
        ax.imshow(pred, origin="lower", extent=box, cmap="tab10", vmin=0, vmax=9, alpha=0.25,
                  interpolation="nearest")
        ax.imshow(np.ma.masked_where(~edge, edge), origin="lower", extent=box, cmap="gray_r",
                  vmin=0, vmax=1, interpolation="nearest")
        for (a, b), lab in zip(anchor_coords(), r["anchor_labels"]):
            ax.plot(a, b, "o", ms=8, mfc="C3", mec="white")
            ax.annotate(str(lab), (a, b), xytext=(6, 6), textcoords="offset points", color="C3")
        ax.set_title(f"{'before' if phase == 'init' else 'after'} training: "
                     f"{edge.mean() * 100:.1f}% boundary pixels", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Last-hidden-layer region boundaries, trial {tid}")
    fig.tight_layout()
    return _save(fig, path, vector=True)


# --------------------------------------------------------------------------------------------
# The report's figures (``sweep report``). Each takes the rows to draw (the caller applies the
# train-accuracy filter), writes a PNG and an SVG, and returns the PNG's path, or None when the
# data has nothing to draw.

def seed_means(df: pd.DataFrame, columns: list[str],
               hyperparameters: list[str] | None = None) -> pd.DataFrame:
    """One row per configuration: for each of ``columns`` the mean and the standard error of
    the mean over seeds (``<col>`` and ``<col>_se``; the s.e. is 0 for a configuration with one
    seed), ``n_seeds``, and the configuration's hyperparameter values. A.5's error bars.

    A configuration is one value of every column in ``hyperparameters`` (default
    ``analysis.stats.hyperparameter_columns(df, exclude=columns)``: every column of the table
    but the seed, the outcome and bookkeeping columns and ``columns``; the statistics use the
    same declaration), so two configurations that differ in any hyperparameter column, even
    one the result schema does not know, are never merged. Null is a value of its own."""
    from analysis.stats import hyperparameter_columns

    if hyperparameters is None:
        hyperparameters = hyperparameter_columns(df, exclude=columns)
    keys = [k for k in hyperparameters if k not in columns]
    if not keys:  # no hyperparameter at all: one configuration
        g = df[columns].groupby(np.zeros(len(df), dtype=int))
    else:
        filled = df[keys].astype(object).where(df[keys].notna(), "<none>")  # null: own value
        g = df[columns].groupby([filled[k] for k in keys], sort=True, dropna=False)
    mean, se = g.mean(), g.sem(ddof=1).fillna(0.0)
    out = mean.copy()
    for c in columns:
        out[f"{c}_se"] = se[c]
    out["n_seeds"] = g.size()
    out = out.reset_index(drop=not keys)
    for k in keys:
        out[k] = out[k].where(out[k] != "<none>", None)
    return out


def value_label(v) -> str:
    """A hyperparameter value as the report writes it: "null" for a missing value (L-BFGS's
    batch size), a whole number without the ".0" a column with nulls gives it (128, not
    128.0), anything else as ``str``."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


LABEL_CHARS = 44  # a row's label is wrapped at this many characters (two lines at most)


def row_label(measures: Sequence[str], signs: Sequence[int]) -> str:
    """A row's name: its measures joined by ", " (several when they rank the trials
    identically), "-" before one of sign -1 (the statistics are of -measure), wrapped onto
    two lines at most ("..." ends a longer one)."""
    names = ", ".join(("-" if s < 0 else "") + m for m, s in zip(measures, signs))
    lines = textwrap.wrap(names, LABEL_CHARS, break_long_words=False) or [names]
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), LABEL_CHARS, placeholder=" ...")]
    return "\n".join(lines)


def percent(fraction: float) -> str:
    """An accuracy (a fraction of correct points, in [0, 1]) as people read it: a percentage
    with up to 6 significant digits and no float noise (1.0 -> "100%", 0.995 -> "99.5%",
    0.29 -> "29%")."""
    return f"{100.0 * float(fraction):.6g}%"


def at_least(fraction: float, ge: str = "\u2265") -> str:
    """A train-accuracy threshold as people read it after "train accuracy": "100%" at 1 (no
    accuracy exceeds it), else ``ge`` and the percentage ("\u2265 99%"); ``ge`` "&ge;" in HTML."""
    return percent(fraction) if float(fraction) >= 1.0 else f"{ge} {percent(fraction)}"


def _labelled(m: pd.DataFrame) -> pd.DataFrame:
    """The data set as a label ("null" when missing), for panels and legends."""
    return m.assign(dataset=[("null" if pd.isna(v) else str(v)) for v in m["dataset"]])


def _errorbar(ax, m: pd.DataFrame, x: str, y: str, **kw) -> None:
    ax.errorbar(m[x], m[y], xerr=m[f"{x}_se"], yerr=m[f"{y}_se"], fmt="o", ms=4, elinewidth=0.8,
                capsize=0, alpha=0.8, **kw)


def _caption_n(df: pd.DataFrame, m: pd.DataFrame) -> str:
    """How many trials and configurations a figure draws, and what a point is: the mean and
    standard error over seeds, or one trial when no configuration has two."""
    if len(df) == len(m):
        return f"{len(df)} trials, one per configuration: one seed, no error bars"
    return f"{len(df)} trials, {len(m)} configurations; mean +- s.e. over seeds"


def params_loss_figure(df: pd.DataFrame, path: str | Path,
                       hyperparameters: list[str] | None = None) -> Path | None:
    """Fig. 1: the generalization gap against the number of parameters (left) and against the
    final train loss (right), one colour per data set; log x."""
    d = df.dropna(subset=["gen_gap", "n_params", "train_loss"])
    if d.empty:
        return None
    plt = _pyplot()
    m = _labelled(seed_means(d, ["gen_gap", "n_params", "train_loss"], hyperparameters))
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), dpi=120, sharey=True)
    for i, (name, g) in enumerate(m.groupby("dataset")):
        _errorbar(axes[0], g, "n_params", "gen_gap", color=f"C{i}", label=name)
        pos = g[g["train_loss"] > 0]
        _errorbar(axes[1], pos, "train_loss", "gen_gap", color=f"C{i}", label=name)
    axes[0].set_xlabel("number of parameters")
    axes[1].set_xlabel("train loss (cross-entropy)")
    axes[0].set_ylabel("generalization gap (train acc - test acc)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Fig. 1: parameters and train loss vs generalization ({_caption_n(d, m)})",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path, vector=True)


DISCRETE_COLOURS = 8  # a numeric colour variable with at most this many values: one colour each
# Fig. 8's colour: hidden neurons = width x hidden layers (depth - 1), said where it is read
NEURONS_LABEL = "hidden neurons\n(width \u00d7 hidden layers)"


def _per_dataset(df: pd.DataFrame, measure: str, colour_by: str, path, title: str, xlabel: str,
                 log_colour: bool = False, hyperparameters: list[str] | None = None,
                 colour_label: str | None = None) -> Path | None:
    """One panel per data set: ``measure`` (log x) against the generalization gap, seed means
    with s.e. bars, coloured by ``colour_by``: categorical (a legend), or, with
    ``log_colour``, a number: one colour per value from an ordered colour map with a legend
    when it takes at most ``DISCRETE_COLOURS`` values (a null value grey), else a log colour
    scale with a colour bar. ``colour_label``: the legend's title or colour bar's label
    (default ``colour_by``)."""
    d = df.dropna(subset=[measure, "gen_gap"])
    d = d[d[measure] > 0]
    if d.empty:
        return None

    plt = _pyplot()
    m = _labelled(seed_means(d, [measure, "gen_gap"], hyperparameters))
    if colour_by == "neurons":
        m["neurons"] = m["width"] * (m["depth"] - 1)  # hidden units: depth counts Linear layers
    label = colour_label or colour_by
    names = sorted(m["dataset"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names) + 0.8, 4.2), dpi=120,
                             squeeze=False)
    if log_colour:
        numbers = pd.to_numeric(m[colour_by], errors="coerce")
        levels = sorted(numbers.dropna().unique())
        if len(levels) <= DISCRETE_COLOURS:  # (a null value is a category of its own, grey)
            ramp = plt.get_cmap("viridis")(np.linspace(0.0, 0.8, max(len(levels), 1)))
            colours = {value_label(v): ramp[i] for i, v in enumerate(levels)}
            if numbers.isna().any():
                colours["null"] = "0.5"
            m["_colour"] = [value_label(v) for v in numbers]
            colour_by, cats, log_colour = "_colour", list(colours), False
    else:  # (a null value is a category of its own, "null")
        cats = sorted(m[colour_by].map(value_label).unique())
        colours = {cat: f"C{c}" for c, cat in enumerate(cats)}
    for ax, name in zip(axes[0], names):
        g = m[m["dataset"] == name]
        if log_colour:
            from matplotlib.colors import LogNorm

            ax.errorbar(g[measure], g["gen_gap"], xerr=g[f"{measure}_se"], yerr=g["gen_gap_se"],
                        fmt="none", ecolor="0.6", elinewidth=0.6, zorder=1)
            sc = ax.scatter(g[measure], g["gen_gap"], c=g[colour_by].astype(float),
                            norm=LogNorm(min(levels), max(levels)), cmap="viridis", s=18,
                            zorder=2)
            fig.colorbar(sc, ax=ax, label=f"{label} (log colour scale)")
        else:
            for cat in cats:
                sub = g[g[colour_by].map(value_label) == cat]
                if len(sub):
                    _errorbar(ax, sub, measure, "gen_gap", color=colours[cat], label=cat)
            ax.legend(fontsize=7, title=label, title_fontsize=7)
        ax.set_xscale("log")
        ax.set_title(f"{name}: {len(g)} configurations", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("generalization gap")
    fig.suptitle(f"{title}\n{_caption_n(d, m)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, vector=True)


def jacobian_gap_figure(df: pd.DataFrame, path: str | Path,
                        hyperparameters: list[str] | None = None) -> Path | None:
    """Fig. 5: the test Jacobian norm against the generalization gap, one panel per data set,
    coloured by non-linearity."""
    return _per_dataset(df, "jacobian_norm_test", "activation", path,
                        "Fig. 5: Jacobian norm vs generalization gap",
                        "Jacobian norm: E_test ||d softmax / dx||_F",
                        hyperparameters=hyperparameters)


def transitions_gap_figure(df: pd.DataFrame, path: str | Path,
                           hyperparameters: list[str] | None = None) -> Path | None:
    """App. Fig. 8: transitions along the test points' trajectories against the generalization
    gap, one panel per data set, coloured by the number of hidden neurons, width x hidden
    layers (``depth`` - 1: depth counts the Linear layers), as the legend title says."""
    return _per_dataset(df, "transitions_test", "neurons", path,
                        "App. Fig. 8: transitions vs generalization gap",
                        "transitions per trajectory (test points)", log_colour=True,
                        hyperparameters=hyperparameters, colour_label=NEURONS_LABEL)


PAIR_PANELS = [("gen_gap", "generalization gap", False), ("jacobian_norm_test", "Jacobian norm", True),
               ("transitions_test", "transitions", True)]


def _readable_ticks(ax, log: bool) -> None:
    """Three or four labelled ticks per axis of a small panel, small and the x labels slanted,
    so that they never run into each other and every axis keeps at least two: a log axis gets
    :func:`readable_log_ticks` (at most four powers of ten, or plain numbers inside a decade),
    a linear one at most four round numbers."""
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        if log:
            readable_log_ticks(axis, numticks=4)
        else:
            axis.set_major_locator(MaxNLocator(nbins=3))
    ax.tick_params(labelsize=7)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def factor_pairs_figure(pairs: pd.DataFrame, path: str | Path,
                        factors: list[str] | None = None) -> Path | None:
    """Fig. 4: for each factor (rows), the pair's two trials against each other (x: value a, y:
    value b) for the generalization gap, the Jacobian norm and the transitions (columns), with
    the y = x diagonal; a point above the diagonal is larger with value b. ``factors``: those
    of the plan (default: those in ``pairs``); a factor without a pair here is named in the
    title, never left out silently. None without any pair."""
    drawn = list(dict.fromkeys(pairs["factor"])) if not pairs.empty else []
    missing = [f for f in (factors or []) if f not in drawn]
    if pairs.empty:
        return None

    panels = [p for p in PAIR_PANELS if f"{p[0]}_a" in pairs and pairs[f"{p[0]}_a"].notna().any()]
    factors = drawn
    plt = _pyplot()
    fig, axes = plt.subplots(len(factors), len(panels), figsize=(3.6 * len(panels), 3.4 * len(factors)),
                             dpi=120, squeeze=False)
    for r, factor in enumerate(factors):
        sub = pairs[pairs["factor"] == factor]
        va, vb = sub["value_a"].iloc[0], sub["value_b"].iloc[0]
        for c, (col, label, log) in enumerate(panels):
            ax = axes[r, c]
            x, y = sub[f"{col}_a"].to_numpy(float), sub[f"{col}_b"].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) & (y > 0) if log else True)
            ax.scatter(x[ok], y[ok], s=16, color=f"C{c}")
            if ok.any():
                lo, hi = min(x[ok].min(), y[ok].min()), max(x[ok].max(), y[ok].max())
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(f"{label}, {factor}={va}", fontsize=8)
            ax.set_ylabel(f"{label}, {factor}={vb}", fontsize=8)
            ax.set_title(f"{factor}: {int(ok.sum())} pair{'' if int(ok.sum()) == 1 else 's'}",
                         fontsize=9)
            ax.grid(alpha=0.3)
            _readable_ticks(ax, log)
    fig.suptitle("Fig. 4: pairs identical but for one factor (dashed: y = x)"
                 + (f"\nno pair to draw for {', '.join(missing)}" if missing else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path, vector=True)


def per_point_bounds(loss, num_classes: int):
    """A.3's approximate bounds, up to the constant c (the magnitude of a logit's input
    gradient, assumed constant), as functions of the per-point cross-entropy l, with
    s_y = exp(-l). Row i of J is s_i (e_i - s)^T df/dx, whose norm A.3 takes as c s_i (1 - s_i).
    Lower: the true class's row alone, c s_y (1 - s_y) (Eq. 6: ||J||_F >= ||J_y||). Upper: the
    maximum-entropy case s_i = (1 - s_y) / (C - 1) for i != y, adding C - 1 such rows:
    c sqrt(s_y^2 (1 - s_y)^2 + (C - 1) s_i^2 (1 - s_i)^2). Returns (lower, upper) / c."""
    loss = np.asarray(loss, dtype=np.float64)
    s_y, rest = np.exp(-loss), -np.expm1(-loss)  # 1 - s_y without cancellation at tiny loss
    lower = s_y * rest
    q = rest / (num_classes - 1)
    upper = np.sqrt(lower ** 2 + (num_classes - 1) * (q * (1.0 - q)) ** 2)
    return lower, upper


def per_point_figure(points: pd.DataFrame, path: str | Path, num_classes: int,
                     split: str = "test") -> Path | None:
    """Fig. 6 / App. 11: per-point Jacobian norm against per-point cross-entropy (log-log, point
    density), with A.3's approximate lower and maximum-entropy upper curves. The bounds depend
    on the number of classes: with a ``num_classes`` column in ``points`` (trials of data sets
    with different class counts) there is one panel per class count, else every point has
    ``num_classes``. A.3 leaves the constant c open; per panel it is set to the median over
    points of ||J||_F / upper(l). Log axes cannot show a loss or norm of exactly 0 (a point
    beyond float64's range, logit margin above about 745): such points are counted in the
    title, never dropped silently."""
    d = points[(points["split"] == split)].dropna(subset=["jacobian_norm", "loss"])
    keep = (d["jacobian_norm"] > 0) & (d["loss"] > 0)
    zero = d[~keep]
    d = d[keep]
    if d.empty:
        return None
    # (a trial without a class count takes ``num_classes``: its points are never left out)
    d = d.assign(num_classes=d["num_classes"].fillna(num_classes) if "num_classes" in d
                 else num_classes)
    counts = sorted(int(c) for c in d["num_classes"].unique())
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(counts), figsize=(6.0 * len(counts), 4.6), dpi=120,
                             squeeze=False)
    for ax, n_cls in zip(axes[0], counts):
        part = d[d["num_classes"] == n_cls]
        loss, jac = part["loss"].to_numpy(), part["jacobian_norm"].to_numpy()
        up = per_point_bounds(loss, n_cls)[1]
        pos = up > 0  # (a loss so small that 1 - s_y underflows to 0 in float64 bounds nothing)
        c = float(np.median(jac[pos] / up[pos])) if pos.any() else 1.0
        hb = ax.hexbin(loss, jac, xscale="log", yscale="log", gridsize=60, bins="log",
                       cmap="Blues", mincnt=1)
        fig.colorbar(hb, ax=ax, label="points (log)")
        grid = np.logspace(np.log10(loss.min()), np.log10(loss.max()), 200)
        lo, up = per_point_bounds(grid, n_cls)
        ax.plot(grid, c * lo, "C3-", lw=1.2, label="c s_y (1 - s_y)  (lower)")
        ax.plot(grid, c * up, "C1--", lw=1.2, label="max-entropy other classes  (upper)")
        # the axes fit the points; the bound curves are clipped to them (they can fall many
        # decades below the data at tiny losses)
        ax.set_xlim(loss.min() / 1.5, loss.max() * 1.5)
        ax.set_ylim(jac.min() / 1.5, jac.max() * 1.5)
        ax.set_xlabel("per-point cross-entropy loss")
        ax.set_ylabel("per-point Jacobian norm ||J||_F")
        ax.set_title(f"{len(part)} {split} points of {part['trial_id'].nunique()} trials, "
                     f"{n_cls} classes (c = {c:.3g})", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    note = "" if zero.empty else (f"\n{len(zero)} {split} points with loss or Jacobian norm 0 "
                                  "(beyond float64) not drawn on the log axes")
    fig.suptitle("Fig. 6: per-point sensitivity and loss" + note, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, vector=True)


def sign_error_figure(ranking: pd.DataFrame, path: str | Path,
                      baselines: tuple[str, ...] | list[str] = (),
                      one_seed: bool = False,
                      single_pairs: tuple[int, int] | None = None) -> Path | None:
    """The sign-errors side by side (Dziugaite et al. 2020, Fig. 1, in spirit): per row of
    ``ranking`` (best mean sign-error at the top) the mean over environments with its bootstrap
    interval and the worst environment (``robust_sign_error``, a cross). 0 = every pair of
    runs ordered as their gaps, 0.5 = chance. The rows are the ranking figure's
    (``analysis.report.decide.merged_ranking``: measures that rank the trials identically
    share a row, its ``measures`` and ``signs``), labelled as it labels them
    (``analysis.ranking_figure.row_label``: "-name" for sign -1, the statistics being of
    -measure); ``ranking_table``'s rows, one per measure, work too. A row holding a baseline
    (a measure in ``baselines``, or a row whose ``baseline`` column is true) is labelled
    "(baseline)", as the report's tables mark it, and drawn in orange squares, as the ranking
    figure draws it. ``one_seed``: every configuration has one seed, so every environment is
    a single pair of runs and its sign-error 0 or 1; the worst environment is then not drawn
    (a column of 1s for nearly every row) and the axis' note says so, with the rows whose
    worst environment is 1. ``single_pairs``: (environments that rest on a single pair of
    runs, all environments; ``analysis.report.decide.single_pair_environments``): when some
    do but not every configuration has one seed, the worst environment is drawn and the note
    says how many environments rest on one pair (one reversed pair makes the worst 1). The
    axis says which way is better, as the ranking figure does. Returns the path, or None
    without a sign-error."""

    if ranking.empty or ranking["sign_error"].isna().all():
        return None
    r = ranking.dropna(subset=["sign_error"]).sort_values("sign_error", kind="stable")
    members = list(r["measures"]) if "measures" in r else [(m,) for m in r["measure"]]
    signs = list(r["signs"]) if "signs" in r else [(int(s),) * len(ms)
                                                    for ms, s in zip(members, r["sign"])]
    base = np.array([any(m in baselines for m in ms) for ms in members], dtype=bool)
    if "baseline" in r:
        base |= r["baseline"].fillna(False).astype(bool).to_numpy()
    names = [row_label(ms, ss) + (" (baseline)" if b else "")
             for ms, ss, b in zip(members, signs, base)]
    plt = _pyplot()
    n = len(r)
    lines = sum(name.count("\n") + 1 for name in names)
    single, envs = single_pairs if single_pairs is not None else (0, 0)
    noted = one_seed or single > 0
    fig, ax = plt.subplots(figsize=(8, 2.0 + 0.22 * lines + 0.06 * n + 0.5 * noted))
    y = np.arange(n)[::-1]
    lo = (r["sign_error"] - r["sign_error_low"]).clip(lower=0).fillna(0).to_numpy()
    hi = (r["sign_error_high"] - r["sign_error"]).clip(lower=0).fillna(0).to_numpy()
    mean = r["sign_error"].to_numpy()
    handles = []
    for rows, style, label in (
            (~base, dict(fmt="o", color="C0"), "mean over environments [95% interval]"),
            (base, dict(fmt="s", color="C1"), "baseline")):
        if rows.any():
            handles.append(ax.errorbar(mean[rows], y[rows], xerr=[lo[rows], hi[rows]], ms=4,
                                       capsize=2, label=label, **style))
    worst = r["robust_sign_error"].to_numpy(dtype=float)
    note = ""
    if one_seed:
        ones = int((worst == 1.0).sum())
        note = "\n" + _wrap(
            f"One seed per configuration: each environment is a single pair of runs (its "
            f"sign-error 0 or 1), so the worst environment is 1 for {ones} of {n} rows; it is "
            "not drawn (robust_sign_error in the tables).", 64)
    else:
        handles += ax.plot(worst, y, "x", color="C3", label="worst environment")
        if single > 0:
            ones = int((worst == 1.0).sum())
            note = "\n" + _wrap(
                f"{single} of {envs} environments rest on a single pair of runs (one seed on "
                f"each side; sign-error 0 or 1): one pair ordered against the gap makes the "
                f"worst environment 1, as it is for {ones} of {n} rows.", 64)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, names, fontsize=8)
    for label, b in zip(ax.get_yticklabels(), base):
        if b:
            label.set_color("C1")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-1.6, n - 0.2)  # (a free band below the last row holds the direction)
    ax.set_xlabel("sign-error against the generalization gap\n(lower is better; 0.5 = chance)"
                  + note)
    from matplotlib.transforms import blended_transform_factory

    ax.text(0.01, -1.05, "\u2190 better", transform=blended_transform_factory(
        ax.transAxes, ax.transData), ha="left", va="center", fontsize=10, fontweight="bold",
        color="#333")  # as analysis.ranking_figure marks it
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=len(handles), fontsize=8, columnspacing=1.2, handletextpad=0.4,
              frameon=False)  # (above the axes: no point hidden under it)
    fig.tight_layout()
    return _save(fig, path, vector=True)
