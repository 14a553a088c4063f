"""Stage `composite_train`: the composite predictor (32 cells -> toughness; the seed's 6 x 64 MLP, or
the study's best) on the largest training group, tested on the held-out set, tracked in MLflow,
registered as `deepdram-composite-predictor` (challenger) and promoted to champion when its test
R2 is at least the champion's (a champion tested on another test set is scored again on this one)."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("composite", "composite_train")


def model_config(section, best_path):
    """The predictor's RegressorConfig: the seed's 6 x 64 (`source: paper`) or the study's best
    (`source: tuned`), under the section's `model:` overrides."""
    from deepdram.errors import InputError
    from deepdram.jobs.composite_common import predictor_config

    overrides = dict(section.model)
    if section.source == "tuned":
        import yaml

        if not best_path.is_file():
            raise InputError(f"params.yaml: 'composite_train.source' is 'tuned' but {best_path} does not exist "
                             "(run composite_tune, or set source: paper)")
        overrides = {**(yaml.safe_load(best_path.read_text()) or {}).get("model", {}), **overrides}
    return predictor_config(**overrides)


def reevaluator(space, test_path):
    """Scores a registered version on the current test set (test R2), for `registry.promote`."""

    def score(version) -> float:
        from deepdram.jobs.composite_common import read, xy
        from deepdram.learn.metrics import r2_overall
        from deepdram.learn.models import predict
        from deepdram.mlops import registry

        print(f"{version.name}: re-evaluating champion version {version.version} on the current test set")
        x, y = xy(space, read(test_path))
        return r2_overall(y, predict(registry.keras_model(version.name, version.version), x))

    return score


def job(params) -> dict:
    import numpy as np

    from deepdram.data.atomic import write_json
    from deepdram.jobs.composite_common import BEST_PATH, COMPOSITE_DIR, GROUPS_PATH, MODEL_PATH, TEST_PATH, read, space_of, xy
    from deepdram.jobs.training_common import finish_training, log_common, start_run
    from deepdram.learn import models
    from deepdram.learn.metrics import flat_metrics, regression_table
    from deepdram.learn.training import epoch_progress
    from deepdram.mlops import registry, tracking
    from deepdram.mlops.catalogue import COMPOSITE_PREDICTOR as M

    sec = params.composite_train
    space = space_of(params.composite)
    cfg = model_config(sec, BEST_PATH)
    x, y = xy(space, read(GROUPS_PATH))
    x_te, y_te = xy(space, read(TEST_PATH))
    rng = np.random.default_rng(cfg.seed)
    val = np.zeros(len(x), bool)
    val[rng.permutation(len(x))[: max(1, int(round(sec.val_fraction * len(x))))]] = True
    with start_run(M, "composite_train") as run_:
        log_common(M, cfg.to_dict(), {"source": sec.source, "train_rows": int((~val).sum()), "val_rows": int(val.sum()),
                                      "test_rows": len(x_te), "composite": params.composite.model_dump()},
                   TEST_PATH, [GROUPS_PATH])
        trained, hist = models.train_regressor(x[~val], y[~val], x[val], y[val], cfg, space=space,
                                               callbacks=[tracking.EpochLogger(run_.info.run_id),
                                                          epoch_progress("composite_train", cfg.epochs)])
        path = models.save_model(trained, MODEL_PATH)
        metrics = {**flat_metrics(regression_table(y[val], models.predict(trained, x[val]), space.properties), "val"),
                   **flat_metrics(regression_table(y_te, models.predict(trained, x_te), space.properties), "test")}
        record = finish_training(M, run_, path, hist, metrics, {"epochs_run": len(hist["loss"])}, space.name)
    decision = registry.promote(M.name, metric=M.metric, tolerance=sec.tolerance, force=sec.force,
                                reevaluate=reevaluator(space, TEST_PATH))
    print(registry.format_decision(decision))
    write_json(decision, COMPOSITE_DIR / "promotion.json")
    print(f"composite predictor {cfg.hidden_layers} x {cfg.first_width}: test R2 {metrics['test_r2_overall']:.4f}, "
          f"test MSE {metrics['test_mse_overall']:.4g} ({len(x_te)} designs); version {record['version']} "
          f"{decision['decision']}")
    return {"rows": int((~val).sum()), "version": record["version"], "decision": decision["decision"],
            "hidden_layers": cfg.hidden_layers, "first_width": cfg.first_width,
            **{k: v for k, v in metrics.items() if k.endswith("_overall")}}


def main() -> int:
    return run("composite_train", job)
