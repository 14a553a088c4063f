"""Training speed per Keras backend: the training stages' own networks on their own data.

Each backend trains in its own process (Keras fixes its backend at import): the forward model on
the train split (the stage's augmentation) and the size-agnostic model on the tilings' train rows,
with the architecture the stage trains (outputs/tuning/<model>_best.yaml when the tuning stage has
run, else the paper's) and the stage's batch size, for --epochs epochs. Prints per model and
backend the first epoch (with tracing / compilation), the median of the later epochs, CPU use and
the val R2 reached, then JAX against TensorFlow. The claim it checks: JAX (params.yaml
keras.backend's default) trains each network faster per epoch than TensorFlow on this machine.

    python benchmarks/bench_training.py [--epochs 3] [--rows N] [--models forward,size_agnostic]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ("forward", "size_agnostic")


def _child(model: str, epochs: int, rows: int | None) -> dict:
    """Train one model here (the backend is already chosen); its timings and val R2."""
    import keras
    import numpy as np
    import pandas as pd

    from deepdram.jobs.training_common import model_overrides
    from deepdram.learn import models as M
    from deepdram.learn.configs import RegressorConfig
    from deepdram.learn.metrics import regression_table
    from deepdram.learn.training import augment_symmetries, subsample, xy
    from deepdram.params import load
    from deepdram.paths import SPLITS_DIR, TILINGS_PATH
    from deepdram.spaces.lattice.space import LatticeSpace

    params = load()
    space = LatticeSpace()
    section = getattr(params, f"train_{model}")
    over = model_overrides(section, f"train_{model}") if (section.source != "tuned" or _tuned(model)) \
        else dict(section.model)
    over.update(epochs=epochs, patience=0)
    if model == "forward":
        cfg = RegressorConfig.forward_paper(**over)
        train, val = (xy(space, pd.read_parquet(SPLITS_DIR / f"{s}.parquet")) for s in ("train", "val"))
    else:
        from deepdram.data.splits import split_rows

        cfg = RegressorConfig.size_agnostic_paper(**over)
        tilings = pd.read_parquet(TILINGS_PATH)
        train, val = (xy(space, split_rows(tilings, s), conditions=True) for s in ("train", "val"))
    x_tr, y_tr = augment_symmetries(space, *subsample(*train, rows, 0), section.augment)
    x_va, y_va = val

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    times: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    trained, _ = M.train_regressor(x_tr, y_tr, x_va, y_va, cfg, space=space, callbacks=[Clock()])
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
    table = regression_table(y_va, M.predict(trained, x_va), space.properties, space.table_order)
    return {"first": times[0], "later": float(np.median(times[1:])) if len(times) > 1 else float("nan"),
            "cpu": cpu, "rows": len(x_tr), "val_r2": float(table.loc["R2", "overall"]),
            "layers": cfg.hidden_layers, "width": cfg.first_width, "batch": cfg.batch_size}


def _tuned(model: str) -> bool:
    from deepdram.paths import TUNING_DIR

    return (TUNING_DIR / f"{model}_best.yaml").is_file()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per model and backend (>= 2)")
    ap.add_argument("--rows", type=int, default=None, help="train rows before augmentation (default: all)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        from deepdram.learn.backend import use

        use(args.child[1])
        print(json.dumps(_child(args.child[0], args.epochs, args.rows)))
        return 0
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch includes tracing)")
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: unknown model {m!r}; choose from {', '.join(MODELS)}")
    from deepdram.learn.backend import BACKENDS

    ok = True
    for m in models:
        res = {}
        for b in BACKENDS:
            cmd = [sys.executable, __file__, "--child", m, b, "--epochs", str(args.epochs)]
            if args.rows:
                cmd += ["--rows", str(args.rows)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            res[b] = r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{m:14s} {b:10s} {r['rows']:>9,} rows, {r['layers']} x {r['width']} at batch {r['batch']}: "
                  f"first epoch {r['first']:6.1f} s, later {r['later']:6.1f} s/epoch, CPU {100 * r['cpu']:.0f} %, "
                  f"val R2 after {args.epochs} epochs {r['val_r2']:.4f}")
        ratio = res["tensorflow"]["later"] / res["jax"]["later"]
        verdict = "PASS" if ratio > 1 else "FAIL"
        ok &= ratio > 1
        print(f"{m:14s} JAX {ratio:.2f}x the speed of TensorFlow per epoch (target > 1): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
