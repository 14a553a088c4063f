"""Errors that name the problem: which row, which field, which rule."""

from __future__ import annotations


class DeepdramError(Exception):
    """Base class for errors the CLI reports as one clear line, without a traceback."""


class InputError(DeepdramError, ValueError):
    """Invalid user input: a design, a size, a file or a parameter breaks a rule."""


def first_rows(mask, limit: int = 5) -> str:
    """Comma-separated indices of the first `limit` True entries of a boolean mask."""
    import numpy as np

    idx = np.flatnonzero(np.asarray(mask))
    text = ", ".join(str(int(i)) for i in idx[:limit])
    if idx.size > limit:
        text += f", ... ({idx.size} in all)"
    return text


def check_number(value, what: str) -> float:
    """A finite float from `value`, else InputError naming `what`."""
    import math

    if isinstance(value, bool) or value is None:
        raise InputError(f"{what} must be a number; got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number; got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{what} must be a finite number; got {value!r}")
    return v


def check_integer(value, what: str, lo: int, hi: int | None = None) -> int:
    """An integer in [lo, hi] from `value` (integral floats accepted), else InputError."""
    v = check_number(value, what)
    if v != round(v):
        raise InputError(f"{what} must be an integer; got {value!r}")
    v = int(round(v))
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InputError(f"{what} must be an integer {rng}; got {v}")
    return v
