"""Training helpers that know no paths, params or MLflow: tables to arrays, symmetry augmentation,
subsampling, an epoch progress bar and the loss-curve figure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepdram.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from deepdram.spaces.base import DesignSpace

AUGMENTATIONS = ("none", "mirrors", "all")


def xy(space: DesignSpace, df: pd.DataFrame, conditions: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_variables [+ n_conditions]) float32 inputs and (N, n_properties) float32 targets of a table."""
    cols = list(space.variables) + (list(space.conditions) if conditions else [])
    return df[cols].to_numpy(np.float32), df[list(space.properties)].to_numpy(np.float32)


def augment_symmetries(space: DesignSpace, x: np.ndarray, y: np.ndarray, which: str = "mirrors"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Add the designs' exact symmetry images (the space's `symmetry_set(which)`; the lattice's
    mirrors keep the properties, its transposes swap E11 <-> E22, nu12 <-> nu21, d1 <-> d2)."""
    from deepdram.learn.models import symmetry_images

    if which not in AUGMENTATIONS:
        raise InputError(f"augment must be one of {AUGMENTATIONS}; got {which!r}")
    if which == "none":
        return x, y
    images = symmetry_images(space, x.shape[1], which)
    return np.concatenate([x[:, cin] for cin, _ in images]), np.concatenate([y[:, cout] for _, cout in images])


def subsample(x, y, limit: int | None, seed: int):
    """At most `limit` rows of (x, y), a seeded random subset in the original order (None: all)."""
    if limit is None or len(x) <= limit:
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[idx], y[idx]


def epoch_progress(desc: str, epochs: int):
    """A Keras callback showing a progress bar over epochs (stderr) with the latest val_loss."""
    import keras
    from tqdm import tqdm

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=epochs, desc=desc, unit="epoch", file=sys.stderr, dynamic_ncols=True)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.set_postfix({k: f"{logs[k]:.3g}" for k in ("loss", "val_loss") if k in logs})
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochProgress()


def history_frame(history: dict):
    """Per-epoch history as a table with an `epoch` column (1-based)."""
    import pandas as pd

    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    return df


def plot_history(hist, path: Path, title: str) -> None:
    """Loss curves (log scale) of a history table as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from deepdram.data.atomic import save_png

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for col in hist.columns:
        if col.endswith("loss") and col != "epoch":
            ax.plot(hist["epoch"], hist[col], label=col)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (scaled units)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_png(path, fig)
