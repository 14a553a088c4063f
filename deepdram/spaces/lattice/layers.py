"""The lattice's physics feature set for the regressors: periodic-homogenisation features.

`Homogenization` computes, inside a saved model, the same 12 features as `homogenize.features`
(registered as "deepdram>Homogenization", so models saved before the reorganisation still load);
`HOMOGENIZED` bundles it with the NumPy path the trainers use for the core's inputs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import ops

from deepdram.spaces.base import FeatureSet


@keras.saving.register_keras_serializable(package="deepdram")
class Homogenization(keras.layers.Layer):
    """(N, 42) designs -> (N, 12) periodic-homogenisation features (`deepdram.homogenize`).

    The same FE computation as `homogenize.features` in backend ops (assembly as one matrix
    product, a batched 25 x 25 solve), so a saved model computes its own physics features
    (relative difference to the float64 NumPy reference ~1e-5). No weights: the tables come from
    the geometry and material constants.
    """

    def build(self, input_shape):
        from deepdram.spaces.lattice import homogenize

        # Constants, converted once here rather than on every call.
        self._tables = ops.convert_to_tensor(homogenize.beam_tables(), "float32")
        self._opposite = ops.convert_to_tensor(homogenize.OPPOSITE.astype("int32"))
        self._perimeter = ops.convert_to_tensor(homogenize.ON_PERIMETER)
        self._norm = homogenize.NORM

    def call(self, inputs):
        from deepdram.spaces.lattice import homogenize

        x = ops.cast(inputs, "float32")
        union = ops.maximum(x, ops.take(x, self._opposite, axis=1))
        w = ops.where(self._perimeter, 0.5 * union, x)
        # Assembly in float32 (weights are 0, 0.5, 1: exact; float64 products are ~40x slower on
        # CPU); the solve and the Schur complement, where terms cancel, in float64.
        k = ops.matmul(w, self._tables)
        k = ops.reshape(ops.cast(k, "float64"), (-1, homogenize.N_DOF, homogenize.N_DOF))
        lo, hi = int(homogenize.KEPT[0]), homogenize.N_FREE
        kwe = k[:, lo:hi, hi:]
        sol = ops.solve(k[:, lo:hi, lo:hi], kwe)
        c = k[:, hi:, hi:] - ops.matmul(ops.transpose(kwe, (0, 2, 1)), sol)
        c = 0.5 * (c + ops.transpose(c, (0, 2, 1))) * self._norm
        s = ops.inv(c)
        e1, e2 = 1.0 / s[:, 0, 0], 1.0 / s[:, 1, 1]
        f = ops.stack([c[:, 0, 0], c[:, 1, 1], c[:, 0, 1], c[:, 0, 2], c[:, 1, 2], c[:, 2, 2],
                       e1, e2, -s[:, 0, 1] * e1, -s[:, 0, 1] * e2, s[:, 0, 2] * e1, s[:, 1, 2] * e2], axis=1)
        return ops.cast(f, self.compute_dtype)

    def numpy_twin(self):
        """This layer as a NumPy function (`deepdram.learn.numpy_graph`): the same steps in the same
        precisions as `call`."""
        from deepdram.spaces.lattice import homogenize

        tables = homogenize.beam_tables().astype(np.float32)
        opposite, perimeter, norm = homogenize.OPPOSITE.astype(np.intp), homogenize.ON_PERIMETER, homogenize.NORM
        lo, hi, n = int(homogenize.KEPT[0]), homogenize.N_FREE, homogenize.N_DOF

        def run(inputs, **_):
            x = np.asarray(inputs, np.float32)
            union = np.maximum(x, x[:, opposite])
            w = np.where(perimeter, np.float32(0.5) * union, x)
            k = (w @ tables).astype(np.float64).reshape(-1, n, n)
            kwe = k[:, lo:hi, hi:]
            sol = np.linalg.solve(k[:, lo:hi, lo:hi], kwe)
            c = k[:, hi:, hi:] - np.transpose(kwe, (0, 2, 1)) @ sol
            c = 0.5 * (c + np.transpose(c, (0, 2, 1))) * norm
            s = np.linalg.inv(c)
            e1, e2 = 1.0 / s[:, 0, 0], 1.0 / s[:, 1, 1]
            f = np.stack([c[:, 0, 0], c[:, 1, 1], c[:, 0, 1], c[:, 0, 2], c[:, 1, 2], c[:, 2, 2],
                          e1, e2, -s[:, 0, 1] * e1, -s[:, 0, 1] * e2, s[:, 0, 2] * e1, s[:, 1, 2] * e2], axis=1)
            return f.astype(np.float32)

        return run

    def compute_output_shape(self, input_shape):
        from deepdram.spaces.lattice.homogenize import N_FEATURES

        return (input_shape[0], N_FEATURES)


def homogenized_features(designs: np.ndarray) -> np.ndarray:
    """(N, 12) features of the design bits, by the compiled kernel (no validity check)."""
    from deepdram.spaces.lattice.homogenize import features

    return features(np.asarray(designs).astype(np.uint8), validate=False)


HOMOGENIZED = FeatureSet("homogenized", 12, Homogenization, "homogenization", homogenized_features)
