"""deepdram.mlops.pyfuncs: the REAL `mlflow models serve` answers like the in-process model and
refuses bad input; the generator's latent size is the model's own.

Two tiny stand-in Keras models (forward 42 -> 4, size-agnostic 44 -> 4) are logged with
`deepdram.mlops.pyfuncs.log_model`, registered and promoted in a temporary store; one server per
model is started (both at once) from `models:/NAME@champion`, queried over HTTP, then stopped by
killing its process group (conftest's `model_server`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")
keras = pytest.importorskip("keras")

import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from deepdram.mlops import pyfuncs, registry, tracking  # noqa: E402
from deepdram.mlops.pyfuncs import KerasPyfunc  # noqa: E402
from deepdram.spaces.lattice.constants import BIT_COLUMNS, PROPERTY_COLUMNS  # noqa: E402
from deepdram.spaces.lattice.geometry import sample_designs  # noqa: E402

pytestmark = pytest.mark.slow

DISCONNECTED = np.zeros(len(BIT_COLUMNS), dtype=int)
DISCONNECTED[[0, 1, 2]] = 1  # one horizontal line of beams: 12 nodes left alone


def predictions(body: dict) -> np.ndarray:
    rows = body["predictions"]
    assert list(rows[0]) == list(PROPERTY_COLUMNS), rows[0]
    return np.array([[r[c] for c in PROPERTY_COLUMNS] for r in rows])


@pytest.fixture(scope="module")
def store(mlflow_store):
    """The module's temporary sqlite store (conftest), with the test experiment active."""
    tracking.experiment("test-serving")
    return mlflow_store


@pytest.fixture(scope="module")
def served(store, tiny_keras, model_server):
    """Log, register, promote and serve a forward and a size-agnostic model; yield the handles."""
    root = store
    uri = tracking.configure()
    servers: dict = {}
    timings = {}
    for kind, n_in, seed in (("forward", 42, 1), ("size_agnostic", 44, 2)):
        path = tiny_keras(root / f"{kind}.keras", n_in, 4, hidden=16, activation="tanh", seed=seed)
        name = f"deepdram-{kind}-serve"
        with mlflow.start_run() as run:
            mlflow.log_metric("test_r2_overall", 0.5)
            t = time.perf_counter()
            pyfuncs.log_model(kind, path)
            timings[f"log_model {kind}"] = time.perf_counter() - t
        t = time.perf_counter()
        registry.register(run.info.run_id, name)
        timings[f"register {kind}"] = time.perf_counter() - t
        assert registry.promote(name)["decision"] == "promoted"
    env = model_server.env(uri)
    try:
        for kind in ("forward", "size_agnostic"):
            servers[kind] = model_server.Server(f"models:/deepdram-{kind}-serve@champion", root / f"{kind}.log", env)
        for kind, server in servers.items():
            timings[f"server start {kind}"] = server.wait()
        models = {kind: registry.load(f"deepdram-{kind}-serve") for kind in servers}
        print("timings (s):", {k: round(v, 2) for k, v in timings.items()})
        yield {"servers": servers, "models": models}
    finally:
        for server in servers.values():
            server.stop()
        for server in servers.values():
            assert server.proc.poll() is not None
            assert server.port_released(), f"port {server.port} still in use"


@pytest.fixture(scope="module")
def designs() -> np.ndarray:
    return sample_designs(3.5, 5, seed=3).astype(int)


def test_valid_requests_match_the_in_process_model(served, designs, model_server):
    url, model = served["servers"]["forward"].url, served["models"]["forward"]
    expected = model.predict(designs).to_numpy()

    status, body = model_server.post(url, {"inputs": designs.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)

    status, body = model_server.post(url, {"dataframe_split": {"columns": list(BIT_COLUMNS), "data": designs.tolist()}})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)

    # Named columns in another order, plus an extra column, are matched by name.
    df = pd.DataFrame(designs, columns=list(BIT_COLUMNS))[list(BIT_COLUMNS)[::-1]].assign(zg=3.5)
    status, body = model_server.post(url, {"dataframe_split": json.loads(df.to_json(orient="split", index=False))})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)


def test_size_agnostic_valid_requests(served, designs, model_server):
    url, model = served["servers"]["size_agnostic"].url, served["models"]["size_agnostic"]
    sizes = np.array([[2, 2], [4, 20], [20, 2], [6, 8], [10, 10]])
    rows = np.hstack([designs, sizes])
    expected = model.predict(rows).to_numpy()
    status, body = model_server.post(url, {"inputs": rows.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)
    named = {"dataframe_split": {"columns": [*BIT_COLUMNS, "d1", "d2"], "data": rows.tolist()}}
    status, body = model_server.post(url, named)
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)
    # the sizes matter
    assert not np.allclose(expected[0], model.predict(np.hstack([designs[:1], [[4, 4]]])).to_numpy()[0])


def invalid_forward_requests(designs: np.ndarray):
    rows = designs.tolist()
    bad_bit = [r.copy() for r in rows]
    bad_bit[1][5] = 2
    disconnected = [rows[0], DISCONNECTED.tolist()]
    text = [r.copy() for r in rows[:2]]
    text[1][7] = "one"
    nan = [r.copy() for r in rows[:2]]
    nan[0][3] = None
    return [
        ("41 columns", {"inputs": [r[:41] for r in rows]}, ["wrong number of columns", "41", "42"]),
        ("43 columns", {"inputs": [r + [0] for r in rows]}, ["wrong number of columns", "43"]),
        ("bit = 2", {"inputs": bad_bit}, ["0 or 1", "row 1", "column b05"]),
        ("bit = 2, named", {"dataframe_split": {"columns": list(BIT_COLUMNS), "data": bad_bit}},
         ["0 or 1", "row 1", "column b05"]),
        ("disconnected", {"inputs": disconnected}, ["row 1", "not all 16 nodes are connected"]),
        ("non-numeric", {"inputs": text}, ["non-numeric", "'one'", "row 1", "column b07"]),
        ("non-numeric, named", {"dataframe_split": {"columns": list(BIT_COLUMNS), "data": text}},
         ["non-numeric", "'one'", "row 1", "column b07"]),
        ("NaN", {"inputs": nan}, ["missing", "row 0", "column b03"]),
        ("missing column", {"dataframe_split": {"columns": list(BIT_COLUMNS[:-1]), "data": [r[:-1] for r in rows]}},
         ["missing input column", "b41"]),
    ]


def test_invalid_forward_requests_get_400_naming_the_problem(served, designs, model_server):
    server, model = served["servers"]["forward"], served["models"]["forward"]
    for label, payload, needles in invalid_forward_requests(designs):
        status, body = model_server.post(server.url, payload)
        assert status == 400, (label, status, body)
        assert body.get("error_code") == "INVALID_PARAMETER_VALUE", (label, body)
        for needle in needles:
            assert needle in body["message"], (label, needle, body["message"])
        # in-process: the same refusal
        data = payload.get("inputs")
        if data is None:
            data = pd.DataFrame(payload["dataframe_split"]["data"], columns=payload["dataframe_split"]["columns"])
        with pytest.raises(MlflowException) as err:
            model.predict(data)
        assert needles[0] in err.value.message, (label, err.value.message)
    status, body = model_server.post(server.url, b"{not json")
    assert status == 400, body
    assert model_server.get(server.url + "/ping")[0] == 200
    assert server.proc.poll() is None


def test_invalid_sizes_get_400_naming_the_problem(served, designs, model_server):
    server = served["servers"]["size_agnostic"]
    base = np.hstack([designs[:3], np.full((3, 2), 4)])
    for column, value, needles in ((42, 3, ["d1 must be even", "got 3", "row 1"]),
                                   (43, 22, ["d2 must be even", "[2, 20]", "got 22", "row 1"]),
                                   (42, 0, ["d1", "got 0", "row 1"]),
                                   (43, 4.5, ["d2 must be an integer"])):
        rows = base.astype(float).copy()
        rows[1, column] = value
        for payload in ({"inputs": rows.tolist()},
                        {"dataframe_split": {"columns": [*BIT_COLUMNS, "d1", "d2"], "data": rows.tolist()}}):
            status, body = model_server.post(server.url, payload)
            assert status == 400, (value, status, body)
            for needle in needles:
                assert needle in body["message"], (value, needle, body["message"])
    status, body = model_server.post(server.url, {"inputs": [r[:42] for r in base.tolist()]})
    assert status == 400 and "wrong number of columns" in body["message"] and "d1, d2" in body["message"]
    assert model_server.get(server.url + "/ping")[0] == 200


def test_in_process_wrapper_accepts_the_documented_input_forms(served, designs):
    model = served["models"]["forward"]
    expected = model.predict(designs).to_numpy()
    np.testing.assert_allclose(model.predict(designs.tolist()).to_numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model.predict(designs[0].tolist()).to_numpy(), expected[:1], atol=1e-6)
    frame = pd.DataFrame(designs.astype(np.uint8), columns=list(BIT_COLUMNS))
    out = model.predict(frame)
    assert list(out.columns) == list(PROPERTY_COLUMNS) and len(out) == len(designs)
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-6)
    assert model.metadata.metadata["deepdram_kind"] == "forward"
    assert model.metadata.get_output_schema().input_names() == list(PROPERTY_COLUMNS)
    reqs = Path(mlflow.pyfunc.get_model_dependencies("models:/deepdram-forward-serve@champion")).read_text()
    for dist in ("mlflow==", "keras==", "tensorflow", "numpy==", "pandas=="):
        assert dist in reqs, reqs


def test_generator_wrapper_validates_and_names_bit_columns(tmp_path, tiny_keras):
    """The generator kind, in process only: 12 inputs -> 42 probabilities named b00..b41."""
    tiny_keras(tmp_path / "gen.keras", 12, 42, hidden=None, output_activation="sigmoid")

    class Ctx:
        artifacts = {pyfuncs.ARTIFACT_KEY: str(tmp_path / "gen.keras")}

    wrapper = KerasPyfunc("generator")
    wrapper.load_context(Ctx())
    assert wrapper.latent == 8
    x = np.hstack([[[0.05, 0.04, 0.3, 0.25]], np.random.default_rng(0).standard_normal((1, 8))])
    out = wrapper.predict(Ctx(), x)
    assert list(out.columns) == list(BIT_COLUMNS) and out.shape == (1, 42)
    assert ((out.to_numpy() >= 0) & (out.to_numpy() <= 1)).all()
    named = pd.DataFrame(x, columns=[*PROPERTY_COLUMNS, *pyfuncs.latent_columns(8)])
    np.testing.assert_allclose(wrapper.predict(Ctx(), named).to_numpy(), out.to_numpy(), atol=1e-6)
    with pytest.raises(MlflowException, match="wrong number of columns"):
        wrapper.predict(Ctx(), x[:, :11])
    bad = x.copy()
    bad[0, 6] = np.inf
    with pytest.raises(MlflowException, match="infinite value at row 0 column z2"):
        wrapper.predict(Ctx(), bad)


def test_generator_latent_size_is_the_models_own(store, tmp_path, tiny_keras):
    """A generator with 16 latent values (4 + 16 inputs), logged and loaded back through MLflow,
    takes z0..z15 and names its 20 input columns in its errors (a fixed latent size of 8 would
    refuse every request)."""
    path = tiny_keras(tmp_path / "gen16.keras", 20, 42, hidden=None, output_activation="sigmoid", seed=3)
    keras_model = keras.saving.load_model(path)
    with mlflow.start_run():
        info = pyfuncs.log_model("generator", path, name="generator16")
    model = mlflow.pyfunc.load_model(info.model_uri)
    meta = model.metadata.metadata
    assert meta["deepdram_kind"] == "generator"
    assert meta["deepdram_inputs"] == [f"{c}:double" for c in (*PROPERTY_COLUMNS, *pyfuncs.latent_columns(16))]
    assert model.metadata.get_output_schema().input_names() == list(BIT_COLUMNS)
    assert pyfuncs.input_columns("lattice", "generator", 16)[-1] == "z15"

    rng = np.random.default_rng(1)
    x = np.hstack([np.tile([[0.05, 0.04, 0.3, 0.25]], (3, 1)), rng.standard_normal((3, 16))])
    expected = np.asarray(keras_model(x.astype(np.float32)))
    out = model.predict(x)
    assert list(out.columns) == list(BIT_COLUMNS) and out.shape == (3, 42)
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-6)
    # named columns in any order (z15 first), plus an extra column
    names = [*PROPERTY_COLUMNS, *(f"z{k}" for k in range(16))]
    named = pd.DataFrame(x, columns=names)[names[::-1]].assign(note=1.0)
    np.testing.assert_allclose(model.predict(named).to_numpy(), expected, atol=1e-6)

    with pytest.raises(MlflowException) as err:  # 12 values: a latent size of 8 is not this model's
        model.predict(x[:, :12])
    assert "wrong number of columns: got 12, the model needs 20 columns (E11, E22, nu12, nu21, z0..z15)" \
        in err.value.message
    with pytest.raises(MlflowException) as err:
        model.predict(pd.DataFrame(x[:, :12], columns=names[:12]))
    assert "missing input column(s) z8, z9, z10, z11, z12, z13, z14, z15" in err.value.message
    assert "20 columns (E11, E22, nu12, nu21, z0..z15)" in err.value.message
    bad = x.copy()
    bad[2, 19] = np.nan
    with pytest.raises(MlflowException, match=r"missing \(NaN/null\) value at row 2 column z15"):
        model.predict(bad)


def test_logged_model_is_self_contained(served, designs, tmp_path):
    """The model carries its own copy of deepdram: it loads where deepdram is not installed."""
    import sysconfig

    code = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})  # site-packages, without the editable deepdram
try:
    import deepdram
    raise SystemExit("deepdram is importable without the model's code: " + deepdram.__file__)
except ImportError:
    pass
import json, numpy as np, mlflow.pyfunc
m = mlflow.pyfunc.load_model("models:/deepdram-forward-serve@champion")
import deepdram.mlops.pyfuncs
print("FROM", deepdram.mlops.pyfuncs.__file__)
print("RESULT", json.dumps(m.predict(np.array({designs.tolist()})).to_numpy().tolist()))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.configure()}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = dict(ln.split(" ", 1) for ln in proc.stdout.splitlines() if ln.startswith(("FROM ", "RESULT ")))
    assert "/artifacts/code/deepdram/mlops/pyfuncs.py" in lines["FROM"]
    expected = served["models"]["forward"].predict(designs).to_numpy()
    np.testing.assert_allclose(np.array(json.loads(lines["RESULT"])), expected, atol=1e-6)


def test_small_calls_run_in_the_checked_numpy_twin_and_large_ones_in_keras(tmp_path):
    """A symmetrised forward model: calls of up to TWIN_ROWS rows run in its NumPy twin once it was
    found equal to the compiled Keras call, larger ones in Keras; both equal the Keras model. A twin
    that disagrees on its first call is never used."""
    from deepdram.learn import models
    from deepdram.learn.configs import RegressorConfig
    from deepdram.spaces.lattice.space import LatticeSpace

    keras.utils.set_random_seed(0)
    space = LatticeSpace()
    _, full = models.build_regressor(42, 4, RegressorConfig(hidden_layers=2, first_width=32), features=None)
    path = tmp_path / "forward.keras"
    models.symmetrize(full, space, "all").save(path)

    class Ctx:
        artifacts = {pyfuncs.ARTIFACT_KEY: str(path)}

    x = sample_designs(3.0, 300, seed=4).astype(float)
    expected = np.asarray(keras.saving.load_model(path)(x.astype(np.float32)))
    wrapper = KerasPyfunc("forward")
    wrapper.load_context(Ctx())
    assert wrapper._twin.agrees is None  # checked on the first small call
    small = wrapper.predict(Ctx(), x[: pyfuncs.TWIN_ROWS]).to_numpy()
    assert wrapper._twin.agrees is True and wrapper._twin.max_difference < 1e-6
    np.testing.assert_allclose(small, expected[: pyfuncs.TWIN_ROWS], atol=1e-6)
    np.testing.assert_allclose(wrapper.predict(Ctx(), x).to_numpy(), expected, atol=1e-6)

    wrong = KerasPyfunc("forward")
    wrong.load_context(Ctx())
    wrong._twin.twin = lambda a: np.zeros((len(a), 4))
    np.testing.assert_allclose(wrong.predict(Ctx(), x[:3]).to_numpy(), expected[:3], atol=1e-6)
    assert wrong._twin.agrees is False
