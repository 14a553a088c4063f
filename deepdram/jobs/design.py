"""Stage `design`: every shipped request and the sweep subset with the champion models, figures,
print files; registers `deepdram-designer` and promotes it on its success rate.

Writes into a temporary folder next to outputs/designs (`.designs.<pid>.*`) and swaps it in at the
end by renames: nothing half-written, and the old designs stay until the new ones are complete. A
failed write (full disk, a file where a folder should be) ends the stage with a message naming
outputs/designs. Work folders and designer runs left by a killed run are cleared (FAILED) by the
next one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from deepdram.jobs.runner import pid_alive, run

SECTIONS = ("design",)


def flat_summary(summaries: dict) -> dict:
    """Per-request counts as flat metrics."""
    out = {}
    for name, s in summaries.items():
        for k in ("candidates", "valid", "distinct", "accepted", "verified", "fe_within_threshold",
                  "best_mse_fe", "peak_spread_pct"):
            if isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool):
                out[f"{name}.{k}"] = s[k]
    return out


def train_properties(space, path: Path, n: int = 20000, seed: int = 0) -> np.ndarray:
    """A sample of the training split's unit-cell properties (empty if the split is missing)."""
    if not path.exists():
        return np.zeros((0, space.n_properties))
    import pandas as pd

    df = pd.read_parquet(path, columns=list(space.properties))
    idx = np.random.default_rng(seed).permutation(len(df))[:n]
    return df.to_numpy()[np.sort(idx)]


def train_variances(space, cells_path: Path, tilings_path: Path) -> dict[str, list[float]]:
    """Each property's variance over the training split: unit cells, and tilings (the scaled objective)."""
    import pandas as pd

    from deepdram.errors import DeepdramError

    for path in (cells_path, tilings_path):
        if not path.exists():
            raise DeepdramError(f"the scaled objective needs the training split's variances, and {path} is "
                                "missing: run `dvc repro splits tilings` first, or set design.objective: mse")
    cells = pd.read_parquet(cells_path, columns=list(space.properties))
    tilings = pd.read_parquet(tilings_path, columns=[*space.properties, "split"])
    tilings = tilings[tilings["split"] == "train"]
    return {"cells": np.var(cells.to_numpy(), axis=0).tolist(),
            "tilings": np.var(tilings[list(space.properties)].to_numpy(), axis=0).tolist()}


def register_designer(keras_paths: dict, versions: dict, summaries: dict, fingerprint: str, tolerance: float,
                      variances: dict | None = None) -> dict:
    """Log the designer pyfunc in a run, register it as challenger and promote it (gated)."""
    import mlflow

    from deepdram.data.atomic import pause_point
    from deepdram.jobs.runner import OWNER_TAG, owner
    from deepdram.mlops import designer, registry, tracking
    from deepdram.mlops.catalogue import DESIGN_ROLES, DESIGNER

    tracking.experiment(DESIGNER.experiment)
    n = len(summaries)
    success = sum(1 for s in summaries.values() if s["fe_within_threshold"] > 0) / max(1, n)
    best = [s["best_mse_fe"] for s in summaries.values() if s["best_mse_fe"] is not None]
    roles = DESIGN_ROLES["lattice"]
    with mlflow.start_run(run_name="design", tags={OWNER_TAG: owner()}) as run_:
        tracking.log_tags({tracking.TEST_SET_TAG: fingerprint})
        tracking.log_params_flat({f"{k}_version": v for k, v in versions.items()})
        mlflow.log_metrics({"design_success_rate": success,
                            "design_mean_best_mse_fe": float(np.mean(best)) if best else float("nan"),
                            **{f"{k}_{m}": float(v) for k, s in summaries.items()
                               for m, v in (("accepted", s["accepted"]), ("fe_within", s["fe_within_threshold"]))}})
        designer.log_designer(keras_paths, metadata={"models": {k: f"{roles[k]}@v{v}" for k, v in versions.items()}},
                              variances=variances)
        pause_point("design:designer-logged")
    version = registry.register(run_.info.run_id, DESIGNER.name, artifact="designer")
    decision = registry.promote(DESIGNER.name, metric=DESIGNER.metric, tolerance=tolerance)
    return {"run_id": run_.info.run_id, "version": version, "decision": decision["decision"],
            "reason": decision["reason"], "design_success_rate": success}


def clear_dead_work(out_dir: Path) -> None:
    """Remove the work folders (`.<name>.<pid>.*`) that killed design runs left beside out_dir (an old
    folder set aside by a swap the kill interrupted goes back in place)."""
    for d in sorted(out_dir.parent.glob(f".{out_dir.name}.*")):
        pid = d.name[len(out_dir.name) + 2:].split(".")[0]
        if not d.is_dir() or (pid.isdigit() and pid_alive(int(pid))):
            continue
        if d.name.endswith(".old") and not out_dir.exists():
            os.replace(d, out_dir)  # killed between the two renames of `swap_in`: the old designs return
        else:
            shutil.rmtree(d, ignore_errors=True)


def recover_designer_runs() -> None:
    """Designer runs left RUNNING by a killed design run become FAILED; unsound aliases go."""
    from deepdram.jobs.runner import fail_dead_runs
    from deepdram.mlops import registry, tracking
    from deepdram.mlops.catalogue import DESIGNER

    fail_dead_runs(tracking.experiment(DESIGNER.experiment), "design")
    registry.repair_aliases(DESIGNER.name)


def swap_in(work: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished work folder: two renames, the old folder removed last. The
    folder gets the usual mode (0777 minus the umask; `mkdtemp` made it 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    if out_dir.exists():
        os.replace(out_dir, old)
    try:
        os.replace(work, out_dir)
    except OSError:
        if old.exists():
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_failure(out_dir: Path, exc: OSError):
    """The OutputError naming out_dir for a failed write, or None for another kind of OSError."""
    from deepdram.data.atomic import OutputError, output_error
    from deepdram.jobs.runner import FS_ERRNOS

    if isinstance(exc, OutputError):
        return OutputError(f"{out_dir}: cannot write: {exc} (the previous designs are kept)")
    if exc.errno in FS_ERRNOS:
        return OutputError(f"{output_error(out_dir, exc)} (the previous designs are kept)")
    return None


def job(params) -> dict:
    import json
    import tempfile
    from dataclasses import replace

    from tqdm import tqdm

    from deepdram.data.atomic import output_error, pause_point, write_json
    from deepdram.data.shards import fingerprint as fingerprint_of
    from deepdram.data.tables import write_table
    from deepdram.design.pipeline import design, load_surrogates, sweep
    from deepdram.design.requests import DesignGrid, DesignRequest, load_request_file, subset_grid
    from deepdram.errors import InputError
    from deepdram.learn.models import predict
    from deepdram.mlops.champions import champion_files
    from deepdram.paths import DESIGNS_DIR, REQUESTS_DIR, SPLITS_DIR, TILINGS_PATH
    from deepdram.spaces.lattice import design_figures
    from deepdram.spaces.lattice import export
    from deepdram.spaces.lattice.space import LatticeSpace

    cfg = params.design
    space = LatticeSpace()
    reqs: list[DesignRequest] = []
    for name in cfg.requests:
        r = load_request_file(REQUESTS_DIR / f"{name}.yaml")
        if not isinstance(r, DesignRequest):
            raise InputError(f"design.requests: {name}.yaml is a grid; name it under design.sweep")
        r = replace(r, objective=cfg.objective)
        reqs.append(r if cfg.n_candidates is None else replace(r, n_candidates=cfg.n_candidates))
    grid = None
    if cfg.sweep:
        g = load_request_file(REQUESTS_DIR / f"{cfg.sweep}.yaml")
        if not isinstance(g, DesignGrid):
            raise InputError(f"design.sweep: {cfg.sweep}.yaml has no 'grid'")
        prof = cfg.sweep_profile
        grid = subset_grid(g, prof.sizes, prof.n_candidates, prof.target_stride)
    files = sorted(REQUESTS_DIR.glob("*.yaml"))
    fingerprint = fingerprint_of(json.dumps(cfg.model_dump(by_alias=True), default=str, sort_keys=True), files=files)

    out_dir = DESIGNS_DIR
    if cfg.register_designer:
        recover_designer_runs()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        clear_dead_work(out_dir)
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", dir=out_dir.parent))
    except OSError as exc:
        raise output_error(out_dir, exc) from None
    try:
        keras_dir = work / ".models"
        keras_paths, versions = champion_files(keras_dir, space.name)
        variances = (train_variances(space, SPLITS_DIR / "train.parquet", TILINGS_PATH)
                     if any(r.objective == "scaled" for r in reqs) else None)
        m = load_surrogates(keras_paths, space)
        m.versions = versions
        results, summaries = {}, {}
        total = sum(r.n_candidates for r in reqs)
        with tqdm(total=total, unit="cand", unit_scale=True, desc="design requests") as bar:
            for i, r in enumerate(reqs, 1):
                res = design(space, m, r, progress=bar.update,
                             variances=variances["cells" if r.conditions is None else "tilings"] if r.objective == "scaled"
                             else None)
                results[r.name] = res
                summaries[r.name] = res.summary
                write_table(res.table, work / f"{r.name}.csv")
                pause_point(f"design:request-{i}")
        summaries_sweep = {}
        if grid is not None:
            with tqdm(total=len(grid.targets), unit="target", desc=f"sweep {grid.name}") as bar:
                sweep_df, env_designs = sweep(space, m, grid, progress=bar.update,
                                              single_image=cfg.sweep_profile.single_image)
            write_table(sweep_df, work / f"{grid.name}.csv")
            design_figures.mse_heatmaps(work / "plots" / "fig4b_mse_heatmaps.png", sweep_df, grid.mse_threshold)
            design_figures.envelope(work / "plots" / "fig2b_envelope.png", train_properties(space, SPLITS_DIR / "train.parquet"),
                       predict(m.models["forward"], env_designs))
            summaries_sweep = {f"{d1}x{d2}": int((g_["best_mse_pred"] <= grid.mse_threshold).sum())
                               for (d1, d2), g_ in sweep_df.groupby(["d1", "d2"], sort=False)}
        thr = reqs[0].mse_threshold if reqs else 0.1
        tilings = {n: r for n, r in results.items() if r.request.conditions is not None}
        cells = {n: r for n, r in results.items() if r.request.conditions is None}
        design_figures.stress_scatter(work / "plots" / "fig5b_peak_stress.png", {n: r.table for n, r in tilings.items()}, thr)
        design_figures.drawings(work / "plots" / "fig5c_drawings.png", design_figures.selected_drawings(tilings))
        design_figures.drawings(work / "plots" / "table10_unit_cells.png", design_figures.selected_drawings(cells))
        for name, r in results.items():
            for _, row in r.table.head(cfg.export_top).iterrows():
                d = row[list(space.variables)].to_numpy(np.uint8)
                export.write_print_files(work / "export" / f"{name}_rank{int(row['rank'])}", d,
                                         int(row["d1"]), int(row["d2"]))
        reg = None
        if cfg.register_designer:
            reg = register_designer(keras_paths, versions, summaries, fingerprint, cfg.tolerance, variances)
        shutil.rmtree(keras_dir)
        summary = {"requests": summaries, "models": versions, "designer": reg,
                   "sweep": None if grid is None else {
                       "name": grid.name, "targets": len(grid.targets), "sizes": [list(s) for s in grid.sizes],
                       "n_candidates": grid.n_candidates, "targets_within_threshold": summaries_sweep}}
        write_json(summary, work / "summary.json")
        pause_point("design:swap")
        swap_in(work, out_dir)
    except OSError as exc:  # a full disk, an unwritable folder: the old designs stay
        shutil.rmtree(work, ignore_errors=True)
        failure = write_failure(out_dir, exc)
        if failure is None:
            raise
        raise failure from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    flat = flat_summary(summaries)
    if grid is not None:
        flat |= {f"sweep.within_{k}": v for k, v in summaries_sweep.items()}
    if reg is not None:
        flat |= {"designer_version": reg["version"], "designer_decision": reg["decision"]}
    return flat | {"requests": len(reqs)}


def main() -> int:
    return run("design", job)
