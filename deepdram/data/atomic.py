"""The one atomic writer: every output file appears whole or not at all, with the usual mode.

Write to a temporary file in the target's folder, flush it to disk, then `os.replace` it onto the
target. A crash or an exception leaves the old file (or nothing), never a partial one. Files get
mode 0666 minus the umask (0644 normally): `mkstemp` alone would leave them 0600. A failure to
write (full disk, read-only or unwritable folder) raises `OutputError` naming the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from deepdram.errors import DeepdramError


class OutputError(DeepdramError, OSError):
    """An output could not be written (the path and the system's reason are in the message)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """Permissions of new output files: 0666 minus the process umask."""
    return 0o666 & ~_umask()


def _fail(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write: {exc.strerror or exc}")


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path`, moved onto it (mode 0644) only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _fail(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        raise _fail(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(fh) on a binary file handle, atomically onto `path`."""
    with atomic_target(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically."""
    return write_with(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(obj: Any, path: str | os.PathLike, *, strict: bool = False) -> Path:
    """Write JSON (sorted keys, indented) atomically; `strict` refuses NaN and infinities."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float, allow_nan=not strict)
    return write_text(path, text + "\n")


def save_png(path: str | os.PathLike, fig, dpi: int = 110) -> Path:
    """Save a matplotlib Figure as PNG without metadata that changes between runs."""
    return write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, metadata={"Software": None}))
