"""Brute force (the seed's ground truth): the toughness of every composite design of one soft count.

The C(32, k) designs with k soft cells are enumerated in rank order (`enumeration.designs_range`)
and cut into shards of consecutive ranks; each shard is solved by the batched FE oracle on a
Dask worker and written as one Parquet file (`rank` uint32, `toughness` float32: 8 bytes a
design, 84 MB for the seed's 10,518,300 designs at 25 % soft). Shards are seeded by nothing
(the enumeration is fixed), so any number of workers gives byte-identical files, and a killed
run resumes from the shards already written (`data.shards`, fingerprinted with the FE sources).

From the full table: the top designs (re-solved in float64, so the order does not depend on the
float32 storage; ties by rank), a histogram, and the summary (optimum toughness and design).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepdram.spaces.composite.enumeration import designs_range, n_designs
from deepdram.spaces.composite.mesh import N_VARS

HERE = Path(__file__).resolve().parent
# The code whose change changes a toughness value: a new fingerprint, so no old shard is reused.
FE_SOURCES = tuple(HERE / f for f in ("fem.py", "_kernel.py", "mesh.py", "reference.py", "enumeration.py"))
TOP_COLUMNS = ("rank", *[f"x{k:02d}" for k in range(N_VARS)], "soft_count", "toughness")


def shard_plan(total: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) rank ranges of `shard_size` designs (the last one shorter) covering [0, total)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1; got {shard_size}")
    return [(s, min(s + shard_size, total)) for s in range(0, total, shard_size)]


def solve_range(k: int, start: int, stop: int, m: int = 1, ratio: float = 10.0, threads: int | None = None) -> np.ndarray:
    """(stop - start,) float64 toughness of the designs with ranks [start, stop) of the k-soft enumeration."""
    from deepdram.spaces.composite.fem import toughness

    return toughness(designs_range(k, start, stop), m=m, ratio=ratio, threads=threads).toughness


def shard_task(path: Path, k: int, start: int, stop: int, m: int, ratio: float) -> int:
    """Dask task: solve ranks [start, stop) and write (rank, toughness) to `path` atomically; rows written."""
    import pandas as pd

    from deepdram.data.shards import limit_threads
    from deepdram.data.tables import write_table

    limit_threads()
    t = solve_range(k, start, stop, m, ratio)
    write_table(pd.DataFrame({"rank": np.arange(start, stop, dtype=np.uint32), "toughness": t.astype(np.float32)}),
                path)
    return stop - start


def read_values(folder: Path, total: int | None = None) -> np.ndarray:
    """(total,) float32 toughness in rank order from the published shards (checks every rank once)."""
    import pyarrow.parquet as pq

    files = sorted(Path(folder).glob("part-*.parquet"))
    parts = [pq.read_table(f, columns=["rank", "toughness"]) for f in files]
    ranks = np.concatenate([p.column("rank").to_numpy() for p in parts]) if parts else np.zeros(0, np.uint32)
    vals = np.concatenate([p.column("toughness").to_numpy() for p in parts]) if parts else np.zeros(0, np.float32)
    n = len(ranks) if total is None else total
    if len(ranks) != n or not np.array_equal(np.sort(ranks), np.arange(n, dtype=ranks.dtype)):
        raise ValueError(f"{folder}: the shards do not hold every rank 0..{n - 1} exactly once")
    out = np.empty(n, np.float32)
    out[ranks.astype(np.int64)] = vals
    return out


def top_designs(values: np.ndarray, k: int, n_top: int, m: int = 1, ratio: float = 10.0):
    """The n_top toughest designs as a table (rank, x00..x31, soft_count, toughness in float64),
    toughest first, ties by rank. Candidates are picked from the float32 values with a margin and
    solved again in float64, so float32 rounding cannot reorder them."""
    import pandas as pd

    from deepdram.spaces.composite.enumeration import designs_from_soft, unrank_soft
    from deepdram.spaces.composite.fem import toughness

    n_top = int(min(n_top, len(values)))
    n_cand = int(min(len(values), max(2 * n_top, n_top + 100)))
    cand = np.argpartition(-values, n_cand - 1)[:n_cand] if n_cand < len(values) else np.arange(len(values))
    designs = designs_from_soft(unrank_soft(cand, k))
    exact = toughness(designs, m=m, ratio=ratio).toughness
    order = np.lexsort((cand, -exact))[:n_top]
    df = pd.DataFrame(designs[order], columns=list(TOP_COLUMNS[1:1 + N_VARS]))
    df.insert(0, "rank", cand[order].astype(np.int64))
    df["soft_count"] = np.int64(k)
    df["toughness"] = exact[order]
    return df.reset_index(drop=True)


def histogram(values: np.ndarray, bins: int) -> "pd.DataFrame":  # noqa: F821
    """Counts of toughness in `bins` equal bins from 0 to just above the maximum (columns bin_lo,
    bin_hi, bin_center, count)."""
    import pandas as pd

    hi = float(np.max(values)) * (1 + 1e-6) if len(values) else 1.0
    counts, edges = np.histogram(values.astype(np.float64), bins=bins, range=(0.0, hi))
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "bin_center": 0.5 * (edges[:-1] + edges[1:]),
                         "count": counts.astype(np.int64)})


def design_text(design: np.ndarray) -> str:
    """A half design as 8 rows of 4 cells, top row first ('#' stiff, '.' soft), rows joined by '/'."""
    rows = np.asarray(design, np.uint8).reshape(8, 4)[::-1]
    return "/".join("".join("#" if c else "." for c in r) for r in rows)


def plot_histogram(path: Path, hist, optimum: float, title: str) -> Path:
    """PNG of the histogram (log counts) with the optimum marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepdram.data.atomic import save_png

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(hist["bin_center"], hist["count"], width=hist["bin_hi"] - hist["bin_lo"], color="#4878a8")
    ax.set_yscale("log")
    ax.axvline(optimum, color="#c03030", ls="--", label=f"optimum {optimum:.4g}")
    ax.set_xlabel("toughness (all-stiff specimen = 1)")
    ax.set_ylabel("designs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_png(path, fig)
    plt.close(fig)
    return Path(path)


N_TOP = 100  # the designs the training groups never contain


def build(k: int, m: int, ratio: float, shard_size: int, bins: int, out_dir: Path, scratch_root: Path,
          client, n_top: int = N_TOP) -> dict:
    """Enumerate all C(32, k) designs on Dask, resumably; write out_dir/{toughness.parquet/,
    top100.parquet, histogram.csv, histogram.png, summary.json}; return the summary."""
    import time

    from deepdram.data.atomic import write_json
    from deepdram.data.shards import clear_stale, fingerprint, publish, run_shards, shard_path
    from deepdram.data.tables import write_table

    t0 = time.perf_counter()
    total = n_designs(k)
    fp = fingerprint("composite_brute_force", {"k": k, "m": m, "ratio": ratio, "shard_size": shard_size},
                     files=FE_SOURCES)
    clear_stale(scratch_root, keep=fp)
    scratch = scratch_root / fp
    scratch.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(total, shard_size)
    paths = [shard_path(scratch, i) for i in range(len(plan))]
    run_shards(client, f"brute force C(32, {k})", paths, [(k, a, b, m, float(ratio)) for a, b in plan], shard_task,
               point="composite_brute_force:solve")
    solved = time.perf_counter() - t0
    out_dir = Path(out_dir)
    table_dir = out_dir / "toughness.parquet"
    publish(paths, table_dir)
    values = read_values(table_dir, total)
    top = top_designs(values, k, n_top, m, ratio)
    write_table(top, out_dir / "top100.parquet")
    hist = histogram(values, bins)
    write_table(hist, out_dir / "histogram.csv")
    best = top.iloc[0]
    design = best[list(TOP_COLUMNS[1:1 + N_VARS])].to_numpy(np.uint8)
    plot_histogram(out_dir / "histogram.png", hist, float(best["toughness"]),
                   f"all {total:,} designs with {k} of 32 cells soft ({k / N_VARS:.1%})")
    v = values.astype(np.float64)
    summary = {"soft_count": k, "soft_fraction": k / N_VARS, "designs": total, "shards": len(plan), "m": m,
               "ratio": ratio, "optimum_toughness": float(best["toughness"]), "optimum_rank": int(best["rank"]),
               "optimum_design": "".join(str(int(c)) for c in design), "optimum_picture": design_text(design),
               "second_toughness": float(top["toughness"].iloc[1]) if len(top) > 1 else None,
               "top_min_toughness": float(top["toughness"].iloc[-1]), "top": len(top),
               "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
               "min": float(v.min())}
    write_json(summary, out_dir / "summary.json")  # no timings: the same bytes on every run
    return {**summary, "solve_seconds": round(solved, 2), "designs_per_s": round(total / max(solved, 1e-9), 1)}
