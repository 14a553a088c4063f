"""Sharded, resumable work on Dask: each shard is one file written atomically to a scratch folder.

A shard's content depends only on its index and the job's parameters, never on which worker
ran it or how many there were, so any cluster yields byte-identical results. Finished shards are
skipped when a killed run is started again. `publish` builds the new dataset folder beside the old
one and swaps it in, so a crash or a full disk leaves the old dataset (or none), never half a one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEDULER_ENV = "DEEPDRAM_DASK_SCHEDULER"
WORKERS_ENV = "DEEPDRAM_DASK_WORKERS"

# OpenBLAS (NumPy's and SciPy's) picks its kernels by CPU when it loads, and NumPy dispatches its
# loops by CPU. An AVX-512 machine and an AVX2 one then differ in the last bits of the tilings'
# properties (measured: 1,118 of 1,200 values, at most 1.1e-11 relative), so the same params gave
# datasets that were not byte-identical across machines. The project's workers load the AVX2
# ("Haswell") kernels, which every x86-64 CPU with AVX2 and FMA runs.
PINNED_KERNELS = {"OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


def shard_path(scratch: Path, index: int) -> Path:
    """Scratch file of shard `index`."""
    return scratch / f"part-{index:05d}.parquet"


def fingerprint(*parts: Any, files: Iterable[Path] = ()) -> str:
    """Short hash of JSON-able parts and file contents: names resumable work of one configuration."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def pinned_kernels_env() -> dict[str, str]:
    """Environment variables that load the same numerical kernels on every x86-64 CPU with AVX2
    and FMA (`PINNED_KERNELS`); empty elsewhere, where a CPU keeps its own kernels."""
    import platform

    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    if platform.machine().lower() not in ("x86_64", "amd64") or not (cpu.get("AVX2") and cpu.get("FMA3")):
        return {}
    return dict(PINNED_KERNELS)


@contextmanager
def environ(values: dict[str, str]):
    """os.environ with `values` set, as child processes started inside inherit it; restored after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def limit_threads() -> None:
    """Dask workers are single-threaded: keep numba and BLAS to one thread each."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    threadpool_limits(1)


@contextmanager
def dask_client(cfg=None):
    """A Dask client: to the scheduler named by $DEEPDRAM_DASK_SCHEDULER or cfg.scheduler, else a
    LocalCluster of cfg.n_workers single-threaded worker processes (default: one per core) that
    load the pinned kernels (`pinned_kernels_env`; workers of a named scheduler are the user's).

    `cfg`: the `dask` params section (scheduler, n_workers, threads_per_worker) or None."""
    from dask.distributed import Client, LocalCluster

    address = os.environ.get(SCHEDULER_ENV) or getattr(cfg, "scheduler", None)
    if address:
        client = Client(address)
        try:
            yield client
        finally:
            client.close()
        return
    n = int(os.environ.get(WORKERS_ENV) or getattr(cfg, "n_workers", None) or os.cpu_count() or 1)
    threads = int(getattr(cfg, "threads_per_worker", None) or 1)
    # Worker processes are spawned (a fresh interpreter): they load OpenBLAS and NumPy under this
    # environment. An explicit setting of the user's wins.
    pinned = {k: v for k, v in pinned_kernels_env().items() if k not in os.environ}
    with environ(pinned), LocalCluster(n_workers=n, threads_per_worker=threads, processes=True, scheduler_port=0,
                                       dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def run_shards(
    client,
    name: str,
    paths: Sequence[Path],
    tasks: Sequence[tuple],
    func: Callable[..., int],
    unit: str = "design",
    *,
    point: str,
) -> None:
    """Run func(path, *task) on Dask for every task whose file is missing (resume after a crash).

    func must write its file atomically and return the number of rows it wrote. `point` names this
    phase for the crash tests' pause points: `<point>:shard-<n>` after the n-th shard of this run.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    todo = [i for i, p in enumerate(paths) if not Path(p).exists()]
    done = len(tasks) - len(todo)
    if done:
        print(f"{name}: resuming, {done} of {len(tasks)} shards already done")
    if not todo:
        return
    from deepdram.data.atomic import pause_point

    t0, rows, finished = time.perf_counter(), 0, 0
    with tqdm(total=len(tasks), initial=done, unit="shard", desc=name, dynamic_ncols=True) as bar:
        futures = [client.submit(func, paths[i], *tasks[i], key=f"{name}-{Path(paths[i]).parent.name}-{i}",
                                 pure=False) for i in todo]
        try:
            for fut in as_completed(futures):
                rows += fut.result()
                finished += 1
                bar.update(1)
                pause_point(f"{point}:shard-{finished}")
                bar.set_postfix_str(f"{rows / (time.perf_counter() - t0):,.0f} {unit}s/s")
        except BaseException:
            client.cancel(futures)
            raise


def publish(paths: Sequence[Path], out_dir: Path, write: Callable[[Path, Path], None] | None = None,
            keep_scratch: bool = False) -> None:
    """Place shard files as out_dir/part-*.parquet (a dataset pandas reads whole), then drop scratch.

    `write(shard, target)` writes a shard's published file (default: a copy); `keep_scratch` keeps
    the shards' folder for a later run. The new folder is filled beside the old one
    (`.<name>.tmp`) and swapped in by renames: the old dataset is removed only once the new one is
    complete. A write that fails (full disk, a file where a folder should be) raises OutputError
    naming out_dir and keeps the old dataset; any other failure also leaves no partial folder."""
    from deepdram.data.atomic import output_error, pause_point

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    old = out_dir.with_name(f".{out_dir.name}.old")
    try:
        _remove(tmp)
        if old.exists() and not out_dir.exists():  # a crash mid-swap: the old dataset was set aside
            os.replace(old, out_dir)
        _remove(old)
        tmp.mkdir(parents=True)
        for p in paths:
            (write or shutil.copyfile)(p, tmp / p.name)
            with open(tmp / p.name, "rb") as fh:
                os.fsync(fh.fileno())
        pause_point(f"{out_dir.stem}:publish")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(out_dir, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(old)
    if paths and not keep_scratch:
        shutil.rmtree(paths[0].parent, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a file or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clear_stale(root: Path, keep: str) -> None:
    """Remove scratch folders under root other than `keep` (work of older configurations)."""
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
