"""Few-step updates of a trained Keras model on a handful of rows (active learning's per-request
surrogate copy): Adam on a property-weighted MSE, stoppable at any step by a deadline.

On TensorFlow the steps run eagerly. Tracing Keras' train step for the symmetrised regressors took
3-7 s on 2 cores, longer than the whole update of a few dozen rows (an eager step of 60 rows takes
tens of ms), and a design request clones and updates its own copy each time. Other backends use
Keras' `fit`, compiled once per `FineTuner`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class FineTuner:
    """Updates `model` in place: `tuner(x, y, epochs, seed, time_left)` runs up to `epochs` passes of
    Adam over (x, y) in shuffled batches of at most `batch_size` rows, minimising the mean over rows
    of sum_j w_j (y_j - p_j)^2 / P, with w_j = 1 / spread_j^2 of the first call's y (fixed then: a
    compiled step bakes its constants in, so every backend weighs the same way)."""

    def __init__(self, model, lr: float, batch_size: int = 256):
        import keras

        self.model, self.lr, self.batch_size = model, float(lr), int(batch_size)
        self.eager = keras.backend.backend() == "tensorflow"
        self.weights: np.ndarray | None = None
        self.optimizer = None

    def _loss_weights(self, y: np.ndarray) -> np.ndarray:
        if self.weights is None:
            self.weights = (1.0 / np.maximum(np.std(y, axis=0), 1e-6) ** 2).astype(np.float32)
        return self.weights

    def __call__(self, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
                 time_left: Callable[[], float] | None = None) -> int:
        """Update on (x, y); the number of optimizer steps taken."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        w = self._loss_weights(y)
        if self.eager:
            return self._eager(x, y, w, int(epochs), seed, time_left)
        return self._fit(x, y, w, int(epochs), seed, time_left)

    def _eager(self, x, y, w, epochs, seed, time_left) -> int:
        import keras
        import tensorflow as tf

        if self.optimizer is None:
            self.optimizer = keras.optimizers.Adam(learning_rate=self.lr)
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        variables = self.model.trainable_variables
        wt = tf.constant(w)
        steps = 0
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(x), self.batch_size):
                rows = order[i:i + self.batch_size]
                with tf.GradientTape() as tape:
                    p = self.model(x[rows], training=True)
                    loss = tf.reduce_mean(tf.square(y[rows] - p) * wt)
                self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                steps += 1
                if time_left is not None and time_left() <= 0:
                    return steps
        return steps

    def _fit(self, x, y, w, epochs, seed, time_left) -> int:
        import keras

        keras.utils.set_random_seed(seed)
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
