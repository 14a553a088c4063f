"""Gradients of a Keras model's output with respect to its INPUTS, on the active backend
(TensorFlow or JAX): what the gradient designers (backprop, active learning) optimise through."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def value_and_grad(model, x: np.ndarray, loss: Callable) -> tuple[np.ndarray, np.ndarray]:
    """(loss(model(x)) per row (N,), d loss / d x (N, D)) for a batch, in one graph call.

    `loss` maps the model's (N, P) output tensor to (N,) in Keras backend ops."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.convert_to_tensor(np.asarray(x, np.float32))
        with tf.GradientTape() as tape:
            tape.watch(xt)
            values = loss(model(xt, training=False))
            total = tf.reduce_sum(values)
        return values.numpy().astype(np.float64), tape.gradient(total, xt).numpy().astype(np.float64)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def f(xx):
            v = loss(model(xx, training=False))
            return jnp.sum(v), v

        (_, values), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(x, jnp.float32))
        return np.asarray(values, np.float64), np.asarray(grad, np.float64)
    raise NotImplementedError(f"input gradients are implemented for the tensorflow and jax backends; got {backend}")


class Adam:
    """Adam on a NumPy array of parameters (one step per `step(grad)`)."""

    def __init__(self, shape, lr: float = 0.05, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        """The update to subtract from the parameters."""
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
