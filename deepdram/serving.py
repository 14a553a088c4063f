"""MLflow pyfunc wrappers for the Keras models: served models validate their input.

Three kinds of model, all Keras 3 models saved as one `.keras` file, in physical units:

=============  =====================================================  ==========================
kind           input columns                                          output columns
=============  =====================================================  ==========================
forward        b00..b41 (0/1, a valid design)                         E11, E22, nu12, nu21
size_agnostic  b00..b41, d1, d2 (even integers in [2, 20])            E11, E22, nu12, nu21
generator      E11, E22, nu12, nu21, z0..z7 (latent N(0, 1) values)   b00..b41 (probabilities)
=============  =====================================================  ==========================

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
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from deepdram.constants import BIT_COLUMNS, N_BEAMS, PACKAGE_DIR, PROPERTY_COLUMNS, SIZE_COLUMNS
from deepdram.errors import InputError

N_LATENT = 8
LATENT_COLUMNS = tuple(f"z{k}" for k in range(N_LATENT))
ARTIFACT_KEY = "keras_model"

INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "forward": BIT_COLUMNS,
    "size_agnostic": BIT_COLUMNS + SIZE_COLUMNS,
    "generator": PROPERTY_COLUMNS + LATENT_COLUMNS,
}
OUTPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "forward": PROPERTY_COLUMNS,
    "size_agnostic": PROPERTY_COLUMNS,
    "generator": BIT_COLUMNS,
}
KINDS = tuple(INPUT_COLUMNS)


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _describe(kind: str) -> str:
    cols = INPUT_COLUMNS[kind]
    if kind == "forward":
        return f"{len(cols)} columns (b00..b41)"
    if kind == "size_agnostic":
        return f"{len(cols)} columns (b00..b41, d1, d2)"
    return f"{len(cols)} columns (E11, E22, nu12, nu21, z0..z7)"


# --- Input validation ----------------------------------------------------------------------------


def _frame(kind: str, model_input: Any) -> pd.DataFrame:
    """The input as a DataFrame with exactly the kind's columns, in order (values not yet checked)."""
    cols = list(INPUT_COLUMNS[kind])
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
        names = [c for c in df.columns if isinstance(c, str)]
        if names:
            missing = [c for c in cols if c not in df.columns]
            if missing:
                shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
                raise _bad(f"missing input column(s) {shown}: the model needs {_describe(kind)}")
            dup = [c for c in cols if list(df.columns).count(c) > 1]
            if dup:
                raise _bad(f"duplicate input column(s): {', '.join(dup)}")
            return df[cols].reset_index(drop=True)
        if df.shape[1] != n:
            raise _bad(f"wrong number of columns: got {df.shape[1]}, the model needs {_describe(kind)}")
        out = df.copy()
        out.columns = cols
        return out.reset_index(drop=True)
    if isinstance(model_input, (list, tuple)):
        rows = list(model_input)
        if rows and all(isinstance(r, dict) for r in rows):
            return _frame(kind, pd.DataFrame(rows))
        if rows and not any(isinstance(r, (list, tuple, np.ndarray)) for r in rows):
            rows = [rows]  # one row given as a flat list
        for i, r in enumerate(rows):
            if not isinstance(r, (list, tuple, np.ndarray)):
                raise _bad(f"row {i} is not a list of values: {r!r}")
            if len(r) != n:
                raise _bad(f"wrong number of columns: row {i} has {len(r)} values, the model needs {_describe(kind)}")
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
            raise _bad(f"wrong number of columns: got {arr.shape[1]}, the model needs {_describe(kind)}")
        return pd.DataFrame(arr, columns=cols)
    raise _bad(f"unsupported input type {type(model_input).__name__}: send a table with {_describe(kind)}")


def validate_input(kind: str, model_input: Any) -> np.ndarray:
    """Check `model_input` for a model of `kind`; return it as a float32 (N, n_columns) array.

    Raises MlflowException(INVALID_PARAMETER_VALUE) naming the row and column of the first problem.
    """
    if kind not in INPUT_COLUMNS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    from deepdram.lattice import check_designs, check_size

    df = _frame(kind, model_input)
    cols = list(df.columns)
    # Numbers only (bools count as 0/1).
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
            raise _bad(f"non-numeric value {s.iloc[r]!r} at row {r} column {c}: every input must be a number")
        numeric[c] = conv.astype(float)
    values = np.column_stack([numeric[c].to_numpy(dtype=float) for c in cols]) if len(df) else np.zeros((0, len(cols)))
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "missing (NaN/null)" if np.isnan(values[r, c]) else "infinite"
        raise _bad(f"{what} value at row {r} column {cols[c]}: every input must be a finite number")
    try:
        if kind in ("forward", "size_agnostic"):
            check_designs(values[:, :N_BEAMS], require_valid=True)
        if kind == "size_agnostic" and len(values):
            try:
                check_size(values[:, N_BEAMS], values[:, N_BEAMS + 1])
            except InputError as e:
                msg = str(e)
                raise InputError(msg + (" at row 0" if len(values) == 1 else "")) from None
    except InputError as e:
        raise _bad(str(e)) from None
    return values.astype(np.float32)


# --- Pyfunc models ------------------------------------------------------------------------------


def _load_keras(path: str):
    """Load a .keras file after registering deepdram's custom layers (import deepdram.models)."""
    import_error = None
    try:
        import deepdram.models  # noqa: F401  (registers the custom layers)
    except ModuleNotFoundError as e:
        if e.name != "deepdram.models":
            import_error = e
    except Exception as e:  # a broken models module: plain Keras models still load
        import_error = e
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:
        if import_error is not None:
            raise RuntimeError(
                f"could not load {path}: {e} (importing deepdram.models, which registers the custom "
                f"layers, failed: {import_error!r})"
            ) from e
        raise


def _call(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Eager model calls in chunks: no tf.function retracing for each new request size."""
    import keras

    parts = [keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float64) if len(parts) > 1 else np.asarray(parts[0], dtype=np.float64)


class KerasPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of a Keras model of one `kind`; validates input, names output columns."""

    kind: str = ""
    batch_size = 8192

    def load_context(self, context):
        self.model = _load_keras(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):
        x = validate_input(self.kind, model_input)
        out_cols = list(OUTPUT_COLUMNS[self.kind])
        if len(x) == 0:
            return pd.DataFrame(np.zeros((0, len(out_cols))), columns=out_cols)
        model = getattr(self, "model", None)
        if model is None:  # predict without load_context (not via mlflow)
            model = self.model = _load_keras(context.artifacts[ARTIFACT_KEY])
        y = _call(model, x, self.batch_size)
        if y.ndim != 2 or y.shape != (len(x), len(out_cols)):
            raise MlflowException(
                f"{self.kind} model returned shape {y.shape}; expected ({len(x)}, {len(out_cols)})",
                error_code=INTERNAL_ERROR,
            )
        return pd.DataFrame(y, columns=out_cols)


class ForwardPyfunc(KerasPyfunc):
    kind = "forward"


class SizeAgnosticPyfunc(KerasPyfunc):
    kind = "size_agnostic"


class GeneratorPyfunc(KerasPyfunc):
    kind = "generator"


PYFUNC_CLASSES = {"forward": ForwardPyfunc, "size_agnostic": SizeAgnosticPyfunc, "generator": GeneratorPyfunc}


# --- Logging ---------------------------------------------------------------------------------------


def _column_type(kind: str, column: str) -> str:
    return "long" if kind != "generator" else "double"


def signature(kind: str, *, input_schema: bool = False):
    """ModelSignature: named double outputs; named inputs (long bits/sizes, double otherwise) if asked."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = Schema([ColSpec("double", c) for c in OUTPUT_COLUMNS[kind]])
    inputs = Schema([ColSpec(_column_type(kind, c), c) for c in INPUT_COLUMNS[kind]]) if input_schema else None
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Pinned requirements of the serving environment, from the installed versions."""
    reqs = []
    for dist in ("mlflow", "keras", ("tensorflow-cpu", "tensorflow"), "numpy", "pandas", *extra):
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
# deepdram: pyfunc wrapper of a Keras model of kind '{kind}' (MLflow model from code).
import mlflow.models

from deepdram.serving import PYFUNC_CLASSES

mlflow.models.set_model(PYFUNC_CLASSES["{kind}"]())
"""


def log_model(kind: str, keras_path, name: str = "model", registered_model_name: str | None = None,
              *, input_schema: bool = False, metadata: dict | None = None):
    """Log a `.keras` model as a self-contained pyfunc model (code, pinned requirements, signature).

    Logs into the active run (MLflow starts one if none is active). Returns mlflow's ModelInfo;
    `info.model_uri` loads it back. `registered_model_name` also registers a version (prefer
    `deepdram.registry.register`, which sets the `challenger` alias).
    """
    from deepdram.tracking import configure

    if kind not in PYFUNC_CLASSES:
        raise InputError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(keras_path)
    if not path.is_file() or path.suffix != ".keras":
        raise InputError(f"{path}: not a .keras model file")
    configure()
    meta = {
        "deepdram_kind": kind,
        "deepdram_inputs": [f"{c}:{_column_type(kind, c)}" for c in INPUT_COLUMNS[kind]],
        "deepdram_outputs": list(OUTPUT_COLUMNS[kind]),
        **(metadata or {}),
    }
    with tempfile.TemporaryDirectory(prefix="deepdram-code-") as tmp:
        code = _package_copy(Path(tmp))
        # Model from code (no pickled object): this script builds the wrapper when loaded.
        script = Path(tmp) / f"deepdram_{kind}_model.py"
        script.write_text(MODEL_SCRIPT.format(kind=kind))
        with warnings.catch_warnings():  # deliberate: no input example (MLflow bug #16183)
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(script),
                artifacts={ARTIFACT_KEY: str(path.resolve())},
                signature=signature(kind, input_schema=input_schema),
                pip_requirements=pip_requirements(),
                code_paths=[str(code)],
                registered_model_name=registered_model_name,
                metadata=meta,
            )
