"""Stage `train_cvae`: the CVAE with the frozen forward model in its loss; its reconstruction network
is registered as the generator."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("train_cvae", "keras")


def job(params) -> dict:
    from deepdram.learn.backend import use

    use(params.keras.backend)  # before the code below imports Keras
    from deepdram.jobs.runner import read_table
    from deepdram.jobs.training_common import finish_training, log_common, model_overrides, start_run
    from deepdram.learn import models
    from deepdram.learn.configs import CVAEConfig
    from deepdram.learn.training import epoch_progress, subsample, xy
    from deepdram.mlops import tracking
    from deepdram.mlops.catalogue import GENERATOR
    from deepdram.paths import MODELS_DIR, SPLITS_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    space = LatticeSpace()
    section = params.train_cvae
    cfg = CVAEConfig.paper(**model_overrides(section, "train_cvae"))
    limit = section.max_train_rows
    x_tr, y_tr = subsample(*xy(space, read_table(SPLITS_DIR / "train.parquet")), limit, cfg.seed)
    x_va, y_va = xy(space, read_table(SPLITS_DIR / "val.parquet"))
    with start_run(GENERATOR, "train_cvae") as run_:
        log_common(GENERATOR, cfg.to_dict(), {"max_train_rows": limit, "train_rows": len(x_tr), "val_rows": len(x_va),
                                              "forward_model": "outputs/models/forward.keras"},
                   SPLITS_DIR / "test.parquet", [SPLITS_DIR / "train.parquet", SPLITS_DIR / "val.parquet"])
        parts, hist = models.train_cvae(x_tr, y_tr, x_va, y_va, MODELS_DIR / "forward.keras", cfg,
                                        callbacks=[tracking.EpochLogger(run_.info.run_id),
                                                   epoch_progress("train_cvae", cfg.epochs)], space=space)
        path = models.save_model(parts.generator, MODELS_DIR / "generator.keras")
        models.save_model(parts.encoder, MODELS_DIR / "encoder.keras")
        last = {f"val_{k}": float(v[-1]) for k, v in hist.items() if k.startswith("val_")}
        return finish_training(GENERATOR, run_, path, hist, last, {"epochs_run": len(hist["loss"])}, space.name)


def main() -> int:
    return run("train_cvae", job)
