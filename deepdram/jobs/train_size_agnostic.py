"""Stage `train_size_agnostic`: designs + (d1, d2) -> tiling properties, in MLflow, registered."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("train_size_agnostic", "keras")


def job(params) -> dict:
    from deepdram.learn.backend import use

    use(params.keras.backend)  # before the code below imports Keras
    from deepdram.data.splits import split_rows
    from deepdram.jobs.runner import read_table
    from deepdram.jobs.training_common import model_overrides, train_regressor_job
    from deepdram.learn.configs import RegressorConfig
    from deepdram.learn.training import xy
    from deepdram.mlops.catalogue import SIZE_AGNOSTIC
    from deepdram.paths import TILINGS_PATH
    from deepdram.spaces.lattice.space import LatticeSpace

    space = LatticeSpace()
    cfg = RegressorConfig.size_agnostic_paper(**model_overrides(params.train_size_agnostic, "train_size_agnostic"))
    tilings = read_table(TILINGS_PATH)
    return train_regressor_job(SIZE_AGNOSTIC, params.train_size_agnostic, cfg, space,
                               xy(space, split_rows(tilings, "train"), conditions=True),
                               xy(space, split_rows(tilings, "val"), conditions=True), TILINGS_PATH, [TILINGS_PATH])


def main() -> int:
    return run("train_size_agnostic", job)
