"""Faults in long work: a SIGKILL at a known point of the tilings, training (with registration) and
design stages, then `dvc repro` again; plus the pieces that make the recovery (dead-run detection,
alias repair, the design stage's folder swap), tested without DVC.

The kills land at a known point, not after a sleep: the job blocks at a pause point
(`deepdram.data.atomic.pause_point`: $DEEPDRAM_TEST_PAUSE_AT names it, the job writes
$DEEPDRAM_TEST_PAUSE_FILE and waits) and the test SIGKILLs the whole `dvc repro` process group.
After each rerun: the stage completes; its deterministic outputs equal those of an uninterrupted
run (the stage's own `dvc repro` before the kills: the pipeline's run, when one ran; the reruns
pass --no-run-cache, or DVC would restore outputs it has cached for these deps instead of running
the job); no output is half-written (absent or whole; no temporary left); the killed MLflow runs are
FAILED; every registry alias points at a version whose run finished and whose artifacts are all
there.

What legitimately differs between two runs and is left out of the comparisons: MLflow run ids and
version numbers (outputs/models/<key>.json, the `designer` entry of outputs/designs/summary.json),
timings (outputs/metrics/*.json, each request's `seconds` in that summary), and inside a .keras
file its `metadata.json` (save date) and `config.json` (Python object ids); its weights are compared.

The slow tests run in the session's tiny copy of the repo (`tiny_repo`, tests/jobs/conftest.py),
after tests/jobs/test_pipeline_e2e.py has run its whole pipeline there; each brings the upstream
stages it needs up to date itself, so any one can run alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


# the rerun after a kill: a plain `dvc repro`, but one that runs the job even where DVC's run cache
# holds outputs of these deps (when another test already ran the stage): the recovery is under test
RERUN = ("--no-run-cache",)


# --- helpers -------------------------------------------------------------------------------------------


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1", **extra)
    for key in ("DEEPDRAM_ROOT", "DEEPDRAM_DASK_SCHEDULER", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                "DEEPDRAM_TEST_PAUSE_AT", "DEEPDRAM_TEST_PAUSE_FILE"):
        if key not in extra:
            env.pop(key, None)
    return env


def _run(args, cwd, check=True, timeout=1800) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _dvc(repo: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], repo, check=check)


def _kill_at(repo: Path, point: str, *dvc_args: str, timeout: float = 1800) -> str:
    """Run `dvc repro ARGS` until the job reaches pause point `point`, SIGKILL its whole process
    group there; returns the output (AssertionError if it never got there)."""
    from deepdram.data.atomic import kill_at_pause_point

    marker = repo.parent / f"paused-{point.replace(':', '-')}"
    output, status = kill_at_pause_point([sys.executable, "-m", "dvc", "repro", *dvc_args], point, marker,
                                         cwd=repo, env=_env(), timeout=timeout)
    assert marker.exists(), f"never paused at {point} (exit {status}):\n{output[-4000:]}"
    assert marker.read_text().split()[0] == point
    return output


def _digest(path: Path) -> dict[str, str]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(p.relative_to(path)) if path.is_dir() else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file()}


def _leftovers(repo: Path) -> list[str]:
    """Temporary files or folders of the atomic writers under outputs/ (the scratch folder aside)."""
    found = []
    for p in (repo / "outputs").rglob(".*"):
        if ".scratch" in p.relative_to(repo / "outputs").parts:
            continue
        if p.name.endswith((".tmp", ".old")) or p.name.startswith(".designs."):
            found.append(str(p.relative_to(repo)))
    return sorted(found)


def _client(repo: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo}/mlruns/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(repo: Path, experiment: str) -> dict[str, object]:
    c = _client(repo)
    exp = c.get_experiment_by_name(experiment)
    return {} if exp is None else {r.info.run_id: r for r in c.search_runs([exp.experiment_id], max_results=1000)}


def _aliases(c, name: str) -> dict[str, int]:
    a = c.get_registered_model(name).aliases
    return {k: int(v) for k, v in (a.items() if isinstance(a, dict) else ((x.alias, x.version) for x in a))}


def _assert_aliases_sound(repo: Path, name: str) -> dict[str, int]:
    """Every alias of `name` is on a version whose run FINISHED and whose artifacts are complete."""
    from deepdram.mlops import registry

    c = _client(repo)
    aliases = _aliases(c, name)
    for alias, version in aliases.items():
        mv = c.get_model_version(name, str(version))
        assert c.get_run(mv.run_id).info.status == "FINISHED", (name, alias, version)
        assert registry.version_problems(c, mv, run_must_finish=True) == [], (name, alias, version)
    return aliases


def _deterministic(summary: dict) -> dict:
    """outputs/designs/summary.json without what changes from run to run: the designer's run id,
    version and decision, and each request's `seconds`."""
    out = {k: v for k, v in summary.items() if k != "designer"}
    out["requests"] = {name: {k: v for k, v in s.items() if k != "seconds"} for name, s in summary["requests"].items()}
    return out


def _keras_weights(path: Path) -> str:
    """sha256 of the weights inside a .keras file (its metadata holds the save date)."""
    return hashlib.sha256(zipfile.ZipFile(path).read("model.weights.h5")).hexdigest()


# --- recovery pieces (no DVC) ------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_fail_dead_runs_fails_only_runs_whose_process_died(mlflow_test_store):
    from deepdram.jobs import runner
    from deepdram.mlops import tracking

    c = tracking.client()
    exp = tracking.experiment("test-dead-runs")
    me = runner.owner()
    host = me.rsplit(":", 2)[0]  # the host name and PID namespace
    owners = {"dead": f"{host}:{_dead_pid()}:12345", "reused pid": f"{host}:{os.getpid()}:1",
              "alive": me, "other host": f"not-{host}:1:1", "untagged": None}
    ids = {}
    for what, who in owners.items():
        ids[what] = c.create_run(exp, run_name=what, tags={runner.OWNER_TAG: who} if who else {}).info.run_id
    assert runner.owner_alive(me) is True and runner.owner_alive(owners["dead"]) is False
    assert runner.owner_alive(owners["other host"]) is None
    failed = runner.fail_dead_runs(exp, "a test")
    assert sorted(failed) == sorted([ids["dead"], ids["reused pid"]])
    for what, run_id in ids.items():
        run = c.get_run(run_id)
        assert run.info.status == ("FAILED" if what in ("dead", "reused pid") else "RUNNING"), what
    assert "died before the run ended (found by a test)" in c.get_run(ids["dead"]).data.tags["deepdram.error"]


def test_aliases_leave_versions_with_missing_artifacts_or_failed_runs(mlflow_test_store, tiny_keras, tmp_path):
    """`registry.register` refuses a model with a file missing; `repair_aliases` takes every alias
    off a version whose artifacts went missing, and the challenger alias off a FAILED run's version
    (a champion is judged by its artifacts only)."""
    import mlflow

    from deepdram.errors import DeepdramError
    from deepdram.mlops import pyfuncs, registry, tracking

    tracking.experiment("test-repair")
    keras_path = tiny_keras(tmp_path / "forward.keras", 42, 4)

    def logged() -> str:
        with mlflow.start_run() as run:
            pyfuncs.log_model("forward", keras_path)
        return run.info.run_id

    c = tracking.client()
    name = "deepdram-forward-repair"

    def model_file(run_id: str) -> Path:
        lm = c.get_logged_model(c.get_run(run_id).outputs.model_outputs[0].model_id)
        return Path(lm.artifact_location.removeprefix("file://")) / "artifacts" / "forward.keras"

    # a model whose upload was cut short is not registered
    broken = logged()
    model_file(broken).unlink()
    with pytest.raises(DeepdramError, match=r"could not register .*: no complete model there \(artifacts/forward"
                                            r"\.keras is missing\)"):
        registry.register(broken, name)

    v1 = registry.register(logged(), name)
    registry.promote(name)
    v2 = registry.register(logged(), name)
    assert _aliases(c, name) == {"champion": v1, "challenger": v2}
    assert registry.repair_aliases(name) == []
    c.set_terminated(c.get_model_version(name, str(v2)).run_id, "FAILED")
    c.set_terminated(c.get_model_version(name, str(v1)).run_id, "FAILED")
    removed = registry.repair_aliases(name)
    failed_run = c.get_model_version(name, str(v2)).run_id
    assert removed == [f"{name}: removed alias 'challenger' from version {v2}: its run {failed_run} FAILED"]
    assert _aliases(c, name) == {"champion": v1}
    model_file(c.get_model_version(name, str(v1)).run_id).unlink()
    removed = registry.repair_aliases(name)
    assert len(removed) == 1 and "alias 'champion'" in removed[0] and "artifacts/forward.keras is missing" in removed[0]
    assert _aliases(c, name) == {}


def test_design_swap_keeps_the_old_designs_until_the_new_are_whole(tmp_path, monkeypatch):
    from deepdram.jobs import design

    out = tmp_path / "outputs" / "designs"
    out.mkdir(parents=True)
    (out / "a.csv").write_text("old\n")
    # work folders of a killed run (its pid is dead) go; a live run's stay
    dead, live = out.with_name(f".designs.{_dead_pid()}.abc"), out.with_name(f".designs.{os.getpid()}.xyz")
    dead.mkdir(), live.mkdir()
    design.clear_dead_work(out)
    assert not dead.exists() and live.exists()
    # killed between the two renames of a swap: the old designs come back
    set_aside = out.with_name(f".designs.{_dead_pid()}.old")
    os.replace(out, set_aside)
    design.clear_dead_work(out)
    assert (out / "a.csv").read_text() == "old\n" and not set_aside.exists()
    # a swap that fails puts the old designs back
    (live / "a.csv").write_text("new\n")
    real = os.replace

    def failing(src, dst):
        if Path(src) == live:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(design.os, "replace", failing)
    with pytest.raises(OSError):
        design.swap_in(live, out)
    assert (out / "a.csv").read_text() == "old\n"
    failure = design.write_failure(out, OSError(28, "No space left on device", str(live / "a.csv")))
    assert str(failure).startswith(f"{out}: cannot write: No space left on device")
    assert str(failure).endswith("(the previous designs are kept)")
    monkeypatch.undo()
    design.swap_in(live, out)
    assert (out / "a.csv").read_text() == "new\n" and not live.exists()
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_the_job_did_not_wrap_ends_the_stage_with_one_line(capsys):
    import errno

    from deepdram.jobs import runner

    def job(params):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/outputs/x.bin")

    assert runner.run("some_stage", job) == 2
    assert capsys.readouterr().err == "deepdram stage some_stage: error: /data/outputs/x.bin: No space left on device\n"

    def bug(params):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):  # not a disk's fault: the traceback stays
        runner.run("some_stage", bug)


# --- SIGKILL mid-stage, then `dvc repro` ---------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tiny_repo) -> Path:
    """The session's tiny copy of the repo (tests/jobs/conftest.py)."""
    return tiny_repo


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the tiny pipeline upstream, on a busy machine
def test_killed_tilings_resumes_and_writes_the_same_dataset(repo):
    """Kill mid-simulation (after 3 of 12 shards) and again mid-publish (the new dataset copied,
    not swapped in): the next `dvc repro` resumes from the finished shards and publishes the bytes
    an uninterrupted run writes; the solved shards stay in scratch for a later relabelling."""
    out = repo / "outputs/datasets/tilings.parquet"
    scratch = repo / "outputs/.scratch/tilings"
    _dvc(repo, "repro", "tilings")  # the stage and its upstream, uninterrupted (a no-op after the pipeline)
    uninterrupted = _digest(out)
    # a start from nothing: the solved shards an earlier run kept go, and the run is forced (DVC's
    # run cache would otherwise restore its outputs without running it)
    shutil.rmtree(scratch, ignore_errors=True)
    _kill_at(repo, "tilings:simulate:shard-3", "-f", "-s", "tilings")
    done = sorted(p.name for p in scratch.glob("*/part-*.parquet"))
    assert 3 <= len(done) < 12, done
    assert not out.exists()  # DVC removes a stage's outputs before running it; none half-written
    assert _leftovers(repo) == []

    log = _kill_at(repo, "tilings:publish", *RERUN, "tilings")
    assert f"resuming, {len(done)} of 12 shards already done" in log
    assert not out.exists()
    copied = _digest(repo / "outputs/datasets/.tilings.parquet.tmp")
    assert len(copied) == 12

    rerun = _dvc(repo, "repro", *RERUN, "tilings")
    assert "resuming, 12 of 12 shards already done" in rerun.stdout + rerun.stderr
    resumed = _digest(out)
    assert resumed == copied
    assert _leftovers(repo) == []
    # scratch keeps exactly the 12 solved shards of one configuration, no published copies
    kept = [q for q in scratch.rglob("*") if q.is_file()]
    assert len({q.parent for q in kept}) == 1 and sorted(q.name for q in kept) == [
        f"part-{i:05d}.parquet" for i in range(12)]
    assert "up to date" in _dvc(repo, "repro", "tilings").stdout.lower()
    assert resumed == uninterrupted


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the tiny pipeline upstream, on a busy machine
def test_killed_design_recovers_with_the_same_designs(repo):
    """Kill the design stage with its designer run open (model logged), and again with every output
    written but not swapped in (designer registered and promoted): the next `dvc repro` fails the
    killed run, clears the work folders and writes the designs an uninterrupted run writes."""
    from deepdram.mlops.catalogue import DESIGNER

    designs = repo / "outputs/designs"
    # the stage and its upstream (trained, evaluated, promoted champions), uninterrupted
    _dvc(repo, "repro", "design")
    uninterrupted, uninterrupted_summary = _digest(designs), json.loads((designs / "summary.json").read_text())
    before = set(_runs(repo, DESIGNER.experiment))

    _kill_at(repo, "design:designer-logged", "-f", "-s", "design")
    killed = [r for k, r in _runs(repo, DESIGNER.experiment).items() if k not in before]
    assert len(killed) == 1 and killed[0].info.status == "RUNNING"
    assert not designs.exists()  # removed by DVC before the stage ran; the work folder holds the new
    assert len(list(designs.parent.glob(".designs.*"))) == 1

    _kill_at(repo, "design:swap", *RERUN, "design")
    runs = _runs(repo, DESIGNER.experiment)
    assert runs[killed[0].info.run_id].info.status == "FAILED"
    assert "died before the run ended" in runs[killed[0].info.run_id].data.tags["deepdram.error"]
    assert len(list(designs.parent.glob(".designs.*"))) == 1  # the first killed run's folder is gone
    assert not designs.exists()
    _assert_aliases_sound(repo, DESIGNER.name)  # registered and promoted whole before the kill

    _dvc(repo, "repro", *RERUN, "design")
    assert _leftovers(repo) == []
    assert oct(designs.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    resumed = _digest(designs)
    resumed_summary = json.loads((designs / "summary.json").read_text())
    assert not [r for r in _runs(repo, DESIGNER.experiment).values() if r.info.status == "RUNNING"]

    assert _deterministic(uninterrupted_summary) == _deterministic(resumed_summary)
    assert {k: v for k, v in uninterrupted.items() if k != "summary.json"} == {
        k: v for k, v in resumed.items() if k != "summary.json"}
    for name in ("deepdram-forward", "deepdram-size-agnostic", "deepdram-generator", DESIGNER.name):
        _assert_aliases_sound(repo, name)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the tiny pipeline upstream, on a busy machine
def test_killed_training_and_registration_recover(repo):
    """Kill `train_forward` once its model is logged (before registering) and once during the
    registration (version created, alias not set); the next runs mark the killed run FAILED, no alias
    ever points at an unfinished run's or incomplete version, and the final outputs equal an
    uninterrupted run's."""
    from deepdram.mlops.catalogue import FORWARD

    models = repo / "outputs/models"

    def outputs() -> dict:
        record = json.loads((models / "forward.json").read_text())
        return {"history": _digest(repo / "outputs/reports/training"), "weights": _keras_weights(models / "forward.keras"),
                "record": {k: v for k, v in record.items() if k not in ("run_id", "version")}}

    _dvc(repo, "repro", "train_forward")  # the stage and its upstream, uninterrupted
    uninterrupted = outputs()
    before = set(_runs(repo, FORWARD.experiment))

    _kill_at(repo, "train_forward:logged", "-f", "-s", "train_forward")
    first = [r for k, r in _runs(repo, FORWARD.experiment).items() if k not in before]
    assert len(first) == 1 and first[0].info.status == "RUNNING"  # a SIGKILL cannot be caught
    killed = first[0].info.run_id
    c = _client(repo)
    versions_before = c.search_model_versions(f"name = '{FORWARD.name}'") if _registered(c) else []
    assert not [v for v in versions_before if v.run_id == killed]
    assert not (models / "forward.json").exists() and _leftovers(repo) == []

    _kill_at(repo, f"{FORWARD.name}:version-created", *RERUN, "train_forward")
    runs = _runs(repo, FORWARD.experiment)
    assert runs[killed].info.status == "FAILED"  # found dead by the next run
    assert "died before the run ended" in runs[killed].data.tags["deepdram.error"]
    second = [r for k, r in runs.items() if k not in before and k != killed]
    assert len(second) == 1 and second[0].info.status == "FINISHED"  # ended before registering
    half = [v for v in c.search_model_versions(f"name = '{FORWARD.name}'") if v.run_id == second[0].info.run_id]
    assert len(half) == 1  # created, the kill came before its alias
    assert int(half[0].version) not in _aliases(c, FORWARD.name).values()
    assert not (models / "forward.json").exists()

    _dvc(repo, "repro", *RERUN, "train_forward")
    record = json.loads((models / "forward.json").read_text())
    aliases = _assert_aliases_sound(repo, FORWARD.name)
    assert aliases["challenger"] == record["version"]
    assert not [r for r in _runs(repo, FORWARD.experiment).values() if r.info.status == "RUNNING"]
    assert _leftovers(repo) == []
    assert outputs() == uninterrupted


def _registered(c) -> bool:
    from mlflow.exceptions import MlflowException

    from deepdram.mlops.catalogue import FORWARD

    try:
        c.get_registered_model(FORWARD.name)
        return True
    except MlflowException:
        return False
