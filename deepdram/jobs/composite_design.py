"""Stage `composite_design`: the seed's experiments on our FE, with the brute-force optimum as the truth.

1. Table S1 / S2: for each nested training group, a predictor (the seed's 6 x 64) is trained on
   it and the backprop designer (Gaussian starts, the soft fraction kept by ranking) runs through
   the shared design pipeline; every proposed design gets its FE toughness. Per group: the
   training set's max and mean (S1); the designer's max, top 1 %, top 10 % and mean over its
   starts (S2); whether it found the brute-force optimum. Printed next to the seed's numbers.
2. The head-to-head of the GIDN methods on this space (`design.compare.run_race`): backprop and
   active learning on the registered predictor, ga, topopt (the seed's finite differences on the
   relaxed FE) and random on the FE oracle, under equal wall time and under equal FE calls, each
   repeated with several seeds: best FE toughness against time and FE calls, the optimum as the
   ceiling. One MLflow run per training group and per method (experiment deepdram-composite).

Outputs in outputs/composite/design/: table_s1_s2.{csv,md}, groups.csv, head_to_head.csv,
head_to_head_summary.{csv,md}, traces.csv, curve_{time,fe}.csv and .png, summary.json.
"""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("composite", "composite_design")
EXPERIMENT = "deepdram-composite"


def request(space, k: int, name: str, method: str, options: dict, seed: int, top_k: int):
    """A max-toughness DesignRequest on the composite with k soft cells."""
    from deepdram.design.requests import parse_request

    return parse_request({"space": "composite", "name": name, "objective": "max-toughness", "soft_count": k,
                          "method": method, "options": options, "seed": seed, "top_k": top_k},
                         "composite_design", max_top_k=max(top_k, 1), space=space)


def table_experiment(space, k: int, sec, groups_df, sizes, test_xy, optimum: float, optimum_key: int, exp: str):
    """Table S1 / S2 rows, one per training group (each with its MLflow run)."""
    import time

    import mlflow
    import numpy as np

    from deepdram.design.pipeline import Surrogates
    from deepdram.jobs.composite_common import predictor_config, xy
    from deepdram.learn import models
    from deepdram.learn.metrics import r2_overall
    from deepdram.mlops import tracking
    from deepdram.spaces.composite.experiment import designer_stats, run_designer

    rows = []
    for g in sizes:
        t0 = time.perf_counter()
        cfg = predictor_config(**{"seed": sec.seed, **sec.model})
        x, y = xy(space, groups_df, g)
        model, hist = models.train_regressor(x, y, None, None, cfg, space=space)
        r2 = r2_overall(test_xy[1], models.predict(model, test_xy[0]))
        trained = time.perf_counter() - t0
        options = {"n_starts": sec.n_starts, "steps": sec.steps, "lr": sec.lr, "sd": sec.sd}
        req = request(space, k, f"group_{g}", "backprop", options, sec.seed, sec.n_starts)
        result, proposed, values = run_designer(space, Surrogates({"forward": model}), req)
        stats = designer_stats(values)
        keys = space.keys(proposed)
        row = {"group": g, "train_max": float(y[:, 0].max()), "train_mean": float(y[:, 0].mean()),
               **{f"design_{s}": v for s, v in stats.items()},
               "found_optimum": bool(np.isin(np.uint64(optimum_key), keys)),
               "starts_at_optimum": int((keys == np.uint64(optimum_key)).sum()),
               "distinct_designs": int(len(np.unique(keys))), "starts": int(len(values)),
               "predictor_test_r2": float(r2), "train_seconds": round(trained, 2),
               "design_seconds": round(time.perf_counter() - t0 - trained, 2),
               "fe_calls": int(result.summary.get("fe_calls") or 0)}
        rows.append(row)
        with mlflow.start_run(experiment_id=exp, run_name=f"table_s2-group_{g}"):
            tracking.log_params_flat({"experiment": "table_s1_s2", "group": g, "soft_count": k, "model": cfg.to_dict(),
                                      "designer": options})
            mlflow.log_metrics({k_: float(v) for k_, v in row.items() if isinstance(v, (int, float, bool))
                                and k_ != "group"} | {"optimum": optimum})
        print(f"  group {g:>9,}: train max {row['train_max']:.4f} mean {row['train_mean']:.4f} | designer max "
              f"{stats['max']:.4f} top1% {stats['top1']:.4f} top10% {stats['top10']:.4f} mean {stats['mean']:.4f} | "
              f"optimum found: {'yes' if row['found_optimum'] else 'no'} ({row['starts_at_optimum']} of "
              f"{row['starts']:,} starts; {row['distinct_designs']:,} distinct) | predictor test R2 {r2:.3f}")
    return rows


def job(params) -> dict:
    import json
    import time

    import mlflow
    import numpy as np
    import pandas as pd

    from deepdram.data.atomic import write_json, write_text
    from deepdram.design.compare import Race, curves, run_race
    from deepdram.design.pipeline import Surrogates
    from deepdram.jobs.composite_common import (BRUTE_SUMMARY_PATH, DATA_DIR, DESIGN_DIR, GROUPS_PATH, MODEL_PATH,
                                                TEST_PATH, read, read_json, soft_count, space_of, stage_times, xy)
    from deepdram.learn.models import load_model
    from deepdram.mlops import tracking
    from deepdram.spaces.composite.experiment import markdown, plot_curves, race_table, table_s1_s2

    from deepdram.design.methods.registry import check_all_options

    t_start = time.perf_counter()
    sys_, sec = params.composite, params.composite_design
    space, k = space_of(sys_), soft_count(sys_)
    check_all_options(sec.race.methods, "params.yaml: composite_design.race.methods")  # before any work
    brute = read_json(BRUTE_SUMMARY_PATH)
    if brute["soft_count"] != k:
        from deepdram.errors import DeepdramError

        raise DeepdramError(f"{BRUTE_SUMMARY_PATH} is for {brute['soft_count']} soft cells, composite.soft_fraction "
                            f"for {k}: run composite_brute_force again")
    optimum = float(brute["optimum_toughness"])
    optimum_key = int(space.keys(np.array([[int(c) for c in brute["optimum_design"]]], np.uint8))[0])
    data = read_json(DATA_DIR / "summary.json")
    sizes = [int(g["group"]) for g in data["groups"]]
    groups_df, test_df = read(GROUPS_PATH), read(TEST_PATH)
    out = DESIGN_DIR
    out.mkdir(parents=True, exist_ok=True)
    tracking.configure()
    exp = tracking.experiment(EXPERIMENT)

    # --- 1. Table S1 / S2 ---------------------------------------------------------------------------
    print(f"Table S1 / S2 on our FE: {k} of 32 cells soft, brute-force optimum {optimum:.4f}")
    rows = table_experiment(space, k, sec.table, groups_df, sizes, xy(space, test_df), optimum, optimum_key, exp)
    pd.DataFrame(rows).to_csv(out / "groups.csv", index=False)
    table = table_s1_s2(rows, optimum)
    table.to_csv(out / "table_s1_s2.csv", index=False)
    t_table = time.perf_counter() - t_start

    # --- 2. the head-to-head -----------------------------------------------------------------------------
    race_sec = sec.race
    surrogates = Surrogates({"forward": load_model(MODEL_PATH, space)})
    methods = {m: dict(o or {}) for m, o in race_sec.methods.items()}
    if "topopt" in methods:  # the seed's start: every density at the stiff share
        methods["topopt"].setdefault("init", 1.0 - sys_.soft_fraction)
    reqs = [request(space, k, f"seed{i}", "random", {}, i, sec.top_k) for i in range(race_sec.repeats)]
    races = [Race("time", seconds=race_sec.seconds), Race("fe", fe=race_sec.fe, seconds=race_sec.fe_time_cap)]
    results, traces = [], []
    for race in races:
        print(f"head-to-head, equal {'wall time' if race.name == 'time' else 'FE calls'}: "
              f"{race.seconds if race.name == 'time' else race.fe} per run, {race_sec.repeats} seeds x "
              f"{len(methods)} methods")
        r, t = run_race(space, surrogates, reqs, methods, race)
        results.append(r)
        traces.append(t)
    results, traces = pd.concat(results, ignore_index=True), pd.concat(traces, ignore_index=True)
    results["found_optimum"] = results["best_fe_toughness"] >= optimum * (1 - 1e-9)
    summary = race_table(results, optimum)
    results.to_csv(out / "head_to_head.csv", index=False)
    traces.to_csv(out / "traces.csv", index=False)
    summary.to_csv(out / "head_to_head_summary.csv", index=False)
    grids = {"seconds": np.linspace(0, max(race_sec.seconds, float(traces.loc[traces.race == "time", "seconds"].max())), 80),
             "fe_calls": np.unique(np.geomspace(1, max(race_sec.fe, 2), 80).round())}
    import warnings

    for axis, name in (("seconds", "time"), ("fe_calls", "fe")):
        part = traces[traces["race"] == name]
        with warnings.catch_warnings():  # NaN before a method's first FE result, by design
            warnings.simplefilter("ignore", RuntimeWarning)
            c = curves(part, axis, grids[axis])
        c.to_csv(out / f"curve_{name}.csv", index=False)
        plot_curves(out / f"curve_{name}.png", c, axis, optimum,
                    f"composite {k}/32 soft: equal {'wall time' if name == 'time' else 'FE calls'} (median of "
                    f"{race_sec.repeats})")
    for method in methods:
        mine = summary[summary["method"] == method]
        with mlflow.start_run(experiment_id=exp, run_name=f"head_to_head-{method}"):
            tracking.log_params_flat({"experiment": "head_to_head", "method": method, "options": methods[method],
                                      "soft_count": k, "repeats": race_sec.repeats, "race_seconds": race_sec.seconds,
                                      "race_fe": race_sec.fe})
            mlflow.log_metrics({f"{row.race}_{m}": float(getattr(row, m)) for row in mine.itertuples()
                                for m in ("median_best_toughness", "best_toughness", "median_share_of_optimum",
                                          "found_optimum", "median_fe_calls", "median_seconds")
                                if np.isfinite(float(getattr(row, m)))} | {"optimum": optimum})
            for f in ("curve_time.png", "curve_fe.png", "head_to_head_summary.csv"):
                mlflow.log_artifact(str(out / f), "composite")

    # --- report ----------------------------------------------------------------------------------------
    shown = table.copy()
    md = (f"# The seed's Table S1 / S2 on our FE ({k} of 32 cells soft; brute-force optimum {optimum:.4f}, "
          f"seed: 25 % soft, optimum {69.42})\n\nThe seed's values come from its own FE model: compare the pattern "
          "(the shares of each system's optimum), not the values.\n\n" + markdown(shown)
          + "\n# Head-to-head on this space (best FE toughness; the optimum is the ceiling)\n\n"
          + markdown(summary, "{:.4g}"))
    write_text(out / "table_s1_s2.md", md)
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print("\nTable S1 / S2 (ours next to the seed's; '/opt' = share of the system's optimum):")
        cols = ["table", "statistic"] + [c for c in table.columns if c.startswith(("ours ", "seed "))]
        print(shown[cols].to_string(index=False))
        print("\n" + shown[["table", "statistic"] + [c for c in table.columns if "/opt" in c]].to_string(index=False))
        print(f"\nHead-to-head (optimum {optimum:.4f}):")
        print(summary.to_string(index=False))
    seconds = time.perf_counter() - t_start
    times = {**stage_times(), "composite_design": seconds}
    print("\ncomposite stages, wall seconds of their last runs: "
          + ", ".join(f"{s} {v:.0f}" for s, v in times.items()) + f"; total {sum(times.values()):.0f}")
    result = {"groups": rows, "optimum": optimum, "optimum_design": brute["optimum_design"],
              "head_to_head": json.loads(summary.to_json(orient="records")), "table_seconds": round(t_table, 2),
              "stage_seconds": times}
    write_json(result, out / "summary.json")
    metrics = {"optimum": optimum, "table_seconds": round(t_table, 2), "race_runs": len(results),
               **{f"group_{r['group']}_{m}": r[m] for r in rows
                  for m in ("design_max", "design_top1", "design_mean", "found_optimum")},
               **{f"{row.race}_{row.method}_median_share_of_optimum": float(row.median_share_of_optimum)
                  for row in summary.itertuples()}}
    return metrics


def main() -> int:
    return run("composite_design", job)
