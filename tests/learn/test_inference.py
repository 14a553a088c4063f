"""The designers' traced model calls against eager calls of the same model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepdram.learn import inference, models  # noqa: E402


def test_traced_calls_equal_eager_calls_for_any_batch_size_and_follow_weight_updates():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    m = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(16, activation="relu")(inp)))
    x = np.random.default_rng(0).normal(size=(1000, 6))
    for n, batch in ((1, 65536), (17, 65536), (1000, 300), (0, 10)):
        got = inference.predict(m, x[:n], batch_size=batch)
        assert got.dtype == np.float32 and got.shape == (n, 3)
        np.testing.assert_allclose(got, models.predict(m, x[:n]), rtol=1e-6, atol=1e-7)
    m.set_weights([w * 0.5 for w in m.get_weights()])  # a fine-tuned copy: the trace reads its variables
    np.testing.assert_allclose(inference.predict(m, x), models.predict(m, x), rtol=1e-6, atol=1e-7)
    if keras.backend.backend() == "tensorflow":
        assert inference._TRACED[m].experimental_get_tracing_count() == 1
