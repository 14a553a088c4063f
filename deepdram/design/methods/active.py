"""`active` (GIDN active learning): the surrogate improves where the designer looks.

Rounds of: propose designs with the current surrogate (the `proposer` method, backprop by
default, screened by the same surrogate) -> evaluate the `fe_per_round` best new ones by FE ->
update a per-request copy of the surrogate on every row acquired so far (a few epochs of Adam on
the MSE of scaled properties; the registered model is never touched) -> repeat (seed: 3 rounds).
After the last round the updated surrogate proposes once more and the pipeline verifies its best.

Each round records (for the caller to log, e.g. one nested MLflow run per round): the FE calls,
the best FE objective so far, the surrogate's error on the round's new rows before it learns them
(how far the designer had run into the surrogate's blind spots) and its error on all acquired
rows after the update. The acquired (design, conditions, FE properties) rows are in
`context.acquired`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from deepdram.design.methods.base import Batch, Context, Method
from deepdram.errors import InputError


def _copy(model):
    """A trainable copy of a Keras model with the same weights."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _proposer(name: str) -> Method:
    """The method that proposes designs with the current surrogate (imported here, not through the
    registry, which imports this module)."""
    if name == "backprop":
        from deepdram.design.methods.backprop import BackpropMethod

        return BackpropMethod()
    from deepdram.design.methods.cvae import CVAEMethod

    return CVAEMethod()


def fit_copy(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int,
             time_left: Callable[[], float] | None = None) -> None:
    """Update `model` in place on rows (x, y): Adam on the MSE of properties scaled by their spread,
    stopping early when `time_left()` reaches 0."""
    import keras

    keras.utils.set_random_seed(seed)
    scale = np.maximum(np.std(y, axis=0), 1e-6).astype(np.float32)
    w = keras.ops.convert_to_tensor(1.0 / scale**2)

    def loss(t, p):
        return keras.ops.mean(keras.ops.square(t - p) * w, axis=-1)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss)
    callbacks = [] if time_left is None else [_Deadline(time_left)]
    model.fit(np.asarray(x, np.float32), np.asarray(y, np.float32), epochs=int(epochs),
              batch_size=max(8, min(256, len(x))), verbose=0, shuffle=True, callbacks=callbacks)


def _Deadline(time_left: Callable[[], float]):
    """A Keras callback that stops training once the request's wall-time budget is spent."""
    import keras

    class Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time_left() <= 0:
                self.model.stop_training = True

    return Deadline()


class ActiveMethod(Method):
    name = "active"
    summary = "GIDN active learning: rounds of propose -> FE -> update a per-request surrogate copy"
    uses_fe = True
    defaults = {"rounds": 3, "fe_per_round": 20, "proposer": "backprop", "epochs": 30, "lr": 1e-3,
                "proposer_starts": 200, "proposer_steps": 60, "proposer_candidates": 5000}
    option_help = {"rounds": "propose / FE / update rounds (seed: 3)",
                   "fe_per_round": "designs evaluated by FE per round",
                   "proposer": "method that proposes with the current surrogate: 'backprop' or 'cvae'",
                   "epochs": "epochs of each surrogate update",
                   "lr": "learning rate of the updates",
                   "proposer_starts": "backprop proposer: starts per round",
                   "proposer_steps": "backprop proposer: Adam steps per round",
                   "proposer_candidates": "cvae proposer: candidates per round"}

    @classmethod
    def validate_options(cls, o, where):
        if o["proposer"] not in ("backprop", "cvae"):
            raise InputError(f"{where}.proposer must be 'backprop' or 'cvae'; got {o['proposer']!r}")
        if o["rounds"] < 1 or o["fe_per_round"] < 1 or o["epochs"] < 1 or o["lr"] <= 0:
            raise InputError(f"{where}: need rounds, fe_per_round, epochs >= 1 and lr > 0; got {o}")

    def verification_fe(self, request) -> int:
        return 0 if request.budget_fe is None else min(request.top_k, request.budget_fe)

    def _propose(self, ctx: Context, surrogates, o: dict, seen: set, n: int) -> np.ndarray:
        """The n best new valid designs the proposer finds with `surrogates` (by their predicted objective)."""
        req = ctx.request
        options = {"n_starts": o["proposer_starts"], "steps": o["proposer_steps"]} if o["proposer"] == "backprop" else {}
        sub = replace(req, method=o["proposer"], options=options,
                      n_candidates=o["proposer_candidates"] if o["proposer"] == "cvae" else req.n_candidates)
        proposer = _proposer(o["proposer"])
        sub_ctx = Context(ctx.space, sub, surrogates, ctx.rng, ctx.objective, threads=ctx.threads,
                          started=ctx.started)
        sub_ctx.counters = ctx.counters
        found = []
        for batch in proposer.candidates(sub_ctx):
            d = np.asarray(batch.designs)
            ok = ctx.space.is_valid(d) & ctx.space.meets(d, req.constraints)
            found.append(d[ok])
        d = np.concatenate(found) if found else np.zeros((0, ctx.space.n_variables), np.uint8)
        keys = ctx.space.keys(d)
        _, first = np.unique(keys, return_index=True)
        first = np.array([i for i in sorted(first) if keys[i] not in seen], int)
        d = d[first] if len(first) else d[:0]
        if not len(d):
            return d
        pred = surrogates.predict(ctx.space, d, req.conditions)
        ctx.counters["surrogate_calls"] += len(d)
        return d[np.argsort(ctx.objective(pred, ctx.target), kind="stable")[:n]]

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        o = self.check_options(ctx.request.options)
        space, req = ctx.space, ctx.request
        role = ("forward",) if req.conditions is None else ("conditioned",)
        own = _copy(ctx.surrogates.model_for(req.conditions))
        # the request's surrogates with this role replaced by the per-request copy
        surrogates = replace(ctx.surrogates, models={**ctx.surrogates.models, role[0]: own})
        nv = space.n_variables
        cond = np.asarray(req.conditions if req.conditions is not None else (), float)
        acquired_x, acquired_y, rounds, seen = [], [], [], set()
        for r in range(1, int(o["rounds"]) + 1):
            n = int(min(o["fe_per_round"], ctx.fe_left()))
            if n < 1 or ctx.time_left() <= 0:
                break
            d = self._propose(ctx, surrogates, o, seen, n)
            if not len(d):
                break
            pred = surrogates.predict(space, d, req.conditions)
            props, extras = ctx.evaluate(d)
            seen.update(space.keys(d).tolist())
            before = float(np.mean((pred - props) ** 2))
            acquired_x.append(np.concatenate([d, np.broadcast_to(cond, (len(d), len(cond)))], axis=1))
            acquired_y.append(props)
            rounds.append(np.full(len(d), r))
            x_all, y_all = np.concatenate(acquired_x), np.concatenate(acquired_y)
            all_before = float(np.mean((surrogates.predict(space, x_all[:, :nv], req.conditions) - y_all) ** 2))
            fit_copy(own, x_all, y_all, o["epochs"], o["lr"], req.seed + r, ctx.time_left)
            after = float(np.mean((surrogates.predict(space, x_all[:, :nv], req.conditions) - y_all) ** 2))
            ctx.records.append({"round": r, "fe_calls": int(ctx.counters["fe_calls"]), "acquired": len(y_all),
                                "new_rows": len(d), "surrogate_mse_new_rows": before,
                                "surrogate_mse_acquired_before_update": all_before,
                                "surrogate_mse_acquired_after_update": after,
                                "best_fe_objective": float(np.min(ctx.objective(y_all, ctx.target))),
                                "seconds": round(ctx.elapsed(), 3)})
            yield Batch(d, props, extras, predicted=pred, work=len(d))
        if acquired_x:
            x_all, y_all = np.concatenate(acquired_x), np.concatenate(acquired_y)
            table = space.frame(x_all[:, :nv], None, **space.condition_columns(req.conditions, len(x_all)))
            for i, c in enumerate(space.properties):
                table[c] = y_all[:, i]
            table["round"] = np.concatenate(rounds)
            ctx.acquired = table
        # the updated surrogate proposes once more; the pipeline verifies its best
        final = self._propose(ctx, surrogates, o, seen, max(req.top_k, 1))
        if len(final):
            yield Batch(final, predicted=surrogates.predict(space, final, req.conditions), work=len(final))
