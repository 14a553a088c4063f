"""Physical, geometric and data constants: the one source of truth (SPEC sections 1-4 and 7)."""

from __future__ import annotations

import os
from pathlib import Path

# --- Unit cell geometry (SPEC section 1) ---------------------------------------------------
N_GRID = 4  # nodes per side of a unit cell
N_NODES = N_GRID * N_GRID
SPACING = 7.5  # mm, node spacing dx = dy
CELL_SIZE = SPACING * (N_GRID - 1)  # mm, node span W = L of one cell (22.5)
N_BEAMS = 42
ZG_VALUES = (2.5, 3.0, 3.5, 4.0, 4.5)
# Measured acceptance rate of uniform random beam subsets, per Z_g (SPEC section 1).
ACCEPTANCE_RATES = {2.5: 0.331, 3.0: 0.650, 3.5: 0.856, 4.0: 0.956, 4.5: 0.993}

# --- Beam section and material (SPEC section 2) --------------------------------------------
THICKNESS = 1.0  # mm, in-plane beam width t
DEPTH = 10.0  # mm, out-of-plane thickness T
AREA = DEPTH * THICKNESS
INERTIA = DEPTH * THICKNESS**3 / 12.0
E_B = 0.6  # MPa
NU_B = 0.3
G_B = E_B / (2.0 * (1.0 + NU_B))
K_S = 0.85

# --- Loading (SPEC section 3) ---------------------------------------------------------------
STRAIN = 0.05

# --- Tilings (SPEC section 4) ---------------------------------------------------------------
D_MIN, D_MAX = 2, 20
TILING_SIZES = tuple(range(D_MIN, D_MAX + 1, 2))

# --- Data conventions (SPEC section 7) -------------------------------------------------------
BIT_COLUMNS = tuple(f"b{k:02d}" for k in range(N_BEAMS))
PROPERTY_COLUMNS = ("E11", "E22", "nu12", "nu21")
SIZE_COLUMNS = ("d1", "d2")
STRESS_COLUMNS = ("vm1", "vm2")

# --- Project paths ----------------------------------------------------------------------------
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
DATA_DIR = REPO_ROOT / "data"
OUTPUTS_DIR = REPO_ROOT / "outputs"
MLRUNS_DIR = REPO_ROOT / "mlruns"

# --- Pipeline outputs (fixed paths that later stages and tools read) -------------------------
DATASETS_DIR = OUTPUTS_DIR / "datasets"
CELLS_PATH = DATASETS_DIR / "cells.parquet"
CELLS_RESAMPLED_PATH = DATASETS_DIR / "cells_resampled.parquet"
SPLITS_DIR = DATASETS_DIR / "splits"
SPLIT_NAMES = ("train", "val", "test")
TILINGS_PATH = DATASETS_DIR / "tilings.parquet"
VALIDATION_DIR = OUTPUTS_DIR / "validation"
REPORTS_DIR = OUTPUTS_DIR / "reports"
SCRATCH_DIR = OUTPUTS_DIR / ".scratch"  # resumable shard work, not a DVC output
PAPER_TABLES_PATH = DATA_DIR / "reference" / "paper_tables.yaml"

# Physical bounds the validation suites enforce on FE properties.
E_RANGE = (0.0, 0.3)
NU_RANGE = (-3.0, 3.0)
