"""Stage `train_forward`: the unit-cell forward model (designs -> properties), in MLflow, registered."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("train_forward", "keras")


def job(params) -> dict:
    from deepdram.learn.backend import use

    use(params.keras.backend)  # before the code below imports Keras
    from deepdram.jobs.runner import read_table
    from deepdram.jobs.training_common import model_overrides, train_regressor_job
    from deepdram.learn.configs import RegressorConfig
    from deepdram.learn.training import xy
    from deepdram.mlops.catalogue import FORWARD
    from deepdram.paths import SPLITS_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    space = LatticeSpace()
    cfg = RegressorConfig.forward_paper(**model_overrides(params.train_forward, "train_forward"))
    return train_regressor_job(FORWARD, params.train_forward, cfg, space,
                               xy(space, read_table(SPLITS_DIR / "train.parquet")),
                               xy(space, read_table(SPLITS_DIR / "val.parquet")), SPLITS_DIR / "test.parquet",
                               [SPLITS_DIR / "train.parquet", SPLITS_DIR / "val.parquet"])


def main() -> int:
    return run("train_forward", job)
