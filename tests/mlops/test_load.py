"""Served models under load: 8 concurrent clients on the REAL `mlflow models serve` processes.

The short version of `benchmarks/bench_serving.py` (which runs 60 seconds and prints the figures):
a few seconds of 8 clients on the forward and the size-agnostic model (tiny stand-ins, logged with
`deepdram.mlops.pyfuncs.log_model`) and of 2 clients on the designer, with zero errors, every answer
equal to the in-process model on the same rows (concurrent requests share model calls:
`pyfuncs.Coalescer`), and the server still up afterwards. The coalescer itself is tested in process.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("keras")

import mlflow  # noqa: E402

from deepdram.mlops import designer, pyfuncs, tracking  # noqa: E402
from deepdram.mlops.pyfuncs import Coalescer  # noqa: E402
from deepdram.spaces.lattice.constants import PROPERTY_COLUMNS  # noqa: E402
from deepdram.spaces.lattice.geometry import sample_designs  # noqa: E402

CLIENTS = 8
SECONDS = 4.0


# --- the coalescer, in process --------------------------------------------------------------------------


def test_coalescer_shares_calls_between_concurrent_callers_and_answers_each_its_own_rows():
    calls = []
    lock = threading.Lock()

    def run(x):
        with lock:
            calls.append(len(x))
        time.sleep(0.004)  # a model call: long enough for the others to queue
        return x * 2.0 + 1.0

    c = Coalescer(run, max_rows=64)
    problems, sent = [], []

    def client(k):
        rng = np.random.default_rng(k)
        for _ in range(40):
            x = rng.random((int(rng.integers(1, 20)), 3))
            with lock:
                sent.append(len(x))
            y = c(x)
            if y.shape != x.shape or not np.array_equal(y, x * 2.0 + 1.0):
                problems.append(k)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a caller hangs"
    assert not problems
    assert sum(calls) == sum(sent)  # every row ran once
    assert len(calls) < CLIENTS * 40 / 2, f"{len(calls)} model calls for {CLIENTS * 40} requests: not shared"
    assert max(calls) <= 64


def test_coalescer_runs_a_lone_request_at_once_and_hands_errors_to_the_callers_of_the_batch():
    c = Coalescer(lambda x: x + 1, max_rows=8)
    t = time.perf_counter()
    assert np.array_equal(c(np.zeros((3, 2))), np.ones((3, 2)))
    assert time.perf_counter() - t < 0.5

    def failing(x):
        raise RuntimeError("model failed")

    bad = Coalescer(failing)
    with pytest.raises(RuntimeError, match="model failed"):
        bad(np.zeros((1, 2)))
    with pytest.raises(RuntimeError, match="model failed"):  # not stuck busy after a failure
        bad(np.zeros((1, 2)))
    big = Coalescer(lambda x: x[:, :1], max_rows=4)  # a request above max_rows runs alone, whole
    assert big(np.arange(20.0).reshape(10, 2)).shape == (10, 1)


# --- the servers -------------------------------------------------------------------------------------


def _designs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([sample_designs(z, n // 2 + 1, int(rng.integers(2**31)), unique=False)
                           for z in (3.0, 4.0)])[:n].astype(int)


@pytest.fixture(scope="module")
def served(mlflow_store, tiny_keras, tiny_surrogates, model_server):
    root = mlflow_store
    tracking.experiment("test-load")
    uris = {}
    for kind, n_in in (("forward", 42), ("size_agnostic", 44)):
        path = tiny_keras(root / f"{kind}.keras", n_in, 4, hidden=32, activation="tanh", seed=n_in)
        with mlflow.start_run():
            uris[kind] = pyfuncs.log_model(kind, path).model_uri
    with mlflow.start_run():
        uris["designer"] = designer.log_designer(tiny_surrogates(root)).model_uri
    env = model_server.env(tracking.configure())
    servers = {}
    try:
        for kind, uri in uris.items():
            servers[kind] = model_server.Server(uri, root / f"{kind}.log", env)
        for s in servers.values():
            s.wait(180)
        models = {k: mlflow.pyfunc.load_model(u) for k, u in uris.items() if k != "designer"}
        yield {"servers": servers, "models": models}
    finally:
        for s in servers.values():
            s.stop()


def _load(port: int, bodies: list[bytes], clients: int, seconds: float, check) -> dict:
    """`clients` keep-alive clients posting bodies for `seconds`: counts, latencies, problems."""
    lat, problems = [], []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def work(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k
        while time.perf_counter() < deadline:
            j = i % len(bodies)
            t = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=bodies[j], headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                status, text = r.status, r.read()
            except (OSError, http.client.HTTPException) as e:
                status, text = -1, repr(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t
            problem = f"status {status}: {text[:300]!r}" if status != 200 else check(j, text)
            with lock:
                lat.append(dt)
                if problem:
                    problems.append(problem)
            i += clients
        conn.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    wall = time.perf_counter() - t0
    lat_ms = np.asarray(lat) * 1e3
    return {"requests": len(lat), "rps": len(lat) / wall, "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "problems": problems}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["forward", "size_agnostic"])
def test_8_clients_get_zero_errors_and_the_in_process_answers(served, kind, model_server):
    server, model = served["servers"][kind], served["models"][kind]
    designs = _designs(64 * 16, seed=len(kind))
    x = designs if kind == "forward" else np.hstack([designs, np.random.default_rng(5).choice(np.arange(2, 21, 2),
                                                                                             size=(len(designs), 2))])
    batches = [x[i * 16:(i + 1) * 16] for i in range(64)]
    expected = [model.predict(b).to_numpy() for b in batches]
    bodies = [json.dumps({"inputs": b.tolist()}).encode() for b in batches]

    def check(j, text):
        got = np.array([[r[c] for c in PROPERTY_COLUMNS] for r in json.loads(text)["predictions"]])
        if got.shape != expected[j].shape or not np.allclose(got, expected[j], rtol=1e-5, atol=1e-6):
            return f"batch {j}: served answers differ from the in-process model"
        return None

    r = _load(server.port, bodies, CLIENTS, SECONDS, check)
    print(f"\n{kind}: {CLIENTS} clients x 16 rows for {SECONDS:g} s: {r['requests']} requests, {r['rps']:.1f}/s, "
          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {len(r['problems'])} errors")
    assert r["requests"] >= CLIENTS
    assert not r["problems"], r["problems"][:5]
    assert model_server.get(server.url + "/ping")[0] == 200
    assert server.proc.poll() is None


@pytest.mark.slow
def test_designer_under_a_small_load_gets_zero_errors(served, model_server):
    server = served["servers"]["designer"]
    cols = ["E11", "E22", "nu12", "nu21", "d1", "d2"]
    bodies = [json.dumps({"dataframe_split": {"columns": cols, "data": [[0.03, 0.03, 0.1, 0.1, 1, 1]]},
                          "params": {"n_candidates": 500, "top_k": 2, "seed": s}}).encode() for s in range(4)]

    def check(j, text):
        out = json.loads(text)["predictions"]
        return None if len(out) == 2 and [r["rank"] for r in out] == [1, 2] else f"request {j}: {out[:1]}"

    r = _load(server.port, bodies, 2, SECONDS, check)
    print(f"\ndesigner: 2 clients for {SECONDS:g} s: {r['requests']} requests, {r['rps']:.2f}/s, "
          f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {len(r['problems'])} errors")
    assert r["requests"] >= 2
    assert not r["problems"], r["problems"][:5]
    assert model_server.get(server.url + "/ping")[0] == 200
