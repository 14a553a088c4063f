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

    def predict(self, space: DesignSpace, designs: np.ndarray, conditions: tuple | None) -> np.ndarray:
        """(N, P) predicted properties of designs at `conditions` (None: unconditioned)."""
        from deepdram.learn.models import predict

        if len(designs) == 0:
            return np.zeros((0, space.n_properties), np.float32)
        if conditions is None:
            return predict(self.models["forward"], designs, batch_size=CHUNK)
        nv = space.n_variables
        x = np.empty((len(designs), nv + len(conditions)), np.float32)
        x[:, :nv] = designs
        x[:, nv:] = conditions
        return predict(self.models["conditioned"], x, batch_size=CHUNK)


def load_surrogates(paths: Mapping[str, Any]) -> Surrogates:
    """Surrogates from .keras files keyed by role."""
    from deepdram.learn.models import load_model

    return Surrogates({k: load_model(p) for k, p in paths.items()})


# --- Screening -----------------------------------------------------------------------------------


@dataclass
class Screened:
    """Distinct valid candidates of one request, sorted by predicted objective (best first)."""

    designs: np.ndarray  # (M, V)
    predicted: np.ndarray  # (M, P)
    mse_pred: np.ndarray  # (M,) the objective of the predicted properties
    counts: dict  # candidates, valid, distinct, accepted


def screen(space: DesignSpace, s: Surrogates, req: DesignRequest, progress: Callable[[int], None] | None = None,
           keep: int | None = None, method=None) -> Screened:
    """Steps 1-3: the method's candidates, drop invalid and duplicates, predict, sort by objective.

    Keeps the `keep` best distinct designs (default: max(top_k, 1000)) to bound memory.
    """
    from deepdram.design import objectives
    from deepdram.design.methods.base import Context
    from deepdram.design.methods.registry import get as get_method

    method = method or get_method(req.method)
    objective = objectives.get(req.objective)
    ctx = Context(space, req, s, np.random.default_rng(req.seed), objective, progress)
    keep = max(req.top_k, 1000) if keep is None else keep
    target = None if req.target is None else np.asarray(req.target, float)
    best_d = np.zeros((0, space.n_variables), np.uint8 if space.binary else np.float64)
    best_p = np.zeros((0, space.n_properties), np.float32)
    best_e = np.zeros(0)
    seen = np.zeros(0, space.keys(best_d[:0]).dtype) if space.binary else None
    n_valid = n_distinct = n_accepted = n_candidates = 0
    for batch in method.candidates(ctx):
        d, k, nv, nd = space.distinct_valid(batch.designs, seen)
        n_candidates += len(batch.designs)
        n_valid += nv
        n_distinct += nd
        seen = np.union1d(seen, k) if seen is not None else k
        pred = s.predict(space, d, req.conditions)
        err = objective(pred, target)
        n_accepted += int((err <= req.mse_threshold).sum())
        best_d = np.concatenate([best_d, d])
        best_p = np.concatenate([best_p, pred])
        best_e = np.concatenate([best_e, err])
        order = np.argsort(best_e, kind="stable")[:keep]
        best_d, best_p, best_e = best_d[order], best_p[order], best_e[order]
        if progress is not None:
            progress(batch.work or len(batch.designs))
    counts = {"candidates": n_candidates, "valid": n_valid, "invalid": n_candidates - n_valid,
              "distinct": n_distinct, "duplicates": n_valid - n_distinct, "accepted": n_accepted,
              "best_mse_pred": float(best_e[0]) if len(best_e) else None}
    return Screened(best_d, best_p, best_e, counts)


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


def rank_order(mse_fe: np.ndarray, peak: np.ndarray, threshold: float) -> np.ndarray:
    """Indices: FE-accepted designs by ascending secondary key, then the rest by ascending FE error."""
    ok = np.asarray(mse_fe) <= threshold
    a = np.flatnonzero(ok)[np.argsort(np.asarray(peak)[ok], kind="stable")]
    b = np.flatnonzero(~ok)[np.argsort(np.asarray(mse_fe)[~ok], kind="stable")]
    return np.concatenate([a, b]).astype(np.int64)


@dataclass
class DesignResult:
    """The ranked, FE-verified designs of one request and its summary counts."""

    request: DesignRequest
    table: Any  # pandas DataFrame, one row per verified design, best first
    summary: dict


def stress_spread(peak: np.ndarray) -> float | None:
    """(max - min) / min in percent (the paper's 250-310 %), or None with fewer than 2 values."""
    peak = np.asarray(peak, float)
    if len(peak) < 2 or peak.min() <= 0:
        return None
    return float((peak.max() - peak.min()) / peak.min() * 100.0)


def fe_columns(space: DesignSpace) -> tuple[str, ...]:
    """fe_<property> for each property."""
    return tuple(f"fe_{c}" for c in space.properties)


def result_columns(space: DesignSpace) -> tuple[str, ...]:
    """The columns of a result table, in order (the secondary columns from `space.secondary`)."""
    extra = tuple(space.secondary({e: np.zeros((0, 2)) for e in space.ranking_extras}, 0)[0])
    cond = tuple(space.condition_columns(None, 0)) or space.conditions
    return ("rank", *space.variables, *cond, *space.properties, *fe_columns(space), "mse_pred", "mse_fe",
            *extra, "within_threshold", "pareto", "best_effort")


def verify_and_rank(space: DesignSpace, req: DesignRequest, s: Screened, progress=None,
                    threads: int | None = None) -> DesignResult:
    """Steps 4-5: FE of the top_k best-predicted designs, ranking, Pareto front, summary."""
    import pandas as pd

    from deepdram.design import objectives

    objective = objectives.get(req.objective)
    accepted = s.mse_pred <= req.mse_threshold
    best_effort = not bool(accepted.any())
    pick = np.flatnonzero(accepted)[: req.top_k] if not best_effort else np.arange(min(req.top_k, len(s.mse_pred)))
    d = s.designs[pick]
    fe, extras = fe_verify(space, d, req.conditions, progress, threads)
    target = None if req.target is None else np.asarray(req.target, float)
    mse_fe = objective(fe, target) if len(d) else np.zeros(0)
    extra_cols, key = space.secondary(extras, len(d))
    key = mse_fe if key is None else key
    order = rank_order(mse_fe, key, req.mse_threshold)
    n = len(order)
    cols: dict[str, Any] = {"rank": np.arange(1, n + 1)}
    cols |= {c: d[order, i] for i, c in enumerate(space.variables)}
    cols |= space.condition_columns(req.conditions, n)
    cols |= {c: s.predicted[pick][order, i].astype(float) for i, c in enumerate(space.properties)}
    cols |= {c: fe[order, i] for i, c in enumerate(fe_columns(space))}
    cols |= {"mse_pred": s.mse_pred[pick][order], "mse_fe": mse_fe[order]}
    cols |= {c: v[order] for c, v in extra_cols.items()}
    cols |= {"within_threshold": mse_fe[order] <= req.mse_threshold,
             "pareto": pareto_front(mse_fe, key)[order] if n else np.zeros(0, bool),
             "best_effort": np.full(n, best_effort)}
    table = pd.DataFrame(cols)
    if space.binary:
        table[list(space.variables)] = table[list(space.variables)].astype(np.uint8)
    ok = table["within_threshold"].to_numpy()
    ranked = table["vm"] if "vm" in table else table["mse_fe"]
    summary = {**s.counts, "name": req.name, "target": None if req.target is None else list(req.target),
               **{k: int(v[0]) for k, v in space.condition_columns(req.conditions, 1).items()},
               "mse_threshold": req.mse_threshold, "verified": int(len(table)),
               "fe_within_threshold": int(ok.sum()),
               "best_mse_fe": float(mse_fe.min()) if len(mse_fe) else None,
               "peak_min": float(ranked[ok].min()) if ok.any() else None,
               "peak_max": float(ranked[ok].max()) if ok.any() else None,
               "peak_spread_pct": stress_spread(ranked[ok]), "best_effort": best_effort}
    return DesignResult(req, table, summary)


def design(space: DesignSpace, s: Surrogates, req: DesignRequest, progress=None, fe_progress=None,
           threads: int | None = None) -> DesignResult:
    """The whole procedure for one request."""
    return verify_and_rank(space, req, screen(space, s, req, progress), fe_progress, threads)


# --- Sweeps (Fig. 4b) --------------------------------------------------------------------------------


def sweep(space: DesignSpace, s: Surrogates, grid: DesignGrid, progress=None, keep_designs: int = 50):
    """Best predicted MSE per (target, size); candidates generated once per target, all sizes screened.

    Returns (table, envelope): one row per (target, size) with counts and the best design's key;
    and up to `keep_designs` distinct generated designs per target (for the Fig. 2b envelope).
    """
    import pandas as pd

    from deepdram.learn.generation import generate, generator_decoder, latent_size

    gen = s.models["generator"]
    latent = latent_size(gen, space.n_properties)
    rows, envelope = [], []
    for t_idx, target in enumerate(grid.targets):
        rng = np.random.default_rng([grid.seed, t_idx])
        raw = generate(generator_decoder(gen, grid.n_candidates), np.asarray(target, np.float32)[None],
                       grid.n_candidates, latent, rng, grid.rule)
        d, _, n_valid, n_distinct = space.distinct_valid(raw)
        envelope.append(d[rng.permutation(len(d))[:keep_designs]])
        for size in grid.sizes:
            cond = space.parse_conditions(dict(zip(space.conditions, size)), "sweep")
            pred = s.predict(space, d, cond)
            err = mse(pred, target)
            b = int(np.argmin(err)) if len(err) else -1
            row = {"target": t_idx, **dict(zip(space.properties, map(float, target))),
                   **dict(zip(space.conditions, size)),
                   "candidates": grid.n_candidates, "valid": n_valid, "distinct": n_distinct,
                   "accepted": int((err <= grid.mse_threshold).sum()),
                   "best_mse_pred": float(err[b]) if b >= 0 else np.nan,
                   **{f"pred_{c}": float(pred[b, i]) if b >= 0 else np.nan for i, c in enumerate(space.properties)},
                   "best_key": int(space.keys(d[b:b + 1])[0]) if b >= 0 else -1}
            rows.append(row)
        if progress is not None:
            progress(1)
    env = np.concatenate(envelope) if envelope else np.zeros((0, space.n_variables), np.uint8)
    return pd.DataFrame(rows), env
