"""Hyperparameter search for the networks: Optuna (TPE + pruning) or Keras-Tuner, in MLflow.

The paper tuned with scikit-learn grid search and 3-fold cross-validation ("pipeline training":
data options and model hyperparameters searched together; supplementary Section 2, Tables 5, 7,
11). Here the same spaces, declared in params.yaml (`tune_<model>.space`), are searched by

* ``optuna``: TPE sampler (constant liar, so parallel workers spread out) and a successive-halving
  or median pruner (`params.Pruner`) fed by the per-epoch validation score of every fold
  (step = fold * epochs + epoch);
* ``keras_tuner``: Bayesian optimisation (a `keras_tuner.Tuner` whose `run_trial` is the same
  cross-validation objective).

Scores (maximised): forward and size-agnostic models, mean R2 over the properties; CVAE, the R2
of the best of 10 generated designs per held-out target (`objective.generation_score`; its total
loss, the paper's score, prefers collapsed generators). Each study has one MLflow parent run
(experiment ``deepdram-tuning``) and one nested child run per trial (`trials`). The study lives
in persistent storage (a sqlite file in the work folder by default, or `storage`, e.g. a shared
PostgreSQL), so a killed run resumes, and several workers can share one study. Trials whose
worker died are found by Optuna's heartbeat and failed; their MLflow child runs are then marked
FAILED too.

The first trial of every study is the paper's selected configuration (`tune_<model>.paper`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from deepdram.errors import DeepdramError
from deepdram.learn.search.config import DATA_KEYS, TuneConfig, _plain, architecture
from deepdram.learn.search.trials import (
    TAG_TRIAL,
    Objective,
    TrialLogger,
    _client,
    _redact,
    fail_orphans,
    parent_run,
    run_name,
)


def _savefig(fig_or_ax, path: Path) -> None:
    fig = fig_or_ax.get_figure() if hasattr(fig_or_ax, "get_figure") else fig_or_ax
    while hasattr(fig, "get_figure") and fig.get_figure() is not fig and fig.get_figure() is not None:
        fig = fig.get_figure()
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def leaderboard(study, score: str = "value"):
    """The study's summary table, one row per trial, best first (completed trials by score, then the
    pruned and failed ones by number): rank, trial, run (its MLflow child run's name), state,
    cv_<score>, duration_s and the trial's parameters (`param.<name>`)."""
    import pandas as pd
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    trials = sorted(study.get_trials(deepcopy=False),
                    key=lambda t: (0, sign * t.value, t.number) if t.state == TrialState.COMPLETE and t.value is not None
                    else (1, 0.0, t.number))
    rows = [{"rank": i + 1, "trial": t.number, "run": run_name(t.number), "state": t.state.name.lower(),
             f"cv_{score}": t.value if t.state == TrialState.COMPLETE else None,
             "duration_s": round(t.duration.total_seconds(), 3) if t.duration is not None else None,
             **{f"param.{k}": v for k, v in t.params.items()}} for i, t in enumerate(trials)]
    return pd.DataFrame(rows)


def _summary_note(head: str, board, score: str, top: int = 10) -> str:
    """The parent run's description (Markdown): `head`, then the `top` best trials as a table."""
    done = board[board["state"] == "complete"].head(top)
    if done.empty:
        return head
    cols = ["rank", "run", f"cv_{score}", "duration_s", *[c for c in board.columns if c.startswith("param.")]]
    lines = ["| " + " | ".join(c.removeprefix("param.") for c in cols) + " |", "|" + " --- |" * len(cols)]
    for _, row in done[cols].iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return (f"{head}\n\nBest {len(done)} of {len(board)} trials (all of them: artifact `study/leaderboard.csv`):\n\n"
            + "\n".join(lines))


def study_artifacts(study, out_dir: Path, score: str = "value") -> list[Path]:
    """Optimisation history, parameter importances, parallel coordinates (PNG), a trials CSV and the
    leaderboard CSV (`leaderboard`: one row per trial, best first, with its child run's name)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    study.trials_dataframe().to_csv(out_dir / "trials.csv", index=False)
    written.append(out_dir / "trials.csv")
    leaderboard(study, score).to_csv(out_dir / "leaderboard.csv", index=False)
    written.append(out_dir / "leaderboard.csv")
    plots = {"optimization_history.png": vis.plot_optimization_history,
             "param_importances.png": vis.plot_param_importances,
             "parallel_coordinate.png": vis.plot_parallel_coordinate}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in plots.items():
            try:
                _savefig(fn(study), out_dir / name)
                written.append(out_dir / name)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                # e.g. importances need two completed trials with varying parameters
                (out_dir / f"{name}.txt").write_text(f"not drawn: {exc}\n")
    return written


def best_record(cfg: TuneConfig, study, n_variables: int = 42) -> dict:
    """What `<model>_best.yaml` holds: `model:` (config fields), data options, study summary."""
    from optuna.trial import TrialState

    try:
        best = study.best_trial
    except ValueError:
        raise DeepdramError(f"study {cfg.study_name}: no trial completed, no best configuration") from None
    trials = study.get_trials(deepcopy=False)
    count = {s.name.lower(): sum(t.state == s for t in trials)
             for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return {
        "model": {**cfg.fixed, **architecture(cfg.model, best.params, n_variables)},
        "data": _plain({k: v for k, v in best.params.items() if k in DATA_KEYS}),
        "search": _plain(dict(best.params)),
        "study": {"name": cfg.study_name, "backend": cfg.backend, "storage": _redact(cfg.storage or "default sqlite"),
                  "best_trial": best.number, f"cv_{cfg.score}": float(best.value),
                  "direction": cfg.direction, "trials": len(trials), **count},
    }


def write_best(record: dict, path: Path) -> Path:
    """Write the best-configuration YAML atomically."""
    import yaml

    from deepdram.data.atomic import write_text

    header = ("# Written by the tuning stage (deepdram.learn.search). The training stage merges `model:` under\n"
              "# its own params `model:` overrides (those win) when `source: tuned`. `data:` lists the chosen\n"
              "# data options: adopt `resampling` by setting `resample.method` in params.yaml.\n")
    write_text(path, header + yaml.safe_dump(record, sort_keys=False))
    return path


def tune(cfg: TuneConfig, data: Mapping, n_trials: int | None = None, worker: int = 0,
         forward_model=None, out_dir: Path | None = None, enqueue: list[Mapping] = (),
         progress: bool = True, *, space) -> dict:
    """Run (or resume) one study; log it to MLflow; write `<model>_best.yaml`; return a summary.

    n_trials: trials THIS call runs (a worker's share); None: as many as needed for the study to
    have `cfg.trials` finished (complete or pruned) trials. `enqueue`: extra configurations tried
    first (the paper's configuration is always enqueued in a new study).
    """
    from deepdram.learn.search.keras_tuner_backend import kt_as_study, kt_directory, run_keras_tuner
    from deepdram.learn.search.optuna_backend import _finished, _live_trials, default_storage, open_study, run_optuna

    out_dir = Path(out_dir or cfg.work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    storage = cfg.storage or (default_storage(cfg) if cfg.backend == "optuna" else str(kt_directory(cfg)))
    parent = parent_run(cfg.study_name, cfg.model, cfg.backend, storage)
    logger = TrialLogger(parent, cfg.study_name, cfg.model, worker)
    objective = Objective(cfg, data, logger, forward_model, space=space)
    if cfg.backend == "optuna":
        import optuna

        study = open_study(cfg, worker)
        optuna.storages.fail_stale_trials(study)
        fail_orphans(parent, _live_trials(study))
        for values in enqueue:
            study.enqueue_trial(dict(values))
        if n_trials is not None:
            run_optuna(cfg, objective, study, n_trials, progress)
        else:
            # failed trials do not count: run until `trials` finished, at most 2x + 5 attempts
            attempts = 0
            while (todo := cfg.trials - len(_finished(study))) > 0 and attempts < 2 * cfg.trials + 5:
                run_optuna(cfg, objective, study, todo, progress)
                attempts += todo
        optuna.storages.fail_stale_trials(study)
        fail_orphans(parent, _live_trials(study))
    else:
        fail_orphans(parent, lambda n: False)  # one process owns a Keras-Tuner folder
        tuner = run_keras_tuner(cfg, objective, progress)
        study = kt_as_study(cfg, tuner)
    record = best_record(cfg, study, space.n_variables)
    best_path = write_best(record, out_dir / f"{cfg.model}_best.yaml")
    art = out_dir / f"{cfg.model}_study"
    files = study_artifacts(study, art, cfg.score)
    c = _client()
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    sc = record["study"]
    metrics = [Metric(f"best_cv_{cfg.score}", sc[f"cv_{cfg.score}"], now, 0),
               Metric("trials", sc["trials"], now, 0), Metric("complete", sc["complete"], now, 0),
               Metric("pruned", sc["pruned"], now, 0), Metric("failed", sc["fail"], now, 0)]
    if logger.overhead:
        metrics.append(Metric("mlflow_overhead_s_per_trial", float(np.mean(logger.overhead)), now, 0))
    existing = set(c.get_run(parent).data.params)
    space_params = [Param(f"space.{k}", str(v)[:6000]) for k, v in cfg.space.items() if f"space.{k}" not in existing]
    fixed = {"backend": cfg.backend, "folds": cfg.folds, "rows": cfg.rows, **{f"fit.{k}": v for k, v in cfg.fit.items()}}
    space_params += [Param(k, str(v)) for k, v in fixed.items() if k not in existing]
    # The parent names its best trial and shows the best ten in its description: with thousands of
    # children the UI lists them 10 (run page) or 100 (runs table) at a time, newest first.
    best_runs = c.search_runs([logger.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{TAG_TRIAL}` = '{sc['best_trial']}'",
                              max_results=10)
    head = f"{cfg.backend} study {cfg.study_name}: one nested run per trial"
    counts = (f"{sc['trials']} trials: {sc['complete']} complete, {sc['pruned']} pruned, {sc['fail']} failed; "
              f"best {run_name(sc['best_trial'])} (cv_{cfg.score} = {sc[f'cv_{cfg.score}']:.4g})")
    tags = [RunTag("deepdram.best_trial", str(sc["best_trial"])), RunTag("deepdram.best_run", run_name(sc["best_trial"])),
            RunTag("mlflow.note.content",
                   _summary_note(f"{head}. {counts}.", leaderboard(study, cfg.score), cfg.score)[:5000])]
    tags += [RunTag("deepdram.best_run_id", r.info.run_id) for r in best_runs[:1]]
    c.log_batch(parent, metrics=metrics, params=space_params, tags=tags)
    for f in [best_path, *files]:
        c.log_artifact(parent, str(f), "study")
    c.set_terminated(parent, "FINISHED")
    ran = len(logger.overhead)
    seconds = time.perf_counter() - t0
    return {"study": cfg.study_name, "parent_run_id": parent, "trials_run": ran,
            "trials_total": sc["trials"], "complete": sc["complete"], "pruned": sc["pruned"], "failed": sc["fail"],
            f"best_cv_{cfg.score}": sc[f"cv_{cfg.score}"], "best_trial": sc["best_trial"],
            "epochs_trained": objective.epochs_total,
            "mlflow_overhead_s_per_trial": round(float(np.mean(logger.overhead)), 4) if ran else 0.0,
            "seconds_per_trial": round(seconds / ran, 2) if ran else 0.0}
