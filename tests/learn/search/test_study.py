"""Hyperparameter search: CV folds, search -> config mapping, MLflow nested runs, failures, resume.

Real FE-labelled cells (tiny), a temporary sqlite MLflow store and Optuna sqlite storage; the
SIGKILL resume test runs `deepdram tune` as a subprocess in a temporary project root.
"""

from __future__ import annotations

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

pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from deepdram import models, tracking, tuning  # noqa: E402
from deepdram.constants import REPO_ROOT  # noqa: E402

TINY_FIT = {"epochs": 2, "batch_size": 64, "learning_rate": 0.003}
TINY_SPACE = {
    "resampling": ["under", "over"],
    "scaling": ["none", "minmax"],
    "hidden_layers": {"low": 1, "high": 3},
    "first_width": [8, 16],
    "shape": ["rectangle", "triangle"],
    "activation": ["relu", "tanh"],
    "output_activation": ["none", "relu"],
    "optimizer": ["adam", "rmsprop"],
    "batch_norm": [False, True],
}
TINY_PAPER = {"resampling": "under", "scaling": "minmax", "hidden_layers": 2, "first_width": 16,
              "shape": "triangle", "activation": "relu", "output_activation": "relu", "optimizer": "adam",
              "batch_norm": False}


def tiny_cells(n_per_zg: int = 240, seed: int = 0) -> pd.DataFrame:
    """FE-labelled random cells of every Z_g (the real solver)."""
    from deepdram.datasets import cells_frame
    from deepdram.fem import cell_properties
    from deepdram.lattice import sample_designs

    parts = []
    for i, zg in enumerate((2.5, 3.0, 3.5, 4.0, 4.5)):
        d = sample_designs(zg, n_per_zg, seed + i)
        parts.append(cells_frame(d, np.full(len(d), zg), cell_properties(d)))
    return pd.concat(parts, ignore_index=True)


def tiny_params(trials: int = 4, **over) -> dict:
    sec = {"backend": "optuna", "storage": None, "trials": trials, "seed": 0, "folds": 3, "rows": 300,
           "fit": dict(TINY_FIT), "pruner": {"startup_trials": 2, "warmup_epochs": 1},
           "heartbeat": {"interval": 1, "grace": 2}, "data": {"pool_cells": 1200},
           "space": dict(TINY_SPACE), "paper": dict(TINY_PAPER)}
    sec.update(over)
    return {"tune_forward": sec,
            "resample": {"under": {"e_decimals": 1, "nu_decimals": 1, "max_per_group": 3},
                         "over": {"base_size": 1000, "rare_quantile": 0.05, "factor": 1, "k_neighbors": 3,
                                  "noise_swaps": 2}}}


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return tiny_cells()


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """Temporary MLflow store and tuning folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tuning, "TUNING_DIR", tmp_path / "tuning")
    tracking.reset()
    tracking.configure()
    yield tmp_path
    tracking.reset()


def _children(parent_id: str) -> list:
    c = tracking.client()
    exp = c.get_run(parent_id).info.experiment_id
    return c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)


# --- pure pieces -------------------------------------------------------------------------------------


def test_kfold_partitions_rows():
    folds = tuning.kfold(100, 3, seed=1)
    vals = [v for _, v in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(100))  # every row validated exactly once
    assert sorted(len(v) for v in vals) == [33, 33, 34]
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == 100
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, tuning.kfold(100, 3, seed=1)))
    with pytest.raises(tuning.InputError, match="at least 3 rows"):
        tuning.kfold(2, 3, 0)


def test_r2_overall_matches_sklearn():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 4)) * [0.01, 0.1, 1, 10]
    p = y + rng.normal(size=y.shape) * [0.005, 0.02, 0.5, 1]
    assert tuning.r2_overall(y, p) == pytest.approx(r2_score(y, p), abs=1e-12)
    # invariant under per-column affine scaling (why per-epoch scores may use scaled targets)
    s, o = np.array([3.0, 0.5, 2.0, 7.0]), np.array([1.0, -2.0, 0.0, 5.0])
    assert tuning.r2_overall(y * s + o, p * s + o) == pytest.approx(tuning.r2_overall(y, p), abs=1e-12)


def test_search_values_map_to_model_configs():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    cvae = tuning.tune_config(params, "cvae")
    arch = tuning.architecture("cvae", cvae.paper)
    assert arch["encoder_hidden"] == [512, 260]  # Table 7: triangle from 512 to 8 latent outputs
    assert arch["decoder_hidden"] == [512, 277]  # triangle rule towards 42 outputs
    models.CVAEConfig.from_dict(arch)
    fwd = tuning.tune_config(params, "forward")
    cfg = tuning.trial_config(fwd, fwd.paper)
    assert (cfg.hidden_layers, cfg.first_width, cfg.shape, cfg.activation) == (4, 500, "triangle", "relu")
    assert cfg.epochs == fwd.fit["epochs"] and cfg.patience == 0
    assert "resampling" not in tuning.architecture("forward", fwd.paper)
    with pytest.raises(tuning.InputError, match="neither"):
        tuning.architecture("forward", {"dropout": 0.1})
    bad = {**params, "tune_forward": {**params["tune_forward"], "paper": {"first_width": 7}}}
    with pytest.raises(tuning.InputError, match="tune_forward.paper.first_width"):
        tuning.tune_config(bad, "forward")
    assert tuning._redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    # the CVAE study scores generation by default; the paper's total loss is an option
    assert (cvae.score, cvae.direction) == ("gen_r2", "maximize")
    paper_score = tuning.tune_config({**params, "tune_cvae": {**params["tune_cvae"], "score": "loss"}}, "cvae")
    assert paper_score.direction == "minimize" and paper_score.study_name != cvae.study_name
    with pytest.raises(tuning.InputError, match="tune_forward.score"):
        tuning.tune_config({**params, "tune_forward": {**params["tune_forward"], "score": "loss"}}, "forward")
    # fixed config fields reach every trial (the size-agnostic study trains with the physics
    # features, as train_size_agnostic does) and change the study's name; they are checked
    sa = tuning.tune_config(params, "size_agnostic")
    assert sa.fixed == {"features": "homogenized"}
    assert tuning.trial_config(sa, sa.paper).features == "homogenized"
    plain = {**params, "tune_size_agnostic": {**params["tune_size_agnostic"], "fixed": {}}}
    assert tuning.tune_config(plain, "size_agnostic").study_name != sa.study_name
    for fixed, msg in (({"dropout": 0.1}, "not size_agnostic config fields"),
                       ({"first_width": 64}, "also searched")):
        bad = {**params, "tune_size_agnostic": {**params["tune_size_agnostic"], "fixed": fixed}}
        with pytest.raises(tuning.InputError, match=msg):
            tuning.tune_config(bad, "size_agnostic")


# --- a real study -----------------------------------------------------------------------------------


def _data(cfg, cells):
    sets = tuning.resampled_sets(cells, cfg.space["resampling"], tiny_params()["resample"], cfg.seed)
    from deepdram.training import cell_xy, subsample

    return {m: subsample(*cell_xy(df), cfg.rows, cfg.seed) for m, df in sets.items()}


def test_study_logs_every_trial_as_nested_run(store, cells):
    import optuna

    params = tiny_params(trials=6, space={**TINY_SPACE, "learning_rate": [0.003, 1.0e30]},
                         paper={**TINY_PAPER, "learning_rate": 0.003})
    cfg = tuning.tune_config(params, "forward")
    data = _data(cfg, cells)
    bad_nan = {**TINY_PAPER, "optimizer": "rmsprop", "learning_rate": 1.0e30, "first_width": 8}
    out = tuning.tune(cfg, data, enqueue=[dict(TINY_PAPER, learning_rate=0.003), bad_nan], progress=False)

    study = optuna.load_study(study_name=cfg.study_name, storage=tuning.default_storage("forward"))
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and out["trials_run"] == len(trials)
    assert trials[0].params == {**TINY_PAPER, "learning_rate": 0.003}  # the paper's configuration first
    # the same configuration again is answered from the study, not retrained
    assert trials[1].params == trials[0].params and trials[1].value == trials[0].value
    assert trials[2].state.name == "FAIL"  # NaN loss: recorded, the study went on

    runs = {int(r.data.tags[tuning.TAG_TRIAL]): r for r in _children(out["parent_run_id"])}
    assert sorted(runs) == [t.number for t in trials]  # exactly one child run per trial
    for t in trials:
        r = runs[t.number]
        assert r.data.tags[tuning.TAG_STATE] == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name]
        assert r.info.status == ("FAILED" if t.state.name == "FAIL" else "FINISHED")
        assert r.data.params == {k: str(v) for k, v in t.params.items()}
        assert r.data.metrics["duration_s"] > 0
        if t.state.name == "COMPLETE" and "deepdram.duplicate_of" not in r.data.tags:
            folds = [r.data.metrics[f"cv_r2_fold{i}"] for i in (1, 2, 3)]
            assert r.data.metrics["cv_r2_mean"] == pytest.approx(np.mean(folds))
            assert r.data.metrics["cv_r2_std"] == pytest.approx(np.std(folds))
            assert r.data.metrics["cv_r2_mean"] == pytest.approx(t.value)
            assert r.data.metrics["epochs"] == 3 * TINY_FIT["epochs"]
    assert runs[1].data.tags["deepdram.duplicate_of"] == "0" and runs[1].data.metrics["epochs"] == 0
    assert "non-finite" in runs[2].data.tags["deepdram.error"]

    best = yaml.safe_load((store / "tuning" / "forward_best.yaml").read_text())
    assert best["study"]["best_trial"] == study.best_trial.number
    assert best["study"]["cv_r2"] == pytest.approx(max(t.value for t in trials if t.state.name == "COMPLETE"))
    assert best["data"] == {"resampling": study.best_trial.params["resampling"]}
    m = models.RegressorConfig.from_dict(best["model"])  # the training stage accepts it
    assert m.first_width == study.best_trial.params["first_width"]
    c = tracking.client()
    names = {a.path for a in c.list_artifacts(out["parent_run_id"], "study")}
    assert {"study/forward_best.yaml", "study/optimization_history.png", "study/parallel_coordinate.png",
            "study/trials.csv"} <= names
    parent = c.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == len(trials)
    assert 0 < out["mlflow_overhead_s_per_trial"] < 2


def test_keras_tuner_backend_logs_trials(store, cells):
    pytest.importorskip("keras_tuner")
    params = tiny_params(trials=3, backend="keras_tuner")
    cfg = tuning.tune_config(params, "forward")
    out = tuning.tune(cfg, _data(cfg, cells), progress=False)
    runs = _children(out["parent_run_id"])
    assert len(runs) == 3 == out["trials_run"]
    assert all(r.data.tags[tuning.TAG_STATE] == "complete" for r in runs)
    assert {tuple(sorted(r.data.params)) for r in runs} == {tuple(sorted(TINY_SPACE))}
    best = yaml.safe_load((store / "tuning" / "forward_best.yaml").read_text())
    scores = [r.data.metrics["cv_r2_mean"] for r in runs]
    assert best["study"]["cv_r2"] == pytest.approx(max(scores))
    models.RegressorConfig.from_dict(best["model"])


# --- resume after SIGKILL (subprocess in a temporary project root) ----------------------------------


def make_root(root: Path, cells: pd.DataFrame, params: dict) -> Path:
    """A project root with a sharded cells table, a train split and params.yaml."""
    from deepdram.io import write_table

    (root / "outputs" / "datasets" / "cells.parquet").mkdir(parents=True)
    half = len(cells) // 2
    write_table(cells.iloc[:half], root / "outputs" / "datasets" / "cells.parquet" / "part-00000.parquet")
    write_table(cells.iloc[half:], root / "outputs" / "datasets" / "cells.parquet" / "part-00001.parquet")
    (root / "outputs" / "datasets" / "splits").mkdir(parents=True)
    write_table(cells, root / "outputs" / "datasets" / "splits" / "train.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


def cli_env(root: Path, tracking_uri: str) -> dict:
    env = dict(os.environ)
    env.update(DEEPDRAM_ROOT=str(root), MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


TUNE = [sys.executable, "-m", "deepdram.cli", "tune"]


@pytest.mark.slow
def test_sigkill_resumes_study_and_fails_killed_runs(tmp_path, cells):
    import optuna

    params = tiny_params(trials=5, fit={**TINY_FIT, "epochs": 12})
    root = make_root(tmp_path / "root", cells, params)
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    env = cli_env(root, uri)
    storage = f"sqlite:///{(root / 'outputs' / 'tuning' / 'forward_study.db').as_posix()}"
    cfg = tuning.tune_config(params, "forward")

    proc = subprocess.Popen([*TUNE, "forward", "-q"], env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    done_before = []
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            st = optuna.load_study(study_name=cfg.study_name, storage=storage)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        ts = st.get_trials(deepcopy=False)
        done = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
        if len(done) >= 2 and any(t.state.name == "RUNNING" for t in ts):
            os.killpg(proc.pid, signal.SIGKILL)  # now, while a trial is training
            done_before = [(t.number, t.params) for t in st.get_trials(deepcopy=False)
                           if t.state.name in ("COMPLETE", "PRUNED")]
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    killed = [t.number for t in optuna.load_study(study_name=cfg.study_name, storage=storage).get_trials()
              if t.state.name == "RUNNING"]
    assert len(killed) == 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.reset()
        tracking.configure()
        running = [r for r in tracking.client().search_runs(
            [tracking.client().get_experiment_by_name(tuning.EXPERIMENT).experiment_id],
            "attributes.status = 'RUNNING'")]
        assert {r.data.tags.get(tuning.TAG_TRIAL) for r in running} >= {str(killed[0])}

        time.sleep(params["tune_forward"]["heartbeat"]["grace"] + 1)  # the dead worker's heartbeat goes stale
        res = subprocess.run([*TUNE, "forward", "-q"], env=env, cwd=root, capture_output=True, text=True,
                             timeout=400)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout[res.stdout.index("{"):])

        st = optuna.load_study(study_name=cfg.study_name, storage=storage)
        ts = st.get_trials()
        assert len([t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]) == 5
        assert ts[killed[0]].state.name == "FAIL"
        assert out["trials_run"] == 5 - len(done_before)  # finished trials were not repeated
        for number, p in done_before:
            assert ts[number].params == p and ts[number].state.name in ("COMPLETE", "PRUNED")
        runs = {int(r.data.tags[tuning.TAG_TRIAL]): r for r in _children(out["parent_run_id"])}
        assert sorted(runs) == [t.number for t in ts]  # one parent: resumed, not a second study run
        assert runs[killed[0]].info.status == "FAILED"
        assert runs[killed[0]].data.tags[tuning.TAG_STATE] == "failed"
        assert not [r for r in runs.values() if r.info.status == "RUNNING"]
        tracking.reset()


def test_cvae_scores_generation_or_the_papers_loss(cells):
    """The CVAE's CV score: best-of-10 generation R2 by the forward model (default, at most 1, and
    higher for a better forward model's own predictions) or the paper's total validation loss."""
    from deepdram.training import cell_xy

    x, y = cell_xy(cells)
    fwd, _ = models.train_regressor(x[:900], y[:900], cfg=models.RegressorConfig.forward_paper(
        hidden_layers=2, first_width=32, epochs=3, batch_size=64, learning_rate=3e-3))
    space = {"latent_dim": [2, 4], "encoder_layers": {"low": 1, "high": 1}, "encoder_first_width": [16],
             "decoder_layers": {"low": 1, "high": 1}, "decoder_first_width": [16]}
    paper = {"latent_dim": 2, "encoder_layers": 1, "encoder_first_width": 16, "decoder_layers": 1,
             "decoder_first_width": 16}
    base = {"backend": "optuna", "storage": None, "trials": 1, "seed": 0, "folds": 2, "rows": 300,
            "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 3e-3}, "space": space, "paper": paper}
    data = {"": (x[:300], y[:300])}
    folds = {"": tuning.kfold(300, 2, 0)}
    gen = tuning.tune_config({"tune_cvae": base}, "cvae")
    res = tuning.cross_validate(gen, paper, data, folds, forward_model=fwd)
    assert len(res.fold_scores) == 2 and res.epochs == 4 and all(np.isfinite(res.fold_scores))
    assert all(s <= 1.0 for s in res.fold_scores) and len(res.curve) == 4
    loss = tuning.tune_config({"tune_cvae": {**base, "score": "loss"}}, "cvae")
    res_loss = tuning.cross_validate(loss, paper, data, folds, forward_model=fwd)
    assert all(s > 0 for s in res_loss.fold_scores) and res_loss.epochs == 4  # BCE over 42 bits > 0
    assert (gen.direction, loss.direction) == ("maximize", "minimize")
