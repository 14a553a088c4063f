"""The Keras-Tuner backend: Bayesian optimisation, a `Tuner` whose `run_trial` is the same CV objective."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from deepdram.learn.search.config import TuneConfig
from deepdram.learn.search.optuna_backend import _distributions
from deepdram.learn.search.trials import Objective


def _kt_hyperparameters(space: Mapping, paper: Mapping):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name, spec in space.items():
        default = paper.get(name)
        if isinstance(spec, list):
            hp.Choice(name, spec, ordered=False, default=default if default in spec else spec[0])
        elif all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
            hp.Int(name, spec["low"], spec["high"], default=default)
        else:
            hp.Float(name, float(spec["low"]), float(spec["high"]), sampling="log" if spec.get("log") else "linear",
                     default=default)
    return hp


def _canonical(space: Mapping, values: Mapping) -> dict:
    """Values with each categorical one replaced by the equal choice of the space (Keras-Tuner
    hands booleans back as 0/1)."""
    out = dict(values)
    for k, spec in space.items():
        if isinstance(spec, list) and k in out:
            out[k] = next((c for c in spec if c == out[k]), out[k])
    return out


def kt_directory(cfg: TuneConfig) -> Path:
    """Where Keras-Tuner keeps its state (one project folder per study)."""
    return cfg.work_dir / "keras_tuner"


def run_keras_tuner(cfg: TuneConfig, objective: Objective, progress: bool = True):
    """Bayesian optimisation with Keras-Tuner (state in outputs/tuning/keras_tuner/<study>; resumable)."""
    import keras_tuner as kt

    direction = "max" if cfg.direction == "maximize" else "min"
    oracle = kt.oracles.BayesianOptimizationOracle(
        objective=kt.Objective("cv_score", direction), max_trials=cfg.trials, seed=cfg.seed,
        hyperparameters=_kt_hyperparameters(cfg.space, cfg.paper), max_consecutive_failed_trials=cfg.trials)

    class CVTuner(kt.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            values = _canonical(cfg.space, {k: trial.hyperparameters.get(k) for k in cfg.space})
            return {"cv_score": objective.run(int(trial.trial_id), values)}

    tuner = CVTuner(oracle=oracle, directory=str(kt_directory(cfg)), project_name=cfg.study_name,
                    overwrite=False)
    tuner.search_space_summary = lambda *a, **k: None  # noqa: E731 - keep the stage log short
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) if not progress else contextlib.nullcontext():
        tuner.search(verbose=0)
    return tuner



def kt_as_study(cfg: TuneConfig, tuner):
    """The Keras-Tuner trials as an in-memory Optuna study (same reports and plots as Optuna)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction=cfg.direction, study_name=cfg.study_name)
    dists = _distributions(cfg.space)
    for tid in sorted(tuner.oracle.trials, key=int):
        t = tuner.oracle.trials[tid]
        values = _canonical(cfg.space, {k: t.hyperparameters.get(k) for k in cfg.space})
        score = t.score
        ok = t.status == "COMPLETED" and score is not None and math.isfinite(score)
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions=dists, value=score if ok else None,
            state=TrialState.COMPLETE if ok else TrialState.FAIL))
    return study
