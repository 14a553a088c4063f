"""A Keras model as a plain NumPy function, for calls where the framework's own cost dominates.

A served request of a few rows spends most of its time in the framework's call, not in the
arithmetic: for one row of the 4-image size-agnostic champion, the traced TensorFlow call took
2.46 ms and this module's NumPy twin 0.80 ms (measured in-process). `numpy_twin(model)` compiles the
model's functional graph once into a list of NumPy steps, one per layer call:

- Keras layers: Dense, BatchNormalization (inference), Dropout (the identity), Concatenate,
  Average, Activation, nested functional models;
- deepdram's layers through their `numpy_twin()` method (`Affine`, `Columns`, `Gather`, the
  lattice's `Homogenization`), so a layer keeps its NumPy twin beside its Keras code.

A model holding any other layer gets None: its callers keep the framework's call. The twin computes
in float32 as the model does (a layer's own choices kept, e.g. the homogenisation's float64 solve),
so it equals the model to float32 rounding; `Checked` compares the two on the first rows it is
given and keeps the framework's call when they differ.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

CHECK_ROWS = 256  # rows of the first call the twin is checked on against the model
CHECK_RTOL = 1e-4  # |twin - model| <= CHECK_RTOL * (1 + |model|): float32 sums in another order


def activation(fn) -> Callable[[np.ndarray], np.ndarray] | None:
    """The NumPy equivalent of a Keras activation function (None when there is none)."""
    import keras

    a = keras.activations
    if fn is None or fn is a.linear:
        return lambda h: h
    if fn is a.relu:
        return lambda h: np.maximum(h, 0, out=h)
    if fn is a.tanh:
        return lambda h: np.tanh(h, out=h)
    if fn is a.sigmoid:
        return lambda h: np.reciprocal(1 + np.exp(-h), dtype=np.float32)
    return None


def _f32(v) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(v), np.float32)


def _dense(layer) -> Callable | None:
    act = activation(layer.activation)
    if act is None:
        return None
    w = _f32(layer.kernel)
    b = _f32(layer.bias) if layer.use_bias else None

    def run(x, **_):
        h = np.asarray(x, np.float32) @ w
        if b is not None:
            h += b
        return act(h)

    return run


def _batch_norm(layer) -> Callable | None:
    if list(np.atleast_1d(layer.axis)) != [-1]:
        return None
    mean, var = _f32(layer.moving_mean), _f32(layer.moving_variance)
    scale = 1.0 / np.sqrt(var + np.float32(layer.epsilon))
    if layer.scale:
        scale = scale * _f32(layer.gamma)
    shift = -mean * scale + (_f32(layer.beta) if layer.center else 0)
    return lambda x, **_: np.asarray(x, np.float32) * scale + shift


def _concatenate(layer) -> Callable:
    axis = layer.axis
    return lambda xs, **_: np.concatenate([np.asarray(x, np.float32) for x in xs], axis=axis)


def _twin_of(layer) -> Callable | None:
    """The NumPy twin of one layer of a functional graph (None: no twin)."""
    import keras

    own = getattr(layer, "numpy_twin", None)
    if callable(own):
        return own()
    L = keras.layers
    if isinstance(layer, keras.Model):
        return numpy_twin(layer)
    if isinstance(layer, L.Dense):
        return _dense(layer)
    if isinstance(layer, L.BatchNormalization):
        return _batch_norm(layer)
    if isinstance(layer, (L.Dropout, L.GaussianNoise, L.GaussianDropout)):
        return lambda x, **_: x  # the identity at inference
    if isinstance(layer, L.Concatenate):
        return _concatenate(layer)
    if isinstance(layer, L.Average):
        return lambda xs, **_: np.mean(np.stack([np.asarray(x, np.float32) for x in xs]), axis=0, dtype=np.float32)
    if isinstance(layer, L.Activation):
        act = activation(layer.activation)
        return None if act is None else (lambda x, **_: act(np.array(x, np.float32)))
    return None


def _tensor_ids(arg) -> tuple[list[int], bool] | None:
    """Ids of the graph tensors a node's argument holds, and whether it is a list (None: neither a
    tensor nor a list of tensors)."""
    from keras import KerasTensor

    if isinstance(arg, KerasTensor):
        return [id(arg)], False
    if isinstance(arg, (list, tuple)) and arg and all(isinstance(a, KerasTensor) for a in arg):
        return [id(a) for a in arg], True
    return None


def numpy_twin(model) -> Callable[..., np.ndarray] | None:
    """`model` (a Keras functional model) as a NumPy function of float32 arrays (one per model input),
    or None where a layer has no NumPy twin.

    The graph is compiled once into a list of steps. Nodes of one depth that share a layer (the
    regressor a symmetrised model applies to each symmetry image) run as one call on their inputs
    stacked along the rows: every supported layer works row by row, so this is exact, and one
    product of 8 x N rows costs about what one of N rows does."""
    from keras import KerasTensor

    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if nodes_by_depth is None or not inputs or not outputs:
        return None
    input_ids = [id(t) for t in inputs]
    output_ids = [id(t) for t in outputs]
    twins: dict[int, Callable] = {}
    steps: list[tuple[Callable, list[tuple[list[int], bool, list[int]]]]] = []
    for depth in sorted(nodes_by_depth, reverse=True):
        groups: dict[int, list] = {}
        for node in nodes_by_depth[depth]:
            op = node.operation
            if op is None or node.is_input:
                continue
            args, kwargs = node.arguments.args, node.arguments.kwargs
            if len(args) != 1 or any(isinstance(v, KerasTensor) for v in kwargs.values()):
                return None
            found = _tensor_ids(args[0])
            if found is None or len(node.outputs) != 1:
                return None
            if id(op) not in twins:
                twin = _twin_of(op)
                if twin is None:
                    return None
                twins[id(op)] = twin
            groups.setdefault(id(op), []).append((found[0], found[1], [id(node.outputs[0])]))
        steps.extend((twins[k], calls) for k, calls in groups.items())

    def run(*xs: np.ndarray, **_: Any) -> np.ndarray:
        if len(xs) == 1 and len(input_ids) > 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])  # a nested model called with its inputs as one list
        values = {i: np.asarray(x, np.float32) for i, x in zip(input_ids, xs)}
        for twin, calls in steps:
            if len(calls) > 1 and not any(is_list for _, is_list, _ in calls):
                parts = [values[ids[0]] for ids, _, _ in calls]
                y = twin(np.concatenate(parts))
                for (_, _, out), part in zip(calls, np.split(y, np.cumsum([len(p) for p in parts])[:-1])):
                    values[out[0]] = part
                continue
            for ids, is_list, out in calls:
                values[out[0]] = twin([values[i] for i in ids] if is_list else values[ids[0]])
        result = [values[i] for i in output_ids]
        return result[0] if len(result) == 1 else result

    return run


class Checked:
    """`twin(x)` where it was found equal to `reference(x)` on the first rows it got (CHECK_ROWS,
    to CHECK_RTOL), else `reference(x)`; thread-safe, the check runs once."""

    def __init__(self, twin: Callable[[np.ndarray], np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
                 rtol: float = CHECK_RTOL):
        self.twin, self.reference, self.rtol = twin, reference, rtol
        self.agrees: bool | None = None  # None until checked
        self.max_difference: float | None = None
        self._lock = threading.Lock()

    def _check(self, x: np.ndarray) -> None:
        probe = x[:CHECK_ROWS]
        want = np.asarray(self.reference(probe), np.float64)
        try:
            got = np.asarray(self.twin(probe), np.float64)
        except Exception:  # noqa: BLE001 - a twin that cannot run these rows is not used
            self.agrees = False
            return
        ok = got.shape == want.shape and bool(np.all(np.abs(got - want) <= self.rtol * (1 + np.abs(want))))
        self.max_difference = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        self.agrees = ok

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.agrees is None:
            with self._lock:
                if self.agrees is None:
                    self._check(x)
        return self.twin(x) if self.agrees else self.reference(x)
