"""Where the project lives and where the pipeline writes: the one place paths are defined.

Only `deepdram.jobs`, `deepdram.cli` and the MLflow store configuration read these; library code
takes paths as arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def find_root(start: Path | None = None) -> Path:
    """The project root: $DEEPDRAM_ROOT, else the nearest folder upwards holding dvc.yaml."""
    if os.environ.get("DEEPDRAM_ROOT"):
        return Path(os.environ["DEEPDRAM_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return PACKAGE_DIR.parent


REPO_ROOT = find_root()
PARAMS_PATH = REPO_ROOT / "params.yaml"
DATA_DIR = REPO_ROOT / "data"
REQUESTS_DIR = DATA_DIR / "requests"
PAPER_TABLES_PATH = DATA_DIR / "reference" / "paper_tables.yaml"
OUTPUTS_DIR = REPO_ROOT / "outputs"
MLRUNS_DIR = REPO_ROOT / "mlruns"
METRICS_DIR = OUTPUTS_DIR / "metrics"
SCRATCH_DIR = OUTPUTS_DIR / ".scratch"  # resumable shard work, not a DVC output

# --- Pipeline outputs (fixed paths that later stages and tools read) -------------------------
DATASETS_DIR = OUTPUTS_DIR / "datasets"
CELLS_PATH = DATASETS_DIR / "cells.parquet"
CELLS_RESAMPLED_PATH = DATASETS_DIR / "cells_resampled.parquet"
SPLITS_DIR = DATASETS_DIR / "splits"
TILINGS_PATH = DATASETS_DIR / "tilings.parquet"
VALIDATION_DIR = OUTPUTS_DIR / "validation"
REPORTS_DIR = OUTPUTS_DIR / "reports"
TRAINING_REPORTS_DIR = REPORTS_DIR / "training"
MODELS_DIR = OUTPUTS_DIR / "models"
EVALUATION_DIR = OUTPUTS_DIR / "evaluation"
TUNING_DIR = OUTPUTS_DIR / "tuning"
DESIGNS_DIR = OUTPUTS_DIR / "designs"
