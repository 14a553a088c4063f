"""Stage `composite_brute_force`: every composite design of the soft fraction, solved by FE on Dask
(resumable shards), with the top 100 designs, the histogram and the optimum."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("composite", "composite_brute_force", "dask")


def job(params) -> dict:
    from deepdram.data.shards import dask_client
    from deepdram.jobs.composite_common import BRUTE_FORCE_DIR, soft_count
    from deepdram.paths import SCRATCH_DIR
    from deepdram.spaces.composite import brute_force

    sys_, sec = params.composite, params.composite_brute_force
    k = soft_count(sys_)
    with dask_client(params.dask) as client:
        summary = brute_force.build(k, sys_.m, sys_.ratio, sec.shard_size, sec.bins, BRUTE_FORCE_DIR,
                                    SCRATCH_DIR / "composite_brute_force", client)
    print(f"composite brute force: {summary['designs']:,} designs with {k} of 32 cells soft; optimum toughness "
          f"{summary['optimum_toughness']:.5f} (rank {summary['optimum_rank']:,}; second "
          f"{summary['second_toughness']:.5f}), mean {summary['mean']:.4f}; {summary['designs_per_s']:,.0f} designs/s")
    print("  optimum design (top row first, # stiff, . soft, left half; mirrored about the crack line):")
    for row in summary["optimum_picture"].split("/"):
        print(f"    {row}")
    return {**{k_: v for k_, v in summary.items() if k_ != "optimum_picture"}, "rows": summary["designs"]}


def main() -> int:
    return run("composite_brute_force", job)
