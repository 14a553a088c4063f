"""Shared fixtures of the test suite (test modules never import each other; what several need is here).

- MLflow stores: `mlflow_store` (one temporary sqlite store per test module) and
  `mlflow_test_store` (one per test), both yielding the store's folder; `sqlite_store(root)` is the
  context manager behind them, for fixtures that build their own store.
- Tiny stand-in Keras models: `tiny_keras(path, n_in, n_out, ...)` and `tiny_surrogates(folder)`
  (the design procedure's generator, conditioned and forward models, by role).
- Real `mlflow models serve` processes: `model_server` (the `Server` class, `get`, `post`, `env`).
- Hyperparameter studies: `tuning_kit` (tiny FE-labelled cells, tiny params, a project root for
  `deepdram tune` subprocesses and their environment).

Heavy libraries (keras, mlflow, pandas) are imported inside the fixtures, so collecting tests that
use none of them stays cheap.
"""

from __future__ import annotations

import contextlib
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
from types import SimpleNamespace

import numpy as np
import pytest

# --- parallel runs (pytest-xdist, `make test`) -------------------------------------------------------

# Modules that build on each other's work (the session's tiny pipeline, tests/jobs/conftest.py):
# one xdist worker runs them, in this (their files') order.
WORKER_GROUPS = {"tiny_pipeline": ("tests/jobs/test_composite_e2e.py", "tests/jobs/test_pipeline_e2e.py",
                                   "tests/jobs/test_pipeline_faults.py")}
_GROUP_OF = {module: group for group, modules in WORKER_GROUPS.items() for module in modules}


def _group(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return _GROUP_OF.get(module, module)


def pytest_xdist_make_scheduler(config, log):
    """One worker runs each module (its module fixtures, servers included, start once) and each
    group of WORKER_GROUPS, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """In an xdist worker: the groups first, then modules with slow tests, then the rest (stable),
    so the longest work starts at once (`--no-loadscope-reorder` keeps this order)."""
    if not hasattr(config, "workerinput"):
        return  # a serial run keeps the files' order
    rank: dict[str, int] = {}
    for item in items:
        group = _group(item.nodeid)
        slow = item.get_closest_marker("slow") is not None
        rank[group] = min(rank.get(group, 2), 0 if group in WORKER_GROUPS else 1 if slow else 2)
    items.sort(key=lambda i: rank[_group(i.nodeid)])


# --- MLflow stores ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_store(root: Path):
    """MLflow (tracking and registry) on a fresh sqlite store in `root`; yields its URI.

    MLflow keeps the URI in globals and exported variables: both are reset on the way out, and
    runs left open are ended."""
    from deepdram.mlops import tracking

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(root / 'mlflow.db').as_posix()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        tracking.reset()
        tracking.configure()
        try:
            yield uri
        finally:
            import mlflow

            while mlflow.active_run() is not None:
                mlflow.end_run()
            tracking.reset()


@pytest.fixture(scope="session")
def sqlite_store():
    """`sqlite_store(root)`: a context manager pointing MLflow at a fresh sqlite store in root."""
    return _sqlite_store


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A temporary sqlite MLflow store for the whole test module; yields its folder."""
    root = tmp_path_factory.mktemp("mlflow-store")
    with _sqlite_store(root):
        yield root


@pytest.fixture()
def mlflow_test_store(tmp_path):
    """A temporary sqlite MLflow store for one test (in its tmp_path); yields the folder."""
    with _sqlite_store(tmp_path):
        yield tmp_path


# --- tiny stand-in Keras models ------------------------------------------------------------------------


def _tiny_keras(path: Path, n_in: int, n_out: int, *, hidden: int | None = 8, activation: str = "relu",
                output_activation: str | None = None, seed: int = 0) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,))
    h = inp if hidden is None else keras.layers.Dense(hidden, activation=activation)(inp)
    keras.Model(inp, keras.layers.Dense(n_out, activation=output_activation)(h)).save(path)
    return Path(path)


@pytest.fixture(scope="session")
def tiny_keras():
    """`tiny_keras(path, n_in, n_out, hidden=8, activation="relu", output_activation=None, seed=0)`:
    saves a tiny Dense model (n_in -> hidden -> n_out; hidden=None: one layer) as a .keras file."""
    return _tiny_keras


def _tiny_surrogates(folder: Path, latent: int = 8) -> dict[str, Path]:
    """Generator (4 + latent) -> 42 (beams on with p ~ 0.85, varying with z), and linear regressors
    conditioned (44 -> 4) and forward (42 -> 4), keyed by their role in the design procedure."""
    import keras

    keras.utils.set_random_seed(7)
    folder = Path(folder)
    paths = {}
    inp = keras.Input((4 + latent,))
    gen = keras.layers.Dense(42, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(0, 0.9),
                             bias_initializer=keras.initializers.Constant(1.8))(inp)
    paths["generator"] = folder / "generator.keras"
    keras.Model(inp, gen).save(paths["generator"])
    for role, n_in in (("conditioned", 44), ("forward", 42)):
        inp = keras.Input((n_in,))
        out = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(0, 0.01),
                                 bias_initializer=keras.initializers.Constant(0.05))(inp)
        paths[role] = folder / f"{role}.keras"
        keras.Model(inp, out).save(paths[role])
    return paths


@pytest.fixture(scope="session")
def tiny_surrogates():
    """`tiny_surrogates(folder, latent=8)`: the .keras files of tiny stand-ins for the lattice
    design procedure's models, {"generator", "conditioned", "forward": path}."""
    return _tiny_surrogates


# --- real `mlflow models serve` processes ---------------------------------------------------------------

START_TIMEOUT = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int, wait: float = 10.0) -> bool:
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


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def _post(url: str, payload) -> tuple[int, dict]:
    """POST a JSON payload (or raw bytes) to url/invocations; (status, decoded body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"message": body.decode(errors="replace")}


def _server_env(uri: str) -> dict:
    """Environment of a `mlflow models serve` process on the store `uri`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    # `mlflow models serve` runs `bash -c "exec uvicorn ..."`: uvicorn must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class _Server:
    """`mlflow models serve` of a model URI in its own process group, on a free local port."""

    def __init__(self, model_uri: str, log: Path, env: dict):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
        cmd += ["models", "serve", "-m", model_uri, "--env-manager", "local",
                "-h", "127.0.0.1", "-p", str(self.port), "-w", "1"]
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.ready_after: float | None = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait(self, timeout: float = START_TIMEOUT) -> float:
        """Seconds until /ping answers 200 (AssertionError with the log if it exits or times out)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if _get(self.url + "/ping")[0] == 200:
                    self.ready_after = time.monotonic() - self.started
                    return self.ready_after
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group (SIGKILL after 20 s) and wait until the whole group is gone."""
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

    def port_released(self, wait: float = 10.0) -> bool:
        """True once nothing listens on the server's port any more."""
        return _port_is_free(self.port, wait)


@pytest.fixture(scope="session")
def model_server():
    """Real `mlflow models serve` processes: `Server(model_uri, log_path, env)` (`.wait()`, `.stop()`,
    `.url`, `.proc`, `.port_released()`), `env(uri)` (the server's environment on store `uri`),
    `get(url)` -> (status, text), `post(url, payload)` -> (status, JSON body) of url/invocations."""
    return SimpleNamespace(Server=_Server, env=_server_env, get=_get, post=_post)


# --- hyperparameter studies -------------------------------------------------------------------------------

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
TINY_RESAMPLE = {"under": {"e_decimals": 1, "nu_decimals": 1, "max_per_group": 3},
                 "over": {"base_size": 1000, "rare_quantile": 0.05, "factor": 1, "k_neighbors": 3, "noise_swaps": 2}}


def _tiny_cells(n_per_zg: int = 240, seed: int = 0):
    """FE-labelled random cells of every Z_g (the real solver), as the cells table."""
    import pandas as pd

    from deepdram.spaces.lattice.datasets import cells_frame
    from deepdram.spaces.lattice.fem import cell_properties
    from deepdram.spaces.lattice.geometry import sample_designs

    parts = []
    for i, zg in enumerate((2.5, 3.0, 3.5, 4.0, 4.5)):
        d = sample_designs(zg, n_per_zg, seed + i)
        parts.append(cells_frame(d, np.full(len(d), zg), cell_properties(d)))
    return pd.concat(parts, ignore_index=True)


def _tiny_params(trials: int = 4, **over) -> dict:
    """The project's params.yaml (a whole, valid file) with a tiny `tune_forward` study (`over`
    replaces its keys) and a tiny resampling."""
    import yaml

    from deepdram.paths import PACKAGE_DIR

    params = yaml.safe_load((PACKAGE_DIR.parent / "params.yaml").read_text())
    sec = {"backend": "optuna", "storage": None, "trials": trials, "seed": 0, "folds": 3, "rows": 300,
           "fit": dict(TINY_FIT), "pruner": {"startup_trials": 2, "warmup_epochs": 1},
           "heartbeat": {"interval": 1, "grace": 2}, "data": {"pool_cells": 1200},
           "space": dict(TINY_SPACE), "paper": dict(TINY_PAPER)}
    sec.update(over)
    params["tune_forward"] = sec
    params["resample"] = {**params["resample"], **{k: dict(v) for k, v in TINY_RESAMPLE.items()}}
    return params


def _make_root(root: Path, cells, params: dict) -> Path:
    """A project root with a sharded cells table, a train split, params.yaml and dvc.yaml."""
    import yaml

    from deepdram.data.tables import write_table

    cells_dir = root / "outputs" / "datasets" / "cells.parquet"
    cells_dir.mkdir(parents=True)
    half = len(cells) // 2
    write_table(cells.iloc[:half], cells_dir / "part-00000.parquet")
    write_table(cells.iloc[half:], cells_dir / "part-00001.parquet")
    (root / "outputs" / "datasets" / "splits").mkdir(parents=True)
    write_table(cells, root / "outputs" / "datasets" / "splits" / "train.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


def _cli_env(root: Path, tracking_uri: str) -> dict:
    """Environment of a `deepdram` subprocess in project `root` logging to MLflow at `tracking_uri`."""
    env = dict(os.environ)
    env.update(DEEPDRAM_ROOT=str(root), MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


def _tune_config(params: dict, model: str, work_dir: Path):
    """The checked TuneConfig of `tune_<model>` in a whole params mapping (as the stage builds it)."""
    from deepdram import params as P
    from deepdram.learn.search.config import tune_config

    return tune_config(getattr(P.parse(params), f"tune_{model}"), model, work_dir)


@pytest.fixture(scope="session")
def tuning_kit():
    """Pieces of tiny hyperparameter studies: `cells(n_per_zg=240, seed=0)` (FE-labelled cells table),
    `params(trials=4, **tune_forward_overrides)` (a whole params mapping), `config(params, model,
    work_dir)` (its TuneConfig), `project(root, cells, params)` (a project root for `deepdram tune`),
    `env(root, tracking_uri)` and `tune` (the subprocess command); `fit`, `space`, `paper` and
    `resample` are the tiny study's settings."""
    return SimpleNamespace(cells=_tiny_cells, params=_tiny_params, config=_tune_config, project=_make_root,
                           env=_cli_env, tune=[sys.executable, "-m", "deepdram.cli.main", "tune"],
                           fit=dict(TINY_FIT), space=dict(TINY_SPACE), paper=dict(TINY_PAPER),
                           resample={k: dict(v) for k, v in TINY_RESAMPLE.items()})


def copy_worktree(dst: Path) -> Path:
    """Copy the working tree's tracked and untracked-unignored files to dst (no .git)."""
    import shutil

    from deepdram.paths import REPO_ROOT

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if (REPO_ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / f, dst / f)
    return dst


@pytest.fixture(scope="session")
def worktree_copier():
    """`copy_worktree`: dst -> dst holding the working tree's files, for tests that run DVC on a copy."""
    return copy_worktree


@pytest.fixture(scope="session")
def repo_copy():
    """A function (dst, tiny, message) -> dst: a git repo at dst holding the working tree's tracked and
    untracked-unignored files, with the sections of `tiny` merged into its params.yaml and committed.
    The end-to-end tests run the real `dvc repro` in such a copy."""

    import yaml


    def copy(dst: Path, tiny: dict, message: str) -> Path:
        copy_worktree(dst)
        params = yaml.safe_load((dst / "params.yaml").read_text())
        for sec, values in tiny.items():
            params[sec].update(values)
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message]):
            subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
        return dst

    return copy

