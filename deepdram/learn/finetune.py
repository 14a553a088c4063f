"""Few-step updates of a trained Keras model on a handful of rows (active learning's per-request
surrogate copy): Adam on a property-weighted MSE, stoppable at any step by a deadline.

On TensorFlow each step is one traced graph per model, kept with the model: a request's copy of a
champion is reused by the next request (`design.methods.active.surrogate_copy`), so the trace
(2-4 s for a symmetrised champion on 2 cores) is paid once per process, and a step of 60 rows then
takes milliseconds (an eager step through the 8 symmetry images took 0.7 s; Keras' `fit` retraced
its train step at every `compile`). Other backends use Keras' `fit`, compiled once per tuner.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from deepdram.learn.backend import set_seed

_TUNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tuner_for(model, lr: float, batch_size: int = 256) -> FineTuner:
    """The model's FineTuner (kept with the model, traced step included), reset to a fresh Adam state
    with learning rate `lr` and no property weights yet: as new for every request."""
    t = _TUNERS.get(model)
    if t is None or t.batch_size != int(batch_size) or not t.traced_path:
        t = _TUNERS[model] = FineTuner(model, lr, batch_size)
    else:
        t.reset(lr)
    return t


class FineTuner:
    """Updates `model` in place: `tuner(x, y, epochs, seed, time_left)` runs up to `epochs` passes of
    Adam over (x, y) in shuffled batches of at most `batch_size` rows, minimising the mean over rows
    of sum_j w_j (y_j - p_j)^2 / P, with w_j = 1 / spread_j^2 of the first call's y (fixed then: a
    compiled step bakes its constants in, so every backend weighs the same way)."""

    def __init__(self, model, lr: float, batch_size: int = 256):
        import keras

        self.model, self.lr, self.batch_size = model, float(lr), int(batch_size)
        self.traced_path = keras.backend.backend() == "tensorflow"
        self.weights: np.ndarray | None = None
        self.optimizer = None
        self._step = None

    def reset(self, lr: float) -> None:
        """A fresh Adam state (moments and step count zero) at learning rate `lr`; weights unset."""
        self.lr, self.weights = float(lr), None
        if self.optimizer is not None:
            for v in self.optimizer.variables:
                v.assign(np.zeros(v.shape, v.dtype))
            self.optimizer.learning_rate = self.lr

    def _loss_weights(self, y: np.ndarray) -> np.ndarray:
        if self.weights is None:
            self.weights = (1.0 / np.maximum(np.std(y, axis=0), 1e-6) ** 2).astype(np.float32)
        return self.weights

    def __call__(self, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
                 time_left: Callable[[], float] | None = None) -> int:
        """Update on (x, y); the number of optimizer steps taken."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        w = self._loss_weights(y)
        if self.traced_path:
            return self._traced(x, y, w, int(epochs), seed, time_left)
        return self._fit(x, y, w, int(epochs), seed, time_left)

    def _step_fn(self):
        """The traced Adam step (rows, targets, weights) -> loss, built once per model."""
        import keras
        import tensorflow as tf

        if self._step is None:
            model = self.model
            if self.optimizer is None:
                self.optimizer = keras.optimizers.Adam(learning_rate=self.lr)
            opt = self.optimizer
            opt.build(model.trainable_variables)
            n_in, n_out = int(model.inputs[0].shape[-1]), int(model.outputs[0].shape[-1])

            @tf.function(input_signature=[tf.TensorSpec([None, n_in], tf.float32),
                                          tf.TensorSpec([None, n_out], tf.float32),
                                          tf.TensorSpec([n_out], tf.float32)])
            def step(xb, yb, wt):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.square(yb - model(xb, training=True)) * wt)
                variables = model.trainable_variables
                opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return loss

            self._step = step
        return self._step

    def _traced(self, x, y, w, epochs, seed, time_left) -> int:
        step = self._step_fn()
        set_seed(seed)
        rng = np.random.default_rng(seed)
        steps = 0
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(x), self.batch_size):
                rows = order[i:i + self.batch_size]
                step(x[rows], y[rows], w)
                steps += 1
                if time_left is not None and time_left() <= 0:
                    return steps
        return steps

    def _fit(self, x, y, w, epochs, seed, time_left) -> int:
        import keras

        set_seed(seed)
        if self.optimizer is None:
            wt = keras.ops.convert_to_tensor(w)

            def loss(t, p):
                return keras.ops.mean(keras.ops.square(t - p) * wt, axis=-1)

            self.optimizer = keras.optimizers.Adam(learning_rate=self.lr)
            self.model.compile(optimizer=self.optimizer, loss=loss)
        stopper = _Deadline(time_left)
        self.model.fit(x, y, epochs=epochs, batch_size=min(self.batch_size, len(x)), verbose=0, shuffle=True,
                       callbacks=[stopper])
        return stopper.steps


def _Deadline(time_left: Callable[[], float] | None):
    """A Keras callback that counts the steps and stops training once `time_left()` reaches 0."""
    import keras

    class Deadline(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time_left is not None and time_left() <= 0:
                self.model.stop_training = True

    return Deadline()
