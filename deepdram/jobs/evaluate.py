"""Stage `evaluate`: all three models on the held-out test split, next to the paper; the metrics go
to DVC and to each model's training run in MLflow."""

from __future__ import annotations

import json

from deepdram.jobs.runner import run

SECTIONS = ("evaluate",)


def log_to_run(key: str, metrics: dict, artifacts: list) -> None:
    """Metrics and artifacts onto the MLflow run that trained outputs/models/<key>.keras."""
    import mlflow
    import numpy as np
    from mlflow.entities import Metric

    from deepdram.mlops import tracking
    from deepdram.paths import MODELS_DIR

    record = json.loads((MODELS_DIR / f"{key}.json").read_text())
    tracking.configure()
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    tracking.client().log_batch(record["run_id"], metrics=[Metric(k, v, 0, 0) for k, v in finite.items()])
    with mlflow.start_run(run_id=record["run_id"]):
        for a in artifacts:
            mlflow.log_artifact(str(a), "evaluation")


def job(params) -> dict:
    import yaml

    from deepdram.data.atomic import write_json
    from deepdram.data.splits import split_rows
    from deepdram.jobs.runner import read_table
    from deepdram.learn.evaluation import generator_report, paper_table, regressor_report
    from deepdram.learn.models import load_model
    from deepdram.learn.training import xy
    from deepdram.paths import EVALUATION_DIR, MODELS_DIR, PAPER_TABLES_PATH, SPLITS_DIR, TILINGS_PATH
    from deepdram.spaces.lattice.space import LatticeSpace

    sec = params.evaluate
    space = LatticeSpace()
    paper = yaml.safe_load(PAPER_TABLES_PATH.read_text()) if PAPER_TABLES_PATH.is_file() else None
    x, y = xy(space, read_table(SPLITS_DIR / "test.parquet"))
    xt, yt = xy(space, split_rows(read_table(TILINGS_PATH), "test"), conditions=True)
    metrics = {}
    for key, xx, yy, table, title in (("forward", x, y, "table6_forward", "Forward model"),
                                      ("size_agnostic", xt, yt, "table12_size_agnostic", "Size-agnostic model")):
        m, files = regressor_report(space, load_model(MODELS_DIR / f"{key}.keras", space), xx, yy, paper_table(paper, table),
                                    EVALUATION_DIR / key, title)
        log_to_run(key, m, files)
        metrics.update({f"{key}.{k}": v for k, v in m.items()})
    m, files = generator_report(space, load_model(MODELS_DIR / "generator.keras", space),
                                load_model(MODELS_DIR / "encoder.keras", space), load_model(MODELS_DIR / "forward.keras", space),
                                x, y, k=sec.generator_k, n_targets=sec.generator_targets,
                                tsne_points=sec.tsne_points, seed=sec.seed, out_dir=EVALUATION_DIR / "cvae",
                                paper_tables=paper)
    log_to_run("cvae", m, sorted(set(files)))
    metrics.update({f"cvae.{k}": v for k, v in m.items()})
    write_json(metrics, EVALUATION_DIR / "metrics.json")
    return metrics


def main() -> int:
    return run("evaluate", job)
