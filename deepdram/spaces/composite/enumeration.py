"""Counting, unranking, ranking and sampling of composite half designs with k soft cells.

Order of the enumeration: the soft-cell columns of a design, sorted ascending, in lexicographic
order, i.e. the order of itertools.combinations(range(32), k); rank 0 has cells 0..k-1 soft.
"""

from __future__ import annotations

from functools import cache
from math import comb

import numpy as np

from deepdram.errors import InputError
from deepdram.spaces.composite.mesh import N_VARS


def n_designs(k: int, n_vars: int = N_VARS) -> int:
    """Number of half designs with exactly k soft cells: C(32, k)."""
    _check_k(k, n_vars)
    return comb(n_vars, k)


def _check_k(k: int, n_vars: int) -> None:
    """Raise InputError unless 0 <= k <= n_vars."""
    if not (isinstance(k, (int, np.integer)) and 0 <= k <= n_vars):
        raise InputError(f"the number of soft cells k must be an integer in [0, {n_vars}]; got {k!r}")


@cache
def _binomials(n_vars: int) -> np.ndarray:
    """(n_vars + 1, n_vars + 1) table of C(n, j) as int64."""
    return np.array([[comb(n, j) for j in range(n_vars + 1)] for n in range(n_vars + 1)], np.int64)


def unrank_soft(ranks: np.ndarray, k: int, n_vars: int = N_VARS) -> np.ndarray:
    """(n, k) ascending soft-cell columns of the designs with the given ranks (vectorised)."""
    _check_k(k, n_vars)
    r = np.array(ranks, dtype=np.int64, copy=True).ravel()
    total = comb(n_vars, k)
    if r.size and (r.min() < 0 or r.max() >= total):
        raise InputError(
            f"design ranks must lie in [0, C({n_vars}, {k}) = {total}); got {r.min()}..{r.max()}"
        )
    C = _binomials(n_vars)
    out = np.empty((r.size, k), np.int64)
    prev = np.full(r.size, -1, np.int64)
    for t in range(k):
        chosen = np.full(r.size, -1, np.int64)
        for c in range(n_vars - k + t + 1):
            # designs whose slot t holds c (earlier slots fixed): C(n_vars - 1 - c, k - t - 1)
            count = C[n_vars - 1 - c, k - t - 1]
            open_ = (chosen < 0) & (c > prev)
            take = open_ & (r < count)
            chosen[take] = c
            r[open_ & ~take] -= count
        out[:, t] = chosen
        prev = chosen
    return out


def designs_from_soft(soft: np.ndarray, n_vars: int = N_VARS) -> np.ndarray:
    """(n, 32) uint8 designs (1 = stiff) with the (n, k) listed columns soft."""
    s = np.asarray(soft, np.int64)
    out = np.ones((s.shape[0], n_vars), np.uint8)
    np.put_along_axis(out, s, 0, axis=1)
    return out


def designs_range(k: int, start: int, stop: int, n_vars: int = N_VARS) -> np.ndarray:
    """(stop - start, 32) uint8 designs with ranks [start, stop) of the k-soft enumeration."""
    total = n_designs(k, n_vars)
    if not (0 <= start <= stop <= total):
        raise InputError(f"need 0 <= start <= stop <= C({n_vars}, {k}) = {total}; got [{start}, {stop})")
    return designs_from_soft(unrank_soft(np.arange(start, stop, dtype=np.int64), k, n_vars), n_vars)


def rank_designs(designs: np.ndarray) -> np.ndarray:
    """(n,) int64 rank of each 0/1 design within the enumeration of its own soft-cell count."""
    d = np.atleast_2d(np.asarray(designs))
    n_vars = d.shape[1]
    C = _binomials(n_vars)
    soft = d == 0
    k = soft.sum(axis=1)
    # lexicographic rank from the end: C(n - 1 - c_t, k - t) designs follow in slot t
    t = np.cumsum(soft, axis=1) - 1  # slot of each soft cell
    col = np.arange(n_vars)
    terms = np.where(soft, C[n_vars - 1 - col[None, :], np.clip(k[:, None] - t, 0, n_vars)], 0)
    return C[n_vars, k] - 1 - terms.sum(axis=1)


def sample_designs(n: int, k: int, seed: int | np.random.Generator | None = 0,
                   n_vars: int = N_VARS) -> np.ndarray:
    """(n, 32) uint8 designs with exactly k soft cells, each uniform at random (seeded)."""
    _check_k(k, n_vars)
    rng = np.random.default_rng(seed)
    keys = rng.random((n, n_vars))
    soft = np.argsort(keys, axis=1)[:, :k]
    return designs_from_soft(soft, n_vars)
