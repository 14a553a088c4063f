"""Dataset logic: resampling rules, key-disjoint splits, tiling plans, params checks, Dask shards
(deepdram.data.datasets, deepdram.data.splits, deepdram.spaces.lattice.datasets, deepdram.params)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepdram import params as P
from deepdram.data.datasets import undersample
from deepdram.data.splits import assign_splits
from deepdram.errors import InputError
from deepdram.spaces.lattice import datasets, fem
from deepdram.spaces.lattice import geometry as lattice


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    """3,000 real FE cells (600 per Z_g)."""
    parts = []
    for z in (2.5, 3.0, 3.5, 4.0, 4.5):
        d = lattice.sample_designs(z, 600, seed=int(z * 10))
        parts.append(datasets.cells_frame(d, np.full(len(d), z), fem.cell_properties(d)))
    return pd.concat(parts, ignore_index=True)


def test_undersample_keeps_at_most_n_per_rounded_tuple(cells):
    """Paper rule: round E to 1 and nu to 2 decimals; at most 5 cells per 4-tuple, seeded."""
    out = undersample(cells, datasets.undersample_decimals(1, 2), 5, seed=0)
    rounded = pd.DataFrame({"a": out.E11.round(1), "b": out.E22.round(1), "c": out.nu12.round(2),
                            "d": out.nu21.round(2)})
    assert rounded.value_counts().max() <= 5
    # every rounded tuple of the input is still represented, with min(count, 5) rows
    full = pd.DataFrame({"a": cells.E11.round(1), "b": cells.E22.round(1), "c": cells.nu12.round(2),
                         "d": cells.nu21.round(2)}).value_counts()
    assert len(out) == int(np.minimum(full.to_numpy(), 5).sum())
    again = undersample(cells, datasets.undersample_decimals(1, 2), 5, seed=0)
    pd.testing.assert_frame_equal(out, again)
    other = undersample(cells, datasets.undersample_decimals(1, 2), 5, seed=1)
    assert len(other) == len(out) and not other.equals(out)


def test_splits_are_disjoint_by_key_and_near_fractions(cells):
    """60/30/10 by design key; no key in two splits; seeded."""
    keys = datasets.keys_of(cells)
    labels = assign_splits(keys, {"train": 0.6, "val": 0.3, "test": 0.1}, seed=3)
    frac = pd.Series(labels).value_counts(normalize=True)
    assert abs(frac["train"] - 0.6) < 0.01 and abs(frac["val"] - 0.3) < 0.01 and abs(frac["test"] - 0.1) < 0.01
    # groups with repeated keys stay together
    groups = np.repeat(np.arange(100), 5)
    lab = assign_splits(groups, {"train": 0.6, "val": 0.3, "test": 0.1}, seed=0)
    assert all(len(set(lab[groups == g])) == 1 for g in range(100))
    np.testing.assert_array_equal(lab, assign_splits(groups, {"train": 0.6, "val": 0.3, "test": 0.1}, 0))


def test_moving_the_train_val_cut_keeps_the_test_split():
    """params.yaml went from 60/30/10 to 80/10/10: the same seed gives the same test keys, and the
    new val keys are a subset of the old val (the rest of the old val joins train)."""
    for n in (1000, 279038, 123457):
        groups = np.random.default_rng(n).integers(0, 2**62, n)
        old = assign_splits(groups, {"train": 0.6, "val": 0.3, "test": 0.1}, seed=0)
        new = assign_splits(groups, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
        np.testing.assert_array_equal(old == "test", new == "test")
        assert set(np.flatnonzero(new == "val")) <= set(np.flatnonzero(old == "val"))
        assert set(np.flatnonzero(old == "train")) <= set(np.flatnonzero(new == "train"))
        assert abs((new == "train").mean() - 0.8) < 0.01


def test_oversample_adds_valid_fe_labelled_rare_cells(cells):
    """SMOGN-style children: same beam count as the parent, valid, distinct, true FE properties."""
    out = datasets.oversample(cells, rare_quantile=0.05, factor=2, k_neighbors=5, noise_swaps=2, seed=0)
    synth = out[out["parent"] > 0]
    assert len(synth) > 0.5 * 2 * datasets.rare_mask(cells, 0.05).sum()
    d = datasets.designs_of(synth)
    assert lattice.is_valid(d).all()
    np.testing.assert_array_equal(d.sum(1), synth["zg"].to_numpy() * 8)
    keys = lattice.to_keys(d)
    assert len(np.unique(keys)) == len(keys)
    assert not np.isin(keys, datasets.keys_of(cells)).any()
    np.testing.assert_allclose(synth[["E11", "E22", "nu12", "nu21"]].to_numpy(), fem.cell_properties(d))
    # the tails got heavier: more rows beyond the original 5 % / 95 % nu quantiles than before
    def tail_share(df):
        m = np.zeros(len(df), bool)
        for c in ("nu12", "nu21"):
            lo, hi = cells[c].quantile([0.05, 0.95])
            m |= ((df[c] < lo) | (df[c] > hi)).to_numpy()
        return m.mean()

    assert tail_share(out) > tail_share(cells) + 0.05


def test_resample_over_keeps_families_in_one_split(cells):
    """Oversampled children share their parent's split, so no near-copy leaks into test."""
    params = _params()
    params["resample"]["method"] = "over"
    params["resample"]["over"]["base_size"] = 2000
    cfg = P.parse(params).resample
    out = datasets.resample(cells, cfg)
    assert set(out["split"]) == {"train", "val", "test"}
    keys = datasets.keys_of(out)
    assert len(np.unique(keys)) == len(keys)


def test_tiling_plan_sizes_and_split_inheritance(cells):
    """Each chosen cell gets k distinct (d1, d2) sizes from the grid; deterministic."""
    c = cells.copy()
    c["split"] = "train"
    cfg = P.Tilings(cells=50, sizes_per_cell=4, sizes=[2, 4, 20], shard_size=10, seed=0)
    plan = datasets.tiling_plan(c, cfg)
    assert len(plan) == 200 and plan["cell"].nunique() == 50
    assert plan.groupby("cell").apply(lambda g: len(set(zip(g.d1, g.d2)))).eq(4).all()
    assert set(plan.d1) <= {2, 4, 20} and set(plan.d2) <= {2, 4, 20}
    pd.testing.assert_frame_equal(plan, datasets.tiling_plan(c, cfg))


def test_cell_shard_plan_covers_every_row_once():
    """Shards tile the Z_g-major row range exactly, whatever the shard size."""
    rows = [(g, i) for shard in datasets.cell_shard_plan(7, (2.5, 3.0, 4.5), 4) for g, _, a, b in shard
            for i in range(a, b)]
    assert rows == [(g, i) for g in range(3) for i in range(7)]


def _params() -> dict:
    import yaml

    from deepdram.paths import REPO_ROOT

    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("cells", "per_zg", -5, "cells.per_zg' must be an integer >= 1; got -5"),
        ("cells", "zg", [2.5, 3.7], "unknown Z_g 3.7"),
        ("cells", "shard_size", 0, "cells.shard_size"),
        ("tilings", "sizes", [2, 3], "tilings.sizes' has size 3"),
        ("tilings", "cells", "many", "tilings.cells"),
        ("resample", "method", "smote", "resample.method' must be one of"),
    ],
)
def test_bad_params_name_the_key(section, key, value, match):
    """Bad params fail before any work with a message naming the key."""
    params = _params()
    params[section][key] = value
    with pytest.raises(InputError, match=match.replace("[", "\\[").replace("(", "\\(")):
        P.parse(params)


def test_split_fractions_must_sum_to_one():
    params = _params()
    params["resample"]["split"] = {"train": 0.6, "val": 0.3, "test": 0.2}
    with pytest.raises(InputError, match="sum to 1"):
        P.parse(params)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_one_and_two_dask_workers_give_identical_bytes(tmp_path):
    """Real LocalClusters with 1 and 2 workers produce byte-identical cell and tiling shards."""
    from deepdram.data.shards import dask_client

    cfg = P.Cells(per_zg=1500, zg=[2.5, 3.5, 4.5], shard_size=1000, seed=5)
    tcfg = P.Tilings(cells=60, sizes_per_cell=3, sizes=[2, 4, 6], shard_size=40, seed=1)
    digests = []
    for n in (1, 2):
        with dask_client(P.Dask(n_workers=n)) as client:
            datasets.build_cells(cfg, tmp_path / f"cells{n}", tmp_path / f"scratch{n}", client)
            c = pd.read_parquet(tmp_path / f"cells{n}")
            c["split"] = assign_splits(datasets.keys_of(c), {"train": .6, "val": .3, "test": .1}, 0)
            datasets.build_tilings(c, tcfg, tmp_path / f"til{n}", tmp_path / f"tscratch{n}", client)
        digests.append((_digest(tmp_path / f"cells{n}"), _digest(tmp_path / f"til{n}")))
    assert digests[0] == digests[1]
    assert len(digests[0][0]) == 5 and len(digests[0][1]) == 5
    til = pd.read_parquet(tmp_path / "til1")
    assert len(til) == 180
    row = til.iloc[7]
    from deepdram.spaces.lattice.tiling import tiling_properties

    design = row[[f"b{k:02d}" for k in range(42)]].to_numpy(np.uint8)
    np.testing.assert_allclose(row[["E11", "E22", "nu12", "nu21"]].to_numpy(float),
                               tiling_properties(design, int(row.d1), int(row.d2)), rtol=1e-12)


def test_a_new_split_relabels_the_kept_tilings_and_a_resumed_run_uses_it(cells, tmp_path, capsys):
    """A rerun whose cells differ only in their split labels solves nothing: it publishes the kept
    FE shards with the new labels (FE columns byte-identical). A run killed with some shards solved
    and resumed under a new split labels every row by the new split, and writes the bytes an
    uninterrupted run with that split writes."""
    from deepdram.data.shards import dask_client

    c = cells.iloc[::30].reset_index(drop=True)  # 100 cells, 20 per Z_g
    tcfg = P.Tilings(cells=40, sizes_per_cell=1, sizes=[2, 4], shard_size=10, seed=3)
    a, b = c.copy(), c.copy()
    a["split"] = assign_splits(datasets.keys_of(c), {"train": .6, "val": .3, "test": .1}, 0)
    b["split"] = assign_splits(datasets.keys_of(c), {"train": .8, "val": .1, "test": .1}, 0)
    assert (a["split"] != b["split"]).any()
    plan = datasets.tiling_plan(c, tcfg)
    scratch = tmp_path / "scratch"
    fe = ["d1", "d2", *datasets.PROPERTY_COLUMNS]
    with dask_client(P.Dask(n_workers=1)) as client:
        datasets.build_tilings(a, tcfg, tmp_path / "a", scratch, client)
        solved = {p: p.stat().st_mtime_ns for p in scratch.glob("*/part-*.parquet")}
        assert len(solved) == 4
        capsys.readouterr()
        datasets.build_tilings(b, tcfg, tmp_path / "b", scratch, client)
        assert "resuming, 4 of 4 shards already done" in capsys.readouterr().out
        assert {p: p.stat().st_mtime_ns for p in scratch.glob("*/part-*.parquet")} == solved
        til_a, til_b = pd.read_parquet(tmp_path / "a"), pd.read_parquet(tmp_path / "b")
        pd.testing.assert_frame_equal(til_a.drop(columns="split"), til_b.drop(columns="split"))
        np.testing.assert_array_equal(til_a["split"], a["split"].to_numpy()[plan["cell"]])
        np.testing.assert_array_equal(til_b["split"], b["split"].to_numpy()[plan["cell"]])
        assert til_a[fe].equals(til_b[fe]) and (til_a["split"] != til_b["split"]).any()

        # a run under split a that stops after two shards (the rest unsolved), resumed under split b
        shutil.rmtree(scratch)
        datasets.build_tilings(a, tcfg, tmp_path / "a_again", scratch, client)
        for p in sorted(scratch.glob("*/part-*.parquet"))[2:]:
            p.unlink()
        datasets.build_tilings(b, tcfg, tmp_path / "b_resumed", scratch, client)
        # and split b from nothing
        shutil.rmtree(scratch)
        datasets.build_tilings(b, tcfg, tmp_path / "b_fresh", scratch, client)
    assert _digest(tmp_path / "a_again") == _digest(tmp_path / "a")
    assert _digest(tmp_path / "b_resumed") == _digest(tmp_path / "b_fresh") == _digest(tmp_path / "b")
    # scratch holds the solved shards of this plan and nothing else (no labelled copies)
    assert sorted(q.relative_to(scratch).parts[1] for q in scratch.rglob("*") if q.is_file()) == [
        f"part-{i:05d}.parquet" for i in range(4)]


def _worker_kernels() -> dict:
    """What a worker process loaded: its OpenBLAS kernels (NumPy's and SciPy's) and NumPy's AVX-512 loops."""
    import os

    import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS)
    from numpy._core._multiarray_umath import __cpu_features__ as cpu
    from threadpoolctl import threadpool_info

    return {"openblas": sorted({i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"}),
            # NumPy dispatches its loops by these targets; a disabled one reads False here
            "avx512_loops": [t for t in ("X86_V4", "AVX512_ICL", "AVX512_SPR") if cpu.get(t)],
            "coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "npy_disabled": os.environ.get("NPY_DISABLE_CPU_FEATURES")}


def test_local_cluster_workers_load_the_pinned_kernels(monkeypatch):
    """The project's LocalCluster workers run OpenBLAS's Haswell kernels and NumPy without its
    AVX-512 loops whatever the x86-64 CPU, so the FE datasets match across CPU kinds; the parent's
    environment is left as it was."""
    import os
    import platform

    from deepdram.data.shards import PINNED_KERNELS, dask_client, pinned_kernels_env

    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert pinned_kernels_env() == {}
        return
    for key in PINNED_KERNELS:
        monkeypatch.delenv(key, raising=False)
    with dask_client(P.Dask(n_workers=2)) as client:
        seen = client.run(_worker_kernels)
    assert not set(PINNED_KERNELS) & set(os.environ)
    assert len(seen) == 2
    for info in seen.values():
        assert info["coretype"] == "Haswell"
        assert info["openblas"] == ["Haswell"], info
        assert info["avx512_loops"] == [], info
        # on a CPU without AVX-512 the loops above are off anyway: the variable is what the pin sets
        assert info["npy_disabled"] == PINNED_KERNELS["NPY_DISABLE_CPU_FEATURES"], info


def test_an_explicit_kernel_choice_of_the_user_wins(monkeypatch):
    """A user's own OPENBLAS_CORETYPE reaches the workers unchanged."""
    import platform

    from deepdram.data.shards import dask_client

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Sandybridge")
    with dask_client(P.Dask(n_workers=1)) as client:
        (info,) = client.run(_worker_kernels).values()
    assert info["coretype"] == "Sandybridge"
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert info["openblas"] == ["Sandybridge"], info


def test_fresh_designs_are_valid_new_and_seeded():
    """Fresh designs have their Z_g, are valid, distinct, absent from the excluded keys, and repeat per seed."""
    from deepdram.spaces.lattice.geometry import to_keys

    first, zg = datasets.fresh_designs([2.5, 4.0], 200, seed=3, exclude=np.zeros(0, np.uint64))
    exclude = np.unique(to_keys(first[::2]))  # half of them become "known"
    d, zg = datasets.fresh_designs([2.5, 4.0], 200, seed=3, exclude=exclude)
    assert d.shape == (400, 42) and np.array_equal(np.unique(zg), [2.5, 4.0])
    np.testing.assert_array_equal(d.sum(axis=1), 8 * zg)
    assert lattice.is_valid(d).all()
    k = to_keys(d)
    assert len(np.unique(k)) == 400 and not np.isin(k, exclude).any()
    np.testing.assert_array_equal(d, datasets.fresh_designs([2.5, 4.0], 200, seed=3, exclude=exclude)[0])
