"""MLflow pyfunc wrappers for the Keras models of a design space: served models validate their input.

Three kinds of model, all Keras 3 models saved as one `.keras` file, in physical units (the
lattice space's columns shown):

=============  =====================================================  ==========================
kind           input columns                                          output columns
=============  =====================================================  ==========================
forward        b00..b41 (0/1, a valid design)                         E11, E22, nu12, nu21
size_agnostic  b00..b41, d1, d2 (even integers in [2, 20])            E11, E22, nu12, nu21
generator      E11, E22, nu12, nu21, z0..z{L-1} (latent N(0, 1))      b00..b41 (probabilities)
=============  =====================================================  ==========================

The generator's latent size L is the model's own (its input width minus the properties).

`predict` accepts a pandas DataFrame (named columns in any order, extra columns ignored; or
unnamed columns in the order above), a numpy array, or a list of rows. Invalid input raises
`MlflowException(INVALID_PARAMETER_VALUE)`, which `mlflow models serve` returns as HTTP 400 with
the message, e.g. ``design entries must be 0 or 1: row 0 column b05 is 2``.

Why the logged signature has no input schema by default: MLflow enforces an input schema before
`predict` runs. A named column schema makes the server refuse ``{"inputs": [[...]]}`` (it sees
columns 0..41 and reports all of b00..b41 missing); an unnamed one silently drops extra columns
and refuses int64 values in double columns unless they are 0/1. So the input columns are
documented in the MLmodel `metadata` (`deepdram_inputs`) and checked here, with row- and
column-level messages; the output schema is declared. `log_model(..., input_schema=True)` logs the
named input schema instead (then requests must name their columns).

Served limits (`mlflow models serve` of these models): a request body above MAX_BODY_BYTES (32 MiB;
environment variable DEEPDRAM_MAX_BODY_BYTES) is refused with HTTP 413 before it is parsed, a request
of more than MAX_ROWS rows (100,000; DEEPDRAM_MAX_ROWS) with 400, a request without a Content-Type
with 415, and an error of MLflow's own request parsing that MLflow would answer with 500 with 400
naming it (`install_request_guard`). In process, `predict` takes any number of rows.

Speed: all-numeric input (what the server hands over for ``inputs``/``instances`` and numeric
``dataframe_split``/``dataframe_records``) is checked as one float array, with the same checks and
messages as the general (per-column) path; the model runs as one compiled function with the input
signature (None, n_columns) float32 (one trace, any request size; TensorFlow backend), and a
symmetrised model evaluates all its symmetry images in one call of the inner regressor. Calls of up
to TWIN_ROWS rows run in the model's NumPy twin instead (`deepdram.learn.numpy_graph`: the same
layers as NumPy products, checked against the compiled call on the first such request; 1 row of
the size-agnostic champion ~0.8 ms instead of ~2.5 ms).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from deepdram.errors import InputError
from deepdram.paths import PACKAGE_DIR
from deepdram.spaces.registry import get as get_space

ARTIFACT_KEY = "keras_model"
KINDS = ("forward", "size_agnostic", "generator")
DEFAULT_SPACE = "lattice"
MAX_BODY_BYTES = int(os.environ.get("DEEPDRAM_MAX_BODY_BYTES", 32 * 2**20))  # served requests (413 above)
MAX_ROWS = int(os.environ.get("DEEPDRAM_MAX_ROWS", 100_000))  # rows per served request (400 above)
# Calls of up to this many rows run in the model's NumPy twin (learn/numpy_graph.py): there the
# framework's fixed cost per call dominates; above, the compiled framework call is as fast or faster.
TWIN_ROWS = 64
F32_MAX = float(np.finfo(np.float32).max)


def latent_columns(n: int) -> tuple[str, ...]:
    """z0..z{n-1}."""
    return tuple(f"z{k}" for k in range(n))


def input_columns(space_name: str, kind: str, latent: int = 8) -> tuple[str, ...]:
    """The input columns of a model of `kind` for a space (generator: with `latent` z columns)."""
    space = get_space(space_name)
    if kind == "forward":
        return space.variables
    if kind == "size_agnostic":
        return space.variables + space.conditions
    if kind == "generator":
        return space.properties + latent_columns(latent)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def output_columns(space_name: str, kind: str) -> tuple[str, ...]:
    """The output columns of a model of `kind` for a space."""
    space = get_space(space_name)
    return space.variables if kind == "generator" else space.properties


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _describe(cols: tuple[str, ...]) -> str:
    """'42 columns (b00..b41)': runs of more than two numbered columns shown as first..last."""
    import re

    groups: list[list[str]] = []
    for c in cols:
        m = re.fullmatch(r"([A-Za-z_]+)(\d+)", c)
        prev = groups[-1] if groups else None
        pm = re.fullmatch(r"([A-Za-z_]+)(\d+)", prev[-1]) if prev else None
        if m and pm and m.group(1) == pm.group(1) and int(m.group(2)) == int(pm.group(2)) + 1:
            prev.append(c)
        else:
            groups.append([c])
    shown = [f"{g[0]}..{g[-1]}" if len(g) > 2 else ", ".join(g) for g in groups]
    return f"{len(cols)} columns ({', '.join(shown)})"


# --- Input validation ----------------------------------------------------------------------------


def _positions(columns: tuple[str, ...], df: pd.DataFrame) -> list[int] | None:
    """Positions of `columns` in a DataFrame with named (str) columns, None if it names none; raises
    naming missing or duplicate columns. (One pass over the column labels: pandas' Index lookups of
    string columns cost tens of microseconds each.)"""
    labels = df.columns.tolist()
    if not any(isinstance(c, str) for c in labels):
        return None
    where: dict = {}
    counts: dict = {}
    for i, c in enumerate(labels):
        if isinstance(c, str):
            where.setdefault(c, i)
            counts[c] = counts.get(c, 0) + 1
    missing = [c for c in columns if c not in where]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise _bad(f"missing input column(s) {shown}: the model needs {_describe(columns)}")
    dup = [c for c in columns if counts[c] > 1]
    if dup:
        raise _bad(f"duplicate input column(s): {', '.join(dup)}")
    return [where[c] for c in columns]


def _frame(columns: tuple[str, ...], model_input: Any) -> pd.DataFrame:
    """The input as a DataFrame with exactly `columns`, in order (values not yet checked)."""
    cols = list(columns)
    n = len(cols)
    if isinstance(model_input, pd.Series):
        model_input = model_input.to_frame().T
    if isinstance(model_input, dict):
        try:
            model_input = pd.DataFrame(model_input)
        except ValueError as e:
            raise _bad(f"could not read the input columns as a table: {e}") from None
    if isinstance(model_input, pd.DataFrame):
        df = model_input
        positions = _positions(columns, df)
        if positions is not None:  # named columns
            out = df.iloc[:, positions]
            out.columns = cols
            return out.reset_index(drop=True)
        if df.shape[1] != n:
            raise _bad(f"wrong number of columns: got {df.shape[1]}, the model needs {_describe(columns)}")
        out = df.copy()
        out.columns = cols
        return out.reset_index(drop=True)
    if isinstance(model_input, (list, tuple)):
        rows = list(model_input)
        if rows and all(isinstance(r, dict) for r in rows):
            return _frame(columns, pd.DataFrame(rows))
        if rows and not any(isinstance(r, (list, tuple, np.ndarray)) for r in rows):
            rows = [rows]  # one row given as a flat list
        for i, r in enumerate(rows):
            if not isinstance(r, (list, tuple, np.ndarray)):
                raise _bad(f"row {i} is not a list of values: {r!r}")
            if len(r) != n:
                raise _bad(f"wrong number of columns: row {i} has {len(r)} values, the model needs {_describe(columns)}")
        if not rows:
            return pd.DataFrame(columns=cols)
        try:  # fast path: all numbers (or None -> NaN, reported below)
            return pd.DataFrame(np.asarray(rows, dtype=float), columns=cols)
        except (TypeError, ValueError):
            return pd.DataFrame([list(r) for r in rows], columns=cols, dtype=object)
    if isinstance(model_input, np.ndarray):
        arr = model_input
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise _bad(f"input must be a table (2-D); got an array of shape {model_input.shape}")
        if arr.shape[1] != n:
            raise _bad(f"wrong number of columns: got {arr.shape[1]}, the model needs {_describe(columns)}")
        return pd.DataFrame(arr, columns=cols)
    raise _bad(f"unsupported input type {type(model_input).__name__}: send a table with {_describe(columns)}")


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (a huge string must not come back whole in the message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _numeric_table(columns: tuple[str, ...], model_input: Any) -> np.ndarray | pd.DataFrame:
    """The input as a float64 (N, n) array when it is all-numeric (no pandas per-column work), else as
    the DataFrame of `_frame` for the general, per-column checks. Shape and column errors as `_frame`."""
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "biuf":
        arr = model_input[None, :] if model_input.ndim == 1 else model_input
        if arr.ndim != 2:
            raise _bad(f"input must be a table (2-D); got an array of shape {model_input.shape}")
        if arr.shape[1] != len(columns):
            raise _bad(f"wrong number of columns: got {arr.shape[1]}, the model needs {_describe(columns)}")
        return arr.astype(np.float64)
    if isinstance(model_input, pd.DataFrame) and model_input.shape[1]:
        df = model_input
        positions = _positions(columns, df)
        if positions is None and df.shape[1] == len(columns):
            positions = list(range(len(columns)))
        if positions is not None:
            dtypes = df.dtypes.tolist()
            numeric = [isinstance(d, np.dtype) and d.kind in "biuf" for d in dtypes]
            if all(numeric):
                arr = df.to_numpy(dtype=np.float64)
                return arr if positions == list(range(arr.shape[1])) else arr[:, positions]
            if all(numeric[i] for i in positions):
                return df.iloc[:, positions].to_numpy(dtype=np.float64)
    df = _frame(columns, model_input)
    if all(isinstance(d, np.dtype) and d.kind in "biuf" for d in df.dtypes.tolist()):
        return df.to_numpy(dtype=np.float64)
    return df


def _numeric_values(df: pd.DataFrame) -> np.ndarray:
    """The general path: each column as numbers (bools count as 0/1), naming the first non-numeric value."""
    cols = list(df.columns)
    numeric = {}
    for c in cols:
        s = df[c]
        if s.dtype.kind in "biuf":
            numeric[c] = s.astype(float)
            continue
        conv = pd.to_numeric(s.map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
        nonnum = conv.isna() & s.notna()
        # strings such as "nan" / "" are not numbers either
        if nonnum.any():
            r = int(np.flatnonzero(nonnum.to_numpy())[0])
            raise _bad(f"non-numeric value {_short(s.iloc[r])} at row {r} column {c}: every input must be a number")
        numeric[c] = conv.astype(float)
    return np.column_stack([numeric[c].to_numpy(dtype=float) for c in cols]) if len(df) else np.zeros((0, len(cols)))


def n_rows(model_input: Any) -> int:
    """Rows of a request (before any check): a table's length, a flat list counting as one row."""
    if isinstance(model_input, (pd.DataFrame, pd.Series)):
        return len(model_input) if isinstance(model_input, pd.DataFrame) else 1
    if isinstance(model_input, np.ndarray):
        return int(model_input.shape[0]) if model_input.ndim > 1 else 1
    if isinstance(model_input, dict):
        lengths = [len(v) for v in model_input.values() if isinstance(v, (list, tuple, np.ndarray))]
        return max(lengths, default=1)
    if isinstance(model_input, (list, tuple)):
        nested = any(isinstance(r, (list, tuple, np.ndarray, dict)) for r in model_input)
        return len(model_input) if nested else 1
    return 1


def check_rows(model_input: Any, max_rows: int | None) -> None:
    """400 when a request has more than `max_rows` rows (None: no cap)."""
    if max_rows is not None and (n := n_rows(model_input)) > max_rows:
        raise _bad(f"{n:,} rows in one request; the server takes at most {max_rows:,} rows per request "
                   "(send smaller batches)")


def validate_input(kind: str, model_input: Any, space_name: str = DEFAULT_SPACE, latent: int = 8,
                   max_rows: int | None = None) -> np.ndarray:
    """Check `model_input` for a model of `kind` of a space; return it as a float32 (N, n_columns) array.

    Raises MlflowException(INVALID_PARAMETER_VALUE) naming the row and column of the first problem
    (and, with `max_rows`, refusing more rows than that). All-numeric input is checked as one array;
    other input column by column (`_numeric_values`); both give the same checks and messages.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    check_rows(model_input, max_rows)
    space = get_space(space_name)
    columns = input_columns(space_name, kind, latent)
    table = _numeric_table(columns, model_input)
    values = table if isinstance(table, np.ndarray) else _numeric_values(table)
    cols = list(columns)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "missing (NaN/null)" if np.isnan(values[r, c]) else "infinite"
        raise _bad(f"{what} value at row {r} column {cols[c]}: every input must be a finite number")
    nv = space.n_variables
    try:
        if kind in ("forward", "size_agnostic"):
            space.check_designs(values[:, :nv], require_valid=True)
        if kind == "size_agnostic" and len(values):
            try:
                space.check_conditions(values[:, nv:], len(values))
            except InputError as e:
                msg = str(e)
                raise InputError(msg + (" at row 0" if len(values) == 1 else "")) from None
    except InputError as e:
        raise _bad(str(e)) from None
    big = np.abs(values) > F32_MAX
    if big.any():  # (only the generator's inputs can get here: designs are 0/1, sizes at most 20)
        r, c = np.argwhere(big)[0]
        raise _bad(f"value {values[r, c]:g} at row {r} column {cols[c]} is too large: the model computes in "
                   f"float32 (|x| <= {F32_MAX:.3g})")
    return values.astype(np.float32)


# --- Pyfunc models ------------------------------------------------------------------------------


def _load_keras(path: str, space: str = DEFAULT_SPACE):
    """Load a .keras file with deepdram's generic layers and the space's own ones registered."""
    import keras

    import deepdram.learn.layers  # noqa: F401  (registers the generic custom layers)

    return keras.saving.load_model(path, compile=False, custom_objects=get_space(space).keras_objects())


def compiled(model):
    """`model` as one compiled function of float32 (N, n_in) arrays (TensorFlow: a tf.function with the
    input signature (None, n_in), traced once here, so no request size retraces it); None on other
    backends (then `_call` calls the model eagerly)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    try:
        n_in = int(model.input_shape[-1])
        fn = tf.function(lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec([None, n_in], tf.float32)])
        # Traced now (not on the first request, nor by concurrent ones); the concrete function skips
        # tf.function's argument binding on every call.
        concrete = fn.get_concrete_function()
    except Exception:  # noqa: BLE001 - e.g. a model of several inputs: eager calls still work
        return None
    return lambda x: concrete(tf.convert_to_tensor(x, tf.float32))


def _call(model, x: np.ndarray, batch_size: int, fn=None) -> np.ndarray:
    """The model on x in chunks of `batch_size` rows (memory stays bounded): by the compiled function `fn`
    when given (see `compiled`), else by eager model calls. float64 (N, n_out)."""
    import keras

    run = fn if fn is not None else (lambda chunk: model(chunk, training=False))
    parts = [keras.ops.convert_to_numpy(run(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float64) if len(parts) > 1 else np.asarray(parts[0], dtype=np.float64)


class _Job:
    __slots__ = ("x", "y", "error", "finished", "wake")

    def __init__(self, x: np.ndarray):
        import threading

        self.x, self.y, self.error, self.finished = x, None, None, False
        self.wake = threading.Event()  # set once: finished, or promoted to run the queue


class Coalescer:
    """`run(x)` for concurrent callers, sharing model calls: a call that finds the model busy queues its
    rows, and the next model call takes every queued request at once (up to `max_rows` rows), so eight
    concurrent 16-row requests cost about one 128-row call instead of eight 16-row ones. A lone
    request never waits (it runs at once, alone). Rows are checked before they get here, one request
    at a time, so a bad request cannot fail the others. Results equal separate calls to float32
    rounding (~1e-7 relative: the batch a row shares changes the order of the float sums)."""

    def __init__(self, run, max_rows: int = 8192):
        import threading

        self._run, self._max_rows = run, int(max_rows)
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._busy = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        job = _Job(x)
        with self._lock:
            self._queue.append(job)
            lead = not self._busy
            self._busy = True
        if not lead:
            job.wake.wait()
        if not job.finished:  # the leader: run queued batches until this job's is done
            self._lead(job)
        if job.error is not None:
            raise job.error
        return job.y

    def _lead(self, job: _Job) -> None:
        while True:
            with self._lock:
                if job.finished:
                    if self._queue:  # hand over: the oldest waiting job runs the rest
                        self._queue[0].wake.set()
                    else:
                        self._busy = False
                    return
                batch, rows = [], 0
                while self._queue and (not batch or rows + len(self._queue[0].x) <= self._max_rows):
                    batch.append(self._queue.pop(0))
                    rows += len(batch[-1].x)
            try:
                y = self._run(batch[0].x if len(batch) == 1 else np.concatenate([j.x for j in batch]))
                ends = np.cumsum([len(j.x) for j in batch])
                for j, part in zip(batch, np.split(y, ends[:-1])):
                    j.y = part
            except BaseException as e:  # noqa: BLE001 - handed to every caller of the batch
                for j in batch:
                    j.error = e
            for j in batch:
                j.finished = True
                if j is not job:
                    j.wake.set()


# --- Served limits -------------------------------------------------------------------------------------

_SCORING_APP = "mlflow.pyfunc.scoring_server.app"


def serving() -> bool:
    """True inside `mlflow models serve` (the scoring server's app module is being imported)."""
    return _SCORING_APP in sys.modules


def _error_response(status: int, message: str, code: str = "BAD_REQUEST"):
    from mlflow.pyfunc.scoring_server import InvocationsResponse

    return InvocationsResponse(response=json.dumps({"error_code": code, "message": message}), status=status,
                               mimetype="application/json")


MAX_MESSAGE = 4000  # characters of an error message sent back


def _cut_message(message: str) -> str:
    """MLflow's error message, without a long echo of the request: MLflow prefixes a model's error with
    the input's repr ("Failed to predict data '...'") and a JSON error with the whole body, which for a
    large or odd request is megabytes. Messages up to MAX_MESSAGE characters are kept as they are."""
    if len(message) <= MAX_MESSAGE:
        return message
    head, sep, error = message.rpartition("\nError: ")
    if sep and head.startswith("Failed to predict data"):
        return f"Failed to predict data (the input's {len(head):,}-character echo is cut).{sep}" + _cut_message(error)
    return f"{message[:MAX_MESSAGE // 2]} ... (the message's {len(message):,} characters are cut)"


def _unknown_params(data, content_type: str, model) -> str | None:
    """A message naming the params of a JSON request that the model's params schema does not declare
    (MLflow drops them with a log line, so a misspelt param would be silently ignored), else None."""
    if not content_type.startswith("application/json") or not data or b'"params"' not in (
            data if isinstance(data, bytes) else str(data).encode()):
        return None
    try:
        schema = model.metadata.get_params_schema()
        body = json.loads(data)
    except Exception:  # no schema, or a body MLflow will reject with its own message
        return None
    params = body.get("params") if isinstance(body, dict) else None
    if schema is None or not isinstance(params, dict):
        return None
    allowed = sorted(p.name for p in schema.params)
    unknown = sorted(set(params) - set(allowed))
    return f"unknown param(s) {unknown}; allowed: {allowed}" if unknown else None


def install_request_guard(max_bytes: int = MAX_BODY_BYTES) -> bool:
    """Wrap the scoring server's request handler (`mlflow.pyfunc.scoring_server.invocations`, looked up
    by the /invocations route on every request) with checks MLflow does not make:

    - a body above `max_bytes` gets 413 naming the cap, before it is parsed (JSON parsing costs about
      ten times the body in memory);
    - a request without a Content-Type gets 415 (MLflow fails on it with 500);
    - a JSON request with params its model's params schema does not declare gets 400 naming them
      (MLflow would drop them silently);
    - an error of MLflow's own request parsing that is no MlflowException (MLflow: 500) gets 400
      naming it;
    - an error message longer than MAX_MESSAGE characters loses MLflow's echo of the request
      (`_cut_message`; a 30 MB body must not come back in the error).

    Errors of the model itself keep MLflow's handling. Installed once per process (the first
    install's cap holds); returns whether it is installed."""
    try:
        from mlflow.pyfunc import scoring_server
    except ImportError:  # pragma: no cover - no serving extras
        return False
    original = scoring_server.invocations
    if getattr(original, "deepdram_guard", False):
        return True

    def invocations(data, content_type, model, input_schema):
        size = len(data) if data is not None else 0
        if size > max_bytes:
            return _error_response(413, f"request body of {size:,} bytes is above the cap of {max_bytes:,} bytes "
                                        f"({max_bytes / 2**20:g} MiB): send fewer rows per request")
        if not content_type:
            return _error_response(415, "missing Content-Type header: send application/json (or text/csv)")
        unknown = _unknown_params(data, content_type, model)
        if unknown:
            return _error_response(400, unknown)
        try:
            return original(data, content_type, model, input_schema)
        except MlflowException as e:
            e.message = _cut_message(e.message)
            raise
        except MemoryError:
            raise
        except Exception as e:  # MLflow's parsing of an odd request: a bad request, not a server error
            raise MlflowException(f"could not read the request: {type(e).__name__}: {_short(str(e), 300)}",
                                  error_code=BAD_REQUEST) from None

    invocations.deepdram_guard = True
    invocations.max_bytes = max_bytes
    scoring_server.invocations = invocations
    return True


class KerasPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of a Keras model of one `kind` of a space; validates input, names output columns.

    Served (`serving()`), requests of more than MAX_ROWS rows are refused and the request guard is
    installed (`install_request_guard`)."""

    batch_size = 8192

    def __init__(self, kind: str, space: str = DEFAULT_SPACE):
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
        self.kind, self.space = kind, space
        self.model = None
        self._fn = None
        self.max_rows: int | None = None

    def _load(self, path: str) -> None:
        from deepdram.learn.numpy_graph import Checked, numpy_twin

        self.model = _load_keras(path, self.space)
        self._fn = compiled(self.model)
        model, fn, batch = self.model, self._fn, self.batch_size

        def framework(x: np.ndarray) -> np.ndarray:
            return _call(model, x, batch, fn)

        twin = numpy_twin(model)
        self._twin = None if twin is None else Checked(lambda x: np.asarray(twin(x), np.float64), framework)
        small = self._twin or framework
        self._coalesce = Coalescer(lambda x: small(x) if len(x) <= TWIN_ROWS else framework(x), max_rows=batch)

    def load_context(self, context):
        self._load(context.artifacts[ARTIFACT_KEY])
        if serving():
            self.max_rows = MAX_ROWS
            install_request_guard()

    @property
    def latent(self) -> int:
        """The generator's latent size, from the loaded model."""
        if self.model is None:
            return 8
        return int(self.model.input_shape[-1]) - get_space(self.space).n_properties

    def _output_index(self) -> pd.Index:
        """The output column names as one pandas Index, built once (building it costs ~0.3 ms a request)."""
        index = getattr(self, "_out_index", None)
        if index is None:
            index = self._out_index = pd.Index(output_columns(self.space, self.kind))
        return index

    def predict(self, context, model_input, params=None):
        if self.model is None:  # predict without load_context (not via mlflow)
            self._load(context.artifacts[ARTIFACT_KEY])
        x = validate_input(self.kind, model_input, self.space, self.latent, max_rows=getattr(self, "max_rows", None))
        out_cols = self._output_index()
        if len(x) == 0:
            return pd.DataFrame(np.zeros((0, len(out_cols))), columns=out_cols)
        coalesce = getattr(self, "_coalesce", None)
        y = coalesce(x) if coalesce is not None else _call(self.model, x, self.batch_size, getattr(self, "_fn", None))
        if y.ndim != 2 or y.shape != (len(x), len(out_cols)):
            raise MlflowException(
                f"{self.kind} model returned shape {y.shape}; expected ({len(x)}, {len(out_cols)})",
                error_code=INTERNAL_ERROR,
            )
        finite = np.isfinite(y).all(axis=1)
        if not finite.all():  # inputs so far from the training data that float32 overflows
            r = int(np.flatnonzero(~finite)[0])
            raise _bad(f"the model's output for row {r} is not finite (NaN/inf): its inputs are too far outside "
                       f"the range the model was trained on")
        return pd.DataFrame(y, columns=out_cols)


# --- Logging ---------------------------------------------------------------------------------------


def _column_type(space_name: str, kind: str, column: str) -> str:
    space = get_space(space_name)
    if kind == "generator":
        return "double"
    return "long" if space.binary or column in space.conditions else "double"


def signature(kind: str, *, input_schema: bool = False, space: str = DEFAULT_SPACE, latent: int = 8):
    """ModelSignature: named double outputs; named inputs (long bits/sizes, double otherwise) if asked."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = Schema([ColSpec("double", c) for c in output_columns(space, kind)])
    inputs = Schema([ColSpec(_column_type(space, kind, c), c) for c in input_columns(space, kind, latent)]) \
        if input_schema else None
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Pinned requirements of the serving environment, from the installed versions."""
    reqs = []
    # numba: the lattice's homogenisation features (the size-agnostic model's physics layer) import it
    for dist in ("mlflow", "keras", ("tensorflow-cpu", "tensorflow"), "numpy", "pandas", "numba", *extra):
        for name in (dist if isinstance(dist, tuple) else (dist,)):
            try:
                reqs.append(f"{name}=={importlib.metadata.version(name)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return reqs


def _package_copy(dest: Path) -> Path:
    """A clean copy of the deepdram package (no caches) to log as the model's code."""
    target = dest / "deepdram"
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so.tmp"))
    return target


MODEL_SCRIPT = """\
# deepdram: pyfunc wrapper of a Keras model of kind '{kind}' of the {space} space (MLflow model from code).
import mlflow.models

from deepdram.mlops.pyfuncs import KerasPyfunc

mlflow.models.set_model(KerasPyfunc("{kind}", "{space}"))
"""


def _latent_of(keras_path: Path, space: str) -> int:
    """The latent size of a saved generator (its input width minus the space's properties)."""
    return int(_load_keras(str(keras_path), space).input_shape[-1]) - get_space(space).n_properties


def log_model(kind: str, keras_path, name: str = "model", registered_model_name: str | None = None,
              *, input_schema: bool = False, metadata: dict | None = None, space: str = DEFAULT_SPACE):
    """Log a `.keras` model as a self-contained pyfunc model (code, pinned requirements, signature).

    Logs into the active run (MLflow starts one if none is active). Returns mlflow's ModelInfo;
    `info.model_uri` loads it back. `registered_model_name` also registers a version (prefer
    `deepdram.registry.register`, which sets the `challenger` alias).
    """
    from deepdram.mlops.tracking import configure

    if kind not in KINDS:
        raise InputError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(keras_path)
    if not path.is_file() or path.suffix != ".keras":
        raise InputError(f"{path}: not a .keras model file")
    configure()
    latent = _latent_of(path, space) if kind == "generator" else 0
    meta = {
        "deepdram_kind": kind,
        "deepdram_space": space,
        "deepdram_inputs": [f"{c}:{_column_type(space, kind, c)}" for c in input_columns(space, kind, latent)],
        "deepdram_outputs": list(output_columns(space, kind)),
        **(metadata or {}),
    }
    with tempfile.TemporaryDirectory(prefix="deepdram-code-") as tmp:
        code = _package_copy(Path(tmp))
        # Model from code (no pickled object): this script builds the wrapper when loaded.
        script = Path(tmp) / f"deepdram_{kind}_model.py"
        script.write_text(MODEL_SCRIPT.format(kind=kind, space=space))
        with warnings.catch_warnings():  # deliberate: no input example (MLflow bug #16183)
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(script),
                artifacts={ARTIFACT_KEY: str(path.resolve())},
                signature=signature(kind, input_schema=input_schema, space=space, latent=latent),
                pip_requirements=pip_requirements(),
                code_paths=[str(code)],
                registered_model_name=registered_model_name,
                metadata=meta,
            )
