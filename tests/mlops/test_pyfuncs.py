"""Serving: the REAL `mlflow models serve` answers like the in-process model and refuses bad input.

Two tiny stand-in Keras models (forward 42 -> 4, size-agnostic 44 -> 4) are logged with
`deepdram.serving.log_model`, registered and promoted in a temporary store; one server per model is
started (both at once) from `models:/NAME@champion`, queried over HTTP, then stopped by killing its
process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")
keras = pytest.importorskip("keras")

import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from deepdram import registry, serving, tracking  # noqa: E402
from deepdram.constants import BIT_COLUMNS, PROPERTY_COLUMNS  # noqa: E402
from deepdram.lattice import sample_designs  # noqa: E402

pytestmark = pytest.mark.slow

START_TIMEOUT = 90.0
DISCONNECTED = np.zeros(len(BIT_COLUMNS), dtype=int)
DISCONNECTED[[0, 1, 2]] = 1  # one horizontal line of beams: 12 nodes left alone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int, wait: float = 10.0) -> bool:
    """Nothing listens on the port and a new server could bind it (SO_REUSEADDR, as uvicorn does)."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as c:
            listening = c.connect_ex(("127.0.0.1", port)) == 0
        if not listening:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                    return True
                except OSError:
                    pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def tiny_model(path: Path, n_in: int, seed: int) -> Path:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,))
    out = keras.layers.Dense(4)(keras.layers.Dense(16, activation="tanh")(inp))
    keras.Model(inp, out).save(path)
    return path


class Server:
    """`mlflow models serve` in its own process group."""

    def __init__(self, model_uri: str, log: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
        cmd += ["models", "serve", "-m", model_uri, "--env-manager", "local",
                "-h", "127.0.0.1", "-p", str(self.port), "-w", "1"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.ready_after: float | None = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait(self, timeout: float = START_TIMEOUT) -> float:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if get(self.url + "/ping")[0] == 200:
                    self.ready_after = time.monotonic() - self.started
                    return self.ready_after
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        # The uvicorn children are in the same group: wait until the group is gone.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def post(url: str, payload) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"message": body.decode(errors="replace")}


def predictions(body: dict) -> np.ndarray:
    rows = body["predictions"]
    assert list(rows[0]) == list(PROPERTY_COLUMNS), rows[0]
    return np.array([[r[c] for c in PROPERTY_COLUMNS] for r in rows])


def server_env(uri: str) -> dict:
    """Environment of a `mlflow models serve` process on the store `uri`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    # `mlflow models serve` runs `bash -c "exec uvicorn ..."`: uvicorn must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Log, register, promote and serve a forward and a size-agnostic model; yield the handles."""
    root = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{(root / 'mlflow.db').as_posix()}"
    servers: dict[str, Server] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        tracking.reset()
        tracking.configure()
        tracking.experiment("test-serving")
        timings = {}
        for kind, n_in, seed in (("forward", 42, 1), ("size_agnostic", 44, 2)):
            path = tiny_model(root / f"{kind}.keras", n_in, seed)
            name = f"deepdram-{kind}-serve"
            with mlflow.start_run() as run:
                mlflow.log_metric("test_r2_overall", 0.5)
                t = time.perf_counter()
                serving.log_model(kind, path)
                timings[f"log_model {kind}"] = time.perf_counter() - t
            t = time.perf_counter()
            registry.register(run.info.run_id, name)
            timings[f"register {kind}"] = time.perf_counter() - t
            assert registry.promote(name)["decision"] == "promoted"
        env = server_env(uri)
        try:
            for kind in ("forward", "size_agnostic"):
                servers[kind] = Server(f"models:/deepdram-{kind}-serve@champion", root / f"{kind}.log", env)
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
                assert port_is_free(server.port), f"port {server.port} still in use"
            tracking.reset()


@pytest.fixture(scope="module")
def designs() -> np.ndarray:
    return sample_designs(3.5, 5, seed=3).astype(int)


def test_valid_requests_match_the_in_process_model(served, designs):
    url, model = served["servers"]["forward"].url, served["models"]["forward"]
    expected = model.predict(designs).to_numpy()

    status, body = post(url, {"inputs": designs.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)

    status, body = post(url, {"dataframe_split": {"columns": list(BIT_COLUMNS), "data": designs.tolist()}})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)

    # Named columns in another order, plus an extra column, are matched by name.
    df = pd.DataFrame(designs, columns=list(BIT_COLUMNS))[list(BIT_COLUMNS)[::-1]].assign(zg=3.5)
    status, body = post(url, {"dataframe_split": json.loads(df.to_json(orient="split", index=False))})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)


def test_size_agnostic_valid_requests(served, designs):
    url, model = served["servers"]["size_agnostic"].url, served["models"]["size_agnostic"]
    sizes = np.array([[2, 2], [4, 20], [20, 2], [6, 8], [10, 10]])
    rows = np.hstack([designs, sizes])
    expected = model.predict(rows).to_numpy()
    status, body = post(url, {"inputs": rows.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(predictions(body), expected, atol=1e-6)
    status, body = post(url, {"dataframe_split": {"columns": [*BIT_COLUMNS, "d1", "d2"], "data": rows.tolist()}})
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


def test_invalid_forward_requests_get_400_naming_the_problem(served, designs):
    server, model = served["servers"]["forward"], served["models"]["forward"]
    for label, payload, needles in invalid_forward_requests(designs):
        status, body = post(server.url, payload)
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
    status, body = post(server.url, b"{not json")
    assert status == 400, body
    assert get(server.url + "/ping")[0] == 200
    assert server.proc.poll() is None


def test_invalid_sizes_get_400_naming_the_problem(served, designs):
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
            status, body = post(server.url, payload)
            assert status == 400, (value, status, body)
            for needle in needles:
                assert needle in body["message"], (value, needle, body["message"])
    status, body = post(server.url, {"inputs": [r[:42] for r in base.tolist()]})
    assert status == 400 and "wrong number of columns" in body["message"] and "d1, d2" in body["message"]
    assert get(server.url + "/ping")[0] == 200


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


def test_generator_wrapper_validates_and_names_bit_columns(tmp_path):
    """The generator kind, in process only: 12 inputs -> 42 probabilities named b00..b41."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,))
    keras.Model(inp, keras.layers.Dense(42, activation="sigmoid")(inp)).save(tmp_path / "gen.keras")

    class Ctx:
        artifacts = {serving.ARTIFACT_KEY: str(tmp_path / "gen.keras")}

    wrapper = serving.GeneratorPyfunc()
    wrapper.load_context(Ctx())
    x = np.hstack([[[0.05, 0.04, 0.3, 0.25]], np.random.default_rng(0).standard_normal((1, 8))])
    out = wrapper.predict(Ctx(), x)
    assert list(out.columns) == list(BIT_COLUMNS) and out.shape == (1, 42)
    assert ((out.to_numpy() >= 0) & (out.to_numpy() <= 1)).all()
    named = pd.DataFrame(x, columns=[*PROPERTY_COLUMNS, *serving.LATENT_COLUMNS])
    np.testing.assert_allclose(wrapper.predict(Ctx(), named).to_numpy(), out.to_numpy(), atol=1e-6)
    with pytest.raises(MlflowException, match="wrong number of columns"):
        wrapper.predict(Ctx(), x[:, :11])
    bad = x.copy()
    bad[0, 6] = np.inf
    with pytest.raises(MlflowException, match="infinite value at row 0 column z2"):
        wrapper.predict(Ctx(), bad)


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
import deepdram.serving
print("FROM", deepdram.serving.__file__)
print("RESULT", json.dumps(m.predict(np.array({designs.tolist()})).to_numpy().tolist()))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.configure()}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = dict(ln.split(" ", 1) for ln in proc.stdout.splitlines() if ln.startswith(("FROM ", "RESULT ")))
    assert "/artifacts/code/deepdram/serving.py" in lines["FROM"]
    expected = served["models"]["forward"].predict(designs).to_numpy()
    np.testing.assert_allclose(np.array(json.loads(lines["RESULT"])), expected, atol=1e-6)
