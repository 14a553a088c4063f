"""Stage `composite_data`: nested training groups of random designs (never one of the brute-force
top 100) and a held-out test set, FE-labelled, validated with Great Expectations, as Parquet."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("composite", "composite_data")


def job(params) -> dict:
    import numpy as np

    from deepdram.data.atomic import write_json
    from deepdram.data.tables import write_table
    from deepdram.data.validation import validate
    from deepdram.errors import DeepdramError
    from deepdram.jobs.composite_common import (DATA_DIR, GROUPS_PATH, TEST_PATH, TOP100_PATH, VALIDATION_DIR, read,
                                                soft_count, space_of)
    from deepdram.spaces.composite.datasets import build_sets, group_stats

    sys_, sec = params.composite, params.composite_data
    k, space = soft_count(sys_), space_of(sys_)
    top = read(TOP100_PATH)
    if int(top["soft_count"].iloc[0]) != k:
        raise DeepdramError(f"{TOP100_PATH} holds designs with {int(top['soft_count'].iloc[0])} soft cells, the "
                            f"composite section {k}: run composite_brute_force again")
    train, test = build_sets(k, sec.groups, sec.test, sec.seed, top["rank"].to_numpy(), sys_.m, sys_.ratio)
    # Validate before anything is written: a failure writes the reports and no dataset.
    results = {name: validate(df, space, "designs", VALIDATION_DIR, name=name)
               for name, df in (("groups", train), ("test", test))}
    keys = {n: space.keys(df[list(space.variables)].to_numpy(np.uint8)) for n, df in (("groups", train), ("test", test))}
    top_keys = space.keys(top[list(space.variables)].to_numpy(np.uint8))
    overlap = int(np.isin(keys["test"], keys["groups"]).sum())
    in_top = int(np.isin(keys["groups"], top_keys).sum())
    if overlap or in_top:
        raise DeepdramError(f"composite data: {overlap} test designs in the groups, {in_top} top-100 designs in the groups")
    write_table(train, GROUPS_PATH)
    write_table(test, TEST_PATH)
    stats = group_stats(train, sec.groups)
    write_json({"soft_count": k, "groups": stats, "test": len(test), "nested": True,
                "test_max": float(test["toughness"].max()), "test_mean": float(test["toughness"].mean())},
               DATA_DIR / "summary.json")
    for s in stats:
        print(f"  group {s['group']:>9,}: max {s['max']:.4f}, mean {s['mean']:.4f}")
    return {"rows": len(train) + len(test), "train_rows": len(train), "test_rows": len(test), "soft_count": k,
            "top100_in_groups": in_top, "test_in_groups": overlap,
            "expectations": sum(r["n_expectations"] for r in results.values()),
            "validation_seconds": round(sum(r["elapsed_s"] for r in results.values()), 2),
            **{f"group_{s['group']}_max": s["max"] for s in stats}, **{f"group_{s['group']}_mean": s["mean"] for s in stats}}


def main() -> int:
    return run("composite_data", job)
