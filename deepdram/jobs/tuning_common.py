"""What the three tuning stages (and `deepdram tune`) share: their data, the CVAE study's forward
model, and running one study with the stage's params section."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepdram.errors import DeepdramError, InputError


def read_pool(path: Path, n_rows: int, seed: int):
    """`n_rows` random cells from evenly spaced shards of a (possibly sharded) Parquet table."""
    import pandas as pd

    if not path.exists():
        raise DeepdramError(f"{path} is missing: run the upstream stage first")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    # Shards are written in Z_g order: evenly spaced ones cover every Z_g group.
    pick = files if len(files) <= 6 else [files[int(i)] for i in np.linspace(0, len(files) - 1, 6)]
    df = pd.concat([pd.read_parquet(f) for f in pick], ignore_index=True)
    if len(df) > n_rows:
        df = df.iloc[np.sort(np.random.default_rng(seed).permutation(len(df))[:n_rows])].reset_index(drop=True)
    return df


def resampled_sets(cells, methods, resample, seed: int) -> dict:
    """{method: cells frame}: the upstream resampling methods applied to one pool of raw cells."""
    from deepdram.data.datasets import undersample
    from deepdram.spaces.lattice.datasets import oversample, undersample_decimals

    out = {}
    for m in methods:
        if m == "under":
            u = resample.under
            out[m] = undersample(cells, undersample_decimals(u.e_decimals, u.nu_decimals), u.max_per_group, seed)
        elif m == "over":
            out[m] = oversample(cells, **resample.over.model_dump(exclude={"base_size"}), seed=seed + 1
                                ).drop(columns="parent")
        elif m == "none":
            out[m] = cells
        else:
            raise InputError(f"resampling must be under, over or none; got {m!r}")
    return out


def load_data(cfg, resample, space) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{variant: (x, y)} cross-validation rows (variant: resampling method, or "" when not searched)."""
    from deepdram.data.splits import split_rows
    from deepdram.jobs.runner import read_table
    from deepdram.learn.training import subsample, xy
    from deepdram.paths import CELLS_PATH, SPLITS_DIR, TILINGS_PATH

    if cfg.model == "size_agnostic":
        tilings = read_table(TILINGS_PATH)
        return {"": subsample(*xy(space, split_rows(tilings, "train"), conditions=True), cfg.rows, cfg.seed)}
    methods = cfg.space.get("resampling")
    if cfg.model == "forward" and methods:
        pool = read_pool(CELLS_PATH, int(cfg.data.get("pool_cells", 100_000)), cfg.seed)
        if resample is None:
            raise InputError("the forward study searches the resampling: it needs the resample section")
        sets = resampled_sets(pool, methods, resample, cfg.seed)
        return {m: subsample(*xy(space, df), cfg.rows, cfg.seed) for m, df in sets.items()}
    return {"": subsample(*xy(space, read_table(SPLITS_DIR / "train.parquet")), cfg.rows, cfg.seed)}


def forward_model(model: str, space=None):
    """The trained forward model the CVAE study scores with (None for the other studies)."""
    if model != "cvae":
        return None
    from deepdram.learn.models import load_model
    from deepdram.paths import MODELS_DIR

    path = MODELS_DIR / "forward.keras"
    if not path.is_file():
        raise DeepdramError(f"{path} is missing: the CVAE study needs the trained forward model (train_forward)")
    return load_model(path, space)


def run_study(section, model: str, resample=None, storage: str | None = None, n_trials: int | None = None,
              worker: int = 0, progress: bool = True) -> dict:
    """The `tune_<model>` stage (and `deepdram tune`): its params section (and the forward study's
    `resample` section), its data; run the study."""
    from deepdram.learn.search.config import tune_config
    from deepdram.learn.search.study import tune
    from deepdram.paths import TUNING_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    cfg = tune_config(section, model, TUNING_DIR)
    if storage is not None:
        cfg.storage = storage
    space = LatticeSpace()
    fwd = forward_model(model, space)
    data = load_data(cfg, resample, space)
    return tune(cfg, data, n_trials=n_trials, worker=worker, forward_model=fwd, progress=progress, space=space)
