"""Choosing the Keras backend of a process: TensorFlow or JAX.

Keras fixes its backend when it is first imported, so a stage picks it (params.yaml `keras.backend`)
before any of its code imports Keras. A model saved on one backend loads and serves on the other:
the training stages may run on JAX (faster per epoch on CPU) while `evaluate` and every served model
run on TensorFlow.
"""

from __future__ import annotations

import os
import sys

from deepdram.errors import InputError

BACKENDS = ("tensorflow", "jax")


def use(name: str) -> str:
    """Make `name` this process's Keras backend; returns it. Fails, naming both, when Keras was
    already imported on another backend (it cannot switch)."""
    if name not in BACKENDS:
        raise InputError(f"keras.backend must be one of {list(BACKENDS)}; got {name!r}")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise InputError(f"Keras already runs on {current} in this process; {name} must be chosen "
                             "before Keras is imported")
        return name
    os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        # Without it JAX silently computes float64 as float32: the homogenisation layer's solve and
        # Schur complement, where terms cancel, need float64 (as on TensorFlow). Keras keeps its
        # float32 weights and inputs either way, so training runs at the same speed.
        os.environ["JAX_ENABLE_X64"] = "1"
    return name


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and Keras as `keras.utils.set_random_seed` does, without importing TensorFlow
    on another backend."""
    import keras

    if not isinstance(seed, int):
        raise InputError(f"a random seed must be an integer; got {seed!r}")
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    # keras.utils.set_random_seed imports TensorFlow whenever it is installed, only to seed it: on
    # JAX that costs every training process seconds and a second framework's memory, for nothing
    # (Keras' JAX trainer shuffles with NumPy). The rest of what it does, in the same order:
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
