"""The custom Keras layers of deepdram's models (registered as "deepdram>Name" for loading).

Every model deepdram hands out works in PHYSICAL units: the MinMax scalers are `Affine` layers
inside the model, symmetry images are `Gather` layers, so one `.keras` file is all a caller needs.
The layers use `keras.ops` only, so they run on any Keras 3 backend.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras imports TensorFlow: no C++ log noise

import keras
import numpy as np
from keras import ops

from deepdram.errors import InputError


@keras.saving.register_keras_serializable(package="deepdram")
class Affine(keras.layers.Layer):
    """y = x * scale + offset, per feature, with fixed (non-trainable) scale and offset.

    Used for MinMax scaling inside the models and for its inverse (`inverse()`). The values are
    kept in float64 in the layer config (so the inverse is exact) and as float32 weights.
    """

    def __init__(self, scale, offset, **kwargs):
        super().__init__(**kwargs)
        scale = np.asarray(scale, dtype=np.float64).ravel()
        offset = np.asarray(offset, dtype=np.float64).ravel()
        if scale.shape != offset.shape:
            raise InputError(f"Affine: scale has {scale.size} values but offset has {offset.size}")
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset))):
            raise InputError("Affine: scale and offset must be finite")
        if np.any(scale == 0):
            raise InputError("Affine: scale must be non-zero (the layer must be invertible)")
        self.scale_values = scale
        self.offset_values = offset

    @property
    def units(self) -> int:
        return int(self.scale_values.size)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.units:
            raise ValueError(f"Affine '{self.name}' expects {self.units} features; got {input_shape[-1]}")
        self.scale = self.add_weight(name="scale", shape=(self.units,), initializer="ones",
                                     trainable=False)
        self.offset = self.add_weight(name="offset", shape=(self.units,), initializer="zeros",
                                      trainable=False)
        self.scale.assign(self.scale_values.astype(self.scale.dtype))
        self.offset.assign(self.offset_values.astype(self.offset.dtype))

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return x * self.scale + self.offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def numpy_twin(self):
        """This layer as a NumPy function (`deepdram.learn.numpy_graph`)."""
        scale, offset = (np.asarray(ops.convert_to_numpy(v), np.float32) for v in (self.scale, self.offset))
        return lambda x, **_: np.asarray(x, np.float32) * scale + offset

    def inverse(self, name: str | None = None) -> "Affine":
        """The layer undoing this one: x = (y - offset) / scale."""
        return Affine(1.0 / self.scale_values, -self.offset_values / self.scale_values, name=name)

    def get_config(self):
        config = super().get_config()
        config.update(scale=[float(v) for v in self.scale_values],
                      offset=[float(v) for v in self.offset_values])
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class Columns(keras.layers.Layer):
    """Columns start:stop of a 2D input (splits one packed input into its parts)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[:, self.start : self.stop]

    def numpy_twin(self):
        """This layer as a NumPy function (`deepdram.learn.numpy_graph`)."""
        return lambda x, **_: np.asarray(x)[:, self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start)

    def get_config(self):
        config = super().get_config()
        config.update(start=self.start, stop=self.stop)
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class Gather(keras.layers.Layer):
    """Columns of a 2D input in a fixed order (a symmetry image of a design, or of properties)."""

    def __init__(self, indices, **kwargs):
        super().__init__(**kwargs)
        self.indices = [int(i) for i in indices]

    def call(self, inputs):
        return ops.take(inputs, ops.convert_to_tensor(np.asarray(self.indices, dtype="int32")), axis=1)

    def numpy_twin(self):
        """This layer as a NumPy function (`deepdram.learn.numpy_graph`)."""
        indices = np.asarray(self.indices, np.intp)
        return lambda x, **_: np.asarray(x)[:, indices]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.indices))

    def get_config(self):
        config = super().get_config()
        config.update(indices=self.indices)
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class Sampling(keras.layers.Layer):
    """Reparameterisation trick: z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (seeded)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mean, log_var = inputs
        eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="deepdram")
class KLDivergence(keras.layers.Layer):
    """Per-sample KL(N(mean, exp(log_var)) || N(0, I)), summed over the latent dimensions: (N, 1).

    `free_bits` > 0: each dimension's term counts as at least that many nats ("free bits",
    Kingma et al. 2016), so the KL term stops pulling a dimension once it carries that little."""

    def __init__(self, free_bits: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not float(free_bits) >= 0:
            raise InputError(f"free_bits must be >= 0 nats; got {free_bits!r}")
        self.free_bits = float(free_bits)

    def call(self, inputs):
        mean, log_var = inputs
        kl = -0.5 * (1.0 + log_var - ops.square(mean) - ops.exp(log_var))
        if self.free_bits > 0:
            kl = ops.maximum(kl, self.free_bits)
        return ops.sum(kl, axis=-1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "free_bits": self.free_bits}

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)
