"""Named row filters of a results table (``analysis.load_results``)."""

from __future__ import annotations

import pandas as pd

from workers.results.record import Status

# The paper's figures and statistics use only the networks that fit their training set.
DEFAULT_TRAIN_ACC = 1.0


def fits_training_set(df: pd.DataFrame, threshold: float = DEFAULT_TRAIN_ACC) -> pd.DataFrame:
    """The ``ok`` trials whose final train accuracy is at least ``threshold`` (default 1.0:
    100% train accuracy, as in the paper). Accuracy is a fraction of correct points, so 1.0 is
    exact; a trial without a train accuracy is dropped."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"train accuracy threshold: {threshold!r}; allowed: a number in [0, 1]")
    keep = (df["status"] == Status.OK) & (df["train_acc"] >= float(threshold))
    return df[keep.fillna(False).astype(bool)]
