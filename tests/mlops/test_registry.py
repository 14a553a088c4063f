"""deepdram.mlops.registry and .tracking: champion/challenger promotion (also through `deepdram
promote`), load by alias, the default store, batched epoch metrics, flat params, run context.

Every test uses a temporary sqlite store (MLFLOW_TRACKING_URI in tmp, conftest's `mlflow_store`),
never the project's mlruns/. Models are tiny Dense stand-ins logged with
`deepdram.mlops.pyfuncs.log_model`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
keras = pytest.importorskip("keras")

import mlflow  # noqa: E402

from deepdram import paths  # noqa: E402
from deepdram.cli.main import main as cli_main  # noqa: E402
from deepdram.errors import DeepdramError  # noqa: E402
from deepdram.mlops import pyfuncs, registry, tracking  # noqa: E402
from deepdram.mlops.catalogue import CHALLENGER, CHAMPION, PREVIOUS  # noqa: E402
from deepdram.spaces.lattice.geometry import sample_designs  # noqa: E402

TEST_SET = "md5-of-test-split-A"


@pytest.fixture(scope="module")
def store(mlflow_store):
    """The module's temporary sqlite store (conftest); yields its folder."""
    tracking.experiment("test-registry")
    return mlflow_store


def use_default_store(monkeypatch, mlruns: Path) -> None:
    """Switch to the default store (no MLFLOW_TRACKING_URI) with the repo's mlruns at `mlruns`."""
    tracking.reset()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("DEEPDRAM_ROOT", raising=False)
    monkeypatch.setattr(paths, "MLRUNS_DIR", mlruns)


def back_to_module_store(monkeypatch) -> None:
    tracking.reset()
    monkeypatch.undo()
    tracking.configure()


@pytest.fixture(autouse=True)
def in_test_experiment(request):
    """Runs go to the test experiment (tests that switch stores reset the active experiment)."""
    if "store" in request.fixturenames:
        request.getfixturevalue("store")
        tracking.configure()
        tracking.experiment("test-registry")
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def forward_keras(tmp_path_factory, tiny_keras) -> Path:
    return tiny_keras(tmp_path_factory.mktemp("keras") / "forward.keras", 42, 4)


def log_run(keras_path: Path, r2: float, test_set: str | None = TEST_SET, **metrics) -> str:
    """A finished run with test metrics, a test-set tag and a logged forward model; its id."""
    with mlflow.start_run() as run:
        if test_set is not None:
            tracking.log_tags({tracking.TEST_SET_TAG: test_set})
        mlflow.log_metrics({"test_r2_overall": r2, "test_mae_E11": 1.0 - r2, **metrics})
        pyfuncs.log_model("forward", keras_path)
    return run.info.run_id


def alias_version(name: str, alias: str) -> int | None:
    try:
        return int(tracking.client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def version_tags(name: str, version: int) -> dict:
    return tracking.client().get_model_version(name, str(version)).tags


# --- configure / experiment -------------------------------------------------------------------------


def test_configure_uses_the_environment_store_and_puts_artifacts_next_to_it(store):
    uri = tracking.configure()
    assert uri == f"sqlite:///{(store / 'mlflow.db').as_posix()}"
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    exp = tracking.client().get_experiment(tracking.experiment("test-registry"))
    assert exp.artifact_location == (store / "artifacts" / "test-registry").resolve().as_uri()


def test_default_store_is_the_repo_mlruns_sqlite(monkeypatch, tmp_path):
    use_default_store(monkeypatch, tmp_path / "repo" / "mlruns")
    try:
        uri = tracking.configure()
        assert uri == f"sqlite:///{(tmp_path / 'repo' / 'mlruns' / 'mlflow.db').as_posix()}"
        assert (tmp_path / "repo" / "mlruns").is_dir()
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == uri
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
        # MLflow exports the URI; that is not taken for a user's choice once the root changes.
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        monkeypatch.setattr(paths, "MLRUNS_DIR", tmp_path / "other" / "mlruns")
        assert tracking.configure() == f"sqlite:///{(tmp_path / 'other' / 'mlruns' / 'mlflow.db').as_posix()}"
    finally:
        back_to_module_store(monkeypatch)


# --- promotion ---------------------------------------------------------------------------------------


def test_champion_challenger_promotion(store, forward_keras):
    assert (CHAMPION, CHALLENGER, PREVIOUS) == ("champion", "challenger", "previous_champion")
    name = "deepdram-forward-promo"
    # 1. The first registered version becomes champion.
    v1 = registry.register(log_run(forward_keras, 0.80), name)
    assert v1 == 1 and alias_version(name, "challenger") == 1
    r = registry.promote(name)
    assert r["decision"] == "promoted" and "no champion" in r["reason"]
    assert alias_version(name, "champion") == 1
    assert alias_version(name, "challenger") is None  # consumed by the promotion

    # 2. A better challenger is promoted; the old champion is kept as previous_champion.
    v2 = registry.register(log_run(forward_keras, 0.85), name)
    assert alias_version(name, "challenger") == v2 == 2
    r = registry.promote(name)
    assert r["decision"] == "promoted", r
    assert alias_version(name, "champion") == 2 and alias_version(name, "previous_champion") == 1

    # 3. A worse challenger is NOT promoted, and the decision is recorded on the version.
    v3 = registry.register(log_run(forward_keras, 0.70), name)
    r = registry.promote(name)
    assert r["decision"] == "rejected" and "fails" in r["reason"], r
    assert alias_version(name, "champion") == 2
    assert alias_version(name, "challenger") == 3
    tags = version_tags(name, v3)
    assert tags["promotion.decision"] == "rejected"
    assert "test_r2_overall" in tags["promotion.reason"]
    assert json.loads(tags["promotion.candidate_metrics"])["test_r2_overall"] == pytest.approx(0.70)
    assert json.loads(tags["promotion.champion_metrics"])["test_r2_overall"] == pytest.approx(0.85)
    assert tags["promotion.champion_version"] == "2"

    # 4. Within the tolerance it passes.
    r = registry.promote(name, tolerance=0.2, version=3)
    assert r["decision"] == "promoted" and alias_version(name, "champion") == 3
    assert alias_version(name, "previous_champion") == 2
    # Roll back to version 2 (better, so no force needed) and check "already champion".
    assert registry.promote(name, version=2)["decision"] == "promoted"
    r = registry.promote(name, version=2)
    assert r["decision"] == "unchanged" and alias_version(name, "champion") == 2


def test_decide_is_the_promotion_rule():
    """The pure rule `promote` applies: same split and at least as good (within the tolerance)."""
    from deepdram.mlops.registry import VersionFacts, decide

    champ = VersionFacts(1, {"test_r2_overall": 0.8}, "split-A")
    assert decide(VersionFacts(2, {"test_r2_overall": 0.8}, "split-A"), champ)["decision"] == "promoted"
    worse = VersionFacts(2, {"test_r2_overall": 0.79}, "split-A")
    assert decide(worse, champ)["decision"] == "rejected"
    assert decide(worse, champ, tolerance=0.02)["decision"] == "promoted"
    forced = decide(worse, champ, force=True)
    assert forced["decision"] == "promoted" and forced["forced"] and "forced" in forced["reason"]
    other = decide(VersionFacts(2, {"test_r2_overall": 0.99}, "split-B"), champ)
    assert other["decision"] == "rejected" and "different test splits" in other["reason"]
    first = decide(worse, None)
    assert first["decision"] == "promoted" and first["champion_after"] == 2
    assert decide(champ, champ)["decision"] == "unchanged"
    lower = decide(VersionFacts(2, {"mae": 0.1}, "split-A"), VersionFacts(1, {"mae": 0.2}, "split-A"),
                   metric="mae", higher_is_better=False)
    assert lower["decision"] == "promoted" and "lower is better" in lower["reason"]
    assert decide(VersionFacts(2, {}, "split-A"), champ)["decision"] == "rejected"  # no metric
    with pytest.raises(DeepdramError, match="tolerance"):
        decide(worse, champ, tolerance=-1)


def test_force_promotes_a_worse_version_via_the_cli(store, forward_keras, capsys):
    name = "deepdram-forward-force"
    registry.register(log_run(forward_keras, 0.9), name)
    registry.promote(name)
    registry.register(log_run(forward_keras, 0.5), name)
    assert cli_main(["promote", name]) == 0
    out = capsys.readouterr().out
    assert "decision: rejected" in out and "test_r2_overall" in out and "0.9" in out and "0.5" in out
    assert alias_version(name, "champion") == 1

    assert cli_main(["promote", name, "--force"]) == 0
    out = capsys.readouterr().out
    assert "decision: promoted" in out and "forced" in out
    assert alias_version(name, "champion") == 2
    tags = version_tags(name, 2)
    assert tags["promotion.decision"] == "promoted" and "forced" in tags["promotion.reason"]


def test_different_test_sets_refuse(store, forward_keras):
    name = "deepdram-forward-split"
    registry.register(log_run(forward_keras, 0.5), name)
    registry.promote(name)
    registry.register(log_run(forward_keras, 0.99, test_set="md5-of-another-split"), name)
    r = registry.promote(name)
    assert r["decision"] == "rejected"
    assert "different test splits" in r["reason"] and "md5-of-another-split" in r["reason"]
    assert alias_version(name, "champion") == 1
    assert version_tags(name, 2)["promotion.decision"] == "rejected"
    # A run without any test-set tag cannot be compared either.
    registry.register(log_run(forward_keras, 0.99, test_set=None), name)
    r = registry.promote(name)
    assert r["decision"] == "rejected" and "test_set" in r["reason"]
    assert alias_version(name, "champion") == 1


def test_different_test_sets_reevaluate_the_champion(store, forward_keras):
    """With a re-evaluator, a champion from another test split is scored again on the candidate's
    split (through its registered Keras model) and the decision uses that score."""
    name = "deepdram-forward-reeval"
    registry.register(log_run(forward_keras, 0.5), name)
    registry.promote(name)
    seen = []
    x = np.random.default_rng(0).integers(0, 2, (8, 42)).astype(np.float32)
    expected = keras.saving.load_model(forward_keras)(x)

    def reevaluate(version, value):
        model = registry.keras_model(version.name, version.version)
        np.testing.assert_allclose(model(x), expected, rtol=1e-6)
        seen.append(int(version.version))
        return value

    registry.register(log_run(forward_keras, 0.9, test_set="md5-of-the-new-split"), name)
    r = registry.promote(name, reevaluate=lambda v: reevaluate(v, 0.95))  # champion is better there
    assert seen == [1] and r["decision"] == "rejected" and r["champion_reevaluated"]
    assert r["champion_value"] == 0.95 and "re-evaluated" in r["reason"]
    assert alias_version(name, "champion") == 1
    registry.register(log_run(forward_keras, 0.9, test_set="md5-of-the-new-split"), name)
    r = registry.promote(name, reevaluate=lambda v: reevaluate(v, 0.6))  # champion is worse there
    assert seen == [1, 1] and r["decision"] == "promoted" and alias_version(name, "champion") == 3
    assert "0.6" in version_tags(name, 3)["promotion.champion_metrics"]
    assert registry.alias_version(name, "champion") == 3 and registry.alias_version(name, "challenger") is None
    assert registry.alias_version("no-such-model", "champion") is None
    # same split: no re-evaluation
    registry.register(log_run(forward_keras, 0.91, test_set="md5-of-the-new-split"), name)
    assert registry.promote(name, reevaluate=lambda v: reevaluate(v, 0.0))["decision"] == "promoted"
    assert seen == [1, 1]


def test_lower_is_better_metric(store, forward_keras):
    name = "deepdram-forward-mae"
    registry.register(log_run(forward_keras, 0.8), name)  # test_mae_E11 = 0.2
    registry.promote(name, metric="test_mae_E11", higher_is_better=False)
    registry.register(log_run(forward_keras, 0.7), name)  # mae 0.3: worse
    assert registry.promote(name, metric="test_mae_E11", higher_is_better=False)["decision"] == "rejected"
    registry.register(log_run(forward_keras, 0.9), name)  # mae 0.1: better
    assert registry.promote(name, metric="test_mae_E11", higher_is_better=False)["decision"] == "promoted"
    assert alias_version(name, "champion") == 3


def test_promote_errors_are_clear(store, forward_keras, capsys):
    with pytest.raises(DeepdramError, match="no registered model 'no-such-model'"):
        registry.promote("no-such-model")
    name = "deepdram-forward-errors"
    registry.register(log_run(forward_keras, 0.5), name)
    registry.promote(name)
    with pytest.raises(DeepdramError, match="has no challenger"):
        registry.promote(name)
    assert cli_main(["promote", name, "--version", "7"]) == 2
    assert "deepdram: error: model 'deepdram-forward-errors' has no version 7" in capsys.readouterr().err
    with mlflow.start_run() as run:  # a run that logged no model
        mlflow.log_metric("test_r2_overall", 1.0)
    with pytest.raises(DeepdramError, match="could not register"):
        registry.register(run.info.run_id, name)
    with pytest.raises(DeepdramError, match="no MLflow run"):
        registry.register("0123456789abcdef0123456789abcdef", name)
    assert alias_version(name, "champion") == 1


# --- load ----------------------------------------------------------------------------------------------


def test_load_without_champion_raises_a_clear_error(store, forward_keras):
    name = "deepdram-forward-nochamp"
    registry.register(log_run(forward_keras, 0.5), name)
    with pytest.raises(DeepdramError, match=r"model 'deepdram-forward-nochamp' has no champion: run `dvc repro`"):
        registry.load(name)
    with pytest.raises(DeepdramError, match="no registered model 'not-registered'"):
        registry.load("not-registered")
    assert registry.load(name, alias="challenger") is not None


def test_load_champion_from_a_subfolder_of_the_repo(tmp_path, forward_keras, monkeypatch):
    """The default store (no MLFLOW_TRACKING_URI) is found from any folder inside the repo."""
    repo = tmp_path / "repo"
    (repo / "sub" / "deeper").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    use_default_store(monkeypatch, repo / "mlruns")
    monkeypatch.chdir(repo)
    try:
        tracking.configure()
        tracking.experiment("subfolder")
        name = "deepdram-forward-anywhere"
        registry.register(log_run(forward_keras, 0.5), name)
        registry.promote(name)
        designs = sample_designs(3.0, 3, seed=1)
        expected = registry.load(name).predict(designs).to_numpy()
    finally:
        back_to_module_store(monkeypatch)
    assert not (repo / "sub" / "deeper" / "mlruns").exists()

    # A fresh process started deep inside the repo finds REPO_ROOT, the store and the artifacts.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DEEPDRAM_ROOT")}
    env["PYTHONPATH"] = str(paths.PACKAGE_DIR.parent)
    code = textwrap.dedent(f"""
        import json, numpy as np
        from deepdram.mlops import registry
        m = registry.load({name!r})
        print("RESULT", json.dumps(m.predict(np.array({designs.tolist()})).to_numpy().tolist()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo / "sub" / "deeper", env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    np.testing.assert_allclose(np.array(json.loads(line[7:])), expected, atol=1e-6)
    assert not (repo / "sub" / "deeper" / "mlruns").exists()
    assert not (repo / "sub" / "deeper" / "mlflow.db").exists()


# --- tracking helpers ------------------------------------------------------------------------------


def test_epoch_logger_logs_one_value_per_epoch_per_key(store):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((64, 5)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    epochs = 7
    with mlflow.start_run() as run:
        logger = tracking.EpochLogger(every=3)
        model.fit(x, y, validation_split=0.25, epochs=epochs, batch_size=16, verbose=0, callbacks=[logger])
    c = tracking.client()
    keys = set(c.get_run(run.info.run_id).data.metrics)
    assert {"loss", "val_loss", "mae", "val_mae"} <= keys
    for key in keys:
        hist = c.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == list(range(epochs)), key
    assert logger._pending == []


def test_epoch_logger_needs_a_run(store):
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer="sgd", loss="mse")
    assert mlflow.active_run() is None
    with pytest.raises(DeepdramError, match="no active MLflow run"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0, callbacks=[tracking.EpochLogger()])


def test_log_params_flat(store):
    params = {"model": {"layers": [64, 32], "act": "relu", "opt": {"lr": 1e-3}},
              "seed": 0, "long": "x" * 10000, **{f"p{i}": i for i in range(150)}}
    with mlflow.start_run() as run:
        logged = tracking.log_params_flat(params)
    got = tracking.client().get_run(run.info.run_id).data.params
    assert got["model.layers"] == "[64, 32]" and got["model.act"] == "relu"
    assert got["model.opt.lr"] == "0.001" and got["seed"] == "0" and got["p149"] == "149"
    assert len(got["long"]) == 6000 and got == logged
    assert tracking.flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}


def test_run_context_reads_dvc_lock(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "outputs" / "datasets" / "splits").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "dvc.lock").write_text(textwrap.dedent("""
        schema: '2.0'
        stages:
          cells:
            cmd: python pipelines/cells.py
            outs:
            - path: outputs/datasets/cells.parquet
              hash: md5
              md5: 0123456789abcdef0123456789abcdef
              size: 10
          resample:
            outs:
            - path: outputs/datasets/splits
              hash: md5
              md5: fedcba9876543210fedcba9876543210.dir
              nfiles: 3
    """))
    cache = repo / ".dvc" / "cache" / "files" / "md5" / "fe"
    cache.mkdir(parents=True)
    (cache / "dcba9876543210fedcba9876543210.dir").write_text(
        json.dumps([{"md5": "aaaabbbbccccddddaaaabbbbccccdddd", "relpath": "test.parquet"}]))
    (repo / "outputs" / "datasets" / "splits" / "test.parquet").write_bytes(b"x")
    (repo / "outputs" / "datasets" / "splits" / "val.parquet").write_bytes(b"y")
    (repo / "other.csv").write_text("z")
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.chdir(repo)
    ctx = tracking.run_context("outputs/datasets/cells.parquet", "other.csv",
                               test_set="outputs/datasets/splits/test.parquet")
    assert ctx["data.outputs/datasets/cells.parquet"] == "0123456789abcdef0123456789abcdef"
    assert ctx["data.other.csv"] == "untracked"
    assert ctx["test_set"] == "aaaabbbbccccddddaaaabbbbccccdddd"
    assert tracking.dataset_hash("outputs/datasets/splits/val.parquet") == "fedcba9876543210fedcba9876543210.dir:val.parquet"
    assert ctx["git_commit"] == tracking.git_commit(repo) and ctx["git_dirty"] in ("true", "false", "unknown")
    if (paths.PACKAGE_DIR.parent / ".git").exists():
        assert re.fullmatch("[0-9a-f]{40}", tracking.git_commit(paths.PACKAGE_DIR.parent))
