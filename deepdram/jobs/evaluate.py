"""Stage `evaluate`: the three models on the held-out test split and on a fresh set no stage has
seen, next to the paper; the metrics go to DVC and to each model's training run in MLflow.

The fresh set: `fresh_per_zg` uniform valid unit cells per Z_g and `fresh_tilings` tilings at
uniformly random sizes, drawn here from `fresh_seed` (a seed the cells stage does not use),
excluding every design key of cells.parquet, FE-labelled on the spot. The generator is scored by
best-of-K under the paper's selection (unweighted MSE of the forward model's properties) and
under the scaled one (each property's squared error over its train-split variance, the design
stage's objective), both FE-verified, with the moduli's and the Poisson's ratios' R2 apart.
outputs/metrics/headline.json holds the figures the model-quality targets are about.
"""

from __future__ import annotations

import json

import numpy as np

from deepdram.jobs.runner import run

SECTIONS = ("evaluate",)


def log_to_run(key: str, metrics: dict, artifacts: list) -> None:
    """Metrics and artifacts onto the MLflow run that trained outputs/models/<key>.keras."""
    import mlflow
    from mlflow.entities import Metric

    from deepdram.mlops import tracking
    from deepdram.paths import MODELS_DIR

    record = json.loads((MODELS_DIR / f"{key}.json").read_text())
    tracking.configure()
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    items = [Metric(k, v, 0, 0) for k, v in finite.items()]
    for i in range(0, len(items), 1000):
        tracking.client().log_batch(record["run_id"], metrics=items[i: i + 1000])
    with mlflow.start_run(run_id=record["run_id"]):
        for a in artifacts:
            mlflow.log_artifact(str(a), "evaluation")


# The model-quality table's figures, for `dvc metrics show` (short names: they are its columns);
# the paper's selection rule and everything else are in outputs/evaluation/metrics.json.
HEADLINE = {  # headline key -> (model, metric key without its set prefix)
    "fwd_r2": ("forward", "r2_overall"),
    "sa_r2": ("size_agnostic", "r2_overall"),
    "gen_r2": ("cvae", "gen_best_r2_overall"),
    "gen_fe_r2": ("cvae", "gen_scaled_best_fe_r2_overall"),
    "gen_fe_E_r2": ("cvae", "gen_scaled_best_fe_r2_E"),
    "gen_fe_nu_r2": ("cvae", "gen_scaled_best_fe_r2_nu"),
}


def job(params) -> dict:
    import yaml

    from deepdram.data.atomic import write_json
    from deepdram.data.splits import split_rows
    from deepdram.data.tables import write_table
    from deepdram.jobs.runner import read_table
    from deepdram.learn.evaluation import by_group, generator_report, paper_table, regressor_report
    from deepdram.learn.evaluation import write_table as write_report
    from deepdram.learn.models import load_model, predict
    from deepdram.learn.training import xy
    from deepdram.paths import (CELLS_PATH, EVALUATION_DIR, METRICS_DIR, MODELS_DIR, PAPER_TABLES_PATH,
                                SPLITS_DIR, TILINGS_PATH)
    from deepdram.spaces.lattice.constants import TILING_SIZES, ZG_VALUES
    from deepdram.spaces.lattice.datasets import dataset_keys, fresh_cells, fresh_tilings
    from deepdram.spaces.lattice.space import LatticeSpace

    sec = params.evaluate
    space = LatticeSpace()
    paper = yaml.safe_load(PAPER_TABLES_PATH.read_text()) if PAPER_TABLES_PATH.is_file() else None
    test_cells = read_table(SPLITS_DIR / "test.parquet")
    tilings = read_table(TILINGS_PATH)
    test_tilings = split_rows(tilings, "test")
    variances = np.var(read_table(SPLITS_DIR / "train.parquet")[list(space.properties)].to_numpy(), axis=0)
    known = dataset_keys(CELLS_PATH)
    fresh = {"cells": fresh_cells(ZG_VALUES, sec.fresh_per_zg, sec.fresh_seed, known),
             "tilings": fresh_tilings(ZG_VALUES, sec.fresh_tilings, TILING_SIZES, sec.fresh_seed, known)}
    for name, df in fresh.items():
        write_table(df, EVALUATION_DIR / "fresh" / f"{name}.parquet")
    models = {k: load_model(MODELS_DIR / f"{k}.keras", space) for k in ("forward", "size_agnostic", "generator",
                                                                        "encoder")}
    metrics, per_model = {}, {"forward": {}, "size_agnostic": {}, "cvae": {}}
    files = {"forward": [], "size_agnostic": [], "cvae": []}
    for prefix, cells, tils in (("test", test_cells, test_tilings), ("fresh", fresh["cells"], fresh["tilings"])):
        x, y = xy(space, cells)
        xt, yt = xy(space, tils, conditions=True)
        for key, xx, yy, table, title, group in (
                ("forward", x, y, "table6_forward", "Forward model", cells["zg"].to_numpy()),
                ("size_agnostic", xt, yt, "table12_size_agnostic", "Size-agnostic model", tils["zg"].to_numpy())):
            out = EVALUATION_DIR / key / ("" if prefix == "test" else "fresh")
            m, f = regressor_report(space, models[key], xx, yy, paper_table(paper, table), out,
                                    f"{title} ({prefix} set)")
            m = {k.replace("test_", f"{prefix}_", 1): v for k, v in m.items()}
            pred = predict(models[key], xx)
            f += write_report(by_group(space, yy, pred, group, "zg"), out / "by_zg", f"{title}: R2 per Z_g ({prefix})")
            if key == "size_agnostic":
                size = np.char.add(np.char.add(tils["d1"].astype(str).to_numpy(), "x"), tils["d2"].astype(str).to_numpy())
                f += write_report(by_group(space, yy, pred, size, "size"), out / "by_size",
                                  f"{title}: R2 per tiling size ({prefix})")
            per_model[key].update(m)
            files[key] += f
        out = EVALUATION_DIR / "cvae" / ("" if prefix == "test" else "fresh")
        m, f = generator_report(space, models["generator"], models["encoder"], models["forward"], x, y,
                                k=sec.generator_k, n_targets=sec.generator_targets, tsne_points=sec.tsne_points,
                                seed=sec.seed, out_dir=out, paper_tables=paper, variances=variances, prefix=prefix)
        per_model["cvae"].update(m)
        files["cvae"] += f
    for key in per_model:
        log_to_run(key, per_model[key], sorted(set(files[key])))
        metrics.update({f"{key}.{k}": v for k, v in per_model[key].items()})
    write_json(metrics, EVALUATION_DIR / "metrics.json")
    headline = {f"{prefix}.{name}": round(float(per_model[model][f"{prefix}_{key}"]), 5)
                for prefix in ("test", "fresh") for name, (model, key) in HEADLINE.items()
                if f"{prefix}_{key}" in per_model[model]}
    write_json(headline, METRICS_DIR / "headline.json")
    print("\nheadline (test / fresh):\n" + "\n".join(f"  {k}: {v}" for k, v in headline.items()))
    return {"fresh_cells": len(fresh["cells"]), "fresh_tilings": len(fresh["tilings"])}


def main() -> int:
    return run("evaluate", job)
