"""Stage `cells`: sample Z_g-balanced random lattice designs and solve both load cases, on Dask."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("cells", "dask")


def job(params) -> dict:
    from deepdram.data.shards import dask_client
    from deepdram.paths import CELLS_PATH, SCRATCH_DIR
    from deepdram.spaces.lattice.datasets import build_cells

    with dask_client(params.dask) as client:
        return build_cells(params.cells, CELLS_PATH, SCRATCH_DIR / "cells", client)


def main() -> int:
    return run("cells", job)
