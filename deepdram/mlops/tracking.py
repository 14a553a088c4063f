"""MLflow tracking: one store per project, batched per-epoch metrics, flat params, run context.

The store is chosen by `configure()`:

* ``$MLFLOW_TRACKING_URI`` when set (a team server, or any store the caller names);
* else ``sqlite:///<REPO_ROOT>/mlruns/mlflow.db`` with artifacts under ``<REPO_ROOT>/mlruns/artifacts``.

The URI is always set explicitly: MLflow 3 otherwise picks ``./mlruns`` (a file store it then
refuses) or ``./mlflow.db`` relative to the *current* folder. mlflow, keras and yaml are imported
lazily, so ``import deepdram.tracking`` is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from deepdram import paths
from deepdram.errors import DeepdramError

TEST_SET_TAG = "test_set"
_configured: str | None = None  # URI set by the last configure()
_exported: str | None = None  # ... when only configure() put it in $MLFLOW_TRACKING_URI


# --- Store -----------------------------------------------------------------------------------


def default_uri() -> str:
    """The project's own store: sqlite:///<REPO_ROOT>/mlruns/mlflow.db."""
    return f"sqlite:///{(paths.MLRUNS_DIR / 'mlflow.db').as_posix()}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :]).split("?")[0])


def artifact_root(uri: str | None = None) -> Path | None:
    """Folder holding the artifacts of a local sqlite store (next to the database), else None."""
    db = _sqlite_path(uri or configure())
    return None if db is None else db.resolve().parent / "artifacts"


def configure() -> str:
    """Point MLflow (tracking and registry) at the project store; return its URI. Idempotent.

    Note: mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI, so subprocesses (dvc stages, `mlflow models serve`) use the same store.
    A value exported that way by an earlier call is not mistaken for a user's choice.
    """
    global _configured, _exported
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env == _exported:
        env = None
    uri = env or default_uri()
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    import mlflow

    if uri != _configured or mlflow.get_tracking_uri() != uri or mlflow.get_registry_uri() != uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        _exported = None if env else uri
        if _configured is not None and _configured != uri:
            # another store: an experiment id chosen in the old one means nothing here
            import mlflow.tracking.fluent as fluent

            if hasattr(fluent, "_active_experiment_id"):
                fluent._active_experiment_id = None
        _configured = uri
    return uri


def reset() -> None:
    """Forget the configured store (for tests): MLflow's URIs and the variables it exported."""
    global _configured, _exported
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    if _exported is not None and os.environ.get("MLFLOW_TRACKING_URI") == _exported:
        del os.environ["MLFLOW_TRACKING_URI"]
    if _configured is not None and os.environ.get("MLFLOW_REGISTRY_URI") == _configured:
        del os.environ["MLFLOW_REGISTRY_URI"]
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    if hasattr(fluent, "_active_experiment_id"):
        fluent._active_experiment_id = None
    _configured = _exported = None


def client():
    """An MlflowClient on the configured store."""
    uri = configure()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment(name: str) -> str:
    """Get or create experiment `name`; return its id and make it the active experiment.

    With a local sqlite store its artifacts live in <store>/artifacts/<name> (an absolute file
    URI), so runs logged from any folder land in the same place.
    """
    uri = configure()
    import mlflow

    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        location = (root / name).resolve().as_uri() if root is not None else None
        try:
            exp_id = c.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _active_run_id(run_id: str | None) -> str:
    if run_id:
        return run_id
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise DeepdramError("no active MLflow run: call inside `with mlflow.start_run():` or pass run_id")
    return run.info.run_id


# --- Params ------------------------------------------------------------------------------------


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and other values are kept as leaves."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, default=str)
        except TypeError:
            pass
    return str(value)


def log_params_flat(params: Mapping[str, Any], run_id: str | None = None) -> dict[str, str]:
    """Log nested params as dotted keys (values stringified, cut to MLflow's limit) in batches.

    One `log_batch` call per 100 params (MLflow's per-batch limit). Returns what was logged.
    """
    configure()
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    rid = _active_run_id(run_id)
    flat = {k: _text(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(params).items()}
    items = [Param(k, v) for k, v in flat.items()]
    c = client()
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        c.log_batch(rid, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    return flat


def log_tags(tags: Mapping[str, Any], run_id: str | None = None) -> None:
    """Set several run tags with batched calls."""
    configure()
    from mlflow.entities import RunTag
    from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

    rid = _active_run_id(run_id)
    items = [RunTag(k, _text(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
    c = client()
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        c.log_batch(rid, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])


# --- Run context: code and data versions --------------------------------------------------------


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path | None = None) -> str:
    """`git rev-parse HEAD` of the project, or 'unknown'."""
    return _git(root or paths.REPO_ROOT, "rev-parse", "HEAD") or "unknown"


def git_dirty(root: Path | None = None) -> str:
    """'true' if tracked files differ from HEAD, 'false', or 'unknown'."""
    out = _git(root or paths.REPO_ROOT, "status", "--porcelain", "--untracked-files=no")
    return "unknown" if out is None else str(bool(out)).lower()


def _dvc_outs(root: Path) -> dict[str, str]:
    """{out path (posix, relative to root): md5} from dvc.lock and the *.dvc files at the root."""
    import yaml

    outs: dict[str, str] = {}

    def add(entries, base: Path) -> None:
        for out in entries or ():
            if isinstance(out, Mapping) and out.get("path") and out.get("md5"):
                rel = os.path.normpath((base / out["path"]).as_posix())
                outs[Path(rel).as_posix()] = str(out["md5"])

    lock = root / "dvc.lock"
    if lock.is_file():
        data = yaml.safe_load(lock.read_text()) or {}
        for stage in (data.get("stages") or {}).values():
            add(stage.get("outs"), Path("."))
    for dvcfile in (p for p in root.glob("*.dvc") if p.is_file()):
        data = yaml.safe_load(dvcfile.read_text()) or {}
        add(data.get("outs"), Path("."))
    return outs


def _dir_manifest_md5(root: Path, dir_md5: str, relpath: str) -> str | None:
    """md5 of `relpath` inside a DVC-tracked folder, from the folder's .dir manifest in the cache."""
    h = dir_md5.removesuffix(".dir")
    for cache in (root / ".dvc" / "cache" / "files" / "md5", root / ".dvc" / "cache"):
        manifest = cache / h[:2] / (h[2:] + ".dir")
        if manifest.is_file():
            try:
                for entry in json.loads(manifest.read_text()):
                    if entry.get("relpath") == relpath:
                        return entry.get("md5")
            except (ValueError, AttributeError):
                return None
    return None


def dataset_hash(path: str | os.PathLike, root: Path | None = None) -> str:
    """DVC hash of a dataset path: its out's md5 in dvc.lock (or a *.dvc file), else 'untracked'.

    For a file inside a tracked folder: the file's md5 from the folder's cache manifest, else
    '<folder md5>:<relative path>' (still changes whenever the folder does).
    """
    root = (root or paths.REPO_ROOT).resolve()
    p = Path(path)
    p = (p if p.is_absolute() else (Path.cwd() / p)).resolve()
    try:
        rel = p.relative_to(root).as_posix()
    except ValueError:
        return "untracked"
    outs = _dvc_outs(root)
    if rel in outs:
        return outs[rel]
    for out, md5 in outs.items():
        if rel.startswith(out + "/"):
            inner = rel[len(out) + 1 :]
            return _dir_manifest_md5(root, md5, inner) or f"{md5}:{inner}"
    return "untracked"


def run_context(*datasets: str | os.PathLike, test_set: str | os.PathLike | None = None) -> dict[str, str]:
    """Tags that pin a run to its code and data: git commit and the DVC hash of each dataset.

    Keys: 'git_commit', 'git_dirty', 'data.<path relative to the repo>' per dataset, and 'test_set' (the hash
    `registry.promote` compares) when `test_set` is given. Log with `log_tags(run_context(...))`.
    """
    root = paths.REPO_ROOT.resolve()
    tags = {"git_commit": git_commit(root), "git_dirty": git_dirty(root)}
    for d in (*datasets, *([test_set] if test_set is not None else [])):
        p = Path(d).resolve() if Path(d).is_absolute() else (Path.cwd() / d).resolve()
        try:
            key = p.relative_to(root).as_posix()
        except ValueError:
            key = p.as_posix()
        tags[f"data.{key}"] = dataset_hash(p, root)
    if test_set is not None:
        h = dataset_hash(test_set, root)
        if h == "untracked":  # still identify the split by its content
            h = "file-md5:" + _file_md5(Path(test_set))
        tags[TEST_SET_TAG] = h
    return tags


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Keras callback ------------------------------------------------------------------------------

_EPOCH_LOGGER = None


def _epoch_logger_class():
    global _EPOCH_LOGGER
    if _EPOCH_LOGGER is not None:
        return _EPOCH_LOGGER
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Collect Keras epoch logs; write them to an MLflow run in batches (step = epoch).

        Flushes every `every` epochs and at the end of training, one `log_batch` per 1000
        values. Keys are `prefix + name` (e.g. 'loss', 'val_loss', 'learning_rate').
        """

        def __init__(self, run_id: str | None = None, every: int = 10, prefix: str = "",
                     keys: Iterable[str] | None = None):
            super().__init__()
            if every < 1:
                raise ValueError(f"every must be >= 1; got {every}")
            self.run_id = run_id
            self.every = int(every)
            self.prefix = prefix
            self.keys = set(keys) if keys is not None else None
            self._pending: list = []
            self._since_flush = 0

        def on_train_begin(self, logs=None):
            self.run_id = _active_run_id(self.run_id)

        def on_epoch_end(self, epoch, logs=None):
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            for key, value in (logs or {}).items():
                if self.keys is not None and key not in self.keys:
                    continue
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    continue
                self._pending.append(Metric(f"{self.prefix}{key}", v, now, int(epoch)))
            self._since_flush += 1
            if self._since_flush >= self.every:
                self.flush()

        def on_train_end(self, logs=None):
            self.flush()

        def flush(self) -> None:
            if not self._pending:
                self._since_flush = 0
                return
            rid = _active_run_id(self.run_id)
            c = client()
            batch, self._pending = self._pending, []
            for i in range(0, len(batch), 1000):
                c.log_batch(rid, metrics=batch[i : i + 1000])
            self._since_flush = 0

    _EPOCH_LOGGER = EpochLogger
    return EpochLogger


def __getattr__(name: str):
    if name == "EpochLogger":
        return _epoch_logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_uri(name: str, alias: str = "champion") -> str:
    return f"models:/{name}@{alias}"
