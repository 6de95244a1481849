"""Neyshabur et al. 2017's experiments ("Exploring Generalization in Deep Learning", NeurIPS
2017) drawn from a sweep: Fig. 1 (measures against the training-set size, true and random
labels), Fig. 2 (expected sharpness against KL, true and random labels) and Fig. 4 (errors and
measures against the number of hidden units of two-layer networks). MLPs stand in for their VGG
networks. The experiments ``neyshabur_labels`` and ``neyshabur_width`` (conf/experiment/) make
the sweeps; ``sweep report`` draws these figures whenever a sweep holds such a study.

A study is recognised from the data, not the experiment's name: among the trained (``ok``)
trials, every hyperparameter but the study's factors and the seed takes one value, and the
factors take enough values (``labels_study`` / ``width_study``). Fig. 1-2 draw the trials that
fit their training set (Neyshabur et al. train to zero training error; the report says which
cells have none); Fig. 4 draws every trained width, its training error included.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figures import _pyplot, _save, at_least, value_label

# Fig. 1's measures (Neyshabur et al. 2017, §2: norms over the margin gamma_5), in their order.
FIG1_MEASURES = ("neyshabur_l2", "neyshabur_l1_path", "neyshabur_l2_path", "neyshabur_spectral",
                 "neyshabur_l1_inf")
FIG1_LABELS = {"neyshabur_l2": "l2 norm", "neyshabur_l1_path": "l1-path norm",
               "neyshabur_l2_path": "l2-path norm", "neyshabur_spectral": "spectral norm",
               "neyshabur_l1_inf": "l1,inf norm"}


def _varying(fit: pd.DataFrame, hyperparameters: list[str]) -> set[str]:
    return {h for h in hyperparameters if h in fit and fit[h].nunique(dropna=False) > 1}


def labels_study(fit: pd.DataFrame, hyperparameters: list[str]) -> bool:
    """Whether ``fit`` is a Fig. 1 study: at least two training-set sizes, true and random labels,
    and no other hyperparameter varying."""
    if fit.empty or "train_size" not in fit or "random_labels" not in fit:
        return False
    return (_varying(fit, hyperparameters) == {"train_size", "random_labels"}
            and fit["train_size"].nunique() >= 2)


def width_study(fit: pd.DataFrame, hyperparameters: list[str]) -> bool:
    """Whether ``fit`` is a Fig. 4 study: at least three widths and no other hyperparameter
    varying."""
    if fit.empty or "width" not in fit:
        return False
    return _varying(fit, hyperparameters) == {"width"} and fit["width"].nunique() >= 3


def fitted_note(fit: pd.DataFrame, ok: pd.DataFrame, threshold: float) -> str:
    """One line for the report: how many of the study's trained trials reach the train-accuracy
    threshold (Neyshabur et al.'s networks are trained to zero training error), and the cells
    (labels, training-set size) where none does, which the Fig. 1-2 analogues lack."""
    def cells(d):  # (null is a value of its own: a missing train_size is the whole split)
        return set(zip(d["random_labels"].map(value_label), d["train_size"].map(value_label)))

    def order(c):
        return (c[0], c[1] == "null", float(c[1]) if c[1] != "null" else 0.0)

    lacking = sorted(cells(ok) - cells(fit), key=order)
    text = (f"Neyshabur et al.'s Fig. 1-2 analogues: {len(fit)} of {len(ok)} trained trials "
            f"reach train accuracy {at_least(threshold)}; only those are drawn.")
    if lacking:
        text += " No trial does at: " + ", ".join(
            f"{LABEL_KINDS.get(r, r + ' (random_labels)')} labels, "
            + ("the whole training set" if n == "null" else f"{n} points")
            for r, n in lacking) + "."
    return text


LABEL_KINDS = {"False": "true", "True": "random"}  # value_label(random_labels) -> the labels


def _sized(fit: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of ``fit`` a figure against the training-set size can place (a train_size and
    true or random labels), and how many it cannot (train_size null: the whole split, whose
    size the results do not record; or random_labels null), which the figure's title states."""
    keep = fit["train_size"].notna() & fit["random_labels"].notna()
    return fit[keep].assign(random_labels=fit.loc[keep, "random_labels"].astype(bool)), \
        int((~keep).sum())


def _unplaced(n: int) -> str:
    return (f"; {n} trial{'s' if n != 1 else ''} without a training-set size (the whole split) "
            "or label kind not drawn") if n else ""


def _means(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean and standard error over seeds of ``columns`` per value of ``by`` (NaN ignored)."""
    g = df.groupby(by, sort=True)[columns]
    mean, se = g.mean(), g.sem(ddof=1).fillna(0.0)
    return mean.join(se.add_suffix("_se")).reset_index()


def _positive_log(ax, values) -> None:
    v = np.asarray(values, dtype=float)
    if np.isfinite(v).any() and (v[np.isfinite(v)] > 0).all():
        ax.set_yscale("log")


def _grid(n: int, cols: int = 6):
    plt = _pyplot()
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows + 0.8), dpi=110,
                             squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def labels_figure(fit: pd.DataFrame, path: str | Path) -> Path | None:
    """Fig. 1 analogue: Neyshabur et al.'s five norms over the margin against the training-set
    size, true labels (left) and random labels (right). Each measure is divided by its value for
    true labels at the smallest size that has one (so the curves share an axis; log y); mean
    over seeds.
    Returns the path, or None without those measures."""
    have = [m for m in FIG1_MEASURES if m in fit and fit[m].notna().any()]
    if not have:
        return None
    fit, unplaced = _sized(fit)
    if fit.empty:
        return None
    m = _means(fit, ["random_labels", "train_size"], have)
    ref = m[~m["random_labels"].astype(bool)].sort_values("train_size")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120, sharey=True)
    for ax, rnd, title in zip(axes, (False, True), ("true labels", "random labels")):
        part = m[m["random_labels"].astype(bool) == rnd].sort_values("train_size")
        for i, name in enumerate(have):
            base = ref[name].dropna()
            scale = float(base.iloc[0]) if len(base) and base.iloc[0] > 0 else 1.0
            ax.plot(part["train_size"], part[name] / scale, "o-", color=f"C{i}", ms=4,
                    label=FIG1_LABELS[name])
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training-set size")
        ax.grid(alpha=0.3)
    vals = np.concatenate([m[n].to_numpy(dtype=float) for n in have])
    _positive_log(axes[0], vals)
    axes[0].set_ylabel("measure / its value at the smallest size drawn, true labels")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Neyshabur et al. Fig. 1: norms over the margin gamma_5 against the "
                 f"training-set size ({len(fit)} trials{_unplaced(unplaced)})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, vector=True)


def labels_all_figure(fit: pd.DataFrame, path: str | Path, measures: list[str]) -> Path | None:
    """Every measure (one panel each, after the test error) against the training-set size,
    true labels (blue) and random labels (red); mean +- s.e. over seeds (no bar with one
    seed)."""
    cols = ["test_error"] + [m for m in measures if m in fit and fit[m].notna().any()]
    if len(cols) < 2:
        return None
    d, unplaced = _sized(fit.assign(test_error=1.0 - fit["test_acc"]))
    if d.empty:
        return None
    m = _means(d, ["random_labels", "train_size"], cols)
    fig, axes = _grid(len(cols))
    for ax, name in zip(axes, cols):
        for rnd, colour, label in ((False, "C0", "true labels"), (True, "C3", "random labels")):
            part = m[m["random_labels"].astype(bool) == rnd].sort_values("train_size")
            ax.errorbar(part["train_size"], part[name], yerr=part[f"{name}_se"], fmt="o-",
                        ms=3, color=colour, label=label, lw=1)
        ax.set_xscale("log", base=2)
        _positive_log(ax, m[name])
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("Every measure against the training-set size (x, log 2), true vs random labels"
                 f" ({len(d)} trials{_unplaced(unplaced)})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # (room for the title above the grid)
    return _save(fig, path, rect=(0, 0, 1, 0.97))


def sharpness_kl_figure(curves: pd.DataFrame, path: str | Path, fit: pd.DataFrame) -> Path | None:
    """Fig. 2 analogue: expected sharpness against KL (``analysis.load_sharpness_curves``),
    true labels (left) and random labels (right), one curve per training-set size (mean over
    seeds at each alpha); log x, symmetric-log y (linear within 1e-4 of 0). Returns the path, or None without curves for the trials of ``fit``."""
    if curves.empty or fit.empty:
        return None
    placed, unplaced = _sized(fit)
    c = curves.merge(placed[["trial_id", "train_size", "random_labels"]], on="trial_id")
    if c.empty:
        return None
    m = c.groupby(["random_labels", "train_size", "alpha"], sort=True)[
        ["kl", "expected_sharpness"]].mean().reset_index()
    plt = _pyplot()
    sizes = sorted(m["train_size"].unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120, sharey=True, sharex=True)
    for ax, rnd, title in zip(axes, (False, True), ("true labels", "random labels")):
        for i, n in enumerate(sizes):
            part = m[(m["random_labels"].astype(bool) == rnd) & (m["train_size"] == n)]
            if part.empty:
                continue
            ax.plot(part["kl"], part["expected_sharpness"], "o-", ms=3,
                    color=cmap(i / max(1, len(sizes) - 1)), label=f"{n}")
        ax.set_xscale("log")
        # symmetric log: the curve spans orders of magnitude, and a Monte-Carlo mean at a tiny
        # alpha can fall below 0
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("KL(posterior || prior)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("expected sharpness E[L(w + nu)] - L(w)")
    axes[0].legend(title="training points", fontsize=7, title_fontsize=8)
    fig.suptitle("Neyshabur et al. Fig. 2: expected sharpness against KL ("
                 f"{c['trial_id'].nunique()} trials{_unplaced(unplaced)})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, vector=True)


def width_figure(fit: pd.DataFrame, path: str | Path, measures: list[str]) -> Path | None:
    """Fig. 4 analogue: train and test error (first panel) and every measure (one panel each)
    against the number of hidden units, mean +- s.e. over seeds."""
    cols = [m for m in measures if m in fit and fit[m].notna().any()]
    d = fit.assign(train_error=1.0 - fit["train_acc"], test_error=1.0 - fit["test_acc"])
    m = _means(d, ["width"], ["train_error", "test_error", *cols])
    fig, axes = _grid(len(cols) + 1)
    for name, colour in (("train_error", "C0"), ("test_error", "C3")):
        axes[0].errorbar(m["width"], m[name], yerr=m[f"{name}_se"], fmt="o-", ms=3,
                         color=colour, label=name.replace("_", " "), lw=1)
    axes[0].set_title("error", fontsize=8)
    axes[0].legend(fontsize=7)
    for ax, name in zip(axes[1:], cols):
        ax.errorbar(m["width"], m[name], yerr=m[f"{name}_se"], fmt="o-", ms=3, color="C2", lw=1)
        _positive_log(ax, m[name])
        ax.set_title(name, fontsize=8)
    for ax in axes[:len(cols) + 1]:
        ax.set_xscale("log", base=2)
        ax.tick_params(labelsize=7)
    fig.suptitle("Neyshabur et al. Fig. 4: errors and measures against the hidden units (x, "
                 f"log 2) of {int(fit['depth'].iloc[0])}-layer networks ({len(fit)} trials)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # (room for the title above the grid)
    return _save(fig, path, rect=(0, 0, 1, 0.97))
