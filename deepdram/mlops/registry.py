"""Model registry: register versions, promote a challenger to champion, load by alias.

`decide` is the promotion rule as a pure function of the two versions' facts; `promote` is the
thin MLflow adapter that gathers the facts, applies the decision (one alias update) and records it.

Aliases, not stages: `challenger` is the latest registered version, `champion` the one served
(`models:/NAME@champion`), `previous_champion` the one it replaced (roll back with
`deepdram promote NAME --version N --force`).

A challenger replaces the champion only when both were tested on the same test split (the
`test_set` tag or param of their runs, see `deepdram.tracking.run_context`) and its metric is at
least as good (within a tolerance). Every decision is written as tags on the candidate version:
`promotion.decision`, `promotion.reason`, `promotion.candidate_metrics`,
`promotion.champion_metrics` (JSON); an `unchanged` decision (the candidate already is the champion)
keeps the tags of the decision that made it so.

Faults: a version is registered only once its model's artifacts are all there (`missing_artifacts`)
and gets the `challenger` alias last, so a process killed while logging or registering never leaves
an alias on an incomplete version; `repair_aliases` (run by the training and design jobs before they
start) removes any alias that still points at one, or a `challenger` whose run FAILED. Promotions of
one model are serialised by a lock file next to the store (`promotion_lock`): two `deepdram promote`
at once give one decision, recorded once; the second sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import posixpath
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdram.errors import DeepdramError, InputError
from deepdram.mlops.catalogue import CHALLENGER, CHAMPION, DEFAULT_METRIC, PREVIOUS
from deepdram.mlops.tracking import TEST_SET_TAG, client, configure


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def _registered(c, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_registered_model(name)
    except MlflowException as e:
        if _not_found(e):
            return None
        raise


def _by_alias(c, name: str, alias: str):
    """The ModelVersion behind `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _not_found(e) or "alias" in str(e).lower():
            return None
        raise


# --- Register --------------------------------------------------------------------------------


def _model_source(c, run, artifact: str) -> tuple[str, str | None]:
    """(source URI, logged-model id) of the model named `artifact` that `run` logged.

    MLflow 3 stores a model logged in a run as a LoggedModel (`models:/<model_id>`), not under the
    run's artifacts; register that directly. Falls back to `runs:/<run_id>/<artifact>`.
    """
    outputs = getattr(run, "outputs", None)
    candidates = [o.model_id for o in (getattr(outputs, "model_outputs", None) or [])]
    found = []
    for model_id in candidates:
        try:
            lm = c.get_logged_model(model_id)
        except Exception:
            continue
        if lm.name == artifact:
            found.append(lm)
    if found:
        lm = max(found, key=lambda m: m.creation_timestamp or 0)  # the latest, if logged twice
        return f"models:/{lm.model_id}", lm.model_id
    return f"runs:/{run.info.run_id}/{artifact}", None


def register(run_id: str, name: str, artifact: str = "model", *, timeout: float = 300.0) -> int:
    """Register `runs:/<run_id>/<artifact>` as a new version of `name`, alias it `challenger`.

    Creates the registered model if missing and waits until the version is READY. Returns the
    version number. The run's test-set tag is copied onto the version. The model's artifacts are
    checked first (an incomplete model is refused) and the alias is the last step, so a process
    killed on the way leaves at most a version without an alias.
    """
    configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    from deepdram.data.atomic import pause_point

    c = client()
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise DeepdramError(f"no MLflow run {run_id!r} in {configure()}: {e.message}") from None
    if _registered(c, name) is None:
        try:
            c.create_registered_model(name)
        except MlflowException as e:
            if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
    source, model_id = _model_source(c, run, artifact)
    logged = c.get_logged_model(model_id) if model_id is not None else None
    missing = missing_artifacts(source if logged is None else logged.artifact_location, logged)
    if missing:
        raise DeepdramError(f"could not register {source} as {name!r}: no complete model there "
                            f"({'; '.join(missing)})")
    try:
        if model_id is not None:
            mv = c.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                        await_creation_for=int(timeout))
        else:  # an artifact logged under the run itself (MLflow 2 style)
            mv = mlflow.register_model(source, name, await_registration_for=int(timeout))
    except MlflowException as e:
        raise DeepdramError(f"could not register {source} as {name!r}: {e.message}") from None
    deadline = time.monotonic() + timeout
    while True:
        mv = c.get_model_version(name, mv.version)
        if mv.status == "READY":
            break
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise DeepdramError(f"{name} version {mv.version} is {mv.status}: {mv.status_message or 'timed out'}")
        time.sleep(0.2)
    test_set = run.data.tags.get(TEST_SET_TAG) or run.data.params.get(TEST_SET_TAG)
    if test_set:
        c.set_model_version_tag(name, mv.version, TEST_SET_TAG, test_set)
    pause_point(f"{name}:version-created")
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return int(mv.version)


# --- Faults: incomplete models, aliases left on them ---------------------------------------------


def _listing(repo, folder: str) -> dict[str, Any]:
    """{path: FileInfo} of one folder of an artifact repository ({} if it cannot be listed)."""
    try:
        return {f.path: f for f in repo.list_artifacts(folder or None)}
    except Exception:  # noqa: BLE001 - a missing folder, an unreachable store: nothing listed
        return {}


def missing_artifacts(uri: str, logged_model=None) -> list[str]:
    """What an MLflow model at artifact `uri` lacks: its MLmodel, or a file MLmodel names (the
    Python artifacts, the model script, the environment files, the code folder), or empty files;
    a LoggedModel that is not READY (its upload never finished). [] when it is complete."""
    import yaml
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    problems = []
    if logged_model is not None and str(getattr(logged_model, "status", "READY")) != "READY":
        problems.append(f"logged model {logged_model.model_id} is {logged_model.status}")
    try:
        repo = get_artifact_repository(uri)
    except Exception as e:  # noqa: BLE001
        return [*problems, f"cannot open {uri}: {e}"]
    top = _listing(repo, "")
    if "MLmodel" not in top:
        return [*problems, f"no MLmodel in {uri}"]
    try:
        with tempfile.TemporaryDirectory(prefix="deepdram-mlmodel-") as tmp:
            spec = yaml.safe_load(Path(repo.download_artifacts("MLmodel", tmp)).read_text()) or {}
    except Exception as e:  # noqa: BLE001 - a half-written MLmodel
        return [*problems, f"unreadable MLmodel in {uri}: {e}"]
    required, folders = [], []
    for flavor in (spec.get("flavors") or {}).values():
        if not isinstance(flavor, dict):
            continue
        for art in (flavor.get("artifacts") or {}).values():
            if isinstance(art, dict) and art.get("path"):
                required.append(art["path"])
        for key in ("model_code_path", "python_model"):
            if flavor.get(key):
                required.append(posixpath.basename(str(flavor[key])) if key == "model_code_path" else flavor[key])
        required += [v for v in (flavor.get("env") or {}).values() if isinstance(v, str)]
        if flavor.get("code"):
            folders.append(flavor["code"])
    listings = {"": top}
    for path in dict.fromkeys(required):
        folder = posixpath.dirname(path)
        if folder not in listings:
            listings[folder] = _listing(repo, folder)
        info = listings[folder].get(path)
        if info is None:
            problems.append(f"{path} is missing")
        elif info.file_size is not None and not info.is_dir and info.file_size == 0:
            problems.append(f"{path} is empty")
    for folder in folders:
        if not _listing(repo, folder):
            problems.append(f"{folder}/ is missing or empty")
    return problems


def version_problems(c, mv, *, run_must_finish: bool) -> list[str]:
    """Why model version `mv` must not carry an alias: its artifacts are incomplete, or (when
    `run_must_finish`) the run that logged it FAILED. [] when it is sound."""
    from mlflow.exceptions import MlflowException

    problems = []
    if run_must_finish and mv.run_id:
        try:
            status = c.get_run(mv.run_id).info.status
        except MlflowException:
            status = "DELETED"
        if status == "FAILED":
            problems.append(f"its run {mv.run_id} FAILED")
    try:
        uri = c.get_model_version_download_uri(mv.name, mv.version)
    except MlflowException as e:
        return [*problems, f"no artifacts: {e.message}"]
    lm = None
    if getattr(mv, "model_id", None):
        with contextlib.suppress(MlflowException):
            lm = c.get_logged_model(mv.model_id)
    return problems + missing_artifacts(uri, lm)


def repair_aliases(name: str) -> list[str]:
    """Remove every alias of model `name` that points at a version with missing artifacts, and the
    `challenger` alias of a version whose run FAILED (a process killed mid-training or
    mid-registration). Returns one line per alias removed (also printed to stderr)."""
    configure()
    c = client()
    model = _registered(c, name)
    if model is None:
        return []
    aliases = getattr(model, "aliases", None) or {}
    if isinstance(aliases, list):  # some MLflow versions: [RegisteredModelAlias(alias, version)]
        aliases = {a.alias: a.version for a in aliases}
    removed = []
    for alias, version in sorted(aliases.items()):
        mv = c.get_model_version(name, str(version))
        problems = version_problems(c, mv, run_must_finish=alias == CHALLENGER)
        if problems:
            c.delete_registered_model_alias(name, alias)
            line = f"{name}: removed alias {alias!r} from version {version}: {'; '.join(problems)}"
            print(line, file=sys.stderr)
            removed.append(line)
    return removed


# --- Promote ---------------------------------------------------------------------------------------


def _run_facts(c, mv, test_set_tag: str) -> tuple[dict[str, float], str | None]:
    """(metrics, test-set hash) of the run behind a model version."""
    if not mv.run_id:
        return {}, None
    from mlflow.exceptions import MlflowException

    try:
        run = c.get_run(mv.run_id)
    except MlflowException as e:
        raise DeepdramError(f"cannot read run {mv.run_id} of {mv.name} version {mv.version}: {e.message}") from None
    test_set = run.data.tags.get(test_set_tag) or run.data.params.get(test_set_tag)
    return dict(run.data.metrics), test_set


def _json(obj: Any) -> str:
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    if isinstance(obj, dict):
        obj = {k: clean(v) for k, v in sorted(obj.items())}
    return json.dumps(obj)


@dataclass
class VersionFacts:
    """What the decision needs of one registered version: its number, metrics and test-set hash."""

    version: int
    metrics: dict[str, float] = field(default_factory=dict)
    test_set: str | None = None


def decide(cand: VersionFacts, champ: VersionFacts | None, *, metric: str = DEFAULT_METRIC,
           higher_is_better: bool = True, tolerance: float = 0.0, force: bool = False,
           reevaluated: dict | None = None) -> dict:
    """The promotion decision (pure): promote when there is no champion, when `force`, or when both
    were tested on the same split and the candidate's metric is at least the champion's minus
    `tolerance` (plus, when lower is better). `reevaluated` (value, test_set_before, value_before)
    holds the champion's metric re-scored on the candidate's split, which `champ.test_set` then
    names. A missing metric is a refusal."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise InputError(f"tolerance must be a finite number >= 0; got {tolerance}")
    cand_value = cand.metrics.get(metric)
    champ_value = champ.metrics.get(metric) if champ is not None else None
    if reevaluated is not None:
        champ_value = reevaluated["value"]
    better = "higher" if higher_is_better else "lower"
    promote_it = False
    if champ is not None and champ.version == cand.version:
        decision, reason = "unchanged", f"version {cand.version} is already the {CHAMPION}"
    elif champ is None:
        promote_it, decision = True, "promoted"
        reason = f"no {CHAMPION} yet: version {cand.version} becomes the first {CHAMPION}"
    else:
        problem = None
        if cand.test_set is None or champ.test_set is None:
            which = "candidate" if cand.test_set is None else CHAMPION
            problem = (f"the {which}'s run has no '{TEST_SET_TAG}' tag, so it is unknown whether both "
                       "were evaluated on the same test split")
        elif cand.test_set != champ.test_set:
            problem = (f"different test splits ({TEST_SET_TAG} {cand.test_set} vs {champ.test_set}): the metrics "
                       "are not comparable; evaluate both on the same split")
        elif cand_value is None or champ_value is None:
            which = "candidate" if cand_value is None else CHAMPION
            problem = f"the {which}'s run has no metric '{metric}'"
        elif not (math.isfinite(cand_value) and math.isfinite(champ_value)):
            problem = f"'{metric}' is not finite (candidate {cand_value}, {CHAMPION} {champ_value})"
        if problem is None:
            if higher_is_better:
                ok = cand_value >= champ_value - tolerance
                rule = f"{cand_value:.6g} >= {champ_value:.6g} - {tolerance:g}"
            else:
                ok = cand_value <= champ_value + tolerance
                rule = f"{cand_value:.6g} <= {champ_value:.6g} + {tolerance:g}"
            reason = f"{metric} ({better} is better): {rule} {'holds' if ok else 'fails'}"
            if reevaluated is not None:
                reason += (f" ({CHAMPION} re-evaluated on the candidate's test split; on its own split "
                           f"{reevaluated['test_set_before']} it had {reevaluated['value_before']})")
            if ok:
                promote_it, decision = True, "promoted"
            elif force:
                promote_it, decision = True, "promoted"
                reason = f"forced, although {reason}"
            else:
                decision = "rejected"
        elif force:
            promote_it, decision, reason = True, "promoted", f"forced, although {problem}"
        else:
            decision, reason = "rejected", f"{problem} (use --force to promote anyway)"
    return {
        "candidate_version": cand.version,
        "champion_version": champ.version if champ is not None else None,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "tolerance": tolerance,
        "candidate_value": cand_value,
        "champion_value": champ_value,
        "candidate_test_set": cand.test_set,
        "champion_test_set": champ.test_set if champ is not None else None,
        "forced": bool(force and promote_it),
        "champion_reevaluated": reevaluated is not None,
        "decision": decision,
        "reason": reason,
        "candidate_metrics": cand.metrics,
        "champion_metrics": champ.metrics if champ is not None else None,
        "champion_after": cand.version if promote_it else (champ.version if champ is not None else None),
    }


def promote(name: str, *, metric: str = DEFAULT_METRIC, higher_is_better: bool = True, tolerance: float = 0.0,
            version: int | str | None = None, force: bool = False, test_set_tag: str = TEST_SET_TAG,
            reevaluate: Callable[[Any], float] | None = None) -> dict:
    """Decide (`decide`) whether the candidate (`version`, else the `challenger`) becomes `champion`
    and apply it: the `champion` alias moves in one call, so it is never half-moved; the decision
    and both metric sets are written as tags on the candidate version. When the test sets differ
    and `reevaluate` is given, the champion is first scored again on the candidate's split
    (`reevaluate(champion_version)` returns its metric there). Returns the decision."""
    configure()
    if tolerance < 0 or not math.isfinite(tolerance):
        raise InputError(f"tolerance must be a finite number >= 0; got {tolerance}")
    c = client()
    if _registered(c, name) is None:
        raise DeepdramError(f"no registered model {name!r} in {configure()}: run `dvc repro` to train and register it")
    # Read, decide and apply under the model's lock: a concurrent promotion waits, then sees this one.
    with promotion_lock(name):
        return _promote_locked(c, name, metric=metric, higher_is_better=higher_is_better, tolerance=tolerance,
                               version=version, force=force, test_set_tag=test_set_tag, reevaluate=reevaluate)


def _promote_locked(c, name: str, *, metric: str, higher_is_better: bool, tolerance: float, version, force: bool,
                    test_set_tag: str, reevaluate) -> dict:
    from mlflow.exceptions import MlflowException

    if version is not None:
        try:
            cand = c.get_model_version(name, str(int(version)))
        except (MlflowException, ValueError):
            raise DeepdramError(f"model {name!r} has no version {version}") from None
    else:
        cand = _by_alias(c, name, CHALLENGER)
        if cand is None:
            raise DeepdramError(f"model {name!r} has no {CHALLENGER}{_last_decision(c, name)}: register a version "
                                "or pass --version N")
    champ = _by_alias(c, name, CHAMPION)
    cand_facts = VersionFacts(int(cand.version), *_run_facts(c, cand, test_set_tag))
    champ_facts = VersionFacts(int(champ.version), *_run_facts(c, champ, test_set_tag)) if champ is not None else None
    reevaluated = None
    if (champ_facts is not None and reevaluate is not None and cand_facts.test_set is not None
            and champ_facts.test_set != cand_facts.test_set and champ_facts.version != cand_facts.version):
        # Scored again on the candidate's split, so both numbers describe the same rows.
        value = float(reevaluate(champ))
        reevaluated = {"value": value, "test_set_before": champ_facts.test_set,
                       "value_before": champ_facts.metrics.get(metric)}
        champ_facts = VersionFacts(champ_facts.version, {**champ_facts.metrics, f"{metric}.reevaluated": value},
                                   cand_facts.test_set)
    result = {"model": name, **decide(cand_facts, champ_facts, metric=metric, higher_is_better=higher_is_better,
                                      tolerance=tolerance, force=force, reevaluated=reevaluated)}
    from deepdram.data.atomic import pause_point

    pause_point(f"{name}:promoting")  # crash tests: decided, nothing applied yet, the lock held
    if result["decision"] == "promoted":
        try:
            if champ is not None:
                c.set_registered_model_alias(name, PREVIOUS, champ.version)
            # The one step that changes what is served: a single alias update.
            c.set_registered_model_alias(name, CHAMPION, cand.version)
        except Exception as e:
            result["decision"], result["reason"] = "error", f"moving the {CHAMPION} alias failed: {e}"
            _record(c, name, cand.version, result)
            raise DeepdramError(f"{name}: {result['reason']}") from None
        current = _by_alias(c, name, CHALLENGER)
        if current is not None and str(current.version) == str(cand.version):
            c.delete_registered_model_alias(name, CHALLENGER)
    tags = cand.tags or {}
    again = all(tags.get(f"promotion.{k}") == v for k, v in _identity(result).items())
    result["recorded"] = result["decision"] != "unchanged" and not again
    if result["recorded"]:
        # not for `unchanged` (the candidate already is the champion: its tags keep the decision that
        # made it so), nor for the same decision again (e.g. a rejected challenger asked twice)
        _record(c, name, cand.version, result)
    return result


def _identity(result: dict) -> dict[str, str]:
    """The promotion tags that tell one decision from another (all but the time)."""
    return {"decision": result["decision"], "reason": result["reason"],
            "champion_version": "" if result["champion_version"] is None else str(result["champion_version"])}


def _last_decision(c, name: str) -> str:
    """' (version N is the champion: promoted at TIME)' from the champion's promotion tags, else ''."""
    champ = _by_alias(c, name, CHAMPION)
    if champ is None:
        return ""
    tags = champ.tags or {}
    when = f" at {tags['promotion.time']}" if tags.get("promotion.time") else ""
    how = f": {tags['promotion.decision']}{when}" if tags.get("promotion.decision") else ""
    return f" (version {champ.version} is the {CHAMPION}{how})"


def _lock_path(name: str) -> Path:
    """The lock file of model `name`'s promotions: next to a local sqlite store, else in the temp folder."""
    from deepdram.mlops.tracking import _sqlite_path

    uri = configure()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    db = _sqlite_path(uri)
    if db is not None:
        return db.resolve().parent / f".promote-{safe}.lock"
    key = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"deepdram-promote-{key}-{safe}.lock"


_HELD: dict[tuple[Path, int], int] = {}  # (lock, thread) this process holds: re-entered, not re-taken


@contextlib.contextmanager
def promotion_lock(name: str, timeout: float = 900.0) -> Iterator[Path]:
    """Hold the exclusive lock on model `name`'s promotions (an advisory `flock`, released by the
    system when the holder exits, even killed). Waits up to `timeout` seconds (saying so on stderr),
    else DeepdramError. Re-entrant within a process.

    For a local sqlite store the lock file lies next to the database, so every process using the
    store shares it; for a remote store it only serialises the promotions of this machine."""
    import fcntl

    path = _lock_path(name)
    key = (path, threading.get_ident())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        deadline, said = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    print(f"{name}: waiting for another promotion to finish (lock {path})", file=sys.stderr,
                          flush=True)
                    said = True
                if time.monotonic() > deadline:
                    raise DeepdramError(f"{name}: another promotion has held {path} for over {timeout:g} s") from None
                time.sleep(0.05)
        _HELD[key] = 1
        try:
            yield path
        finally:
            _HELD.pop(key, None)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _record(c, name: str, version, result: dict) -> None:
    tags = {
        **{f"promotion.{k}": v for k, v in _identity(result).items()},
        "promotion.metric": result["metric"],
        "promotion.candidate_metrics": _json(result["candidate_metrics"]),
        "promotion.champion_metrics": _json(result["champion_metrics"]),
        "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for key, value in tags.items():
        c.set_model_version_tag(name, str(version), key, value)


# --- Load --------------------------------------------------------------------------------------------


def load(name: str, alias: str = CHAMPION):
    """The pyfunc model behind `models:/<name>@<alias>`, from the project store."""
    uri = configure()
    import mlflow.pyfunc

    c = client()
    if _registered(c, name) is None:
        raise DeepdramError(
            f"no registered model {name!r} in {uri}: run `dvc repro` to train and register it"
        )
    if _by_alias(c, name, alias) is None:
        raise DeepdramError(
            f"model {name!r} has no {alias}: run `dvc repro` or `deepdram promote {name} ...`"
        )
    return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


def alias_version(name: str, alias: str) -> int | None:
    """The version number `alias` points to in model `name`; None if the model or alias is absent."""
    configure()
    c = client()
    if _registered(c, name) is None:
        return None
    mv = _by_alias(c, name, alias)
    return None if mv is None else int(mv.version)


def keras_model(name: str, version: int | str):
    """The Keras model inside registered version `version` of `name` (a deepdram pyfunc)."""
    configure()
    import mlflow.pyfunc

    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    model = getattr(wrapper, "model", None)
    if model is None:
        raise DeepdramError(f"{name} version {version} is not a deepdram Keras pyfunc model")
    return model


# --- Presentation ------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def format_decision(result: dict) -> str:
    """The decision as a small table: one row per metric, candidate vs champion."""
    cand, champ = result["candidate_metrics"] or {}, result["champion_metrics"] or {}
    keys = sorted(set(cand) | set(champ), key=lambda k: (k != result["metric"], k))
    head = ("metric", f"candidate v{result['candidate_version']}",
            f"champion v{result['champion_version']}" if result["champion_version"] is not None else "champion (none)")
    rows = [head] + [(("* " if k == result["metric"] else "  ") + k, _fmt(cand.get(k)), _fmt(champ.get(k))) for k in keys]
    rows.append(("  test set", _fmt(result["candidate_test_set"]), _fmt(result["champion_test_set"])))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}" for r in rows]
    lines.insert(1, "-" * (sum(w) + 4))
    lines.append("")
    lines.append(f"decision: {result['decision']} -- {result['reason']}")
    lines.append(f"{CHAMPION}: version {_fmt(result['champion_after'])}")
    return "\n".join(lines)
