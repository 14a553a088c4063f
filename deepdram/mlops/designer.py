"""`deepdram-designer`: the whole inverse-design procedure (deepdram.design) as an MLflow pyfunc.

The logged model bundles COPIES of the space's champion Keras models (the lattice: generator,
size-agnostic, unit-cell forward) as artifacts plus a copy of the deepdram package, so the served
model needs neither the registry nor an installed deepdram at request time:

    mlflow models serve -m models:/deepdram-designer@champion --env-manager local

Input: one row per request, columns E11, E22, nu12, nu21 (target, E/Eb and Poisson's ratios),
d1, d2 (even in [2, 20], or both 1 for a unit cell), and optionally n_candidates, top_k, seed,
mse_threshold (per-row values override the `params` of the call). Params (``"params": {...}``
in the JSON body): n_candidates (default 100000, at most MAX_CANDIDATES), top_k (default 20, at
most MAX_TOP_K), seed (0), mse_threshold (0.1); method (cvae, backprop, active, ga, topopt,
random; default cvae) with its options as a JSON object string (`options`, e.g.
'{"n_starts": 500}'); objective (mse, scaled); tolerance_E (relative, 0.10) and tolerance_nu
(absolute, 0.05) of the `within_tolerance` test; budget_seconds and budget_fe per request (0: no
limit; at most MAX_BUDGET_SECONDS and MAX_BUDGET_FE). At most MAX_REQUESTS rows per call.

Output: the ranked FE-verified designs of every request, one row each: request (row index of the
input), rank, b00..b41, d1, d2, predicted E11..nu21, fe_E11..fe_nu21, mse_pred, mse_fe, vm1, vm2,
vm, within_threshold, pareto, best_effort (True when no candidate met the threshold: the closest
designs are returned, flagged), and the request's counts candidates, valid, distinct, accepted.

Bad requests (missing or non-numeric fields, odd or out-of-range sizes, n_candidates above the
cap, targets outside the physically reachable range) raise MlflowException(INVALID_PARAMETER_VALUE),
which the server answers with HTTP 400 and the message.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from deepdram.design import pipeline
from deepdram.design.requests import MSE_THRESHOLD, N_CANDIDATES, TOP_K, DesignRequest, parse_request
from deepdram.errors import InputError
from deepdram.mlops.catalogue import DESIGNER
from deepdram.spaces.registry import get as get_space

NAME = DESIGNER.name
SPACE = get_space("lattice")
MAX_CANDIDATES = 200_000  # per request when served (the paper used 1e5)
MAX_TOP_K = 200
MAX_REQUESTS = 20
MAX_BUDGET_SECONDS = 600.0
MAX_BUDGET_FE = 20_000
MAX_BODY_BYTES = 1 * 2**20  # served request bodies (413 above): 20 requests take a few kB
INPUT_COLUMNS = SPACE.properties + SPACE.conditions
OPTIONAL_COLUMNS = ("n_candidates", "top_k", "seed", "mse_threshold")
ROW_PARAMS = {"n_candidates": N_CANDIDATES, "top_k": TOP_K, "seed": 0, "mse_threshold": MSE_THRESHOLD}
PARAM_DEFAULTS = {**ROW_PARAMS, "method": "cvae", "objective": "mse", "tolerance_E": 0.10, "tolerance_nu": 0.05,
                  "budget_seconds": 0.0, "budget_fe": 0, "options": "{}"}
COUNT_COLUMNS = ("candidates", "valid", "distinct", "accepted")
OUTPUT_COLUMNS = ("request", *pipeline.result_columns(SPACE), *COUNT_COLUMNS)


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (a huge string must not come back whole in the message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _rows(model_input: Any) -> pd.DataFrame:
    """The input as a DataFrame with named columns (values not yet checked)."""
    if isinstance(model_input, dict):
        model_input = [model_input] if not any(isinstance(v, (list, tuple, np.ndarray)) for v in model_input.values()) \
            else pd.DataFrame(model_input)
    if isinstance(model_input, (list, tuple)):
        if model_input and all(isinstance(r, dict) for r in model_input):
            model_input = pd.DataFrame(list(model_input))
        else:
            rows = [model_input] if model_input and not isinstance(model_input[0], (list, tuple)) else model_input
            if any(len(r) != len(INPUT_COLUMNS) for r in rows):
                raise _bad(f"unnamed rows must have {len(INPUT_COLUMNS)} values ({', '.join(INPUT_COLUMNS)})")
            model_input = pd.DataFrame(list(rows), columns=list(INPUT_COLUMNS))
    if isinstance(model_input, np.ndarray):
        arr = np.atleast_2d(model_input)
        if arr.ndim != 2:
            raise _bad(f"input must be a table (2-D) of rows with {', '.join(INPUT_COLUMNS)}; got an array of "
                       f"shape {model_input.shape}")
        if arr.shape[1] != len(INPUT_COLUMNS):
            raise _bad(f"unnamed rows must have {len(INPUT_COLUMNS)} values ({', '.join(INPUT_COLUMNS)})")
        model_input = pd.DataFrame(arr, columns=list(INPUT_COLUMNS))
    if not isinstance(model_input, pd.DataFrame):
        raise _bad(f"unsupported input type {type(model_input).__name__}: send rows with "
                   f"{', '.join(INPUT_COLUMNS)}")
    df = model_input
    if not all(isinstance(c, str) for c in df.columns) and df.shape[1] == len(INPUT_COLUMNS):
        df = df.set_axis(list(INPUT_COLUMNS), axis=1)
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise _bad(f"missing input column(s) {', '.join(missing)}: each request needs "
                   f"{', '.join(INPUT_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    dup = sorted({str(c) for c in df.columns if list(df.columns).count(c) > 1})
    if dup:
        raise _bad(f"duplicate input column(s): {', '.join(dup)}")
    unknown = [c for c in df.columns if c not in INPUT_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise _bad(f"unknown input column(s) {', '.join(map(str, unknown))}; allowed: "
                   f"{', '.join(INPUT_COLUMNS + OPTIONAL_COLUMNS)}")
    if len(df) == 0:
        raise _bad("no requests: send at least one row")
    if len(df) > MAX_REQUESTS:
        raise _bad(f"{len(df)} requests in one call; at most {MAX_REQUESTS}")
    return df.reset_index(drop=True)


def _request_params(params: dict) -> dict:
    """The call's method, objective, tolerance, budget and options as request keys (400 naming a bad one)."""
    import json

    from deepdram.errors import check_number

    p = {**PARAM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    try:
        options = json.loads(p["options"]) if isinstance(p["options"], str) else p["options"]
    except ValueError as e:
        raise _bad(f"param options must be a JSON object of method options; {e}") from None
    if not isinstance(options, dict):
        raise _bad(f"param options must be a JSON object of method options; got {p['options']!r}")
    out = {"method": p["method"], "objective": p["objective"], "options": options,
           "tolerance": {"E": p["tolerance_E"], "nu": p["tolerance_nu"]}}
    for key, cap in (("budget_seconds", MAX_BUDGET_SECONDS), ("budget_fe", MAX_BUDGET_FE)):
        try:
            v = check_number(p[key], f"param {key}")
        except InputError as e:
            raise _bad(str(e)) from None
        if v < 0 or v > cap:
            raise _bad(f"param {key} must be in [0, {cap:g}] (0: no limit); got {p[key]!r}")
        if v > 0:
            out[key] = v
    return out


def parse_requests(model_input: Any, params: dict | None = None) -> list[DesignRequest]:
    """Checked DesignRequests from the served input and params (MlflowException 400 if bad)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAM_DEFAULTS))
    if unknown:
        raise _bad(f"unknown param(s) {unknown}; allowed: {sorted(PARAM_DEFAULTS)}")
    base = {**ROW_PARAMS, **{k: v for k, v in params.items() if k in ROW_PARAMS and v is not None},
            **_request_params(params)}
    df = _rows(model_input)
    out = []
    for i, row in enumerate(df.to_dict("records")):
        spec = {k: v for k, v in base.items()}
        for k in OPTIONAL_COLUMNS:
            if k in row and row[k] is not None and not (isinstance(row[k], float) and np.isnan(row[k])):
                spec[k] = row[k]
        for c in INPUT_COLUMNS:
            v = row[c]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                raise _bad(f"row {i}: {c} is missing (null)")
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise _bad(f"row {i}: {c} must be a number; got {_short(row[c])}") from None
            row[c] = v
        spec |= {"target": [row[c] for c in SPACE.properties], **{c: row[c] for c in SPACE.conditions},
                 "name": f"request{i}"}
        try:
            out.append(parse_request(spec, f"row {i}", max_candidates=MAX_CANDIDATES, max_top_k=MAX_TOP_K,
                                     space=SPACE))
        except InputError as e:
            text = str(e)
            for key in ("method", "objective", "options", "tolerance"):
                text = text.replace(f"row {i}.{key}", f"param {key}")
            raise _bad(text) from None
    return out


def result_frame(results: list[pipeline.DesignResult]) -> pd.DataFrame:
    """One table of all requests' ranked designs, with the request index and counts."""
    parts = []
    for i, r in enumerate(results):
        t = r.table.copy()
        t.insert(0, "request", i)
        for c in COUNT_COLUMNS:
            t[c] = int(r.summary[c])
        parts.append(t)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    return out[list(OUTPUT_COLUMNS)]


class DesignerPyfunc(mlflow.pyfunc.PythonModel):
    """Inverse designer: requests in, ranked FE-verified designs out."""

    def load_context(self, context):
        from deepdram.mlops.pyfuncs import install_request_guard, serving

        self.models = pipeline.load_surrogates(context.artifacts, SPACE)
        self.variances = dict((getattr(context, "model_config", None) or {}).get("variances") or {})
        if serving():  # 413 above MAX_BODY_BYTES, 415 without a Content-Type, 400 for MLflow's parse errors
            install_request_guard(MAX_BODY_BYTES)

    def predict(self, context, model_input, params=None):
        reqs = parse_requests(model_input, params)
        if getattr(self, "models", None) is None:
            self.load_context(context)
        out = []
        for r in reqs:
            variances = None
            if r.objective == "scaled":
                variances = self.variances.get("cells" if r.conditions is None else "tilings")
                if variances is None:
                    raise _bad("param objective 'scaled' needs the train-split variances, which this designer "
                               "was logged without")
            out.append(pipeline.design(SPACE, self.models, r, variances=variances))
        return result_frame(out)


def signature():
    """Params schema (PARAM_DEFAULTS) and the output columns; inputs are checked by the model itself
    (named columns, row-level messages)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    types = {"request": "long", "rank": "long", "within_threshold": "boolean", "within_tolerance": "boolean",
             "pareto": "boolean", "best_effort": "boolean",
             **{c: "long" for c in (*SPACE.variables, *SPACE.conditions, *COUNT_COLUMNS)}}
    outputs = Schema([ColSpec(types.get(c, "double"), c) for c in OUTPUT_COLUMNS])
    kind = {str: "string", int: "long", float: "double"}
    params = ParamSchema([ParamSpec(k, kind[type(v)], v) for k, v in PARAM_DEFAULTS.items()])
    return ModelSignature(inputs=None, outputs=outputs, params=params)


MODEL_SCRIPT = """\
# deepdram: the inverse designer pyfunc (MLflow model from code).
import mlflow.models

from deepdram.mlops.designer import DesignerPyfunc

mlflow.models.set_model(DesignerPyfunc())
"""


ROLES = ("generator", "conditioned", "forward")


def log_designer(keras_paths: dict, name: str = "designer", metadata: dict | None = None,
                 variances: dict | None = None):
    """Log the designer with copies of the space's .keras files (roles generator, conditioned,
    forward) into the active run; `variances` ({"cells": [...], "tilings": [...]}, the train
    splits' property variances) enable the scaled objective. Returns MLflow's ModelInfo."""
    from deepdram.mlops.pyfuncs import _package_copy, pip_requirements
    from deepdram.mlops.tracking import configure

    missing = [k for k in ROLES if k not in keras_paths or not Path(keras_paths[k]).is_file()]
    if missing:
        raise InputError(f"log_designer: missing .keras file(s) for {', '.join(missing)}")
    configure()
    meta = {"deepdram_kind": "designer", "deepdram_inputs": list(INPUT_COLUMNS),
            "deepdram_optional_inputs": list(OPTIONAL_COLUMNS), "max_candidates": MAX_CANDIDATES,
            "max_top_k": MAX_TOP_K, "max_requests": MAX_REQUESTS, **(metadata or {})}
    with tempfile.TemporaryDirectory(prefix="deepdram-designer-") as tmp:
        code = _package_copy(Path(tmp))
        script = Path(tmp) / "deepdram_designer_model.py"
        script.write_text(MODEL_SCRIPT)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=name, python_model=str(script),
                artifacts={k: str(Path(keras_paths[k]).resolve()) for k in ROLES},
                signature=signature(), pip_requirements=pip_requirements(("scipy", "manifold3d")),
                code_paths=[str(code)], metadata=meta,
                model_config={"variances": {k: [float(x) for x in v] for k, v in (variances or {}).items()}})
