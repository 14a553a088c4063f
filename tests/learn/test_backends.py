"""Tests of deepdram.learn.backend: models trained on JAX (the training stages' default backend)
load, predict and differentiate alike on TensorFlow (the backend of `evaluate` and served models).

A subprocess trains each kind of network on JAX (Keras fixes its backend at import, and this
process runs TensorFlow); this process loads what it saved and compares. The independent truth
is the saved weights themselves: one network, two backends' arithmetic, float32 agreement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.learn import backend

# Runs under JAX: trains a symmetrised forward model, a size-agnostic model with the in-model
# homogenisation layer, and a CVAE on it (real FE labels of random unit cells; random sizes and
# their labels for the size-agnostic model, whose arithmetic, not its physics, is compared), and
# saves them with their JAX predictions and input gradients on fixed rows.
TRAIN_ON_JAX = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    from deepdram.learn.backend import use

    use("jax")
    import keras
    import numpy as np

    from deepdram.learn import gradients, models as M
    from deepdram.learn.configs import CVAEConfig, RegressorConfig
    from deepdram.spaces.lattice import fem, geometry as lattice
    from deepdram.spaces.lattice import homogenize as H
    from deepdram.spaces.lattice.constants import ZG_VALUES
    from deepdram.spaces.lattice.layers import Homogenization
    from deepdram.spaces.lattice.space import LatticeSpace

    out = Path(sys.argv[1])
    space = LatticeSpace()
    d = np.concatenate([lattice.sample_designs(zg, 120, seed=[3, k]) for k, zg in enumerate(ZG_VALUES)])
    y = fem.cell_properties(d)
    fwd_cfg = RegressorConfig.forward_paper(epochs=2, batch_size=64, learning_rate=0.002,
                                            symmetrize="all")
    fwd, _ = M.train_regressor(d[:500], y[:500], d[500:], y[500:], fwd_cfg, space=space)
    tf_in_training = "tensorflow" in sys.modules  # Keras' saving imports it (serialization_lib)
    M.save_model(fwd, out / "forward.keras")

    rng = np.random.default_rng(0)
    sizes = rng.choice([2, 4, 10, 20], size=(len(d), 2)).astype(np.float64)
    xs = np.concatenate([d, sizes], axis=1)
    sa_cfg = RegressorConfig.size_agnostic_paper(hidden_layers=2, first_width=32, epochs=2, batch_size=64,
                                                 learning_rate=0.002, features="homogenized",
                                                 symmetrize="mirrors")
    sa, _ = M.train_regressor(xs[:500], y[:500] * (1 + 0.01 * sizes[:500, :1]), xs[500:], y[500:], sa_cfg,
                              space=space)
    M.save_model(sa, out / "size_agnostic.keras")

    cvae, _ = M.train_cvae(d[:500], y[:500], d[500:], y[500:], fwd,
                           CVAEConfig.paper(epochs=1, batch_size=64, learning_rate=0.001), space=space)
    M.save_model(cvae.generator, out / "generator.keras")

    # the homogenisation layer computes in float64 on JAX too (JAX_ENABLE_X64, set by `use`)
    inp = keras.Input((42,))
    h_model = keras.Model(inp, Homogenization(name="homogenization")(inp))
    ref = H.features(d)
    h_err = float(np.max(np.abs(M.predict(h_model, d) - ref) / np.abs(ref).max(axis=0)))
    f64 = str(keras.ops.cast(keras.ops.ones(2), "float64").dtype)

    g_in = np.concatenate([y[:50], rng.standard_normal((50, cvae.latent_dim))], axis=1)
    t = y[:50][::-1].astype(np.float32)
    loss = lambda p: keras.ops.mean(keras.ops.square(p - t), axis=-1)
    values, grad = gradients.value_and_grad(fwd, d[:50].astype(np.float32), loss)
    np.savez(out / "jax.npz", d=d, xs=xs, g_in=g_in, t=t, fwd=M.predict(fwd, d), sa=M.predict(sa, xs),
             gen=M.predict(cvae.generator, g_in), values=values, grad=grad)
    (out / "jax.json").write_text(json.dumps({"backend": keras.backend.backend(), "float64": f64,
                                              "homogenization_error": h_err,
                                              "tensorflow_in_training": tf_in_training}))
""")


@pytest.fixture(scope="module")
def jax_trained(tmp_path_factory):
    """The folder of the JAX subprocess's models and predictions."""
    out = tmp_path_factory.mktemp("jax")
    proc = subprocess.run([sys.executable, "-c", TRAIN_ON_JAX, str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_jax_process_runs_jax_in_float64(jax_trained):
    info = json.loads((jax_trained / "jax.json").read_text())
    assert info["backend"] == "jax"
    assert info["float64"] == "float64"
    # the same bound as the TensorFlow layer's test (measured: JAX 6.6e-6, TensorFlow 8.1e-6)
    assert info["homogenization_error"] < 1e-4
    # training on JAX (what every tuning trial does) never loads TensorFlow: seconds per process
    assert info["tensorflow_in_training"] is False


# Runs under JAX: seeds by `how` (ours or Keras' own) and prints what every seeded generator draws.
SEED_AND_DRAW = textwrap.dedent("""
    import json, random, sys

    from deepdram.learn.backend import set_seed, use

    use("jax")
    import keras
    import numpy as np
    from keras.src.utils import rng_utils

    seed = set_seed if sys.argv[1] == "ours" else keras.utils.set_random_seed
    draws = []
    for s in (7, 7, 11):
        seed(s)
        draws.append([random.random(), float(np.random.rand()), keras.random.normal((3,)).tolist(),
                      rng_utils.get_random_seed()])
    layer = keras.layers.Dense(2)
    seed(5)
    layer.build((None, 3))
    print(json.dumps({"draws": draws, "kernel": np.asarray(layer.kernel).tolist(),
                      "tensorflow_imported": "tensorflow" in sys.modules}))
""")


def test_set_seed_draws_as_keras_does_without_tensorflow():
    """On JAX, backend.set_seed gives every generator (Python, NumPy, Keras' global seed generator,
    so weight initialisers) exactly the draws of keras.utils.set_random_seed, which imports TensorFlow."""
    got = {}
    for how in ("ours", "keras"):
        proc = subprocess.run([sys.executable, "-c", SEED_AND_DRAW, how], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[how] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ours"]["draws"] == got["keras"]["draws"]
    assert got["ours"]["kernel"] == got["keras"]["kernel"]
    first, again, other = got["ours"]["draws"]
    assert first == again and first[:3] != other[:3]  # a reseed repeats; another seed differs
    assert got["keras"]["tensorflow_imported"] is True  # the cost set_seed avoids (TF is installed)
    assert got["ours"]["tensorflow_imported"] is False
    with pytest.raises(InputError, match="a random seed must be an integer; got 1.5"):
        backend.set_seed(1.5)


@pytest.mark.parametrize("name,inputs", [("forward", "d"), ("size_agnostic", "xs"), ("generator", "g_in")])
def test_jax_trained_models_predict_alike_on_tensorflow(jax_trained, name, inputs):
    import keras

    from deepdram.learn import models as M
    from deepdram.spaces.lattice.space import LatticeSpace

    assert keras.backend.backend() == "tensorflow"
    ref = np.load(jax_trained / "jax.npz")
    model = M.load_model(jax_trained / f"{name}.keras", LatticeSpace())
    got = M.predict(model, ref[inputs])
    want = ref[{"forward": "fwd", "size_agnostic": "sa", "generator": "gen"}[name]]
    assert got.shape == want.shape and np.all(np.isfinite(got))
    assert np.std(want, axis=0).min() > 0  # trained to something that varies, not a constant
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


def test_input_gradients_agree_across_backends(jax_trained):
    import keras

    from deepdram.learn import gradients
    from deepdram.learn import models as M
    from deepdram.spaces.lattice.space import LatticeSpace

    ref = np.load(jax_trained / "jax.npz")
    model = M.load_model(jax_trained / "forward.keras", LatticeSpace())
    t = ref["t"]
    values, grad = gradients.value_and_grad(model, ref["d"][:50].astype(np.float32),
                                            lambda p: keras.ops.mean(keras.ops.square(p - t), axis=-1))
    np.testing.assert_allclose(values, ref["values"], rtol=1e-3, atol=1e-7)
    assert np.abs(ref["grad"]).max() > 0
    np.testing.assert_allclose(grad, ref["grad"], rtol=1e-3, atol=1e-4 * np.abs(ref["grad"]).max())


def test_use_names_the_backend_and_refuses_a_switch():
    import keras

    with pytest.raises(InputError, match=r"keras.backend must be one of \['tensorflow', 'jax'\]; got 'torch'"):
        backend.use("torch")
    assert keras.backend.backend() == "tensorflow"
    assert backend.use("tensorflow") == "tensorflow"
    with pytest.raises(InputError, match="already runs on tensorflow in this process; jax must be chosen"):
        backend.use("jax")
