"""Stage `resample`: the paper's undersampling (or oversampling, or none) and a key-disjoint split."""

from __future__ import annotations

from deepdram.jobs.runner import read_table, run

SECTIONS = ("resample",)


def job(params) -> dict:
    from deepdram.data.datasets import write_resampled
    from deepdram.paths import CELLS_PATH, CELLS_RESAMPLED_PATH, SPLITS_DIR
    from deepdram.spaces.lattice.datasets import resample, zg_counts

    cells = read_table(CELLS_PATH)
    out = resample(cells, params.resample)
    return write_resampled(out, CELLS_RESAMPLED_PATH, SPLITS_DIR) | zg_counts(out) | {
        "rows_in": len(cells), "method": params.resample.method}


def main() -> int:
    return run("resample", job)
