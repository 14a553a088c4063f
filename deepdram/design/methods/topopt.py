"""`topopt` (GIDN's gradient topology optimisation, made exact).

Continuous densities in [0, 1] scale each design variable's stiffness in the FE model (the
lattice: SIMP beam multipliers, shared tiling edges by the union rule: `spaces.lattice.relaxed`);
the objective is computed by FE and its gradient by the adjoint method (exact for the linear
frame; `gradient: fd` uses the seed's central differences with h = 1e-5 instead). Updates follow
the seed's steps 3-4 (the gradient scaled to [0, 1], then shifted to zero mean, and
x <- clip(x - step * g, 0, 1)) or Adam (`update: adam`). At the end the densities are binarised
by ranking to the space's candidate counts (the lattice: 20, 24, 28, 32, 36 beams and the rounded
density sum) and those designs are evaluated by FE. FE calls: one per iteration with the adjoint
gradient, 2 n + 1 with finite differences, one per binarised design. Continuous spaces (peaks)
descend on the exact oracle gradient and keep the final point.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from deepdram.design.methods.base import Batch, Context, Method
from deepdram.errors import InputError


def normalised(g: np.ndarray) -> np.ndarray:
    """The seed's step 3: scaled to [0, 1] per row, then shifted to zero mean."""
    lo, hi = g.min(axis=1, keepdims=True), g.max(axis=1, keepdims=True)
    s = (g - lo) / np.where(hi > lo, hi - lo, 1.0)
    return s - s.mean(axis=1, keepdims=True)


def objective_gradient(objective, props: np.ndarray, jac: np.ndarray, target) -> np.ndarray:
    """d objective / d x (N, V) from the properties (N, P) and their jacobian (N, P, V)."""
    p = np.asarray(props, float)
    n_p = p.shape[1]
    if objective.kind == "mse":
        dp = 2.0 * (p - target) / n_p
    elif objective.kind == "scaled":
        dp = 2.0 * (p - target) * np.asarray(objective.weights) / n_p
    else:
        dp = np.zeros_like(p)
        dp[:, objective.index] = -1.0 if objective.kind == "max" else 1.0
    return np.einsum("np,npv->nv", dp, jac)


class TopOptMethod(Method):
    name = "topopt"
    summary = "GIDN baseline made exact: FE objective on relaxed densities, adjoint gradient, binarised by ranking"
    uses_fe = True
    defaults = {"iterations": 200, "step": 0.01, "update": "seed", "gradient": "adjoint", "penalty": 3.0,
                "init": None, "h": 1e-5, "lr": 0.02}
    option_help = {"iterations": "gradient steps (seed: 10^5; budgets stop earlier)",
                   "step": "step size lambda of the seed's update (seed: 0.01 or 0.1)",
                   "update": "'seed' (normalised gradient, steps 3-4) or 'adam'",
                   "gradient": "'adjoint' (exact) or 'fd' (the seed's central differences)",
                   "penalty": "SIMP exponent pushing densities to 0/1",
                   "init": "initial density (null: the space's default, the lattice 0.5)",
                   "h": "finite-difference step of gradient 'fd' (seed: 1e-5)",
                   "lr": "Adam learning rate of update 'adam'"}

    @classmethod
    def validate_options(cls, o, where):
        if o["update"] not in ("seed", "adam") or o["gradient"] not in ("adjoint", "fd"):
            raise InputError(f"{where}: update must be 'seed' or 'adam', gradient 'adjoint' or 'fd'; got {o}")
        if o["iterations"] < 0 or o["step"] <= 0 or o["penalty"] < 1 or o["h"] <= 0:
            raise InputError(f"{where}: need iterations >= 0, step > 0, penalty >= 1, h > 0; got {o}")

    def _gradient(self, ctx: Context, x: np.ndarray, o: dict) -> tuple[np.ndarray, np.ndarray]:
        """(properties (1, P), d objective / d x (1, V)) and the FE calls it took."""
        space, cond = ctx.space, ctx.request.conditions
        opts = {"penalty": o["penalty"]} if space.binary else {}
        if o["gradient"] == "adjoint":
            props, jac = space.gradient(x, cond, **opts)
            ctx.counters["fe_calls"] += len(x)
            return props, objective_gradient(ctx.objective, props, jac, ctx.target)
        h, v = o["h"], x.shape[1]
        lo, hi = (0.0, 1.0) if space.binary else space.variable_bounds
        eye = np.tile(np.eye(v), (len(x), 1))
        # one-sided where x +- h would leave the bounds (the oracle refuses such points), same total step
        plus = np.minimum(np.repeat(x, v, axis=0) + h * eye, hi)
        minus = np.maximum(plus - 2 * h * eye, lo)
        plus = np.where(eye > 0, np.minimum(minus + 2 * h, hi), plus)
        step = ((plus - minus) * eye).sum(axis=1).reshape(len(x), v)
        f = lambda z: ctx.objective(space.relaxed_properties(z, cond, **opts), ctx.target)  # noqa: E731
        grad = (f(plus) - f(minus)).reshape(len(x), v) / step
        props = space.relaxed_properties(x, cond, **opts)
        ctx.counters["fe_calls"] += len(x) * (2 * v + 1)
        return props, grad

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        from deepdram.learn.gradients import Adam

        o = self.check_options(ctx.request.options)
        space = ctx.space
        if not space.has_gradient and o["gradient"] == "adjoint":
            raise InputError(f"the {space.name} space has no exact gradient: use options.gradient 'fd'")
        lo, hi = (0.0, 1.0) if space.binary else space.variable_bounds
        init = space.relaxed_init if o["init"] is None else float(o["init"])
        x = np.full((1, space.n_variables), init) + 1e-3 * ctx.rng.standard_normal((1, space.n_variables))
        x = np.clip(x, lo, hi)
        adam = Adam(x.shape, lr=o["lr"])
        cost = 1 if o["gradient"] == "adjoint" else 2 * space.n_variables + 1
        for _ in range(int(o["iterations"])):
            if ctx.time_left() <= 0 or ctx.fe_left() < cost + len(space.binarised_counts(x, ctx.request.constraints)):
                break
            props, g = self._gradient(ctx, x, o)
            if not space.binary:
                # on binary spaces the relaxed densities are no design: the trace gets the binarised ones
                ctx.note_fe(props)
            x = np.clip(x - (o["step"] * normalised(g) if o["update"] == "seed" else adam.step(g)), lo, hi)
        if space.binary:
            from deepdram.design.methods.backprop import binarise

            designs = np.concatenate([binarise(x, k) for k in space.binarised_counts(x, ctx.request.constraints)])
        else:
            designs = x
        ok = space.is_valid(designs) & space.meets(designs, ctx.request.constraints)
        keys = space.keys(designs)
        first = [i for i in sorted(np.unique(keys, return_index=True)[1]) if ok[i]]
        designs = designs[first][: int(max(0, min(len(first), ctx.fe_left())))]
        if len(designs):
            props, extras = ctx.evaluate(designs)
            yield Batch(designs, props, extras, work=ctx.request.n_candidates)
