"""NumPy twins of deepdram's models against the Keras models themselves, and against the NumPy
float64 homogenisation (an independent implementation of the physics features)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepdram.learn import models, numpy_graph  # noqa: E402
from deepdram.learn.configs import CVAEConfig, RegressorConfig  # noqa: E402
from deepdram.spaces.lattice.space import LatticeSpace  # noqa: E402

SPACE = LatticeSpace()


def _random_weights(model, seed: int) -> None:
    """Non-trivial weights everywhere (biases and batch statistics included), so every layer counts."""
    rng = np.random.default_rng(seed)
    model.set_weights([w if w.ndim == 0 else (rng.normal(0, 0.3, w.shape) if "variance" not in v.path
                                               else rng.uniform(0.5, 2.0, w.shape)).astype(w.dtype)
                       for w, v in zip(model.get_weights(), model.weights)])


def _designs(n: int, seed: int = 0) -> np.ndarray:
    return np.concatenate([SPACE.sample(n // 2, seed=seed, zg=2.5), SPACE.sample(n - n // 2, seed=seed + 1, zg=4.0)])


def _regressor(n_in: int, symmetrize: str, **cfg):
    keras.utils.set_random_seed(0)
    features = SPACE.feature_set("homogenized") if cfg.pop("physics", False) else None
    _, full = models.build_regressor(n_in, 4, RegressorConfig(hidden_layers=3, first_width=32, **cfg),
                                     x_scale=np.linspace(0.5, 1.5, n_in), x_offset=np.linspace(-0.1, 0.1, n_in),
                                     y_scale=np.array([2.0, 3.0, 0.5, 0.25]), y_offset=np.array([0.1, 0.0, -0.2, 0.3]),
                                     features=features, n_variables=SPACE.n_variables)
    return models.symmetrize(full, SPACE, symmetrize)


@pytest.mark.parametrize("case", ["forward, 8 images", "size-agnostic, 4 images, physics features",
                                  "batch norm and tanh, no images"])
def test_the_twin_of_a_regressor_equals_the_keras_model(case):
    rng = np.random.default_rng(1)
    if case.startswith("forward"):
        model, x = _regressor(42, "all"), _designs(300)
    elif case.startswith("size"):
        model = _regressor(44, "mirrors", physics=True)
        x = np.hstack([_designs(300), rng.choice(np.arange(2, 21, 2), (300, 2))])
    else:
        model = _regressor(42, "none", batch_norm=True, activation="tanh", output_activation="none")
        x = _designs(300)
    _random_weights(model, 2)
    twin = numpy_graph.numpy_twin(model)
    assert twin is not None
    want = keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False))
    for rows in (x[:1], x[:16], x):
        got = twin(rows)
        assert got.dtype == np.float32 and got.shape == (len(rows), 4)
        np.testing.assert_allclose(got, want[: len(rows)], rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # one row alone, or among others: the same prediction (rows never mix; BLAS may round a 1-row
    # product differently)
    np.testing.assert_allclose(twin(x[5:6])[0], twin(x[:16])[5], rtol=1e-6, atol=1e-7)


def test_the_twin_of_the_generator_equals_the_keras_model():
    keras.utils.set_random_seed(0)
    forward = _regressor(42, "none")
    parts = models.build_cvae(CVAEConfig(latent_dim=3, encoder_hidden=[24], decoder_hidden=[24]), forward)
    gen = parts.generator
    _random_weights(gen, 3)
    rng = np.random.default_rng(0)
    x = np.hstack([rng.uniform(0, 0.3, (200, 2)), rng.uniform(-0.5, 0.5, (200, 2)), rng.normal(size=(200, 3))])
    twin = numpy_graph.numpy_twin(gen)
    assert twin is not None
    np.testing.assert_allclose(twin(x), keras.ops.convert_to_numpy(gen(x.astype(np.float32))), rtol=1e-5, atol=1e-6)


def test_the_homogenization_twin_equals_the_float64_numpy_features():
    from deepdram.spaces.lattice import homogenize
    from deepdram.spaces.lattice.layers import Homogenization

    layer = Homogenization()
    layer.build((None, 42))
    d = _designs(400, seed=5)
    got = layer.numpy_twin()(d.astype(np.float32))
    # the layer's own float32 assembly: ~1e-5 of each feature's scale from the float64 reference
    want = homogenize.features(d.astype(np.uint8), validate=False)
    err = np.abs(got - want) / (1e-4 * np.abs(want) + 1e-5 * np.abs(want).max(axis=0))
    assert err.max() <= 1, (np.unravel_index(err.argmax(), err.shape), err.max())
    # and as close to the Keras layer (float32 sums in another order, amplified by the solve)
    keras_out = keras.ops.convert_to_numpy(layer(d.astype(np.float32)))
    assert (np.abs(got - keras_out) / (1e-4 * np.abs(want) + 1e-5 * np.abs(want).max(axis=0))).max() <= 1


def test_a_model_with_a_layer_without_twin_gets_none():
    inp = keras.Input((5,))
    h = keras.layers.Dense(4, activation="relu")(inp)
    assert numpy_graph.numpy_twin(keras.Model(inp, keras.layers.Reshape((2, 2))(h))) is None
    assert numpy_graph.numpy_twin(keras.Model(inp, keras.layers.Dense(3, activation="softplus")(h))) is None
    assert numpy_graph.numpy_twin(keras.Model(inp, keras.layers.Dense(3)(h))) is not None


def test_checked_uses_the_twin_only_where_it_agrees_and_checks_once():
    calls = {"reference": 0}

    def reference(x):
        calls["reference"] += 1
        return x.sum(axis=1, keepdims=True)

    x = np.arange(12.0).reshape(6, 2)
    good = numpy_graph.Checked(lambda a: a.sum(axis=1, keepdims=True) + 1e-9, reference)
    for _ in range(3):
        np.testing.assert_allclose(good(x), reference(x))
    assert good.agrees is True and calls["reference"] == 4  # the check, then the 3 of this test
    bad = numpy_graph.Checked(lambda a: a.sum(axis=1, keepdims=True) * 1.01, reference)
    np.testing.assert_array_equal(bad(x), reference(x))
    assert bad.agrees is False and bad.max_difference == pytest.approx(0.21)
    broken = numpy_graph.Checked(lambda a: 1 / 0, reference)
    np.testing.assert_array_equal(broken(x), reference(x))
    assert broken.agrees is False
