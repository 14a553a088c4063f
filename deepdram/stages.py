"""DVC stage dispatch: read params, call the library job of a stage, write its timing metrics.

`pipelines/<stage>.py` calls `main("<stage>")`. This module holds no stage logic (each function
only wires paths and params to a library job), so dvc.yaml does not list it as a dependency and
editing it reruns nothing. Parameters are checked before any work starts; a DeepdramError ends
the stage with one clear line and exit code 2.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable

from deepdram import constants as C
from deepdram.errors import DeepdramError

METRICS_DIR = C.OUTPUTS_DIR / "metrics"


def _read(path):
    import pandas as pd

    if not path.exists():
        raise DeepdramError(f"{path.relative_to(C.REPO_ROOT)} is missing: run the upstream stage first")
    return pd.read_parquet(path)


def _metrics(name: str, values: dict) -> None:
    from deepdram.io import write_json

    write_json(values, METRICS_DIR / f"{name}.json")


def cells(params: dict) -> dict:
    """Sample and simulate unit cells on Dask (resumable shards)."""
    from deepdram.datasets import build_cells, cells_config
    from deepdram.shards import dask_client

    cfg = cells_config(params)
    with dask_client(params.get("dask")) as client:
        return build_cells(cfg, C.CELLS_PATH, C.SCRATCH_DIR / "cells", client)


def validate_cells(params: dict) -> dict:
    """Great Expectations suite on the simulated cells."""
    from deepdram.validation import validate_cells as run

    return run(_read(C.CELLS_PATH), C.VALIDATION_DIR, name="cells")


def resample(params: dict) -> dict:
    """Under/over-sampling and the key-disjoint train/val/test split."""
    from deepdram.datasets import resample as run
    from deepdram.datasets import resample_config, write_resampled

    cfg = resample_config(params)
    cells = _read(C.CELLS_PATH)
    return write_resampled(run(cells, cfg), C.CELLS_RESAMPLED_PATH, C.SPLITS_DIR) | {
        "rows_in": len(cells), "method": cfg.method}


def tilings(params: dict) -> dict:
    """Simulate tilings of resampled cells on Dask (resumable shards)."""
    from deepdram.datasets import build_tilings, tilings_config
    from deepdram.shards import dask_client

    cfg = tilings_config(params)
    cells = _read(C.CELLS_RESAMPLED_PATH)
    with dask_client(params.get("dask")) as client:
        return build_tilings(cells, cfg, C.TILINGS_PATH, C.SCRATCH_DIR / "tilings", client)


def validate_tilings(params: dict) -> dict:
    """Great Expectations suite on the simulated tilings."""
    from deepdram.validation import validate_tilings as run

    return run(_read(C.TILINGS_PATH), C.VALIDATION_DIR, name="tilings")


def data_report(params: dict) -> dict:
    """Plots and the Table 2 comparison of the datasets."""
    import yaml

    from deepdram import params as P
    from deepdram.report import build_data_report

    sec = P.section(params, "data_report")
    seed = P.seed(sec, "seed", "data_report")
    paper = yaml.safe_load(C.PAPER_TABLES_PATH.read_text())
    return build_data_report(_read(C.CELLS_PATH), _read(C.TILINGS_PATH), C.REPORTS_DIR / "data", paper,
                             seed=seed)


def _tune(params: dict, model: str) -> dict:
    from deepdram.tuning import run_stage

    return run_stage(params, model)


def tune_forward(params: dict) -> dict:
    """Hyperparameter study of the forward model (Optuna/Keras-Tuner, trials in MLflow)."""
    return _tune(params, "forward")


def tune_size_agnostic(params: dict) -> dict:
    """Hyperparameter study of the size-agnostic model."""
    return _tune(params, "size_agnostic")


def tune_cvae(params: dict) -> dict:
    """Hyperparameter study of the CVAE (needs the trained forward model)."""
    return _tune(params, "cvae")


def train_forward(params: dict) -> dict:
    """Unit-cell forward model (MLflow run + registered challenger)."""
    from deepdram.training import train_forward as run

    return run(params)


def train_size_agnostic(params: dict) -> dict:
    """Size-agnostic model (MLflow run + registered challenger)."""
    from deepdram.training import train_size_agnostic as run

    return run(params)


def train_cvae(params: dict) -> dict:
    """CVAE; its reconstruction network is registered as the generator."""
    from deepdram.training import train_cvae as run

    return run(params)


def evaluate(params: dict) -> dict:
    """Test-split metrics of all models, next to the paper, logged to their runs."""
    from deepdram.evaluation import evaluate as run

    return run(params)


def promote(params: dict) -> dict:
    """Gated promotion of each challenger to champion."""
    from deepdram.training import promote as run

    return run(params)


def design(params: dict) -> dict:
    """Inverse design of the shipped requests, the sweep subset, exports; registers deepdram-designer."""
    from deepdram.design import run_stage

    return run_stage(params, C.DATA_DIR / "requests", C.OUTPUTS_DIR / "designs")


STAGES: dict[str, Callable[[dict], dict]] = {
    "cells": cells,
    "validate_cells": validate_cells,
    "resample": resample,
    "tilings": tilings,
    "validate_tilings": validate_tilings,
    "data_report": data_report,
    "tune_forward": tune_forward,
    "tune_size_agnostic": tune_size_agnostic,
    "tune_cvae": tune_cvae,
    "train_forward": train_forward,
    "train_size_agnostic": train_size_agnostic,
    "train_cvae": train_cvae,
    "evaluate": evaluate,
    "promote": promote,
    "design": design,
}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(stage: str, argv: list[str] | None = None) -> int:
    """Run one stage with the repo's params.yaml; print its wall time; exit 2 on a DeepdramError."""
    from deepdram.params import load_params

    t0 = time.perf_counter()
    # `kill` (SIGTERM, e.g. a cancelled job) unwinds like Ctrl-C, so open MLflow runs end FAILED
    # instead of staying RUNNING and no temporary output is left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        params = load_params()
        info = STAGES[stage](params) or {}
    except DeepdramError as exc:
        print(f"deepdram stage {stage}: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    _metrics(stage, {**{k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))},
                     "seconds": round(seconds, 2)})
    rows = info.get("rows")
    print(f"stage {stage}: done in {seconds:.1f} s" + (f", {rows:,} rows" if isinstance(rows, int) else ""))
    return 0
