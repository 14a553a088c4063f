"""Data validation with Great Expectations (GX Core 1.x): a space's rules, run and reported.

A design space declares its rules (`DesignSpace.validation_rules(kind)`, plain `Rule` specs
naming GX expectation classes) and derives helper columns for rules that are not built-in
expectations (`DesignSpace.derive`); this module turns the specs into a GX suite, runs it on the
frame, and writes the results.

Row numbers in messages and reports are 0-based positions in the frame (its index is ignored),
which equal the row numbers of a Parquet file read back with ``pandas.read_parquet``.

`validate` writes ``<name>.json`` (summary + the GX validation result) and ``<name>.md``
(human-readable report) atomically into ``out_dir``, returns the summary, and raises
:class:`ValidationFailed` (after writing both files) if any expectation fails.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepdram.data.atomic import write_text
from deepdram.errors import DeepdramError
from deepdram.spaces.base import Rule

if TYPE_CHECKING:
    import pandas as pd

    from deepdram.spaces.base import DesignSpace

EXAMPLES = 5  # example rows per failed expectation
_MAX_IN_MESSAGE = 8  # failed expectations spelled out in the exception message


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


def _expectations(gx, specs: list[Rule]) -> list[_Rule]:
    """GX expectation objects of the rule specs."""
    return [_Rule(getattr(gx.expectations, r.kind)(**dict(r.args)), r.column, r.rule, r.meaning, r.columns, r.hint)
            for r in specs]


# --- Rule helpers for spaces ----------------------------------------------------------------------


def fmt_set(values) -> str:
    """A set of values as rule text, e.g. {0, 1}."""
    return "{" + ", ".join(_fmt(v) for v in values) + "}"


def schema_rules(columns: tuple[str, ...], derived: tuple[str, ...], dtypes: dict[str, str], shown: str) -> list[Rule]:
    """Columns in order (derived helper columns appended), a non-empty table, each column's dtype."""
    r = [Rule("ExpectTableColumnsToMatchOrderedList", {"column_list": [*columns, *derived]}, None, shown,
              "exactly these columns, in this order (+ derived helper columns)"),
         Rule("ExpectTableRowCountToBeBetween", {"min_value": 1}, None, ">= 1 rows", "the table is not empty")]
    return r + [Rule("ExpectColumnValuesToBeOfType", {"column": c, "type_": dtypes[c]}, c, dtypes[c],
                     f"column dtype is {dtypes[c]}") for c in columns]


def range_rules(column: str, lo: float, hi: float, shown: tuple[str, ...] = ()) -> list[Rule]:
    """Not null, and within [lo, hi] (so finite)."""
    shown = shown or (column,)
    return [Rule("ExpectColumnValuesToNotBeNull", {"column": column}, column, "not null",
                 f"{column} is present (no NaN)", shown),
            Rule("ExpectColumnValuesToBeBetween", {"column": column, "min_value": float(lo), "max_value": float(hi)},
                 column, f"{_fmt(lo)}..{_fmt(hi)}", f"{column} is finite and within [{_fmt(lo)}, {_fmt(hi)}]", shown)]


def set_rules(column: str, values: list, meaning: str) -> list[Rule]:
    """Not null, and one of `values`."""
    return [Rule("ExpectColumnValuesToNotBeNull", {"column": column}, column, "not null", f"{column} is present",
                 (column,)),
            Rule("ExpectColumnValuesToBeInSet", {"column": column, "value_set": values}, column, fmt_set(values),
                 meaning, (column,))]


# --- Public API ---------------------------------------------------------------------------------


def validate(df: pd.DataFrame, space: DesignSpace, kind: str, out_dir: Path, name: str | None = None) -> dict:
    """Validate a dataset of `kind` of `space`; write <name>.json / .md; raise ValidationFailed on failure."""
    return _validate(df, space, Path(out_dir), name or kind, kind)


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


def _outcome(rule: _Rule, res, frame: pd.DataFrame, n_rows: int, original_columns: list,
             derived: tuple[str, ...]) -> _Outcome:
    result = dict(res.result or {})
    raised = _raised(res.exception_info)
    t = rule.type
    missing_col = [c for c in _rule_columns(rule) if c not in frame.columns]
    if t == "expect_table_columns_to_match_ordered_list":
        expected = [c for c in rule.expectation.column_list if c not in derived]
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


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _markdown(name: str, kind: str, summary: dict, outcomes: list[_Outcome], frame: pd.DataFrame,
              space: DesignSpace) -> str:
    n_fail = summary["n_failed"]
    lines = [f"# Data validation: {name}", ""]
    lines.append(f"- dataset kind: {kind}; rows: {summary['row_count']}; expectations: "
                 f"{summary['n_expectations']}; Great Expectations {summary['great_expectations_version']}")
    status = "**PASSED**" if summary["success"] else f"**FAILED** ({n_fail} of {summary['n_expectations']})"
    lines.append(f"- result: {status}")
    lines.append(f"- time: {summary['elapsed_s']:.1f} s")
    if space.derived_text:
        lines.append(f"- derived helper columns (checked by GX like any column): {space.derived_text}")
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
                pseudo = space.report_columns
                cols = [c for c in dict.fromkeys(o.rule.columns or _rule_columns(o.rule))
                        if c in frame.columns or c in pseudo]
                lines.append("| row | " + " | ".join(cols) + " |")
                lines.append("|---|" + "---|" * len(cols))
                for i in o.rows:
                    vals = [_md_escape(pseudo[c](frame, i) if c in pseudo else _fmt(frame[c].iat[i])) for c in cols]
                    lines.append(f"| {i} | " + " | ".join(vals) + " |")
                lines.append("")
    return "\n".join(lines) + "\n"


# --- Driver --------------------------------------------------------------------------------------


def _validate(df: pd.DataFrame, space: DesignSpace, out_dir: Path, name: str, kind: str) -> dict:
    t0 = time.perf_counter()
    gx = _gx()
    original_columns = list(df.columns)
    frame = space.derive(df)
    rules = _expectations(gx, space.validation_rules(kind))
    result = _run_suite(frame, rules, f"deepdram.{kind}")
    by_id = {str(r.expectation_config.id): r for r in result.results}
    n_rows = len(frame)
    derived = space.derived_columns(kind)
    outcomes = [_outcome(rule, by_id[rule.id], frame, n_rows, original_columns, derived) for rule in rules]
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
    write_text(json_path, json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
    write_text(md_path, _markdown(name, kind, summary, outcomes, frame, space))
    if failed:
        shown = "; ".join(f["message"] for f in summary["failed"][:_MAX_IN_MESSAGE])
        more = len(failed) - _MAX_IN_MESSAGE
        if more > 0:
            shown += f"; and {more} more"
        raise ValidationFailed(
            f"{name}: {len(failed)} of {len(rules)} expectations failed: {shown} (report: {md_path})", summary)
    return summary
