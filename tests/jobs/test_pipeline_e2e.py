"""End to end: the real `dvc repro` on a tiny profile in a copy of the repo, with a SIGKILL mid-stage.

Every test stands alone: `pipeline` brings the copy's whole pipeline up to date (a no-op when an
earlier test already did), so any test can be run by itself."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml


pytestmark = pytest.mark.slow

TINY = {
    "dask": {"n_workers": 1},
    "cells": {"per_zg": 4000, "shard_size": 400},  # 50 shards
    "tilings": {"cells": 120, "sizes_per_cell": 2, "shard_size": 60},
    # the default profile's training options (symmetrised models, physics features, cosine), tiny
    "train_forward": {"augment": "mirrors",
                      "model": {"epochs": 3, "batch_size": 256, "learning_rate": 0.001, "patience": 0,
                                "lr_schedule": "cosine", "symmetrize": "all"}},
    "train_size_agnostic": {"augment": "all",
                            "model": {"epochs": 3, "batch_size": 64, "learning_rate": 0.001, "patience": 0,
                                      "features": "homogenized", "symmetrize": "mirrors"}},
    "train_cvae": {"max_train_rows": 2000, "model": {"epochs": 2, "batch_size": 256, "learning_rate": 0.001}},
    "evaluate": {"generator_k": 5, "generator_targets": 100, "tsne_points": 200},
    # tuning stages: 2 trials of 2 epochs on a few hundred rows each (tests/test_tuning.py tests the search)
    "tune_forward": {"trials": 2, "rows": 300, "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003},
                     "data": {"pool_cells": 3000}},
    "tune_size_agnostic": {"trials": 2, "rows": 150, "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003}},
    "tune_cvae": {"trials": 2, "rows": 300, "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 0.003}},
    "design": {"n_candidates": 2000, "export_top": 1,
               "sweep_profile": {"n_candidates": 200, "sizes": [[4, 4]], "target_stride": 49}},
    # the head-to-head, the peaks demonstration and the composite stages, tiny (their own tests
    # check what they find: tests/design/test_compare.py, tests/jobs/test_composite_e2e.py)
    "compare_methods": {"test_cells": 1, "tiling_sizes": [[4, 4]], "requests": ["fig5_group1"], "rare": False,
                        "n_candidates": 300, "top_k": 3, "race_seconds": 0.3, "race_fe": 8, "fe_race_time_cap": 5.0,
                        "methods": {"cvae": {}, "backprop": {"n_starts": 20, "steps": 5},
                                    "active": {"rounds": 2, "fe_per_round": 3, "proposer_starts": 10,
                                               "proposer_steps": 3, "epochs": 2},
                                    "ga": {"population": 10, "parents": 4, "generations": 3},
                                    "topopt": {"iterations": 3}, "random": {"batch": 5}}},
    "peaks_demo": {"points": 1000, "train": 800, "epochs": 3, "n_starts": 50, "steps": 20},
    "composite": {"m": 1, "ratio": 10.0, "soft_fraction": 0.0625},  # 2 of 32 soft: 496 designs
    "composite_brute_force": {"shard_size": 100, "bins": 20},
    "composite_data": {"groups": [30, 120], "test": 60},
    "composite_tune": {"trials": 2, "rows": 120, "fit": {"epochs": 2, "batch_size": 32, "learning_rate": 0.003},
                       "pruner": {"startup_trials": 2, "warmup_epochs": 1},
                       "space": {"hidden_layers": [2], "first_width": [8, 16]},
                       "paper": {"hidden_layers": 2, "first_width": 16}},
    "composite_train": {"model": {"epochs": 3, "batch_size": 32}},
    "composite_design": {"top_k": 3,
                         "table": {"n_starts": 50, "steps": 3, "model": {"epochs": 2, "batch_size": 32}},
                         "race": {"repeats": 1, "seconds": 0.3, "fe": 20, "fe_time_cap": 5.0,
                                  "methods": {"backprop": {"n_starts": 20, "steps": 3},
                                              "ga": {"population": 10, "parents": 4, "generations": 3},
                                              "random": {"batch": 10}}}},
}


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.pop("DEEPDRAM_ROOT", None)
    env.pop("DEEPDRAM_DASK_SCHEDULER", None)
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
def repo(tmp_path_factory, repo_copy) -> Path:
    """A git + DVC copy of the working tree with the tiny profile in params.yaml."""
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    repo_copy(dst, TINY, "e2e")
    _run([sys.executable, "-m", "dvc", "pull", "-q", "data.dvc"], dst)
    assert (dst / "data/reference/paper_tables.yaml").is_file()
    return dst


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
    scratch = repo / "outputs/.scratch/cells"
    # forced, so the stage starts from scratch even when an earlier test already ran it
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", "cells"], cwd=repo, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    t0, parts = time.time(), []
    while time.time() - t0 < 300:
        parts = list(scratch.glob("*/part-*.parquet")) if scratch.exists() else []
        if len(parts) >= 5 or proc.poll() is not None:
            break
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended by itself: the assertion below says why
        pass
    output = proc.communicate()[0].decode(errors="replace")
    assert 5 <= len(parts) < 50, f"kill came too late or too early: {len(parts)} shards\n{output[-3000:]}"
    done_before = {p.name: p.stat().st_mtime_ns for p in scratch.glob("*/part-*.parquet")}

    out = _run([sys.executable, "-m", "dvc", "repro"], repo, timeout=1800)
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
