"""Search efficiency of the tuning stage's tuner against the paper's full grid, and what its CV ranking
means at full training.

One reduced space of Table 5 (48 configurations), one fixed subset of the forward model's train
split, 3 folds, the same per-configuration training: the grid scores every configuration by the
CV objective the tuning stage runs (`deepdram.learn.search.objective.cross_validate`). Then the
stage's own tuner (`deepdram.learn.search.study.tune`: TPE with constant liar, the pruner of
params.yaml `tune_forward.pruner`, duplicates answered from the study, every trial a nested MLflow
run in a temporary sqlite store) runs one study per sampler seed (the stage's `worker` number), on
the same data and folds. Printed per seed: the training epochs the study spent until a trial came
within `--tol` R2 of the grid's best, as a share of the grid's epochs; then the median over the
seeds (target <= 10 %). Last, `--sample` configurations spread over the grid's ranking are trained
as the training stage trains (train split, the stage's augmentation, batch size, learning rate and
schedule; `--full-rows` cells, `--full-epochs` epochs) and scored on the val split: the Spearman
rank correlation between their CV scores and those full-training scores says whether the search's
ranking holds at full scale.

    python benchmarks/bench_tuning.py [--rows 3000] [--epochs 5] [--tol 0.002] [--seeds 5]
        [--trials 24] [--sample 8] [--full-rows 20000] [--full-epochs 20]
        [--pruner kind=median startup_trials=6 ...] [--grid-cache FILE]

`--pruner` overrides keys of params.yaml's `tune_forward.pruner` (checked by the params schema), to
compare settings; `--grid-cache` keeps the grid's scores in a JSON file and reuses them when the
settings that produced them (rows, epochs, backend, space) match.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np

SPACE = {  # 2 x 3 x 2 x 2 x 2 = 48 configurations of Table 5's space
    "hidden_layers": [2, 4],
    "first_width": [20, 100, 500],
    "activation": ["relu", "tanh"],
    "output_activation": ["none", "relu"],
    "optimizer": ["adam", "rmsprop"],
}
FIXED = {"scaling": "minmax", "shape": "triangle", "batch_norm": False}
TARGET = 0.10  # share of the grid's epochs


def tune_config(rows: int, epochs: int, trials: int, work_dir: Path, pruner: dict):
    """The study's settings as the tuning stage builds them (no paper trial: the grid has it)."""
    from deepdram.learn.search.config import TuneConfig

    return TuneConfig(model="forward", backend="optuna", storage=f"sqlite:///{work_dir / 'study.db'}", trials=trials,
                      seed=0, folds=3, rows=rows, fit={"epochs": epochs, "batch_size": 128, "learning_rate": 0.002},
                      space=dict(SPACE), fixed=dict(FIXED), pruner=dict(pruner), work_dir=work_dir)


def train_data(rows: int):
    """`rows` cells of the train split (seed 0), as the stage's `load_data` picks them."""
    import pandas as pd

    from deepdram.learn.training import subsample, xy
    from deepdram.paths import SPLITS_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    path = SPLITS_DIR / "train.parquet"
    if not path.exists():
        sys.exit(f"bench_tuning: {path} is missing; run the data stages first (make repro)")
    return {"": subsample(*xy(LatticeSpace(), pd.read_parquet(path)), rows, 0)}


def run_grid(cfg, data) -> tuple[list[tuple[dict, float]], int]:
    """Every configuration of SPACE by the stage's CV objective: [(values, score)], total epochs."""
    from deepdram.learn.search.config import TrialFailed
    from deepdram.learn.search.objective import cross_validate, kfold
    from deepdram.spaces.lattice.space import LatticeSpace

    folds = {"": kfold(len(data[""][0]), cfg.folds, cfg.seed)}
    out, epochs = [], 0
    keys = list(SPACE)
    for i, combo in enumerate(itertools.product(*SPACE.values())):
        values = dict(zip(keys, combo))
        try:
            res = cross_validate(cfg, {**FIXED, **values}, data, folds, space=LatticeSpace())
            score, epochs = res.mean, epochs + res.epochs
        except TrialFailed:
            score, epochs = float("-inf"), epochs + cfg.fit["epochs"] * cfg.folds
        out.append((values, score))
        print(f"  grid {i + 1:3d}: R2 {score:.4f}", flush=True)
    return out, epochs


def cached_grid(path: Path | None, key: dict, cfg, data) -> tuple[list[tuple[dict, float]], int, float]:
    """`run_grid`'s result, read from `path` when it was made with the same `key`, else run and kept."""
    if path is not None and path.exists():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return [(v, float(s)) for v, s in kept["grid"]], int(kept["epochs"]), float(kept["seconds"])
    t0 = time.perf_counter()
    grid, epochs = run_grid(cfg, data)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "grid": grid, "epochs": epochs, "seconds": seconds}))
    return grid, epochs, seconds


def run_study(cfg, data, worker: int) -> tuple[list[tuple[int, float | None]], dict]:
    """One study of the stage's tuner (sampler seed: `worker`): [(epochs trained, score or None)] per
    trial in order (pruned: None; a duplicate answered from the study trains 0 epochs), and the
    tuner's summary."""
    from optuna.trial import TrialState

    from deepdram.learn.search.optuna_backend import open_study
    from deepdram.learn.search.study import tune
    from deepdram.spaces.lattice.space import LatticeSpace

    summary = tune(cfg, data, n_trials=cfg.trials, worker=worker, out_dir=cfg.work_dir, progress=False,
                   space=LatticeSpace())
    study = open_study(cfg, worker)
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        done = t.state == TrialState.COMPLETE
        rows.append((len(t.intermediate_values), t.value if done else None))
    return rows, summary


def epochs_to_reach(trials: list[tuple[int, float | None]], target: float) -> tuple[int, int] | None:
    """(trials, epochs) spent until the first trial scoring >= target; None if none did."""
    spent = 0
    for n, (epochs, score) in enumerate(trials, 1):
        spent += epochs
        if score is not None and score >= target:
            return n, spent
    return None


def full_data(section, rows: int) -> tuple:
    """(x_tr, y_tr, x_va, y_va): `rows` train cells with the training stage's augmentation, the val split."""
    import pandas as pd

    from deepdram.learn.training import augment_symmetries, subsample, xy
    from deepdram.paths import SPLITS_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    space = LatticeSpace()
    train, val = (xy(space, pd.read_parquet(SPLITS_DIR / f"{s}.parquet")) for s in ("train", "val"))
    return (*augment_symmetries(space, *subsample(*train, rows, 1), section.augment), *val)


def full_training(values: dict, section, data: tuple, epochs: int) -> float:
    """Val R2 of one configuration trained as the training stage trains it (fewer cells / epochs)."""
    from deepdram.learn import models as M
    from deepdram.learn.configs import RegressorConfig
    from deepdram.learn.metrics import r2_overall
    from deepdram.spaces.lattice.space import LatticeSpace

    x_tr, y_tr, x_va, y_va = data
    # the saved model's symmetry averaging changes only how it predicts, not what it learns
    model = {k: v for k, v in section.model.items() if k != "symmetrize"}
    cfg = RegressorConfig.forward_paper(**{**FIXED, **values, **model, "epochs": epochs, "patience": 0})
    trained, _ = M.train_regressor(x_tr, y_tr, None, None, cfg, space=LatticeSpace())
    return float(r2_overall(y_va, M.predict(trained, x_va)))


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000, help="CV rows (3 folds)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per fold")
    ap.add_argument("--tol", type=float, default=0.002, help="R2 below the grid's best that counts as reached")
    ap.add_argument("--seeds", type=int, default=5, help="studies (sampler seeds)")
    ap.add_argument("--trials", type=int, default=24, help="trials per study")
    ap.add_argument("--sample", type=int, default=8, help="configurations trained at full scale (0: skip)")
    ap.add_argument("--full-rows", type=int, default=20000, help="train cells of a full-training run")
    ap.add_argument("--full-epochs", type=int, default=20, help="epochs of a full-training run")
    ap.add_argument("--pruner", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override keys of params.yaml tune_forward.pruner (e.g. kind=halving min_epochs=1)")
    ap.add_argument("--grid-cache", type=Path, default=None, help="JSON file keeping the grid's scores")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.trials < 1:
        ap.error("--seeds and --trials must be >= 1")

    import yaml

    from deepdram.learn.backend import use
    from deepdram.params import Pruner, load

    params = load()
    use(params.keras.backend)  # the tuning stage's backend
    bad = [kv for kv in args.pruner if "=" not in kv]
    if bad:
        ap.error(f"--pruner takes KEY=VALUE items; got {bad}")
    try:
        overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.pruner)}
        pruner = Pruner(**{**params.tune_forward.pruner.model_dump(), **overrides}).model_dump()
    except ValueError as exc:  # a pydantic ValidationError is a ValueError
        ap.error(f"--pruner: {exc}")
    from deepdram.mlops import tracking

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp, 'mlflow.db').as_posix()}"
        tracking.reset()
        tracking.configure()
        data = train_data(args.rows)
        grid_cfg = tune_config(args.rows, args.epochs, args.trials, Path(tmp), pruner)
        n_grid = int(np.prod([len(v) for v in SPACE.values()]))
        print(f"space: {n_grid} configurations; {len(data[''][0])} rows, 3 folds, {args.epochs} epochs; "
              f"backend {params.keras.backend}; pruner {pruner}", flush=True)
        key = {"rows": args.rows, "epochs": args.epochs, "backend": params.keras.backend, "space": SPACE,
               "fixed": FIXED}
        grid, grid_epochs, seconds = cached_grid(args.grid_cache, key, grid_cfg, data)
        best_values, best = max(grid, key=lambda g: g[1])
        print(f"grid: best CV R2 {best:.4f} ({grid_epochs} epochs, {seconds:.0f} s) at {best_values}; "
              f"{sum(s >= best - args.tol for _, s in grid)} configurations within {args.tol} of it")
        target = best - args.tol
        shares, overheads = [], []
        for s in range(args.seeds):
            work = Path(tmp, f"seed{s}")
            work.mkdir()
            cfg = tune_config(args.rows, args.epochs, args.trials, work, pruner)
            t0 = time.perf_counter()
            trials, summary = run_study(cfg, data, worker=s)
            overheads.append(summary["mlflow_overhead_s_per_trial"])
            hit = epochs_to_reach(trials, target)
            spent = sum(e for e, _ in trials)
            pruned = f"{sum(v is None for _, v in trials)} of {len(trials)} trials pruned"
            if hit is None:
                shares.append(float("inf"))
                print(f"seed {s}: not within {args.tol} of the grid's best in {len(trials)} trials "
                      f"({spent} epochs, {spent / grid_epochs:.1%} of the grid's; {pruned}; best "
                      f"{max((v for _, v in trials if v is not None), default=float('nan')):.4f}; "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
            else:
                shares.append(hit[1] / grid_epochs)
                print(f"seed {s}: within {args.tol} after {hit[0]} trials, {hit[1]} epochs = {shares[-1]:.1%} of the "
                      f"grid's ({pruned}; {time.perf_counter() - t0:.0f} s)", flush=True)
        median = float(np.median(shares))
        ok = median <= TARGET
        print(f"MLflow logging overhead of the tuner: {1000 * float(np.mean(overheads)):.1f} ms per trial "
              "(nested run, batched; sqlite)")
        print(f"median over {args.seeds} seeds: {median:.1%} of the grid's epochs (target <= {TARGET:.0%}): "
              f"{'PASS' if ok else 'FAIL'}")
        tracking.reset()
        del os.environ["MLFLOW_TRACKING_URI"]
    if args.sample:
        ranked = sorted(grid, key=lambda g: -g[1])
        pick = [ranked[int(i)] for i in np.linspace(0, len(ranked) - 1, min(args.sample, len(ranked)))]
        cv, full = [], []
        full_set = full_data(params.train_forward, args.full_rows)
        for values, score in pick:
            t0 = time.perf_counter()
            full.append(full_training(values, params.train_forward, full_set, args.full_epochs))
            cv.append(score)
            print(f"  CV R2 {score:.4f} -> full training R2 {full[-1]:.4f} ({time.perf_counter() - t0:.0f} s) "
                  f"at {values}", flush=True)
        print(f"Spearman rank correlation, CV ({args.rows} rows, {args.epochs} epochs) against full training "
              f"({args.full_rows} cells, {args.full_epochs} epochs), {len(pick)} configurations: {spearman(cv, full):.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
