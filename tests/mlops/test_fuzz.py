"""Served models under bad input: a fuzz corpus against the REAL `mlflow models serve` processes.

One server per served kind (forward, size-agnostic, generator: tiny stand-in Keras models logged with
`deepdram.mlops.pyfuncs.log_model`; the designer: `designer.log_designer` of conftest's tiny
surrogates), started once for the module and reused by every case. Each kind gets at least 300
requests: the hand-written ones of `fuzz/corpus.json` (malformed JSON, wrong content types, odd
protocol shapes, empty bodies) and ones generated here with a fixed seed (valid requests in every
input format, NaN and Infinity, strings, nested and ragged arrays, missing and extra columns,
booleans, huge numbers, out-of-range values, one million rows, a body above the size cap).

Every case states its expected status and the words its message must contain: valid requests get
200 (extra named columns stay accepted), rejected ones a 4xx naming the problem, never a 5xx. After
the corpus each server still answers a valid request, and its memory (RSS of the server's process
group) stayed under the documented bound (MEMORY_BOUND_MB over its RSS after start-up).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("keras")
psutil = pytest.importorskip("psutil")

import mlflow  # noqa: E402

from deepdram.mlops import designer, pyfuncs, tracking  # noqa: E402
from deepdram.spaces.lattice.constants import BIT_COLUMNS, PROPERTY_COLUMNS  # noqa: E402
from deepdram.spaces.lattice.geometry import sample_designs  # noqa: E402

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "fuzz" / "corpus.json"
KINDS = ("forward", "size_agnostic", "generator", "designer")
MIN_CASES = 300
# The documented memory bound: a server's RSS never grows more than this over its RSS after start-up
# while it answers the corpus (its largest bodies: 1e6 rows of one value, a 30 MB body of 230,000
# rows, a 40 MB body refused unread, a 126 MB body of 1e6 design rows refused unread).
MEMORY_BOUND_MB = 1024
SIZES = ("d1", "d2")
DESIGNER_COLUMNS = (*PROPERTY_COLUMNS, *SIZES)
JSON = "application/json"
COLUMNS = {"forward": tuple(BIT_COLUMNS), "size_agnostic": (*BIT_COLUMNS, *SIZES),
           "generator": (*PROPERTY_COLUMNS, *pyfuncs.latent_columns(8)), "designer": DESIGNER_COLUMNS}


@dataclass
class Case:
    name: str
    body: bytes
    status: int
    needles: tuple[str, ...] = ()
    content_type: str | None = JSON
    rows: int | None = None  # valid requests: the expected number of prediction rows (designer: None)


@dataclass
class Kind:
    """What a served kind takes: its columns and generators of valid rows."""

    name: str
    columns: tuple[str, ...]
    rng: np.random.Generator = field(repr=False)

    def rows(self, n: int) -> list[list]:
        r = self.rng
        if self.name in ("forward", "size_agnostic"):
            zg = float(r.choice([2.5, 3.0, 3.5, 4.0, 4.5]))
            d = sample_designs(zg, n, int(r.integers(2**31)), unique=False).astype(int)
            if self.name == "forward":
                return d.tolist()
            sizes = r.choice(np.arange(2, 21, 2), size=(n, 2))
            return np.hstack([d, sizes]).tolist()
        if self.name == "generator":
            props = np.column_stack([r.uniform(0.01, 0.2, n), r.uniform(0.01, 0.2, n),
                                     r.uniform(-0.5, 0.8, n), r.uniform(-0.5, 0.8, n)])
            return np.hstack([props, r.standard_normal((n, 8))]).round(6).tolist()
        # designer: reachable targets, unit cells or small tilings (cheap requests)
        sizes = [[1, 1], [2, 2], [2, 4], [4, 2]]
        return [[round(float(r.uniform(0.02, 0.06)), 4), round(float(r.uniform(0.02, 0.06)), 4),
                 round(float(r.uniform(-0.2, 0.4)), 3), round(float(r.uniform(-0.2, 0.4)), 3),
                 *sizes[int(r.integers(len(sizes)))]] for _ in range(n)]

    def params(self) -> dict | None:
        """Params of a cheap valid designer request (None for the other kinds)."""
        if self.name != "designer":
            return None
        return {"n_candidates": int(self.rng.integers(100, 400)), "top_k": int(self.rng.integers(1, 3)),
                "seed": int(self.rng.integers(1000))}


def _body(obj) -> bytes:
    return json.dumps(obj).encode()


def _with(payload: dict, params: dict | None) -> dict:
    return {**payload, "params": params} if params else payload


# --- the corpus ---------------------------------------------------------------------------------------


def corpus_file_cases(kind: Kind) -> list[Case]:
    spec = json.loads(CORPUS.read_text())
    out = []
    rows = kind.rows(3)
    fill = {"{ROW}": json.dumps(rows[0]), "{ROWS}": json.dumps(rows), "{COLUMNS}": json.dumps(list(kind.columns)),
            "{RECORD}": json.dumps(dict(zip(kind.columns, rows[0])))}
    for c in spec["cases"]:
        if kind.name not in c.get("kinds", KINDS):
            continue
        if "body_hex" in c:
            body = bytes.fromhex(c["body_hex"])
        elif c["body"] == "DEEP":  # nested deeper than any parser's recursion limit
            body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        else:
            text = c["body"]
            for k, v in fill.items():
                text = text.replace(k, v)
            body = text.encode()
        status = c.get("status_by_kind", {}).get(kind.name, c["status"])
        needles = c.get("needles_by_kind", {}).get(kind.name, c.get("needles", ()))
        if kind.name == "designer" and status == 200 and c.get("content_type", JSON).startswith(JSON):
            body = _body(_with(json.loads(body), kind.params()))  # a cheap request (not 100,000 candidates)
        rows = c.get("rows", 1) if status == 200 and kind.name != "designer" else None
        out.append(Case(f"corpus: {c['name']}", body, status, tuple(needles), c.get("content_type", JSON), rows=rows))
    return out


def valid_cases(kind: Kind, n: int) -> list[Case]:
    """Valid requests in every input format: 200 with one prediction row per input row."""
    r = kind.rng
    out = []
    cols = list(kind.columns)
    for i in range(n):
        k = int(r.integers(1, 4 if kind.name == "designer" else 40))
        rows = kind.rows(k)
        fmt = ("inputs", "instances", "split", "split_permuted", "split_extra", "records", "records_extra",
               "floats", "csv")[i % 9]
        ct = JSON
        if fmt == "inputs":
            payload = {"inputs": rows}
        elif fmt == "instances":
            payload = {"instances": rows}
        elif fmt == "split":
            payload = {"dataframe_split": {"columns": cols, "data": rows}}
        elif fmt == "split_permuted":
            perm = r.permutation(len(cols))
            payload = {"dataframe_split": {"columns": [cols[j] for j in perm], "data": [[row[j] for j in perm]
                                                                                         for row in rows]}}
        elif fmt == "split_extra":  # extra named columns stay accepted (not for the designer: it refuses them)
            extra = ["note", "zg", "batch"][: int(r.integers(1, 4))] if kind.name != "designer" else []
            payload = {"dataframe_split": {"columns": cols + extra,
                                           "data": [row + [f"x{j}" if e == "note" else 3.5 for j, e in enumerate(extra)]
                                                    for row in rows]}}
        elif fmt == "records":
            payload = {"dataframe_records": [dict(zip(cols, row)) for row in rows]}
        elif fmt == "records_extra":
            extra = {"comment": "ok", "zg": 3.0} if kind.name != "designer" else {}
            payload = {"dataframe_records": [{**dict(zip(cols, row)), **extra} for row in rows]}
        elif fmt == "floats":
            payload = {"inputs": [[float(v) for v in row] for row in rows]}
        else:
            ct = "text/csv"
            text = ",".join(cols) + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
            out.append(Case(f"valid: csv, {k} rows", text.encode(), 200, (), ct,
                            rows=None if kind.name == "designer" else k))
            continue
        if kind.name == "designer" and fmt == "csv":
            continue
        out.append(Case(f"valid: {fmt}, {k} rows", _body(_with(payload, kind.params())), 200, (), ct,
                        rows=None if kind.name == "designer" else k))
    return out


def _place(kind: Kind, value, raw: str | None = None, fmt: str = "inputs", column: int | None = None):
    """A request of a few valid rows with `value` put at a random (row, column): (body, row, column name)."""
    r = kind.rng
    rows = kind.rows(int(r.integers(1, 4 if kind.name == "designer" else 12)))
    i = int(r.integers(len(rows)))
    c = int(r.integers(len(kind.columns))) if column is None else column
    marker = "__CELL__"
    rows[i][c] = marker
    cols = list(kind.columns)
    payload = {"inputs": rows} if fmt == "inputs" else {"dataframe_split": {"columns": cols, "data": rows}}
    text = json.dumps(_with(payload, kind.params()))
    text = text.replace(f'"{marker}"', raw if raw is not None else json.dumps(value))
    return text.encode(), i, cols[c]


def value_cases(kind: Kind) -> list[Case]:
    """NaN and Infinity, nulls, strings, booleans, huge numbers at random cells."""
    out = []
    r = kind.rng
    designer_kind = kind.name == "designer"
    for fmt in ("inputs", "split"):
        for raw, what in (("NaN", "missing"), ("null", "missing"), ("Infinity", "infinite"), ("-Infinity", "infinite"),
                          ("1e400", "infinite"), ("-1e999", "infinite")):
            for _ in range(3):
                body, i, c = _place(kind, None, raw, fmt)
                if designer_kind:
                    needles = (f"row {i}", c) if what == "missing" else (f"row {i}",)
                else:
                    needles = (what, f"row {i}", f"column {c}")
                out.append(Case(f"{what} {raw} ({fmt})", body, 400, needles))
        for s in ("x", "one", "", "nan", "1.2.3", "true", "b00", "\u00e9t\u00e9", "0x1", "--1"):
            body, i, c = _place(kind, s, None, fmt)
            needles = (f"row {i}", c, repr(s)) if designer_kind else ("non-numeric", repr(s), f"row {i}", f"column {c}")
            if designer_kind and c in ("d1", "d2"):
                needles = (f"row {i}", c)
            elif designer_kind and s == "nan":  # the designer reads "nan" as a number: not finite
                needles = (f"row {i}", c, "nan")
            out.append(Case(f"string {s!r} ({fmt})", body, 400, needles))
    # numeric strings are read as numbers (as the in-process model does): valid
    if not designer_kind:
        for _ in range(4):
            rows = kind.rows(3)
            out.append(Case("numeric strings", _body({"inputs": [[str(v) for v in row] for row in rows]}), 200, rows=3))
    # a very long string comes back cut short, not whole
    body, i, c = _place(kind, "y" * 200_000)
    out.append(Case("string of 200,000 characters", body, 400, (f"row {i}",), rows=None))
    # huge numbers
    if kind.name in ("forward", "size_agnostic"):
        for raw in ("1e308", "-1e308", "1000000000000000000000000000000", "9223372036854775808", "-3", "2",
                    "0.5", "1.0000001", "1e-320", "-0.0001"):
            body, i, c = _place(kind, None, raw, column=int(r.integers(42)))
            out.append(Case(f"bit = {raw}", body, 400, ("0 or 1", f"row {i}", f"column {c}")))
    elif kind.name == "generator":
        for raw in ("1e300", "-1e300", "1e39", "1000000000000000000000000000000000000000000"):
            body, i, c = _place(kind, None, raw)
            out.append(Case(f"huge {raw}", body, 400, ("too large", f"row {i}", f"column {c}")))
        for raw in ("1e6", "-1e6", "12345.678", "1e-300"):
            body, _, _ = _place(kind, None, raw)
            out.append(Case(f"large but fine {raw}", body, 200))
    else:
        for raw in ("1e300", "-1e300", "1000000000000000000000000000000", "5", "-5"):
            body, i, c = _place(kind, None, raw, column=int(r.integers(4)))
            out.append(Case(f"target {raw}", body, 400, (f"row {i}", c, "physically reachable")))
    # booleans
    if kind.name == "forward":
        for _ in range(8):
            rows = kind.rows(int(r.integers(1, 6)))
            out.append(Case("bits as booleans", _body({"inputs": [[bool(v) for v in row] for row in rows]}), 200,
                            rows=len(rows)))
    if kind.name == "size_agnostic":
        for _ in range(4):
            rows = kind.rows(int(r.integers(1, 6)))
            out.append(Case("bits as booleans", _body({"dataframe_records": [
                {**{c: bool(v) for c, v in zip(BIT_COLUMNS, row[:42])}, "d1": row[42], "d2": row[43]} for row in rows]}),
                200, rows=len(rows)))
        for raw in ("true", "false"):
            for col in (42, 43):
                body, i, c = _place(kind, None, raw, column=col)
                out.append(Case(f"size = {raw}", body, 400, (c, "even integers")))
    if kind.name == "generator":
        for _ in range(4):
            body, _, _ = _place(kind, None, "true")
            out.append(Case("boolean value", body, 200))
    if designer_kind:
        for col in (4, 5):  # true is 1: with the other size 2, no valid request (1 x 1 is the unit cell)
            body, i, c = _place(kind, None, "true", column=col)
            body = body.replace(b"1, 1]", b"2, 2]").replace(b"true, 1]", b"true, 2]").replace(b"1, true]", b"2, true]")
            out.append(Case(f"boolean size {c} = true", body, 400, (f"row {i}", c)))
        body, i, c = _place(kind, None, "true", column=0)
        out.append(Case("boolean E11 = true", body, 400, (f"row {i}", "E11", "physically reachable")))
    return out


def shape_cases(kind: Kind) -> list[Case]:
    """Ragged and nested arrays, wrong and missing and duplicate columns."""
    r = kind.rng
    out = []
    n = len(kind.columns)
    cols = list(kind.columns)
    wrong = "unnamed rows must have" if kind.name == "designer" else "wrong number of columns"
    for _ in range(6):
        rows = kind.rows(4)
        j = int(r.integers(4))
        rows[j] = rows[j][: int(r.integers(1, n))]
        out.append(Case("ragged rows", _body(_with({"inputs": rows}, kind.params())), 400, ("inhomogeneous",)))
    for _ in range(3):
        rows = kind.rows(3)
        rows[1] = rows[1] + [0]
        out.append(Case("ragged: one row too long", _body({"inputs": rows}), 400, ("inhomogeneous",)))
    for _ in range(4):
        rows = kind.rows(2)
        rows[0][int(r.integers(n))] = [0, 1]
        out.append(Case("a cell holding a list", _body({"inputs": rows}), 400))
    for depth in (3, 4):
        rows = kind.rows(2)
        nested = [rows] if depth == 3 else [[rows]]
        needles = () if kind.name == "designer" else ("2-D",)
        out.append(Case(f"{depth}-D array", _body(_with({"inputs": nested}, kind.params())), 400, needles))
    out.append(Case("3-D array of one-value cells", _body({"inputs": [[[v] for v in kind.rows(1)[0]]]}), 400,
                    () if kind.name == "designer" else ("2-D",)))
    for width in sorted({0, 1, n - 1, n + 1, 2 * n, 3}):
        if width == n:
            continue
        rows = [[1] * width for _ in range(3)]
        needles = (wrong,) if width else ()
        out.append(Case(f"{width} unnamed columns", _body({"inputs": rows}), 400, needles))
        out.append(Case(f"{width} unnamed columns (instances)", _body({"instances": rows}), 400, needles))
    for _ in range(12):
        rows = kind.rows(3)
        drop = sorted(r.choice(n, size=int(r.integers(1, min(n, 6) + 1)), replace=False).tolist())
        keep = [j for j in range(n) if j not in drop]
        payload = {"dataframe_split": {"columns": [cols[j] for j in keep], "data": [[row[j] for j in keep] for row in rows]}}
        out.append(Case(f"missing column(s) {[cols[j] for j in drop][:3]}", _body(_with(payload, kind.params())), 400,
                        ("missing input column", cols[drop[0]])))
    for _ in range(4):
        rows = kind.rows(2)
        drop = int(r.integers(n))
        recs = [{c: v for j, (c, v) in enumerate(zip(cols, row)) if j != drop} for row in rows]
        out.append(Case(f"records missing {cols[drop]}", _body(_with({"dataframe_records": recs}, kind.params())), 400,
                        ("missing input column", cols[drop])))
    for _ in range(3):
        rows = kind.rows(2)
        dup = int(r.integers(n))
        payload = {"dataframe_split": {"columns": cols + [cols[dup]], "data": [row + [row[dup]] for row in rows]}}
        needles = ("duplicate",) if kind.name != "designer" else ()
        out.append(Case(f"duplicate column {cols[dup]}", _body(_with(payload, kind.params())), 400, needles))
    # named columns, no rows: a valid empty request (designer: "no requests")
    payload = {"dataframe_split": {"columns": cols, "data": []}}
    if kind.name == "designer":
        out.append(Case("no rows", _body(payload), 400, ("no requests",)))
    else:
        out.append(Case("no rows", _body(payload), 200, rows=0))
    return out


def kind_cases(kind: Kind) -> list[Case]:
    """Checks of the kind's own values: designs, sizes, designer requests and params."""
    r = kind.rng
    out = []
    if kind.name in ("forward", "size_agnostic"):
        for _ in range(24):  # too few beams to connect 16 nodes
            rows = kind.rows(int(r.integers(1, 6)))
            i = int(r.integers(len(rows)))
            bits = np.zeros(42, int)
            bits[r.choice(42, size=int(r.integers(0, 11)), replace=False)] = 1
            rows[i][:42] = bits.tolist()
            out.append(Case("disconnected design", _body({"inputs": rows}), 400,
                            ("not all 16 nodes are connected", f"row {i}")))
    if kind.name == "size_agnostic":
        for col in (42, 43):
            name = kind.columns[col]
            for v in (3, 1, 0, -2, 22, 40, 21, 1000, 4.5, 2.0001):
                rows = kind.rows(int(r.integers(2, 6)))
                i = int(r.integers(len(rows)))
                rows[i][col] = v
                needles = (f"{name} must be an integer",) if v != int(v) else (f"{name} must be even", f"row {i}")
                out.append(Case(f"{name} = {v}", _body({"inputs": rows}), 400, needles))
            rows = kind.rows(1)
            rows[0][col] = 3
            out.append(Case(f"{name} = 3, one row", _body({"inputs": rows}), 400, (f"{name} must be even", "row 0")))
    if kind.name == "designer":
        one = kind.rows(1)[0]
        split = lambda rows, params=None: _body(_with({"dataframe_split": {"columns": list(DESIGNER_COLUMNS),  # noqa: E731
                                                                          "data": rows}}, params))
        cheap = {"n_candidates": 200, "top_k": 1}
        for value, needles in ((0.9, ("E11 = 0.9", "physically reachable")), (0.0, ("E11", "physically reachable")),
                               (-0.1, ("E11", "physically reachable"))):
            out.append(Case(f"E11 = {value}", split([[value, *one[1:]]], cheap), 400, ("row 0", *needles)))
        for value in (5.0, -5.0):
            out.append(Case(f"nu12 = {value}", split([[*one[:2], value, *one[3:]]], cheap), 400, ("row 0", "nu12")))
        for d1, d2, needle in ((3, 4, "d1 must be an even integer"), (4, 24, "d2"), (1, 2, "d"), (0, 0, "d1"),
                               (22, 2, "d1"), (2.5, 2, "d1"), (-2, 2, "d1")):
            out.append(Case(f"sizes {d1} x {d2}", split([[*one[:4], d1, d2]], cheap), 400, ("row 0", needle)))
        for params, needles in (({"n_candidates": 10**7}, ("n_candidates", "above the cap of 200000")),
                                ({"n_candidates": 0}, ("n_candidates",)), ({"n_candidates": -5}, ("n_candidates",)),
                                ({"n_candidates": 2.5}, ("n_candidates",)), ({"n_candidates": "many"}, ("n_candidates",)),
                                ({"top_k": 10**6}, ("top_k",)), ({"top_k": -1}, ("top_k",)), ({"seed": -1}, ("seed",)),
                                ({"mse_threshold": 0}, ("mse_threshold",)), ({"mse_threshold": -1}, ("mse_threshold",)),
                                ({"bogus": 1}, ("unknown param", "bogus")), ({"method": "magic"}, ("method",)),
                                ({"objective": "best"}, ("objective",)), ({"options": "{not json"}, ("options",)),
                                ({"options": "[1, 2]"}, ("options",)), ({"budget_seconds": -1}, ("budget_seconds",)),
                                ({"budget_seconds": 10**6}, ("budget_seconds",)), ({"budget_fe": -3}, ("budget_fe",)),
                                ({"budget_fe": 10**9}, ("budget_fe",)), ({"tolerance_E": -0.1}, ("tolerance",)),
                                ({"method": "cvae", "options": "{\"bogus_option\": 1}"}, ("options",))):
            out.append(Case(f"param {params}", split([one], {**cheap, **params}), 400, needles))
        for extra, needles in (({"n_candidates": 10**7}, ("n_candidates", "above the cap")),
                               ({"top_k": 1000}, ("top_k",)), ({"seed": -4}, ("seed",)),
                               ({"mse_threshold": -2}, ("mse_threshold",)), ({"colour": 1}, ("unknown input column", "colour")),
                               ({"top_k": "abc"}, ("top_k",))):
            rec = {**dict(zip(DESIGNER_COLUMNS, one)), **extra}
            out.append(Case(f"row option {extra}", _body(_with({"dataframe_records": [rec]}, cheap)), 400, needles))
        rows = kind.rows(designer.MAX_REQUESTS + 1)
        out.append(Case("21 requests", split(rows, cheap), 400, ("21 requests in one call", "at most 20")))
        out.append(Case("a row as a nested list", _body({"dataframe_records": [{**dict(zip(DESIGNER_COLUMNS, one)),
                                                                               "E22": [0.03, 0.04]}]}), 400, ("E22",)))
    return out


def size_cases(kind: Kind) -> list[Case]:
    """Above the row cap and the body-size cap: refused with 400 / 413 naming the cap, in seconds."""
    cap = pyfuncs.MAX_ROWS if kind.name != "designer" else designer.MAX_REQUESTS
    body_cap = pyfuncs.MAX_BODY_BYTES if kind.name != "designer" else designer.MAX_BODY_BYTES
    n = len(kind.columns)
    out = []
    one = b"[" + b", ".join([b"1"] * n) + b"]"
    # one million rows of one value (4 MB: parsed, then refused by the row cap; the designer: 20 rows)
    million = b'{"inputs": [' + b", ".join([b"[1]"] * 1_000_000) + b"]}"
    if len(million) <= body_cap:
        needles = ("1,000,000 rows", f"{cap:,}") if kind.name != "designer" else ("1000000 requests", "at most 20")
        out.append(Case("one million rows of one value", million, 400, needles))
    else:
        out.append(Case("one million rows of one value", million, 413, ("above the cap",)))
    # one million full rows: above the body cap, refused before it is parsed
    full = b'{"inputs": [' + b", ".join([one] * 1_000_000) + b"]}"
    out.append(Case(f"one million rows of {n} values ({len(full) / 1e6:.0f} MB)", full, 413,
                    ("above the cap", f"{body_cap:,} bytes")))
    # a body just above the cap (padding in an extra column's string)
    pad = body_cap + 1024
    above = b'{"dataframe_records": [{"note": "' + b"z" * pad + b'"}]}'
    out.append(Case(f"body above the cap ({len(above):,} bytes)", above, 413, ("above the cap",)))
    if kind.name != "designer":
        # rows above the row cap in a body under the size cap
        rows = cap + 1
        body = b'{"inputs": [' + b", ".join([one] * rows) + b"]}"
        if len(body) <= body_cap:
            out.append(Case(f"{rows:,} rows ({len(body) / 1e6:.0f} MB)", body, 400, (f"{rows:,} rows", f"{cap:,}")))
    return out


@functools.lru_cache(maxsize=None)
def corpus(kind_name: str, seed: int = 0) -> list[Case]:
    """All fuzz cases of one served kind (deterministic for a seed)."""
    kind = Kind(kind_name, COLUMNS[kind_name], np.random.default_rng([seed, KINDS.index(kind_name)]))
    cases = corpus_file_cases(kind) + value_cases(kind) + shape_cases(kind) + kind_cases(kind) + size_cases(kind)
    fill = MIN_CASES + 10 - len(cases)
    cases += valid_cases(kind, max(fill, 30 if kind_name == "designer" else 45))
    return cases


# --- the servers ----------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def send(url: str, case: Case, timeout: float = 120.0) -> tuple[int, str]:
    """POST the case's body to url/invocations (its Content-Type, or none); (status, message or body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {} if case.content_type is None else {"Content-Type": case.content_type}
        conn.putrequest("POST", "/invocations", skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(case.body)))
        conn.endheaders()
        conn.send(case.body)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, text
    finally:
        conn.close()


def _message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return body.get("message", text) if isinstance(body, dict) else text


@pytest.fixture(scope="module")
def servers(mlflow_store, tiny_keras, tiny_surrogates, model_server):
    """The four served kinds, one real server each (started together), with their RSS after start-up."""
    root = mlflow_store
    tracking.experiment("test-fuzz")
    uris = {}
    for kind, n_in, n_out, act in (("forward", 42, 4, None), ("size_agnostic", 44, 4, None),
                                   ("generator", 12, 42, "sigmoid")):
        path = tiny_keras(root / f"{kind}.keras", n_in, n_out, hidden=16, activation="tanh", output_activation=act,
                          seed=len(kind))
        with mlflow.start_run():
            uris[kind] = pyfuncs.log_model(kind, path).model_uri
    with mlflow.start_run():
        uris["designer"] = designer.log_designer(tiny_surrogates(root)).model_uri
    env = model_server.env(tracking.configure())
    started = {}
    try:
        for kind in KINDS:
            started[kind] = model_server.Server(uris[kind], root / f"{kind}.log", env)
        for server in started.values():
            server.wait(180)
        yield {k: {"server": s, "rss_mb": _rss_mb(s.proc.pid)} for k, s in started.items()}
    finally:
        for server in started.values():
            server.stop()


def _valid_request(kind: str) -> Case:
    k = Kind(kind, COLUMNS[kind], np.random.default_rng(99))
    return Case("valid", _body(_with({"inputs": k.rows(2)}, k.params())), 200)


# --- the tests -------------------------------------------------------------------------------------


def test_the_corpus_has_300_cases_per_kind_each_with_an_expected_status():
    for kind in KINDS:
        cases = corpus(kind)
        assert len(cases) >= MIN_CASES, (kind, len(cases))
        assert all(c.status in (200, 400, 413, 415) for c in cases)
        assert sum(c.status == 200 for c in cases) >= 30, kind
        assert {c.status for c in cases} >= {200, 400, 413, 415}, kind
        names = " ".join(c.name for c in cases)
        for family in ("json", "content type", "NaN", "Infinity", "string", "ragged", "3-D", "missing column",
                       "boolean", "huge" if kind == "generator" else "", "empty body", "one million rows",
                       "body above the cap"):
            assert family in names, (kind, family)


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz_corpus_gets_the_expected_status_and_message(servers, kind):
    server, rss0 = servers[kind]["server"], servers[kind]["rss_mb"]
    cases = corpus(kind)
    counts: dict[tuple[int, int], int] = {}
    failures = []
    peak = rss0
    t0 = time.perf_counter()
    for case in cases:
        try:
            status, text = send(server.url, case)
        except (OSError, http.client.HTTPException) as e:
            status, text = -1, f"{type(e).__name__}: {e}"
        counts[(case.status, status)] = counts.get((case.status, status), 0) + 1
        message = _message(text)
        problem = None
        if status != case.status:
            problem = f"status {status}, expected {case.status}"
        elif status >= 400:
            missing = [n for n in case.needles if n not in message]
            if missing:
                problem = f"message lacks {missing}"
            elif len(message) > 2 * pyfuncs.MAX_MESSAGE:
                problem = f"message of {len(message):,} characters"
        elif case.rows is not None:
            got = json.loads(text)["predictions"]
            if len(got) != case.rows:
                problem = f"{len(got)} prediction rows, expected {case.rows}"
        if problem:
            failures.append(f"{case.name}: {problem}: {message[:300]!r}")
        assert server.proc.poll() is None, f"server died after {case.name!r}:\n{server.log_tail()}"
        peak = max(peak, _rss_mb(server.proc.pid))
    elapsed = time.perf_counter() - t0
    table = ", ".join(f"expected {e} -> got {g}: {n}" for (e, g), n in sorted(counts.items()))
    print(f"\n{kind}: {len(cases)} cases in {elapsed:.1f} s; {table}; RSS {rss0:.0f} MB after start-up, "
          f"peak {peak:.0f} MB (+{peak - rss0:.0f} MB)")
    assert not [g for (_, g) in counts if g >= 500], f"5xx answers: {failures[:20]}"
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])
    # still up, still right
    status, text = send(server.url, _valid_request(kind))
    assert status == 200, text[:500]
    assert peak - rss0 <= MEMORY_BOUND_MB, f"RSS grew by {peak - rss0:.0f} MB (bound {MEMORY_BOUND_MB} MB)"


def test_servers_listen_on_127_0_0_1_only(servers):
    """The test servers bind the loopback address only (nothing listens on other addresses)."""
    for kind, entry in servers.items():
        pids = [entry["server"].proc.pid] + [c.pid for c in psutil.Process(entry["server"].proc.pid).children(True)]
        listening = []
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            listening += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
        assert listening, kind
        assert all(addr.ip == "127.0.0.1" for addr in listening), (kind, listening)


def test_make_serve_and_ui_bind_127_0_0_1():
    """`make serve` and `make ui` bind 127.0.0.1 unless told otherwise (HOST=...)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MAKEFLAGS": ""}
    for target, flag in (("serve", "-h"), ("ui", "--host")):
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=root, env=env, capture_output=True,
                             text=True, timeout=60).stdout
        out = out.replace("\\\n", " ")  # a recipe continued over lines is one command
        line = next(ln for ln in out.splitlines() if "mlflow" in ln and (" serve" in ln or " ui" in ln))
        assert re.search(rf"{flag} 127\.0\.0\.1\b", line), line
        other = subprocess.run(["make", "-n", "-o", ".venv/.installed", target, "HOST=0.0.0.0"], cwd=root, env=env,
                               capture_output=True, text=True, timeout=60).stdout
        assert f"{flag} 0.0.0.0" in other, other


def test_fast_and_general_input_paths_agree_in_process():
    """All-numeric input is checked as one array, other input column by column: for the same values
    both give the same array or the same message (random rows with random bad cells)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    rng = np.random.default_rng(11)

    def outcome(kind, data):
        try:
            return pyfuncs.validate_input(kind, data, latent=8).tolist()
        except MlflowException as e:
            return e.message

    checked = 0
    for kind in ("forward", "size_agnostic", "generator"):
        k = Kind(kind, COLUMNS[kind], rng)
        for _ in range(40):
            x = np.asarray(k.rows(int(rng.integers(1, 8))), dtype=float)
            for _ in range(int(rng.integers(0, 3))):
                i, j = int(rng.integers(len(x))), int(rng.integers(x.shape[1]))
                x[i, j] = rng.choice([2.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 3.0, 22.0, 1e300, 0.0, 1.0])
            frame = pd.DataFrame(x, columns=list(k.columns))
            forms = [x, x.tolist(), frame, frame.astype(object), frame[list(k.columns)[::-1]].assign(extra="e")]
            results = [outcome(kind, f) for f in forms]
            assert all(r == results[0] for r in results), (kind, results)
            checked += 1
    assert checked == 120
