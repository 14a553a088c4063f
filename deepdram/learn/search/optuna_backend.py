"""The Optuna backend: TPE (constant liar, so parallel workers spread out) with a median or
successive-halving pruner fed by the per-epoch validation score of every fold; persistent storage
(sqlite or PostgreSQL)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

from deepdram.learn.search.config import PRUNER_DEFAULTS, TuneConfig
from deepdram.learn.search.trials import Objective


def default_storage(cfg: TuneConfig) -> str:
    """sqlite file in the study's work folder holding the model's studies."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(cfg.work_dir / f'{cfg.model}_study.db').as_posix()}"


STORAGE_ATTEMPTS = 5


def _storage(cfg: TuneConfig):
    import optuna

    url = cfg.storage or default_storage(cfg)
    if url.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 defaults to psycopg 3; the pinned driver is psycopg2
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    hb = cfg.heartbeat
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=int(hb["interval"]), grace_period=int(hb["grace"]),
                # sqlite: wait for a lock (another process reading the study) instead of failing the commit
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True})
        except SQLAlchemyError:
            # Workers that start together race to create the schema in a new database (PostgreSQL:
            # "duplicate key ... pg_type_typname_nsp_index"); the loser finds it made on a retry.
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(1.0 + attempt)


def _suggest(trial, space: Mapping) -> dict:
    out = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = trial.suggest_categorical(name, spec)
        elif all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
            out[name] = trial.suggest_int(name, spec["low"], spec["high"])
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def _distributions(space: Mapping) -> dict:
    import optuna.distributions as d

    out = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = d.CategoricalDistribution(spec)
        elif all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")):
            out[name] = d.IntDistribution(spec["low"], spec["high"])
        else:
            out[name] = d.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def make_pruner(spec: Mapping):
    """The study's pruner from `tune_<model>.pruner` (kind median or halving; see params.Pruner)."""
    import optuna

    spec = {**PRUNER_DEFAULTS, **spec}
    if spec["kind"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec["startup_trials"]),
                                           n_warmup_steps=int(spec["warmup_epochs"]))
    if spec["kind"] == "halving":
        # the rung steps are 0-based like the reported steps: min_epochs 1 first compares after epoch 2
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(spec["min_epochs"]),
                                                      reduction_factor=int(spec["reduction_factor"]))
    raise ValueError(f"pruner kind must be median or halving; got {spec['kind']!r}")


def open_study(cfg: TuneConfig, worker: int = 0):
    """Create or load the study (TPE + the configured pruner); enqueue the paper's configuration first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    spec = {**PRUNER_DEFAULTS, **cfg.pruner}
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + 7919 * worker, constant_liar=True,
                                         n_startup_trials=int(spec["startup_trials"]))
    study = optuna.create_study(study_name=cfg.study_name, storage=_storage(cfg), sampler=sampler,
                                pruner=make_pruner(spec), direction=cfg.direction, load_if_exists=True)
    if cfg.paper and not study.get_trials(deepcopy=False):
        study.enqueue_trial(cfg.paper, skip_if_exists=True)
    return study


def _finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def run_optuna(cfg: TuneConfig, objective: Objective, study, n_trials: int, progress: bool = True) -> None:
    """Run `n_trials` more trials of `study` in this process (failures recorded, the study goes on)."""
    import optuna
    from optuna.trial import TrialState

    def fn(trial):
        values = _suggest(trial, cfg.space)
        dup = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == trial.params and t.number != trial.number:
                dup = (t.number, t.value)
                break

        def report(step, score):
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        return objective.run(trial.number, values, report, (optuna.TrialPruned,), dup)

    study.optimize(fn, n_trials=n_trials, catch=(Exception,), gc_after_trial=True, show_progress_bar=progress)


def _live_trials(study) -> Callable[[int], bool]:
    from optuna.trial import TrialState

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    return lambda n: states.get(n) == TrialState.RUNNING
