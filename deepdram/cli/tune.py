"""`deepdram tune`: run or join a hyperparameter study (Optuna / Keras-Tuner; every trial in MLflow)."""

from __future__ import annotations

import argparse
import os

from deepdram.cli.common import add_parser

MODELS = ("forward", "size_agnostic", "cvae")

DESCRIPTION = """\
Run trials of the hyperparameter study of one model (forward, size_agnostic or
cvae), with the settings of section tune_<MODEL> of params.yaml. Without
--trials the study is brought to tune_<MODEL>.trials finished trials (what the
DVC stage does); with --trials N this process runs N more trials, so several
workers (a SLURM job array) share one study when they name the same --storage
(a PostgreSQL URL) and the same MLflow server ($MLFLOW_TRACKING_URI). Each
worker writes outputs/tuning/<MODEL>_best.yaml from the whole study when done.
Trials train on the Keras backend of params.yaml keras.backend, as the stage's.
"""

EPILOG = """\
Examples:
  deepdram tune forward
  deepdram tune forward --storage postgresql://optuna:pw@db01/optuna --trials 10 --worker 3
"""


def add(sub) -> None:
    p = add_parser(sub, "tune", "run or join a hyperparameter study (Optuna / Keras-Tuner; every trial in MLflow)",
                   DESCRIPTION, EPILOG)
    p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of {', '.join(MODELS)}")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: tune_<MODEL>.storage, else outputs/tuning/<MODEL>_study.db)")
    p.add_argument("--trials", type=int, metavar="N", help="trials this worker runs (default: up to the study's total)")
    p.add_argument("--worker", type=int, metavar="ID",
                   help="worker number, varies the sampler seed (default: $SLURM_ARRAY_TASK_ID, else 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run trials, print the study summary."""
    import json

    from deepdram import params as schema
    from deepdram.errors import InputError
    from deepdram.jobs.tuning_common import run_study

    if args.trials is not None and args.trials < 1:
        raise InputError(f"--trials must be >= 1; got {args.trials}")
    worker = args.worker if args.worker is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
    params = schema.load()
    from deepdram.learn.backend import use

    use(params.keras.backend)  # as the tuning stages do: every worker of a study trains alike
    out = run_study(getattr(params, f"tune_{args.model}"), args.model, resample=params.resample, storage=args.storage,
                    n_trials=args.trials, worker=worker, progress=not args.quiet)
    print(json.dumps(out, indent=1))
    return 0
