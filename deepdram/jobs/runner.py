"""Running one DVC stage: check the whole params.yaml, run the stage's job, record its wall time.

Every `deepdram.jobs.<stage>` module has `SECTIONS` (the params sections it reads, all listed as
the stage's DVC params except execution-only ones such as `dask`), a `job(params) -> dict` and a
`main()` that calls `run`. Parameters are checked before any work starts; a DeepdramError ends the
stage with one clear line and exit code 2, and so does a failed write (full disk, a file where a
folder should be) that names its file.

A stage's MLflow runs carry the tag `deepdram.owner` (host and PID namespace, pid and start time of
the process that opened them). A SIGKILL cannot be caught, so a killed stage leaves its run RUNNING: the next run of
a training or design job marks the runs of dead owners FAILED (`fail_dead_runs`) before it starts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deepdram.errors import DeepdramError


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


OWNER_TAG = "deepdram.owner"
# file system failures that are the disk's or the folder's fault, not the code's
FS_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
             errno.EEXIST, errno.EISDIR}


def _start_ticks(pid: int) -> str:
    """The process's start time (clock ticks after boot, from /proc), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2:].split()
    return "" if fields[0] == "Z" else fields[19]  # a zombie is dead


def _machine() -> str:
    """The host name, with the PID namespace where there is one (containers of one name differ)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}#{''.join(ch for ch in ns if ch.isdigit())}"


def owner() -> str:
    """This process as `host:pid:start` (the value of the `deepdram.owner` run tag)."""
    return f"{_machine()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def owner_alive(value: str) -> bool | None:
    """Whether the process an owner tag names still runs; None when it ran on another host."""
    try:
        host, pid, start = value.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return None
    if host != _machine():
        return None
    now = _start_ticks(pid)
    if start and Path("/proc/self/stat").exists():
        return now == start  # a reused pid has another start time
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_runs(experiment_id: str, why: str = "") -> list[str]:
    """Mark FAILED the experiment's RUNNING runs whose owner process is dead (killed: a SIGKILL, a
    crash of the machine's session); returns their run ids. Runs of other hosts are left alone."""
    from deepdram.mlops import tracking

    c = tracking.client()
    runs = c.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    failed = []
    for r in runs:
        who = r.data.tags.get(OWNER_TAG)
        if not who or who == owner() or owner_alive(who) is not False:
            continue
        c.set_tag(r.info.run_id, "deepdram.error", f"its process {who} died before the run ended"
                  + (f" (found by {why})" if why else ""))
        c.set_terminated(r.info.run_id, "FAILED")
        print(f"MLflow run {r.info.run_id} ({r.info.run_name}) was left RUNNING by a killed process: "
              "marked FAILED", file=sys.stderr)
        failed.append(r.info.run_id)
    return failed


def read_table(path: Path):
    """A pipeline table, or a clear error naming the missing upstream output."""
    import pandas as pd

    from deepdram.paths import REPO_ROOT

    if not path.exists():
        try:
            shown = path.relative_to(REPO_ROOT)
        except ValueError:
            shown = path
        raise DeepdramError(f"{shown} is missing: run the upstream stage first")
    return pd.read_parquet(path)


def write_metrics(stage: str, values: dict, seconds: float) -> None:
    """outputs/metrics/<stage>.json: the job's scalar results and its wall time."""
    from deepdram.data.atomic import write_json
    from deepdram.paths import METRICS_DIR

    scalars = {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))}
    write_json({**scalars, "seconds": round(seconds, 2)}, METRICS_DIR / f"{stage}.json")


def run(stage: str, job: Callable, argv: list[str] | None = None) -> int:
    """Run one stage with the repo's params.yaml; print its wall time; exit 2 on a DeepdramError."""
    from deepdram.params import load

    t0 = time.perf_counter()
    # `kill` (SIGTERM, e.g. a cancelled job) unwinds like Ctrl-C, so open MLflow runs end FAILED
    # instead of staying RUNNING and no temporary output is left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        params = load()
        info = job(params) or {}
        seconds = time.perf_counter() - t0
        write_metrics(stage, info, seconds)
    except DeepdramError as exc:
        print(f"deepdram stage {stage}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in FS_ERRNOS or not exc.filename:
            raise
        # a file system failure the job did not wrap (a library writing its own file): one clear line
        print(f"deepdram stage {stage}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    rows = info.get("rows")
    print(f"stage {stage}: done in {seconds:.1f} s" + (f", {rows:,} rows" if isinstance(rows, int) else ""))
    return 0
