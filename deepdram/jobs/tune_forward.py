"""Stage `tune_forward`: the forward model's hyperparameter study (every trial a nested MLflow run)."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("tune_forward", "resample", "keras")


def job(params) -> dict:
    from deepdram.learn.backend import use

    use(params.keras.backend)  # before the code below imports Keras
    from deepdram.jobs.tuning_common import run_study

    return run_study(params.tune_forward, "forward", resample=params.resample)


def main() -> int:
    return run("tune_forward", job)
