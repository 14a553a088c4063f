"""Stage `validate_tilings`: the tilings' Great Expectations suite (cells' rules plus size rules)."""

from __future__ import annotations

from deepdram.jobs.runner import read_table, run

SECTIONS = ()


def job(params) -> dict:
    from deepdram.data.validation import validate
    from deepdram.paths import TILINGS_PATH, VALIDATION_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    return validate(read_table(TILINGS_PATH), LatticeSpace(), "tilings", VALIDATION_DIR, name="tilings")


def main() -> int:
    return run("validate_tilings", job)
