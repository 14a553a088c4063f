"""Periodic homogenisation of a cell design: the effective in-plane stiffness of an infinite tiling.

A large D1 x D2 tiling clamped on two edges (SPEC section 3) responds like a continuum with the
cell's homogenised stiffness C; with random cells C is generally anisotropic with strong
normal-shear coupling (C16, C26), which the single-cell properties do not show. These numbers are
the physics features of the size-agnostic model (`features`), computed exactly from the design.

Method: nodal displacements u = E x + w with the macroscopic strain E = [e11, e22, g12] and a
periodic fluctuation w (the 16 cell nodes fold onto 9 periodic nodes; rotations are periodic);
perimeter beams carry half of the union with the opposite edge, as in the tiling solver. Then
C = (K_ee - K_ew K_ww^-1 K_we) / (cell area * T), reported over E_b (dimensionless, like E11/E_b).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba as nb
import numpy as np

from deepdram.spaces.lattice.constants import CELL_SIZE, DEPTH, E_B, N_BEAMS
from deepdram.spaces.lattice.fem import element_matrices
from deepdram.spaces.lattice.geometry import BEAMS, NODE_IJ, NODE_XY, check_designs
from deepdram.spaces.lattice.tiling import ON_PERIMETER, OPPOSITE

N_PERIODIC_NODES = 9
N_FREE = 3 * N_PERIODIC_NODES  # periodic fluctuation DOFs (u1, u2, rotation per node)
N_DOF = N_FREE + 3  # plus the three macroscopic strains
# Node 0's two translations are fixed: they only move the lattice rigidly.
KEPT = np.arange(2, N_FREE)
NORM = 1.0 / (CELL_SIZE * CELL_SIZE * DEPTH * E_B)
FEATURE_NAMES = ("C11", "C22", "C12", "C16", "C26", "C66",
                 "E1", "E2", "nu12", "nu21", "eta16", "eta26")
N_FEATURES = len(FEATURE_NAMES)


@lru_cache(maxsize=1)
def _transforms() -> np.ndarray:
    """(42, 6, 30) map from [fluctuation DOFs, macroscopic strains] to each beam's end DOFs."""
    periodic = (NODE_IJ[:, 1] % 3) * 3 + (NODE_IJ[:, 0] % 3)
    t = np.zeros((N_BEAMS, 6, N_DOF))
    for e, ends in enumerate(BEAMS):
        for k, n in enumerate(ends):
            t[e, 3 * k : 3 * k + 3, 3 * periodic[n] : 3 * periodic[n] + 3] = np.eye(3)
            x, y = NODE_XY[n]
            t[e, 3 * k, N_FREE:] = (x, 0.0, y / 2)  # u1 = e11 x + g12 y / 2
            t[e, 3 * k + 1, N_FREE:] = (0.0, y, x / 2)  # u2 = e22 y + g12 x / 2
    return t


@lru_cache(maxsize=1)
def beam_tables() -> np.ndarray:
    """(42, 30 * 30) contribution of each beam (weight 1) to the [fluctuation, strain] stiffness."""
    t = _transforms()
    ke, _ = element_matrices(NODE_XY[BEAMS[:, 0]], NODE_XY[BEAMS[:, 1]])
    return np.einsum("eij,eik,ekl->ejl", t, ke, t).reshape(N_BEAMS, N_DOF * N_DOF)


@lru_cache(maxsize=1)
def _sparse_tables() -> tuple[np.ndarray, np.ndarray]:
    """Each beam's 9 touched DOFs (6 fluctuation + 3 strain; -1 = node 0's fixed translations)
    and its (42, 9, 9) stiffness block, for the compiled kernel."""
    t = _transforms()
    full = beam_tables().reshape(N_BEAMS, N_DOF, N_DOF)
    idx = np.empty((N_BEAMS, 9), np.int64)
    blocks = np.empty((N_BEAMS, 9, 9))
    for e in range(N_BEAMS):
        touched = np.r_[np.flatnonzero(np.abs(t[e, :, :N_FREE]).sum(axis=0)), np.arange(N_FREE, N_DOF)]
        blocks[e] = full[e][np.ix_(touched, touched)]
        # kept-system numbering: fluctuation DOF j -> j - 2 (j >= 2), strains -> 25..27
        idx[e] = np.where(touched < 2, -1, touched - 2)
    return idx, blocks


@nb.njit(cache=True, parallel=True)
def _stiffness_kernel(w, idx, blocks, out):  # pragma: no cover - compiled
    n_kept = N_FREE - 2
    for n in nb.prange(w.shape[0]):
        k = np.zeros((n_kept + 3, n_kept + 3))
        for e in range(w.shape[1]):
            we = w[n, e]
            if we == 0.0:
                continue
            for a in range(9):
                ia = idx[e, a]
                if ia < 0:
                    continue
                for b in range(9):
                    ib = idx[e, b]
                    if ib >= 0:
                        k[ia, ib] += we * blocks[e, a, b]
        # Cholesky of the fluctuation block (lower triangle), then C = K_ee - K_ew K_ww^-1 K_we
        for j in range(n_kept):
            s = k[j, j]
            for m in range(j):
                s -= k[j, m] * k[j, m]
            s = math.sqrt(s)
            k[j, j] = s
            for i in range(j + 1, n_kept):
                t = k[i, j]
                for m in range(j):
                    t -= k[i, m] * k[j, m]
                k[i, j] = t / s
        y = np.empty((n_kept, 3))
        for r in range(3):  # forward substitution: L y = K_we[:, r]
            for i in range(n_kept):
                t = k[i, n_kept + r]
                for m in range(i):
                    t -= k[i, m] * y[m, r]
                y[i, r] = t / k[i, i]
        for r in range(3):
            for q in range(3):
                s = k[n_kept + r, n_kept + q]
                for i in range(n_kept):
                    s -= y[i, r] * y[i, q]
                out[n, r, q] = s


def beam_weights(designs: np.ndarray) -> np.ndarray:
    """(N, 42) beam weights of the repeated cell: perimeter beams carry half the union with the opposite edge."""
    d = np.asarray(designs, dtype=np.float64)
    return np.where(ON_PERIMETER, 0.5 * np.maximum(d, d[:, OPPOSITE]), d)


def stiffness(designs, *, validate: bool = True) -> np.ndarray:
    """(N, 3, 3) homogenised stiffness C / E_b in Voigt order [11, 22, 12] (engineering shear)."""
    d = check_designs(designs, require_valid=validate)
    idx, blocks = _sparse_tables()
    out = np.empty((len(d), 3, 3))
    _stiffness_kernel(beam_weights(d), idx, blocks, out)
    return 0.5 * (out + np.transpose(out, (0, 2, 1))) * NORM


def stiffness_dense(designs, *, validate: bool = True) -> np.ndarray:
    """`stiffness` by dense NumPy assembly and LU solves (slower; the kernel's cross-check)."""
    d = check_designs(designs, require_valid=validate)
    k = (beam_weights(d) @ beam_tables()).reshape(-1, N_DOF, N_DOF)
    kww = k[:, KEPT][:, :, KEPT]
    kwe = k[:, KEPT, N_FREE:]
    c = k[:, N_FREE:, N_FREE:] - np.einsum("nij,nik->njk", kwe, np.linalg.solve(kww, kwe))
    return 0.5 * (c + np.transpose(c, (0, 2, 1))) * NORM


def features_from_stiffness(c: np.ndarray) -> np.ndarray:
    """(N, 12) features: the six entries of C, and the engineering constants of S = C^-1
    (E1, E2, nu12, nu21 under uniaxial stress, shear couplings eta16 = S16/S11, eta26 = S26/S22)."""
    s = np.linalg.inv(c)
    e1, e2 = 1.0 / s[:, 0, 0], 1.0 / s[:, 1, 1]
    return np.stack([c[:, 0, 0], c[:, 1, 1], c[:, 0, 1], c[:, 0, 2], c[:, 1, 2], c[:, 2, 2],
                     e1, e2, -s[:, 0, 1] * e1, -s[:, 0, 1] * e2, s[:, 0, 2] * e1, s[:, 1, 2] * e2], axis=1)


def features(designs, *, validate: bool = True) -> np.ndarray:
    """(N, 12) homogenised-stiffness features of designs (see FEATURE_NAMES)."""
    return features_from_stiffness(stiffness(designs, validate=validate))
