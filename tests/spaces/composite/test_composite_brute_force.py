"""The brute force: every design of a soft count, sharded on Dask, resumable, byte-identical for any
number of workers; its top designs and optimum agree with the plain reference solver."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepdram.spaces.composite import brute_force as bf
from deepdram.spaces.composite.enumeration import designs_range, n_designs
from deepdram.spaces.composite.fem import toughness
from deepdram.spaces.composite.reference import toughness_reference

K = 2  # C(32, 2) = 496 designs: the whole enumeration in a second


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster (two single-threaded workers): cheap to start."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            Client(c) as cl:
        yield cl


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".png"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, client):
    root = tmp_path_factory.mktemp("bf")
    summary = bf.build(K, 1, 10.0, 100, 20, root / "out", root / "scratch", client)
    return root, summary


def test_shard_plan_covers_every_rank_once():
    plan = bf.shard_plan(1234, 100)
    assert plan[0] == (0, 100) and plan[-1] == (1200, 1234) and len(plan) == 13
    assert sum(b - a for a, b in plan) == 1234
    with pytest.raises(ValueError):
        bf.shard_plan(10, 0)


def test_every_design_is_solved_in_rank_order(built):
    root, summary = built
    values = bf.read_values(root / "out" / "toughness.parquet", n_designs(K))
    exact = toughness(designs_range(K, 0, n_designs(K))).toughness
    np.testing.assert_allclose(values, exact, rtol=1e-6)
    assert summary["designs"] == 496 and summary["shards"] == 5
    assert summary["mean"] == pytest.approx(exact.mean(), rel=1e-6)
    part = pd.read_parquet(sorted((root / "out" / "toughness.parquet").glob("*.parquet"))[0])
    assert list(part.columns) == ["rank", "toughness"] and part["toughness"].dtype == np.float32


def test_top_designs_and_optimum_match_the_reference_solver(built):
    root, summary = built
    top = pd.read_parquet(root / "out" / "top100.parquet")
    exact = toughness(designs_range(K, 0, n_designs(K))).toughness
    order = np.lexsort((np.arange(len(exact)), -exact))[:100]
    assert top["rank"].tolist() == order.tolist()
    assert list(top.columns) == list(bf.TOP_COLUMNS) and (top["soft_count"] == K).all()
    best = top.iloc[0]
    design = best[[f"x{k:02d}" for k in range(32)]].to_numpy(np.uint8)
    assert (design == 0).sum() == K
    ref = toughness_reference(design).toughness
    assert summary["optimum_toughness"] == pytest.approx(ref, rel=1e-9)
    assert summary["optimum_design"] == "".join(map(str, design))
    assert np.all(np.diff(top["toughness"].to_numpy()) <= 0)


def test_histogram_counts_every_design(built):
    root, summary = built
    hist = pd.read_csv(root / "out" / "histogram.csv")
    assert len(hist) == 20 and hist["count"].sum() == 496
    assert hist["bin_hi"].iloc[-1] >= summary["optimum_toughness"]
    assert (root / "out" / "histogram.png").stat().st_size > 0


def test_a_killed_run_resumes_and_one_worker_gives_the_same_bytes(built, tmp_path, capsys):
    """Shards already in the scratch folder are not solved again (a stale value planted in one of
    them survives); with correct shards the result is byte-identical to a clean two-worker run."""
    root, _ = built
    from dask.distributed import Client, LocalCluster

    from deepdram.data.shards import fingerprint, shard_path

    fp = fingerprint("composite_brute_force", {"k": K, "m": 1, "ratio": 10.0, "shard_size": 100}, files=bf.FE_SOURCES)
    plan = bf.shard_plan(496, 100)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            Client(c) as one:
        for planted in (True, False):
            scratch = tmp_path / f"scratch{planted}" / fp
            scratch.mkdir(parents=True)
            for i, (a, b) in enumerate(plan[:3]):  # three shards done before the "kill"
                bf.shard_task(shard_path(scratch, i), K, a, b, 1, 10.0)
            if planted:
                df = pd.read_parquet(shard_path(scratch, 1))
                df.loc[0, "toughness"] = np.float32(-1.0)
                df.to_parquet(shard_path(scratch, 1), index=False)
            bf.build(K, 1, 10.0, 100, 20, tmp_path / f"out{planted}", scratch.parent, one)
            assert "resuming, 3 of 5 shards already done" in capsys.readouterr().out
            assert not scratch.exists()  # published, scratch dropped
    values = bf.read_values(tmp_path / "outTrue" / "toughness.parquet", 496)
    assert values[100] == -1.0  # the planted shard was used as it was, not solved again
    assert _digest(tmp_path / "outFalse") == _digest(root / "out")


def test_read_values_refuses_a_missing_shard(built, tmp_path):
    root, _ = built
    import shutil

    shutil.copytree(root / "out" / "toughness.parquet", tmp_path / "t")
    sorted((tmp_path / "t").glob("*.parquet"))[1].unlink()
    with pytest.raises(ValueError, match="every rank"):
        bf.read_values(tmp_path / "t", 496)


def test_design_text_draws_the_half_design_top_row_first():
    d = np.ones(32, np.uint8)
    d[[0, 31]] = 0
    assert bf.design_text(d) == "###./" + "####/" * 6 + ".###"
