"""What the composite stages share: their paths, the system of the `composite` section, the seed's
predictor and the training tables (helpers take sections, never the whole params)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepdram.paths import MODELS_DIR, OUTPUTS_DIR

COMPOSITE_DIR = OUTPUTS_DIR / "composite"
BRUTE_FORCE_DIR = COMPOSITE_DIR / "brute_force"
TOP100_PATH = BRUTE_FORCE_DIR / "top100.parquet"
BRUTE_SUMMARY_PATH = BRUTE_FORCE_DIR / "summary.json"
DATA_DIR = COMPOSITE_DIR / "data"
GROUPS_PATH = DATA_DIR / "groups.parquet"
TEST_PATH = DATA_DIR / "test.parquet"
VALIDATION_DIR = COMPOSITE_DIR / "validation"
TUNING_DIR = COMPOSITE_DIR / "tuning"
BEST_PATH = TUNING_DIR / "forward_best.yaml"  # the study's best configuration (written by learn.search)
DESIGN_DIR = COMPOSITE_DIR / "design"
MODEL_PATH = MODELS_DIR / "composite_predictor.keras"
STAGES = ("composite_brute_force", "composite_data", "composite_tune", "composite_train", "composite_design")

# The seed's predictor for the 8 x 8 composite: six fully connected hidden layers of 64 (ReLU),
# a linear output; trained with Adam (the per-profile epochs and batch size come from params).
SEED_PREDICTOR = dict(hidden_layers=6, first_width=64, shape="rectangle", activation="relu",
                      output_activation="none", batch_norm=False, optimizer="adam", learning_rate=1e-3,
                      batch_size=32, epochs=300, scaling="minmax")


def space_of(section):
    """The CompositeSpace of the `composite` section (m, ratio)."""
    from deepdram.spaces.composite.space import CompositeSpace

    return CompositeSpace(section.m, section.ratio)


def soft_count(section) -> int:
    """The number of soft cells of the `composite` section's soft fraction."""
    from deepdram.spaces.composite.space import soft_count_of

    return soft_count_of(section.soft_fraction, "composite.soft_fraction")


def predictor_config(**overrides):
    """The seed's 6 x 64 predictor with overrides (a RegressorConfig)."""
    from deepdram.learn.configs import RegressorConfig

    return RegressorConfig(**{**SEED_PREDICTOR, **overrides})


def xy(space, df, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(designs as float32, toughness (N, 1)) of the first n rows of a composite table."""
    part = df if n is None else df.iloc[:n]
    return part[list(space.variables)].to_numpy(np.float32), part[list(space.properties)].to_numpy(np.float64)


def read(path: Path):
    """A composite table, or a clear error naming the missing upstream output."""
    from deepdram.jobs.runner import read_table

    return read_table(path)


def read_json(path: Path) -> dict:
    """A JSON file written by an upstream stage (clear error when missing)."""
    import json

    from deepdram.errors import DeepdramError

    if not path.is_file():
        raise DeepdramError(f"{path} is missing: run the upstream stage first")
    return json.loads(path.read_text())


def stage_times() -> dict[str, float]:
    """Wall seconds of the composite stages' last runs (outputs/metrics/<stage>.json)."""
    import json

    from deepdram.paths import METRICS_DIR

    out = {}
    for s in STAGES:
        f = METRICS_DIR / f"{s}.json"
        if f.is_file():
            try:
                out[s] = float(json.loads(f.read_text()).get("seconds", float("nan")))
            except (ValueError, TypeError):
                pass
    return out
