"""Full disks and unwritable output folders: the write fails with a message naming the path, and
what was there before is left as it was (the atomic writer, sharded datasets, a whole stage).

As root, permission bits do not stop writes, so the faults are made in ways that hold for root too:
a full disk is RLIMIT_FSIZE in a child process (a write past the limit fails with EFBIG; Python
ignores SIGXFSZ), an unwritable folder is a regular file standing where the folder should be. A
kill mid-publish uses the `<name>:publish` pause point (deepdram.data.atomic.pause_point).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from deepdram.data import shards
from deepdram.data.atomic import OutputError, write_bytes, write_json
from deepdram.paths import REPO_ROOT


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under folder (or of the file itself)."""
    files = sorted(folder.rglob("*")) if folder.is_dir() else [folder]
    return {str(p.relative_to(folder)) if folder.is_dir() else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file()}


def limited(max_bytes: int):
    """preexec_fn of a child whose files cannot grow past max_bytes (a full disk, for that child)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def child(code: str, *, max_bytes: int | None = None, env: dict | None = None, cwd: Path | None = None):
    """Run Python `code` in a child process (optionally with a file-size limit); the finished process."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, **(env or {})}, preexec_fn=limited(max_bytes) if max_bytes else None,
                          check=False)


# --- the atomic writer ----------------------------------------------------------------------------


def test_full_disk_fails_naming_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    target.parent.mkdir()
    old = pd.DataFrame({"a": [1, 2, 3]})
    old.to_parquet(target)
    before = target.read_bytes()
    code = f"""
import numpy as np, pandas as pd
from deepdram.data.atomic import OutputError, write_bytes
from deepdram.data.tables import write_table
for write in (lambda: write_table(pd.DataFrame({{"a": np.arange(200_000)}}), {str(target)!r}),
              lambda: write_bytes({str(target)!r}, b"x" * 1_000_000)):
    try:
        write()
    except OutputError as e:
        print("OutputError:", e)
"""
    p = child(code, max_bytes=64 * 1024)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2, p.stdout + p.stderr
    for line in lines:  # (pyarrow words it "Error writing bytes to file. Detail: [errno 27] File too large")
        assert line.startswith(f"OutputError: {target}: cannot write: ") and line.endswith("File too large"), line
    assert target.read_bytes() == before  # the old file, whole
    assert sorted(q.name for q in target.parent.iterdir()) == ["table.parquet"]  # no temporary left


def test_a_file_where_the_folder_should_be_names_both(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "metrics").write_text("not a folder\n")
    with pytest.raises(OutputError) as err:
        write_json({"a": 1}, outputs / "metrics" / "stage.json")
    assert str(err.value) == f"{outputs / 'metrics' / 'stage.json'}: cannot write: {outputs / 'metrics'} is a file, not a folder"
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_bytes(outputs / "metrics" / "deeper" / "x.bin", b"1")
    assert (outputs / "metrics").read_text() == "not a folder\n"


# --- sharded datasets (cells, tilings) ----------------------------------------------------------------


def _shards(scratch: Path, values: list[int], rows: int) -> list[Path]:
    scratch.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(values):
        p = shards.shard_path(scratch, i)
        pd.DataFrame({"v": [v] * rows, "i": range(rows)}).to_parquet(p)
        paths.append(p)
    return paths


def test_publish_on_a_full_disk_keeps_the_previous_dataset_and_the_scratch(tmp_path):
    out = tmp_path / "outputs" / "ds.parquet"
    shards.publish(_shards(tmp_path / "scratch" / "old", [1, 2], 10), out)
    before = digest(out)
    new = _shards(tmp_path / "scratch" / "new", [3, 4, 5], 50_000)  # each shard > the limit below
    code = f"""
from pathlib import Path
from deepdram.data import shards
from deepdram.data.atomic import OutputError
try:
    shards.publish([Path(p) for p in {[str(p) for p in new]!r}], Path({str(out)!r}))
except OutputError as e:
    print("OutputError:", e)
"""
    p = child(code, max_bytes=16 * 1024)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"OutputError: {out}: cannot write: File too large"), p.stdout + p.stderr
    assert digest(out) == before
    assert sorted(q.name for q in out.parent.iterdir()) == ["ds.parquet"]  # no .ds.parquet.tmp left
    assert all(q.exists() for q in new)  # the finished shards stay: a later run publishes them
    shards.publish(new, out)
    assert pd.read_parquet(out)["v"].unique().tolist() == [3, 4, 5]


def test_publish_with_a_writer_that_fails_keeps_the_previous_dataset_and_no_partial_folder(tmp_path):
    """A shard writer (`write=`) that raises mid-way (not a disk error): the error reaches the
    caller as it is, the old dataset stays whole, no `.ds.parquet.tmp` is left, the shards stay;
    with keep_scratch a successful publish keeps them too, written through the writer."""
    out = tmp_path / "outputs" / "ds.parquet"
    shards.publish(_shards(tmp_path / "scratch" / "old", [1, 2], 10), out)
    before = digest(out)
    new = _shards(tmp_path / "scratch" / "new", [3, 4], 10)

    def bad(src: Path, dst: Path) -> None:
        if src == new[1]:
            raise ValueError(f"{src}: 10 rows where the plan has 9")
        shutil.copyfile(src, dst)

    with pytest.raises(ValueError, match="10 rows where the plan has 9"):
        shards.publish(new, out, write=bad)
    assert digest(out) == before
    assert sorted(q.name for q in out.parent.iterdir()) == ["ds.parquet"]
    assert all(q.exists() for q in new)

    def doubled(src: Path, dst: Path) -> None:
        df = pd.read_parquet(src)
        df.assign(v=2 * df["v"]).to_parquet(dst)

    shards.publish(new, out, write=doubled, keep_scratch=True)
    assert pd.read_parquet(out)["v"].unique().tolist() == [6, 8]
    assert all(q.exists() for q in new)


def test_publish_into_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "outputs").write_text("a file\n")
    with pytest.raises(OutputError, match=f"{tmp_path / 'outputs' / 'ds.parquet'}: cannot write: .*outputs is a file"):
        shards.publish(_shards(tmp_path / "scratch", [1], 5), tmp_path / "outputs" / "ds.parquet")


def test_kill_mid_publish_keeps_the_previous_dataset(tmp_path):
    """SIGKILL after the new dataset is copied but before the swap (`ds:publish`): the old dataset is
    whole; the next publish replaces it and clears what the killed one left."""
    out = tmp_path / "outputs" / "ds.parquet"
    shards.publish(_shards(tmp_path / "scratch" / "old", [1, 2], 10), out)
    before = digest(out)
    new = _shards(tmp_path / "scratch" / "new", [7, 8], 10)
    marker = tmp_path / "paused"
    code = f"""
from pathlib import Path
from deepdram.data import shards
shards.publish([Path(p) for p in {[str(p) for p in new]!r}], Path({str(out)!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "DEEPDRAM_TEST_PAUSE_AT": "ds:publish",
                                 "DEEPDRAM_TEST_PAUSE_FILE": str(marker)})
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert marker.exists() and proc.returncode == -signal.SIGKILL, output
    assert digest(out) == before
    assert (out.parent / ".ds.parquet.tmp").is_dir()  # the killed run's copy, never swapped in
    shards.publish(new, out)
    assert pd.read_parquet(out)["v"].unique().tolist() == [7, 8]
    assert sorted(q.name for q in out.parent.iterdir()) == ["ds.parquet"]


# --- a whole stage --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, tuning_kit) -> Path:
    """A project root with a tiny FE-labelled cells table and the repo's params.yaml."""
    root = tmp_path_factory.mktemp("disk") / "root"
    params = tuning_kit.params()
    return tuning_kit.project(root, tuning_kit.cells(n_per_zg=60), params)


def _stage(root: Path, stage: str, max_bytes: int | None = None):
    env = {"DEEPDRAM_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / f"{stage}.py")], cwd=root,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
                          preexec_fn=limited(max_bytes) if max_bytes else None, check=False)


def test_stage_on_a_full_disk_or_unwritable_outputs_names_the_path_and_keeps_outputs(project):
    """The `resample` stage (writes the resampled cells, three splits and its metrics): on a full disk
    and with a file where outputs/metrics should be it ends with exit 2 and one line naming the path,
    no traceback, and every output of the run before is byte-identical."""
    ok = _stage(project, "resample")
    assert ok.returncode == 0, ok.stderr[-3000:]
    outputs = project / "outputs"
    written = {name: digest(outputs / name) for name in
               ("datasets/cells_resampled.parquet", "datasets/splits", "metrics/resample.json")}
    assert all(written.values())

    full = _stage(project, "resample", max_bytes=2048)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith(f"deepdram stage resample: error: {outputs / 'datasets' / 'cells_resampled.parquet'}: "
                           "cannot write: ") and line.endswith("File too large"), full.stderr[-3000:]
    assert {name: digest(outputs / name) for name in written} == written

    metrics = outputs / "metrics"
    saved = metrics.with_name("metrics.saved")
    metrics.rename(saved)
    metrics.write_text("a file where the metrics folder should be\n")
    try:
        bad = _stage(project, "resample")
    finally:
        metrics.unlink()
        saved.rename(metrics)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1] == (
        f"deepdram stage resample: error: {metrics / 'resample.json'}: cannot write: {metrics} is a file, not a folder")
    # the data outputs were rewritten whole with the same bytes; the metrics file is the old one
    assert {name: digest(outputs / name) for name in written} == written
    assert json.loads((metrics / "resample.json").read_text())["rows"] > 0
