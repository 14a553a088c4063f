"""Serving speed: the served models (`mlflow models serve`, 127.0.0.1) against MLflow's own floor and the
same model called in-process, on the same rows, in one run.

The floor is a trivial pyfunc (it sums its input) served the same way: what MLflow's server costs
by itself (HTTP, JSON parsing, the DataFrame of the answer). For the forward and the size-agnostic
model the run measures, one server at a time (nothing else of ours running):

- sequential requests of 1, 16 and 10,000 rows (p50 latency);
- CLIENTS concurrent clients (default 8) sending 16-row requests for DURATION seconds (default 60):
  throughput, p50 and p99 latency, errors;
- the same model in-process (`mlflow.pyfunc.load_model(uri).predict` on the same rows) and, for
  reference, its Keras model alone (`model.predict`);
- the server's memory (RSS of its process group) after the load;

and a smaller load on the designer (DESIGNER_CLIENTS clients, default 2, for DESIGNER_DURATION
seconds, default 30, one small request each time). It prints the figures and the targets
(reliability issue), as ratios measured in this run:

- 1-row p50 <= 2x the floor's;
- 8 clients x 16 rows: >= 0.7x the floor's requests/s;
- 10,000 rows: <= the floor's time for them + 1.5x the in-process model on the same rows.

Models: stand-ins built the way the pipeline builds them (forward: 4 hidden layers from 500 wide,
symmetrised over all 8 images; size-agnostic: 5 from 512, homogenisation features, the 4 mirror
images; a CVAE generator for the designer), trained 1 epoch on a few thousand FE-labelled cells and
tilings (speed does not depend on accuracy), logged with `deepdram.mlops.pyfuncs.log_model` into a
temporary sqlite store. `--champions` uses the registry's champions instead, when they exist.
`--models DIR` keeps the built .keras files there (and reuses them next time).

Speed depends on the machine's load: the run prints the 1-minute load average before each part;
measure when it is below the core count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TARGET_1ROW = 2.0  # x the floor's p50
TARGET_RPS = 0.7  # x the floor's requests/s
TARGET_BIG = 1.5  # x the in-process time, over the floor's time
BIG = 10_000
SMALL = 16

FLOOR_SCRIPT = '''\
# The floor of MLflow's serving: a trivial pyfunc that sums its input (MLflow model from code).
import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd


class Floor(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=float)
        return pd.DataFrame({"sum": x.reshape(len(x), -1).sum(axis=1)})


mlflow.models.set_model(Floor())
'''


def load() -> float:
    return os.getloadavg()[0]


def say(*a) -> None:
    print(*a, flush=True)


# --- models ---------------------------------------------------------------------------------------


def build_models(folder: Path) -> dict[str, Path]:
    """Stand-in .keras files (forward, size_agnostic, generator) in `folder`; existing ones are reused."""
    from deepdram.learn.configs import CVAEConfig, RegressorConfig
    from deepdram.learn.models import train_cvae, train_regressor
    from deepdram.spaces.lattice.space import LatticeSpace

    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}.keras" for k in ("forward", "size_agnostic", "generator")}
    if all(p.is_file() for p in paths.values()):
        return paths
    space = LatticeSpace()
    t = time.perf_counter()
    cells = np.concatenate([space.sample(600, seed=i, zg=z) for i, z in enumerate((2.5, 3.0, 3.5, 4.0, 4.5))])
    y = np.asarray(space.evaluate(cells).properties)
    fwd, _ = train_regressor(cells.astype(float), y, space=space,
                             cfg=RegressorConfig(hidden_layers=4, first_width=500, symmetrize="all", epochs=1))
    fwd.save(paths["forward"])
    rng = np.random.default_rng(0)
    tiles = cells[rng.choice(len(cells), 600, replace=False)]
    sizes = rng.choice(np.arange(2, 9, 2), size=(len(tiles), 2))
    yt = np.zeros((len(tiles), 4))
    for s in np.unique(sizes, axis=0):
        idx = np.flatnonzero((sizes == s).all(axis=1))
        yt[idx] = np.asarray(space.evaluate(tiles[idx], (int(s[0]), int(s[1]))).properties)
    sa, _ = train_regressor(np.hstack([tiles, sizes]).astype(float), yt, space=space,
                            cfg=RegressorConfig(hidden_layers=5, first_width=512, features="homogenized",
                                                symmetrize="mirrors", epochs=1))
    sa.save(paths["size_agnostic"])
    parts, _ = train_cvae(cells.astype(float), y, None, None, fwd, CVAEConfig(epochs=1))
    parts.generator.save(paths["generator"])
    say(f"built stand-in models in {time.perf_counter() - t:.0f} s ({len(cells)} cells, {len(tiles)} tilings)")
    return paths


def log_all(paths: dict[str, Path], tmp: Path) -> dict[str, str]:
    """Log the floor, forward, size-agnostic and designer models; their model URIs."""
    import mlflow

    from deepdram.mlops import designer, pyfuncs

    mlflow.set_experiment("bench-serving")
    uris = {}
    script = tmp / "floor_model.py"
    script.write_text(FLOOR_SCRIPT)
    with mlflow.start_run():
        uris["floor"] = mlflow.pyfunc.log_model(name="floor", python_model=str(script), pip_requirements=[]).model_uri
    for kind in ("forward", "size_agnostic"):
        with mlflow.start_run():
            uris[kind] = pyfuncs.log_model(kind, paths[kind]).model_uri
    with mlflow.start_run():
        uris["designer"] = designer.log_designer({"generator": paths["generator"], "conditioned": paths["size_agnostic"],
                                                  "forward": paths["forward"]}).model_uri
    return uris


def champion_uris() -> dict[str, str] | None:
    """The registry's champions (forward, size-agnostic, designer), if all exist."""
    from deepdram.mlops import registry

    out = {}
    for kind, name in (("forward", "deepdram-forward"), ("size_agnostic", "deepdram-size-agnostic"),
                       ("designer", "deepdram-designer")):
        try:
            if registry.alias_version(name, "champion") is None:
                return None
        except Exception:  # noqa: BLE001 - no store
            return None
        out[kind] = f"models:/{name}@champion"
    return out


# --- servers and clients ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow models serve` of a model URI on 127.0.0.1, in its own process group."""

    def __init__(self, uri: str, env: dict, log: Path, workers: int | None):
        self.port = free_port()
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "mlflow"]),
               "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port)]
        if workers:
            cmd += ["-w", str(workers)]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        t = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if Client(self.port).get("/ping")[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t > 180:
                raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        self.started_after = time.perf_counter() - t

    def rss_mb(self) -> float:
        import psutil

        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(self.proc.pid, signal.SIGKILL)


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, r.read()

    def post(self, body: bytes) -> tuple[int, bytes]:
        try:
            self.conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            raise


def latency(port: int, body: bytes, n: int, check=None) -> float:
    """p50 seconds of `n` sequential requests (after one warm-up)."""
    c = Client(port)
    status, out = c.post(body)
    if status != 200:
        raise RuntimeError(f"status {status}: {out[:500]!r}")
    if check:
        check(out)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, _ = c.post(body)
        times.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"status {status}")
    return float(np.median(times))


def load_run(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads posting the bodies (round robin) for `seconds`: rps, p50, p99, errors."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work(k: int) -> None:
        c = Client(port)
        i = k
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                status, _ = c.post(bodies[i % len(bodies)])
            except (OSError, http.client.HTTPException):
                status = -1
            lat[k].append(time.perf_counter() - t)
            errors[k] += status != 200
            i += clients

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(clients)]
    for th in threads:
        th.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(v) for v in lat]) if any(lat) else np.zeros(1)
    return {"requests": int(all_lat.size), "rps": all_lat.size / wall, "p50": float(np.percentile(all_lat, 50)),
            "p99": float(np.percentile(all_lat, 99)), "errors": int(sum(errors)), "seconds": wall}


# --- the run ---------------------------------------------------------------------------------------


def inputs_body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": rows.tolist()}).encode()


def in_process(uri: str, rows: dict[int, np.ndarray], reps: dict[int, int]) -> tuple[dict, dict]:
    """p50 seconds of the pyfunc in-process and of its Keras model alone (model.predict), per row count."""
    import mlflow.pyfunc

    m = mlflow.pyfunc.load_model(uri)
    keras_model = getattr(m.unwrap_python_model(), "model", None)
    out, raw = {}, {}
    for n, x in rows.items():
        m.predict(x)
        ts = []
        for _ in range(reps[n]):
            t = time.perf_counter()
            m.predict(x)
            ts.append(time.perf_counter() - t)
        out[n] = float(np.median(ts))
        if keras_model is not None:
            x32 = x.astype(np.float32)
            keras_model.predict(x32, batch_size=8192, verbose=0)
            ts = []
            for _ in range(reps[n]):
                t = time.perf_counter()
                keras_model.predict(x32, batch_size=8192, verbose=0)
                ts.append(time.perf_counter() - t)
            raw[n] = float(np.median(ts))
    return out, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of each 8-client load (default 60)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the load (default 8)")
    ap.add_argument("--designer-duration", type=float, default=30.0, help="seconds of the designer's load (30)")
    ap.add_argument("--designer-clients", type=int, default=2, help="concurrent designer clients (default 2)")
    ap.add_argument("--workers", type=int, default=None, help="uvicorn workers (default: MLflow's, 1)")
    ap.add_argument("--reps", type=int, default=100, help="sequential requests per small latency (default 100)")
    ap.add_argument("--big-reps", type=int, default=7, help="sequential 10,000-row requests (default 7)")
    ap.add_argument("--models", type=Path, default=None, help="folder of the stand-in .keras files (kept)")
    ap.add_argument("--champions", action="store_true", help="use the registry's champions when they exist")
    ap.add_argument("--only", nargs="*", default=None, help="subset of: floor forward size_agnostic designer")
    args = ap.parse_args()

    from deepdram.mlops import tracking
    from deepdram.spaces.lattice.space import LatticeSpace

    say(f"load average at start: {load():.2f} (cores: {os.cpu_count()})")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    source = "stand-ins"
    champions = champion_uris() if args.champions else None
    store_uri = tracking.configure()
    if champions is None:
        store_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = store_uri
        tracking.reset()
        tracking.configure()
        paths = build_models(args.models or tmp / "models")
        uris = log_all(paths, tmp)
    else:
        source = "registry champions"
        import mlflow

        script = tmp / "floor_model.py"
        script.write_text(FLOOR_SCRIPT)
        mlflow.set_experiment("bench-serving")
        with mlflow.start_run():
            floor = mlflow.pyfunc.log_model(name="floor", python_model=str(script), pip_requirements=[]).model_uri
        uris = {"floor": floor, **champions}
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("MLFLOW_REGISTRY_URI", None)

    space = LatticeSpace()
    designs = np.concatenate([space.sample(BIG // 5, seed=i, zg=z) for i, z in enumerate((2.5, 3.0, 3.5, 4.0, 4.5))])
    designs = designs[np.random.default_rng(1).permutation(len(designs))].astype(int)
    sizes = np.random.default_rng(2).choice(np.arange(2, 21, 2), size=(len(designs), 2))
    rows = {"forward": designs, "size_agnostic": np.hstack([designs, sizes])}
    counts = (1, SMALL, BIG)
    wanted = set(args.only or ("floor", "forward", "size_agnostic", "designer"))
    results: dict[str, dict] = {}

    def served(kind: str, data: dict[str, np.ndarray]) -> dict:
        say(f"\n[{kind}] serving {uris[kind]} (load {load():.2f})")
        server = Server(uris[kind], env, tmp / f"{kind}.log", args.workers)
        try:
            r = {"start_s": server.started_after, "rss_idle_mb": server.rss_mb()}
            for name, x in data.items():
                for n in counts:
                    body = inputs_body(x[:n])
                    reps = args.big_reps if n == BIG else args.reps
                    r[(name, n)] = latency(server.port, body, reps)
                say(f"  {name}: p50 1 row {r[(name, 1)] * 1e3:.1f} ms, {SMALL} rows {r[(name, SMALL)] * 1e3:.1f} ms, "
                    f"{BIG:,} rows {r[(name, BIG)]:.3f} s (load {load():.2f})")
            x = next(iter(data.values()))
            bodies = [inputs_body(x[i * SMALL:(i + 1) * SMALL]) for i in range(64)]
            r["load"] = load_run(server.port, bodies, args.clients, args.duration)
            lr = r["load"]
            say(f"  {args.clients} clients x {SMALL} rows for {lr['seconds']:.0f} s: {lr['rps']:.1f} requests/s, "
                f"p50 {lr['p50'] * 1e3:.1f} ms, p99 {lr['p99'] * 1e3:.1f} ms, {lr['errors']} errors "
                f"(load {load():.2f})")
            r["rss_mb"] = server.rss_mb()
            say(f"  RSS {r['rss_idle_mb']:.0f} MB after start-up, {r['rss_mb']:.0f} MB after the load")
        finally:
            server.stop()
        return r

    if "floor" in wanted:
        results["floor"] = served("floor", rows)
    for kind in ("forward", "size_agnostic"):
        if kind in wanted:
            results[kind] = served(kind, {kind: rows[kind]})
            say(f"  in-process (load {load():.2f}) ...")
            ip, raw = in_process(uris[kind], {n: rows[kind][:n] for n in counts},
                                 {1: args.reps, SMALL: args.reps, BIG: args.big_reps})
            results[kind]["in_process"], results[kind]["keras"] = ip, raw
            say("  in-process pyfunc p50: " + ", ".join(f"{n:,} rows {ip[n] * 1e3:.1f} ms" for n in counts))
            if raw:
                say("  Keras model.predict p50: " + ", ".join(f"{n:,} rows {raw[n] * 1e3:.1f} ms" for n in counts))

    if "designer" in wanted:
        say(f"\n[designer] serving {uris['designer']} (load {load():.2f})")
        server = Server(uris["designer"], env, tmp / "designer.log", args.workers)
        try:
            body = json.dumps({"dataframe_split": {"columns": ["E11", "E22", "nu12", "nu21", "d1", "d2"],
                                                   "data": [[0.03, 0.03, 0.1, 0.1, 1, 1]]},
                               "params": {"n_candidates": 2000, "top_k": 5}}).encode()
            one = latency(server.port, body, 5)
            lr = load_run(server.port, [body], args.designer_clients, args.designer_duration)
            results["designer"] = {"p50_alone": one, "load": lr, "rss_mb": server.rss_mb()}
            say(f"  one request (2,000 candidates, top 5, a unit cell): p50 {one:.2f} s alone")
            say(f"  {args.designer_clients} clients for {lr['seconds']:.0f} s: {lr['rps']:.2f} requests/s, p50 "
                f"{lr['p50']:.2f} s, p99 {lr['p99']:.2f} s, {lr['errors']} errors; RSS {results['designer']['rss_mb']:.0f} MB "
                f"(load {load():.2f})")
        finally:
            server.stop()

    # --- summary
    say(f"\nmodels: {source}; workers: {args.workers or 'MLflow default (1)'}; load average now {load():.2f}")
    ok = True
    if "floor" in results:
        f = results["floor"]
        say(f"{'':16}{'1 row p50':>12}{'16 rows p50':>13}{'10k rows p50':>14}{'8x16 req/s':>12}{'p50':>9}{'p99':>9}"
            f"{'errors':>8}")
        rows_out = [("floor", f, "forward")]
        rows_out += [(k, results[k], k) for k in ("forward", "size_agnostic") if k in results]
        for name, r, key in rows_out:
            lr = r["load"]
            say(f"{name:16}{r[(key, 1)] * 1e3:>10.1f}ms{r[(key, SMALL)] * 1e3:>11.1f}ms{r[(key, BIG)]:>13.3f}s"
                f"{lr['rps']:>12.1f}{lr['p50'] * 1e3:>7.1f}ms{lr['p99'] * 1e3:>7.1f}ms{lr['errors']:>8}")
            if "in_process" in r:
                ip = r["in_process"]
                say(f"{'  in-process':16}{ip[1] * 1e3:>10.1f}ms{ip[SMALL] * 1e3:>11.1f}ms{ip[BIG]:>13.3f}s")
        for kind in ("forward", "size_agnostic"):
            if kind not in results:
                continue
            r = results[kind]
            checks = [
                ("1-row p50 <= 2x the floor", r[(kind, 1)], TARGET_1ROW * f[(kind, 1)],
                 f"{r[(kind, 1)] * 1e3:.1f} ms vs {TARGET_1ROW * f[(kind, 1)] * 1e3:.1f} ms "
                 f"({r[(kind, 1)] / f[(kind, 1)]:.2f}x)"),
                (f"{args.clients}x{SMALL} rows >= 0.7x the floor's req/s", -r["load"]["rps"], -TARGET_RPS * f["load"]["rps"],
                 f"{r['load']['rps']:.1f} vs {TARGET_RPS * f['load']['rps']:.1f} req/s "
                 f"({r['load']['rps'] / f['load']['rps']:.2f}x)"),
                ("10k rows <= floor + 1.5x in-process", r[(kind, BIG)],
                 f[(kind, BIG)] + TARGET_BIG * r["in_process"][BIG],
                 f"{r[(kind, BIG)]:.3f} s vs {f[(kind, BIG)]:.3f} + 1.5 x {r['in_process'][BIG]:.3f} = "
                 f"{f[(kind, BIG)] + TARGET_BIG * r['in_process'][BIG]:.3f} s"),
                ("zero errors under load", r["load"]["errors"], 0, f"{r['load']['errors']} errors"),
            ]
            for label, got, bound, text in checks:
                passed = got <= bound
                ok &= passed
                say(f"{kind:14} {label:40} {text:60} {'PASS' if passed else 'FAIL'}")
    if "designer" in results:
        d = results["designer"]
        passed = d["load"]["errors"] == 0
        ok &= passed
        say(f"designer       zero errors under load ({args.designer_clients} clients)    "
            f"{d['load']['errors']} errors, {d['load']['rps']:.2f} req/s, p50 {d['load']['p50']:.2f} s, "
            f"p99 {d['load']['p99']:.2f} s {'PASS' if passed else 'FAIL'}")
    if load() > (os.cpu_count() or 1) * 1.25:
        say(f"note: load average {load():.2f} on {os.cpu_count()} cores: the figures are inflated by other work")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
