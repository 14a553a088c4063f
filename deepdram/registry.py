"""Model registry: register versions, promote a challenger to champion, load by alias.

Aliases, not stages: `challenger` is the latest registered version, `champion` the one served
(`models:/NAME@champion`), `previous_champion` the one it replaced (roll back with
`deepdram promote NAME --version N --force`).

A challenger replaces the champion only when both were tested on the same test split (the
`test_set` tag or param of their runs, see `deepdram.tracking.run_context`) and its metric is at
least as good (within a tolerance). Every decision is written as tags on the candidate version:
`promotion.decision`, `promotion.reason`, `promotion.candidate_metrics`,
`promotion.champion_metrics` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from deepdram.errors import DeepdramError, InputError
from deepdram.tracking import TEST_SET_TAG, client, configure

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"
DEFAULT_METRIC = "test_r2_overall"
# Models whose promotion metric is not the default (the generator is judged by best-of-100 R2).
MODEL_METRICS = {"deepdram-generator": "test_gen_best_r2_overall"}


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
    version number. The run's test-set tag is copied onto the version.
    """
    configure()
    import mlflow
    from mlflow.exceptions import MlflowException

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
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return int(mv.version)


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


def promote(name: str, *, metric: str = DEFAULT_METRIC, higher_is_better: bool = True, tolerance: float = 0.0,
            version: int | str | None = None, force: bool = False, test_set_tag: str = TEST_SET_TAG,
            reevaluate: Callable[[Any], float] | None = None) -> dict:
    """Decide whether the candidate (`version`, else the `challenger`) becomes `champion`.

    Promote when there is no champion yet, when `force`, or when both runs carry the same
    test-set hash and candidate >= champion - tolerance (<= champion + tolerance when lower is
    better). When the test sets differ (or the champion's is unknown) and `reevaluate` is given,
    the champion is scored again on the candidate's test split (`reevaluate(champion_version)`
    returns its metric there) and compared on that; without it, refuse. A missing metric is a
    refusal. The decision and both metric sets are written as tags on the candidate version;
    the `champion` alias moves in one call, so it is never half-moved. Returns the decision.
    """
    configure()
    from mlflow.exceptions import MlflowException

    if tolerance < 0 or not math.isfinite(tolerance):
        raise InputError(f"tolerance must be a finite number >= 0; got {tolerance}")
    c = client()
    if _registered(c, name) is None:
        raise DeepdramError(f"no registered model {name!r} in {configure()}: run `dvc repro` to train and register it")
    if version is not None:
        try:
            cand = c.get_model_version(name, str(int(version)))
        except (MlflowException, ValueError):
            raise DeepdramError(f"model {name!r} has no version {version}") from None
    else:
        cand = _by_alias(c, name, CHALLENGER)
        if cand is None:
            raise DeepdramError(f"model {name!r} has no {CHALLENGER}: register a version or pass --version N")
    champ = _by_alias(c, name, CHAMPION)
    cand_metrics, cand_test = _run_facts(c, cand, test_set_tag)
    champ_metrics, champ_test = _run_facts(c, champ, test_set_tag) if champ is not None else ({}, None)
    cand_value = cand_metrics.get(metric)
    champ_value = champ_metrics.get(metric) if champ is not None else None
    better = "higher" if higher_is_better else "lower"
    reevaluated = None
    if (champ is not None and reevaluate is not None and cand_test is not None and champ_test != cand_test
            and str(champ.version) != str(cand.version)):
        # Scored again on the candidate's split, so both numbers describe the same rows.
        reevaluated = {"test_set_before": champ_test, "value_before": champ_value}
        champ_value = float(reevaluate(champ))
        champ_test = cand_test
        champ_metrics = {**champ_metrics, f"{metric}.reevaluated": champ_value}

    promote_it = False
    if champ is not None and str(champ.version) == str(cand.version):
        decision, reason = "unchanged", f"version {cand.version} is already the {CHAMPION}"
    elif champ is None:
        promote_it, decision = True, "promoted"
        reason = f"no {CHAMPION} yet: version {cand.version} becomes the first {CHAMPION}"
    else:
        problem = None
        if cand_test is None or champ_test is None:
            which = "candidate" if cand_test is None else CHAMPION
            problem = (f"the {which}'s run has no '{test_set_tag}' tag, so it is unknown whether both "
                       "were evaluated on the same test split")
        elif cand_test != champ_test:
            problem = (f"different test splits ({test_set_tag} {cand_test} vs {champ_test}): the metrics are "
                       "not comparable; evaluate both on the same split")
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
            verdict = "holds" if ok else "fails"
            reason = f"{metric} ({better} is better): {rule} {verdict}"
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

    result = {
        "model": name,
        "candidate_version": int(cand.version),
        "champion_version": int(champ.version) if champ is not None else None,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "tolerance": tolerance,
        "candidate_value": cand_value,
        "champion_value": champ_value,
        "candidate_test_set": cand_test,
        "champion_test_set": champ_test,
        "forced": bool(force and promote_it),
        "champion_reevaluated": reevaluated is not None,
        "decision": decision,
        "reason": reason,
        "candidate_metrics": cand_metrics,
        "champion_metrics": champ_metrics if champ is not None else None,
    }

    if promote_it:
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
    result["champion_after"] = int(cand.version) if promote_it else result["champion_version"]
    _record(c, name, cand.version, result)
    return result


def _record(c, name: str, version, result: dict) -> None:
    tags = {
        "promotion.decision": result["decision"],
        "promotion.reason": result["reason"],
        "promotion.metric": result["metric"],
        "promotion.champion_version": "" if result["champion_version"] is None else str(result["champion_version"]),
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


# --- CLI ---------------------------------------------------------------------------------------------

PROMOTE_DESCRIPTION = f"""\
Decide whether a registered model version becomes the served '{CHAMPION}'.

The candidate is --version N, else the version aliased '{CHALLENGER}' (set when a
training run registers its model). It is promoted when there is no champion yet,
or when both runs were evaluated on the same test split (the '{TEST_SET_TAG}' tag of
their runs) and the candidate's metric is at least the champion's minus
--tolerance. Otherwise the champion stays; --force promotes anyway (e.g. to roll
back to an older version). The decision and both metric sets are recorded as
tags 'promotion.*' on the candidate version.
"""


def add_promote_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", metavar="MODEL", help="registered model name, e.g. deepdram-forward")
    parser.add_argument("--version", type=int, default=None, metavar="N",
                        help=f"candidate version (default: the '{CHALLENGER}' alias)")
    parser.add_argument("--force", action="store_true", help="promote even if the candidate is worse or not comparable")
    parser.add_argument("--tolerance", type=float, default=0.0, metavar="T",
                        help="accept a candidate up to T worse than the champion (default 0)")
    parser.add_argument("--metric", default=None,
                        help=f"metric to compare (default {DEFAULT_METRIC}; for deepdram-generator "
                             f"{MODEL_METRICS['deepdram-generator']})")
    parser.add_argument("--lower-is-better", action="store_true", help="the metric is an error (lower is better)")
    return parser


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


def promote_command(args: argparse.Namespace) -> int:
    """`deepdram promote` given parsed arguments (see add_promote_arguments); 0 unless an error."""
    metric = args.metric or MODEL_METRICS.get(args.model, DEFAULT_METRIC)
    result = promote(args.model, metric=metric, higher_is_better=not args.lower_is_better,
                     tolerance=args.tolerance, version=args.version, force=args.force)
    print(format_decision(result))
    return 0


def promote_main(argv: Sequence[str] | None = None) -> int:
    """`deepdram promote MODEL [--version N] [--force] [--tolerance T]`; returns the exit status."""
    parser = add_promote_arguments(argparse.ArgumentParser(
        prog="deepdram promote", description=PROMOTE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return promote_command(args)
    except DeepdramError as exc:
        print(f"deepdram: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(promote_main())
