"""MLflow tracking at the paper's scale: one study of >= 2,000 trials, every trial a nested MLflow run.

The paper searched 10,368 configurations of one model; the default profile runs 20 trials per
study. This runs a study of `--trials` cheap trials (60 FE-labelled cells, 2-fold CV, 1 epoch, the
smallest networks) through the real tuning code (`deepdram.learn.search.study.tune` with a
TuneConfig), in `--workers` processes that share one Optuna study in a throw-away PostgreSQL
server, as `deepdram tune MODEL --storage postgresql://... --trials N --worker W` does. MLflow is
the default local sqlite store (`--mlflow sqlite`), or a database on the same PostgreSQL server
(`--mlflow postgresql`: the store a team shares beyond one machine).

It prints the trials, the wall time, the MLflow logging overhead per trial as the TrialLogger
measures it (create the child run, one log_batch, terminate) and its total, the time of
MlflowClient.search_runs over all the study's child runs (paginated), the store's size on disk,
and PASS/FAIL lines against these targets:

* every trial is exactly one nested child run of the study's parent run, with the study's tags;
* MLflow logging overhead < 100 ms per trial (mean), and it does not grow with the store (mean of
  the last 10 % of trials < 2 x that of the first 10 %);
* search_runs over all the children < 30 s;
* the MLflow database grows by < 50 kB per trial.

    python benchmarks/bench_mlflow_scale.py [--trials 2000] [--workers 2] [--mlflow sqlite|postgresql]
                                            [--sqlite-wal] [--keep DIR] [--graph]

Keras runs eagerly here (`tf.config.run_functions_eagerly`; `--graph` turns it off): with one
step per epoch, tracing the train function would cost more than training. The deepdram code path
is the same. Needs the PostgreSQL server binaries (`scripts/setup_services.sh` installs them).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROWS, FOLDS, EPOCHS = 60, 2, 1
# Small networks; the learning rate is continuous, so (almost) every trial is a new configuration
# that trains, rather than a repeat answered from the study.
SPACE = {
    "hidden_layers": {"low": 1, "high": 2},
    "first_width": [4, 8],
    "activation": ["relu", "tanh"],
    "optimizer": ["adam", "rmsprop"],
    "learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
}
PAPER = {"hidden_layers": 1, "first_width": 8, "activation": "relu", "optimizer": "adam", "learning_rate": 0.003}
FIXED = {"scaling": "minmax", "shape": "rectangle", "output_activation": "none", "batch_norm": False}
TARGET_OVERHEAD_S, TARGET_GROWTH, TARGET_SEARCH_S, TARGET_KB_PER_TRIAL = 0.100, 2.0, 30.0, 50.0


def tune_config(work_dir: Path, storage: str, trials: int):
    """The study's TuneConfig (forward model, 2 folds, 1 epoch, 60 rows); pruning from fold 1 on."""
    from deepdram.learn.search.config import TuneConfig

    return TuneConfig(model="forward", backend="optuna", storage=storage, trials=trials, seed=0, folds=FOLDS,
                      rows=ROWS, fit={"epochs": EPOCHS, "batch_size": 64}, space=dict(SPACE), paper=dict(PAPER),
                      pruner={"startup_trials": 5, "warmup_epochs": 0}, heartbeat={"interval": 10, "grace": 30},
                      fixed=dict(FIXED), work_dir=work_dir)


def tiny_cells(path: Path) -> None:
    """ROWS FE-labelled random cells (12 per Z_g), saved as x, y."""
    import numpy as np

    from deepdram.spaces.lattice.fem import cell_properties
    from deepdram.spaces.lattice.geometry import sample_designs

    zgs = (2.5, 3.0, 3.5, 4.0, 4.5)
    x = np.concatenate([sample_designs(zg, ROWS // len(zgs), i) for i, zg in enumerate(zgs)])
    np.savez(path, x=x.astype(np.float32), y=np.asarray(cell_properties(x), np.float32))


# --- a throw-away PostgreSQL server ---------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """initdb + pg_ctl in a temporary folder on a free port of 127.0.0.1 (as `postgres` when root)."""

    def __init__(self, databases=("optuna", "mlflow")):
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            sys.exit("bench_mlflow_scale: the PostgreSQL server is not installed (scripts/setup_services.sh)")
        self.base = Path(tempfile.mkdtemp(prefix="deepdram-pg-"))
        self.data = self.base / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            os.chmod(self.base, 0o777)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        subprocess.run([*self.as_user, initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t",
                        "60", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.base} -c max_connections=100", "start"],
                       check=True, capture_output=True)
        for db in databases:
            self.sql(f"CREATE DATABASE {db}", autocommit=True)

    def url(self, db: str, driver: bool = False) -> str:
        scheme = "postgresql+psycopg2" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, query: str, db: str = "postgres", autocommit: bool = False):
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db)
        con.autocommit = autocommit
        try:
            with con.cursor() as cur:
                cur.execute(query)
                return cur.fetchall() if cur.description else None
        finally:
            con.close()

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


# --- one worker process ---------------------------------------------------------------------------------


def worker(spec: dict) -> int:
    """Run `spec['trials']` trials of the shared study (as `deepdram tune ... --worker W` does)."""
    import numpy as np

    if spec["eager"]:
        import tensorflow as tf

        tf.config.run_functions_eagerly(True)
    import warnings

    warnings.filterwarnings("ignore", message=".*run_functions_eagerly.*")
    warnings.filterwarnings("ignore", message=".*experimental_run_functions_eagerly.*")
    from deepdram.learn.search import study as study_module
    from deepdram.spaces.lattice.space import LatticeSpace

    loggers = []

    class Recording(study_module.TrialLogger):  # the real logger; keeps its per-trial overhead list
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            loggers.append(self)

    study_module.TrialLogger = Recording
    timing = {"artifacts_s": 0.0}
    artifacts = study_module.study_artifacts

    def timed_artifacts(*a, **k):  # the end-of-study plots and tables
        t = time.perf_counter()
        try:
            return artifacts(*a, **k)
        finally:
            timing["artifacts_s"] += time.perf_counter() - t

    study_module.study_artifacts = timed_artifacts
    d = np.load(spec["data"])
    cfg = tune_config(Path(spec["work_dir"]), spec["storage"], spec["total"])
    t0 = time.perf_counter()
    out = study_module.tune(cfg, {"": (d["x"], d["y"])}, n_trials=spec["trials"], worker=spec["worker"],
                            progress=False, space=LatticeSpace())
    out["wall_s"] = time.perf_counter() - t0
    out.update(timing)
    out["overhead_s"] = [float(v) for lg in loggers for v in lg.overhead]
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# --- the benchmark ----------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def _store_bytes(kind: str, root: Path, pg: Postgres) -> int:
    """Size of the MLflow database: the sqlite file (and its WAL), or the PostgreSQL database."""
    if kind == "sqlite":
        return sum(p.stat().st_size for p in root.glob("mlflow.db*") if p.is_file())
    return int(pg.sql("SELECT pg_database_size('mlflow')")[0][0])


def _children(client, exp_id: str, parent_id: str, page: int = 1000) -> tuple[list, int]:
    """All child runs of `parent_id`, by pages of `page` (MlflowClient.search_runs); (runs, pages)."""
    runs, token, pages = [], None, 0
    while True:
        res = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=page,
                                 page_token=token)
        runs += list(res)
        pages += 1
        token = res.token
        if not token:
            return runs, pages


def _progress(pg: Postgres, total: int, t0: float, procs) -> None:
    """Print the finished-trial count every 30 s until the workers exit."""
    last = 0.0
    while any(p.poll() is None for p in procs):
        time.sleep(2)
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            import psycopg2

            try:
                n = pg.sql("SELECT count(*) FROM trials WHERE state <> 'RUNNING'", db="optuna")[0][0]
            except psycopg2.Error:  # tables not made yet
                n = 0
            print(f"  {n:5d}/{total} trials finished ({time.monotonic() - t0:6.0f} s)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=2000, help="trials of the study, all workers together")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mlflow", choices=("sqlite", "postgresql"), default="sqlite", help="MLflow backend store")
    ap.add_argument("--keep", type=Path, help="keep the MLflow store (and the study's outputs) in this new folder")
    ap.add_argument("--graph", action="store_true", help="Keras in graph mode (traces the train step every fit)")
    ap.add_argument("--sqlite-wal", action="store_true",
                    help="put the sqlite MLflow store in WAL journal mode first (a setting of the database file)")
    ap.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_spec:
        return worker(json.loads(args.worker_spec))
    if args.trials < 1 or args.workers < 1:
        ap.error("--trials and --workers must be >= 1")

    from deepdram.learn.search.config import EXPERIMENT
    from deepdram.learn.search.trials import TAG_ROLE, TAG_STATE, TAG_STUDY, TAG_TRIAL
    from deepdram.mlops import tracking

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        root = args.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="deepdram-scale-"))
    pg = Postgres(("optuna", "mlflow") if args.mlflow == "postgresql" else ("optuna",))
    try:
        uri = pg.url("mlflow", driver=True) if args.mlflow == "postgresql" else f"sqlite:///{root / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
        # Create the store's tables and the experiment once, before the workers race to.
        tracking.reset()
        tracking.configure()
        c = tracking.client()
        if args.mlflow == "postgresql" and c.get_experiment_by_name(EXPERIMENT) is None:
            c.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts" / EXPERIMENT).as_uri())
        exp_id = tracking.experiment(EXPERIMENT)
        if args.sqlite_wal and args.mlflow == "sqlite":
            import sqlite3

            with sqlite3.connect(root / "mlflow.db") as con:
                assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        tiny_cells(root / "cells.npz")
        empty_bytes = _store_bytes(args.mlflow, root, pg)  # the store before the study: tables, experiment
        storage = pg.url("optuna")
        cfg = tune_config(root / "tuning", storage, args.trials)
        shares = [args.trials // args.workers + (w < args.trials % args.workers) for w in range(args.workers)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
        print(f"study {cfg.study_name}: {args.trials} trials ({ROWS} rows, {FOLDS} folds, {EPOCHS} epoch), "
              f"{args.workers} workers on Optuna/PostgreSQL; MLflow store: {args.mlflow}"
              f"{' (WAL)' if args.sqlite_wal and args.mlflow == 'sqlite' else ''}", flush=True)
        t0 = time.monotonic()
        procs, results = [], []
        for w, n in enumerate(shares):
            spec = {"worker": w + 1, "trials": n, "total": args.trials, "eager": not args.graph,
                    "data": str(root / "cells.npz"), "work_dir": str(root / "tuning"), "storage": storage,
                    "result": str(root / f"worker-{w + 1}.json")}
            results.append(Path(spec["result"]))
            with open(root / f"worker-{w + 1}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, __file__, "--worker-spec", json.dumps(spec)], env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
            time.sleep(3)  # the first worker creates the study's tables; the others join it
        _progress(pg, args.trials, t0, procs)
        wall = time.monotonic() - t0
        bad = [i + 1 for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            for w in bad:
                print(f"worker {w} failed:\n" + (root / f"worker-{w}.log").read_text()[-3000:])
            return 1
        outs = [json.loads(r.read_text()) for r in results]
        over = [v for o in outs for v in o["overhead_s"]]

        # --- the records ------------------------------------------------------------------------------
        tracking.reset()
        tracking.configure()
        c = tracking.client()
        parents = c.search_runs([exp_id], f"tags.`{TAG_STUDY}` = '{cfg.study_name}' and tags.`{TAG_ROLE}` = 'parent'")
        parent_id = outs[0]["parent_run_id"]
        t1 = time.perf_counter()
        children, pages = _children(c, exp_id, parent_id)
        search_s = time.perf_counter() - t1
        import optuna

        trials = optuna.load_study(study_name=cfg.study_name, storage=pg.url("optuna", driver=True)).get_trials()
        by_number: dict[int, list] = {}
        for r in children:
            by_number.setdefault(int(r.data.tags.get(TAG_TRIAL, -1)), []).append(r)
        states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
        tags_ok = all(len(by_number.get(t.number, ())) == 1
                      and by_number[t.number][0].data.tags.get(TAG_STUDY) == cfg.study_name
                      and by_number[t.number][0].data.tags.get(TAG_ROLE) == "trial"
                      and by_number[t.number][0].data.tags.get(TAG_STATE) == states.get(t.state.name)
                      and by_number[t.number][0].info.run_name == f"trial-{t.number:04d}" for t in trials)
        nested_ok = (len(parents) == 1 and parents[0].info.run_id == parent_id and len(trials) == args.trials
                     and len(children) == len(trials) and sorted(by_number) == [t.number for t in trials] and tags_ok
                     and all(o["parent_run_id"] == parent_id for o in outs))
        count = {s: sum(t.state.name == s for t in trials) for s in states}
        db_bytes = _store_bytes(args.mlflow, root, pg)
        art_bytes = _size(root / "artifacts")
        optuna_bytes = int(pg.sql("SELECT pg_database_size('optuna')")[0][0])

        # --- report ---------------------------------------------------------------------------------------
        n = len(over)
        mean = sum(over) / n
        tenth = max(1, n // 10)
        early, late = sorted(over[:tenth]), sorted(over[-tenth:])
        growth = (sum(late) / len(late)) / (sum(early) / len(early))
        p95 = sorted(over)[min(n - 1, math.ceil(0.95 * n) - 1)]
        kb_per_trial = (db_bytes - empty_bytes) / 1024 / max(1, len(trials))
        print(f"trials: {len(trials)} ({count['COMPLETE']} complete, {count['PRUNED']} pruned, {count['FAIL']} failed) "
              f"by {args.workers} workers; {len(children)} child runs of parent run {parent_id}")
        print(f"wall time: {wall:.0f} s ({wall / len(trials) * args.workers:.2f} s per trial per worker)")
        print(f"MLflow logging overhead: {mean * 1000:.1f} ms per trial (mean; p95 {p95 * 1000:.1f} ms; first 10 % "
              f"{sum(early) / len(early) * 1000:.1f} ms, last 10 % {sum(late) / len(late) * 1000:.1f} ms); "
              f"total {sum(over):.1f} s ({sum(over) / (wall * args.workers):.1%} of the workers' time)")
        print(f"search_runs of all {len(children)} children: {search_s:.2f} s ({pages} pages of <= 1000)")
        print("end of study (plots, trials and leaderboard tables), per worker: "
              + ", ".join(f"{o['artifacts_s']:.1f} s" for o in outs))
        print(f"store ({args.mlflow}): {db_bytes / 2**20:.1f} MiB database ({empty_bytes / 2**20:.1f} MiB before the "
              f"study: {kb_per_trial:.1f} kB per trial) + {art_bytes / 2**20:.1f} MiB artifacts (the parent's); "
              f"Optuna storage {optuna_bytes / 2**20:.1f} MiB")
        checks = [
            ("every trial is one nested child run with the study's tags and name", nested_ok),
            (f"MLflow overhead {mean * 1000:.1f} ms per trial < {TARGET_OVERHEAD_S * 1000:.0f} ms", mean < TARGET_OVERHEAD_S),
            (f"overhead growth {growth:.2f}x (last / first 10 % of trials) < {TARGET_GROWTH:.0f}x", growth < TARGET_GROWTH),
            (f"search_runs of all children {search_s:.2f} s < {TARGET_SEARCH_S:.0f} s", search_s < TARGET_SEARCH_S),
            (f"database growth {kb_per_trial:.1f} kB per trial < {TARGET_KB_PER_TRIAL:.0f} kB",
             kb_per_trial < TARGET_KB_PER_TRIAL),
        ]
        for what, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}: {what}")
        if args.keep:
            print(f"kept: {root} (make ui TRACKING_URI={uri})" if args.mlflow == "sqlite" else f"kept: {root}")
        return 0 if all(ok for _, ok in checks) else 1
    finally:
        for p in locals().get("procs", ()):
            if p.poll() is None:  # interrupted: stop the workers before their database goes
                p.kill()
                p.wait()
        tracking.reset()
        pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
