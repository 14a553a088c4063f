"""Compiled gather/scatter of index blocks of batched square matrices (memory-bound helpers).

NumPy's broadcast fancy indexing (a[:, i[:, None], j[None, :]]) costs several ns per element;
these loops copy at memory speed, which matters for the condensation of large tilings.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def gather(src: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """out[b, r, c] = src[b, rows[r], cols[c]]."""
    bt = src.shape[0]
    nr, nc = rows.shape[0], cols.shape[0]
    out = np.empty((bt, nr, nc))
    for k in range(bt * nr):
        b = k // nr
        r = k - b * nr
        row = src[b, rows[r]]
        dst = out[b, r]
        for c in range(nc):
            dst[c] = row[cols[c]]
    return out


@nb.njit(cache=True, nogil=True)
def scatter_add(dst: np.ndarray, src: np.ndarray, idx: np.ndarray) -> None:
    """dst[b, idx[r], idx[c]] += src[b, r, c] (idx without repeats)."""
    bt, n = src.shape[0], src.shape[1]
    for k in range(bt * n):
        b = k // n
        r = k - b * n
        drow = dst[b, idx[r]]
        srow = src[b, r]
        for c in range(n):
            drow[idx[c]] += srow[c]
