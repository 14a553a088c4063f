"""The sweep's screening, fast: generated candidates -> distinct valid designs -> the conditioned
surrogate at every condition of the sweep.

Three savings over predicting each target's designs size by size with the saved model:
- a design seen by an earlier target of the sweep is neither re-validated nor re-predicted
  (`PredictionCache`, by the space's exact keys: predictions do not depend on the target);
- a deepdram size-agnostic regressor is split (`SplitRegressor`): its physics features and the
  design's share of the first layer are computed once per design, only the condition's share
  and the deeper layers once per condition;
- the dense layers run as plain float32 matrix products on large blocks (no per-call framework
  overhead, any Keras backend).

The split path is checked against the Keras model on the first designs it sees and is replaced by
the model itself if they disagree (`PredictorAtConditions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deepdram.data.keys import sorted_index

if TYPE_CHECKING:
    from deepdram.design.pipeline import Surrogates
    from deepdram.spaces.base import DesignSpace

CACHE_ROWS = 2_000_000  # designs the cache holds at most (it starts afresh when full)
BLOCK = 16384  # designs per block of the split regressor
PRUNE_BELOW = 0.9  # drop a block's dead ReLU units when fewer than this share are alive
CHECK_ROWS = 256  # designs the split regressor is checked on against the Keras model
CHECK_RTOL = 1e-4  # |split - keras| <= CHECK_RTOL * (1 + |keras|); float32 sums in another order
STACK_ROWS = 250_000  # rows of one Keras call on the reference path (design.pipeline.CHUNK)


# --- Cache of predictions by design key ----------------------------------------------------------


@dataclass
class PredictionCache:
    """Designs seen earlier in a sweep, by key: validity and predictions (S conditions, P properties)."""

    n_conditions: int
    n_properties: int
    max_rows: int = CACHE_ROWS
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # sorted
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # row of each sorted key
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    pred: np.ndarray | None = None  # (capacity, S, P) float32
    size: int = 0

    def __post_init__(self):
        if self.pred is None:
            self.pred = np.zeros((0, self.n_conditions, self.n_properties), np.float32)

    def clear(self) -> None:
        """Forget every design."""
        self.keys, self.rows, self.size = np.zeros(0, np.uint64), np.zeros(0, np.int64), 0

    def reserve(self, n: int) -> None:
        """Room for n more designs: starts afresh when they would not fit (rows found earlier go stale)."""
        if self.size + n > self.max_rows:
            self.clear()
        need = self.size + n
        if need > len(self.valid):
            cap = max(need, 2 * len(self.valid), 1024)
            valid = np.zeros(cap, bool)
            pred = np.empty((cap, self.n_conditions, self.n_properties), np.float32)
            valid[: self.size] = self.valid[: self.size]
            pred[: self.size] = self.pred[: self.size]
            self.valid, self.pred = valid, pred

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key (-1 where the design is not cached)."""
        at = sorted_index(self.keys, np.asarray(keys, np.uint64))
        return np.where(at >= 0, self.rows[at], -1) if len(self.keys) else at

    def add(self, keys: np.ndarray, valid: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Rows of new designs (keys not cached, distinct; call `reserve` first)."""
        keys = np.asarray(keys, np.uint64)
        n = len(keys)
        self.reserve(n)
        rows = np.arange(self.size, self.size + n, dtype=np.int64)
        self.valid[rows] = valid
        self.pred[rows] = pred
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(self.keys, keys[order])
        self.keys = np.insert(self.keys, at, keys[order])
        self.rows = np.insert(self.rows, at, rows[order])
        self.size += n
        return rows


@dataclass
class Screened:
    """The distinct valid designs of one batch of candidates, sorted by key, with their predictions."""

    designs: np.ndarray  # (M, V)
    keys: np.ndarray  # (M,)
    n_valid: int  # valid candidates, duplicates included
    n_distinct: int
    pred: np.ndarray  # (M, S, P) float32
    n_new: int  # distinct designs (valid or not) not found in the cache


def screen_batch(space: DesignSpace, designs: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                 cache: PredictionCache | None, n_conditions: int) -> Screened:
    """`space.distinct_valid` of a batch, and each distinct valid design's predictions (S conditions)
    from the cache, or by `predict` ((M, V) -> (M, S, P)) for the designs not seen before."""
    designs = np.asarray(designs)
    keys = space.keys(designs)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if cache is not None and uniq.dtype.kind not in "ui":
        cache = None  # keys that do not sort as integers: no reuse across batches
    if cache is None:
        cache = PredictionCache(n_conditions, space.n_properties)
    cache.reserve(len(uniq))  # before `find`: a cache that starts afresh invalidates found rows
    rows = cache.find(uniq) if uniq.dtype.kind in "ui" else np.full(len(uniq), -1, np.int64)
    new = np.flatnonzero(rows < 0)
    if len(new):
        cand = designs[first[new]]
        ok = np.asarray(space.is_valid(cand), bool)
        pred = np.full((len(new), n_conditions, space.n_properties), np.nan, np.float32)
        if ok.any():
            pred[ok] = predict(cand[ok])
        rows[new] = cache.add(uniq[new] if uniq.dtype.kind in "ui" else np.arange(len(new), dtype=np.uint64),
                              ok, pred)
    valid_u = cache.valid[rows]
    n_valid = int(np.bincount(inverse.ravel(), minlength=len(uniq))[valid_u].sum())
    return Screened(designs[first[valid_u]], uniq[valid_u], n_valid, int(valid_u.sum()),
                    cache.pred[rows[valid_u]], len(new))


# --- The size-agnostic regressor, split ----------------------------------------------------------


def dense_stack(core) -> list[tuple[np.ndarray, np.ndarray, Callable, bool]] | None:
    """(kernel, bias, activation, is_relu) of each Dense layer of a plain MLP model, in order (None
    when the model holds other layers than Dense and Dropout, or activations without a NumPy
    equivalent)."""
    import keras
    from keras import ops

    from deepdram.learn.numpy_graph import activation

    layers = []
    for layer in core.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout)):
            continue  # dropout is the identity at inference
        if not isinstance(layer, keras.layers.Dense):
            return None
        act = activation(layer.activation)
        if act is None:
            return None
        w = ops.convert_to_numpy(layer.kernel).astype(np.float32)
        b = ops.convert_to_numpy(layer.bias).astype(np.float32) if layer.use_bias else np.zeros(w.shape[1], np.float32)
        layers.append((w, b, act, layer.activation is keras.activations.relu))
    return layers or None


def run_dense(h: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray, Callable, bool]],
              relu_in: bool = False) -> np.ndarray:
    """The MLP on float32 rows `h` (`relu_in`: h is a ReLU output). Units a ReLU left at zero on
    every row are dropped with their rows of the next kernel: an exact zero adds nothing."""
    for w, b, act, relu in layers:
        if relu_in:
            alive = h.any(axis=0)
            if alive.mean() < PRUNE_BELOW:
                h, w = h[:, alive], w[alive]
        h = h @ w
        h += b
        h = act(h)
        relu_in = relu
    return h


@dataclass
class SplitRegressor:
    """A deepdram full regressor (x_scaler -> [inputs, scaled physics features] -> core MLP ->
    y_unscaler) as a size-independent part, once per design, and a part per condition."""

    n_variables: int
    x_scale: np.ndarray  # (V + C,) float32
    x_offset: np.ndarray
    features: Callable[[np.ndarray], np.ndarray]  # designs (N, V) float32 -> scaled features (N, F) float32
    layers: list  # dense_stack(core)
    y_scale: np.ndarray  # (P,) float32
    y_offset: np.ndarray

    def base(self, designs: np.ndarray) -> np.ndarray:
        """(N, H) the first layer's pre-activation without the conditions' share."""
        nv = self.n_variables
        w, b = self.layers[0][:2]
        d = np.asarray(designs, np.float32)
        x = d * self.x_scale[:nv] + self.x_offset[:nv]
        h = x @ w[:nv]
        h += self.features(d) @ w[len(self.x_scale):]
        h += b
        return h

    def at(self, base: np.ndarray, conditions) -> np.ndarray:
        """(N, P) float32 predictions at one condition from `base`."""
        nv = self.n_variables
        w, _, act, relu = self.layers[0]
        c = np.asarray(conditions, np.float32) * self.x_scale[nv:] + self.x_offset[nv:]
        h = act(base + c @ w[nv: len(self.x_scale)])
        y = run_dense(h, self.layers[1:], relu)
        return y * self.y_scale + self.y_offset


def split_regressor(model, n_variables: int, n_conditions: int) -> SplitRegressor | None:
    """The SplitRegressor of a deepdram size-agnostic regressor with a physics feature layer (`x_scaler`,
    `feature_scaler`, `core`, `y_unscaler` and one feature layer on the design columns), else None."""
    from keras import ops

    from deepdram.learn.layers import Affine, Columns

    try:
        by_name = {layer.name: layer for layer in model.layers}
        xs, fs, core, ys = (by_name[n] for n in ("x_scaler", "feature_scaler", "core", "y_unscaler"))
        cols = by_name["design_bits"]
    except KeyError:
        return None
    if not all(isinstance(a, Affine) for a in (xs, fs, ys)) or not isinstance(cols, Columns):
        return None
    if (cols.start, cols.stop) != (0, n_variables) or xs.units != n_variables + n_conditions:
        return None
    known = {"x_scaler", "feature_scaler", "core", "y_unscaler", "design_bits", "core_inputs"}
    rest = [layer for layer in model.layers if layer.name not in known and type(layer).__name__ != "InputLayer"]
    if len(rest) != 1:
        return None
    feature_layer = rest[0]
    layers = dense_stack(core)
    if layers is None or layers[0][0].shape[0] != xs.units + fs.units:
        return None
    f32 = lambda v: ops.convert_to_numpy(v).astype(np.float32)

    def features(d: np.ndarray) -> np.ndarray:
        return ops.convert_to_numpy(fs(feature_layer(d))).astype(np.float32, copy=False)

    return SplitRegressor(n_variables, f32(xs.scale), f32(xs.offset), features, layers, f32(ys.scale),
                          f32(ys.offset))


# --- Predictions at every condition of a sweep ---------------------------------------------------


def keras_at_conditions(space: DesignSpace, s: Surrogates, designs: np.ndarray, conditions: Sequence) -> np.ndarray:
    """(N, S, P) float32: the surrogates' Keras models at each condition (the reference path)."""
    designs = np.asarray(designs)
    out = np.empty((len(designs), len(conditions), space.n_properties), np.float32)
    if not len(designs):
        return out
    tiled = [j for j, c in enumerate(conditions) if c is not None]
    for j in set(range(len(conditions))) - set(tiled):
        out[:, j] = s.predict(space, designs, None)
    # several conditions per call while the rows fit one: a Keras call costs ~0.1 s whatever its size
    per_call = max(1, STACK_ROWS // len(designs))
    for i in range(0, len(tiled), per_call):
        group = tiled[i: i + per_call]
        out[:, group] = _keras_stacked(space, s, designs, [conditions[j] for j in group])
    return out


def _keras_stacked(space: DesignSpace, s: Surrogates, designs: np.ndarray, conditions: list) -> np.ndarray:
    """(N, len(conditions), P): the conditioned model on the designs at every condition, in one call."""
    from deepdram.learn.models import predict

    n, nv = len(designs), space.n_variables
    x = np.empty((len(conditions), n, nv + space.n_conditions), np.float32)
    x[:, :, :nv] = designs
    x[:, :, nv:] = np.asarray(conditions, np.float32)[:, None]
    pred = predict(s.model_for(conditions[0]), x.reshape(-1, x.shape[2]), batch_size=STACK_ROWS)
    return pred.reshape(len(conditions), n, space.n_properties).transpose(1, 0, 2)


@dataclass
class PredictorAtConditions:
    """designs (N, V) -> (N, S, P) float32 predictions at each of a sweep's conditions (None: the
    unconditioned model): the split regressor where it applies and agrees with the Keras model,
    else the Keras models themselves."""

    space: Any
    surrogates: Any
    conditions: list
    split: SplitRegressor | None = None
    checked: bool = False
    mismatch: float | None = None  # the largest relative difference found by the check

    @classmethod
    def build(cls, space: DesignSpace, s: Surrogates, conditions: Sequence) -> PredictorAtConditions:
        """The predictor for these conditions (the split regressor when the conditioned model allows)."""
        conditions = list(conditions)
        split = None
        if any(c is not None for c in conditions) and "conditioned" in s.models:
            split = split_regressor(s.models["conditioned"], space.n_variables, space.n_conditions)
        return cls(space, s, conditions, split)

    @property
    def uses_split(self) -> bool:
        return self.split is not None

    def _split(self, designs: np.ndarray) -> np.ndarray:
        out = np.empty((len(designs), len(self.conditions), self.space.n_properties), np.float32)
        plain = [j for j, c in enumerate(self.conditions) if c is None]
        for j in plain:
            out[:, j] = self.surrogates.predict(self.space, designs, None)
        for i in range(0, len(designs), BLOCK):
            base = self.split.base(designs[i: i + BLOCK])
            for j, c in enumerate(self.conditions):
                if c is not None:
                    out[i: i + BLOCK, j] = self.split.at(base, c)
        return out

    def _check(self, probe: np.ndarray, fast: np.ndarray) -> None:
        """Keep the split regressor only if its predictions `fast` match the Keras model on `probe`."""
        ref = keras_at_conditions(self.space, self.surrogates, probe, self.conditions)
        with np.errstate(invalid="ignore"):
            rel = np.abs(fast.astype(np.float64) - ref) / (1.0 + np.abs(ref))
        self.mismatch = float(np.nanmax(rel)) if np.isfinite(ref).any() else 0.0
        same_nan = np.array_equal(np.isfinite(fast), np.isfinite(ref))
        if not same_nan or not self.mismatch <= CHECK_RTOL:
            self.split = None
        self.checked = True

    def __call__(self, designs: np.ndarray) -> np.ndarray:
        designs = np.asarray(designs)
        if self.split is None:
            return keras_at_conditions(self.space, self.surrogates, designs, self.conditions)
        out = self._split(designs)
        if not self.checked and len(designs):
            self._check(designs[:CHECK_ROWS], out[:CHECK_ROWS])
            if self.split is None:
                return keras_at_conditions(self.space, self.surrogates, designs, self.conditions)
        return out
