"""Reading params.yaml and checking each stage's keys before any work starts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from deepdram.constants import REPO_ROOT, TILING_SIZES, ZG_VALUES
from deepdram.errors import InputError

PARAMS_PATH = REPO_ROOT / "params.yaml"


def load_params(path: Path | str = PARAMS_PATH) -> dict:
    """The whole params.yaml as a dict (InputError if missing or not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: parameter file not found")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise InputError(f"{path}: expected a mapping of stage names to parameters")
    return params


def section(params: Mapping, name: str) -> dict:
    """One stage's parameters, e.g. section(p, 'cells') (InputError naming the missing key)."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise InputError(f"params.yaml: missing or malformed section '{name}'")
    return value


def get(sec: Mapping, key: str, where: str) -> Any:
    """sec[key], or InputError naming `where.key`."""
    if key not in sec:
        raise InputError(f"params.yaml: missing key '{where}.{key}'")
    return sec[key]


def positive_int(sec: Mapping, key: str, where: str, *, allow_zero: bool = False) -> int:
    """An integer >= 1 (or >= 0) at sec[key]."""
    v = get(sec, key, where)
    lo = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InputError(f"params.yaml: '{where}.{key}' must be an integer >= {lo}; got {v!r}")
    return v


def seed(sec: Mapping, key: str, where: str) -> int:
    """A non-negative integer seed."""
    return positive_int(sec, key, where, allow_zero=True)


def fraction(sec: Mapping, key: str, where: str) -> float:
    """A number in [0, 1]."""
    v = get(sec, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise InputError(f"params.yaml: '{where}.{key}' must be a number in [0, 1]; got {v!r}")
    return float(v)


def choice(sec: Mapping, key: str, where: str, options: Iterable[str]) -> str:
    """One of `options`."""
    v = get(sec, key, where)
    options = list(options)
    if v not in options:
        raise InputError(f"params.yaml: '{where}.{key}' must be one of {options}; got {v!r}")
    return v


def zg_list(sec: Mapping, key: str, where: str) -> list[float]:
    """A non-empty list of supported Z_g values, without repeats."""
    v = get(sec, key, where)
    if not isinstance(v, list) or not v:
        raise InputError(f"params.yaml: '{where}.{key}' must be a non-empty list of Z_g values")
    out = []
    for z in v:
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not any(abs(z - a) < 1e-9 for a in ZG_VALUES):
            raise InputError(
                f"params.yaml: '{where}.{key}' has unknown Z_g {z!r}; supported: {list(ZG_VALUES)}"
            )
        out.append(float(z))
    if len(set(out)) != len(out):
        raise InputError(f"params.yaml: '{where}.{key}' repeats a Z_g value: {v}")
    return out


def size_list(sec: Mapping, key: str, where: str) -> list[int]:
    """A non-empty list of tiling sizes, each even in [2, 20]."""
    v = get(sec, key, where)
    if not isinstance(v, list) or not v:
        raise InputError(f"params.yaml: '{where}.{key}' must be a non-empty list of sizes")
    for d in v:
        if isinstance(d, bool) or not isinstance(d, int) or d not in TILING_SIZES:
            raise InputError(
                f"params.yaml: '{where}.{key}' has size {d!r}; sizes must be even integers in [2, 20]"
            )
    return sorted(set(v))


def fingerprint(*parts: Any, files: Iterable[Path] = ()) -> str:
    """Short hash of JSON-able parts and file contents: names resumable work of one configuration."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]
