"""The head-to-head of design methods: the same targets, the same budget (equal wall time, or equal
FE calls), every result verified by FE. Which method gets closest to a requested property set?

`run_race` designs every (target, method) pair under one budget with the shared pipeline and
collects, per run: whether the best FE-verified design is within the engineer's tolerance, its
FE objective and paper MSE, the FE and surrogate calls, the wall time, and the trace of the best
FE objective against time and FE calls. `summarise` gives per method: the share of targets within
tolerance (the headline), the share within the paper's MSE threshold, the median best FE error,
the median FE calls and wall time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from deepdram.design.requests import DesignRequest
from deepdram.spaces.base import DesignSpace


@dataclass(frozen=True)
class Race:
    """One budget every method gets: equal wall time (`seconds`) or equal FE calls (`fe`)."""

    name: str  # "time" or "fe"
    seconds: float | None = None
    fe: int | None = None

    def apply(self, req: DesignRequest, method: str) -> DesignRequest:
        """The request with this race's budget (surrogate methods may verify up to the FE budget)."""
        out = replace(req, budget_seconds=self.seconds, budget_fe=self.fe)
        if self.fe is not None and method in ("cvae", "backprop"):
            out = replace(out, top_k=int(self.fe))
        return out


def run_race(space: DesignSpace, surrogates, requests: Sequence[DesignRequest], methods: Mapping[str, Mapping],
             race: Race, *, variances: Callable[[DesignRequest], Sequence[float] | None] | None = None,
             on_result: Callable[[str, DesignRequest, object], None] | None = None,
             progress: Callable[[int], None] | None = None, threads: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per (target, method), traces) of a race; `methods` maps method names to options."""
    from deepdram.design.pipeline import design

    rows, traces = [], []
    for req in requests:
        for method, options in methods.items():
            r_req = race.apply(replace(req, method=method, options=dict(options)), method)
            result = design(space, surrogates, r_req, threads=threads,
                            variances=variances(r_req) if variances is not None else None)
            s, t = result.summary, result.table
            best = t.iloc[int(np.argmin(t["objective_fe"] if "objective_fe" in t else t["mse_fe"]))] if len(t) else None
            rows.append({
                "race": race.name, "target": req.name, "method": method,
                **{f"target_{c}": v for c, v in zip(space.properties, req.target or [])},
                **{k: int(v[0]) for k, v in space.condition_columns(req.conditions, 1).items()},
                "within_tolerance": bool(t["within_tolerance"].any()) if "within_tolerance" in t else None,
                "within_threshold": bool(t["within_threshold"].any()) if len(t) else False,
                "best_mse_fe": float(t["mse_fe"].min()) if "mse_fe" in t and len(t) else None,
                "best_objective_fe": s.get("best_objective_fe"),
                **({f"best_fe_{c}": float(best[f"fe_{c}"]) for c in space.properties} if best is not None else {}),
                "fe_calls": s.get("fe_calls"), "surrogate_calls": s.get("surrogate_calls"), "seconds": s.get("seconds"),
                "verified": s.get("verified"), "candidates": s.get("candidates"),
            })
            for sec, fe, val in result.trace:
                traces.append({"race": race.name, "target": req.name, "method": method, "seconds": sec,
                               "fe_calls": fe, "best_objective_fe": val})
            if on_result is not None:
                on_result(method, r_req, result)
            if progress is not None:
                progress(1)
    return pd.DataFrame(rows), pd.DataFrame(traces)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per race and method: targets, share within tolerance (headline), within the MSE threshold,
    median best FE MSE and objective, median FE calls, surrogate calls and wall time."""
    g = results.groupby(["race", "method"], sort=False)
    out = g.agg(targets=("target", "count"),
                within_tolerance=("within_tolerance", lambda s: float(np.mean(s.astype(float)))),
                within_threshold=("within_threshold", "mean"),
                median_best_mse_fe=("best_mse_fe", "median"),
                median_best_objective_fe=("best_objective_fe", "median"),
                median_fe_calls=("fe_calls", "median"), median_surrogate_calls=("surrogate_calls", "median"),
                median_seconds=("seconds", "median"))
    return out.reset_index()


def curves(traces: pd.DataFrame, axis: str, grid: np.ndarray) -> pd.DataFrame:
    """Median over targets of the best FE objective so far at each grid value of `axis`
    ("seconds" or "fe_calls"), per race and method (NaN before a method's first FE result)."""
    rows = []
    for (race, method), part in traces.groupby(["race", "method"], sort=False):
        per_target = []
        for _, t in part.groupby("target"):
            t = t.sort_values(axis)
            idx = np.searchsorted(t[axis].to_numpy(), grid, side="right") - 1
            vals = np.where(idx >= 0, t["best_objective_fe"].to_numpy()[np.maximum(idx, 0)], np.nan)
            per_target.append(vals)
        med = np.nanmedian(np.vstack(per_target), axis=0) if per_target else np.full(len(grid), np.nan)
        rows += [{"race": race, "method": method, axis: float(x), "median_best_objective_fe": float(v)}
                 for x, v in zip(grid, med)]
    return pd.DataFrame(rows)
