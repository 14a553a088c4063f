"""MLflow records of a study: one parent run per study, one nested child run per trial.

A trial is logged with three calls (create, one `log_batch`, terminate). Children whose worker
died are marked FAILED when the study resumes (`fail_orphans`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from deepdram.data.atomic import pause_point
from deepdram.learn.search.config import EXPERIMENT, TuneConfig, _plain
from deepdram.learn.search.objective import CVResult, cross_validate, kfold

TAG_STUDY, TAG_ROLE, TAG_TRIAL, TAG_STATE = "deepdram.study", "deepdram.role", "deepdram.trial", "deepdram.state"


def _client():
    from deepdram.mlops import tracking

    tracking.configure()
    return tracking.client()


def parent_run(study_name: str, model: str, backend: str, storage: str) -> str:
    """Run id of the study's parent run, created if missing.

    Workers may race to create it: each creates one if none exists, then all use the OLDEST parent
    run of the study (ties by id) and delete their own if it lost, so every worker agrees.
    """
    from deepdram.mlops import tracking

    c = _client()
    exp = tracking.experiment(experiment_name())
    flt = f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_ROLE}` = 'parent'"

    def parents():
        runs = c.search_runs([exp], flt, max_results=100)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = parents()
    if found:
        run_id = found[0].info.run_id
    else:
        mine = c.create_run(exp, run_name=f"tune_{model}", tags={
            TAG_STUDY: study_name, TAG_ROLE: "parent", "deepdram.kind": model, "deepdram.backend": backend,
            "deepdram.storage": _redact(storage), "mlflow.note.content":
                f"{backend} study {study_name}: one nested run per trial"}).info.run_id
        run_id = parents()[0].info.run_id
        if run_id != mine:
            c.delete_run(mine)
    if c.get_run(run_id).info.status != "RUNNING":
        c.update_run(run_id, status="RUNNING")
    return run_id


def run_name(number: int) -> str:
    """The MLflow run name of a trial's child run (trial-0007; unique within its study)."""
    return f"trial-{number:04d}"


def experiment_name() -> str:
    """MLflow experiment holding all studies ($DEEPDRAM_TUNING_EXPERIMENT overrides)."""
    return os.environ.get("DEEPDRAM_TUNING_EXPERIMENT", EXPERIMENT)


def _redact(url: str) -> str:
    """A storage URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}"
    return url


class TrialLogger:
    """One nested MLflow run per trial: create (RUNNING) at start, one log_batch + terminate at end."""

    def __init__(self, parent_id: str, study_name: str, model: str, worker: int = 0):
        import socket

        self.parent_id, self.study_name, self.model = parent_id, study_name, model
        self.worker = f"{worker}@{socket.gethostname()}:{os.getpid()}"
        self.client = _client()
        self.experiment_id = self.client.get_run(parent_id).info.experiment_id
        self.overhead: list[float] = []

    def start(self, number: int, values: Mapping) -> tuple[str, float]:
        t0 = time.perf_counter()
        run = self.client.create_run(self.experiment_id, run_name=run_name(number), tags={
            "mlflow.parentRunId": self.parent_id, TAG_STUDY: self.study_name, TAG_ROLE: "trial",
            TAG_TRIAL: str(number), TAG_STATE: "running", "deepdram.kind": self.model,
            "deepdram.worker": self.worker})
        return run.info.run_id, time.perf_counter() - t0

    def finish(self, run_id: str, values: Mapping, state: str, result: CVResult | None, seconds: float,
               overhead: float, score_name: str, error: str | None = None, extra_tags: Mapping | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from deepdram.mlops.tracking import _text

        t0 = time.perf_counter()
        now = int(time.time() * 1000)
        params = [Param(k, _text(v)[:6000]) for k, v in sorted(values.items())]
        metrics = [Metric("duration_s", seconds, now, 0)]
        if result is not None:
            metrics.append(Metric("epochs", float(result.epochs), now, 0))
            metrics += [Metric(f"cv_{score_name}_fold{i + 1}", s, now, 0) for i, s in enumerate(result.fold_scores)]
            if len(result.fold_scores):
                metrics += [Metric(f"cv_{score_name}_mean", result.mean, now, 0),
                            Metric(f"cv_{score_name}_std", result.std, now, 0)]
            metrics += [Metric(f"val_{score_name}_epoch", s, now, i) for i, s in enumerate(result.curve)]
        tags = [RunTag(TAG_STATE, state)] + [RunTag(k, _text(v)[:5000]) for k, v in (extra_tags or {}).items()]
        if error:
            tags.append(RunTag("deepdram.error", error[:5000]))
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000],
                                  params=params if i == 0 else [], tags=tags if i == 0 else [])
        self.client.set_terminated(run_id, "FINISHED" if state in ("complete", "pruned") else "FAILED")
        self.overhead.append(overhead + time.perf_counter() - t0)


def fail_orphans(parent_id: str, is_live: Callable[[int], bool]) -> int:
    """Mark FAILED the RUNNING child runs whose trial is no longer running; returns how many."""
    c = _client()
    exp = c.get_run(parent_id).info.experiment_id
    runs = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'",
                         max_results=10000)
    n = 0
    for r in runs:
        number = int(r.data.tags.get(TAG_TRIAL, -1))
        if not is_live(number):
            c.set_tag(r.info.run_id, TAG_STATE, "failed")
            c.set_tag(r.info.run_id, "deepdram.error", "worker died during the trial (found on resume)")
            c.set_terminated(r.info.run_id, "FAILED")
            n += 1
    return n


# --- the trial body, shared by both backends -----------------------------------------------------------


class Objective:
    """Runs one trial: MLflow child run, CV, state bookkeeping (complete / pruned / failed)."""

    def __init__(self, cfg: TuneConfig, data: Mapping, logger: TrialLogger, forward_model=None, *, space=None):
        self.cfg, self.data, self.logger, self.forward_model, self.space = cfg, data, logger, forward_model, space
        self.folds = {k: kfold(len(x), cfg.folds, cfg.seed) for k, (x, _) in data.items()}
        self.epochs_total = 0

    def run(self, number: int, values: Mapping, report=None, prune_exc: tuple = (),
            duplicate_of: tuple[int, float] | None = None) -> float:
        values = _plain(values)
        run_id, overhead = self.logger.start(number, values)
        pause_point(f"tune_{self.cfg.model}:trial-{number}")  # crash tests: the trial and its run are RUNNING
        t0 = time.perf_counter()
        name = self.cfg.score
        if duplicate_of is not None:
            # the same configuration already completed: same data, folds and seed give the same score
            self.logger.finish(run_id, values, "complete", CVResult([], 0, []), time.perf_counter() - t0, overhead,
                               name, extra_tags={"deepdram.duplicate_of": duplicate_of[0]})
            return duplicate_of[1]
        try:
            res = cross_validate(self.cfg, values, self.data, self.folds, report, self.forward_model, space=self.space)
        except prune_exc:
            self.logger.finish(run_id, values, "pruned", None, time.perf_counter() - t0, overhead, name)
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then re-raised
            self.logger.finish(run_id, values, "failed", None, time.perf_counter() - t0, overhead, name,
                               error=f"{type(exc).__name__}: {exc}")
            raise
        self.epochs_total += res.epochs
        self.logger.finish(run_id, values, "complete", res, time.perf_counter() - t0, overhead, name)
        return res.mean
