"""The one atomic writer: every output file appears whole or not at all, with the usual mode.

Write to a temporary file in the target's folder, flush it to disk, then `os.replace` it onto the
target. A crash or an exception leaves the old file (or nothing), never a partial one. Files get
mode 0666 minus the umask (0644 normally): `mkstemp` alone would leave them 0600. A failure to
write (full disk, read-only or unwritable folder) raises `OutputError` naming the path.

`pause_point(name)` is the test hook for crash tests: with $DEEPDRAM_TEST_PAUSE_AT naming the
point, the process writes a marker file and blocks there until it is killed (see its docstring).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
import time
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


def _reason(path: Path, exc: OSError) -> str:
    """The system's reason, clearer where a file stands where a folder should be."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        for parent in Path(path).parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    return f"{parent} is a file, not a folder"
                break
    return exc.strerror or str(exc)


def _fail(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write: {_reason(path, exc)}")


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """OutputError naming `path` (the output the caller was writing) for a failed write `exc`."""
    if isinstance(exc, OutputError):
        return exc
    reason = _reason(Path(path), exc)
    if exc.filename and Path(str(exc.filename)) != Path(path):
        reason += f" (writing {exc.filename})"
    return OutputError(f"{path}: cannot write: {reason}")


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


# --- crash-test hook ------------------------------------------------------------------------------

PAUSE_ENV = "DEEPDRAM_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "DEEPDRAM_TEST_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Test hook: block here, forever, when $DEEPDRAM_TEST_PAUSE_AT names this point.

    $DEEPDRAM_TEST_PAUSE_AT is a comma-separated list of point names; unset (always, outside the
    crash tests) this returns at once. At a named point the process writes "<name> <pid>" to
    $DEEPDRAM_TEST_PAUSE_FILE (when set; atomically, so its appearance is the signal) and sleeps
    until it is killed, so a test can SIGKILL it at a known point instead of sleeping and hoping.

    Points (`<stage>` is the stage's name, `<model>` a registered model name):
      `<stage>:<phase>:shard-<n>`   sharded work (`cells:sample`, `cells:simulate`, `tilings:simulate`,
                                    `composite_brute_force:solve`): after the n-th shard of this run is written
      `<out name>:publish`          sharded work: the new dataset copied, before it replaces the old one
      `train_<key>:logged`          a training run: model logged, before the run ends and is registered
      `<model>:version-created`     registering: the version exists, before the `challenger` alias is set
      `<model>:promoting`           promoting: decided under the model's lock, before any alias moves
      `design:request-<n>`          the design stage: after the n-th request's designs are written
      `design:designer-logged`      the design stage: designer logged, its run still open
      `design:swap`                 the design stage: all outputs written, before they replace outputs/designs
      `tune_<model>:trial-<n>`      a study: trial n's MLflow run created, before it trains
    """
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name not in {w.strip() for w in wanted.split(",")}:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        write_text(marker, f"{name} {os.getpid()}\n")
    print(f"deepdram: paused at {name} (pid {os.getpid()}) for {PAUSE_ENV}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def kill_at_pause_point(args: list[str], point: str, marker: Path, *, cwd: Path, env: dict,
                        timeout: float = 1800.0) -> tuple[str, int | None]:
    """The driver side of `pause_point`: run `args` in a new process group with `point` as its pause
    point, SIGKILL the whole group once the process has written `marker` there, and wait until the
    group is gone. Returns (output, exit status); the marker is absent afterwards if it never paused
    (the process ended, or `timeout` passed)."""
    import signal
    import subprocess

    marker = Path(marker)
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(args, cwd=cwd, env={**env, PAUSE_ENV: point, PAUSE_FILE_ENV: str(marker)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended by itself
        pass
    output = proc.communicate(timeout=120)[0].decode(errors="replace")
    deadline = time.time() + 60  # its children (Dask workers) are gone too before anything reruns
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    return output, proc.returncode
