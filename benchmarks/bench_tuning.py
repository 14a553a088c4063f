"""Search efficiency: the paper's full grid vs Optuna (TPE + median pruning) on one reduced space.

Same data (a fixed subset of the forward model's train split), same 3 folds, same per-config
training (deepdram.learn.search.objective.cross_validate). Prints the grid's best CV R2, then how many Optuna
trials and training epochs it took to get within `--tol` R2 of it (target: <= 25 % of the grid's
epochs), and the MLflow logging overhead per trial (nested child run: create, one log_batch,
terminate) measured on a temporary sqlite store.

    python benchmarks/bench_tuning.py [--rows 3000] [--epochs 5] [--tol 0.002] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
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


def _search():
    """The tuning API (deepdram.learn.search) under the names this benchmark uses."""
    from types import SimpleNamespace

    from deepdram.learn.search import config, objective, optuna_backend, trials
    from deepdram.spaces.lattice.space import LatticeSpace

    space = LatticeSpace()

    def cross_validate(cfg, values, data, folds, report=None):
        return objective.cross_validate(cfg, values, data, folds, report, space=space)

    return SimpleNamespace(TuneConfig=config.TuneConfig, TrialFailed=config.TrialFailed, kfold=objective.kfold,
                           CVResult=objective.CVResult, cross_validate=cross_validate, _suggest=optuna_backend._suggest,
                           parent_run=trials.parent_run, TrialLogger=trials.TrialLogger)


def _cfg(rows: int, epochs: int, seed: int):
    tuning = _search()

    return tuning.TuneConfig(model="forward", trials=0, seed=seed, folds=3, rows=rows,
                             fit={"epochs": epochs, "batch_size": 128, "learning_rate": 0.002},
                             space=dict(SPACE))


def _data(rows: int, seed: int):
    import pandas as pd

    from deepdram.learn.training import subsample, xy
    from deepdram.paths import SPLITS_DIR
    from deepdram.spaces.lattice.space import LatticeSpace

    path = SPLITS_DIR / "train.parquet"
    if not path.exists():
        sys.exit(f"bench_tuning: {path} is missing; run the data stages first (make repro)")
    return {"": subsample(*xy(LatticeSpace(), pd.read_parquet(path)), rows, seed)}


def run_grid(cfg, data, folds) -> tuple[list[tuple[dict, float]], int]:
    """Every configuration of SPACE, 3-fold CV: [(values, score)], total epochs."""
    tuning = _search()

    out, epochs = [], 0
    keys = list(SPACE)
    for i, combo in enumerate(itertools.product(*SPACE.values())):
        values = {**FIXED, **dict(zip(keys, combo))}
        try:
            res = tuning.cross_validate(cfg, values, data, folds)
            score, epochs = res.mean, epochs + res.epochs
        except tuning.TrialFailed:
            score, epochs = float("-inf"), epochs + cfg.fit["epochs"] * cfg.folds
        out.append((values, score))
        print(f"  grid {i + 1:3d}: R2 {score:.4f}", flush=True)
    return out, epochs


def run_optuna(cfg, data, folds, target: float, max_trials: int, seed: int) -> dict:
    """TPE + median pruner (duplicates answered from the study) until a trial reaches `target`."""
    import optuna

    tuning = _search()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
    spent = {"epochs": 0}

    def objective(trial):
        values = {**FIXED, **tuning._suggest(trial, SPACE)}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.params == trial.params:
                return t.value

        def report(step, score):
            spent["epochs"] += 1
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            return tuning.cross_validate(cfg, values, data, folds, report).mean
        except tuning.TrialFailed:
            return float("-inf")

    reached = None
    for n in range(1, max_trials + 1):
        study.optimize(objective, n_trials=1)
        t = study.trials[-1]
        if t.state.name == "COMPLETE" and t.value >= target and reached is None:
            reached = {"trials": n, "epochs": spent["epochs"], "score": t.value}
            break
    return {"reached": reached, "trials": len(study.trials), "epochs": spent["epochs"],
            "best": study.best_value, "pruned": sum(t.state.name == "PRUNED" for t in study.trials)}


def mlflow_overhead(n: int = 100) -> float:
    """Seconds per trial of the nested-run logging (create, one log_batch, terminate), sqlite store."""
    from deepdram.mlops import tracking

    tuning = _search()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp, 'mlflow.db').as_posix()}"
        tracking.reset()
        tracking.configure()
        parent = tuning.parent_run("bench", "forward", "optuna", "memory")
        logger = tuning.TrialLogger(parent, "bench", "forward")
        values = {**FIXED, **{k: v[0] for k, v in SPACE.items()}}
        res = tuning.CVResult([0.9, 0.91, 0.92], 24, list(np.linspace(0.5, 0.9, 24)))
        logger.start(-1, values)  # warm-up (first connection, table checks)
        t0 = time.perf_counter()
        for i in range(n):
            rid, over = logger.start(i, values)
            logger.finish(rid, values, "complete", res, 1.0, over, "r2")
        per = (time.perf_counter() - t0) / n
        tracking.reset()
        del os.environ["MLFLOW_TRACKING_URI"]
    return per


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--tol", type=float, default=0.002)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tuning = _search()

    per = mlflow_overhead()
    print(f"MLflow logging overhead: {per * 1000:.1f} ms per trial (nested run, batched)", flush=True)
    cfg = _cfg(args.rows, args.epochs, args.seed)
    data = _data(args.rows, args.seed)
    folds = {"": tuning.kfold(len(data[""][0]), cfg.folds, cfg.seed)}
    n_grid = int(np.prod([len(v) for v in SPACE.values()]))
    print(f"space: {n_grid} configurations; {len(data[''][0])} rows, 3 folds, {args.epochs} epochs", flush=True)
    t0 = time.perf_counter()
    grid, grid_epochs = run_grid(cfg, data, folds)
    grid_s = time.perf_counter() - t0
    best_values, best = max(grid, key=lambda g: g[1])
    print(f"grid: best CV R2 {best:.4f} ({grid_epochs} epochs, {grid_s:.0f} s) at {best_values}")
    t0 = time.perf_counter()
    opt = run_optuna(cfg, data, folds, best - args.tol, n_grid, args.seed)
    opt_s = time.perf_counter() - t0
    r = opt["reached"]
    if r is None:
        print(f"optuna: did not reach {best - args.tol:.4f} in {opt['trials']} trials (best {opt['best']:.4f})")
        return 1
    ratio = r["epochs"] / grid_epochs
    print(f"optuna: within {args.tol} of the grid's best after {r['trials']} trials, {r['epochs']} epochs "
          f"({ratio:.1%} of the grid's epochs; {opt['pruned']} pruned; {opt_s:.0f} s); R2 {r['score']:.4f}")
    print(f"target <= 25 % of the grid's epochs: {'met' if ratio <= 0.25 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
