"""Training, evaluation and promotion jobs of the three Deep-DRAM models, tracked in MLflow.

Each train job reads its DVC params, trains on the train split (validation split for early
stopping), saves the physical-unit `.keras` model under outputs/models/, logs params, per-epoch
curves, validation metrics and a validating pyfunc model to MLflow, and registers a new version
with the alias `challenger`. `evaluate` computes the paper's test metrics for all three models and
logs them to each training run; `promote` moves `champion` where a challenger is at least as good.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from deepdram import constants as C
from deepdram import params as P

MODELS_DIR = C.OUTPUTS_DIR / "models"
EVAL_DIR = C.OUTPUTS_DIR / "evaluation"
TRAINING_REPORTS = C.REPORTS_DIR / "training"
REGISTERED = {"forward": "deepdram-forward", "size_agnostic": "deepdram-size-agnostic",
              "cvae": "deepdram-generator"}
EXPERIMENTS = {"forward": "deepdram-forward", "size_agnostic": "deepdram-size-agnostic",
               "cvae": "deepdram-cvae"}
PROMOTION_METRIC = {"forward": "test_r2_overall", "size_agnostic": "test_r2_overall",
                    "cvae": "test_gen_best_r2_overall"}
SIZE_COLUMNS = list(C.SIZE_COLUMNS)


# --- data -------------------------------------------------------------------------------------


def cell_xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 42) float32 designs and (N, 4) float32 properties of a cells table."""
    return (df[list(C.BIT_COLUMNS)].to_numpy(np.float32), df[list(C.PROPERTY_COLUMNS)].to_numpy(np.float32))


def tiling_xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 44) float32 [bits, d1, d2] and (N, 4) float32 properties of a tilings table."""
    cols = list(C.BIT_COLUMNS) + SIZE_COLUMNS
    return df[cols].to_numpy(np.float32), df[list(C.PROPERTY_COLUMNS)].to_numpy(np.float32)


AUGMENTATIONS = ("none", "mirrors", "all")


def augment_symmetries(x: np.ndarray, y: np.ndarray, which: str = "mirrors") -> tuple[np.ndarray, np.ndarray]:
    """Add the design's symmetry images (exact: FE-tested): the left-right, top-bottom and double
    mirrors keep the properties; with "all" also their transposes, which swap E11 <-> E22,
    nu12 <-> nu21 and (tilings) d1 <-> d2. "none" returns the data as it is."""
    from deepdram.models import symmetry_images

    if which not in AUGMENTATIONS:
        raise P.InputError(f"augment must be one of {AUGMENTATIONS}; got {which!r}")
    if which == "none":
        return x, y
    images = symmetry_images(x.shape[1], which)
    return np.concatenate([x[:, cin] for cin, _ in images]), np.concatenate([y[:, cout] for _, cout in images])


def subsample(x, y, limit: int | None, seed: int):
    """At most `limit` rows of (x, y), a seeded random subset in the original order (None: all)."""
    if limit is None or len(x) <= limit:
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[idx], y[idx]


def split_rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split (train/val/test) of a table with a `split` column."""
    return df[df["split"] == split].reset_index(drop=True)


def _split(name: str) -> pd.DataFrame:
    return pd.read_parquet(C.SPLITS_DIR / f"{name}.parquet")


# --- params -------------------------------------------------------------------------------------


def _model_overrides(params: dict, stage: str) -> tuple[dict, dict]:
    sec = P.section(params, stage)
    source = P.choice(sec, "source", stage, ("paper", "tuned"))
    overrides = dict(sec.get("model") or {})
    if source == "tuned":
        import yaml

        best = C.OUTPUTS_DIR / "tuning" / f"{stage.removeprefix('train_')}_best.yaml"
        if not best.is_file():
            raise P.InputError(f"params.yaml: '{stage}.source' is 'tuned' but {best} does not exist "
                               "(run the tuning stage, or set source: paper)")
        overrides = {**yaml.safe_load(best.read_text()).get("model", {}), **overrides}
    return sec, overrides


# --- MLflow helpers -------------------------------------------------------------------------------


def _start_run(kind: str, run_name: str):
    import mlflow

    from deepdram import tracking

    tracking.configure()
    return mlflow.start_run(experiment_id=tracking.experiment(EXPERIMENTS[kind]), run_name=run_name)


def _history_frame(history: dict) -> pd.DataFrame:
    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    return df


def _finish_training(kind: str, run, model_path: Path, history: dict, val_metrics: dict, info: dict) -> dict:
    """Log metrics and the pyfunc model, register a challenger, write the run record."""
    import mlflow
    from mlflow.entities import Metric

    from deepdram import registry, serving, tracking
    from deepdram.io import atomic_target, write_json

    hist = _history_frame(history)
    hist_path = TRAINING_REPORTS / f"{kind}_history.csv"
    with atomic_target(hist_path) as tmp:
        hist.to_csv(tmp, index=False)
    png = TRAINING_REPORTS / f"{kind}_loss.png"
    _plot_history(hist, png, kind)
    tracking.client().log_batch(run.info.run_id,
                                metrics=[Metric(k, float(v), 0, 0) for k, v in val_metrics.items()])
    mlflow.log_artifact(str(hist_path), "training")
    mlflow.log_artifact(str(png), "training")
    pyfunc_kind = "generator" if kind == "cvae" else kind
    serving.log_model(pyfunc_kind, model_path, name="model")
    version = registry.register(run.info.run_id, REGISTERED[kind])
    record = {"run_id": run.info.run_id, "registered_model": REGISTERED[kind], "version": version,
              **val_metrics, **info}
    write_json(record, MODELS_DIR / f"{kind}.json")
    return record


def _plot_history(hist: pd.DataFrame, path: Path, kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from deepdram.io import atomic_target

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for col in hist.columns:
        if col.endswith("loss") and col != "epoch":
            ax.plot(hist["epoch"], hist[col], label=col)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (scaled units)")
    ax.set_title(f"{kind}: training curves")
    ax.legend()
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def _log_common(kind: str, cfg_dict: dict, data_info: dict, test_set: Path, datasets: list[Path]) -> None:
    from deepdram import tracking

    tracking.log_params_flat({"model": cfg_dict, "data": data_info})
    tracking.log_tags({**tracking.run_context(*datasets, test_set=test_set), "deepdram.kind": kind})


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


# --- jobs --------------------------------------------------------------------------------------------


def _train_regressor_job(kind: str, sec: dict, cfg, train: tuple, val: tuple, test_set: Path,
                         datasets: list[Path]) -> dict:
    """Shared job of the two regressors: subsample, augment, train, save, log, register."""
    from deepdram import models, tracking
    from deepdram.metrics import flat_metrics, regression_table

    augment = sec.get("augment", "none")
    augment = {True: "mirrors", False: "none", None: "none"}.get(augment, augment)
    if augment not in AUGMENTATIONS:
        raise P.InputError(f"params.yaml: 'train_{kind}.augment' must be one of {AUGMENTATIONS}; got {augment!r}")
    limit = sec.get("max_train_rows")
    x_tr, y_tr = subsample(*train, limit, cfg.seed)
    x_va, y_va = val
    x_tr, y_tr = augment_symmetries(x_tr, y_tr, augment)
    with _start_run(kind, f"train_{kind}") as run:
        _log_common(kind, cfg.to_dict(), {"augment": augment, "max_train_rows": limit,
                                          "train_rows": len(x_tr), "val_rows": len(x_va)}, test_set, datasets)
        model, hist = models.train_regressor(x_tr, y_tr, x_va, y_va, cfg,
                                             callbacks=[tracking.EpochLogger(run.info.run_id),
                                                        epoch_progress(f"train_{kind}", cfg.epochs)])
        path = models.save_model(model, MODELS_DIR / f"{kind}.keras")
        val_metrics = flat_metrics(regression_table(y_va, models.predict(model, x_va)), "val")
        return _finish_training(kind, run, path, hist, val_metrics, {"epochs_run": len(hist["loss"])})


def train_forward(params: dict) -> dict:
    """Unit-cell forward model: 42 bits -> [E11, E22, nu12, nu21]."""
    from deepdram import models

    sec, overrides = _model_overrides(params, "train_forward")
    return _train_regressor_job(
        "forward", sec, models.RegressorConfig.forward_paper(**overrides), cell_xy(_split("train")),
        cell_xy(_split("val")), C.SPLITS_DIR / "test.parquet",
        [C.SPLITS_DIR / "train.parquet", C.SPLITS_DIR / "val.parquet"])


def train_size_agnostic(params: dict) -> dict:
    """Size-agnostic model: 42 bits + (d1, d2) -> tiling properties (test split: inside tilings)."""
    from deepdram import models

    sec, overrides = _model_overrides(params, "train_size_agnostic")
    tilings = pd.read_parquet(C.TILINGS_PATH)
    return _train_regressor_job(
        "size_agnostic", sec, models.RegressorConfig.size_agnostic_paper(**overrides),
        tiling_xy(split_rows(tilings, "train")), tiling_xy(split_rows(tilings, "val")), C.TILINGS_PATH,
        [C.TILINGS_PATH])


def train_cvae(params: dict) -> dict:
    """CVAE with the frozen forward model in its loss; the reconstruction network is the generator."""
    from deepdram import models, tracking

    sec, overrides = _model_overrides(params, "train_cvae")
    cfg = models.CVAEConfig.paper(**overrides)
    limit = sec.get("max_train_rows")
    x_tr, y_tr = subsample(*cell_xy(_split("train")), limit, cfg.seed)
    x_va, y_va = cell_xy(_split("val"))
    with _start_run("cvae", "train_cvae") as run:
        _log_common("cvae", cfg.to_dict(), {"max_train_rows": limit, "train_rows": len(x_tr),
                                            "val_rows": len(x_va), "forward_model": "outputs/models/forward.keras"},
                    C.SPLITS_DIR / "test.parquet", [C.SPLITS_DIR / "train.parquet", C.SPLITS_DIR / "val.parquet"])
        parts, hist = models.train_cvae(x_tr, y_tr, x_va, y_va, MODELS_DIR / "forward.keras", cfg,
                                        callbacks=[tracking.EpochLogger(run.info.run_id),
                                                   epoch_progress("train_cvae", cfg.epochs)])
        path = models.save_model(parts.generator, MODELS_DIR / "generator.keras")
        models.save_model(parts.encoder, MODELS_DIR / "encoder.keras")
        last = {f"val_{k}": float(v[-1]) for k, v in hist.items() if k.startswith("val_")}
        return _finish_training("cvae", run, path, hist, last, {"epochs_run": len(hist["loss"])})


def _promote_params(params: dict) -> tuple[float, bool]:
    sec = P.section(params, "promote")
    tol = P.get(sec, "tolerance", "promote")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
        raise P.InputError(f"params.yaml: 'promote.tolerance' must be a number >= 0; got {tol!r}")
    return float(tol), bool(sec.get("force", False))


def _reevaluator(kind: str, params: dict):
    """Scores a registered version of `kind` on the current test split (for `registry.promote`)."""

    def score(version) -> float:
        from deepdram import registry
        from deepdram.evaluation import promotion_value

        print(f"{version.name}: re-evaluating {registry.CHAMPION} version {version.version} on the current test split")
        return promotion_value(kind, registry.keras_model(version.name, version.version), params)

    return score


def promote(params: dict) -> dict:
    """Move `champion` to each challenger whose test metric is at least as good (within tolerance)."""
    from deepdram import registry
    from deepdram.io import write_json

    tol, force = _promote_params(params)
    out = {}
    for kind, name in REGISTERED.items():
        if registry.alias_version(name, registry.CHALLENGER) is None:
            # Already decided (e.g. only the evaluation reran): nothing new to promote.
            champion = registry.alias_version(name, registry.CHAMPION)
            decision = {"model": name, "decision": "unchanged", "champion_after": champion,
                        "reason": f"no {registry.CHALLENGER}: {registry.CHAMPION} stays at version {champion}"}
            print(f"{name}: {decision['reason']}")
        else:
            decision = registry.promote(name, metric=PROMOTION_METRIC[kind], tolerance=tol, force=force,
                                        reevaluate=_reevaluator(kind, params))
            print(registry.format_decision(decision))
        out[kind] = decision
    write_json(out, EVAL_DIR / "promotion.json")
    return {f"{k}_promoted": v.get("decision") == "promoted" for k, v in out.items()}
