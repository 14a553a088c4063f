"""Numba kernel of the batched toughness solver: banded Cholesky of the half specimen per design.

Per step only the rows of the band at and after the first free dof of a newly failed element
change (assembly, factor rows and forward substitution are row-causal), so each step restarts the
factorisation there instead of from row 0 (rows of the band run bottom to top, see fem.half_model).
Cholesky up/downdates were not used: a rank-1 update of a band costs about 4 w flops per
remaining row against w^2 / 2 for refactoring it, and an element change has rank 5.

Band layout: row r = i + w of a (n + w, w + 1) array holds row i's columns i - w .. i at positions
0 .. w; the first w rows are zeros, so every loop has a trip count fixed by w alone. The band
width w is made a compile-time constant (numba.literally), which lets LLVM unroll the short inner
loops: about 3x faster factorisation than a run-time w (measured for w = 12, m = 1).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def run_one(
    cell_moduli, ke, kp, area, fidx, uval, rsign, cell_of, n, w, g_c, residual, stop, tol,
    order_out, curve_out,
):
    """Progressive failure of one half design given its 32 cell moduli; returns (work, K_0, steps,
    curve points)."""
    w = nb.literally(w)
    nel = fidx.shape[0]
    E = np.empty(nel)
    for e in range(nel):
        E[e] = cell_moduli[cell_of[e]]
    emin = np.empty(nel, np.int64)
    emax = np.empty(nel, np.int64)
    for e in range(nel):
        lo, hi = n, -1
        for a in range(8):
            f = fidx[e, a]
            if f >= 0:
                lo = min(lo, f)
                hi = max(hi, f)
        emin[e], emax[e] = lo, hi
    intact = np.ones(nel, np.bool_)
    A = np.zeros((n + w, w + 1))
    L = np.zeros((n + w, w + 1))
    rhs = np.zeros(n + w)
    inv = np.zeros(n + w)
    y = np.zeros(n + w)
    x = np.zeros(n + w)
    ue = np.empty(8)
    dens = np.empty(nel)
    want_curve = curve_out.shape[0] > 0
    want_order = order_out.shape[0] > 0
    npts = 0
    if want_curve:
        curve_out[0, 0] = 0.0
        curve_out[0, 1] = 0.0
        npts = 1
    delta = 0.0
    work = 0.0
    k0 = -1.0
    p = 0
    step = 0
    while step <= nel + 1:
        step += 1
        # 1. assemble band rows >= p and solve at unit delta
        for r in range(p + w, n + w):
            rhs[r] = 0.0
            for t in range(w + 1):
                A[r, t] = 0.0
        for e in range(nel):
            if emax[e] < p:
                continue
            Ee = E[e]
            for a in range(8):
                ia = fidx[e, a]
                if ia < p:
                    continue
                rhs[ia + w] -= Ee * kp[e, a]
                for b in range(8):
                    ib = fidx[e, b]
                    if 0 <= ib <= ia:
                        A[ia + w, w - ia + ib] += Ee * ke[a, b]
        for r in range(p + w, n + w):
            for t in range(w):
                rj = r - w + t
                s = A[r, t]
                for u in range(t):
                    s -= L[r, u] * L[rj, u + w - t]
                L[r, t] = s * inv[rj]  # reciprocal: keeps divisions off the critical path
            s = A[r, w]
            for u in range(w):
                s -= L[r, u] * L[r, u]
            d = np.sqrt(s)
            L[r, w] = d
            inv[r] = 1.0 / d
            s = rhs[r]
            for u in range(w):
                s -= L[r, u] * y[r - w + u]
            y[r] = s * inv[r]
        for r in range(w, n + w):
            x[r] = y[r]
        for r in range(n + w - 1, w - 1, -1):  # by rows of L (contiguous), no long dependency chain
            xr = x[r] * inv[r]
            x[r] = xr
            for u in range(w):
                x[r - w + u] -= L[r, u] * xr
        # energy densities and the reaction K
        K = 0.0
        for e in range(nel):
            for a in range(8):
                f = fidx[e, a]
                ue[a] = x[f + w] if f >= 0 else uval[e, a]
            q = 0.0
            for a in range(8):
                ka = 0.0
                for b in range(8):
                    ka += ke[a, b] * ue[b]
                q += ue[a] * ka
                if rsign[e, a] != 0.0:
                    K += rsign[e, a] * E[e] * ka
            dens[e] = 0.5 * E[e] * q / area
        if k0 < 0.0:
            k0 = K
        if want_curve and delta > 0.0:
            curve_out[npts, 0] = delta
            curve_out[npts, 1] = K * delta
            npts += 1
        # 2. stop
        if K < stop * k0:
            break
        # 3. load up to the next failure
        umax = -1.0
        for e in range(nel):
            if intact[e] and dens[e] > umax:
                umax = dens[e]
        if umax <= 0.0:
            break
        delta_f = np.sqrt(g_c / umax)
        if delta_f > delta:
            work += 0.5 * K * (delta_f * delta_f - delta * delta)
            delta = delta_f
            if want_curve:
                curve_out[npts, 0] = delta
                curve_out[npts, 1] = K * delta
                npts += 1
        # 4. failures; the next assembly/factorisation restarts at the first touched row
        p = n
        lim = g_c * (1.0 - tol)
        d2 = delta * delta
        for e in range(nel):
            if intact[e] and dens[e] * d2 >= lim:
                intact[e] = False
                E[e] *= residual
                if want_order:
                    order_out[e] = step
                p = min(p, emin[e])
    return work, k0, step, npts


@nb.njit(cache=True, parallel=True)
def run_batch(
    cell_moduli, ke, kp, area, fidx, uval, rsign, cell_of, n, w, g_c, residual, stop, tol,
    work, k0, steps, order, curves, npoints,
):
    """Progressive failure of every row of `cell_moduli` (B, 32) in parallel; order (B, 0) /
    curves (B, 0, 2) switch those outputs off."""
    for i in nb.prange(cell_moduli.shape[0]):
        wk, kk, st, npt = run_one(
            cell_moduli[i], ke, kp, area, fidx, uval, rsign, cell_of, n, nb.literally(w), g_c,
            residual, stop, tol, order[i], curves[i],
        )
        work[i] = wk
        k0[i] = kk
        steps[i] = st
        npoints[i] = npt
