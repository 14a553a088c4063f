"""Compiled unit-cell kernel: assemble, Cholesky-solve and post-process both load cases per design.

Each design leaves 24 free DOFs per load case; the system is symmetric positive definite, so a
24 x 24 Cholesky per load case suffices. Beam e enters with stiffness multiplier w[e] (0/1 for a
design, continuous for relaxed densities); beams with w[e] == 0 are skipped. The summed reaction
on the moved edge is R = U (k_pp - k_f^T K_ff^-1 k_f), where k_f is the coupling of the free DOFs to the moved DOFs
and U the imposed displacement; the transverse strain is a fixed linear functional of u_f.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

NF = 24  # free DOFs per load case


@nb.njit(cache=True, nogil=True)
def _solve_design(w, ke, kq, dofs, code, moved_value, gvec, ecoef, strain, sec, props, peak, bvm, disp, b,
                  K, kf, x, u):
    want_peak = peak.shape[0] > 0
    want_beams = bvm.shape[0] > 0
    want_disp = disp.shape[0] > 0
    for c in range(2):
        for i in range(NF):
            kf[i] = 0.0
            for j in range(NF):
                K[i, j] = 0.0
        kpp = 0.0
        for e in range(w.shape[0]):
            we = w[e]
            if we == 0.0:
                continue
            for p in range(6):
                cp = code[c, dofs[e, p]]
                if cp == -1:
                    continue
                for q in range(6):
                    cq = code[c, dofs[e, q]]
                    if cq == -1:
                        continue
                    v = ke[e, p, q] * we  # exact for we == 1.0: 0/1 designs stay bitwise unchanged
                    if cp >= 0:
                        if cq >= 0:
                            K[cp, cq] += v
                        else:
                            kf[cp] += v
                    elif cq == -2:
                        kpp += v
        # Cholesky K = L L^T in the lower triangle
        for j in range(NF):
            s = K[j, j]
            for k in range(j):
                s -= K[j, k] * K[j, k]
            s = math.sqrt(s)
            K[j, j] = s
            for i in range(j + 1, NF):
                t = K[i, j]
                for k in range(j):
                    t -= K[i, k] * K[j, k]
                K[i, j] = t / s
        # x = K^-1 kf
        for i in range(NF):
            t = kf[i]
            for k in range(i):
                t -= K[i, k] * x[k]
            x[i] = t / K[i, i]
        for i in range(NF - 1, -1, -1):
            t = x[i]
            for k in range(i + 1, NF):
                t -= K[k, i] * x[k]
            x[i] = t / K[i, i]
        umove = moved_value[c]
        dot = 0.0
        trans = 0.0
        for i in range(NF):
            dot += kf[i] * x[i]
            trans -= gvec[c, i] * x[i]
        props[b, c] = umove * (kpp - dot) * ecoef[c]
        props[b, 2 + c] = -(trans * umove) / strain
        if want_peak or want_disp:
            for g in range(u.shape[0]):
                cg = code[c, g]
                if cg >= 0:
                    u[g] = -umove * x[cg]
                elif cg == -2:
                    u[g] = umove
                else:
                    u[g] = 0.0
            if want_disp:
                for g in range(u.shape[0]):
                    disp[b, c, g] = u[g]
        if want_peak:
            vmax = 0.0
            for e in range(w.shape[0]):
                we = w[e]
                if we == 0.0:
                    continue
                f0 = 0.0
                f1 = 0.0
                f2 = 0.0
                f5 = 0.0
                for q in range(6):
                    uq = u[dofs[e, q]]
                    f0 += kq[e, 0, q] * uq
                    f1 += kq[e, 1, q] * uq
                    f2 += kq[e, 2, q] * uq
                    f5 += kq[e, 5, q] * uq
                # a weighted beam carries w times the end forces of the full beam
                f0 *= we
                f1 *= we
                f2 *= we
                f5 *= we
                # sec = [area, inertia, half thickness, Eb * strain] (SPEC section 3)
                sig = abs(f0) / sec[0] + max(abs(f2), abs(f5)) * sec[2] / sec[1]
                tau = 1.5 * abs(f1) / sec[0]
                vm = math.sqrt(sig * sig + 3.0 * tau * tau) / sec[3]
                if want_beams:
                    bvm[b, e, c] = vm
                if vm > vmax:
                    vmax = vm
            peak[b, c] = vmax


@nb.njit(cache=True, parallel=True, nogil=True)
def cell_kernel(weights, ke, kq, dofs, code, moved_value, gvec, ecoef, props, peak, bvm, disp, strain, sec,
                nblocks):
    """Fill props (B, 4) and, where given non-empty, peak (B, 2), bvm (B, 42, 2), disp (B, 2, 48).

    weights (B, 42) float64 are the beams' stiffness multipliers (a 0/1 design as floats).

    Designs are split into `nblocks` contiguous blocks, each with its own workspace.
    """
    n = weights.shape[0]
    nblocks = max(1, min(n, nblocks))
    for blk in nb.prange(nblocks):
        K = np.empty((NF, NF))
        kf = np.empty(NF)
        x = np.empty(NF)
        u = np.empty(dofs.max() + 1)
        start = blk * n // nblocks
        stop = (blk + 1) * n // nblocks
        for b in range(start, stop):
            _solve_design(weights[b], ke, kq, dofs, code, moved_value, gvec, ecoef, strain, sec,
                          props, peak, bvm, disp, b, K, kf, x, u)
