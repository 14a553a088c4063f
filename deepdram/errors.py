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
