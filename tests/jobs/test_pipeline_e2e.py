"""End to end: the real `dvc repro` on the tiny profile in the session's copy of the repo
(`tiny_repo`, tests/jobs/conftest.py), with a SIGKILL mid-stage.

Every test stands alone: `pipeline` brings the copy's whole pipeline up to date (a no-op when an
earlier test already did), so any test can be run by itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml


# the tiny pipeline takes 8-10 minutes on a quiet 2-core machine, over 15 beside a `dvc repro`
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1", **extra)
    for key in ("DEEPDRAM_ROOT", "DEEPDRAM_DASK_SCHEDULER", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                "DEEPDRAM_TEST_PAUSE_AT", "DEEPDRAM_TEST_PAUSE_FILE"):
        if key not in extra:
            env.pop(key, None)
    return env


def _run(args, cwd, check=True, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _digest(folder: Path) -> dict[str, str]:
    files = sorted(folder.rglob("*")) if folder.is_dir() else [folder]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def repo(tiny_repo) -> Path:
    """The session's tiny copy of the repo (tests/jobs/conftest.py)."""
    return tiny_repo


@pytest.fixture(scope="module")
def pipeline(repo) -> Path:
    """The copy with its whole pipeline up to date."""
    _run([sys.executable, "-m", "dvc", "repro"], repo, timeout=1800)
    return repo


def test_bad_params_fail_before_work(repo):
    """A negative count, or a misspelt key in another section, stops the stage at once with the key
    named, and writes nothing."""
    params = (repo / "params.yaml").read_text()
    before = _digest(repo / "outputs") if (repo / "outputs").exists() else {}
    for change, needle in ((lambda d: d["cells"].update(per_zg=-5), "cells.per_zg' must be an integer >= 1; got -5"),
                           (lambda d: d["design"].update(n_candidatez=3), "unknown key 'design.n_candidatez'")):
        bad = yaml.safe_load(params)
        change(bad)
        (repo / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
        try:
            p = _run([sys.executable, "pipelines/cells.py"], repo, check=False)
        finally:
            (repo / "params.yaml").write_text(params)
        assert p.returncode == 2, p.stderr
        assert needle in p.stderr
        assert "Traceback" not in p.stderr
    assert (_digest(repo / "outputs") if (repo / "outputs").exists() else {}) == before


def test_killed_stage_resumes_and_pipeline_completes(repo):
    """SIGKILL mid-`cells`, then `dvc repro` finishes without redoing shards; bytes equal a clean run."""
    from deepdram.data.atomic import kill_at_pause_point

    scratch = repo / "outputs/.scratch/cells"
    # forced, so the stage starts from scratch even when an earlier test already ran it; it blocks
    # after the 10th shard of its simulation (deepdram.data.atomic.pause_point) and is killed there,
    # not after a sleep
    marker = repo.parent / "paused-cells"
    output, status = kill_at_pause_point([sys.executable, "-m", "dvc", "repro", "-f", "-s", "cells"],
                                         "cells:simulate:shard-10", marker, cwd=repo, env=_env())
    assert marker.exists(), f"never paused after the 10th shard (exit {status}):\n{output[-3000:]}"
    parts = list(scratch.glob("*/part-*.parquet"))
    # the 10 this run finished, and any its worker wrote before the kill reached it
    assert 10 <= len(parts) < 50, f"{len(parts)} shards\n{output[-3000:]}"
    done_before = {p.name: p.stat().st_mtime_ns for p in scratch.glob("*/part-*.parquet")}

    # --no-run-cache: the job runs even where DVC's run cache holds outputs of these deps (an earlier
    # test ran the stage): the resumption is under test
    out = _run([sys.executable, "-m", "dvc", "repro", "--no-run-cache"], repo, timeout=1800)
    log = out.stdout + out.stderr
    assert f"resuming, {len(done_before)} of 50 shards already done" in log
    cells_digest = _digest(repo / "outputs/datasets/cells.parquet")
    assert len(cells_digest) == 50

    # an uninterrupted run of the same stage writes the same bytes
    _run([sys.executable, "-m", "dvc", "repro", "-f", "-s", "cells"], repo)
    assert _digest(repo / "outputs/datasets/cells.parquet") == cells_digest

    # a second repro has nothing to do
    again = _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout.lower()


def test_outputs_are_valid_and_consistent(pipeline):
    """After the pipeline: row counts, validation results, key-disjoint splits, reports, metrics."""
    repo = pipeline
    cells = pd.read_parquet(repo / "outputs/datasets/cells.parquet")
    assert len(cells) == 20000 and cells.groupby("zg").size().eq(4000).all()
    for name in ("cells", "tilings"):
        result = json.loads((repo / f"outputs/validation/{name}.json").read_text())
        assert result["summary"]["success"] is True and result["validation_result"]["success"] is True
        assert (repo / f"outputs/validation/{name}.md").stat().st_size > 0
    from deepdram.spaces.lattice.geometry import to_keys

    keys = {}
    for split in ("train", "val", "test"):
        df = pd.read_parquet(repo / f"outputs/datasets/splits/{split}.parquet")
        keys[split] = set(to_keys(df[[f"b{k:02d}" for k in range(42)]].to_numpy()).tolist())
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    til = pd.read_parquet(repo / "outputs/datasets/tilings.parquet")
    assert len(til) == 240 and set(til["d1"]) <= set(range(2, 21, 2))
    tkeys = to_keys(til[[f"b{k:02d}" for k in range(42)]].to_numpy())
    for split in ("train", "val", "test"):
        mine = np.isin(tkeys, np.array(sorted(keys[split]), dtype=np.uint64))
        assert (til["split"].to_numpy()[mine] == split).all()
    assert any((repo / "outputs/reports/data").glob("*.png"))
    # the declared metrics are the headline table alone; a stage's own file is shown when named
    headline = json.loads(_run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo).stdout)
    shown = headline[""]["data"]
    assert list(shown) == ["outputs/metrics/headline.json"]
    assert {"test.fwd_r2", "fresh.fwd_r2", "test.gen_fe_r2"} <= set(shown["outputs/metrics/headline.json"]["data"])
    cells = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json", "outputs/metrics/cells.json"], repo).stdout
    assert '"rows"' in cells
    _run([sys.executable, "-m", "dvc", "params", "diff"], repo)


def test_models_are_tracked_registered_and_promoted(pipeline):
    """The pipeline trained, evaluated, registered and promoted all three models in the repo's store."""
    repo = pipeline
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    for name in ("deepdram-forward", "deepdram-size-agnostic", "deepdram-generator"):
        champion = client.get_model_version_by_alias(name, "champion")
        run = client.get_run(champion.run_id)
        assert run.data.tags.get("test_set")
        metric = "test_gen_best_r2_overall" if name == "deepdram-generator" else "test_r2_overall"
        assert metric in run.data.metrics
        history = client.get_metric_history(champion.run_id, "val_loss")
        assert len(history) == (2 if name == "deepdram-generator" else 3)
    decisions = json.loads((repo / "outputs/evaluation/promotion.json").read_text())
    assert {d["decision"] for d in decisions.values()} == {"promoted"}
    # rerunning promote with nothing new to decide keeps every champion and succeeds
    out = _run(["dvc", "repro", "-f", "-s", "promote"], repo).stdout
    assert "no challenger: champion stays at version 1" in out
    again = json.loads((repo / "outputs/evaluation/promotion.json").read_text())
    assert {d["decision"] for d in again.values()} == {"unchanged"}
    for kind in ("forward", "size_agnostic"):
        table = pd.read_csv(repo / f"outputs/evaluation/{kind}/test_metrics.csv", index_col=0)
        assert "overall (paper)" in table.columns and np.isfinite(table.loc["R2", "overall"])
