"""Data validation of the cells and tilings datasets with Great Expectations (GX Core 1.x).

Every rule is a GX expectation that GX evaluates. Rules that are not built-in expectations are
checked on helper columns derived in a (copy-on-write) copy of the frame:

- ``beams_minus_8zg``: number of beams (sum of b00..b41) minus 8 * zg, expected in {0};
- ``connected``: ``lattice.is_valid`` of the design (all 16 nodes connected), expected in {True};
- ``design_key``: the packed design key (``lattice.to_keys``, exact in float64 since keys < 2**42),
  expected unique (cells) or unique together with (d1, d2) (tilings).

Helper values are null ("not evaluated") in rows whose bits are not all 0/1 (those rows are
already reported by the per-bit rules) and, for ``beams_minus_8zg``, where zg is null.

Row numbers in messages and reports are 0-based positions in the frame (its index is ignored),
which equal the row numbers of a Parquet file read back with ``pandas.read_parquet``.

``validate_cells`` / ``validate_tilings`` write ``<name>.json`` (summary + the GX validation
result) and ``<name>.md`` (human-readable report) atomically into ``out_dir``, return the summary,
and raise :class:`ValidationFailed` (after writing both files) if any expectation fails.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepdram.constants import (
    BIT_COLUMNS,
    E_RANGE,
    N_BEAMS,
    NU_RANGE,
    PROPERTY_COLUMNS,
    SIZE_COLUMNS,
    SPLIT_NAMES,
    TILING_SIZES,
    ZG_VALUES,
)
from deepdram.errors import DeepdramError

if TYPE_CHECKING:
    import pandas as pd

# Column layouts the suites require, in order (what deepdram.datasets writes).
CELL_COLUMNS = (*BIT_COLUMNS, "zg", *PROPERTY_COLUMNS)
CELL_SPLIT_COLUMNS = (*CELL_COLUMNS, "split")  # resampled cells carry a split label
TILING_COLUMNS = (*BIT_COLUMNS, "zg", *SIZE_COLUMNS, *PROPERTY_COLUMNS, "split")
DERIVED_COLUMNS = ("beams_minus_8zg", "connected", "design_key")

# Exact dtypes (as GX reports them) after a pyarrow Parquet round trip with pandas 3: strings come
# back as StringDtype, which GX names "str" (an object column of Python str also passes "str").
DTYPES = {
    **{c: "uint8" for c in BIT_COLUMNS},
    "zg": "float64",
    **{c: "float64" for c in PROPERTY_COLUMNS},
    **{c: "int64" for c in SIZE_COLUMNS},
    "split": "str",
}

EXAMPLES = 5  # example rows per failed expectation
_MAX_IN_MESSAGE = 8  # failed expectations spelled out in the exception message
_CHUNK = 1 << 18  # rows per block when deriving helper columns (bounds memory at 6 M rows)


class ValidationFailed(DeepdramError):
    """A dataset broke one or more expectations; `summary` holds the details, reports are written."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class _Rule:
    """One expectation plus what a reader needs to understand a failure."""

    expectation: Any
    column: str | None  # checked column (None for table-level and compound rules)
    rule: str  # short rule text, e.g. "0..0.3"
    meaning: str  # what the rule means for the data
    columns: tuple[str, ...] = ()  # columns the example rows show (checked ones first)
    hint: str = ""  # plain words for rules on derived columns, shown in messages
    id: str | None = field(default=None)

    @property
    def type(self) -> str:
        return self.expectation.expectation_type

    @property
    def label(self) -> str:
        args = ", ".join(a for a in (self.column, self.rule) if a)
        return f"{self.type}({args})"

    def message(self, detail: str) -> str:
        return f"{self.label}{f' [{self.hint}]' if self.hint else ''}: {detail}"


# --- Public API ---------------------------------------------------------------------------------


def validate_cells(df: pd.DataFrame, out_dir: Path, name: str = "cells", *, split: bool = False) -> dict:
    """Validate a cells table (b00..b41, zg, E11, E22, nu12, nu21; plus `split` if `split`)."""
    return _validate(df, Path(out_dir), name, "cells_split" if split else "cells")


def validate_tilings(df: pd.DataFrame, out_dir: Path, name: str = "tilings") -> dict:
    """Validate a tilings table (b00..b41, zg, d1, d2, E11, E22, nu12, nu21, split)."""
    return _validate(df, Path(out_dir), name, "tilings")


def expected_columns(kind: str) -> tuple[str, ...]:
    """Ordered columns a dataset of `kind` ('cells', 'cells_split', 'tilings') must have."""
    return {"cells": CELL_COLUMNS, "cells_split": CELL_SPLIT_COLUMNS, "tilings": TILING_COLUMNS}[kind]


# --- Suite ---------------------------------------------------------------------------------------


def _fmt_set(values) -> str:
    return "{" + ", ".join(_fmt(v) for v in values) + "}"


def _rules(gx, kind: str) -> list[_Rule]:
    """The expectations of one dataset kind, in report order."""
    E = gx.expectations
    cols = expected_columns(kind)
    tiling = kind == "tilings"
    has_split = "split" in cols
    r: list[_Rule] = []

    # Schema: columns in order (the derived helper columns are appended to the validated copy).
    shown = f"b00..b41, {', '.join(c for c in cols if c not in BIT_COLUMNS)}"
    r.append(_Rule(E.ExpectTableColumnsToMatchOrderedList(column_list=[*cols, *DERIVED_COLUMNS]), None,
                   shown, "exactly these columns, in this order (+ derived helper columns)"))
    r.append(_Rule(E.ExpectTableRowCountToBeBetween(min_value=1), None, ">= 1 rows", "the table is not empty"))
    for c in cols:
        r.append(_Rule(E.ExpectColumnValuesToBeOfType(column=c, type_=DTYPES[c]), c, DTYPES[c],
                       f"column dtype is {DTYPES[c]}"))
    # Design bits.
    for c in BIT_COLUMNS:
        r.append(_Rule(E.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]), c, "{0, 1}",
                       "design bits are 0 or 1", (c,)))
    # Connectivity.
    zgs = [float(z) for z in ZG_VALUES]
    r.append(_Rule(E.ExpectColumnValuesToNotBeNull(column="zg"), "zg", "not null", "zg is present", ("zg",)))
    r.append(_Rule(E.ExpectColumnValuesToBeInSet(column="zg", value_set=zgs), "zg", _fmt_set(zgs),
                   "zg is one of the supported connectivities", ("zg",)))
    r.append(_Rule(E.ExpectColumnValuesToBeInSet(column="beams_minus_8zg", value_set=[0]), "beams_minus_8zg",
                   "{0}", "number of beams equals 8 * zg (derived: sum of bits - 8 * zg)",
                   ("beams_minus_8zg", "zg", "beams"), "beam count = 8 zg"))
    r.append(_Rule(E.ExpectColumnValuesToBeInSet(column="connected", value_set=[True]), "connected", "{True}",
                   "every design is valid: all 16 nodes connected (derived: lattice.is_valid)",
                   ("connected", "zg", "beams"), "design connected"))
    # Uniqueness.
    if tiling:
        r.append(_Rule(E.ExpectCompoundColumnsToBeUnique(column_list=["design_key", *SIZE_COLUMNS],
                                                         ignore_row_if="any_value_is_missing"),
                       None, "design_key, d1, d2", "no design appears twice at the same size",
                       ("design_key", *SIZE_COLUMNS, "zg"), "duplicate design at the same size"))
    else:
        r.append(_Rule(E.ExpectColumnValuesToBeUnique(column="design_key"), "design_key", "unique",
                       "no duplicate design (the key fixes the beam count, hence zg)", ("design_key", "zg"),
                       "duplicate design"))
    # Sizes.
    if tiling:
        for c in SIZE_COLUMNS:
            r.append(_Rule(E.ExpectColumnValuesToNotBeNull(column=c), c, "not null", f"{c} is present", (c,)))
            r.append(_Rule(E.ExpectColumnValuesToBeInSet(column=c, value_set=list(TILING_SIZES)), c,
                           _fmt_set(TILING_SIZES), "tiling size is even, in 2..20", (c,)))
    # Properties.
    for c in PROPERTY_COLUMNS:
        lo, hi = E_RANGE if c.startswith("E") else NU_RANGE
        r.append(_Rule(E.ExpectColumnValuesToNotBeNull(column=c), c, "not null", f"{c} is present (no NaN)",
                       (c, "zg")))
        r.append(_Rule(E.ExpectColumnValuesToBeBetween(column=c, min_value=float(lo), max_value=float(hi)), c,
                       f"{_fmt(lo)}..{_fmt(hi)}", f"{c} is finite and within [{_fmt(lo)}, {_fmt(hi)}]",
                       (c, "zg")))
    # Split label.
    if has_split:
        r.append(_Rule(E.ExpectColumnValuesToNotBeNull(column="split"), "split", "not null", "split is present",
                       ("split",)))
        r.append(_Rule(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLIT_NAMES)), "split",
                       _fmt_set(SPLIT_NAMES), "split is train, val or test", ("split",)))
    return r


# --- Derived helper columns ----------------------------------------------------------------------


def _bit_arrays(df: pd.DataFrame) -> list[np.ndarray | None]:
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


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of `df` (positional RangeIndex) with the helper columns the suites check."""
    import pandas as pd

    from deepdram.lattice import is_valid, to_keys

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


# --- Running GX ----------------------------------------------------------------------------------


def _gx():
    """Import great_expectations lazily (about 3.5 s), analytics off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _run_suite(frame: pd.DataFrame, rules: list[_Rule], suite_name: str):
    """Run the rules on `frame` with GX; returns the ExpectationSuiteValidationResult."""
    import logging

    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX sets INFO on its own module loggers (e.g. "Created temporary directory ... for ephemeral docs
    # site" on every context): quiet all of them, not just the parent.
    for logger_name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")]:
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_def = (context.data_sources.add_pandas("deepdram")
                 .add_dataframe_asset(suite_name)
                 .add_batch_definition_whole_dataframe("whole"))
    # Adding expectations one by one to a stored suite re-serialises the suite each time (O(n^2)):
    # build it complete, then store it once.
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=[r.expectation for r in rules]))
    for rule, exp in zip(rules, suite.expectations, strict=True):
        rule.id = str(exp.id)
    vdef = context.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite))
    # SUMMARY: counts plus at most EXAMPLES unexpected values and row indices; never full lists.
    return vdef.run(batch_parameters={"dataframe": frame},
                    result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES})


# --- Formatting ----------------------------------------------------------------------------------


def _fmt(v) -> str:
    """Short, exact-enough text for a value."""
    if v is None:
        return "null"
    try:
        import pandas as pd

        if v is pd.NA:
            return "null"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        if f.is_integer() and abs(f) < 1e15:
            return str(int(f)) if abs(f) >= 1e6 else f"{f:g}"
        return f"{f:.6g}"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def _jsonable(obj):
    """Strict-JSON copy: non-finite floats become strings, numpy scalars become Python values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else ("NaN" if math.isnan(f) else ("Infinity" if f > 0 else "-Infinity"))
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _columns_diff(observed: list, expected: list) -> str:
    """What differs between observed and expected column lists."""
    missing = [c for c in expected if c not in observed]
    extra = [c for c in observed if c not in expected]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(map(str, missing)))
    if extra:
        parts.append("unexpected " + ", ".join(map(str, extra)))
    if not parts:
        for i, (o, e) in enumerate(zip(observed, expected)):
            if o != e:
                parts.append(f"out of order: position {i} holds {o}, expected {e}")
                break
    return "; ".join(parts) or "column lists differ"


@dataclass
class _Outcome:
    rule: _Rule
    success: bool
    observed: str  # one-line observed value / unexpected count
    detail: str  # failure text after the label (empty on success)
    rows: list[int]  # example row positions (failures only)
    unexpected: int | None  # unexpected count (column-map rules)


def _outcome(rule: _Rule, res, frame: pd.DataFrame, n_rows: int, original_columns: list) -> _Outcome:
    result = dict(res.result or {})
    raised = _raised(res.exception_info)
    t = rule.type
    missing_col = [c for c in _rule_columns(rule) if c not in frame.columns]
    if t == "expect_table_columns_to_match_ordered_list":
        expected = [c for c in rule.expectation.column_list if c not in DERIVED_COLUMNS]
        obs = original_columns
        observed = f"{len(obs)} columns" + ("" if res.success else f": {_columns_diff(obs, expected)}")
        ok = bool(res.success)
        return _Outcome(rule, ok, observed, "" if ok else _columns_diff(obs, expected), [], None)
    if missing_col:
        text = f"column {', '.join(missing_col)} is missing"
        return _Outcome(rule, bool(res.success), text, "" if res.success else text, [], None)
    if raised and not res.success:
        text = f"GX raised: {raised}"
        return _Outcome(rule, False, text, text, [], None)
    if "observed_value" in result and "unexpected_count" not in result:
        obs = result["observed_value"]
        observed = f"observed {obs}"
        if t == "expect_column_values_to_be_of_type":
            observed = f"observed dtype {frame[rule.column].dtype}"
        return _Outcome(rule, bool(res.success), observed, "" if res.success else observed, [], None)
    if "unexpected_count" in result:
        u = int(result["unexpected_count"])
        nulls = int(result.get("missing_count") or 0)
        observed = f"{u} of {n_rows} rows unexpected" + (f" ({nulls} null, not checked)" if nulls else "")
        rows = [int(i) for i in (result.get("partial_unexpected_index_list") or [])][:EXAMPLES]
        if res.success:
            return _Outcome(rule, True, observed, "", [], u)
        detail = f"{u} of {n_rows} rows unexpected"
        if rows:
            cols = [c for c in _rule_columns(rule)]
            vals = []
            for i in rows:
                row = [_fmt(frame[c].iat[i]) for c in cols]
                vals.append(row[0] if len(row) == 1 else "(" + ", ".join(row) + ")")
            s = "" if len(rows) == 1 else "s"
            what = f"value{s}" if len(cols) == 1 else f"({', '.join(cols)}) ="
            detail += f", e.g. row{s} {', '.join(map(str, rows))} with {what} {', '.join(vals)}"
        return _Outcome(rule, False, observed, detail, rows, u)
    text = "failed" if not res.success else "passed"
    return _Outcome(rule, bool(res.success), text, "" if res.success else text, [], None)


def _rule_columns(rule: _Rule) -> list[str]:
    e = rule.expectation
    if getattr(e, "column_list", None) is not None and rule.type == "expect_compound_columns_to_be_unique":
        return list(e.column_list)
    return [rule.column] if rule.column else []


def _raised(info) -> str | None:
    """Exception message from a GX exception_info (flat, or keyed by metric)."""
    if not info:
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "exception") if info.get("raised_exception") else None
    for v in info.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return v.get("exception_message") or "exception"
    return None


def _beams(frame: pd.DataFrame, i: int) -> str:
    """Indices of the beams present (bit == 1) in row i, for the report."""
    on = [str(k) for k, c in enumerate(BIT_COLUMNS) if c in frame.columns and frame[c].iat[i] == 1]
    return " ".join(on) + f" ({len(on)} beams)"


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _markdown(name: str, kind: str, summary: dict, outcomes: list[_Outcome], frame: pd.DataFrame) -> str:
    n_fail = summary["n_failed"]
    lines = [f"# Data validation: {name}", ""]
    lines.append(f"- dataset kind: {kind}; rows: {summary['row_count']}; expectations: "
                 f"{summary['n_expectations']}; Great Expectations {summary['great_expectations_version']}")
    status = "**PASSED**" if summary["success"] else f"**FAILED** ({n_fail} of {summary['n_expectations']})"
    lines.append(f"- result: {status}")
    lines.append(f"- time: {summary['elapsed_s']:.1f} s")
    lines.append("- derived helper columns (checked by GX like any column): `beams_minus_8zg` = sum of bits "
                 "- 8 zg; `connected` = lattice.is_valid(bits); `design_key` = lattice.to_keys(bits). "
                 "They are null where a row's bits are not all 0/1.")
    lines.append("- row numbers are 0-based positions in the table.")
    lines.append("")
    lines.append("| # | expectation | column | rule | result | observed |")
    lines.append("|---|---|---|---|---|---|")
    for i, o in enumerate(outcomes, 1):
        lines.append(f"| {i} | {o.rule.type} | {_md_escape(o.rule.column or '(table)')} | "
                     f"{_md_escape(o.rule.rule)} | {'pass' if o.success else '**FAIL**'} | "
                     f"{_md_escape(o.observed)} |")
    failed = [o for o in outcomes if not o.success]
    if failed:
        lines += ["", "## Failures", ""]
        for o in failed:
            lines.append(f"### {_md_escape(o.rule.label)}")
            lines.append("")
            lines.append(f"Rule: {o.rule.meaning}. {o.detail}.")
            lines.append("")
            if o.rows:
                cols = [c for c in dict.fromkeys(o.rule.columns or _rule_columns(o.rule))
                        if c in frame.columns or c == "beams"]
                lines.append("| row | " + " | ".join(cols) + " |")
                lines.append("|---|" + "---|" * len(cols))
                for i in o.rows:
                    vals = [_md_escape(_beams(frame, i) if c == "beams" else _fmt(frame[c].iat[i])) for c in cols]
                    lines.append(f"| {i} | " + " | ".join(vals) + " |")
                lines.append("")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --- Driver --------------------------------------------------------------------------------------


def _validate(df: pd.DataFrame, out_dir: Path, name: str, kind: str) -> dict:
    t0 = time.perf_counter()
    gx = _gx()
    original_columns = list(df.columns)
    frame = derive(df)
    rules = _rules(gx, kind)
    result = _run_suite(frame, rules, f"deepdram.{kind}")
    by_id = {str(r.expectation_config.id): r for r in result.results}
    n_rows = len(frame)
    outcomes = [_outcome(rule, by_id[rule.id], frame, n_rows, original_columns) for rule in rules]
    failed = [o for o in outcomes if not o.success]
    summary = {
        "name": name,
        "kind": kind,
        "success": bool(result.success) and not failed,
        "row_count": n_rows,
        "n_expectations": len(rules),
        "n_failed": len(failed),
        "failed": [
            {"expectation": o.rule.type, "column": o.rule.column, "rule": o.rule.rule,
             "unexpected_count": o.unexpected, "example_rows": o.rows, "message": o.rule.message(o.detail)}
            for o in failed
        ],
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "great_expectations_version": gx.__version__,
    }
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    payload = {"summary": summary, "validation_result": result.to_json_dict()}
    _write_atomic(json_path, json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
    _write_atomic(md_path, _markdown(name, kind, summary, outcomes, frame))
    if failed:
        shown = "; ".join(f["message"] for f in summary["failed"][:_MAX_IN_MESSAGE])
        more = len(failed) - _MAX_IN_MESSAGE
        if more > 0:
            shown += f"; and {more} more"
        raise ValidationFailed(
            f"{name}: {len(failed)} of {len(rules)} expectations failed: {shown} (report: {md_path})", summary)
    return summary
