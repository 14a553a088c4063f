"""Stage `validate_cells`: the lattice cells' Great Expectations suite."""

from __future__ import annotations

from deepdram.jobs.runner import read_table, run

SECTIONS = ()


def job(params) -> dict:
    from deepdram.data.validation import validate
    from deepdram.paths import CELLS_PATH, VALIDATION_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    return validate(read_table(CELLS_PATH), LatticeSpace(), "cells", VALIDATION_DIR, name="cells")


def main() -> int:
    return run("validate_cells", job)
