"""2D Timoshenko frame FE: element matrices, load cases, properties and the batched unit-cell solver."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from deepdram.errors import InputError, first_rows
from deepdram.spaces.lattice.constants import CELL_SIZE, N_BEAMS, N_NODES, SPEC_MATERIAL, Material
from deepdram.spaces.lattice.geometry import BEAMS, NODE_XY, check_designs, is_valid

# --- Element (SPEC section 2; supplementary Eq. 2-5, CALFEM beam2te) ----------------------------


def local_stiffness(length: np.ndarray, material: Material = SPEC_MATERIAL) -> np.ndarray:
    """(E, 6, 6) Timoshenko beam stiffness in local axes for element lengths `length`."""
    L = np.atleast_1d(np.asarray(length, dtype=float))
    area, inertia, e_b = material.area, material.inertia, material.e_b
    mu = 12.0 * e_b * inertia / (L**2 * material.g_b * area * material.k_s)
    a = area * (1 + mu) / L
    b = 12 * inertia / L**3
    c = 6 * inertia / L**2
    d = 4 * inertia * (1 + mu / 4) / L
    e = 2 * inertia * (1 - mu / 2) / L
    z = np.zeros_like(L)
    k = np.array(
        [
            [a, z, z, -a, z, z],
            [z, b, c, z, -b, c],
            [z, c, d, z, -c, e],
            [-a, z, z, a, z, z],
            [z, -b, -c, z, b, -c],
            [z, c, e, z, -c, d],
        ]
    )
    return np.moveaxis(k, -1, 0) * (e_b / (1 + mu))[:, None, None]


def rotation(xy1: np.ndarray, xy2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element lengths (E,) and (E, 6, 6) global-to-local transformations Q (Eq. 4-5)."""
    dxy = np.atleast_2d(np.asarray(xy2, float) - np.asarray(xy1, float))
    length = np.hypot(dxy[:, 0], dxy[:, 1])
    c, s = dxy[:, 0] / length, dxy[:, 1] / length
    q = np.zeros((len(length), 6, 6))
    for o in (0, 3):
        q[:, o, o], q[:, o, o + 1] = c, s
        q[:, o + 1, o], q[:, o + 1, o + 1] = -s, c
        q[:, o + 2, o + 2] = 1.0
    return length, q


def element_matrices(xy1: np.ndarray, xy2: np.ndarray, material: Material = SPEC_MATERIAL
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Global stiffness K^e = Q^T K Q and local end-force operator K Q, both (E, 6, 6)."""
    length, q = rotation(xy1, xy2)
    kl = local_stiffness(length, material)
    kq = kl @ q
    return np.transpose(q, (0, 2, 1)) @ kq, kq


def von_mises(local_forces: np.ndarray, material: Material = SPEC_MATERIAL) -> np.ndarray:
    """Beam von Mises stress (MPa) from local end forces (..., 6) = N1 V1 M1 N2 V2 M2 (SPEC 3)."""
    f = np.abs(local_forces)
    area, inertia = material.area, material.inertia
    sigma = f[..., 0] / area + np.maximum(f[..., 2], f[..., 5]) * (material.thickness / 2) / inertia
    tau = 1.5 * f[..., 1] / area
    return np.sqrt(sigma**2 + 3 * tau**2)


# --- Assembly and load cases on a rectangular node grid -----------------------------------------


def element_dofs(beams: np.ndarray) -> np.ndarray:
    """(M, 6) global DOF indices [3a, 3a+1, 3a+2, 3b, 3b+1, 3b+2] of beams (M, 2)."""
    b = np.asarray(beams)
    return (3 * b[:, [0, 0, 0, 1, 1, 1]] + np.array([0, 1, 2, 0, 1, 2])).astype(np.int64)


def assemble(nodes: np.ndarray, beams: np.ndarray, *, sparse: bool = False, material: Material = SPEC_MATERIAL):
    """Global stiffness matrix of a frame (dense ndarray, or scipy CSR when `sparse`)."""
    ke, _ = element_matrices(nodes[beams[:, 0]], nodes[beams[:, 1]], material)
    dofs = element_dofs(beams)
    n = 3 * len(nodes)
    rows = np.repeat(dofs, 6, axis=1).ravel()
    cols = np.tile(dofs, (1, 6)).ravel()
    if sparse:
        import scipy.sparse as sp

        return sp.coo_matrix((ke.ravel(), (rows, cols)), shape=(n, n)).tocsr()
    k = np.zeros((n, n))
    np.add.at(k, (rows, cols), ke.ravel())
    return k


def grid_edges(nx: int, ny: int) -> dict[str, np.ndarray]:
    """Node ids of the left, right, bottom and top edges of an nx x ny grid (id = y * nx + x)."""
    ids = np.arange(nx * ny).reshape(ny, nx)
    return {"left": ids[:, 0], "right": ids[:, -1], "bottom": ids[0, :], "top": ids[-1, :]}


def load_case(nx: int, ny: int, case: int, strain: float = SPEC_MATERIAL.strain) -> tuple[np.ndarray, np.ndarray]:
    """Prescribed DOFs and values of load case 1 (strain along x) or 2 (along y) (SPEC 3)."""
    e = grid_edges(nx, ny)
    if case == 1:
        fixed, moved, axis, span = e["left"], e["right"], 0, (nx - 1)
    elif case == 2:
        fixed, moved, axis, span = e["bottom"], e["top"], 1, (ny - 1)
    else:
        raise ValueError(f"load case must be 1 or 2, got {case}")
    disp = strain * span * CELL_SIZE / 3
    dofs = np.concatenate([3 * fixed[:, None] + [0, 1, 2], 3 * moved[:, None] + [0, 1, 2]]).ravel()
    vals = np.zeros((len(fixed) + len(moved), 3))
    vals[len(fixed) :, axis] = disp
    return dofs, vals.ravel()


def solve_prescribed(k, dofs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacements and reactions of K u = r with u prescribed on `dofs` and no external load."""
    import scipy.sparse as sp

    n = k.shape[0]
    free = np.setdiff1d(np.arange(n), dofs)
    u = np.zeros(n)
    u[dofs] = values
    if sp.issparse(k):
        from scipy.sparse.linalg import spsolve

        k = k.tocsr()
        u[free] = spsolve(k[free][:, free].tocsc(), -(k[free][:, dofs] @ values))
    else:
        u[free] = np.linalg.solve(k[np.ix_(free, free)], -(k[np.ix_(free, dofs)] @ values))
    return u, k @ u


def grid_properties(u1: np.ndarray, r1: np.ndarray, u2: np.ndarray, r2: np.ndarray, nx: int, ny: int,
                    material: Material = SPEC_MATERIAL):
    """[E11/Eb, E22/Eb, nu12, nu21] from both load cases' displacements and reactions (SPEC 3)."""
    e = grid_edges(nx, ny)
    width = (nx - 1) * CELL_SIZE / 3
    height = (ny - 1) * CELL_SIZE / 3
    strain, depth, e_b = material.strain, material.depth, material.e_b
    e11 = r1[3 * e["right"]].sum() / (height * depth) / strain / e_b
    e22 = r2[3 * e["top"] + 1].sum() / (width * depth) / strain / e_b
    eps22 = np.mean(u1[3 * e["top"] + 1] - u1[3 * e["bottom"] + 1]) / height
    eps11 = np.mean(u2[3 * e["right"]] - u2[3 * e["left"]]) / width
    return np.array([e11, e22, -eps22 / strain, -eps11 / strain])


def beam_von_mises(nodes: np.ndarray, beams: np.ndarray, u: np.ndarray, material: Material = SPEC_MATERIAL
                   ) -> np.ndarray:
    """Per-beam von Mises stress normalised by Eb * strain, for a displacement vector u."""
    _, kq = element_matrices(nodes[beams[:, 0]], nodes[beams[:, 1]], material)
    f = np.einsum("eij,ej->ei", kq, u[element_dofs(beams)])
    return von_mises(f, material) / (material.e_b * material.strain)


def solve_frame(nodes: np.ndarray, beams: np.ndarray, nx: int, ny: int, *, sparse: bool = False,
                material: Material = SPEC_MATERIAL):
    """Straightforward solve of both load cases: (properties (4,), u (2, ndof), r (2, ndof))."""
    k = assemble(nodes, beams, sparse=sparse, material=material)
    sols = [solve_prescribed(k, *load_case(nx, ny, c, material.strain)) for c in (1, 2)]
    (u1, r1), (u2, r2) = sols
    return grid_properties(u1, r1, u2, r2, nx, ny, material), np.stack([u1, u2]), np.stack([r1, r2])


def solve_cell_reference(design: np.ndarray):
    """Baseline unit-cell solve: assemble the 48 x 48 matrix in NumPy and solve both load cases."""
    d = np.asarray(design).astype(bool)
    return solve_frame(NODE_XY, BEAMS[d], 4, 4)


# --- Batched unit-cell solver ----------------------------------------------------------------


@dataclass
class CellResult:
    """Outputs of the batched unit-cell solver for B designs."""

    properties: np.ndarray  # (B, 4): E11/Eb, E22/Eb, nu12, nu21
    peak_vm: np.ndarray | None = None  # (B, 2): peak von Mises / (Eb * strain) per load case
    beam_vm: np.ndarray | None = None  # (B, 42, 2): per-beam von Mises / (Eb * strain), 0 if absent
    displacements: np.ndarray | None = None  # (B, 2, 48): nodal displacements per load case


def _cell_tables(material: Material):
    """Constant tables the kernel needs: element matrices, DOF codes, strain functionals."""
    ke, kq = element_matrices(NODE_XY[BEAMS[:, 0]], NODE_XY[BEAMS[:, 1]], material)
    dofs = element_dofs(BEAMS)
    code = np.full((2, 3 * N_NODES), -1, dtype=np.int64)  # -1 fixed at 0, -2 moved, >= 0 free index
    moved_value = np.zeros(2)
    gvec = np.zeros((2, 24))
    e = grid_edges(4, 4)
    for c in (1, 2):
        pdofs, vals = load_case(4, 4, c, material.strain)
        free = np.setdiff1d(np.arange(3 * N_NODES), pdofs)
        code[c - 1, free] = np.arange(len(free))
        moved = pdofs[vals != 0]
        code[c - 1, moved] = -2
        moved_value[c - 1] = vals[vals != 0][0]
        # transverse strain = mean over the edge of the opposite-edge displacement difference
        if c == 1:
            pos, neg, comp = e["top"], e["bottom"], 1
        else:
            pos, neg, comp = e["right"], e["left"], 0
        for nodes_, sign in ((pos, 1.0), (neg, -1.0)):
            for n in nodes_:
                idx = code[c - 1, 3 * n + comp]
                if idx >= 0:
                    gvec[c - 1, idx] += sign / (len(pos) * CELL_SIZE)
    # E/Eb = R * coef ; R = summed reaction on the moved edge
    ecoef = np.full(2, 1.0 / (CELL_SIZE * material.depth) / material.strain / material.e_b)
    return ke, kq, dofs, code, moved_value, gvec, ecoef


def section_table(material: Material) -> np.ndarray:
    """[area, inertia, half thickness, Eb * strain]: what the kernel's stress recovery needs."""
    return np.array([material.area, material.inertia, material.thickness / 2, material.e_b * material.strain])


@lru_cache(maxsize=4)
def _tables(material: Material = SPEC_MATERIAL):
    """The kernel's constant tables, built once per process and material."""
    return _cell_tables(material)


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def _kernel():
    from deepdram.spaces.lattice._cell_kernel import cell_kernel

    return cell_kernel


def check_weights(weights, designs: np.ndarray, *, validate: bool = True, what: str = "weights") -> np.ndarray:
    """(B, 42) float64 beam multipliers, finite, >= 0 and (with `validate`) connecting all nodes."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers, one per beam (b00..b41)") from None
    if w.ndim == 1:
        w = w[None, :]
    if w.shape != designs.shape:
        raise InputError(f"{what} must have shape {designs.shape} like the designs; got {np.shape(weights)}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{what} must be finite and >= 0: row {r} beam {c} is {w[r, c].item()!r} "
                         f"(rows with bad entries: {first_rows(bad.any(axis=1))})")
    if validate:
        ok = is_valid((designs != 0) & (w > 0))
        if not ok.all():
            raise InputError(f"{what} leave rows {first_rows(~ok)} disconnected: the beams with a positive "
                             "weight must connect all 16 nodes")
    return np.ascontiguousarray(w)


def solve_cells(
    designs,
    *,
    weights=None,
    stress: bool = False,
    per_beam: bool = False,
    displacements: bool = False,
    validate: bool = True,
    chunk: int = 1 << 16,
    progress=None,
    material: Material = SPEC_MATERIAL,
) -> CellResult:
    """Properties (and optionally stresses, displacements) of B unit cells, both load cases.

    `weights` (B, 42), default 1: beam k of a design enters with stiffness designs[k] * weights[k]
    (continuous relaxed designs: all-ones designs and SIMP multipliers as weights); a weighted
    beam's end forces, and so its stresses, scale with its weight.
    """
    d = check_designs(designs, require_valid=validate)
    if weights is None:
        w = d.astype(np.float64)  # the 0/1 path: multipliers exactly 0.0 / 1.0
    else:
        w = d * check_weights(weights, d, validate=validate)
    ke, kq, dofs, code, moved_value, gvec, ecoef = _tables(material)
    sec = section_table(material)
    kernel = _kernel()
    b = len(d)
    props = np.empty((b, 4))
    peak = np.empty((b, 2)) if stress or per_beam else None
    bvm = np.zeros((b, N_BEAMS, 2)) if per_beam else None
    disp = np.zeros((b, 2, 3 * N_NODES)) if displacements else None
    dummy3 = np.zeros((0, 1, 1))
    for s in range(0, b, chunk):
        e = min(b, s + chunk)
        kernel(
            w[s:e],
            ke,
            kq,
            dofs,
            code,
            moved_value,
            gvec,
            ecoef,
            props[s:e],
            peak[s:e] if peak is not None else np.zeros((0, 2)),
            bvm[s:e] if bvm is not None else dummy3,
            disp[s:e] if disp is not None else dummy3,
            material.strain,
            sec,
            4 * _threads(),
        )
        if progress is not None:
            progress(e - s)
    return CellResult(props, peak, bvm, disp)


def cell_properties(designs, **kwargs) -> np.ndarray:
    """(B, 4) [E11/Eb, E22/Eb, nu12, nu21] of unit-cell designs (B, 42)."""
    return solve_cells(designs, **kwargs).properties
