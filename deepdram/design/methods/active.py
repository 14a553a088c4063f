"""`active` (GIDN active learning): the surrogate improves where the designer looks.

Rounds of: propose designs with the current surrogate (the `proposer` method, backprop by
default, screened by the same surrogate) -> evaluate the `fe_per_round` best new ones by FE ->
update a per-request copy of the surrogate on every row acquired so far (a few epochs of Adam on
the MSE of scaled properties; the registered model is never touched) -> repeat (seed: 3 rounds).
After the last round the updated surrogate proposes once more and the pipeline verifies its best.
A wall-time budget is shared out in equal slices between the remaining rounds and the final
proposal; the proposer gets half of its round's slice, the update stops at the slice's end.

Each round records (for the caller to log, e.g. one nested MLflow run per round): the FE calls,
the best FE objective so far, the surrogate's error on the round's new rows before it learns them
(how far the designer had run into the surrogate's blind spots) and its error on all acquired
rows after the update. The acquired (design, conditions, FE properties) rows are in
`context.acquired`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from deepdram.design.methods.base import Batch, Context, Method
from deepdram.errors import InputError
from deepdram.learn.finetune import tuner_for

_FREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its idle copies
_LOCK = threading.Lock()


@contextmanager
def surrogate_copy(model):
    """A trainable copy of `model` with its weights, for one request. Copies are kept for the next
    request (reset to the model's weights then), so what was traced for a copy (its gradient graph,
    its calls) serves again: a fresh clone per request retraced them, 0.1-0.6 s of a 2.5-s budget.
    Concurrent requests get copies of their own."""
    import keras

    with _LOCK:
        free = _FREE.setdefault(model, [])
        clone = free.pop() if free else None
    if clone is None:
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    try:
        yield clone
    finally:
        with _LOCK:
            _FREE.setdefault(model, []).append(clone)


def _proposer(name: str) -> Method:
    """The method that proposes designs with the current surrogate (imported here, not through the
    registry, which imports this module)."""
    if name == "backprop":
        from deepdram.design.methods.backprop import BackpropMethod

        return BackpropMethod()
    from deepdram.design.methods.cvae import CVAEMethod

    return CVAEMethod()


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

    def _propose(self, ctx: Context, surrogates, o: dict, seen: set, n: int, until: float | None = None) -> np.ndarray:
        """The n best new valid designs the proposer finds with `surrogates` (by their predicted objective),
        the proposer stopping `until` seconds after the request started (default: the request's budget)."""
        req = ctx.request
        options = {"n_starts": o["proposer_starts"], "steps": o["proposer_steps"]} if o["proposer"] == "backprop" else {}
        sub = replace(req, method=o["proposer"], options=options,
                      n_candidates=o["proposer_candidates"] if o["proposer"] == "cvae" else req.n_candidates,
                      budget_seconds=req.budget_seconds if until is None else until)
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
        req = ctx.request
        role = ("forward",) if req.conditions is None else ("conditioned",)
        with surrogate_copy(ctx.surrogates.model_for(req.conditions)) as own:
            yield from self._rounds(ctx, o, role, own)

    def _rounds(self, ctx: Context, o: dict, role: tuple, own) -> Iterator[Batch]:
        """The rounds with the request's own surrogate copy `own`."""
        space, req = ctx.space, ctx.request
        update = tuner_for(own, o["lr"])
        # the request's surrogates with this role replaced by the per-request copy
        surrogates = replace(ctx.surrogates, models={**ctx.surrogates.models, role[0]: own})
        nv = space.n_variables
        cond = np.asarray(req.conditions if req.conditions is not None else (), float)
        acquired_x, acquired_y, rounds, seen = [], [], [], set()
        rounds_total = int(o["rounds"])
        for r in range(1, rounds_total + 1):
            n = int(min(o["fe_per_round"], ctx.fe_left()))
            if n < 1 or ctx.time_left() <= 0:
                break
            # a time budget is shared out: each remaining round and the final proposal get an equal
            # slice, the proposer at most half of its round's (the update stops at the round's end)
            left = ctx.time_left()
            round_end = ctx.elapsed() + left / (rounds_total - r + 2) if np.isfinite(left) else None
            d = self._propose(ctx, surrogates, o, seen, n,
                              until=None if round_end is None else (ctx.elapsed() + round_end) / 2)
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
            if ctx.time_left() > 0:
                update(x_all, y_all, o["epochs"], req.seed + r,
                         ctx.time_left if round_end is None else (lambda end=round_end: end - ctx.elapsed()))
                after = float(np.mean((surrogates.predict(space, x_all[:, :nv], req.conditions) - y_all) ** 2))
            else:  # the budget ended with the round's FE: no update
                after = all_before
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
        # the updated surrogate proposes once more (if time is left); the pipeline verifies its best
        final = self._propose(ctx, surrogates, o, seen, max(req.top_k, 1)) if ctx.time_left() > 0 else []
        if len(final):
            yield Batch(final, predicted=surrogates.predict(space, final, req.conditions), work=len(final))
