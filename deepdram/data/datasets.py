"""Generic dataset operations: resampling by rounded properties, and writing resampled splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepdram.data.splits import SPLIT_NAMES


def undersample(df: pd.DataFrame, decimals: dict[str, int], max_per_group: int, seed: int) -> pd.DataFrame:
    """The paper's undersampling: at most `max_per_group` random rows per property tuple rounded
    to `decimals` (property column -> decimals)."""
    cols = list(decimals)
    rounded = pd.DataFrame({c: df[c].round(decimals[c]) for c in cols})
    order = np.random.default_rng(seed).permutation(len(df))
    rank = rounded.iloc[order].groupby(cols, sort=False).cumcount().to_numpy()
    keep = np.sort(order[rank < max_per_group])
    return df.iloc[keep].reset_index(drop=True)


def write_resampled(out: pd.DataFrame, path: Path, splits_dir: Path) -> dict:
    """Write the resampled table and one file per split (without the split column); row counts."""
    from deepdram.data.tables import write_table

    write_table(out, path)
    for name in SPLIT_NAMES:
        write_table(out[out["split"] == name].drop(columns="split").reset_index(drop=True),
                    splits_dir / f"{name}.parquet")
    counts = out["split"].value_counts().to_dict()
    return {"rows": len(out), **{f"rows_{s}": int(counts.get(s, 0)) for s in SPLIT_NAMES}}
