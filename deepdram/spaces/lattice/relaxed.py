"""Relaxed (continuous) beam densities and their exact adjoint gradients, for gradient-based
topology optimisation of the lattice (the GIDN seed's baseline, seed 004, made exact).

Definitions:

- A relaxed design is a density vector rho in [0, 1]^42, one entry per beam in the canonical
  order of SPEC section 1; a batch is (B, 42), one row per design.
- SIMP: beam e enters the frame with stiffness multiplier
  s(rho_e) = floor + (1 - floor) * rho_e**penalty (defaults penalty = 3, floor = 1e-6). Densities
  0/1 give the 0/1 design exactly up to the floor: a beam of density 0 keeps `floor` of its
  stiffness, which keeps the stiffness matrix non-singular where nodes would be disconnected.
- Tilings (SPEC section 4): all d1 x d2 cells share one density vector. A beam on an edge shared
  by two neighbouring cells is one beam whose density is the probabilistic union of the two cell
  beams on that line, rho_e + rho_o - rho_e * rho_o (o = `tiling.OPPOSITE[e]`), which is the
  SPEC's rule (one beam if either cell has it) at 0/1. Beams on the tiling's outer edges have the
  cell's own density. d1 = d2 = None (or 1) is the unit cell.
- Properties: exactly SPEC section 3, [E11/Eb, E22/Eb, nu12, nu21], both load cases with their
  prescribed displacements.

Gradients by the adjoint method, per load case with imposed displacement U, for a beam of
multiplier w_e and element matrix K_e (so K = sum_e w_e K_e):

- the summed reaction R on the moved edge is 2 Pi / U = u^T K u / U (the free DOFs carry no
  load), so dR/dw_e = u_e^T K_e u_e / U (the term through du vanishes since (K u)_f = 0);
- the transverse strain eps = g^T u is linear in u_f: with the adjoint K_ff lambda = g_f
  (lambda = 0 on prescribed DOFs), d eps/dw_e = -lambda_e^T K_e u_e.

These chain through SIMP (ds/drho = (1 - floor) * penalty * rho**(penalty - 1)) and, for
tilings, through the union rule (d union/d rho_e = 1 - rho_o) and the outer-edge rule. Unit
cells are solved batched and dense (48 DOFs); tilings per design on the whole assembled tiling
(scipy.sparse, one sparse LU per design and load case, reused for the adjoint), independent of the
substructuring solver in `tiling`. `fd_gradient` gives the seed's central differences instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from deepdram.errors import InputError, check_integer, check_number, first_rows
from deepdram.spaces.lattice.constants import D_MAX, N_BEAMS, SPEC_MATERIAL, Material
from deepdram.spaces.lattice.fem import element_dofs, element_matrices, grid_edges, load_case
from deepdram.spaces.lattice.geometry import BEAMS, BIT_COLUMNS, NODE_IJ, NODE_XY
from deepdram.spaces.lattice.tiling import OPPOSITE

PENALTY = 3.0
FLOOR = 1e-6

# --- Input checks ---------------------------------------------------------------------------


def check_densities(rho) -> np.ndarray:
    """(B, 42) float64 densities in [0, 1] from one vector or a batch, else InputError."""
    try:
        arr = np.asarray(rho)
    except ValueError:  # ragged rows
        raise InputError(f"densities must have {N_BEAMS} entries per design (one per beam b00..b41)") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"densities must be numbers in [0, 1]; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != N_BEAMS:
        raise InputError(f"densities must have shape (42,) or (B, 42); got shape {np.shape(rho)}")
    nan = np.isnan(arr)
    if nan.any():
        r, c = np.argwhere(nan)[0]
        raise InputError(f"densities must be numbers in [0, 1]: row {r} column {BIT_COLUMNS[c]} is NaN "
                         f"(rows with NaN: {first_rows(nan.any(axis=1))})")
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"densities must lie in [0, 1]: row {r} column {BIT_COLUMNS[c]} is {arr[r, c].item()!r} "
                         f"(rows outside: {first_rows(bad.any(axis=1))})")
    return arr


def check_simp(penalty, floor) -> tuple[float, float]:
    """(penalty, floor) as floats with penalty >= 1 and 0 <= floor < 1, else InputError."""
    p, f = check_number(penalty, "penalty"), check_number(floor, "floor")
    if p < 1:
        raise InputError(f"penalty must be >= 1 (SIMP); got {p!r}")
    if not 0 <= f < 1:
        raise InputError(f"floor must be in [0, 1); got {f!r}")
    return p, f


def check_tiling_size(d1, d2) -> tuple[int, int]:
    """(d1, d2) cells of one tiling: both None for the unit cell, else integers in [1, 20]."""
    if d1 is None and d2 is None:
        return 1, 1
    if d1 is None or d2 is None:
        raise InputError("give both d1 and d2 (cells along directions 1 and 2), or neither for the unit cell")
    return check_integer(d1, "d1", 1, D_MAX), check_integer(d2, "d2", 1, D_MAX)


# --- SIMP and the tiling's beam densities -------------------------------------------------------


def simp(rho: np.ndarray, penalty: float = PENALTY, floor: float = FLOOR) -> np.ndarray:
    """Stiffness multipliers floor + (1 - floor) * rho**penalty."""
    return floor + (1.0 - floor) * rho**penalty


def simp_derivative(rho: np.ndarray, penalty: float = PENALTY, floor: float = FLOOR) -> np.ndarray:
    """d simp / d rho = (1 - floor) * penalty * rho**(penalty - 1)."""
    return (1.0 - floor) * penalty * rho ** (penalty - 1.0)


def union(rho: np.ndarray) -> np.ndarray:
    """Density of the one beam on a shared edge: rho_e + rho_o - rho_e rho_o (o = OPPOSITE[e])."""
    other = rho[..., OPPOSITE]
    return rho + other - rho * other


def tiling_weights(rho, *, penalty: float = PENALTY, floor: float = FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """SIMP of the own and the union densities: `tiling.solve_tilings` weights for all-ones designs."""
    r = check_densities(rho)
    penalty, floor = check_simp(penalty, floor)
    return simp(r, penalty, floor), simp(union(r), penalty, floor)


# --- The assembled tiling (design-independent, cached per size) -----------------------------------


@dataclass(frozen=True, eq=False)
class LoadCase:
    """One load case on a mesh: DOF partition, prescribed values, what the properties read."""

    free: np.ndarray  # (nf,) free DOFs, in nested-dissection order
    up: np.ndarray  # (ndof,) prescribed displacements, 0 on free DOFs
    moved: float  # imposed displacement U of the moved edge
    react: np.ndarray  # DOFs whose reactions sum to R (moved edge, load direction)
    e_coef: float  # E / Eb = R * e_coef
    g: np.ndarray  # (ndof,) transverse strain functional: eps = g . u
    ff_slot: np.ndarray  # (M * 36,) CSC data slot of each element entry in K_ff, -1 if not free-free
    ff_indptr: np.ndarray
    ff_indices: np.ndarray


@dataclass(frozen=True, eq=False)
class Mesh:
    """The whole d1 x d2 tiling's beams, each tied to its cell beam(s), and both load cases."""

    d1: int
    d2: int
    n_dof: int
    dofs: np.ndarray  # (M, 6) global DOFs of each tiling beam
    cell_beam: np.ndarray  # (M,) cell beam e whose element matrix (and density) the beam has
    partner: np.ndarray  # (M,) the opposite cell beam o on a shared edge, else cell_beam
    shared: np.ndarray  # (M,) bool: on an edge shared by two cells (density = union)
    ke: np.ndarray  # (M, 6, 6) unweighted global element matrices
    cases: tuple[LoadCase, LoadCase]


def _tiling_beams(d1: int, d2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique beams (M, 2) of the tiling in their cell's orientation, their cell beam, and the count."""
    nx = 3 * d1 + 1
    a, b = np.meshgrid(np.arange(d1), np.arange(d2), indexing="ij")
    ox, oy = 3 * a.ravel()[:, None], 3 * b.ravel()[:, None]
    ends = [(oy + NODE_IJ[BEAMS[:, k], 1]) * nx + (ox + NODE_IJ[BEAMS[:, k], 0]) for k in (0, 1)]
    na, nb = (e.ravel() for e in ends)
    beam = np.tile(np.arange(N_BEAMS), d1 * d2)
    key = np.minimum(na, nb) * nx * (3 * d2 + 1) + np.maximum(na, nb)
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    return np.stack([na[first], nb[first]], axis=1), beam[first], counts


def nested_dissection(nx: int, ny: int, leaf: int = 3) -> np.ndarray:
    """Node ids (y * nx + x) of an nx x ny grid in nested-dissection order, separators last.

    Beams join nodes at most one column and row apart, so one column (or row) of nodes separates
    the two halves of a block; this fixed ordering keeps the sparse LU's fill near the minimum.
    """

    def order(xs: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
        if len(xs) <= leaf and len(ys) <= leaf:
            return [(ys[:, None] * nx + xs[None, :]).ravel()]
        if len(xs) >= len(ys):
            c = len(xs) // 2
            return order(xs[:c], ys) + order(xs[c + 1 :], ys) + [ys * nx + xs[c]]
        c = len(ys) // 2
        return order(xs, ys[:c]) + order(xs, ys[c + 1 :]) + [ys[c] * nx + xs]

    return np.concatenate(order(np.arange(nx), np.arange(ny)))


def _ff_structure(dofs: np.ndarray, free: np.ndarray, n_dof: int):
    """CSC structure of K_ff and each element entry's slot in its data array (-1: not free-free)."""
    index = np.full(n_dof, -1, dtype=np.int64)
    index[free] = np.arange(len(free))
    rows = index[np.repeat(dofs, 6, axis=1)].ravel()
    cols = index[np.tile(dofs, (1, 6))].ravel()
    keep = (rows >= 0) & (cols >= 0)
    key = cols[keep] * len(free) + rows[keep]  # column-major: sorted keys give CSC order
    uniq, inv = np.unique(key, return_inverse=True)
    slot = np.full(len(rows), -1, dtype=np.int64)
    slot[keep] = inv.ravel()
    indptr = np.searchsorted(uniq // len(free), np.arange(len(free) + 1))
    return slot, indptr.astype(np.int32), (uniq % len(free)).astype(np.int32)


def _load_case(d1: int, d2: int, case: int, dofs: np.ndarray, n_dof: int, material: Material) -> LoadCase:
    nx, ny = 3 * d1 + 1, 3 * d2 + 1
    e = grid_edges(nx, ny)
    width, height = d1 * NODE_XY[-1, 0], d2 * NODE_XY[-1, 1]
    presc, vals = load_case(nx, ny, case, material.strain)
    up = np.zeros(n_dof)
    up[presc] = vals
    ranked = (3 * nested_dissection(nx, ny)[:, None] + np.arange(3)).ravel()
    free = ranked[~np.isin(ranked, presc)]  # free DOFs in elimination order: K_ff needs no pivoting
    g = np.zeros(n_dof)
    if case == 1:  # SPEC 3: E11 from the right edge's u1 reactions, eps22 from top minus bottom u2
        react, span, across, pos, neg, comp = 3 * e["right"], height, height, e["top"], e["bottom"], 1
    else:
        react, span, across, pos, neg, comp = 3 * e["top"] + 1, width, width, e["right"], e["left"], 0
    g[3 * pos + comp] += 1.0 / (len(pos) * across)
    g[3 * neg + comp] -= 1.0 / (len(neg) * across)
    e_coef = 1.0 / (span * material.depth) / material.strain / material.e_b
    slot, indptr, indices = _ff_structure(dofs, free, n_dof)
    return LoadCase(free, up, float(vals.max()), react, e_coef, g, slot, indptr, indices)


@lru_cache(maxsize=32)
def mesh(d1: int, d2: int, material: Material = SPEC_MATERIAL) -> Mesh:
    """The assembled d1 x d2 tiling (1 x 1: the unit cell), built once per size and material."""
    pairs, cell_beam, counts = _tiling_beams(d1, d2)
    shared = counts == 2
    partner = np.where(shared, OPPOSITE[cell_beam], cell_beam)
    ke_cell, _ = element_matrices(NODE_XY[BEAMS[:, 0]], NODE_XY[BEAMS[:, 1]], material)
    dofs = element_dofs(pairs)
    n_dof = 3 * (3 * d1 + 1) * (3 * d2 + 1)
    cases = tuple(_load_case(d1, d2, c, dofs, n_dof, material) for c in (1, 2))
    return Mesh(d1, d2, n_dof, dofs, cell_beam, partner, shared, ke_cell[cell_beam], cases)


def beam_densities(rho: np.ndarray, m: Mesh) -> np.ndarray:
    """(B, M) densities of the tiling's beams: the union on shared edges, else the cell's own."""
    own, other = rho[:, m.cell_beam], rho[:, m.partner]
    return np.where(m.shared, own + other - own * other, own)


def chain_to_cells(dp_drho_beam: np.ndarray, rho: np.ndarray, m: Mesh) -> np.ndarray:
    """(B, 4, 42) d/d rho of the cell from (B, 4, M) d/d(beam density), through the union rule."""
    # d union / d rho_e = 1 - rho_o and d union / d rho_o = 1 - rho_e
    de = np.where(m.shared, 1.0 - rho[:, m.partner], 1.0)
    do = np.where(m.shared, 1.0 - rho[:, m.cell_beam], 0.0)
    onehot = np.eye(N_BEAMS)
    return (dp_drho_beam * de[:, None, :]) @ onehot[m.cell_beam] + (dp_drho_beam * do[:, None, :]) @ onehot[m.partner]


# --- Solves: properties and d properties / d multipliers -------------------------------------------


def _case_dense(k: np.ndarray, m: Mesh, lc: LoadCase, grad: bool, material: Material):
    """Batched dense solve of one load case: (E, nu) (B, 2) and d(E, nu)/dw (B, 2, M) or None."""
    f = lc.free
    kff = k[:, f][:, :, f]
    rhs = -(k[:, f] @ lc.up)
    gf = np.broadcast_to(lc.g[f], rhs.shape)
    try:
        sol = np.linalg.solve(kff, np.stack([rhs, gf], axis=2) if grad else rhs[:, :, None])
    except np.linalg.LinAlgError:
        raise InputError("the stiffness matrix is singular; use floor > 0 or connect all nodes") from None
    u = np.broadcast_to(lc.up, (len(k), m.n_dof)).copy()
    u[:, f] = sol[:, :, 0]
    r = np.einsum("bij,bj->bi", k[:, lc.react], u)
    props = np.stack([r.sum(axis=1) * lc.e_coef, -(u @ lc.g) / material.strain], axis=1)
    if not grad:
        return props, None
    lam = np.zeros_like(u)
    lam[:, f] = sol[:, :, 1]
    return props, _sensitivities(u, lam, m, lc, material)


def _sensitivities(u: np.ndarray, lam: np.ndarray, m: Mesh, lc: LoadCase, material: Material) -> np.ndarray:
    """(B, 2, M) d(E, nu)/dw_e = (e_coef u_e^T K_e u_e / U, lambda_e^T K_e u_e / strain)."""
    ue = u[:, m.dofs]
    ke_u = np.einsum("mij,bmj->bmi", m.ke, ue)
    d_e = np.einsum("bmi,bmi->bm", ue, ke_u) * (lc.e_coef / lc.moved)
    d_nu = np.einsum("bmi,bmi->bm", lam[:, m.dofs], ke_u) / material.strain
    return np.stack([d_e, d_nu], axis=1)


def _case_sparse(w: np.ndarray, m: Mesh, lc: LoadCase, grad: bool, material: Material):
    """One design's sparse solve of one load case: (E, nu) (2,) and d(E, nu)/dw (2, M) or None."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    ke_w = w[:, None, None] * m.ke
    keep = lc.ff_slot >= 0
    nf = len(lc.free)
    data = np.bincount(lc.ff_slot[keep], ke_w.reshape(-1)[keep], minlength=len(lc.ff_indices))
    kff = sp.csc_matrix((data, lc.ff_indices, lc.ff_indptr), shape=(nf, nf))
    fp = np.einsum("mij,mj->mi", ke_w, lc.up[m.dofs])  # element forces of the prescribed part
    rhs = -np.bincount(m.dofs.ravel(), fp.ravel(), minlength=m.n_dof)[lc.free]
    try:
        # K_ff is symmetric positive definite: no pivoting, the fill-reducing order is built in
        lu = splu(kff, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    except RuntimeError as exc:  # exactly singular: nodes hang on zero stiffness
        raise InputError(f"the stiffness matrix is singular ({exc}); use floor > 0 or connect all nodes") from None
    sol = lu.solve(np.stack([rhs, lc.g[lc.free]], axis=1) if grad else rhs[:, None])
    u = lc.up.copy()
    u[lc.free] = sol[:, 0]
    fe = np.einsum("mij,mj->mi", ke_w, u[m.dofs])
    r = np.bincount(m.dofs.ravel(), fe.ravel(), minlength=m.n_dof)
    props = np.array([r[lc.react].sum() * lc.e_coef, -(u @ lc.g) / material.strain])
    if not grad:
        return props, None
    lam = np.zeros(m.n_dof)
    lam[lc.free] = sol[:, 1]
    return props, _sensitivities(u[None], lam[None], m, lc, material)[0]


_DENSE_CHUNK = 2048  # designs per dense batch: (chunk, 48, 48) matrices stay near 40 MB


def solve_weighted(w: np.ndarray, m: Mesh, *, grad: bool = True, dense: bool | None = None,
                   material: Material = SPEC_MATERIAL) -> tuple[np.ndarray, np.ndarray | None]:
    """Properties (B, 4) and d properties / d beam multipliers (B, 4, M) for multipliers w (B, M)."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    if w.shape[1] != len(m.ke):
        raise InputError(f"multipliers must have one column per beam of the {m.d1} x {m.d2} tiling "
                         f"({len(m.ke)}); got shape {w.shape}")
    dense = m.n_dof <= 48 if dense is None else dense
    order = [0, 2, 1, 3]  # per-case (E, nu) pairs -> [E11, E22, nu12, nu21]
    props = np.empty((len(w), 4))
    jac = np.empty((len(w), 4, w.shape[1])) if grad else None
    if dense:
        for s in range(0, len(w), _DENSE_CHUNK):
            k = _assemble_dense(w[s : s + _DENSE_CHUNK], m)
            outs = [_case_dense(k, m, lc, grad, material) for lc in m.cases]
            props[s : s + _DENSE_CHUNK] = np.concatenate([o[0] for o in outs], axis=1)[:, order]
            if grad:
                jac[s : s + _DENSE_CHUNK] = np.concatenate([o[1] for o in outs], axis=1)[:, order]
        return props, jac
    for b in range(len(w)):
        outs = [_case_sparse(w[b], m, lc, grad, material) for lc in m.cases]
        props[b] = np.concatenate([o[0] for o in outs])[order]
        if grad:
            jac[b] = np.concatenate([o[1] for o in outs])[order]
    return props, jac


def _assemble_dense(w: np.ndarray, m: Mesh) -> np.ndarray:
    """(B, n, n) dense stiffness matrices sum_e w_e K_e."""
    return (w @ _dense_basis(m)).reshape(len(w), m.n_dof, m.n_dof)


@lru_cache(maxsize=8)
def _dense_basis(m: Mesh) -> np.ndarray:
    """(M, n * n): each beam's element matrix scattered into a flat global matrix."""
    n = m.n_dof
    out = np.zeros((len(m.ke), n * n))
    flat = (m.dofs[:, :, None] * n + m.dofs[:, None, :]).reshape(len(m.ke), 36)
    np.put_along_axis(out, flat, m.ke.reshape(len(m.ke), 36), axis=1)  # a beam's DOFs are distinct
    return out


# --- Public API -------------------------------------------------------------------------------------


def _evaluate(rho: np.ndarray, d1: int, d2: int, penalty: float, floor: float, grad: bool,
              material: Material):
    m = mesh(d1, d2, material)
    dens = beam_densities(rho, m)
    props, dw = solve_weighted(simp(dens, penalty, floor), m, grad=grad, material=material)
    if not grad:
        return props, None
    return props, chain_to_cells(dw * simp_derivative(dens, penalty, floor)[:, None, :], rho, m)


def properties(rho, d1: int | None = None, d2: int | None = None, *, penalty: float = PENALTY,
               floor: float = FLOOR, material: Material = SPEC_MATERIAL) -> np.ndarray:
    """(B, 4) [E11/Eb, E22/Eb, nu12, nu21] of relaxed densities (B, 42), unit cell or d1 x d2 tiling."""
    r = check_densities(rho)
    d1, d2 = check_tiling_size(d1, d2)
    penalty, floor = check_simp(penalty, floor)
    return _evaluate(r, d1, d2, penalty, floor, False, material)[0]


def gradient(rho, d1: int | None = None, d2: int | None = None, *, penalty: float = PENALTY,
             floor: float = FLOOR, material: Material = SPEC_MATERIAL) -> tuple[np.ndarray, np.ndarray]:
    """(properties (B, 4), jacobian d properties / d rho (B, 4, 42)) by the adjoint method."""
    r = check_densities(rho)
    d1, d2 = check_tiling_size(d1, d2)
    penalty, floor = check_simp(penalty, floor)
    return _evaluate(r, d1, d2, penalty, floor, True, material)


def fd_gradient(rho, d1: int | None = None, d2: int | None = None, h: float = 1e-5, *,
                penalty: float = PENALTY, floor: float = FLOOR, material: Material = SPEC_MATERIAL
                ) -> tuple[np.ndarray, np.ndarray]:
    """(properties (B, 4), jacobian (B, 4, 42)) by central differences of step h (the seed's method).

    Where rho +- h would leave [0, 1] the difference is one-sided over the same total step 2 h.
    """
    r = check_densities(rho)
    d1, d2 = check_tiling_size(d1, d2)
    penalty, floor = check_simp(penalty, floor)
    h = check_number(h, "h")
    if not 0 < h <= 0.25:
        raise InputError(f"h must be in (0, 0.25]; got {h!r}")
    b = len(r)
    eye = np.eye(N_BEAMS)
    hi = np.minimum(r[:, None, :] + h * eye, 1.0)  # (B, 42 perturbed beams, 42)
    lo = np.maximum(hi - 2 * h * eye, 0.0)
    hi = lo + 2 * h * eye
    batch = np.concatenate([r, hi.reshape(-1, N_BEAMS), lo.reshape(-1, N_BEAMS)])
    p = _evaluate(batch, d1, d2, penalty, floor, False, material)[0]
    base, up, down = p[:b], p[b : b + b * N_BEAMS], p[b + b * N_BEAMS :]
    step = np.diagonal(hi - lo, axis1=1, axis2=2)  # (B, 42), 2 h up to rounding
    jac = (up - down).reshape(b, N_BEAMS, 4) / step[:, :, None]
    return base, np.transpose(jac, (0, 2, 1))
