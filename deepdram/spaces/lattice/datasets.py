"""The lattice datasets (DVC data stages): sampled unit cells, resampling, and tilings.

Cells are sampled per Z_g and simulated as seeded shards on Dask; a shard's content depends only
on its index and the stage parameters, so any cluster gives byte-identical Parquet files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepdram.data.shards import shard_path
from deepdram.spaces.lattice.constants import BIT_COLUMNS, N_BEAMS, PROPERTY_COLUMNS

# Sources whose code decides the numbers in the datasets: resumable work is keyed by them too.
FE_SOURCES = tuple(Path(__file__).resolve().parent / f for f in (
    "constants.py", "geometry.py", "fem.py", "_cell_kernel.py", "tiling.py", "_blockops.py"))
UNDERSAMPLE_PROPERTIES = PROPERTY_COLUMNS


def cells_frame(designs: np.ndarray, zg: np.ndarray, props: np.ndarray) -> pd.DataFrame:
    """The cells table: b00..b41 (uint8), zg, E11, E22, nu12, nu21 (float64)."""
    df = pd.DataFrame(np.asarray(designs, dtype=np.uint8), columns=list(BIT_COLUMNS))
    df["zg"] = np.asarray(zg, dtype=np.float64)
    for k, c in enumerate(PROPERTY_COLUMNS):
        df[c] = np.asarray(props[:, k], dtype=np.float64)
    return df


def designs_of(df: pd.DataFrame) -> np.ndarray:
    """(N, 42) uint8 designs of a table."""
    return df[list(BIT_COLUMNS)].to_numpy(dtype=np.uint8)


def keys_of(df: pd.DataFrame) -> np.ndarray:
    """Packed uint64 design keys of a table."""
    from deepdram.spaces.lattice.geometry import to_keys

    return to_keys(designs_of(df))


# --- cells stage ---------------------------------------------------------------------------------


def zg_seed(seed: int, zg: float) -> list[int]:
    """Seed of one Z_g group: independent streams per group, fixed by the stage seed."""
    return [seed, int(round(zg * 10))]


def sample_zg_task(path: Path, zg: float, n: int, seed: int) -> int:
    """Dask task: sample n unique valid designs of one Z_g into an .npy file (atomically)."""
    from deepdram.data.atomic import write_with
    from deepdram.spaces.lattice.geometry import sample_designs

    designs = sample_designs(zg, n, zg_seed(seed, zg))
    write_with(path, lambda f: np.save(f, designs))
    return n


def cell_shard_plan(per_zg: int, zgs: tuple[float, ...], shard_size: int) -> list[list[tuple[int, float, int, int]]]:
    """Shards as lists of (group index, zg, start, stop) row slices, groups in `zgs` order."""
    total = per_zg * len(zgs)
    shards = []
    for a in range(0, total, shard_size):
        b = min(total, a + shard_size)
        parts = []
        for g, zg in enumerate(zgs):
            lo, hi = max(a, g * per_zg), min(b, (g + 1) * per_zg)
            if lo < hi:
                parts.append((g, zg, lo - g * per_zg, hi - g * per_zg))
        shards.append(parts)
    return shards


def simulate_cells_task(path: Path, design_files: list[Path], parts: list[tuple]) -> int:
    """Dask task: FE properties of one shard of sampled designs, written as Parquet."""
    from deepdram.data.shards import limit_threads
    from deepdram.data.tables import write_table
    from deepdram.spaces.lattice.fem import solve_cells

    limit_threads()
    designs = np.concatenate([np.load(design_files[g], mmap_mode="r")[a:b] for g, _, a, b in parts])
    zg = np.concatenate([np.full(b - a, zg) for _, zg, a, b in parts])
    props = solve_cells(designs).properties
    write_table(cells_frame(designs, zg, props), path)
    return len(designs)


def build_cells(cfg, out_dir: Path, scratch_root: Path, client) -> dict:
    """Sample and simulate all cells on Dask, resumably; publish out_dir as Parquet shards.

    `cfg`: the checked `cells` params section (per_zg, zg, shard_size, seed)."""
    from deepdram.data.shards import clear_stale, fingerprint, publish, run_shards

    zgs = tuple(cfg.zg)
    fp = fingerprint("cells", cfg.model_dump(), files=FE_SOURCES)
    clear_stale(scratch_root, keep=fp)
    scratch = scratch_root / fp
    scratch.mkdir(parents=True, exist_ok=True)
    design_files = [scratch / f"designs-zg{zg:.1f}.npy" for zg in zgs]
    run_shards(client, "cells: sample", design_files, [(zg, cfg.per_zg, cfg.seed) for zg in zgs],
               sample_zg_task, point="cells:sample")
    plan = cell_shard_plan(cfg.per_zg, zgs, cfg.shard_size)
    paths = [shard_path(scratch, i) for i in range(len(plan))]
    run_shards(client, "cells: simulate", paths, [(design_files, parts) for parts in plan],
               simulate_cells_task, point="cells:simulate")
    publish(paths, out_dir)
    return {"rows": cfg.per_zg * len(zgs), "per_zg": cfg.per_zg, "shards": len(plan)}


# --- resample stage ------------------------------------------------------------------------------


def undersample_decimals(e_decimals: int, nu_decimals: int) -> dict[str, int]:
    """The paper's rounding of the property 4-tuple: moduli to e_decimals, Poisson's ratios to nu_decimals."""
    return {c: e_decimals if c.startswith("E") else nu_decimals for c in PROPERTY_COLUMNS}


def rare_mask(df: pd.DataFrame, quantile: float) -> np.ndarray:
    """Rows whose nu12 or nu21 lies in either tail beyond `quantile` (the rare, useful ones)."""
    mask = np.zeros(len(df), dtype=bool)
    for c in ("nu12", "nu21"):
        lo, hi = df[c].quantile([quantile, 1 - quantile])
        mask |= (df[c] < lo).to_numpy() | (df[c] > hi).to_numpy()
    return mask


def _crossover(rng, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Child of two equal-size designs: beams both have, plus random ones of either to keep the count."""
    child = a & b
    need = int(a.sum() - child.sum())
    either = np.flatnonzero(a ^ b)
    child[rng.choice(either, size=need, replace=False)] = 1
    return child


def _swap_noise(rng, a: np.ndarray, swaps: int) -> np.ndarray:
    """Design with `swaps` beams moved to random empty slots (same beam count)."""
    child = a.copy()
    on, off = np.flatnonzero(a), np.flatnonzero(a == 0)
    k = min(swaps, len(on), len(off))
    child[rng.choice(on, k, replace=False)] = 0
    child[rng.choice(off, k, replace=False)] = 1
    return child


def oversample(df: pd.DataFrame, rare_quantile: float, factor: int, k_neighbors: int, noise_swaps: int,
               seed: int) -> pd.DataFrame:
    """SMOGN-style oversampling of the rare tails, with synthetic designs labelled by FE.

    Each rare design gets `factor` children: with a near rare neighbour of the same Z_g (distance in
    standardised property space at most the median), a SMOTE-like crossover of the two designs;
    with a far one, the Gaussian-noise variant of SMOGN, which for binary designs moves a few
    beams. Children keep the parent's beam count, are checked for validity and duplicates, and
    get their properties from the FE solver instead of interpolation. Column `parent` holds the
    parent's design key (0 for original rows) so splits can keep families together.
    """
    from sklearn.neighbors import NearestNeighbors

    from deepdram.spaces.lattice.fem import cell_properties
    from deepdram.spaces.lattice.geometry import is_valid, to_keys

    rng = np.random.default_rng(seed)
    out = df.copy()
    out["parent"] = np.uint64(0)
    rare = np.flatnonzero(rare_mask(df, rare_quantile))
    designs = designs_of(df)
    children, parents, zgs = [], [], []
    for zg in np.unique(df["zg"].to_numpy()[rare]):
        idx = rare[df["zg"].to_numpy()[rare] == zg]
        if len(idx) < 2:
            continue
        y = df.iloc[idx][list(PROPERTY_COLUMNS)].to_numpy()
        y = (y - y.mean(0)) / (y.std(0) + 1e-12)
        k = min(k_neighbors + 1, len(idx))
        dist, nbr = NearestNeighbors(n_neighbors=k).fit(y).kneighbors(y)
        near = np.median(dist[:, 1:])
        for row in range(len(idx)):
            for _ in range(factor):
                j = rng.integers(1, k)
                a = designs[idx[row]]
                if dist[row, j] <= near:
                    child = _crossover(rng, a, designs[idx[nbr[row, j]]])
                else:
                    child = _swap_noise(rng, a, noise_swaps)
                children.append(child)
                parents.append(idx[row])
                zgs.append(zg)
    if not children:
        return out
    kids = np.array(children, dtype=np.uint8)
    kid_keys = to_keys(kids)
    _, first = np.unique(kid_keys, return_index=True)
    ok = np.zeros(len(kids), bool)
    ok[first] = True
    ok &= is_valid(kids) & ~np.isin(kid_keys, keys_of(df))
    kids, parents, zgs = kids[ok], np.array(parents)[ok], np.array(zgs)[ok]
    synth = cells_frame(kids, zgs, cell_properties(kids))
    synth["parent"] = to_keys(designs[parents])
    return pd.concat([out, synth], ignore_index=True)


def resample(cells: pd.DataFrame, cfg) -> pd.DataFrame:
    """Resampled cells with a `split` column (train/val/test), disjoint by design family.

    `cfg`: the checked `resample` params section."""
    from deepdram.data.datasets import undersample
    from deepdram.data.splits import assign_splits

    rng_seed = cfg.seed
    if cfg.method == "under":
        u = cfg.under
        out = undersample(cells, undersample_decimals(u.e_decimals, u.nu_decimals), u.max_per_group, rng_seed)
        groups = keys_of(out)
    else:
        size = cfg.over.base_size if cfg.method == "over" else cfg.none.size
        pick = np.sort(np.random.default_rng(rng_seed).permutation(len(cells))[: min(size, len(cells))])
        out = cells.iloc[pick].reset_index(drop=True)
        if cfg.method == "over":
            o = cfg.over.model_dump(exclude={"base_size"})
            out = oversample(out, **o, seed=rng_seed + 1)
            keys = keys_of(out)
            groups = np.where(out["parent"].to_numpy() > 0, out["parent"].to_numpy(), keys)
            out = out.drop(columns="parent")
        else:
            groups = keys_of(out)
    out["split"] = assign_splits(groups, cfg.split.model_dump(), rng_seed + 2)
    return out


def zg_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per Z_g group, as metrics."""
    return {f"rows_zg{z:.1f}": int(n) for z, n in df["zg"].value_counts().sort_index().items()}


# --- tilings stage -------------------------------------------------------------------------------


def tiling_plan(cells: pd.DataFrame, cfg) -> pd.DataFrame:
    """Rows (cell, d1, d2): `cfg.cells` random cells, each at `sizes_per_cell` distinct random sizes
    (`cfg`: the checked `tilings` params section).

    Sorted by size so that shards batch equal sizes; each row keeps its cell's split.
    """
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.cells, len(cells))
    cell_idx = np.sort(rng.permutation(len(cells))[:n])
    grid = np.array([(a, b) for a in cfg.sizes for b in cfg.sizes])
    choice = np.argsort(rng.random((n, len(grid))), axis=1)[:, : cfg.sizes_per_cell]
    d = grid[choice.ravel()]
    plan = pd.DataFrame({"cell": np.repeat(cell_idx, cfg.sizes_per_cell), "d1": d[:, 0], "d2": d[:, 1]})
    return plan.sort_values(["d1", "d2", "cell"], kind="stable").reset_index(drop=True)


def simulate_tilings_task(path: Path, designs: np.ndarray, zg: np.ndarray, d1: np.ndarray,
                          d2: np.ndarray) -> int:
    """Dask task: FE properties of one shard of tilings, written as Parquet (no split column)."""
    from deepdram.data.shards import limit_threads
    from deepdram.data.tables import write_table
    from deepdram.spaces.lattice.tiling import solve_tilings

    limit_threads()
    props = solve_tilings(designs, d1, d2, threads=1).properties
    df = cells_frame(designs, zg, props)
    df.insert(N_BEAMS + 1, "d1", d1.astype(np.int64))
    df.insert(N_BEAMS + 2, "d2", d2.astype(np.int64))
    write_table(df, path)
    return len(df)


def label_tilings_shard(fe_path: Path, path: Path, split: np.ndarray) -> None:
    """Write an FE shard with its rows' split column appended (the published shard)."""
    from deepdram.data.tables import write_table

    df = pd.read_parquet(fe_path)
    if len(df) != len(split):
        raise ValueError(f"{fe_path}: {len(df)} rows where the plan has {len(split)}; remove the "
                         "scratch folder to solve the shard again")
    df["split"] = np.asarray(split).astype(str)
    write_table(df, path)


def tilings_fingerprint(designs: np.ndarray, zg: np.ndarray, d1: np.ndarray, d2: np.ndarray, cfg) -> str:
    """Names the FE work of a plan: the designs, Z_g and sizes it solves, the params and FE code.

    Split labels are left out on purpose: they are attached when the shards are published, so a
    new train/val/test cut reuses every solved tiling."""
    import hashlib

    from deepdram.data.shards import fingerprint
    from deepdram.spaces.lattice.geometry import to_keys

    h = hashlib.sha256()
    for a in (to_keys(designs), zg.astype(np.float64), d1.astype(np.int64), d2.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return fingerprint("tilings", cfg.model_dump(), h.hexdigest(), files=FE_SOURCES)


def build_tilings(cells: pd.DataFrame, cfg, out_dir: Path, scratch_root: Path, client) -> dict:
    """Simulate the planned tilings on Dask, resumably; publish out_dir as Parquet shards.

    The solved shards stay in scratch (keyed by `tilings_fingerprint`) after publishing, so a rerun
    that changes only the cells' split labels relabels them instead of solving them again."""
    from deepdram.data.shards import clear_stale, publish, run_shards

    plan = tiling_plan(cells, cfg)
    c = plan["cell"].to_numpy()
    designs, zg, split = designs_of(cells)[c], cells["zg"].to_numpy()[c], cells["split"].to_numpy()[c]
    d1, d2 = plan["d1"].to_numpy(), plan["d2"].to_numpy()
    fp = tilings_fingerprint(designs, zg, d1, d2, cfg)
    clear_stale(scratch_root, keep=fp)
    chunks = [slice(a, a + cfg.shard_size) for a in range(0, len(plan), cfg.shard_size)]
    tasks = [(designs[k], zg[k], d1[k], d2[k]) for k in chunks]
    paths = [shard_path(scratch_root / fp, i) for i in range(len(tasks))]
    (scratch_root / fp).mkdir(parents=True, exist_ok=True)
    run_shards(client, "tilings: simulate", paths, tasks, simulate_tilings_task, unit="tiling",
               point="tilings:simulate")
    split_of = {path: split[k] for path, k in zip(paths, chunks)}
    publish(paths, out_dir, write=lambda src, dst: label_tilings_shard(src, dst, split_of[src]), keep_scratch=True)
    return {"rows": len(plan), "cells": int(plan["cell"].nunique()), "shards": len(tasks)}


# --- fresh evaluation sets (the evaluate stage) ---------------------------------------------------


def dataset_keys(path: Path) -> np.ndarray:
    """Sorted unique design keys of a (sharded) Parquet table, read shard by shard (bits only)."""
    from deepdram.spaces.lattice.geometry import to_keys

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    keys = [to_keys(pd.read_parquet(f, columns=list(BIT_COLUMNS)).to_numpy(np.uint8)) for f in files]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)


def fresh_designs(zgs, n_per_zg: int, seed: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(designs, zg): n uniform valid designs per Z_g that no key in `exclude` (sorted) matches."""
    from deepdram.data.keys import sorted_index
    from deepdram.spaces.lattice.geometry import sample_designs, to_keys

    designs, zg = [], []
    for g, z in enumerate(zgs):
        got = np.zeros((0, N_BEAMS), np.uint8)
        rounds = 0
        while len(got) < n_per_zg:
            d = sample_designs(z, 2 * n_per_zg, [seed, 7919, int(round(z * 10)), rounds])
            keep = sorted_index(exclude, to_keys(d)) < 0
            got = np.concatenate([got, d[keep]])
            got = got[np.sort(np.unique(to_keys(got), return_index=True)[1])]
            rounds += 1
        designs.append(got[:n_per_zg])
        zg.append(np.full(n_per_zg, z))
    return np.concatenate(designs), np.concatenate(zg)


def fresh_cells(zgs, n_per_zg: int, seed: int, exclude: np.ndarray) -> pd.DataFrame:
    """A fresh FE-labelled cells table (the cells stage's columns) of designs absent from `exclude`."""
    from deepdram.spaces.lattice.fem import cell_properties

    d, zg = fresh_designs(zgs, n_per_zg, seed, exclude)
    return cells_frame(d, zg, cell_properties(d))


def fresh_tilings(zgs, n: int, sizes, seed: int, exclude: np.ndarray) -> pd.DataFrame:
    """n fresh FE-labelled tilings (equal numbers per Z_g) at sizes drawn uniformly from sizes x sizes."""
    from deepdram.spaces.lattice.tiling import solve_tilings

    per = int(np.ceil(n / len(zgs)))
    d, zg = fresh_designs(zgs, per, seed + 1, exclude)
    pick = np.sort(np.random.default_rng([seed, 2]).permutation(len(d))[:n])
    d, zg = d[pick], zg[pick]
    grid = np.array([(a, b) for a in sizes for b in sizes])
    ab = grid[np.random.default_rng([seed, 3]).integers(len(grid), size=len(d))]
    df = cells_frame(d, zg, solve_tilings(d, ab[:, 0], ab[:, 1], validate=False).properties)
    df.insert(N_BEAMS + 1, "d1", ab[:, 0].astype(np.int64))
    df.insert(N_BEAMS + 2, "d2", ab[:, 1].astype(np.int64))
    return df
