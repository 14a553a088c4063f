"""Concurrent promotions of one model (deepdram.mlops.registry.promotion_lock): several `deepdram
promote` processes at the same moment on one sqlite store give one decision, recorded once (one set
of `promotion.*` tags, one alias move); the others see it or refuse cleanly. A promoter killed
while holding the lock does not block the next one.

Processes are released together by a start file (each has imported MLflow and waits for it), and
the orderings that matter are forced, not hoped for: the test holds the lock itself while a child
waits (the child says so on stderr), or a child blocks at the `<model>:promoting` pause point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("keras")

import mlflow

from deepdram.mlops import pyfuncs, registry, tracking

TEST_SET = "md5-of-test-split-A"

CHILD = """
import sys, time
from pathlib import Path
import mlflow  # the slow imports, before the start line
from deepdram.cli.main import main
from deepdram.mlops import registry
Path(sys.argv[1]).write_text("ready")
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
sys.exit(main(["promote", *sys.argv[3:]]))
"""


@pytest.fixture(scope="module")
def store(mlflow_store):
    """The module's sqlite store; every test promotes a model of its own name in it."""
    tracking.experiment("test-promote-concurrency")
    return mlflow_store


def log_run(keras_path: Path, r2: float) -> str:
    with mlflow.start_run() as run:
        tracking.log_tags({tracking.TEST_SET_TAG: TEST_SET})
        mlflow.log_metrics({"test_r2_overall": r2})
        pyfuncs.log_model("forward", keras_path)
    return run.info.run_id


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory, tiny_keras) -> tuple[str, str]:
    """Two finished runs with a logged model each: test R2 0.80 and 0.85 (registered by every test)."""
    keras_path = tiny_keras(tmp_path_factory.mktemp("keras") / "forward.keras", 42, 4)
    return log_run(keras_path, 0.80), log_run(keras_path, 0.85)


def champion_and_challenger(name: str, runs: tuple[str, str]) -> None:
    """Version 1 the champion, version 2 (better) the challenger."""
    registry.register(runs[0], name)
    assert registry.promote(name)["decision"] == "promoted"
    assert registry.register(runs[1], name) == 2


def child_env() -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.configure(), "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


def start_together(tmp_path: Path, args_list: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run `deepdram promote ARGS` for each ARGS in its own process, all released at one instant."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(len(args_list))]
    outs = [(tmp_path / f"out{i}", tmp_path / f"err{i}") for i in range(len(args_list))]
    procs = []
    for args, flag, (out, err) in zip(args_list, ready, outs):
        with open(out, "w") as o, open(err, "w") as e:
            procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(flag), str(go), *args],
                                          stdout=o, stderr=e, env=child_env()))
    deadline = time.time() + 300
    while not all(flag.exists() for flag in ready):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [e.read_text() for _, e in outs]
        time.sleep(0.05)
    go.write_text("go")
    for p in procs:
        p.wait(timeout=300)
    return [subprocess.CompletedProcess(p.args, p.returncode, out.read_text(), err.read_text())
            for p, (out, err) in zip(procs, outs)]


def promotion_tags(name: str, version: int) -> dict:
    tags = tracking.client().get_model_version(name, str(version)).tags
    return {k: v for k, v in tags.items() if k.startswith("promotion.")}


def aliases(name: str) -> dict:
    a = tracking.client().get_registered_model(name).aliases
    return {k: int(v) for k, v in (a.items() if isinstance(a, dict) else ((x.alias, x.version) for x in a))}


def test_simultaneous_promotes_of_the_challenger_decide_once(store, runs, tmp_path):
    name = "deepdram-forward-race"
    champion_and_challenger(name, runs)
    results = start_together(tmp_path, [[name]] * 2)
    winners = [r for r in results if r.returncode == 0]
    assert len(winners) == 1, [(r.returncode, r.stdout[-500:], r.stderr[-500:]) for r in results]
    assert "decision: promoted" in winners[0].stdout and "champion: version 2" in winners[0].stdout
    for r in results:
        if r.returncode != 0:  # refused cleanly, naming what the winner decided
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert (f"deepdram: error: model '{name}' has no challenger (version 2 is the champion: promoted at"
                    in r.stderr), r.stderr
    assert aliases(name) == {"champion": 2, "previous_champion": 1}
    tags = promotion_tags(name, 2)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.champion_version"] == "1"


def test_simultaneous_promotes_of_one_version_record_one_decision(store, runs, tmp_path):
    """With --version 2 the losers find it champion already ("unchanged"), and do not overwrite the
    winner's record (before the fix the last one wrote promotion.decision = unchanged)."""
    name = "deepdram-forward-race-version"
    champion_and_challenger(name, runs)
    results = start_together(tmp_path, [[name, "--version", "2"]] * 2)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-500:] for r in results]
    decisions = sorted(r.stdout.split("decision: ")[1].split()[0] for r in results)
    assert decisions == ["promoted", "unchanged"], [r.stdout for r in results]
    assert aliases(name) == {"champion": 2, "previous_champion": 1}
    tags = promotion_tags(name, 2)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.champion_version"] == "1"
    assert "0.85 >= 0.8" in tags["promotion.reason"]


def test_a_waiting_promote_sees_the_decision_made_while_it_waited(store, runs, tmp_path):
    """The test holds the lock; a `deepdram promote` waits (it says so), the test promotes meanwhile;
    released, the waiting one sees the result and refuses cleanly."""
    name = "deepdram-forward-wait"
    champion_and_challenger(name, runs)
    err = tmp_path / "err"
    with registry.promotion_lock(name) as lock:
        assert lock.parent == Path(store).resolve() and lock.name == f".promote-{name}.lock"
        with open(err, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "deepdram.cli.main", "promote", name], env=child_env(),
                                    stdout=subprocess.PIPE, stderr=fh, text=True)
        deadline = time.time() + 300
        while "waiting for another promotion" not in err.read_text():
            assert proc.poll() is None and time.time() < deadline, err.read_text()
            time.sleep(0.05)
        first = registry.promote(name)  # re-entrant: this process holds the lock
        assert first["decision"] == "promoted" and first["recorded"]
        recorded = promotion_tags(name, 2)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, out + err.read_text()
    assert "has no challenger (version 2 is the champion: promoted at" in err.read_text()
    assert promotion_tags(name, 2) == recorded
    assert aliases(name) == {"champion": 2, "previous_champion": 1}


def test_a_promoter_killed_holding_the_lock_blocks_nobody(store, runs, tmp_path):
    """SIGKILL a promote paused after deciding (`<model>:promoting`): nothing was applied, the lock is
    released with the process, and the next promote decides and records once."""
    name = "deepdram-forward-killed"
    champion_and_challenger(name, runs)
    marker = tmp_path / "paused"
    env = {**child_env(), "DEEPDRAM_TEST_PAUSE_AT": f"{name}:promoting", "DEEPDRAM_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "deepdram.cli.main", "promote", name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert aliases(name) == {"champion": 1, "challenger": 2}  # decided, nothing applied
    assert promotion_tags(name, 2) == {}
    result = registry.promote(name)
    assert result["decision"] == "promoted" and result["recorded"]
    assert aliases(name) == {"champion": 2, "previous_champion": 1}
    assert json.loads(promotion_tags(name, 2)["promotion.candidate_metrics"])["test_r2_overall"] == pytest.approx(0.85)


def test_the_same_decision_asked_again_is_not_recorded_again(store, runs, capsys):
    """A rejected challenger promoted twice (two people, one after the other): one record."""
    from deepdram.cli.main import main as cli_main

    name = "deepdram-forward-twice"
    registry.register(runs[1], name)
    registry.promote(name)
    registry.register(runs[0], name)  # worse: rejected
    first = registry.promote(name)
    assert first["decision"] == "rejected" and first["recorded"]
    recorded = promotion_tags(name, 2)
    assert cli_main(["promote", name]) == 0
    out = capsys.readouterr().out
    assert "decision: rejected" in out and "already recorded on version 2; not recorded again" in out
    assert promotion_tags(name, 2) == recorded
    assert registry.promote(name, tolerance=0.1)["recorded"]  # another decision: recorded
    assert promotion_tags(name, 2)["promotion.decision"] == "promoted"
