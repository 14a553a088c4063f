"""Input gradients for the gradient designers: the traced quadratic form against the eager path
with each objective written directly in Keras ops, and against central differences of the model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepdram.design.objectives import Objective  # noqa: E402
from deepdram.learn import gradients  # noqa: E402

OBJECTIVES = [Objective("mse", "mse"), Objective("scaled", "scaled", weights=(4.0, 1.0, 0.5)),
              Objective("max-b", "max", index=1), Objective("min-c", "min", index=2)]
TARGET = np.array([0.1, -0.2, 0.3])


def _expression(obj, y, target):
    """The objective written directly in Keras ops (independently of its quadratic form)."""
    from keras import ops

    if obj.kind == "mse":
        return ops.mean(ops.square(y - np.float32(target)), axis=-1)
    if obj.kind == "scaled":
        return ops.mean(ops.square(y - np.float32(target)) * np.float32(obj.weights), axis=-1)
    return -y[:, obj.index] if obj.kind == "max" else y[:, obj.index]


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    h = keras.layers.Dense(12, activation="tanh")(inp)
    return keras.Model(inp, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("obj", OBJECTIVES, ids=lambda o: o.name)
def test_the_traced_quadratic_form_is_each_objective(obj):
    m = _model()
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    target = TARGET if obj.needs_target else None
    v, g = gradients.quadratic_value_and_grad(m, x, *obj.quadratic_form(3, target))
    v_ref, g_ref = gradients.value_and_grad(m, x, lambda y: _expression(obj, y, target))
    np.testing.assert_allclose(v, obj(np.asarray(m(x)), target), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
    # central differences of the objective of the model's output, in float64 around float32 inputs
    h = 1e-2
    fd = np.zeros_like(g)
    for j in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, j] = h
        fd[:, j] = (obj(np.asarray(m(x + e), float), target) - obj(np.asarray(m(x - e), float), target)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=2e-4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the traced step is TensorFlow's")
def test_one_trace_per_model_for_every_target_weight_and_batch_size():
    m = _model()
    rng = np.random.default_rng(1)
    for n, obj in zip((3, 50, 11, 200), OBJECTIVES):
        gradients.quadratic_value_and_grad(m, rng.normal(size=(n, 5)), *obj.quadratic_form(3, rng.normal(size=3)))
    assert gradients._TRACED[m].experimental_get_tracing_count() == 1
