"""Two `deepdram tune` workers share one Optuna study in a real PostgreSQL server (MLflow there too).

The fixture starts its own PostgreSQL cluster (Debian package `postgresql`: initdb + pg_ctl) in a
temporary folder on a free port of 127.0.0.1; as root it runs the server as the `postgres` user.
Skipped when the PostgreSQL server binaries are not installed (a failure instead with
DEEPDRAM_REQUIRE_POSTGRES=1, as .ci/run sets). The tiny study is conftest.py's `tuning_kit`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("psycopg2")

from deepdram.learn.search.config import EXPERIMENT  # noqa: E402
from deepdram.learn.search.trials import TAG_ROLE, TAG_TRIAL  # noqa: E402
from deepdram.mlops import tracking  # noqa: E402

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """URL of a fresh PostgreSQL server with databases `optuna` and `mlflow` (trust auth, 127.0.0.1)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        msg = "PostgreSQL server not installed (apt-get install -y postgresql; .ci/run does it)"
        if os.environ.get("DEEPDRAM_REQUIRE_POSTGRES"):  # CI installs it: a skip there would hide the test
            pytest.fail(msg)
        pytest.skip(msg)
    base = Path(tempfile.mkdtemp(prefix="deepdram-pg-"))  # not under pytest's 0700 tmp: `postgres` must enter it
    data = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the package's `postgres` user
        os.chmod(base, 0o777)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o",
                    f"-h 127.0.0.1 -p {port} -k {base} -c max_connections=100", "start"],
                   check=True, capture_output=True)
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE DATABASE optuna")
            cur.execute("CREATE DATABASE mlflow")
        con.close()
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_study(tmp_path, postgres, tuning_kit):
    import optuna

    params = tuning_kit.params(trials=6)
    root = tuning_kit.project(tmp_path / "root", tuning_kit.cells(160), params)
    # plain postgresql:// for Optuna (deepdram picks the driver); MLflow needs the pinned driver named
    mlflow_uri, storage = f"{postgres}/mlflow".replace("postgresql://", "postgresql+psycopg2://"), f"{postgres}/optuna"
    with pytest.MonkeyPatch.context() as mp:  # create MLflow's tables once, before the workers race
        # A server store's experiment gets the default artifact root ./mlruns, resolved here: in tmp_path.
        mp.chdir(tmp_path)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        tracking.reset()
        tracking.configure()
        tracking.experiment(EXPERIMENT)
        tracking.reset()
    env = tuning_kit.env(root, mlflow_uri)
    procs = [subprocess.Popen([*tuning_kit.tune, "forward", "--storage", storage, "--trials", "3",
                               "--worker", str(w), "-q"],
                              env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in (1, 2)]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=500)
        assert p.returncode == 0, se[-3000:]
        outs.append(json.loads(so[so.index("{"):]))
    assert [o["trials_run"] for o in outs] == [3, 3]

    cfg = tuning_kit.config(params, "forward", root / "outputs" / "tuning")
    trials = optuna.load_study(study_name=cfg.study_name, storage=storage.replace("postgresql://", "postgresql+psycopg2://")).get_trials()
    assert len(trials) == 6 and [t.number for t in trials] == list(range(6))
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    assert trials[0].params == tuning_kit.paper  # enqueued once, by one worker
    assert sum(t.params == trials[0].params for t in trials if "fixed_params" in t.system_attrs) == 1

    assert outs[0]["parent_run_id"] == outs[1]["parent_run_id"]  # both workers agreed on one parent run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        tracking.reset()
        tracking.configure()
        c = tracking.client()
        exp = c.get_experiment_by_name(EXPERIMENT).experiment_id
        assert tmp_path.resolve().as_posix() in c.get_experiment(exp).artifact_location  # not the repo's mlruns/
        parents = c.search_runs([exp], f"tags.`{TAG_ROLE}` = 'parent'")
        assert [r.info.run_id for r in parents] == [outs[0]["parent_run_id"]]
        runs = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{outs[0]['parent_run_id']}'")
        by_trial: dict[int, list] = {}
        for r in runs:
            by_trial.setdefault(int(r.data.tags[TAG_TRIAL]), []).append(r)
        # every trial is in MLflow exactly once, with its params; each was run by exactly one worker
        assert sorted(by_trial) == list(range(6)) and all(len(v) == 1 for v in by_trial.values())
        for t in trials:
            assert by_trial[t.number][0].data.params == {k: str(v) for k, v in t.params.items()}
        workers = [r.data.tags["deepdram.worker"].split("@")[0] for r in runs]
        assert sorted(workers) == ["1", "1", "1", "2", "2", "2"]
        tracking.reset()
    assert Path(root / "outputs" / "tuning" / "forward_best.yaml").is_file()
