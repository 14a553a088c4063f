"""Hyperparameter search for the three networks: Optuna (TPE + pruning) or Keras-Tuner, in MLflow.

The paper tuned with scikit-learn grid search and 3-fold cross-validation ("pipeline training":
data options and model hyperparameters searched together; supplementary Section 2, Tables 5, 7,
11). Here the same spaces, declared in params.yaml (`tune_<model>.space`), are searched by

* ``optuna``: TPE sampler (constant liar, so parallel workers spread out) and a median pruner fed
  by the per-epoch validation score of every fold (step = fold * epochs + epoch);
* ``keras_tuner``: Bayesian optimisation (a `keras_tuner.Tuner` whose `run_trial` is the same
  cross-validation objective).

Scores (maximised): forward and size-agnostic models, mean R2 over the four properties; CVAE,
the R2 of the best of 10 generated designs per held-out target (`generation_score`; its total
loss, the paper's score, prefers collapsed generators). Each study has one MLflow parent
run (experiment ``deepdram-tuning``) and one nested child run per trial, written with three
calls per trial (create, one `log_batch`, terminate). The study lives in persistent storage (a
sqlite file under outputs/tuning/ by default, or `tune.storage`, e.g. a shared PostgreSQL), so a
killed run resumes, and several workers can share one study. Trials whose worker died are found
by Optuna's heartbeat and failed; their MLflow child runs are then marked FAILED too.

The first trial of every study is the paper's selected configuration (`tune_<model>.paper`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepdram import constants as C
from deepdram import params as P
from deepdram.errors import DeepdramError, InputError

MODELS = ("forward", "size_agnostic", "cvae")
BACKENDS = ("optuna", "keras_tuner")
TUNING_DIR = C.OUTPUTS_DIR / "tuning"
EXPERIMENT = "deepdram-tuning"
# Default score per model, and the scores a study may choose (`tune_<model>.score`).
SCORE = {"forward": "r2", "size_agnostic": "r2", "cvae": "gen_r2"}
SCORES = {"forward": ("r2",), "size_agnostic": ("r2",), "cvae": ("gen_r2", "loss")}
DIRECTIONS = {"r2": "maximize", "gen_r2": "maximize", "loss": "minimize"}
# The CVAE is scored by what it is for: best-of-K generation R2 (properties by the forward model)
# on held-out targets. Its total loss (the paper's grid score) favours a 2-D latent space that
# collapses to a few designs (measured: best-of-100 R2 0.09, 4 % distinct designs).
GEN_SCORE_K = 10
GEN_SCORE_TARGETS = 300
FIT_KEYS = ("epochs", "batch_size", "learning_rate")
# Search keys that are not config fields: data options and the CVAE's width-list recipe.
DATA_KEYS = ("resampling",)
CVAE_RECIPE = ("encoder_layers", "encoder_first_width", "encoder_shape",
               "decoder_layers", "decoder_first_width", "decoder_shape")
TAG_STUDY, TAG_ROLE, TAG_TRIAL, TAG_STATE = "deepdram.study", "deepdram.role", "deepdram.trial", "deepdram.state"


class TrialFailed(DeepdramError):
    """A trial that could not produce a finite score (NaN loss)."""


# --- configuration --------------------------------------------------------------------------------


@dataclass
class TuneConfig:
    """One study's settings, checked (from params.yaml section `tune_<model>`)."""

    model: str
    backend: str = "optuna"
    storage: str | None = None
    trials: int = 20
    seed: int = 0
    folds: int = 3
    rows: int = 6000
    fit: dict = field(default_factory=lambda: {"epochs": 8, "batch_size": 128, "learning_rate": 1e-3})
    space: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=lambda: {"startup_trials": 5, "warmup_epochs": 2})
    heartbeat: dict = field(default_factory=lambda: {"interval": 10, "grace": 30})
    data: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)  # config fields every trial uses (e.g. features)
    score: str = ""  # "" = the model's default (SCORE); the CVAE may use "loss", the paper's score

    def __post_init__(self):
        self.score = self.score or SCORE[self.model]
        if self.score not in SCORES[self.model]:
            raise InputError(f"params.yaml: 'tune_{self.model}.score' must be one of {SCORES[self.model]}; "
                             f"got {self.score!r}")

    @property
    def direction(self) -> str:
        """'maximize' or 'minimize', by the study's score."""
        return DIRECTIONS[self.score]

    @property
    def study_name(self) -> str:
        """Model plus a fingerprint of everything that changes a trial's score (not trial counts)."""
        key = {"space": self.space, "fit": self.fit, "folds": self.folds, "rows": self.rows,
               "seed": self.seed, "data": self.data, "backend": self.backend}
        if self.fixed:
            key["fixed"] = self.fixed
        if self.score != "r2":  # a new score is a new study (R2 studies keep their names)
            key["score"] = self.score
        return f"{self.model}-{P.fingerprint(key)[:10]}"


def _space_entry(name: str, spec: Any, where: str) -> Any:
    if isinstance(spec, list):
        if not spec:
            raise InputError(f"params.yaml: '{where}.space.{name}' is an empty list of choices")
        return spec
    if isinstance(spec, Mapping) and {"low", "high"} <= set(spec):
        lo, hi = spec["low"], spec["high"]
        if isinstance(lo, bool) or not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or lo > hi:
            raise InputError(f"params.yaml: '{where}.space.{name}' needs numbers low <= high; got {dict(spec)}")
        return dict(spec)
    raise InputError(f"params.yaml: '{where}.space.{name}' must be a list of choices or {{low, high}}; got {spec!r}")


def tune_config(params: Mapping, model: str) -> TuneConfig:
    """The checked TuneConfig of `tune_<model>` in params.yaml."""
    if model not in MODELS:
        raise InputError(f"model must be one of {list(MODELS)}; got {model!r}")
    where = f"tune_{model}"
    sec = P.section(params, where)
    backend = P.choice(sec, "backend", where, BACKENDS)
    storage = sec.get("storage")
    if storage is not None and not isinstance(storage, str):
        raise InputError(f"params.yaml: '{where}.storage' must be null or a database URL; got {storage!r}")
    if backend == "keras_tuner" and storage and not storage.startswith("sqlite"):
        raise InputError(f"params.yaml: '{where}.storage' {storage!r}: shared storage needs backend optuna "
                         "(Keras-Tuner keeps its state in a folder)")
    space = P.get(sec, "space", where)
    if not isinstance(space, Mapping) or not space:
        raise InputError(f"params.yaml: '{where}.space' must be a non-empty mapping of search parameters")
    space = {k: _space_entry(k, v, where) for k, v in space.items()}
    paper = dict(sec.get("paper") or {})
    for k, v in paper.items():
        spec = space.get(k)
        ok = spec is None or (v in spec if isinstance(spec, list) else spec["low"] <= v <= spec["high"])
        if not ok or spec is None:
            raise InputError(f"params.yaml: '{where}.paper.{k}' = {v!r} is not in '{where}.space'")
    fit = dict(P.get(sec, "fit", where))
    for k in FIT_KEYS:
        if k not in fit and k not in space:
            raise InputError(f"params.yaml: missing key '{where}.fit.{k}'")
    cfg = TuneConfig(model=model, backend=backend, storage=storage,
                     trials=P.positive_int(sec, "trials", where), seed=P.seed(sec, "seed", where),
                     folds=P.positive_int(sec, "folds", where), rows=P.positive_int(sec, "rows", where),
                     fit=fit, space=space, paper=paper, data=dict(sec.get("data") or {}),
                     fixed=dict(sec.get("fixed") or {}), score=str(sec.get("score") or ""))
    clash = sorted(set(cfg.fixed) & (set(space) | set(FIT_KEYS)))
    unknown = sorted(set(cfg.fixed) - config_fields(model))
    if clash or unknown:
        raise InputError(f"params.yaml: '{where}.fixed' keys {clash or unknown} are "
                         f"{'also searched or fit settings' if clash else f'not {model} config fields'}")
    if cfg.folds < 2:
        raise InputError(f"params.yaml: '{where}.folds' must be >= 2; got {cfg.folds}")
    if "pruner" in sec:
        cfg.pruner = {**cfg.pruner, **sec["pruner"]}
    if "heartbeat" in sec:
        cfg.heartbeat = {**cfg.heartbeat, **sec["heartbeat"]}
    return cfg


# --- search parameters -> model configurations ----------------------------------------------------


def config_fields(model: str) -> set[str]:
    """Field names of the model's config dataclass (RegressorConfig or CVAEConfig)."""
    from dataclasses import fields

    from deepdram import models

    cls = models.CVAEConfig if model == "cvae" else models.RegressorConfig
    return {f.name for f in fields(cls)}


def architecture(model: str, values: Mapping) -> dict:
    """The config-field dict (what `<model>_best.yaml` holds under `model:`) of search values."""
    from deepdram import models

    known = config_fields(model)
    out = {k: v for k, v in values.items() if k in known}
    if model == "cvae":
        latent = int(out.get("latent_dim", models.CVAEConfig().latent_dim))
        for side, n_out in (("encoder", latent), ("decoder", C.N_BEAMS)):
            if f"{side}_layers" in values:
                out[f"{side}_hidden"] = models.hidden_widths(
                    values[f"{side}_layers"], values[f"{side}_first_width"],
                    values.get(f"{side}_shape", "triangle"), n_out)
    unknown = sorted(set(values) - known - set(DATA_KEYS) - set(CVAE_RECIPE))
    if unknown:
        raise InputError(f"search parameter(s) {unknown} are neither {model} config fields {sorted(known)} "
                         f"nor data options {list(DATA_KEYS)}")
    return _plain(out)


def _plain(d: Mapping) -> dict:
    """NumPy scalars -> Python values (YAML / MLflow friendly)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, list):
            v = [x.item() if isinstance(x, np.generic) else x for x in v]
        out[k] = v
    return out


def trial_config(cfg: TuneConfig, values: Mapping):
    """The model config object a trial trains (fit settings from the study unless searched)."""
    from deepdram import models

    arch = architecture(cfg.model, values)
    fit = {k: cfg.fit[k] for k in FIT_KEYS if k in cfg.fit}
    merged = {**fit, **cfg.fixed, **arch, "seed": cfg.seed, "patience": 0}
    cls = models.CVAEConfig if cfg.model == "cvae" else models.RegressorConfig
    return cls.from_dict(merged)


# --- data -----------------------------------------------------------------------------------------


def kfold(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, val) index pairs of a seeded shuffled k-fold split of n rows (sorted indices)."""
    if n < k:
        raise InputError(f"cross-validation needs at least {k} rows; got {n}")
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, k)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(parts[i])) for i in range(k)]


def _read_pool(path: Path, n_rows: int, seed: int):
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


def resampled_sets(cells, methods, resample_sec: Mapping, seed: int) -> dict:
    """{method: cells frame}: the upstream resampling methods applied to one pool of raw cells."""
    from deepdram import datasets

    out = {}
    for m in methods:
        if m == "under":
            out[m] = datasets.undersample(cells, **resample_sec["under"], seed=seed)
        elif m == "over":
            o = {k: v for k, v in resample_sec["over"].items() if k != "base_size"}
            out[m] = datasets.oversample(cells, **o, seed=seed + 1).drop(columns="parent")
        elif m == "none":
            out[m] = cells
        else:
            raise InputError(f"resampling must be under, over or none; got {m!r}")
    return out


def load_data(cfg: TuneConfig, params: Mapping) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{variant: (x, y)} cross-validation rows (variant: resampling method, or "" when not searched)."""
    import pandas as pd

    from deepdram.training import cell_xy, split_rows, subsample, tiling_xy

    if cfg.model == "size_agnostic":
        tilings = pd.read_parquet(C.TILINGS_PATH)
        return {"": subsample(*tiling_xy(split_rows(tilings, "train")), cfg.rows, cfg.seed)}
    methods = cfg.space.get("resampling")
    if cfg.model == "forward" and methods:
        pool = _read_pool(C.CELLS_PATH, int(cfg.data.get("pool_cells", 100_000)), cfg.seed)
        sets = resampled_sets(pool, methods, P.section(params, "resample"), cfg.seed)
        return {m: subsample(*cell_xy(df), cfg.rows, cfg.seed) for m, df in sets.items()}
    path = C.SPLITS_DIR / "train.parquet"
    if not path.exists():
        raise DeepdramError(f"{path} is missing: run the resample stage first")
    return {"": subsample(*cell_xy(pd.read_parquet(path)), cfg.rows, cfg.seed)}


# --- cross-validation objective --------------------------------------------------------------------


def r2_overall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Uniform mean over columns of R2 (scikit-learn's multioutput='uniform_average')."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    ss_res = ((y_true - y_pred) ** 2).sum(0)
    ss_tot = ((y_true - y_true.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), (ss_res == 0).astype(float))
    return float(np.mean(r2))


def generation_score(reconstruction, forward_model, targets: np.ndarray, seed: int,
                     k: int = GEN_SCORE_K) -> float:
    """R2 overall of the best of k generated designs per target (forward-model properties, best
    by MSE as `metrics.best_of_k`); a target without a valid design scores as the targets' mean.

    `reconstruction` maps [z, scaled properties] to 42 logits (the CVAE's decoder, scaled by the
    forward model's target scaler, as in `models.build_cvae`)."""
    from deepdram import models
    from deepdram.lattice import is_valid
    from deepdram.metrics import best_of_k

    targets = np.asarray(targets, dtype=np.float64)
    unscale = models.scalers_of(forward_model)[1]
    scaled = (targets - unscale.offset_values) / unscale.scale_values
    latent = int(reconstruction.input_shape[0][-1])
    z = np.random.default_rng(seed).standard_normal((len(targets) * k, latent)).astype(np.float32)
    logits = np.asarray(reconstruction([z, np.repeat(scaled, k, axis=0).astype(np.float32)], training=False))
    designs = (logits > 0).astype(np.uint8)  # p > 0.5, the threshold rule of the design stage
    props = models.predict(forward_model, designs).astype(np.float64)
    props[~is_valid(designs)] = np.nan
    props = props.reshape(len(targets), k, 4)
    chosen = props[np.arange(len(targets)), best_of_k(targets, props)]
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
                   forward_model=None) -> CVResult:
    """k-fold CV of one configuration: train on k-1 folds, score the held-out fold every epoch.

    `report(step, score)` (e.g. Optuna's report + should_prune) is called after every epoch with
    step = fold * epochs + epoch; it may raise to stop the trial. Raises TrialFailed on NaN.
    """
    from deepdram import models

    model_cfg = trial_config(cfg, values)
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
            cb = _epoch_callback(lambda m, _l, t=targets: generation_score(m.get_layer("reconstruction"),
                                                                            forward_model, t, cfg.seed), on_score)
            _, hist = models.train_cvae(x[tr], y[tr], x[va], y[va], forward_model, model_cfg, callbacks=[cb])
            score = curve[-1]
        else:
            xs, xo = models.feature_scaling(x.shape[1], model_cfg.scaling)
            ys, yo = (models.minmax_scaling(y[tr]) if model_cfg.scaling == "minmax"
                      else (np.ones(y.shape[1]), np.zeros(y.shape[1])))
            xv = x[va] * xs + xo
            if model_cfg.features == "homogenized":  # the core's extra inputs, as train_regressor builds them
                _, stats = models.homogenized_inputs(x[tr])
                xv = np.concatenate([xv, models.homogenized_inputs(x[va], stats)[0]], axis=1)
            xv = np.asarray(xv, np.float32)
            yv = y[va] * ys + yo  # R2 is invariant under the per-column affine target scaling
            # the callback's model is the core: scaled inputs -> scaled targets
            cb = _epoch_callback(lambda core, _l, xv=xv, yv=yv: r2_overall(yv, models.predict(core, xv)), on_score)
            full, hist = models.train_regressor(x[tr], y[tr], x[va], y[va], model_cfg, callbacks=[cb])
            score = r2_overall(y[va], models.predict(full, x[va]))
        if not math.isfinite(score):
            raise TrialFailed(f"non-finite score in fold {f + 1}")
        scores.append(score)
        epochs += len(hist["loss"])
    return CVResult(scores, epochs, curve)


# --- MLflow ---------------------------------------------------------------------------------------


def _client():
    from deepdram import tracking

    tracking.configure()
    return tracking.client()


def parent_run(study_name: str, model: str, backend: str, storage: str) -> str:
    """Run id of the study's parent run, created if missing.

    Workers may race to create it: each creates one if none exists, then all use the OLDEST parent
    run of the study (ties by id) and delete their own if it lost, so every worker agrees.
    """
    from deepdram import tracking

    c = _client()
    exp = tracking.experiment(experiment_name())
    flt = f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_ROLE}` = 'parent'"

    def parents():
        runs = c.search_runs([exp], flt, max_results=100)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = parents()
    if found:
        run_id = found[0].info.run_id
    else:
        mine = c.create_run(exp, run_name=f"tune_{model}", tags={
            TAG_STUDY: study_name, TAG_ROLE: "parent", "deepdram.kind": model, "deepdram.backend": backend,
            "deepdram.storage": _redact(storage), "mlflow.note.content":
                f"{backend} study {study_name}: one nested run per trial"}).info.run_id
        run_id = parents()[0].info.run_id
        if run_id != mine:
            c.delete_run(mine)
    if c.get_run(run_id).info.status != "RUNNING":
        c.update_run(run_id, status="RUNNING")
    return run_id


def experiment_name() -> str:
    """MLflow experiment holding all studies ($DEEPDRAM_TUNING_EXPERIMENT overrides)."""
    return os.environ.get("DEEPDRAM_TUNING_EXPERIMENT", EXPERIMENT)


def _redact(url: str) -> str:
    """A storage URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}"
    return url


class TrialLogger:
    """One nested MLflow run per trial: create (RUNNING) at start, one log_batch + terminate at end."""

    def __init__(self, parent_id: str, study_name: str, model: str, worker: int = 0):
        import socket

        self.parent_id, self.study_name, self.model = parent_id, study_name, model
        self.worker = f"{worker}@{socket.gethostname()}:{os.getpid()}"
        self.client = _client()
        self.experiment_id = self.client.get_run(parent_id).info.experiment_id
        self.overhead: list[float] = []

    def start(self, number: int, values: Mapping) -> tuple[str, float]:
        t0 = time.perf_counter()
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:04d}", tags={
            "mlflow.parentRunId": self.parent_id, TAG_STUDY: self.study_name, TAG_ROLE: "trial",
            TAG_TRIAL: str(number), TAG_STATE: "running", "deepdram.kind": self.model,
            "deepdram.worker": self.worker})
        return run.info.run_id, time.perf_counter() - t0

    def finish(self, run_id: str, values: Mapping, state: str, result: CVResult | None, seconds: float,
               overhead: float, score_name: str, error: str | None = None, extra_tags: Mapping | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from deepdram.tracking import _text

        t0 = time.perf_counter()
        now = int(time.time() * 1000)
        params = [Param(k, _text(v)[:6000]) for k, v in sorted(values.items())]
        metrics = [Metric("duration_s", seconds, now, 0)]
        if result is not None:
            metrics.append(Metric("epochs", float(result.epochs), now, 0))
            metrics += [Metric(f"cv_{score_name}_fold{i + 1}", s, now, 0) for i, s in enumerate(result.fold_scores)]
            if len(result.fold_scores):
                metrics += [Metric(f"cv_{score_name}_mean", result.mean, now, 0),
                            Metric(f"cv_{score_name}_std", result.std, now, 0)]
            metrics += [Metric(f"val_{score_name}_epoch", s, now, i) for i, s in enumerate(result.curve)]
        tags = [RunTag(TAG_STATE, state)] + [RunTag(k, _text(v)[:5000]) for k, v in (extra_tags or {}).items()]
        if error:
            tags.append(RunTag("deepdram.error", error[:5000]))
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000],
                                  params=params if i == 0 else [], tags=tags if i == 0 else [])
        self.client.set_terminated(run_id, "FINISHED" if state in ("complete", "pruned") else "FAILED")
        self.overhead.append(overhead + time.perf_counter() - t0)


def fail_orphans(parent_id: str, is_live: Callable[[int], bool]) -> int:
    """Mark FAILED the RUNNING child runs whose trial is no longer running; returns how many."""
    c = _client()
    exp = c.get_run(parent_id).info.experiment_id
    runs = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'",
                         max_results=10000)
    n = 0
    for r in runs:
        number = int(r.data.tags.get(TAG_TRIAL, -1))
        if not is_live(number):
            c.set_tag(r.info.run_id, TAG_STATE, "failed")
            c.set_tag(r.info.run_id, "deepdram.error", "worker died during the trial (found on resume)")
            c.set_terminated(r.info.run_id, "FAILED")
            n += 1
    return n


# --- the trial body, shared by both backends -----------------------------------------------------------


class Objective:
    """Runs one trial: MLflow child run, CV, state bookkeeping (complete / pruned / failed)."""

    def __init__(self, cfg: TuneConfig, data: Mapping, logger: TrialLogger, forward_model=None):
        self.cfg, self.data, self.logger, self.forward_model = cfg, data, logger, forward_model
        self.folds = {k: kfold(len(x), cfg.folds, cfg.seed) for k, (x, _) in data.items()}
        self.epochs_total = 0

    def run(self, number: int, values: Mapping, report=None, prune_exc: tuple = (),
            duplicate_of: tuple[int, float] | None = None) -> float:
        values = _plain(values)
        run_id, overhead = self.logger.start(number, values)
        t0 = time.perf_counter()
        name = self.cfg.score
        if duplicate_of is not None:
            # the same configuration already completed: same data, folds and seed give the same score
            self.logger.finish(run_id, values, "complete", CVResult([], 0, []), time.perf_counter() - t0, overhead,
                               name, extra_tags={"deepdram.duplicate_of": duplicate_of[0]})
            return duplicate_of[1]
        try:
            res = cross_validate(self.cfg, values, self.data, self.folds, report, self.forward_model)
        except prune_exc:
            self.logger.finish(run_id, values, "pruned", None, time.perf_counter() - t0, overhead, name)
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then re-raised
            self.logger.finish(run_id, values, "failed", None, time.perf_counter() - t0, overhead, name,
                               error=f"{type(exc).__name__}: {exc}")
            raise
        self.epochs_total += res.epochs
        self.logger.finish(run_id, values, "complete", res, time.perf_counter() - t0, overhead, name)
        return res.mean


# --- Optuna backend ---------------------------------------------------------------------------------


def default_storage(model: str) -> str:
    """sqlite file under outputs/tuning/ holding the model's studies."""
    TUNING_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(TUNING_DIR / f'{model}_study.db').as_posix()}"


STORAGE_ATTEMPTS = 5


def _storage(cfg: TuneConfig):
    import optuna

    url = cfg.storage or default_storage(cfg.model)
    if url.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 defaults to psycopg 3; the pinned driver is psycopg2
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    hb = cfg.heartbeat
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=int(hb["interval"]), grace_period=int(hb["grace"]),
                # sqlite: wait for a lock (another process reading the study) instead of failing the commit
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True})
        except SQLAlchemyError:
            # Workers that start together race to create the schema in a new database (PostgreSQL:
            # "duplicate key ... pg_type_typname_nsp_index"); the loser finds it made on a retry.
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(1.0 + attempt)


def _suggest(trial, space: Mapping) -> dict:
    out = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = trial.suggest_categorical(name, spec)
        elif all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
            out[name] = trial.suggest_int(name, spec["low"], spec["high"])
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def _distributions(space: Mapping) -> dict:
    import optuna.distributions as d

    out = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = d.CategoricalDistribution(spec)
        elif all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
            out[name] = d.IntDistribution(spec["low"], spec["high"])
        else:
            out[name] = d.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def open_study(cfg: TuneConfig, worker: int = 0):
    """Create or load the study (TPE + median pruner); enqueue the paper's configuration first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + 7919 * worker, constant_liar=True,
                                         n_startup_trials=int(cfg.pruner.get("startup_trials", 5)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=int(cfg.pruner.get("startup_trials", 5)),
                                         n_warmup_steps=int(cfg.pruner.get("warmup_epochs", 2)))
    study = optuna.create_study(study_name=cfg.study_name, storage=_storage(cfg), sampler=sampler, pruner=pruner,
                                direction=cfg.direction, load_if_exists=True)
    if cfg.paper and not study.get_trials(deepcopy=False):
        study.enqueue_trial(cfg.paper, skip_if_exists=True)
    return study


def _finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def run_optuna(cfg: TuneConfig, objective: Objective, study, n_trials: int, progress: bool = True) -> None:
    """Run `n_trials` more trials of `study` in this process (failures recorded, the study goes on)."""
    import optuna
    from optuna.trial import TrialState

    def fn(trial):
        values = _suggest(trial, cfg.space)
        dup = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == trial.params and t.number != trial.number:
                dup = (t.number, t.value)
                break

        def report(step, score):
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        return objective.run(trial.number, values, report, (optuna.TrialPruned,), dup)

    study.optimize(fn, n_trials=n_trials, catch=(Exception,), gc_after_trial=True, show_progress_bar=progress)


def _live_trials(study) -> Callable[[int], bool]:
    from optuna.trial import TrialState

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    return lambda n: states.get(n) == TrialState.RUNNING


# --- Keras-Tuner backend --------------------------------------------------------------------------------


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
    return TUNING_DIR / "keras_tuner"


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


# --- study artifacts, best configuration -------------------------------------------------------------


def _savefig(fig_or_ax, path: Path) -> None:
    fig = fig_or_ax.get_figure() if hasattr(fig_or_ax, "get_figure") else fig_or_ax
    while hasattr(fig, "get_figure") and fig.get_figure() is not fig and fig.get_figure() is not None:
        fig = fig.get_figure()
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def study_artifacts(study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances, parallel coordinates (PNG) and a trials CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    study.trials_dataframe().to_csv(out_dir / "trials.csv", index=False)
    written.append(out_dir / "trials.csv")
    plots = {"optimization_history.png": vis.plot_optimization_history,
             "param_importances.png": vis.plot_param_importances,
             "parallel_coordinate.png": vis.plot_parallel_coordinate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in plots.items():
            try:
                _savefig(fn(study), out_dir / name)
                written.append(out_dir / name)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                # e.g. importances need two completed trials with varying parameters
                (out_dir / f"{name}.txt").write_text(f"not drawn: {exc}\n")
    return written


def best_record(cfg: TuneConfig, study) -> dict:
    """What `<model>_best.yaml` holds: `model:` (config fields), data options, study summary."""
    from optuna.trial import TrialState

    try:
        best = study.best_trial
    except ValueError:
        raise DeepdramError(f"study {cfg.study_name}: no trial completed, no best configuration") from None
    trials = study.get_trials(deepcopy=False)
    count = {s.name.lower(): sum(t.state == s for t in trials)
             for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return {
        "model": {**cfg.fixed, **architecture(cfg.model, best.params)},
        "data": _plain({k: v for k, v in best.params.items() if k in DATA_KEYS}),
        "search": _plain(dict(best.params)),
        "study": {"name": cfg.study_name, "backend": cfg.backend, "storage": _redact(cfg.storage or "default sqlite"),
                  "best_trial": best.number, f"cv_{cfg.score}": float(best.value),
                  "direction": cfg.direction, "trials": len(trials), **count},
    }


def write_best(record: dict, path: Path) -> Path:
    """Write the best-configuration YAML atomically."""
    import yaml

    from deepdram.io import atomic_target

    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by the tuning stage (deepdram.tuning). The training stage merges `model:` under\n"
              "# its own params `model:` overrides (those win) when `source: tuned`. `data:` lists the chosen\n"
              "# data options: adopt `resampling` by setting `resample.method` in params.yaml.\n")
    with atomic_target(path) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump(record, sort_keys=False))
    return path


# --- driver ---------------------------------------------------------------------------------------------


def _forward_model(cfg: TuneConfig):
    if cfg.model != "cvae":
        return None
    from deepdram import models

    path = C.OUTPUTS_DIR / "models" / "forward.keras"
    if not path.is_file():
        raise DeepdramError(f"{path} is missing: the CVAE study needs the trained forward model (train_forward)")
    return models.load_model(path)


def tune(cfg: TuneConfig, data: Mapping, n_trials: int | None = None, worker: int = 0,
         forward_model=None, out_dir: Path | None = None, enqueue: list[Mapping] = (),
         progress: bool = True) -> dict:
    """Run (or resume) one study; log it to MLflow; write `<model>_best.yaml`; return a summary.

    n_trials: trials THIS call runs (a worker's share); None: as many as needed for the study to
    have `cfg.trials` finished (complete or pruned) trials. `enqueue`: extra configurations tried
    first (the paper's configuration is always enqueued in a new study).
    """
    out_dir = Path(out_dir or TUNING_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    storage = cfg.storage or (default_storage(cfg.model) if cfg.backend == "optuna" else str(kt_directory(cfg)))
    parent = parent_run(cfg.study_name, cfg.model, cfg.backend, storage)
    logger = TrialLogger(parent, cfg.study_name, cfg.model, worker)
    objective = Objective(cfg, data, logger, forward_model)
    if cfg.backend == "optuna":
        import optuna

        study = open_study(cfg, worker)
        optuna.storages.fail_stale_trials(study)
        fail_orphans(parent, _live_trials(study))
        for values in enqueue:
            study.enqueue_trial(dict(values))
        if n_trials is not None:
            run_optuna(cfg, objective, study, n_trials, progress)
        else:
            # failed trials do not count: run until `trials` finished, at most 2x + 5 attempts
            attempts = 0
            while (todo := cfg.trials - len(_finished(study))) > 0 and attempts < 2 * cfg.trials + 5:
                run_optuna(cfg, objective, study, todo, progress)
                attempts += todo
        optuna.storages.fail_stale_trials(study)
        fail_orphans(parent, _live_trials(study))
    else:
        fail_orphans(parent, lambda n: False)  # one process owns a Keras-Tuner folder
        tuner = run_keras_tuner(cfg, objective, progress)
        study = kt_as_study(cfg, tuner)
    record = best_record(cfg, study)
    best_path = write_best(record, out_dir / f"{cfg.model}_best.yaml")
    art = out_dir / f"{cfg.model}_study"
    files = study_artifacts(study, art)
    c = _client()
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    sc = record["study"]
    metrics = [Metric(f"best_cv_{cfg.score}", sc[f"cv_{cfg.score}"], now, 0),
               Metric("trials", sc["trials"], now, 0), Metric("complete", sc["complete"], now, 0),
               Metric("pruned", sc["pruned"], now, 0), Metric("failed", sc["fail"], now, 0)]
    if logger.overhead:
        metrics.append(Metric("mlflow_overhead_s_per_trial", float(np.mean(logger.overhead)), now, 0))
    existing = set(c.get_run(parent).data.params)
    space_params = [Param(f"space.{k}", str(v)[:6000]) for k, v in cfg.space.items() if f"space.{k}" not in existing]
    fixed = {"backend": cfg.backend, "folds": cfg.folds, "rows": cfg.rows, **{f"fit.{k}": v for k, v in cfg.fit.items()}}
    space_params += [Param(k, str(v)) for k, v in fixed.items() if k not in existing]
    c.log_batch(parent, metrics=metrics, params=space_params)
    for f in [best_path, *files]:
        c.log_artifact(parent, str(f), "study")
    c.set_terminated(parent, "FINISHED")
    ran = len(logger.overhead)
    seconds = time.perf_counter() - t0
    return {"study": cfg.study_name, "parent_run_id": parent, "trials_run": ran,
            "trials_total": sc["trials"], "complete": sc["complete"], "pruned": sc["pruned"], "failed": sc["fail"],
            f"best_cv_{cfg.score}": sc[f"cv_{cfg.score}"], "best_trial": sc["best_trial"],
            "epochs_trained": objective.epochs_total,
            "mlflow_overhead_s_per_trial": round(float(np.mean(logger.overhead)), 4) if ran else 0.0,
            "seconds_per_trial": round(seconds / ran, 2) if ran else 0.0}


def run_stage(params: Mapping, model: str, storage: str | None = None, n_trials: int | None = None,
              worker: int = 0, progress: bool = True) -> dict:
    """The `tune_<model>` stage (and `deepdram tune`): read params and data, run the study."""
    cfg = tune_config(params, model)
    if storage is not None:
        cfg.storage = storage
    fwd = _forward_model(cfg)
    data = load_data(cfg, params)
    return tune(cfg, data, n_trials=n_trials, worker=worker, forward_model=fwd, progress=progress)


# --- command line: `deepdram tune` ------------------------------------------------------------------

TUNE_DESCRIPTION = """\
Run trials of the hyperparameter study of one model (forward, size_agnostic or
cvae), with the settings of section tune_<MODEL> of params.yaml. Without
--trials the study is brought to tune_<MODEL>.trials finished trials (what the
DVC stage does); with --trials N this process runs N more trials, so several
workers (a SLURM job array) share one study when they name the same --storage
(a PostgreSQL URL) and the same MLflow server ($MLFLOW_TRACKING_URI). Each
worker writes outputs/tuning/<MODEL>_best.yaml from the whole study when done.
"""

TUNE_EPILOG = """\
Examples:
  deepdram tune forward
  deepdram tune forward --storage postgresql://optuna:pw@db01/optuna --trials 10 --worker 3
"""


def add_tune_arguments(p) -> None:
    """Options of `deepdram tune`."""
    p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of {', '.join(MODELS)}")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: tune_<MODEL>.storage, else outputs/tuning/<MODEL>_study.db)")
    p.add_argument("--trials", type=int, metavar="N", help="trials this worker runs (default: up to the study's total)")
    p.add_argument("--worker", type=int, metavar="ID",
                   help="worker number, varies the sampler seed (default: $SLURM_ARRAY_TASK_ID, else 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def tune_command(args) -> int:
    """`deepdram tune`: run trials, print the study summary."""
    import json

    if args.trials is not None and args.trials < 1:
        raise InputError(f"--trials must be >= 1; got {args.trials}")
    worker = args.worker if args.worker is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
    out = run_stage(P.load_params(P.REPO_ROOT / "params.yaml"), args.model, storage=args.storage,
                    n_trials=args.trials, worker=worker, progress=not args.quiet)
    print(json.dumps(out, indent=1))
    return 0
