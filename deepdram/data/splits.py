"""Train / validation / test splits: decided per group key, so no design (family) spans two splits."""

from __future__ import annotations

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def assign_splits(groups: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split label per row, decided per group key so that no group spans two splits."""
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(uniq))
    bounds = np.cumsum([fractions[s] for s in SPLIT_NAMES])
    bounds = np.round(bounds / bounds[-1] * len(uniq)).astype(int)
    label_of_group = np.empty(len(uniq), dtype=object)
    start = 0
    for name, stop in zip(SPLIT_NAMES, bounds):
        label_of_group[order[start:stop]] = name
        start = stop
    return label_of_group[np.searchsorted(uniq, groups)].astype(str)


def split_rows(df, split: str):
    """Rows of one split (train/val/test) of a table with a `split` column."""
    return df[df["split"] == split].reset_index(drop=True)
