"""Hyperparameter search (deepdram.learn.search): CV folds, search -> config mapping, MLflow nested
runs, failures, resume.

Real FE-labelled cells (tiny, `tuning_kit` in conftest.py), a temporary sqlite MLflow store and
Optuna sqlite storage; the SIGKILL resume test runs `deepdram tune` as a subprocess in a
temporary project root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from deepdram import params as P  # noqa: E402
from deepdram.errors import InputError  # noqa: E402
from deepdram.learn import configs  # noqa: E402
from deepdram.learn.search import config as C  # noqa: E402
from deepdram.learn.search import objective  # noqa: E402
from deepdram.learn.search.optuna_backend import default_storage  # noqa: E402
from deepdram.learn.search.study import tune  # noqa: E402
from deepdram.learn.search.trials import (  # noqa: E402
    TAG_ROLE,
    TAG_STATE,
    TAG_TRIAL,
    _redact,
    experiment_name,
)
from deepdram.mlops import tracking  # noqa: E402
from deepdram.paths import REPO_ROOT  # noqa: E402
from deepdram.spaces.lattice.space import LatticeSpace  # noqa: E402

SPACE = LatticeSpace()


@pytest.fixture(scope="module")
def cells(tuning_kit) -> pd.DataFrame:
    return tuning_kit.cells()


@pytest.fixture()
def store(mlflow_test_store):
    """Temporary MLflow store (its folder also holds the studies' work folder `tuning`)."""
    return mlflow_test_store


def _children(parent_id: str) -> list:
    c = tracking.client()
    exp = c.get_run(parent_id).info.experiment_id
    return c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)


def _config(params: dict, model: str, work_dir=REPO_ROOT / "outputs" / "tuning") -> C.TuneConfig:
    """The TuneConfig of section tune_<model> of a whole params mapping."""
    return C.tune_config(getattr(P.parse(params), f"tune_{model}"), model, work_dir)


def _with(params: dict, section: str, **changes) -> dict:
    """params with keys of one section replaced."""
    return {**params, section: {**params[section], **changes}}


# --- pure pieces -------------------------------------------------------------------------------------


def test_kfold_partitions_rows():
    folds = objective.kfold(100, 3, seed=1)
    vals = [v for _, v in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(100))  # every row validated exactly once
    assert sorted(len(v) for v in vals) == [33, 33, 34]
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == 100
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, objective.kfold(100, 3, seed=1)))
    with pytest.raises(InputError, match="at least 3 rows"):
        objective.kfold(2, 3, 0)


def test_halving_pruner_keeps_the_best_third_at_each_rung():
    """kind halving: with min_epochs 1 and reduction factor 3 a trial is compared at steps 1, 3 and
    9 with the trials that reached the same step, and goes on only in their best third (the first
    trials: only as the best so far); computed here by hand from the rule."""
    import optuna

    from deepdram.learn.search.optuna_backend import make_pruner

    spec = P.Pruner(kind="halving", min_epochs=1, reduction_factor=3).model_dump()
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    # each trial's score is constant over its steps; 15 steps (3 folds x 5 epochs)
    scores = [0.5, 0.7, 0.6, 0.9, 0.2, 0.8, 0.85, 0.1, 0.95]
    stopped = {}

    def run(trial):
        s = scores[trial.number]
        for step in range(15):
            trial.report(s, step)
            if trial.should_prune():
                stopped[trial.number] = step
                raise optuna.TrialPruned()
        return s

    study.optimize(run, n_trials=len(scores))
    # the rule by hand: at a rung, with c competitors (this trial included), go on only if among the
    # best max(c // 3, 1); competitors are the trials that reached that rung before
    reached = {1: [], 3: [], 9: []}
    expect = {}
    for n, s in enumerate(scores):
        for rung in (1, 3, 9):
            reached[rung].append(s)
            keep = max(len(reached[rung]) // 3, 1)
            if s < sorted(reached[rung], reverse=True)[keep - 1]:
                expect[n] = rung
                break
    assert stopped == expect
    assert stopped and set(stopped.values()) <= {1, 3, 9}
    with pytest.raises(ValueError, match="kind"):
        P.Pruner(kind="hyperband")
    assert isinstance(make_pruner(P.Pruner().model_dump()), optuna.pruners.MedianPruner)
    with pytest.raises(ValueError, match="pruner kind must be median or halving; got 'hyperband'"):
        make_pruner({"kind": "hyperband"})


def test_library_pruner_defaults_are_the_schemas():
    """A pruner mapping that leaves keys out (tests, benchmarks, a TuneConfig built by hand) gets the
    params schema's defaults: the library keeps no other values."""
    from deepdram.learn.search.config import PRUNER_DEFAULTS, TuneConfig

    assert PRUNER_DEFAULTS == P.Pruner().model_dump()
    assert TuneConfig(model="forward").pruner == P.Pruner().model_dump()


def test_search_values_map_to_model_configs():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    cvae = _config(params, "cvae")
    arch = C.architecture("cvae", cvae.paper)
    assert arch["encoder_hidden"] == [512, 260]  # Table 7: triangle from 512 to 8 latent outputs
    assert arch["decoder_hidden"] == [512, 277]  # triangle rule towards 42 outputs
    configs.CVAEConfig.from_dict(arch)
    fwd = _config(params, "forward")
    cfg = C.trial_config(fwd, fwd.paper)
    assert (cfg.hidden_layers, cfg.first_width, cfg.shape, cfg.activation) == (4, 500, "triangle", "relu")
    assert cfg.epochs == fwd.fit["epochs"] and cfg.patience == 0
    assert "resampling" not in C.architecture("forward", fwd.paper)
    assert "momentum" not in C.config_fields("forward") | C.config_fields("size_agnostic")
    with pytest.raises(InputError, match="neither"):
        C.architecture("forward", {"momentum": 0.9})  # not a config field
    # the paper's configuration must lie in the search space (checked with the whole params file)
    bad = _with(params, "tune_forward", paper={"first_width": 7})
    with pytest.raises(InputError, match=r"'tune_forward' paper\.first_width = 7 is not in the search space"):
        _config(bad, "forward")
    assert _redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    # the CVAE study scores generation by default; the paper's total loss is an option
    assert (cvae.score, cvae.direction) == ("gen_r2", "maximize")
    paper_score = _config(_with(params, "tune_cvae", score="loss"), "cvae")
    assert paper_score.direction == "minimize" and paper_score.study_name != cvae.study_name
    with pytest.raises(InputError, match="tune_forward.score"):
        _config(_with(params, "tune_forward", score="loss"), "forward")
    # fixed config fields reach every trial (the size-agnostic study trains with the physics
    # features, as train_size_agnostic does) and change the study's name; they are checked
    sa = _config(params, "size_agnostic")
    assert sa.fixed == {"features": "homogenized"}
    assert C.trial_config(sa, sa.paper).features == "homogenized"
    plain = _with(params, "tune_size_agnostic", fixed={})
    assert _config(plain, "size_agnostic").study_name != sa.study_name
    for fixed, msg in (({"momentum": 0.9}, "not size_agnostic config fields"),
                       ({"first_width": 64}, "also searched")):
        with pytest.raises(InputError, match=msg):
            _config(_with(params, "tune_size_agnostic", fixed=fixed), "size_agnostic")


# --- a real study -----------------------------------------------------------------------------------


def _data(cfg, cells, params):
    from deepdram.jobs.tuning_common import resampled_sets
    from deepdram.learn.training import subsample, xy

    sets = resampled_sets(cells, cfg.space["resampling"], P.parse(params).resample, cfg.seed)
    return {m: subsample(*xy(SPACE, df), cfg.rows, cfg.seed) for m, df in sets.items()}


def test_study_logs_every_trial_as_nested_run(store, cells, tuning_kit):
    import optuna

    space, paper = tuning_kit.space, tuning_kit.paper
    params = tuning_kit.params(trials=6, space={**space, "learning_rate": [0.003, 1.0e30]},
                               paper={**paper, "learning_rate": 0.003})
    cfg = _config(params, "forward", store / "tuning")
    data = _data(cfg, cells, params)
    bad_nan = {**paper, "optimizer": "rmsprop", "learning_rate": 1.0e30, "first_width": 8}
    out = tune(cfg, data, enqueue=[dict(paper, learning_rate=0.003), bad_nan], progress=False, space=SPACE)

    st = optuna.load_study(study_name=cfg.study_name, storage=default_storage(cfg))
    assert default_storage(cfg) == f"sqlite:///{(store / 'tuning' / 'forward_study.db').as_posix()}"
    trials = st.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and out["trials_run"] == len(trials)
    assert trials[0].params == {**paper, "learning_rate": 0.003}  # the paper's configuration first
    # the same configuration again is answered from the study, not retrained
    assert trials[1].params == trials[0].params and trials[1].value == trials[0].value
    assert trials[2].state.name == "FAIL"  # NaN loss: recorded, the study went on

    runs = {int(r.data.tags[TAG_TRIAL]): r for r in _children(out["parent_run_id"])}
    assert sorted(runs) == [t.number for t in trials]  # exactly one child run per trial
    for t in trials:
        r = runs[t.number]
        assert r.data.tags[TAG_STATE] == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name]
        assert r.info.status == ("FAILED" if t.state.name == "FAIL" else "FINISHED")
        assert r.data.params == {k: str(v) for k, v in t.params.items()}
        assert r.data.metrics["duration_s"] > 0
        if t.state.name == "COMPLETE" and "deepdram.duplicate_of" not in r.data.tags:
            folds = [r.data.metrics[f"cv_r2_fold{i}"] for i in (1, 2, 3)]
            assert r.data.metrics["cv_r2_mean"] == pytest.approx(np.mean(folds))
            assert r.data.metrics["cv_r2_std"] == pytest.approx(np.std(folds))
            assert r.data.metrics["cv_r2_mean"] == pytest.approx(t.value)
            assert r.data.metrics["epochs"] == 3 * tuning_kit.fit["epochs"]
    assert runs[1].data.tags["deepdram.duplicate_of"] == "0" and runs[1].data.metrics["epochs"] == 0
    assert "non-finite" in runs[2].data.tags["deepdram.error"]

    best = yaml.safe_load((store / "tuning" / "forward_best.yaml").read_text())
    assert best["study"]["best_trial"] == st.best_trial.number
    assert best["study"]["cv_r2"] == pytest.approx(max(t.value for t in trials if t.state.name == "COMPLETE"))
    assert best["data"] == {"resampling": st.best_trial.params["resampling"]}
    m = configs.RegressorConfig.from_dict(best["model"])  # the training stage accepts it
    assert m.first_width == st.best_trial.params["first_width"]
    c = tracking.client()
    names = {a.path for a in c.list_artifacts(out["parent_run_id"], "study")}
    assert {"study/forward_best.yaml", "study/optimization_history.png", "study/parallel_coordinate.png",
            "study/trials.csv"} <= names
    parent = c.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == len(trials)
    assert parent.data.tags[TAG_ROLE] == "parent"
    assert c.get_experiment(parent.info.experiment_id).name == experiment_name()
    assert 0 < out["mlflow_overhead_s_per_trial"] < 2


def test_keras_tuner_backend_logs_trials(store, cells, tuning_kit):
    pytest.importorskip("keras_tuner")
    params = tuning_kit.params(trials=3, backend="keras_tuner")
    cfg = _config(params, "forward", store / "tuning")
    out = tune(cfg, _data(cfg, cells, params), progress=False, space=SPACE)
    runs = _children(out["parent_run_id"])
    assert len(runs) == 3 == out["trials_run"]
    assert all(r.data.tags[TAG_STATE] == "complete" for r in runs)
    assert {tuple(sorted(r.data.params)) for r in runs} == {tuple(sorted(tuning_kit.space))}
    best = yaml.safe_load((store / "tuning" / "forward_best.yaml").read_text())
    scores = [r.data.metrics["cv_r2_mean"] for r in runs]
    assert best["study"]["cv_r2"] == pytest.approx(max(scores))
    configs.RegressorConfig.from_dict(best["model"])


# --- resume after SIGKILL (subprocess in a temporary project root) ----------------------------------


@pytest.mark.slow
def test_sigkill_resumes_study_and_fails_killed_runs(tmp_path, cells, tuning_kit, sqlite_store):
    """SIGKILL `deepdram tune` while trial 2 is running (the `tune_forward:trial-2` pause point, so the
    kill always lands there, however fast the trials are); the next run fails that trial and its
    MLflow run, keeps the finished trials and completes the study."""
    import optuna

    params = tuning_kit.params(trials=5)
    root = tuning_kit.project(tmp_path / "root", cells, params)
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    env = tuning_kit.env(root, uri)
    storage = f"sqlite:///{(root / 'outputs' / 'tuning' / 'forward_study.db').as_posix()}"
    cfg = _config(params, "forward", root / "outputs" / "tuning")  # the study the subprocess runs
    assert default_storage(cfg) == storage

    marker = tmp_path / "paused"
    paused_env = {**env, "DEEPDRAM_TEST_PAUSE_AT": "tune_forward:trial-2", "DEEPDRAM_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([*tuning_kit.tune, "forward", "-q"], env=paused_env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # paused in trial 2: its Optuna trial and MLflow run are RUNNING
    except ProcessLookupError:  # it ended by itself: the assertion below says why
        pass
    output = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert marker.exists() and proc.returncode == -signal.SIGKILL, output[-3000:]
    assert marker.read_text().split()[0] == "tune_forward:trial-2"
    ts = optuna.load_study(study_name=cfg.study_name, storage=storage).get_trials()
    done_before = [(t.number, t.params) for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
    assert [n for n, _ in done_before] == [0, 1]
    killed = [t.number for t in ts if t.state.name == "RUNNING"]
    assert killed == [2]

    with sqlite_store(tmp_path):  # the store the subprocesses log to
        running = [r for r in tracking.client().search_runs(
            [tracking.client().get_experiment_by_name(C.EXPERIMENT).experiment_id],
            "attributes.status = 'RUNNING'")]
        assert {r.data.tags.get(TAG_TRIAL) for r in running} >= {"2"}

        time.sleep(params["tune_forward"]["heartbeat"]["grace"] + 1)  # the dead worker's heartbeat goes stale
        res = subprocess.run([*tuning_kit.tune, "forward", "-q"], env=env, cwd=root, capture_output=True, text=True,
                             timeout=600, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout[res.stdout.index("{"):])

        st = optuna.load_study(study_name=cfg.study_name, storage=storage)
        ts = st.get_trials()
        assert len([t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]) == 5
        assert ts[2].state.name == "FAIL"
        assert out["trials_run"] == 5 - len(done_before)  # finished trials were not repeated
        for number, p in done_before:
            assert ts[number].params == p and ts[number].state.name in ("COMPLETE", "PRUNED")
        runs = {int(r.data.tags[TAG_TRIAL]): r for r in _children(out["parent_run_id"])}
        assert sorted(runs) == [t.number for t in ts]  # one parent: resumed, not a second study run
        assert runs[2].info.status == "FAILED"
        assert runs[2].data.tags[TAG_STATE] == "failed"
        assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_cvae_scores_generation_or_the_papers_loss(cells):
    """The CVAE's CV score: best-of-10 generation R2 by the forward model (default, at most 1, and
    higher for a better forward model's own predictions) or the paper's total validation loss."""
    from deepdram.learn import models
    from deepdram.learn.training import xy

    x, y = xy(SPACE, cells)
    fwd, _ = models.train_regressor(x[:900], y[:900], cfg=configs.RegressorConfig.forward_paper(
        hidden_layers=2, first_width=32, epochs=3, batch_size=64, learning_rate=3e-3), space=SPACE)
    space = {"latent_dim": [2, 4], "encoder_layers": {"low": 1, "high": 1}, "encoder_first_width": [16],
             "decoder_layers": {"low": 1, "high": 1}, "decoder_first_width": [16]}
    paper = {"latent_dim": 2, "encoder_layers": 1, "encoder_first_width": 16, "decoder_layers": 1,
             "decoder_first_width": 16}
    base = {"backend": "optuna", "storage": None, "trials": 1, "seed": 0, "folds": 2, "rows": 300,
            "fit": {"epochs": 2, "batch_size": 64, "learning_rate": 3e-3}, "space": space, "paper": paper}
    data = {"": (x[:300], y[:300])}
    folds = {"": objective.kfold(300, 2, 0)}
    work = REPO_ROOT / "outputs" / "tuning"  # not written: cross_validate runs no study
    gen = C.tune_config(P.TuneCVAE.model_validate(base), "cvae", work)
    res = objective.cross_validate(gen, paper, data, folds, forward_model=fwd, space=SPACE)
    assert len(res.fold_scores) == 2 and res.epochs == 4 and all(np.isfinite(res.fold_scores))
    assert all(s <= 1.0 for s in res.fold_scores) and len(res.curve) == 4
    loss = C.tune_config(P.TuneCVAE.model_validate({**base, "score": "loss"}), "cvae", work)
    res_loss = objective.cross_validate(loss, paper, data, folds, forward_model=fwd, space=SPACE)
    assert all(s > 0 for s in res_loss.fold_scores) and res_loss.epochs == 4  # BCE over 42 bits > 0
    assert (gen.direction, loss.direction) == ("maximize", "minimize")
