"""Figures drawn from the results table; each function writes one image."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def jacobian_vs_gap(df: pd.DataFrame, path: str | Path) -> Path | None:
    """Fig. 5-style scatter: test Jacobian norm (log x) against the generalization gap, one
    colour per non-linearity, one marker per optimizer. All ``ok`` trials are drawn; those at
    100% train accuracy are filled, the rest hollow. Returns the path, or None without data."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return None
    plt = _pyplot()
    markers = dict(zip(["sgd", "momentum", "adam", "rmsprop", "lbfgs"], "osD^v"))
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    colours = {a: f"C{i}" for i, a in enumerate(sorted(ok["activation"].unique()))}
    for (act, opt), g in ok.groupby(["activation", "optimizer"]):
        fit = g["train_acc"] >= 1.0
        for sub, face in ((g[fit], colours[act]), (g[~fit], "none")):
            if len(sub):
                ax.scatter(sub["jacobian_norm_test"], sub["gen_gap"], marker=markers.get(opt, "o"),
                           facecolors=face, edgecolors=colours[act], s=36, linewidths=1.2)
    for act, c in colours.items():
        ax.scatter([], [], color=c, label=act)
    for opt, m in markers.items():
        if opt in set(ok["optimizer"]):
            ax.scatter([], [], marker=m, facecolors="none", edgecolors="k", label=opt)
    ax.set_xscale("log")
    ax.set_xlabel("Jacobian norm  E_test ||d softmax / dx||_F")
    ax.set_ylabel("generalization gap  (train acc - test acc)")
    name = ", ".join(sorted(ok["dataset"].unique()))
    ax.set_title(f"{name}: {len(ok)} trials (filled: 100% train accuracy)")
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


ELLIPSE_TITLES = {"random": "random ellipse", "same_class": "through 3 points of one class",
                  "three_classes": "through 3 points of 3 classes"}


def density_bins(curves: pd.DataFrame, bins: int) -> pd.DataFrame:
    """Transitions per radian in ``bins`` equal angle bins: per (trial, ellipse, phase, bin), the
    transitions on the k-gon edges starting in the bin divided by the bin's width. Columns:
    trial_id, ellipse, phase, angle (bin centre), density."""
    import numpy as np

    width = 2 * np.pi / bins
    b = np.minimum((curves["angle"].to_numpy() / width).astype(int), bins - 1)
    g = curves.assign(bin=b).groupby(["trial_id", "ellipse", "phase", "bin"])["transitions"].sum()
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
    import numpy as np

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
    return _save(fig, path)


def boundaries_figure(grids: pd.DataFrame, path: str | Path) -> Path | None:
    """Fig. 3: last-hidden-layer transition boundaries (black) in the plane of three training
    points (red, labelled with their class) before and after training, over the network's
    predicted class (faint colours), for the first trial of the sweep. None without data."""
    if grids.empty:
        return None
    import numpy as np

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
    return _save(fig, path)
