"""The traced fine-tuning step (active learning's surrogate update) against Keras' own `fit`."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepdram.learn.finetune import FineTuner  # noqa: E402


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    return keras.Model(inp, keras.layers.Dense(3)(h))


def _rows(n: int = 40):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.stack([x[:, 0] * 0.1, x[:, 1] ** 2, x[:, 2] - x[:, 3]], axis=1).astype(np.float32)
    return x, y


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the traced step is TensorFlow's")
def test_traced_steps_match_keras_fit_on_full_batches():
    # one batch holds every row, so shuffling cannot matter: both paths take the same Adam steps
    x, y = _rows()
    traced, fitted = _model(), _model()
    FineTuner(traced, 1e-2, batch_size=64)(x, y, epochs=8, seed=0)
    ref = FineTuner(fitted, 1e-2, batch_size=64)
    ref.traced_path = False
    assert ref(x, y, epochs=8, seed=0) == 8
    for a, b in zip(traced.get_weights(), fitted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(traced.get_weights()[0], _model().get_weights()[0])  # it did move


@pytest.mark.parametrize("traced", [True, False], ids=["traced", "keras-fit"])
def test_the_weighted_error_falls_and_a_deadline_stops_after_one_step(traced):
    if traced and keras.backend.backend() != "tensorflow":
        pytest.skip("the traced step is TensorFlow's")
    x, y = _rows()
    m = _model()
    w = 1.0 / np.std(y, axis=0) ** 2

    def err():
        return float(np.mean((np.asarray(m(x)) - y) ** 2 * w))

    before = err()
    tuner = FineTuner(m, 1e-2, batch_size=16)
    tuner.traced_path = traced
    assert tuner(x, y, epochs=30, seed=0) == 30 * 3
    assert err() < 0.5 * before
    assert tuner(x, y, epochs=30, seed=0, time_left=lambda: 0.0) == 1


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the traced step is TensorFlow's")
def test_a_kept_tuner_is_reset_to_a_fresh_state_and_traces_once():
    from deepdram.learn.finetune import tuner_for

    x, y = _rows()
    start = _model().get_weights()
    m = _model()
    t = tuner_for(m, 1e-2, batch_size=16)
    t(x, y, epochs=5, seed=0)
    first = m.get_weights()
    m.set_weights(start)
    assert tuner_for(m, 1e-2, batch_size=16) is t  # kept with the model, moments and step count reset
    t(x, y, epochs=5, seed=0)
    for a, b in zip(first, m.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert t._step.experimental_get_tracing_count() == 1
