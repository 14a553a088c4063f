"""The composite predictor as the registry and `mlflow models serve` hand it out: registered as
`deepdram-composite-predictor`, promoted only when it is at least as good on the same test set,
served with a real server that answers valid rows and refuses bad ones with HTTP 400 naming the
row and column."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlflow")
keras = pytest.importorskip("keras")

import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from deepdram.learn import models  # noqa: E402
from deepdram.learn.configs import RegressorConfig  # noqa: E402
from deepdram.mlops import pyfuncs, registry, tracking  # noqa: E402
from deepdram.mlops.catalogue import COMPOSITE_PREDICTOR as M  # noqa: E402
from deepdram.spaces.composite.enumeration import sample_designs  # noqa: E402
from deepdram.spaces.composite.fem import toughness  # noqa: E402
from deepdram.spaces.composite.space import DESIGN_COLUMNS, CompositeSpace  # noqa: E402

pytestmark = pytest.mark.slow


def _train(path, epochs: int, seed: int = 0):
    space = CompositeSpace()
    x = sample_designs(400, 8, seed=seed)
    y = toughness(x).toughness[:, None]
    cfg = RegressorConfig(hidden_layers=2, first_width=16, shape="rectangle", output_activation="none",
                          epochs=epochs, batch_size=64, learning_rate=3e-3, seed=seed)
    model, _ = models.train_regressor(x, y, None, None, cfg, space=space)
    return models.save_model(model, path)


def _log(path, r2: float, test_set: str) -> int:
    with mlflow.start_run() as run:
        mlflow.log_metric("test_r2_overall", r2)
        tracking.log_tags({tracking.TEST_SET_TAG: test_set})
        pyfuncs.log_model("forward", path, space="composite")
    return registry.register(run.info.run_id, M.name)


@pytest.fixture(scope="module")
def served(mlflow_store, model_server):
    root = mlflow_store
    tracking.experiment(M.experiment)
    uri = tracking.configure()
    path = _train(root / "predictor.keras", epochs=5)
    v1 = _log(path, 0.40, "test-A")
    first = registry.promote(M.name, metric=M.metric)
    v2 = _log(path, 0.30, "test-A")  # worse on the same test set: rejected
    second = registry.promote(M.name, metric=M.metric, tolerance=0.05)
    server = model_server.Server(f"models:/{M.name}@champion", root / "serve.log", model_server.env(uri))
    try:
        server.wait()
        yield {"server": server, "model": registry.load(M.name), "decisions": (first, second), "versions": (v1, v2),
               "keras": models.load_model(path, CompositeSpace())}
    finally:
        server.stop()
        assert server.port_released()


def test_promotion_is_gated_on_test_r2(served):
    first, second = served["decisions"]
    v1, v2 = served["versions"]
    assert first["decision"] == "promoted" and first["champion_after"] == v1
    assert second["decision"] == "rejected" and second["champion_after"] == v1
    assert registry.alias_version(M.name, "champion") == v1 and registry.alias_version(M.name, "challenger") == v2


def test_valid_rows_get_toughness_predictions(served, model_server):
    designs = sample_designs(6, 8, seed=9).astype(int)
    expected = models.predict(served["keras"], designs)[:, 0]
    status, body = model_server.post(served["server"].url, {"inputs": designs.tolist()})
    assert status == 200, body
    got = np.array([r["toughness"] for r in body["predictions"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    status, body = model_server.post(served["server"].url,
                                     {"dataframe_split": {"columns": list(DESIGN_COLUMNS), "data": designs.tolist()}})
    assert status == 200, body
    np.testing.assert_allclose([r["toughness"] for r in body["predictions"]], expected, rtol=1e-5, atol=1e-6)


def _bad_rows():
    good = sample_designs(3, 8, seed=1).astype(float)
    two, nan = good.copy(), good.copy()
    two[1, 5] = 2
    nan[2, 3] = np.nan
    return [("31 cells", [r[:31] for r in good.tolist()], ["got 31, the model needs 32 columns (x00..x31)"]),
            ("a 2", two.tolist(), ["row 1 column x05 is 2"]),
            ("a NaN", [[None if np.isnan(v) else v for v in r] for r in nan.tolist()],
             ["missing (NaN/null) value at row 2 column x03"])]


@pytest.mark.parametrize("label, rows, needles", _bad_rows(), ids=[b[0] for b in _bad_rows()])
def test_bad_rows_get_400_naming_the_row_and_column(served, model_server, label, rows, needles):
    status, body = model_server.post(served["server"].url, {"inputs": rows})
    assert status == 400, (label, body)
    assert body.get("error_code") == "INVALID_PARAMETER_VALUE"
    for needle in needles:
        assert needle in body["message"], (label, body["message"])
    with pytest.raises(MlflowException):
        served["model"].predict(rows)
    assert served["server"].proc.poll() is None
