"""Stage `tilings`: D1 x D2 tilings of resampled cells, solved on Dask; each keeps its cell's split."""

from __future__ import annotations

from deepdram.jobs.runner import read_table, run

SECTIONS = ("tilings", "dask")


def job(params) -> dict:
    from deepdram.data.shards import dask_client
    from deepdram.paths import CELLS_RESAMPLED_PATH, SCRATCH_DIR, TILINGS_PATH
    from deepdram.spaces.lattice.datasets import build_tilings

    cells = read_table(CELLS_RESAMPLED_PATH)
    with dask_client(params.dask) as client:
        return build_tilings(cells, params.tilings, TILINGS_PATH, SCRATCH_DIR / "tilings", client)


def main() -> int:
    return run("tilings", job)
