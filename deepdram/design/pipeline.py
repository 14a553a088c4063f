"""The shared design pipeline, the same for every method and space:
candidates -> dedupe -> validity -> surrogate screen -> FE-verify the top k -> rank -> Pareto front.

1. the request's method proposes candidate designs in batches (`design.methods`);
2. duplicates (exact keys of the space) and invalid designs are dropped;
3. the surrogate predicts the properties (the unconditioned `forward` model, or the `conditioned`
   one at the request's conditions: the lattice's size-agnostic model at (d1, d2)); designs
   whose objective is within the request's threshold are accepted;
4. the `top_k` accepted designs of lowest predicted objective are verified by the space's FE
   oracle (with the extras its ranking needs: the lattice's peak von Mises stresses);
5. rank: designs whose FE objective is within the threshold first, by the space's secondary key
   ascending (the lattice: peak stress, the paper's distance from the origin in Fig. 5b), then
   the others by FE objective; mark the Pareto front of FE objective vs the secondary key.

When no candidate meets the threshold, the closest designs are still verified and returned, and
the result is flagged `best_effort`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepdram.design.objectives import mse
from deepdram.design.requests import DesignGrid, DesignRequest
from deepdram.spaces.base import DesignSpace

CHUNK = 250_000  # rows predicted per surrogate call


# --- Surrogates --------------------------------------------------------------------------------


@dataclass
class Surrogates:
    """The Keras models of a space's design procedure, in physical units, by role:
    `generator` (properties + latent -> probabilities), `forward` (designs -> properties),
    `conditioned` (designs + conditions -> properties)."""

    models: dict[str, Any]
    versions: dict = field(default_factory=dict)

    def model_for(self, conditions):
        """The Keras model that predicts at these conditions (the `forward` or the `conditioned` role)."""
        from deepdram.errors import DeepdramError

        role = self.roles_for(conditions)[0]
        if role not in self.models:
            raise DeepdramError(f"no {role} surrogate loaded for this request")
        return self.models[role]

    @staticmethod
    def roles_for(conditions) -> tuple[str, ...]:
        """The model role that predicts at these conditions."""
        return ("forward",) if conditions is None else ("conditioned",)

    def predict(self, space: DesignSpace, designs: np.ndarray, conditions: tuple | None) -> np.ndarray:
        """(N, P) predicted properties of designs at `conditions` (None: unconditioned)."""
        from deepdram.learn.inference import predict

        if len(designs) == 0:
            return np.zeros((0, space.n_properties), np.float32)
        if conditions is None:
            return predict(self.models["forward"], designs, batch_size=CHUNK)
        nv = space.n_variables
        x = np.empty((len(designs), nv + len(conditions)), np.float32)
        x[:, :nv] = designs
        x[:, nv:] = conditions
        return predict(self.models["conditioned"], x, batch_size=CHUNK)


def load_surrogates(paths: Mapping[str, Any], space: DesignSpace | None = None) -> Surrogates:
    """Surrogates from .keras files keyed by role (`space` registers the space's own layers)."""
    from deepdram.learn.models import load_model

    return Surrogates({k: load_model(p, space) for k, p in paths.items()})


# --- Screening -----------------------------------------------------------------------------------


@dataclass
class Screened:
    """Distinct valid candidates of one request, best first by `key`: the objective of their FE
    properties where the method computed them, else of their predicted properties."""

    designs: np.ndarray  # (M, V)
    predicted: np.ndarray  # (M, P) surrogate predictions (NaN where no surrogate was asked)
    fe: np.ndarray  # (M, P) FE properties the method computed (NaN where unknown)
    fe_extras: dict[str, np.ndarray]  # the ranking extras of those (NaN where unknown)
    key: np.ndarray  # (M,) the selection key (objective value), ascending
    counts: dict  # candidates, valid, distinct, accepted, ...
    context: Any = None  # the method's Context (budget counters, trace, records)

    @property
    def mse_pred(self) -> np.ndarray:
        """The selection key (the paper's MSE for the default objective)."""
        return self.key

    @property
    def known(self) -> np.ndarray:
        return np.isfinite(self.fe).all(axis=1) if len(self.fe) else np.zeros(0, bool)


def _first_valid(space: DesignSpace, designs: np.ndarray, seen, constraints) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(row indices of the first occurrence of each new valid key, sorted by key; their keys;
    n_valid; n_distinct) of a batch, dropping keys in `seen`."""
    keys = space.keys(designs)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    ok = space.is_valid(designs[first]) & space.meets(designs[first], constraints)
    n_valid = int(ok[inverse.ravel()].sum())
    keep = ok
    if seen is not None and len(seen):
        keep = keep & ~np.isin(uniq, seen, assume_unique=True)
    return first[keep], uniq[keep], n_valid, int(keep.sum())


def objective_for(space: DesignSpace, req: DesignRequest, variances=None):
    """The request's objective (`scaled` with the given train-split variances)."""
    from deepdram.design import objectives

    return objectives.get(req.objective, space, variances)


def screen(space: DesignSpace, s: Surrogates, req: DesignRequest, progress: Callable[[int], None] | None = None,
           keep: int | None = None, method=None, variances=None, threads: int | None = None) -> Screened:
    """Steps 1-3: the method's candidates, drop invalid and duplicates, predict, sort by objective.

    Keeps the `keep` best distinct designs (default: max(top_k, 1000)) to bound memory.
    """
    from deepdram.design.methods.base import Context
    from deepdram.design.methods.registry import get as get_method

    method = method or get_method(req.method)
    objective = objective_for(space, req, variances)
    ctx = Context(space, req, s, np.random.default_rng(req.seed), objective, progress,
                  fe_reserved=method.verification_fe(req), threads=threads)
    keep = max(req.top_k, 1000) if keep is None else keep
    target = None if req.target is None else np.asarray(req.target, float)
    n_p = space.n_properties
    best = {"d": np.zeros((0, space.n_variables), np.uint8 if space.binary else np.float64),
            "pred": np.zeros((0, n_p)), "fe": np.zeros((0, n_p)), "key": np.zeros(0)}
    # (n, 2) per extra, as `space.secondary` reads them; there even when the method yields nothing
    best_x: dict[str, np.ndarray] = {e: np.zeros((0, 2)) for e in space.ranking_extras}
    seen = None
    n_valid = n_distinct = n_accepted = n_candidates = 0
    for batch in method.candidates(ctx):
        idx, k, nv, nd = _first_valid(space, np.asarray(batch.designs), seen, req.constraints)
        n_candidates += len(batch.designs)
        n_valid += nv
        n_distinct += nd
        seen = k if seen is None else np.union1d(seen, k)
        d = np.asarray(batch.designs)[idx]
        if batch.predicted is not None:
            pred = np.asarray(batch.predicted, float)[idx]
        elif batch.properties is not None and not set(s.roles_for(req.conditions)) <= set(s.models):
            pred = np.full((len(d), n_p), np.nan)
        else:
            pred = np.asarray(ctx.predict(d), float)
        fe = np.asarray(batch.properties, float)[idx] if batch.properties is not None else np.full((len(d), n_p), np.nan)
        extras = {e: np.asarray(v, float)[idx] for e, v in (batch.extras or {}).items()}
        known = np.isfinite(fe).all(axis=1)
        key = np.where(known, objective(np.where(known[:, None], fe, 0.0), target),
                       objective(np.where(np.isfinite(pred), pred, 0.0), target))
        key = np.where(np.isfinite(pred).all(axis=1) | known, key, np.inf)
        if target is not None:
            n_accepted += int((mse(np.where(known[:, None], fe, pred), target) <= req.mse_threshold).sum())
        else:
            n_accepted += len(d)
        best["d"] = np.concatenate([best["d"], d])
        best["pred"] = np.concatenate([best["pred"], pred])
        best["fe"] = np.concatenate([best["fe"], fe])
        best["key"] = np.concatenate([best["key"], key])
        for e in space.ranking_extras:
            add = extras.get(e, np.full((len(d), 2), np.nan))
            best_x[e] = np.concatenate([best_x[e], add])
        order = np.argsort(best["key"], kind="stable")[:keep]
        best = {n: v[order] for n, v in best.items()}
        best_x = {n: v[order] for n, v in best_x.items()}
        if progress is not None:
            progress(batch.work or len(batch.designs))
    counts = {"candidates": n_candidates, "valid": n_valid, "invalid": n_candidates - n_valid,
              "distinct": n_distinct, "duplicates": n_valid - n_distinct, "accepted": n_accepted,
              "best_mse_pred": float(best["key"][0]) if len(best["key"]) else None}
    return Screened(best["d"], best["pred"], best["fe"], best_x, best["key"], counts, ctx)


# --- FE verification and ranking ---------------------------------------------------------------------


def fe_verify(space: DesignSpace, designs: np.ndarray, conditions, progress=None, threads: int | None = None):
    """(properties (N, P), extras) by the space's FE oracle, with the extras its ranking needs."""
    if len(designs) == 0:
        return np.zeros((0, space.n_properties)), {e: np.zeros((0, 2)) for e in space.ranking_extras}
    r = space.evaluate(designs, conditions, extras=space.ranking_extras, progress=progress, threads=threads,
                       validate=False)
    return np.asarray(r.properties, float), r.extras


def pareto_front(error: np.ndarray, stress: np.ndarray) -> np.ndarray:
    """True for points no other point beats in both (lower error and lower stress, one strictly)."""
    e, s = np.asarray(error, float), np.asarray(stress, float)
    order = np.lexsort((s, e))  # by error, then stress
    front = np.zeros(len(e), bool)
    best = np.inf
    for i in order:
        if s[i] < best:
            front[i] = True
            best = s[i]
    # equal points: both on the front when the first is
    for i in np.flatnonzero(~front):
        same = front & (e == e[i]) & (s == s[i])
        front[i] = bool(same.any())
    return front


def rank_order(mse_fe: np.ndarray, peak: np.ndarray, threshold: float, accepted: np.ndarray | None = None) -> np.ndarray:
    """Indices: FE-accepted designs by ascending secondary key, then the rest by ascending FE error."""
    ok = np.asarray(mse_fe) <= threshold if accepted is None else np.asarray(accepted)
    a = np.flatnonzero(ok)[np.argsort(np.asarray(peak)[ok], kind="stable")]
    b = np.flatnonzero(~ok)[np.argsort(np.asarray(mse_fe)[~ok], kind="stable")]
    return np.concatenate([a, b]).astype(np.int64)


@dataclass
class DesignResult:
    """The ranked, FE-verified designs of one request, its summary counts and what the method recorded."""

    request: DesignRequest
    table: Any  # pandas DataFrame, one row per verified design, best first
    summary: dict
    trace: list = field(default_factory=list)  # (seconds, FE calls, best FE objective so far)
    records: list = field(default_factory=list)  # per-round facts (active learning)
    acquired: Any = None  # pandas DataFrame of FE rows a method acquired (active learning), or None


def stress_spread(peak: np.ndarray) -> float | None:
    """(max - min) / min in percent (the paper's 250-310 %), or None with fewer than 2 values."""
    peak = np.asarray(peak, float)
    if len(peak) < 2 or peak.min() <= 0:
        return None
    return float((peak.max() - peak.min()) / peak.min() * 100.0)


def fe_columns(space: DesignSpace) -> tuple[str, ...]:
    """fe_<property> for each property."""
    return tuple(f"fe_{c}" for c in space.properties)


def result_columns(space: DesignSpace, objective: str = "mse", target: bool = True) -> tuple[str, ...]:
    """The columns of a result table, in order (the secondary columns from `space.secondary`)."""
    extra = tuple(space.secondary({e: np.zeros((0, 2)) for e in space.ranking_extras}, 0)[0])
    cond = tuple(space.condition_columns(None, 0)) or space.conditions
    scores = ("mse_pred", "mse_fe") if target else ()
    if objective != "mse":
        scores += ("objective_pred", "objective_fe")
    tol = ("within_tolerance",) if target and space.tolerance_groups else ()
    return ("rank", *space.variables, *cond, *space.properties, *fe_columns(space), *scores, *extra,
            "within_threshold", *tol, "pareto", "best_effort")


def verify_and_rank(space: DesignSpace, req: DesignRequest, s: Screened, progress=None,
                    threads: int | None = None) -> DesignResult:
    """Steps 4-5: FE of the top_k best designs (those the method has not evaluated), ranking,
    Pareto front, summary."""
    import pandas as pd

    from deepdram.design.objectives import tolerance_mask

    ctx = s.context
    objective = ctx.objective if ctx is not None else objective_for(space, req)
    target = None if req.target is None else np.asarray(req.target, float)
    props_for_accept = np.where(s.known[:, None], s.fe, s.predicted) if len(s.key) else s.predicted
    accepted = (mse(props_for_accept, target) <= req.mse_threshold) if target is not None else np.isfinite(s.key)
    best_effort = not bool(accepted.any())
    pick = np.flatnonzero(accepted)[: req.top_k] if not best_effort else np.arange(min(req.top_k, len(s.key)))
    d = s.designs[pick]
    fe = s.fe[pick].copy()
    extras = {e: s.fe_extras[e][pick].copy() for e in space.ranking_extras} if space.ranking_extras else {}
    todo = np.flatnonzero(~np.isfinite(fe).all(axis=1)) if len(d) else np.zeros(0, int)
    if len(todo):
        f, x = fe_verify(space, d[todo], req.conditions, progress, threads)
        fe[todo] = f
        for e in space.ranking_extras:
            extras[e][todo] = x[e]
        if ctx is not None:
            ctx.counters["fe_calls"] += len(todo)
            ctx.note_fe(f)
    n = len(d)
    mse_fe = mse(fe, target) if n and target is not None else np.zeros(n)
    obj_fe = objective(fe, target) if n else np.zeros(0)
    obj_pred = objective(np.where(np.isfinite(s.predicted[pick]), s.predicted[pick], np.nan), target) if n \
        else np.zeros(0)
    ok_fe = mse_fe <= req.mse_threshold if target is not None else np.ones(n, bool)
    extra_cols, key = space.secondary(extras, n)
    key = obj_fe if key is None else key
    order = rank_order(obj_fe, key, req.mse_threshold, ok_fe)
    cols: dict[str, Any] = {"rank": np.arange(1, n + 1)}
    cols |= {c: d[order, i] for i, c in enumerate(space.variables)}
    cols |= space.condition_columns(req.conditions, n)
    cols |= {c: s.predicted[pick][order, i].astype(float) for i, c in enumerate(space.properties)}
    cols |= {c: fe[order, i] for i, c in enumerate(fe_columns(space))}
    if target is not None:
        cols |= {"mse_pred": mse(s.predicted[pick], target)[order] if n else np.zeros(0), "mse_fe": mse_fe[order]}
    if req.objective != "mse":
        cols |= {"objective_pred": obj_pred[order], "objective_fe": obj_fe[order]}
    cols |= {c: v[order] for c, v in extra_cols.items()}
    cols["within_threshold"] = ok_fe[order]
    tol = tolerance_mask(space, fe, target, req.tolerance) if n else None
    if target is not None and space.tolerance_groups:
        cols["within_tolerance"] = tol[order] if tol is not None else np.zeros(0, bool)
    cols |= {"pareto": pareto_front(obj_fe, key)[order] if n else np.zeros(0, bool),
             "best_effort": np.full(n, best_effort)}
    table = pd.DataFrame(cols)
    if space.binary:
        table[list(space.variables)] = table[list(space.variables)].astype(np.uint8)
    ok = table["within_threshold"].to_numpy()
    # the secondary key's spread among the accepted designs (the lattice: peak stress, Fig. 5b)
    ranked = np.asarray(key, float)[order] if extra_cols else np.full(n, np.nan)
    summary = {**s.counts, "name": req.name, "target": None if target is None else list(req.target),
               **{k: int(v[0]) for k, v in space.condition_columns(req.conditions, 1).items()},
               "mse_threshold": req.mse_threshold, "verified": int(len(table)),
               "fe_within_threshold": int(ok.sum()),
               "best_mse_fe": float(mse_fe.min()) if n and target is not None else None,
               "peak_min": float(ranked[ok].min()) if ok.any() and extra_cols else None,
               "peak_max": float(ranked[ok].max()) if ok.any() and extra_cols else None,
               "peak_spread_pct": stress_spread(ranked[ok]) if extra_cols else None, "best_effort": best_effort}
    summary |= method_summary(req, s, table, obj_fe)
    return DesignResult(req, table, summary, list(ctx.trace) if ctx is not None else [],
                        list(ctx.records) if ctx is not None else [], getattr(ctx, "acquired", None))


def method_summary(req: DesignRequest, s: Screened, table, obj_fe: np.ndarray) -> dict:
    """The method's facts: objective, FE and surrogate calls, time, best FE objective, tolerance share."""
    ctx = s.context
    out = {"method": req.method, "objective": req.objective,
           "best_objective_fe": float(obj_fe.min()) if len(obj_fe) else None}
    if "within_tolerance" in table:
        out["fe_within_tolerance"] = int(table["within_tolerance"].sum())
    if ctx is not None:
        out |= {"fe_calls": int(ctx.counters["fe_calls"]), "surrogate_calls": int(ctx.counters["surrogate_calls"]),
                "seconds": round(ctx.elapsed(), 3)}
    return out


def design(space: DesignSpace, s: Surrogates, req: DesignRequest, progress=None, fe_progress=None,
           threads: int | None = None, variances=None) -> DesignResult:
    """The whole procedure for one request."""
    return verify_and_rank(space, req, screen(space, s, req, progress, variances=variances, threads=threads),
                           fe_progress, threads)


# --- Sweeps (Fig. 4b) --------------------------------------------------------------------------------


def sweep(space: DesignSpace, s: Surrogates, grid: DesignGrid, progress=None, keep_designs: int = 50,
          single_image: bool = False):
    """Best predicted MSE per (target, size); candidates generated once per target, all sizes screened.

    Returns (table, envelope): one row per (target, size) with counts and the best design's key;
    and up to `keep_designs` distinct generated designs per target (for the Fig. 2b envelope).
    `single_image` screens with the single-image network inside symmetrised surrogates (one term
    of their average: 4-8x cheaper; the requests always use the saved models). Each distinct
    design is validated and predicted once per sweep, at every size (`design.screening`).
    """
    import pandas as pd

    from deepdram.design.screening import (
        PredictionCache,
        PredictorAtConditions,
        screen_batch,
    )
    from deepdram.learn.generation import generate, generator_decoder, latent_size
    from deepdram.learn.models import inner_regressor

    if single_image:
        s = Surrogates({k: (inner_regressor(m) if k != "generator" else m) for k, m in s.models.items()})
    gen = s.models["generator"]
    latent = latent_size(gen, space.n_properties)
    conds = [space.parse_conditions(dict(zip(space.conditions, size)), "sweep") for size in grid.sizes]
    predict_all = PredictorAtConditions.build(space, s, conds)
    cache = PredictionCache(len(conds), space.n_properties)
    rows, envelope = [], []
    for t_idx, target in enumerate(grid.targets):
        rng = np.random.default_rng([grid.seed, t_idx])
        raw = generate(generator_decoder(gen, grid.n_candidates), np.asarray(target, np.float32)[None],
                       grid.n_candidates, latent, rng, grid.rule)
        sc = screen_batch(space, raw, predict_all, cache, len(conds))
        d = sc.designs
        envelope.append(d[rng.permutation(len(d))[:keep_designs]])
        for j, size in enumerate(grid.sizes):
            pred = sc.pred[:, j]
            err = mse(pred, target)
            b = int(np.argmin(err)) if len(err) else -1
            row = {"target": t_idx, **dict(zip(space.properties, map(float, target))),
                   **dict(zip(space.conditions, size)),
                   "candidates": grid.n_candidates, "valid": sc.n_valid, "distinct": sc.n_distinct,
                   "accepted": int((err <= grid.mse_threshold).sum()),
                   "best_mse_pred": float(err[b]) if b >= 0 else np.nan,
                   **{f"pred_{c}": float(pred[b, i]) if b >= 0 else np.nan for i, c in enumerate(space.properties)},
                   "best_key": int(sc.keys[b]) if b >= 0 else -1}
            rows.append(row)
        if progress is not None:
            progress(1)
    env = np.concatenate(envelope) if envelope else np.zeros((0, space.n_variables), np.uint8)
    return pd.DataFrame(rows), env
