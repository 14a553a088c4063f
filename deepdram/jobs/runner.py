"""Running one DVC stage: check the whole params.yaml, run the stage's job, record its wall time.

Every `deepdram.jobs.<stage>` module has `SECTIONS` (the params sections it reads, all listed as
the stage's DVC params except execution-only ones such as `dask`), a `job(params) -> dict` and a
`main()` that calls `run`. Parameters are checked before any work starts; a DeepdramError ends the
stage with one clear line and exit code 2.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deepdram.errors import DeepdramError


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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
    rows = info.get("rows")
    print(f"stage {stage}: done in {seconds:.1f} s" + (f", {rows:,} rows" if isinstance(rows, int) else ""))
    return 0
