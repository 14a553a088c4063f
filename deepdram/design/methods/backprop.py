"""`backprop` (GIDN): design by gradient descent through the surrogate.

The design variables are relaxed to [0, 1] by a sigmoid of free logits whose temperature is
annealed from 1 to `tau_end` (binary spaces: the relaxed designs are pushed towards 0/1, so the
binarised designs are the ones the optimisation saw; a continuous space's variables are used as
they are and kept in their box), `n_starts` initial
points are drawn from N(0, sd^2) (the seed: 1,000 starts, sd 1.5), and Adam moves all of them at
once, in one graph, to minimise the request's objective of the surrogate's prediction (the
unconditioned model, or the conditioned one at the request's conditions; by default through the
single-image network inside a symmetrised model, which is exact for the average too but 4-8x
cheaper). An optional beam-count constraint is a quadratic penalty on the relaxed count. The
results are binarised (threshold 0.5, or the `n_ones` largest variables when given) and handed to
the shared pipeline, which screens them with the saved model and FE-verifies the best.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from deepdram.design.methods.base import Batch, Context, Method
from deepdram.errors import InputError


class BackpropMethod(Method):
    name = "backprop"
    summary = "GIDN: Adam through the surrogate from Gaussian starts, then binarised (gradient designer)"
    needs = ("forward", "conditioned")
    defaults = {"n_starts": 1000, "sd": 1.5, "steps": 200, "lr": 0.1, "n_ones": None, "count_penalty": 1.0,
                "tau_end": 0.2, "single_image": True, "record_paths": False}
    option_help = {
        "n_starts": "initial points (seed: 1,000)",
        "sd": "standard deviation of the Gaussian starts (seed: 1.5); logits for binary spaces",
        "steps": "Adam steps (a wall-time budget stops earlier)",
        "lr": "Adam learning rate",
        "n_ones": "binarise by ranking to this many ones (the lattice: beams; the composite: stiff cells); "
                  "null: threshold 0.5 (the composite's soft fraction sets it)",
        "count_penalty": "weight of the quadratic penalty pulling the relaxed count to n_ones",
        "tau_end": "final temperature of the sigmoid (annealed geometrically from 1; 1: no annealing)",
        "single_image": "differentiate the single-image network inside a symmetrised surrogate",
        "record_paths": "keep every start's path (the peaks demonstration's Fig. S1)",
    }

    @classmethod
    def validate_options(cls, o, where):
        if o["n_starts"] < 1 or o["steps"] < 0 or o["sd"] <= 0 or o["lr"] <= 0 or o["count_penalty"] < 0 \
                or not 0 < o["tau_end"] <= 1:
            raise InputError(f"{where}: need n_starts >= 1, steps >= 0, sd > 0, lr > 0, count_penalty >= 0, "
                             f"0 < tau_end <= 1; got {o}")

    def total_work(self, ctx: Context) -> int:
        return int(self.check_options(ctx.request.options)["n_starts"])

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        from deepdram.learn.gradients import Adam, quadratic_value_and_grad
        from deepdram.learn.models import inner_regressor

        o = self.check_options(ctx.request.options)
        space, req = ctx.space, ctx.request
        n_ones = o["n_ones"] if o["n_ones"] is not None else space.constrained_ones(req.constraints)
        model = ctx.surrogates.model_for(req.conditions)
        if o["single_image"]:
            model = inner_regressor(model)
        nv = space.n_variables
        cond = np.asarray(req.conditions if req.conditions is not None else (), np.float32)
        target = ctx.target
        objective = ctx.objective

        form = objective.quadratic_form(space.n_properties, target)

        theta = ctx.rng.normal(0.0, o["sd"], size=(o["n_starts"], nv))
        lo, hi = space.variable_bounds
        if not space.binary:
            theta = np.clip(theta, lo, hi)
        adam = Adam(theta.shape, lr=o["lr"])
        paths = [theta.copy()] if o["record_paths"] else None
        steps = int(o["steps"])
        tau = 1.0
        for k in range(steps):
            if ctx.time_left() <= 0:
                break
            tau = o["tau_end"] ** (k / max(1, steps - 1))
            x = 1.0 / (1.0 + np.exp(-theta / tau)) if space.binary else theta
            inp = np.concatenate([x, np.broadcast_to(cond, (len(x), len(cond)))], axis=1)
            _, grad = quadratic_value_and_grad(model, inp, *form)
            ctx.counters["surrogate_calls"] += len(x)
            g = grad[:, :nv]
            if space.binary:
                if n_ones is not None and o["count_penalty"] > 0:
                    g = g + o["count_penalty"] * 2.0 * (x.sum(axis=1, keepdims=True) - n_ones) / nv
                g = g * x * (1.0 - x) / tau  # chain rule through the sigmoid
            theta = theta - adam.step(g)
            if not space.binary:
                theta = np.clip(theta, lo, hi)
            if paths is not None:
                paths.append(theta.copy())
        x = 1.0 / (1.0 + np.exp(-theta / tau)) if space.binary else theta
        if paths is not None:
            ctx.records.append({"paths": np.stack(paths)})
        yield Batch(binarise(x, n_ones) if space.binary else x, work=len(x))


def binarise(x: np.ndarray, n_ones: int | None = None) -> np.ndarray:
    """0/1 designs from relaxed variables: > 0.5, or the n_ones largest of each row (ties by index)."""
    x = np.asarray(x, float)
    if n_ones is None:
        return (x > 0.5).astype(np.uint8)
    if n_ones != int(n_ones) or not 0 <= n_ones <= x.shape[1]:
        raise InputError(f"n_ones must be an integer in [0, {x.shape[1]}]; got {n_ones}")
    n_ones = int(n_ones)
    out = np.zeros(x.shape, np.uint8)
    idx = np.argsort(-x, axis=1, kind="stable")[:, :n_ones]
    np.put_along_axis(out, idx, 1, axis=1)
    return out
