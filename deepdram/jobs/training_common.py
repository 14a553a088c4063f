"""What the three training stages share: the tuned configuration, the MLflow run, and the record
of a trained model (metrics, curves, validating pyfunc, registered `challenger`).

Faults: before a run starts, the runs of this model's experiment left RUNNING by a killed process
are marked FAILED and aliases left on unsound versions are removed (`runner.fail_dead_runs`,
`registry.repair_aliases`). The run ends (FINISHED) once its model is logged whole, and only then
is the model registered, so a `challenger` always points at a finished run's complete model."""

from __future__ import annotations

from pathlib import Path

from deepdram.errors import InputError
from deepdram.mlops.catalogue import RegisteredModel


def model_overrides(section, stage: str) -> dict:
    """The model config fields: the tuned ones (`source: tuned`) under the section's `model:` overrides."""
    overrides = dict(section.model)
    if section.source == "tuned":
        import yaml

        from deepdram.paths import TUNING_DIR

        best = TUNING_DIR / f"{stage.removeprefix('train_')}_best.yaml"
        if not best.is_file():
            raise InputError(f"params.yaml: '{stage}.source' is 'tuned' but {best} does not exist "
                             "(run the tuning stage, or set source: paper)")
        overrides = {**(yaml.safe_load(best.read_text()) or {}).get("model", {}), **overrides}
    return overrides


def start_run(model: RegisteredModel, run_name: str):
    """An MLflow run in the model's experiment, in the project store, tagged with its process.

    First repairs what a killed earlier run left: its RUNNING runs become FAILED, and an alias on a
    version whose run failed or whose artifacts are incomplete is removed."""
    import mlflow

    from deepdram.jobs.runner import OWNER_TAG, fail_dead_runs, owner
    from deepdram.mlops import registry, tracking

    tracking.configure()
    exp = tracking.experiment(model.experiment)
    fail_dead_runs(exp, run_name)
    registry.repair_aliases(model.name)
    return mlflow.start_run(experiment_id=exp, run_name=run_name, tags={OWNER_TAG: owner()})


def log_common(model: RegisteredModel, cfg_dict: dict, data_info: dict, test_set: Path, datasets: list[Path]) -> None:
    """Flat params (model config and data facts) and the run context tags (git, DVC hashes, test set)."""
    from deepdram.mlops import tracking

    tracking.log_params_flat({"model": cfg_dict, "data": data_info})
    tracking.log_tags({**tracking.run_context(*datasets, test_set=test_set), "deepdram.kind": model.key})


def finish_training(model: RegisteredModel, run, model_path: Path, history: dict, val_metrics: dict,
                    info: dict, space: str = "lattice") -> dict:
    """Log metrics, curves and the pyfunc model, end the run, register a challenger, write
    outputs/models/<key>.json. Called inside the run (`start_run`), which it ends."""
    import mlflow
    from mlflow.entities import Metric

    from deepdram.data.atomic import pause_point, write_json, write_text
    from deepdram.learn.training import history_frame, plot_history
    from deepdram.mlops import pyfuncs, registry, tracking
    from deepdram.paths import MODELS_DIR, TRAINING_REPORTS_DIR

    hist = history_frame(history)
    hist_path = TRAINING_REPORTS_DIR / f"{model.key}_history.csv"
    write_text(hist_path, hist.to_csv(index=False))
    png = TRAINING_REPORTS_DIR / f"{model.key}_loss.png"
    plot_history(hist, png, f"{model.key}: training curves")
    tracking.client().log_batch(run.info.run_id,
                                metrics=[Metric(k, float(v), 0, 0) for k, v in val_metrics.items()])
    mlflow.log_artifact(str(hist_path), "training")
    mlflow.log_artifact(str(png), "training")
    pyfuncs.log_model(model.kind, model_path, name="model", space=space)
    pause_point(f"train_{model.key}:logged")
    # The run is whole: end it before registering, so no version is ever made from an unfinished run.
    mlflow.end_run("FINISHED")
    version = registry.register(run.info.run_id, model.name)
    record = {"run_id": run.info.run_id, "registered_model": model.name, "version": version, **val_metrics, **info}
    write_json(record, MODELS_DIR / f"{model.key}.json")
    return record


def train_regressor_job(model: RegisteredModel, section, cfg, space, train: tuple, val: tuple, test_set: Path,
                        datasets: list[Path]) -> dict:
    """Shared job of the two regressors: subsample, augment, train, save, log, register."""
    from deepdram.learn import models
    from deepdram.learn.metrics import flat_metrics, regression_table
    from deepdram.learn.training import augment_symmetries, epoch_progress, subsample
    from deepdram.mlops import tracking
    from deepdram.paths import MODELS_DIR

    limit = section.max_train_rows
    x_tr, y_tr = subsample(*train, limit, cfg.seed)
    x_va, y_va = val
    x_tr, y_tr = augment_symmetries(space, x_tr, y_tr, section.augment)
    with start_run(model, f"train_{model.key}") as run:
        log_common(model, cfg.to_dict(), {"augment": section.augment, "max_train_rows": limit,
                                          "train_rows": len(x_tr), "val_rows": len(x_va)}, test_set, datasets)
        trained, hist = models.train_regressor(x_tr, y_tr, x_va, y_va, cfg, space=space,
                                               callbacks=[tracking.EpochLogger(run.info.run_id),
                                                          epoch_progress(f"train_{model.key}", cfg.epochs)])
        path = models.save_model(trained, MODELS_DIR / f"{model.key}.keras")
        table = regression_table(y_va, models.predict(trained, x_va), space.properties, space.table_order)
        return finish_training(model, run, path, hist, flat_metrics(table, "val"),
                               {"epochs_run": len(hist["loss"])}, space.name)
