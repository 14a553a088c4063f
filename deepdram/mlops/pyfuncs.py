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

from deepdram.errors import InputError
from deepdram.paths import PACKAGE_DIR
from deepdram.spaces.registry import get as get_space

ARTIFACT_KEY = "keras_model"
KINDS = ("forward", "size_agnostic", "generator")
DEFAULT_SPACE = "lattice"


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
        names = [c for c in df.columns if isinstance(c, str)]
        if names:
            missing = [c for c in cols if c not in df.columns]
            if missing:
                shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
                raise _bad(f"missing input column(s) {shown}: the model needs {_describe(columns)}")
            dup = [c for c in cols if list(df.columns).count(c) > 1]
            if dup:
                raise _bad(f"duplicate input column(s): {', '.join(dup)}")
            return df[cols].reset_index(drop=True)
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


def validate_input(kind: str, model_input: Any, space_name: str = DEFAULT_SPACE, latent: int = 8) -> np.ndarray:
    """Check `model_input` for a model of `kind` of a space; return it as a float32 (N, n_columns) array.

    Raises MlflowException(INVALID_PARAMETER_VALUE) naming the row and column of the first problem.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    space = get_space(space_name)
    df = _frame(input_columns(space_name, kind, latent), model_input)
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
    return values.astype(np.float32)


# --- Pyfunc models ------------------------------------------------------------------------------


def _load_keras(path: str, space: str = DEFAULT_SPACE):
    """Load a .keras file with deepdram's generic layers and the space's own ones registered."""
    import keras

    import deepdram.learn.layers  # noqa: F401  (registers the generic custom layers)

    return keras.saving.load_model(path, compile=False, custom_objects=get_space(space).keras_objects())


def _call(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Eager model calls in chunks: no tf.function retracing for each new request size."""
    import keras

    parts = [keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float64) if len(parts) > 1 else np.asarray(parts[0], dtype=np.float64)


class KerasPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of a Keras model of one `kind` of a space; validates input, names output columns."""

    batch_size = 8192

    def __init__(self, kind: str, space: str = DEFAULT_SPACE):
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
        self.kind, self.space = kind, space
        self.model = None

    def load_context(self, context):
        self.model = _load_keras(context.artifacts[ARTIFACT_KEY], self.space)

    @property
    def latent(self) -> int:
        """The generator's latent size, from the loaded model."""
        return int(self.model.input_shape[-1]) - get_space(self.space).n_properties if self.model is not None else 8

    def predict(self, context, model_input, params=None):
        if self.model is None:  # predict without load_context (not via mlflow)
            self.model = _load_keras(context.artifacts[ARTIFACT_KEY], self.space)
        x = validate_input(self.kind, model_input, self.space, self.latent)
        out_cols = list(output_columns(self.space, self.kind))
        if len(x) == 0:
            return pd.DataFrame(np.zeros((0, len(out_cols))), columns=out_cols)
        y = _call(self.model, x, self.batch_size)
        if y.ndim != 2 or y.shape != (len(x), len(out_cols)):
            raise MlflowException(
                f"{self.kind} model returned shape {y.shape}; expected ({len(x)}, {len(out_cols)})",
                error_code=INTERNAL_ERROR,
            )
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
