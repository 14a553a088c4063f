"""Stage `compare_methods`: the head-to-head of the design methods on the lattices, every result
verified by FE, in two races (equal wall time and equal FE calls) per target.

Targets: held-out test-split unit cells and tilings (their FE properties, so each is reachable),
the paper's Fig. 5 and Table 10 requests, and rare targets at the edge of the envelope (the most
double-auxetic test cell, the most anisotropic one). Outputs in outputs/compare/: results.csv
(one row per race, target and method), summary.csv / summary.md (per race and method: the share
of targets within the engineer's tolerance, within the paper's MSE threshold, median best FE
error, FE calls, wall time), curves of the median best FE objective against time and FE calls
(CSV for `dvc plots`, PNG), traces.csv; one MLflow run per method (experiment deepdram-compare)
with its figures and the tables as artifacts; the headline figures in outputs/metrics/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepdram.jobs.runner import run

SECTIONS = ("compare_methods",)


def targets(space, sec, test_cells, test_tilings, requests_dir: Path):
    """The race's DesignRequests (named by where the target comes from)."""
    from dataclasses import replace

    from deepdram.design.requests import load_request_file, parse_request

    rng = np.random.default_rng(sec.seed)
    props = list(space.properties)
    base = {"n_candidates": sec.n_candidates, "top_k": sec.top_k, "objective": sec.objective, "seed": sec.seed}
    reqs = []
    cells = test_cells.iloc[rng.permutation(len(test_cells))[: sec.test_cells]]
    for i, row in enumerate(cells.itertuples(index=False)):
        reqs.append(parse_request({**base, "name": f"test_cell_{i}", "target": [getattr(row, c) for c in props],
                                   "d1": 1, "d2": 1}))
    for d1, d2 in sec.tiling_sizes:
        rows = test_tilings[(test_tilings["d1"] == d1) & (test_tilings["d2"] == d2)]
        if len(rows):
            row = rows.iloc[int(rng.integers(len(rows)))]
            reqs.append(parse_request({**base, "name": f"test_tiling_{d1}x{d2}", "target": [row[c] for c in props],
                                       "d1": d1, "d2": d2}))
    for name in sec.requests:
        r = load_request_file(requests_dir / f"{name}.yaml")
        reqs.append(replace(r, n_candidates=sec.n_candidates, top_k=sec.top_k, objective=sec.objective, seed=sec.seed))
    if sec.rare:
        nu = test_cells[["nu12", "nu21"]].to_numpy()
        e = test_cells[["E11", "E22"]].to_numpy()
        picks = {"rare_double_auxetic": int(np.argmin(nu.max(axis=1))),
                 "rare_anisotropic": int(np.argmax(np.maximum(e[:, 0] / e[:, 1], e[:, 1] / e[:, 0])))}
        for name, i in picks.items():
            row = test_cells.iloc[i]
            reqs.append(parse_request({**base, "name": name, "target": [row[c] for c in props], "d1": 1, "d2": 1}))
    return reqs


def plot_curves(curves_by_axis: dict, path: Path) -> None:
    """Median best FE objective against wall time and against FE calls, one line per method."""
    from deepdram.learn.evaluation import figure

    def draw(fig):
        axes = fig.subplots(1, len(curves_by_axis))
        for ax, (axis, c) in zip(np.atleast_1d(axes), curves_by_axis.items()):
            race = "time" if axis == "seconds" else "fe"
            for method, part in c[c["race"] == race].groupby("method", sort=False):
                ax.plot(part[axis], part["median_best_objective_fe"], label=method)
            ax.set_xlabel("wall time (s)" if axis == "seconds" else "FE calls")
            ax.set_ylabel("median best FE objective (lower is better)")
            ax.set_yscale("log")
            ax.set_title(f"equal {'wall time' if race == 'time' else 'FE calls'}")
            ax.legend(fontsize=7)

    figure(path, draw, size=(11, 4))


def prepare(sec):
    """(space, target requests, champion surrogates, their versions, the variances by request) of the
    head-to-head: what the stage and `benchmarks/bench_inverse.py` run."""
    import tempfile

    from deepdram.data.splits import split_rows
    from deepdram.design.methods.registry import check_all_options
    from deepdram.design.pipeline import load_surrogates
    from deepdram.jobs.runner import read_table
    from deepdram.mlops.champions import champion_files
    from deepdram.paths import REQUESTS_DIR, SPLITS_DIR, TILINGS_PATH
    from deepdram.spaces.lattice.space import LatticeSpace

    check_all_options(sec.methods, "params.yaml: compare_methods.methods")  # before any work
    space = LatticeSpace()
    train = read_table(SPLITS_DIR / "train.parquet")
    tilings = read_table(TILINGS_PATH)
    variances = {"cells": np.var(train[list(space.properties)].to_numpy(), axis=0),
                 "tilings": np.var(split_rows(tilings, "train")[list(space.properties)].to_numpy(), axis=0)}
    reqs = targets(space, sec, read_table(SPLITS_DIR / "test.parquet"), split_rows(tilings, "test"), REQUESTS_DIR)
    with tempfile.TemporaryDirectory(prefix="deepdram-compare-") as tmp:
        paths, versions = champion_files(Path(tmp), space.name)
        surrogates = load_surrogates(paths, space)
    return space, reqs, surrogates, versions, lambda q: variances["cells" if q.conditions is None else "tilings"]


def races(sec):
    """The two races: equal wall time and equal FE calls (with a wall-time cap)."""
    from deepdram.design.compare import Race

    return [Race("time", seconds=sec.race_seconds), Race("fe", fe=sec.race_fe, seconds=sec.fe_race_time_cap)]


def race_all(space, reqs, surrogates, methods, race_list, variances, progress=None):
    """(results, traces) of every race, target and method."""
    import pandas as pd

    from deepdram.design.compare import run_race

    results, traces = [], []
    for race in race_list:
        r, t = run_race(space, surrogates, reqs, methods, race, progress=progress, variances=variances)
        results.append(r)
        traces.append(t)
    return pd.concat(results, ignore_index=True), pd.concat(traces, ignore_index=True)


def job(params) -> dict:
    import mlflow
    from tqdm import tqdm

    from deepdram.data.atomic import write_json, write_text
    from deepdram.design.compare import curves, summarise
    from deepdram.mlops import tracking
    from deepdram.paths import OUTPUTS_DIR

    sec = params.compare_methods
    space, reqs, surrogates, versions, variances = prepare(sec)
    out = OUTPUTS_DIR / "compare"
    out.mkdir(parents=True, exist_ok=True)
    methods = {m: dict(o) for m, o in sec.methods.items()}
    race_list = races(sec)
    with tqdm(total=len(reqs) * len(methods) * len(race_list), unit="run", desc="compare methods") as bar:
        results, traces = race_all(space, reqs, surrogates, methods, race_list, variances, bar.update)
    summary = summarise(results)
    results.to_csv(out / "results.csv", index=False)
    traces.to_csv(out / "traces.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    write_text(out / "summary.md", "# Design methods head to head (lattices, every result FE-verified)\n\n"
               + summary.to_markdown(index=False, floatfmt=".4g") + "\n\n## Per target\n\n"
               + results.to_markdown(index=False, floatfmt=".4g") + "\n")
    grids = {"seconds": np.linspace(0, max(sec.race_seconds, float(traces["seconds"].max() or 1)), 60),
             "fe_calls": np.linspace(0, max(sec.race_fe, float(traces["fe_calls"].max() or 1)), 60)}
    by_axis = {axis: curves(traces, axis, g) for axis, g in grids.items()}
    by_axis["seconds"].to_csv(out / "curve_time.csv", index=False)
    by_axis["fe_calls"].to_csv(out / "curve_fe.csv", index=False)
    plot_curves(by_axis, out / "curves.png")
    print("\n" + summary.to_string(index=False))

    tracking.configure()
    exp = tracking.experiment("deepdram-compare")
    for method in methods:
        mine = summary[summary["method"] == method]
        with mlflow.start_run(experiment_id=exp, run_name=f"compare-{method}"):
            tracking.log_params_flat({"method": method, "options": methods[method], "targets": len(reqs),
                                      "race_seconds": sec.race_seconds, "race_fe": sec.race_fe,
                                      "objective": sec.objective, "models": versions})
            mlflow.log_metrics({f"{row.race}_{k}": float(getattr(row, k)) for row in mine.itertuples()
                                for k in ("within_tolerance", "within_threshold", "median_best_mse_fe",
                                          "median_fe_calls", "median_seconds") if np.isfinite(getattr(row, k))})
            for f in ("summary.md", "results.csv", "curves.png", "curve_time.csv", "curve_fe.csv"):
                mlflow.log_artifact(str(out / f), "compare")
    metrics = {f"{row.race}.{row.method}.{k}": float(getattr(row, k)) for row in summary.itertuples()
               for k in ("within_tolerance", "within_threshold", "median_best_mse_fe", "median_fe_calls",
                         "median_seconds") if np.isfinite(getattr(row, k))}
    write_json(metrics, OUTPUTS_DIR / "metrics" / "compare_methods_results.json")
    return {"targets": len(reqs), "runs": len(results)}


def main() -> int:
    return run("compare_methods", job)
