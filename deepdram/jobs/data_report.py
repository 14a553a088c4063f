"""Stage `data_report`: property envelopes, nu histograms, size evolution, Table 2 next to the paper."""

from __future__ import annotations

from deepdram.jobs.runner import read_table, run

SECTIONS = ("data_report",)


def job(params) -> dict:
    import yaml

    from deepdram.paths import CELLS_PATH, PAPER_TABLES_PATH, REPORTS_DIR, TILINGS_PATH
    from deepdram.spaces.lattice.report import build_data_report

    paper = yaml.safe_load(PAPER_TABLES_PATH.read_text())
    return build_data_report(read_table(CELLS_PATH), read_table(TILINGS_PATH), REPORTS_DIR / "data", paper,
                             seed=params.data_report.seed)


def main() -> int:
    return run("data_report", job)
