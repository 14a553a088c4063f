"""Atomic outputs (deepdram.data.atomic, and deepdram.data.tables.write_table through it).

Checked against the file system itself: the mode bits of the written file against 0666 & ~umask
for several umasks, the folder listing for temporary leftovers, the old file's bytes after a
failed write, and OutputError (naming the path) for a folder that cannot be written.
"""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from deepdram.data import atomic
from deepdram.data.atomic import OutputError, atomic_target, write_bytes, write_json, write_text
from deepdram.data.tables import read_table, write_table
from deepdram.errors import DeepdramError

FRAME = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, -1.0, 2.25]})

WRITERS = {
    "write_text": ("out.txt", lambda p: write_text(p, "hello\n"), lambda p: p.read_text() == "hello\n"),
    "write_bytes": ("out.bin", lambda p: write_bytes(p, b"\x00\x01"), lambda p: p.read_bytes() == b"\x00\x01"),
    "write_json": ("out.json", lambda p: write_json({"b": 1, "a": [1.5]}, p),
                   lambda p: json.loads(p.read_text()) == {"a": [1.5], "b": 1}),
    "write_table_csv": ("out.csv", lambda p: write_table(FRAME, p), lambda p: read_table(p).equals(FRAME)),
    "write_table_parquet": ("out.parquet", lambda p: write_table(FRAME, p), lambda p: read_table(p).equals(FRAME)),
}


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_get_mode_0666_minus_umask(tmp_path, writer, mask):
    """0644 under umask 022 (not mkstemp's 0600), 0640 under 027, 0664 under 002."""
    name, write, check = WRITERS[writer]
    path = tmp_path / "sub" / name  # the parent folder is created
    with umask(mask):
        write(path)
        assert atomic.output_mode() == 0o666 & ~mask
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    if mask == 0o022:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert check(path)
    assert leftovers(path.parent) == []


@pytest.mark.parametrize("writer", list(WRITERS))
def test_rewriting_replaces_the_file_whole(tmp_path, writer):
    name, write, check = WRITERS[writer]
    path = tmp_path / name
    path.write_bytes(b"old contents that are longer than the new ones " * 20)
    write(path)
    assert check(path)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_exception_inside_atomic_target_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_target(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            tmp.write_text("half a fi")
            assert tmp.exists()
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_os_error_inside_atomic_target_is_an_output_error_naming_the_path(tmp_path):
    target = tmp_path / "y.parquet"
    target.write_text("old\n")
    with pytest.raises(OutputError) as info:
        with atomic_target(target) as tmp:
            tmp.write_text("partial")
            raise OSError(28, "No space left on device")
    msg = str(info.value)
    assert str(target) in msg and "cannot write" in msg and "No space left on device" in msg
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["y.parquet"]


def test_exception_in_write_table_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old\n")

    class Bad(pd.DataFrame):
        def to_csv(self, path, *args, **kwargs):
            Path(path).write_text("a,b\n1,")
            raise ValueError("cannot format")

    with pytest.raises(ValueError, match="cannot format"):
        write_table(Bad(FRAME), target)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def unwritable_target(tmp_path: Path, name: str) -> Path:
    """A path that cannot be written: inside a 0555 folder or, where that folder stays writable
    (running as root), below a regular file, so that creating the parent folder fails."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    probe = locked / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return locked / name
    probe.unlink()
    locked.chmod(0o755)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file\n")
    return blocker / "sub" / name


@pytest.mark.parametrize("writer", list(WRITERS))
def test_unwritable_folder_raises_output_error_naming_the_path(tmp_path, writer):
    name, write, _ = WRITERS[writer]
    path = unwritable_target(tmp_path, name)
    try:
        with pytest.raises(OutputError) as info:
            write(path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    err = info.value
    assert isinstance(err, DeepdramError) and isinstance(err, OSError)
    msg = str(err)
    assert msg.startswith(f"{path}: cannot write: "), msg
    assert not path.exists()
    assert leftovers(tmp_path / "locked") == []
