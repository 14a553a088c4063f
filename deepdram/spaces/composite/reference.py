"""Plain reference toughness oracle: full specimen, sparse assembly and spsolve every step (SPEC 8).

Deliberately literal and unoptimised: it is the independent truth for the tests and the baseline
of the benchmark, not the production path (that is `fem.toughness`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from deepdram.spaces.composite.mesh import (
    CRACK_CELLS,
    N_CELLS,
    Mesh,
    Supports,
    element_moduli,
    mirror_design,
    phase_moduli,
    q4_stiffness,
    specimen_mesh,
    specimen_supports,
)

G_C = 1.0  # critical strain energy density, every element
RESIDUAL = 1e-6  # share of its modulus a failed element keeps
STOP = 0.01  # stop once K < STOP * K_0
TOL = 1e-9  # relative tolerance of "reaches g_c"


@dataclass(frozen=True)
class FractureRun:
    """Outcome of one progressive-failure run: work, intact stiffness, curve and failure steps."""

    work: float
    k0: float
    steps: int
    curve: list[tuple[float, float]] | None  # (delta, force) points, from (0, 0)
    order: np.ndarray | None  # (rows, cols) step in which each element failed (1-based), 0 = never


@dataclass(frozen=True)
class ReferenceResult:
    """Normalised toughness of one design, with its raw fracture run."""

    toughness: float
    run: FractureRun


def assemble(mesh: Mesh, moduli: np.ndarray, ke: np.ndarray) -> sp.csr_matrix:
    """Global sparse stiffness: sum of moduli[e] * ke over the elements (ke for unit modulus)."""
    dofs = mesh.element_dofs
    rows = np.repeat(dofs, 8, axis=1).ravel()
    cols = np.tile(dofs, (1, 8)).ravel()
    vals = (moduli[:, None, None] * ke[None]).ravel()
    return sp.coo_matrix((vals, (rows, cols)), shape=(mesh.n_dofs, mesh.n_dofs)).tocsr()


def solve_supported(K: sp.csr_matrix, sup: Supports) -> np.ndarray:
    """Displacements with the prescribed dofs of `sup` at their values, the rest in equilibrium."""
    n = K.shape[0]
    free = np.setdiff1d(np.arange(n), sup.dofs)
    u = np.zeros(n)
    u[sup.dofs] = sup.values
    rhs = -K[free][:, sup.dofs] @ sup.values
    u[free] = spla.spsolve(K[free][:, free].tocsc(), rhs)
    return u


def reaction(K: sp.csr_matrix, u: np.ndarray, sup: Supports) -> float:
    """K = sign * sum of the reactions (K u) on the reaction dofs of `sup`."""
    return float(sup.reaction_sign * (K @ u)[sup.reaction_dofs].sum())


def energy_density(mesh: Mesh, moduli: np.ndarray, ke: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(nel,) strain energy per unit area of each element for displacements u."""
    ue = u[mesh.element_dofs]
    return 0.5 * moduli * np.einsum("ei,ij,ej->e", ue, ke, ue) / (mesh.a * mesh.b)


def fracture_run(
    cell_field: np.ndarray,
    *,
    m: int = 1,
    nu: float = 0.3,
    g_c: float = G_C,
    crack_cells: int = CRACK_CELLS,
    curve: bool = False,
    order: bool = False,
) -> FractureRun:
    """Progressive failure of the full specimen with (8, 8) cell moduli `cell_field`, SPEC 8 steps."""
    mesh = specimen_mesh(m, crack_cells)
    sup = specimen_supports(mesh)
    ke = q4_stiffness(1.0, nu, mesh.a, mesh.b)
    E = element_moduli(cell_field, m)
    intact = np.ones(E.size, bool)
    failed_at = np.zeros(E.size, np.int64)
    delta = work = 0.0
    k0 = None
    points = [(0.0, 0.0)]
    step = 0
    while True:
        step += 1
        # 1. solve at unit delta with the current moduli
        K = assemble(mesh, E, ke)
        u = solve_supported(K, sup)
        k = reaction(K, u, sup)
        if k0 is None:
            k0 = k
        if delta > 0:
            points.append((delta, k * delta))
        # 2. stop once the specimen has lost its stiffness
        if k < STOP * k0:
            break
        # 3. raise delta until the most loaded intact element reaches g_c
        dens = energy_density(mesh, E, ke, u)
        delta_f = np.sqrt(g_c / dens[intact].max())
        if delta_f > delta:
            work += 0.5 * k * (delta_f**2 - delta**2)
            delta = delta_f
            points.append((delta, k * delta))
        # 4. every intact element at or past g_c fails
        fail = intact & (dens * delta**2 >= g_c * (1.0 - TOL))
        if not fail.any():  # cannot happen (the most loaded element reaches g_c); no endless loop
            raise RuntimeError(f"no element failed in step {step} at delta = {delta!r}")
        E[fail] *= RESIDUAL
        intact &= ~fail
        failed_at[fail] = step
    n = N_CELLS * m
    return FractureRun(
        work=float(work),
        k0=float(k0),
        steps=step,
        curve=points if curve else None,
        order=failed_at.reshape(n, n) if order else None,
    )


@cache
def _homogeneous_work(m: int, nu: float, g_c: float) -> float:
    """Work of the all-stiff specimen (the normaliser)."""
    return fracture_run(np.ones((N_CELLS, N_CELLS)), m=m, nu=nu, g_c=g_c).work


def toughness_field(cell_field: np.ndarray, *, m: int = 1, nu: float = 0.3, g_c: float = G_C,
                    curve: bool = False, order: bool = False) -> ReferenceResult:
    """Normalised toughness of a full (8, 8) cell-modulus field (no symmetry assumed)."""
    run = fracture_run(cell_field, m=m, nu=nu, g_c=g_c, curve=curve, order=order)
    return ReferenceResult(toughness=run.work / _homogeneous_work(m, nu, g_c), run=run)


def toughness_reference(design: np.ndarray, *, m: int = 1, ratio: float = 10.0, nu: float = 0.3,
                        g_c: float = G_C, curve: bool = False, order: bool = False) -> ReferenceResult:
    """Normalised toughness of one 32-cell half design (mirrored to the full specimen)."""
    field = phase_moduli(mirror_design(np.asarray(design).ravel()), ratio)
    return toughness_field(field, m=m, nu=nu, g_c=g_c, curve=curve, order=order)
