"""Inverse-design head-to-head benchmark: which method gets closest to a requested property set,
verified by FE, for the same wall time and for the same number of FE calls?

Runs exactly the `compare_methods` stage's code (`deepdram.jobs.compare_methods`: its targets, its
champion surrogates from the registry, its two races) with the default profile's settings or the
paper profile's (params-paper.yaml: more targets, the seed's method sizes, larger budgets), and
prints per race and method: the share of targets whose best FE-verified design is within the
engineer's tolerance (the headline), the share within the paper's MSE threshold, the median best
FE error, FE and surrogate calls and wall time; then each method against the floor (`random`) and
against Deep-DRAM (`cvae`) in the same run. Needs the trained and registered champions
(`make repro`).

    python benchmarks/bench_inverse.py                      # the default profile's races
    python benchmarks/bench_inverse.py --profile paper      # params-paper.yaml's (hours)
    python benchmarks/bench_inverse.py --seconds 10 --fe 500 --test-cells 10 --methods cvae,ga,random
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def settings(args):
    """The compare_methods section of the chosen profile with the command line's overrides."""
    from deepdram import params as schema
    from deepdram.paths import PARAMS_PATH, REPO_ROOT

    raw = schema.read_yaml(PARAMS_PATH)
    if args.profile == "paper":
        raw = schema.merge(raw, schema.read_yaml(REPO_ROOT / "params-paper.yaml"))
    sec = raw["compare_methods"]
    for key, value in (("race_seconds", args.seconds), ("race_fe", args.fe), ("test_cells", args.test_cells)):
        if value is not None:
            sec[key] = value
    if args.methods:
        names = args.methods.split(",")
        sec["methods"] = {m: sec["methods"].get(m, {}) for m in names}
    return schema.parse(raw, f"params ({args.profile} profile)").compare_methods


def against(summary, reference: str) -> list[str]:
    """Lines comparing each method with `reference` in each race (share within tolerance, median error)."""
    lines = []
    for race, part in summary.groupby("race", sort=False):
        ref = part[part["method"] == reference]
        if ref.empty:
            continue
        r = ref.iloc[0]
        for row in part.itertuples():
            if row.method == reference:
                continue
            ratio = row.median_best_objective_fe / r.median_best_objective_fe if r.median_best_objective_fe else np.nan
            lines.append(f"  {race:4s} {row.method:9s} within tolerance {row.within_tolerance:6.1%} vs "
                         f"{r.within_tolerance:6.1%} ({(row.within_tolerance - r.within_tolerance) * 100:+5.1f} points); "
                         f"median best FE objective {row.median_best_objective_fe:.4g} vs "
                         f"{r.median_best_objective_fe:.4g} ({ratio:.2f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=("default", "paper"), default="default")
    ap.add_argument("--seconds", type=float, help="equal-time budget per target (default: the profile's)")
    ap.add_argument("--fe", type=int, help="equal-FE budget per target (default: the profile's)")
    ap.add_argument("--test-cells", type=int, help="held-out test cells among the targets")
    ap.add_argument("--methods", help="comma-separated methods (default: the profile's)")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from deepdram.design.compare import summarise
    from deepdram.jobs.compare_methods import prepare, race_all, races

    sec = settings(args)
    space, reqs, surrogates, versions, variances = prepare(sec)
    methods = {m: dict(o) for m, o in sec.methods.items()}
    race_list = races(sec)
    print(f"profile {args.profile}: {len(reqs)} targets ({', '.join(r.name for r in reqs)}), methods "
          f"{', '.join(methods)}; races: {sec.race_seconds:g} s per target, {sec.race_fe} FE calls per "
          f"target (wall-time cap {sec.fe_race_time_cap:g} s); champions {versions}")
    t0 = time.perf_counter()
    with tqdm(total=len(reqs) * len(methods) * len(race_list), unit="run", desc="races") as bar:
        results, _ = race_all(space, reqs, surrogates, methods, race_list, variances, bar.update)
    summary = summarise(results)
    print(f"\n{len(results)} runs in {time.perf_counter() - t0:.0f} s\n")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for ref, label in (("random", "the floor (random valid designs by FE)"), ("cvae", "Deep-DRAM (cvae)")):
        lines = against(summary, ref)
        if lines:
            print(f"\nagainst {label}:")
            print("\n".join(lines))
    print("\nbest method per race (share within tolerance, then median best FE objective):")
    for race, part in summary.groupby("race", sort=False):
        best = part.sort_values(["within_tolerance", "median_best_objective_fe"], ascending=[False, True]).iloc[0]
        print(f"  {race:4s} {best.method}: {best.within_tolerance:.1%} of targets within tolerance, "
              f"median best FE objective {best.median_best_objective_fe:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
