"""The cross-validation objective of one trial: k-fold CV scored every epoch (for pruning)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepdram.errors import InputError
from deepdram.learn.search.config import TrialFailed, TuneConfig, trial_config

if TYPE_CHECKING:
    from deepdram.spaces.base import DesignSpace

# The CVAE is scored by what it is for: best-of-K generation R2 (properties by the forward model)
# on held-out targets. Its total loss (the paper's grid score) favours a 2-D latent space that
# collapses to a few designs (see README, "Hyperparameter search").
GEN_SCORE_K = 10
GEN_SCORE_TARGETS = 300


def kfold(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, val) index pairs of a seeded shuffled k-fold split of n rows (sorted indices)."""
    if n < k:
        raise InputError(f"cross-validation needs at least {k} rows; got {n}")
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, k)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(parts[i])) for i in range(k)]


def generation_score(space: DesignSpace, reconstruction, forward_model, targets: np.ndarray, seed: int,
                     k: int = GEN_SCORE_K) -> float:
    """R2 overall of the best of k generated designs per target (forward-model properties, best
    by MSE: `generation.best_of_k`); a target without a valid design scores as the targets' mean.

    `reconstruction` maps [z, scaled properties] to logits (the CVAE's decoder, scaled by the
    forward model's target scaler, as in `models.build_cvae`)."""
    from deepdram.learn import models
    from deepdram.learn.generation import best_of_k, generate
    from deepdram.learn.metrics import r2_overall

    targets = np.asarray(targets, dtype=np.float64)
    unscale = models.scalers_of(forward_model)[1]

    def decode(t, z):
        scaled = ((t - unscale.offset_values) / unscale.scale_values).astype(np.float32)
        return 1.0 / (1.0 + np.exp(-np.asarray(reconstruction([z, scaled], training=False), np.float64)))

    latent = int(reconstruction.input_shape[0][-1])
    designs = generate(decode, targets, k, latent, np.random.default_rng(seed))
    g = best_of_k(space, designs, lambda d: models.predict(forward_model, d), targets, k)
    chosen = g.properties.reshape(len(targets), k, -1)[np.arange(len(targets)), g.index]
    chosen = np.where(np.isfinite(chosen).all(axis=1, keepdims=True), chosen, targets.mean(axis=0))
    return r2_overall(targets, chosen)


def _epoch_callback(score_fn: Callable[[Any, dict], float], on_score: Callable[[int, float], None]):
    import keras

    class EpochScore(keras.callbacks.Callback):
        """Score every epoch (score_fn(model, logs)); fail on a non-finite score; pass it to `on_score`."""

        def on_epoch_end(self, epoch, logs=None):
            s = score_fn(self.model, logs or {})
            if not math.isfinite(s):
                raise TrialFailed(f"non-finite validation score at epoch {epoch + 1} (NaN/inf loss)")
            on_score(epoch, s)

    return EpochScore()


@dataclass
class CVResult:
    """Outcome of one cross-validated configuration."""

    fold_scores: list[float]
    epochs: int
    curve: list[float]  # per-epoch validation score, folds concatenated

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_scores))


def cross_validate(cfg: TuneConfig, values: Mapping, data: Mapping, folds, report=None,
                   forward_model=None, *, space: DesignSpace) -> CVResult:
    """k-fold CV of one configuration: train on k-1 folds, score the held-out fold every epoch.

    `report(step, score)` (e.g. Optuna's report + should_prune) is called after every epoch with
    step = fold * epochs + epoch; it may raise to stop the trial. Raises TrialFailed on NaN.
    """
    from deepdram.learn import models
    from deepdram.learn.metrics import r2_overall

    model_cfg = trial_config(cfg, values, space.n_variables)
    x, y = data[values.get("resampling", "")] if "resampling" in values else data[""]
    fold_idx = folds[values.get("resampling", "")] if "resampling" in values else folds[""]
    scores, curve, epochs = [], [], 0
    for f, (tr, va) in enumerate(fold_idx):
        base = f * model_cfg.epochs

        def on_score(epoch, s, base=base):
            curve.append(s)
            if report is not None:
                report(base + epoch, s)

        if cfg.model == "cvae" and cfg.score == "loss":  # the paper's score: total validation loss
            cb = _epoch_callback(lambda _m, logs: float(logs.get("val_loss", np.nan)), on_score)
            _, hist = models.train_cvae(x[tr], y[tr], x[va], y[va], forward_model, model_cfg, callbacks=[cb])
            score = curve[-1]
        elif cfg.model == "cvae":
            targets = y[va][: GEN_SCORE_TARGETS]
            cb = _epoch_callback(lambda m, _l, t=targets: generation_score(space, m.get_layer("reconstruction"),
                                                                            forward_model, t, cfg.seed), on_score)
            _, hist = models.train_cvae(x[tr], y[tr], x[va], y[va], forward_model, model_cfg, callbacks=[cb])
            score = curve[-1]
        else:
            xs, xo = models.feature_scaling(space, x.shape[1], model_cfg.scaling)
            ys, yo = (models.minmax_scaling(y[tr]) if model_cfg.scaling == "minmax"
                      else (np.ones(y.shape[1]), np.zeros(y.shape[1])))
            xv = x[va] * xs + xo
            features = space.feature_set(model_cfg.features)
            if features is not None:  # the core's extra inputs, as train_regressor builds them
                nv = space.n_variables
                _, stats = models.feature_inputs(features, x[tr], nv)
                xv = np.concatenate([xv, models.feature_inputs(features, x[va], nv, stats)[0]], axis=1)
            xv = np.asarray(xv, np.float32)
            yv = y[va] * ys + yo  # R2 is invariant under the per-column affine target scaling
            # the callback's model is the core: scaled inputs -> scaled targets
            cb = _epoch_callback(lambda core, _l, xv=xv, yv=yv: r2_overall(yv, models.predict(core, xv)), on_score)
            full, hist = models.train_regressor(x[tr], y[tr], x[va], y[va], model_cfg, space=space, callbacks=[cb])
            score = r2_overall(y[va], models.predict(full, x[va]))
        if not math.isfinite(score):
            raise TrialFailed(f"non-finite score in fold {f + 1}")
        scores.append(score)
        epochs += len(hist["loss"])
    return CVResult(scores, epochs, curve)
