"""End to end: the real `dvc repro composite_design` on the tiny profile (tests/jobs/conftest.py) in
a copy of the repo: brute force, data, study, predictor (registered and promoted), Table S1 / S2 and the
head-to-head; none of the lattice stages runs, and a second repro has nothing to do."""

from __future__ import annotations

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

STAGES = ("composite_brute_force", "composite_data", "composite_tune", "composite_train", "composite_design")


def _env() -> dict:
    """The project's Python first, no telemetry, nothing of the outer session's MLflow, Dask or
    crash-test settings (an outer pause point must not reach these stages)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    for k in ("DEEPDRAM_ROOT", "DEEPDRAM_DASK_SCHEDULER", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
              "DEEPDRAM_TEST_PAUSE_AT", "DEEPDRAM_TEST_PAUSE_FILE"):
        env.pop(k, None)
    return env


def _run(args, cwd, timeout=1200) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def repo(tiny_repo, fresh_tiny_repo) -> Path:
    """The session's tiny copy of the repo (tests/jobs/conftest.py) after `dvc repro composite_design`,
    run there before any other stage (or in a copy of its own, where another module ran first)."""
    dst = tiny_repo if not any((tiny_repo / "outputs/metrics").glob("*.json")) else fresh_tiny_repo()
    out = _run([sys.executable, "-m", "dvc", "repro", "composite_design"], dst)
    (dst / "repro.log").write_text(out.stdout + out.stderr)
    return dst


def test_only_the_composite_stages_ran(repo):
    log = (repo / "repro.log").read_text()
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    assert ran == set(STAGES), ran
    for stage in STAGES:
        assert f"stage {stage}: done in" in log


def test_brute_force_and_data(repo):
    bf = json.loads((repo / "outputs/composite/brute_force/summary.json").read_text())
    assert bf["designs"] == 496 and bf["soft_count"] == 2 and bf["shards"] == 5
    top = pd.read_parquet(repo / "outputs/composite/brute_force/top100.parquet")
    assert len(top) == 100 and top["toughness"].iloc[0] == pytest.approx(bf["optimum_toughness"])
    groups = pd.read_parquet(repo / "outputs/composite/data/groups.parquet")
    test = pd.read_parquet(repo / "outputs/composite/data/test.parquet")
    assert len(groups) == 120 and len(test) == 60
    cells = [f"x{k:02d}" for k in range(32)]

    def keys(df):
        return {"".join(map(str, r)) for r in df[cells].to_numpy()}

    assert not keys(groups) & keys(top) and not keys(test) & keys(groups)
    for name in ("groups", "test"):
        v = json.loads((repo / f"outputs/composite/validation/{name}.json").read_text())
        assert v["summary"]["success"] is True
    m = json.loads((repo / "outputs/metrics/composite_data.json").read_text())
    assert m["top100_in_groups"] == 0 and m["group_30_max"] <= m["group_120_max"]


def test_study_predictor_and_registry(repo):
    best = yaml.safe_load((repo / "outputs/composite/tuning/forward_best.yaml").read_text())
    assert best["model"]["hidden_layers"] == 2 and best["model"]["first_width"] in (8, 16)
    assert best["study"]["trials"] == 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    champion = client.get_model_version_by_alias("deepdram-composite-predictor", "champion")
    run = client.get_run(champion.run_id)
    assert "test_r2_overall" in run.data.metrics and run.data.tags.get("test_set")
    assert len(client.get_metric_history(champion.run_id, "val_loss")) == 3
    promotion = json.loads((repo / "outputs/composite/promotion.json").read_text())
    assert promotion["decision"] == "promoted"
    exp = client.get_experiment_by_name("deepdram-composite")
    names = {r.info.run_name for r in client.search_runs([exp.experiment_id], max_results=100)}
    assert {"table_s2-group_30", "table_s2-group_120"} <= names
    assert {f"head_to_head-{m}" for m in ("backprop", "active", "ga", "topopt", "random")} <= names
    assert client.get_experiment_by_name("deepdram-composite-tuning") is not None


def test_tables_and_head_to_head(repo):
    out = repo / "outputs/composite/design"
    optimum = json.loads((repo / "outputs/composite/brute_force/summary.json").read_text())["optimum_toughness"]
    groups = pd.read_csv(out / "groups.csv")
    assert groups["group"].tolist() == [30, 120]
    assert (groups["design_max"] <= optimum + 1e-9).all() and (groups["design_max"] >= groups["design_mean"]).all()
    assert (groups["starts"] == 100).all()
    table = pd.read_csv(out / "table_s1_s2.csv")
    assert {"ours 30", "ours 120", "seed 100", "seed 1,000,000"} <= set(table.columns)
    summary = pd.read_csv(out / "head_to_head_summary.csv")
    assert set(summary["race"]) == {"time", "fe"}
    assert set(summary["method"]) == {"backprop", "active", "ga", "topopt", "random"}
    assert (summary["median_best_toughness"] <= optimum + 1e-9).all()
    fe = summary[summary["race"] == "fe"]
    assert (fe["median_fe_calls"] <= 60).all()
    for f in ("curve_time.png", "curve_fe.png", "table_s1_s2.md", "traces.csv"):
        assert (out / f).stat().st_size > 0
    m = json.loads((repo / "outputs/metrics/composite_design.json").read_text())
    assert m["optimum"] == pytest.approx(optimum) and np.isfinite(m["fe_ga_median_share_of_optimum"])


def test_a_second_repro_has_nothing_to_do(repo):
    again = _run([sys.executable, "-m", "dvc", "repro", "composite_design"], repo)
    assert "Running stage" not in again.stdout
