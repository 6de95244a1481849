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
