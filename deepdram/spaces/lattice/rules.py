"""Data-validation rules of the lattice datasets (cells, resampled cells, tilings).

Rules that are not built-in Great Expectations expectations are checked on helper columns that
`derive` adds to a (copy-on-write) copy of the frame:

- ``beams_minus_8zg``: number of beams (sum of b00..b41) minus 8 * zg, expected in {0};
- ``connected``: `geometry.is_valid` of the design (all 16 nodes connected), expected in {True};
- ``design_key``: the packed design key (`geometry.to_keys`, exact in float64 since keys < 2**42),
  expected unique (cells) or unique together with (d1, d2) (tilings).

Helper values are null ("not evaluated") in rows whose bits are not all 0/1 (those rows are
already reported by the per-bit rules) and, for ``beams_minus_8zg``, where zg is null.
"""

from __future__ import annotations

import numpy as np

from deepdram.data import validation
from deepdram.data.splits import SPLIT_NAMES
from deepdram.spaces.base import Rule
from deepdram.spaces.lattice.constants import (
    BIT_COLUMNS,
    N_BEAMS,
    PROPERTY_BOUNDS,
    PROPERTY_COLUMNS,
    SIZE_COLUMNS,
    TILING_SIZES,
    ZG_VALUES,
)

KINDS = ("cells", "cells_split", "tilings")
CELL_COLUMNS = (*BIT_COLUMNS, "zg", *PROPERTY_COLUMNS)
CELL_SPLIT_COLUMNS = (*CELL_COLUMNS, "split")  # resampled cells carry a split label
TILING_COLUMNS = (*BIT_COLUMNS, "zg", *SIZE_COLUMNS, *PROPERTY_COLUMNS, "split")
DERIVED_COLUMNS = ("beams_minus_8zg", "connected", "design_key")
DERIVED_TEXT = ("`beams_minus_8zg` = sum of bits - 8 zg; `connected` = lattice.is_valid(bits); "
                "`design_key` = lattice.to_keys(bits). They are null where a row's bits are not all 0/1.")

# Exact dtypes (as GX reports them) after a pyarrow Parquet round trip with pandas 3: strings come
# back as StringDtype, which GX names "str" (an object column of Python str also passes "str").
DTYPES = {
    **{c: "uint8" for c in BIT_COLUMNS},
    "zg": "float64",
    **{c: "float64" for c in PROPERTY_COLUMNS},
    **{c: "int64" for c in SIZE_COLUMNS},
    "split": "str",
}
_CHUNK = 1 << 18  # rows per block when deriving helper columns (bounds memory at 6 M rows)


def expected_columns(kind: str) -> tuple[str, ...]:
    """Ordered columns a dataset of `kind` ('cells', 'cells_split', 'tilings') must have."""
    return {"cells": CELL_COLUMNS, "cells_split": CELL_SPLIT_COLUMNS, "tilings": TILING_COLUMNS}[kind]


def rules(kind: str) -> list[Rule]:
    """The rules of one dataset kind, in report order."""
    cols = expected_columns(kind)
    tiling = kind == "tilings"
    shown = f"b00..b41, {', '.join(c for c in cols if c not in BIT_COLUMNS)}"
    r = validation.schema_rules(cols, DERIVED_COLUMNS, DTYPES, shown)
    r += [Rule("ExpectColumnValuesToBeInSet", {"column": c, "value_set": [0, 1]}, c, "{0, 1}",
               "design bits are 0 or 1", (c,)) for c in BIT_COLUMNS]
    zgs = [float(z) for z in ZG_VALUES]
    r += [Rule("ExpectColumnValuesToNotBeNull", {"column": "zg"}, "zg", "not null", "zg is present", ("zg",)),
          Rule("ExpectColumnValuesToBeInSet", {"column": "zg", "value_set": zgs}, "zg", validation.fmt_set(zgs),
               "zg is one of the supported connectivities", ("zg",)),
          Rule("ExpectColumnValuesToBeInSet", {"column": "beams_minus_8zg", "value_set": [0]}, "beams_minus_8zg",
               "{0}", "number of beams equals 8 * zg (derived: sum of bits - 8 * zg)",
               ("beams_minus_8zg", "zg", "beams"), "beam count = 8 zg"),
          Rule("ExpectColumnValuesToBeInSet", {"column": "connected", "value_set": [True]}, "connected", "{True}",
               "every design is valid: all 16 nodes connected (derived: lattice.is_valid)",
               ("connected", "zg", "beams"), "design connected")]
    if tiling:
        r.append(Rule("ExpectCompoundColumnsToBeUnique",
                      {"column_list": ["design_key", *SIZE_COLUMNS], "ignore_row_if": "any_value_is_missing"},
                      None, "design_key, d1, d2", "no design appears twice at the same size",
                      ("design_key", *SIZE_COLUMNS, "zg"), "duplicate design at the same size"))
        for c in SIZE_COLUMNS:
            r += [Rule("ExpectColumnValuesToNotBeNull", {"column": c}, c, "not null", f"{c} is present", (c,)),
                  Rule("ExpectColumnValuesToBeInSet", {"column": c, "value_set": list(TILING_SIZES)}, c,
                       validation.fmt_set(TILING_SIZES), "tiling size is even, in 2..20", (c,))]
    else:
        r.append(Rule("ExpectColumnValuesToBeUnique", {"column": "design_key"}, "design_key", "unique",
                      "no duplicate design (the key fixes the beam count, hence zg)", ("design_key", "zg"),
                      "duplicate design"))
    for c in PROPERTY_COLUMNS:
        r += validation.range_rules(c, *PROPERTY_BOUNDS[c], shown=(c, "zg"))
    if "split" in cols:
        r += validation.set_rules("split", list(SPLIT_NAMES), "split is train, val or test")
    return r


def _bit_arrays(df) -> list[np.ndarray | None]:
    """Each bit column as a numeric array (None where missing; non-numeric entries become NaN)."""
    import pandas as pd

    out: list[np.ndarray | None] = []
    for c in BIT_COLUMNS:
        if c not in df.columns:
            out.append(None)
            continue
        s = df[c]
        if s.dtype.kind in "biuf":
            out.append(s.to_numpy())
        else:
            out.append(pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    return out


def derive(df):
    """Copy of `df` (positional RangeIndex) with the helper columns the rules check."""
    import pandas as pd

    from deepdram.spaces.lattice.geometry import is_valid, to_keys

    n = len(df)
    bits = _bit_arrays(df)
    if "zg" in df.columns and df["zg"].dtype.kind in "biuf":
        zg = df["zg"].to_numpy(dtype=np.float64, na_value=np.nan)
    elif "zg" in df.columns:
        zg = pd.to_numeric(df["zg"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        zg = np.full(n, np.nan)
    beams_minus = np.full(n, np.nan)
    connected = np.zeros(n, dtype=bool)
    key = np.full(n, np.nan)
    usable = np.zeros(n, dtype=bool)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        block = np.zeros((b - a, N_BEAMS), dtype=np.uint8)
        ok = np.ones(b - a, dtype=bool)
        for k, col in enumerate(bits):
            if col is None:
                ok[:] = False
                continue
            v = col[a:b]
            good = (v == 0) | (v == 1)
            ok &= good
            block[:, k] = np.where(good, v, 0)
        usable[a:b] = ok
        beams_minus[a:b] = np.where(ok, block.sum(axis=1, dtype=np.int64) - 8.0 * zg[a:b], np.nan)
        connected[a:b] = is_valid(block)
        key[a:b] = np.where(ok, to_keys(block).astype(np.float64), np.nan)
    conn = pd.array(connected, dtype="boolean")
    conn[~usable] = pd.NA
    out = df.reset_index(drop=True)  # positional row numbers; no data copy (copy-on-write)
    return out.assign(beams_minus_8zg=beams_minus, connected=conn, design_key=key)


def beams_text(frame, i: int) -> str:
    """Indices of the beams present (bit == 1) in row i, for reports."""
    on = [str(k) for k, c in enumerate(BIT_COLUMNS) if c in frame.columns and frame[c].iat[i] == 1]
    return " ".join(on) + f" ({len(on)} beams)"
