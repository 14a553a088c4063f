"""The eager fine-tuning step (active learning's surrogate update) against Keras' own `fit`."""

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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the eager path is TensorFlow's")
def test_eager_steps_match_keras_fit_on_full_batches():
    # one batch holds every row, so shuffling cannot matter: both paths take the same Adam steps
    x, y = _rows()
    eager, fitted = _model(), _model()
    FineTuner(eager, 1e-2, batch_size=64)(x, y, epochs=8, seed=0)
    ref = FineTuner(fitted, 1e-2, batch_size=64)
    ref.eager = False
    assert ref(x, y, epochs=8, seed=0) == 8
    for a, b in zip(eager.get_weights(), fitted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(eager.get_weights()[0], _model().get_weights()[0])  # it did move


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "keras-fit"])
def test_the_weighted_error_falls_and_a_deadline_stops_after_one_step(eager):
    if eager and keras.backend.backend() != "tensorflow":
        pytest.skip("the eager path is TensorFlow's")
    x, y = _rows()
    m = _model()
    w = 1.0 / np.std(y, axis=0) ** 2

    def err():
        return float(np.mean((np.asarray(m(x)) - y) ** 2 * w))

    before = err()
    tuner = FineTuner(m, 1e-2, batch_size=16)
    tuner.eager = eager
    assert tuner(x, y, epochs=30, seed=0) == 30 * 3
    assert err() < 0.5 * before
    assert tuner(x, y, epochs=30, seed=0, time_left=lambda: 0.0) == 1
