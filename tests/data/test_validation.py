"""Tests of deepdram.data.validation (Great Expectations suites; here the lattice space's cells and
tilings datasets, whose rules live in deepdram.spaces.lattice.rules).

Truth sources: clean frames built from real sampled designs and `fem.cell_properties`, written to
Parquet and read back (what the pipeline stores), and copies corrupted in one known row per rule;
each corruption must be reported by the named expectation with the bad row, in the exception
message, the Markdown report and the JSON result (success = false).
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pandas as pd
import pytest

from deepdram.data.splits import SPLIT_NAMES
from deepdram.data.validation import ValidationFailed, validate
from deepdram.errors import DeepdramError
from deepdram.spaces.lattice import fem, rules
from deepdram.spaces.lattice import geometry as lattice
from deepdram.spaces.lattice.constants import BIT_COLUMNS, PROPERTY_COLUMNS, ZG_VALUES
from deepdram.spaces.lattice.space import LatticeSpace

PER_ZG = 60  # 300 cells in all
BAD = 137  # the row the corruptions hit
SPACE = LatticeSpace()


def validate_cells(df: pd.DataFrame, out_dir, name: str = "cells", *, split: bool = False) -> dict:
    """The lattice cells suite (resampled cells with a split column when `split`)."""
    return validate(df, SPACE, "cells_split" if split else "cells", out_dir, name=name)


def validate_tilings(df: pd.DataFrame, out_dir, name: str = "tilings") -> dict:
    """The lattice tilings suite."""
    return validate(df, SPACE, "tilings", out_dir, name=name)


def parquet_round_trip(df: pd.DataFrame) -> pd.DataFrame:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return pd.read_parquet(io.BytesIO(buf.getvalue()))


def make_cells(per_zg: int, seed: int = 1) -> pd.DataFrame:
    designs = np.concatenate([lattice.sample_designs(z, per_zg, seed) for z in ZG_VALUES])
    props = fem.cell_properties(designs)
    return lattice.to_frame(designs, zg=lattice.zg_of(designs), **{c: props[:, k] for k, c in
                                                                  enumerate(PROPERTY_COLUMNS)})


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return parquet_round_trip(make_cells(PER_ZG))


@pytest.fixture(scope="module")
def tilings(cells) -> pd.DataFrame:
    """Each cell at two distinct sizes (cell properties stand in for tiling properties)."""
    rng = np.random.default_rng(5)
    n = len(cells)
    d1 = rng.choice(np.arange(2, 21, 2), size=n)
    d2 = rng.choice(np.arange(2, 21, 2), size=n)
    a = cells.assign(d1=d1, d2=d2)
    b = cells.assign(d1=d1, d2=np.where(d2 == 20, 2, d2 + 2))  # same designs, other size
    df = pd.concat([a, b], ignore_index=True)
    split = np.array(SPLIT_NAMES)[rng.integers(0, 3, size=len(df))].astype(str)
    cols = [*BIT_COLUMNS, "zg", "d1", "d2", *PROPERTY_COLUMNS]
    out = df[cols].astype({"d1": np.int64, "d2": np.int64}).assign(split=split)
    return parquet_round_trip(out)


def assert_fails(fn, df, out_dir, name, *needles):
    """fn(df) raises ValidationFailed naming each needle; both reports say success = false."""
    with pytest.raises(ValidationFailed) as info:
        fn(df, out_dir, name=name)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in message:\n{msg}"
    assert isinstance(info.value, DeepdramError)
    data = json.loads((out_dir / f"{name}.json").read_text())
    assert data["summary"]["success"] is False
    assert data["validation_result"]["success"] is False
    assert data["summary"]["n_failed"] >= 1
    md = (out_dir / f"{name}.md").read_text()
    assert "**FAILED**" in md
    return msg, data, md


# --- Clean data passes ---------------------------------------------------------------------------


def test_parquet_round_trip_dtypes_are_what_the_suite_expects(cells, tilings):
    """pandas 3 + pyarrow give back uint8 bits, float64 values, int64 sizes and `str` splits."""
    assert set(cells[list(BIT_COLUMNS)].dtypes) == {np.dtype(np.uint8)}
    assert tilings["d1"].dtype == np.int64 and tilings["d2"].dtype == np.int64
    assert str(tilings["split"].dtype) == "str"
    assert list(cells.columns) == list(rules.CELL_COLUMNS) == list(SPACE.expected_columns("cells"))
    assert list(tilings.columns) == list(rules.TILING_COLUMNS) == list(SPACE.expected_columns("tilings"))


def test_clean_cells_pass_and_write_both_reports(cells, tmp_path):
    before = cells.copy()
    summary = validate_cells(cells, tmp_path)
    pd.testing.assert_frame_equal(cells, before)  # the input frame is not modified
    assert summary["success"] is True and summary["n_failed"] == 0
    assert summary["row_count"] == len(cells)
    data = json.loads((tmp_path / "cells.json").read_text())  # strict JSON
    assert data["summary"] == summary
    res = data["validation_result"]
    assert res["success"] is True
    assert len(res["results"]) == summary["n_expectations"]
    types = {r["expectation_config"]["type"] for r in res["results"]}
    assert {"expect_table_columns_to_match_ordered_list", "expect_column_values_to_be_of_type",
            "expect_column_values_to_be_in_set", "expect_column_values_to_be_unique",
            "expect_column_values_to_be_between", "expect_column_values_to_not_be_null"} <= types
    md = (tmp_path / "cells.md").read_text()
    assert "**PASSED**" in md
    assert md.count("| pass |") == summary["n_expectations"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.json", "cells.md"]  # no temp files


def test_clean_tilings_pass(tilings, tmp_path):
    summary = validate_tilings(tilings, tmp_path)
    assert summary["success"] is True
    assert (tmp_path / "tilings.json").exists() and (tmp_path / "tilings.md").exists()


def test_resampled_cells_with_split_pass(cells, tmp_path):
    split = np.array(SPLIT_NAMES)[np.arange(len(cells)) % 3].astype(str)
    assert validate_cells(cells.assign(split=split), tmp_path, split=True)["success"]
    with pytest.raises(ValidationFailed, match="split"):
        validate_cells(cells.assign(split=split), tmp_path)  # unexpected column for plain cells


# --- One corruption per rule ---------------------------------------------------------------------


def _set(df, col, value, row=BAD):
    out = df.copy()
    out.loc[row, col] = value
    return out


def _extra_beam(df):
    """Add one absent beam to the bad row (adding a beam keeps the design connected)."""
    out = df.copy()
    row = out.loc[BAD, list(BIT_COLUMNS)].to_numpy()
    out.loc[BAD, BIT_COLUMNS[int(np.flatnonzero(row == 0)[0])]] = 1
    return out


def _disconnected(df):
    """Replace the bad row's design by a disconnected one with the same number of beams."""
    out = df.copy()
    n = int(out.loc[BAD, list(BIT_COLUMNS)].sum())
    cand = lattice.random_subsets(np.random.default_rng(0), 2000, n)
    design = cand[~lattice.is_valid(cand)][0]
    out.loc[BAD, list(BIT_COLUMNS)] = design
    return out


def _duplicate(df):
    out = df.copy()
    out.iloc[BAD] = out.iloc[3]
    return out


CELL_CASES = {
    "bit_is_2": (lambda df: _set(df, "b07", 2), ["expect_column_values_to_be_in_set(b07, {0, 1})",
                                                 f"row {BAD} with value 2"]),
    "extra_beam": (_extra_beam, ["expect_column_values_to_be_in_set(beams_minus_8zg, {0})",
                                 f"row {BAD} with value 1"]),
    "disconnected": (_disconnected, ["expect_column_values_to_be_in_set(connected, {True})",
                                     f"row {BAD} with value False"]),
    "duplicate": (_duplicate, ["expect_column_values_to_be_unique(design_key, unique)", f"rows 3, {BAD}"]),
    "zg_not_allowed": (lambda df: _set(df, "zg", 5.0), ["expect_column_values_to_be_in_set(zg, {2.5, 3, 3.5, 4, "
                                                        "4.5})", f"row {BAD} with value 5"]),
    "E11_too_big": (lambda df: _set(df, "E11", 0.31), ["expect_column_values_to_be_between(E11, 0..0.3)",
                                                       f"row {BAD} with value 0.31"]),
    "nu21_too_small": (lambda df: _set(df, "nu21", -3.5), ["expect_column_values_to_be_between(nu21, -3..3)",
                                                           f"row {BAD} with value -3.5"]),
    "nan": (lambda df: _set(df, "nu12", np.nan), ["expect_column_values_to_not_be_null(nu12, not null)",
                                                  f"row {BAD} with value NaN"]),
    "inf": (lambda df: _set(df, "E11", np.inf), ["expect_column_values_to_be_between(E11, 0..0.3)",
                                                 f"row {BAD} with value inf"]),
    "int64_bits": (lambda df: df.astype({c: np.int64 for c in BIT_COLUMNS}),
                   ["expect_column_values_to_be_of_type(b00, uint8): observed dtype int64"]),
    "float32_property": (lambda df: df.astype({"nu12": np.float32}),
                         ["expect_column_values_to_be_of_type(nu12, float64): observed dtype float32"]),
    "missing_column": (lambda df: df.drop(columns="b05"),
                       ["expect_table_columns_to_match_ordered_list(", "missing b05",
                        "expect_column_values_to_be_in_set(b05, {0, 1}): column b05 is missing"]),
    "extra_column": (lambda df: df.assign(vm1=1.0), ["unexpected vm1"]),
    "column_order": (lambda df: df[["zg", *[c for c in df.columns if c != "zg"]]],
                     ["out of order: position 0 holds zg, expected b00"]),
    "empty": (lambda df: df.iloc[:0], ["expect_table_row_count_to_be_between(>= 1 rows): observed 0"]),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cells_corruption_is_named_with_its_row(cells, tmp_path, case):
    corrupt, needles = CELL_CASES[case]
    bad = corrupt(cells)
    msg, data, md = assert_fails(validate_cells, bad, tmp_path, "cells", *needles)
    rows = [r for f in data["summary"]["failed"] for r in f["example_rows"]]
    if any(f"row {BAD}" in n or f", {BAD}" in n for n in needles):
        assert BAD in rows
        assert f"| {BAD} |" in md  # example row in the report
        # A row corruption breaks only its own rule (zg = 5 also breaks the beam count, 8 zg != 24).
        assert data["summary"]["n_failed"] == (2 if case == "zg_not_allowed" else 1), msg


def test_report_of_a_failing_lattice_table_shows_the_row_and_its_beams(cells, tmp_path):
    """The generic engine names the bad row and shows the lattice's `beams` pseudo-column
    (from `LatticeSpace.report_columns`) beside it: the present beams' indices and their count."""
    assert set(SPACE.report_columns) == {"beams"}
    bad = _disconnected(cells)
    msg, data, md = assert_fails(validate_cells, bad, tmp_path, "cells",
                                 "expect_column_values_to_be_in_set(connected, {True})", f"row {BAD} with value False")
    assert data["summary"]["failed"][0]["example_rows"] == [BAD]
    section = md.split("### expect_column_values_to_be_in_set(connected, {True})", 1)[1]
    assert "| row | connected | zg | beams |" in section
    on = np.flatnonzero(bad.loc[BAD, list(BIT_COLUMNS)].to_numpy() == 1)
    zg = bad.loc[BAD, "zg"]
    beams = " ".join(str(k) for k in on) + f" ({len(on)} beams)"
    assert f"| {BAD} | False | {zg:g} | {beams} |" in section
    assert len(on) == 8 * zg  # the corruption kept the beam count: only connectivity breaks


def test_message_lists_example_rows_and_values(cells, tmp_path):
    bad = cells.copy()
    bad.loc[[12, 40, 77], "E11"] = [0.31, 0.35, -0.01]
    msg, data, md = assert_fails(validate_cells, bad, tmp_path, "cells")
    assert ("expect_column_values_to_be_between(E11, 0..0.3): 3 of 300 rows unexpected, "
            "e.g. rows 12, 40, 77 with values 0.31, 0.35, -0.01") in msg
    (failed,) = data["summary"]["failed"]
    assert failed["example_rows"] == [12, 40, 77] and failed["unexpected_count"] == 3
    assert "| 40 | 0.35 |" in md


def test_example_rows_are_capped_at_five_and_json_stays_strict(cells, tmp_path):
    bad = cells.copy()
    bad.loc[10:30, "nu12"] = -np.inf
    msg, data, _ = assert_fails(validate_cells, bad, tmp_path, "cells", "21 of 300 rows unexpected, "
                                "e.g. rows 10, 11, 12, 13, 14 with values -inf, -inf, -inf, -inf, -inf (report")
    assert data["summary"]["failed"][0]["example_rows"] == [10, 11, 12, 13, 14]

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    data = json.loads((tmp_path / "cells.json").read_text(), parse_constant=reject)
    assert "-Infinity" in json.dumps(data)  # as a string


def test_rows_are_positions_not_index_labels(cells, tmp_path):
    bad = _set(cells, "E22", 0.5).set_axis(np.arange(len(cells)) * 10 + 7)
    assert_fails(validate_cells, bad, tmp_path, "cells", f"row {BAD} with value 0.5")


# --- Tilings -------------------------------------------------------------------------------------

TILING_CASES = {
    "odd_d1": (lambda df: _set(df, "d1", 3), ["expect_column_values_to_be_in_set(d1, {2, 4, 6, 8, 10, 12, "
                                              "14, 16, 18, 20})", f"row {BAD} with value 3"]),
    "d2_too_big": (lambda df: _set(df, "d2", 22), ["expect_column_values_to_be_in_set(d2, ",
                                                   f"row {BAD} with value 22"]),
    "split_dev": (lambda df: _set(df, "split", "dev"), ["expect_column_values_to_be_in_set(split, {'train', "
                                                        "'val', 'test'})", f"row {BAD} with value 'dev'"]),
    "split_null": (lambda df: _set(df, "split", None), ["expect_column_values_to_not_be_null(split, not null)",
                                                        f"row {BAD}"]),
    "duplicate_design_and_size": (_duplicate, ["expect_compound_columns_to_be_unique(design_key, d1, d2)",
                                               f"rows 3, {BAD}"]),
    "float_sizes": (lambda df: df.astype({"d1": np.float64}),
                    ["expect_column_values_to_be_of_type(d1, int64): observed dtype float64"]),
    "bit_is_2": (lambda df: _set(df, "b41", 2), ["expect_column_values_to_be_in_set(b41, {0, 1})",
                                                 f"row {BAD} with value 2"]),
    "disconnected": (_disconnected, ["expect_column_values_to_be_in_set(connected, {True})", f"row {BAD}"]),
    "missing_split": (lambda df: df.drop(columns="split"), ["missing split"]),
}


@pytest.mark.parametrize("case", list(TILING_CASES))
def test_tilings_corruption_is_named_with_its_row(tilings, tmp_path, case):
    corrupt, needles = TILING_CASES[case]
    assert_fails(validate_tilings, corrupt(tilings), tmp_path, "tilings", *needles)


def test_same_design_at_two_sizes_is_not_a_duplicate(tilings, tmp_path):
    n = len(tilings) // 2
    same = tilings.iloc[:n][list(BIT_COLUMNS)].to_numpy()
    assert np.array_equal(same, tilings.iloc[n:][list(BIT_COLUMNS)].to_numpy())
    assert validate_tilings(tilings, tmp_path)["success"]


# --- Scale ---------------------------------------------------------------------------------------


def test_200k_rows_validate_quickly_and_find_one_bad_row(tmp_path):
    """200,000 unique designs (properties tiled from real ones): one bad row is found, in seconds."""
    per = 40_000
    designs = np.concatenate([lattice.sample_designs(z, per, 3) for z in ZG_VALUES])
    props = np.resize(fem.cell_properties(designs[::100]), (len(designs), 4))  # repeated real values
    df = lattice.to_frame(designs, zg=lattice.zg_of(designs), **{c: props[:, k] for k, c in
                                                                enumerate(PROPERTY_COLUMNS)})
    df.loc[123_457, "nu21"] = 3.01
    t0 = time.perf_counter()
    with pytest.raises(ValidationFailed, match=r"between\(nu21, -3\.\.3\): 1 of 200000 rows unexpected, "
                                               r"e\.g\. row 123457 with value 3\.01"):
        validate_cells(df, tmp_path)
    assert time.perf_counter() - t0 < 15
    assert json.loads((tmp_path / "cells.json").read_text())["summary"]["n_failed"] == 1
