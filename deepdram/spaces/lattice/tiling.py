"""Tiling solver: exact substructuring that exploits the d1 x d2 repetition of one cell design.

Every cell of a tiling has the same design, so after condensing a cell to its 12 perimeter nodes
the condensed matrix is the same for all cells; two copies of a block merge into a bigger block
by condensing out their shared interface, and a d1 x d2 tiling is built in O(log d1 + log d2)
merges, batched over many designs of the same size. Beams on an edge shared by two cells are one
beam (SPEC section 4): each cell carries half of the union of its two opposite edge beams, and the
tiling's outer edges are corrected to the cell's own beams at the end. With continuous stiffness
multipliers (relaxed densities) a cell's beams enter with their own multiplier, except that a beam
on an edge shared by two cells enters once with the shared multiplier given for that edge. Both load cases are solved
on the condensed outer-boundary system; displacements inside are recovered only when stresses
are asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from deepdram.errors import InputError, first_rows
from deepdram.spaces.lattice._blockops import gather, scatter_add
from deepdram.spaces.lattice.constants import CELL_SIZE, N_BEAMS, SPEC_MATERIAL, Material
from deepdram.spaces.lattice.fem import check_weights, element_dofs, element_matrices, von_mises
from deepdram.spaces.lattice.geometry import BEAMS, NODE_IJ, NODE_XY, check_designs, check_size

_DOF3 = np.arange(3)

# Perimeter beams of a cell and the beam on the opposite edge that lands on the same line when
# cells are stacked: bottom row (0..2) <-> top row (9..11), left column (12, 16, 20) <-> right (15, 19, 23).
OPPOSITE = np.arange(N_BEAMS)
for _i in range(3):
    OPPOSITE[_i], OPPOSITE[9 + _i] = 9 + _i, _i
    OPPOSITE[12 + 4 * _i], OPPOSITE[15 + 4 * _i] = 15 + 4 * _i, 12 + 4 * _i
ON_PERIMETER = OPPOSITE != np.arange(N_BEAMS)
# Which outer edge of the tiling a perimeter beam of a cell can lie on.
EDGE_OF_BEAM = {**{i: "bottom" for i in range(3)}, **{9 + i: "top" for i in range(3)},
                **{12 + 4 * i: "left" for i in range(3)}, **{15 + 4 * i: "right" for i in range(3)}}


@lru_cache(maxsize=4)
def _cell_element_matrices(material: Material = SPEC_MATERIAL) -> tuple[np.ndarray, np.ndarray]:
    return element_matrices(NODE_XY[BEAMS[:, 0]], NODE_XY[BEAMS[:, 1]], material)


def _dofs(idx: np.ndarray) -> np.ndarray:
    return (3 * np.asarray(idx)[:, None] + _DOF3).ravel()


def _on_perimeter(xy: np.ndarray, w: int, h: int) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    return (x == 0) | (x == 3 * w) | (y == 0) | (y == 3 * h)


# --- Block geometry (design-independent, cached per size) ---------------------------------------


@dataclass(eq=False)
class Shape:
    """Geometry of a w x h block condensed to its perimeter nodes, and how it was built."""

    w: int
    h: int
    union_nodes: np.ndarray  # (nu, 2) grid coordinates of all nodes before condensation
    nodes: np.ndarray  # (n, 2) grid coordinates of the kept perimeter nodes
    elim_nodes: np.ndarray  # (ne, 2) grid coordinates of the nodes condensed out
    kept: np.ndarray  # DOF indices (into the union) of the kept nodes
    elim: np.ndarray  # DOF indices (into the union) of the condensed nodes
    a: Shape | None = None
    b: Shape | None = None
    offset: tuple[int, int] = (0, 0)
    ia: np.ndarray | None = None  # DOF indices of a's nodes in the union
    ib: np.ndarray | None = None
    n_union: int = 0
    children: list = field(default_factory=list)


@lru_cache(maxsize=None)
def _leaf() -> Shape:
    perim = np.flatnonzero(_on_perimeter(NODE_IJ, 1, 1))
    inner = np.flatnonzero(~_on_perimeter(NODE_IJ, 1, 1))
    return Shape(1, 1, NODE_IJ, NODE_IJ[perim], NODE_IJ[inner], _dofs(perim), _dofs(inner), n_union=48)


def _merge_shape(a: Shape, b: Shape, axis: int) -> Shape:
    offset = (3 * a.w, 0) if axis == 0 else (0, 3 * a.h)
    w, h = (a.w + b.w, a.h) if axis == 0 else (a.w, a.h + b.h)
    bn = b.nodes + np.array(offset)
    union, inv = np.unique(np.concatenate([a.nodes, bn]), axis=0, return_inverse=True)
    inv = inv.ravel()
    ia, ib = _dofs(inv[: len(a.nodes)]), _dofs(inv[len(a.nodes) :])
    keep = _on_perimeter(union, w, h)
    return Shape(w, h, union, union[keep], union[~keep], _dofs(np.flatnonzero(keep)),
                 _dofs(np.flatnonzero(~keep)), a, b, offset, ia, ib, 3 * len(union))


@lru_cache(maxsize=None)
def block_shape(w: int, h: int) -> Shape:
    """Geometry of a w x h block: split the longer side, in halves if even, else peel one row.

    Keeping blocks near square keeps the interfaces, and so the dense condensation work, small.
    """
    if w == 1 and h == 1:
        return _leaf()
    axis, n = (0, w) if w >= h else (1, h)
    part = (lambda k: block_shape(k, h)) if axis == 0 else (lambda k: block_shape(w, k))
    if n % 2 == 0:
        return _merge_shape(part(n // 2), part(n // 2), axis)
    return _merge_shape(part(n - 1), part(1), axis)


def _topological(root: Shape) -> list[Shape]:
    """Shapes reachable from root, parents before children."""
    order: list[Shape] = []
    seen: set[int] = set()

    def visit(s: Shape) -> None:
        if id(s) in seen:
            return
        seen.add(id(s))
        for c in (s.a, s.b):
            if c is not None:
                visit(c)
        order.append(s)

    visit(root)
    return order[::-1]


# --- Numerics ---------------------------------------------------------------------------------


def multipliers(designs: np.ndarray, weights: np.ndarray | None = None, shared_weights: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(own, shared) (B, 42) stiffness multipliers of a cell's beams and of the beam on a shared edge.

    own = designs * weights (default 1); a perimeter beam on an edge shared with the neighbouring
    cell is one beam of multiplier max(designs_e, designs_o) * shared_weights (o = OPPOSITE[e];
    default shared_weights: max(own_e, own_o), the SPEC's union at 0/1).
    """
    d = designs.astype(float)
    if weights is None and shared_weights is None:
        return d, np.maximum(d, d[:, OPPOSITE])  # the 0/1 path, bitwise as before
    own = d if weights is None else d * weights
    present = np.maximum(d, d[:, OPPOSITE])
    shared = np.maximum(own, own[:, OPPOSITE]) if shared_weights is None else shared_weights
    return own, present * shared


def cell_weights(own: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """Beam weights of the repeated cell: perimeter beams carry half the shared edge's beam."""
    return np.where(ON_PERIMETER, 0.5 * shared, own)


def _condense(s: np.ndarray, kept: np.ndarray, elim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Schur complement onto `kept` and the recovery operator X (u_elim = X u_kept)."""
    see = gather(s, elim, elim)
    sek = gather(s, elim, kept)
    x = -np.linalg.solve(see, sek)
    sk = gather(s, kept, kept) + np.transpose(sek, (0, 2, 1)) @ x
    return 0.5 * (sk + np.transpose(sk, (0, 2, 1))), x


def _build(root: Shape, weights: np.ndarray, material: Material) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Root's uncondensed (union) stiffness for a batch, and every other shape's recovery operator."""
    ke, _ = _cell_element_matrices(material)
    dofs = element_dofs(BEAMS)
    bt = weights.shape[0]
    kcell = np.zeros((bt, 48 * 48))
    flat = (dofs[:, :, None] * 48 + dofs[:, None, :]).reshape(N_BEAMS, 36)
    for e in range(N_BEAMS):
        kcell[:, flat[e]] += weights[:, e, None] * ke[e].ravel()
    cond: dict[int, np.ndarray] = {}
    recover: dict[int, np.ndarray] = {}
    for shape in reversed(_topological(root)):
        if shape.a is None:
            s = kcell.reshape(bt, 48, 48)
        else:
            s = np.zeros((bt, shape.n_union, shape.n_union))
            scatter_add(s, cond[id(shape.a)], shape.ia)
            scatter_add(s, cond[id(shape.b)], shape.ib)
        if shape is root:
            # The root is not condensed: both load cases are solved on its union system.
            return s, recover
        cond[id(shape)], recover[id(shape)] = _condense(s, shape.kept, shape.elim)
    raise AssertionError("root not reached")


def _node_lookup(nodes: np.ndarray) -> dict[tuple[int, int], int]:
    return {tuple(p): k for k, p in enumerate(nodes.tolist())}


@lru_cache(maxsize=None)
def _outer_corrections(d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Beam slots on the tiling's outer edges: their cell beam index and root DOFs (m, 6)."""
    lookup = _node_lookup(block_shape(d1, d2).union_nodes)
    own, dof_rows = [], []
    for a in range(d1):
        for b in range(d2):
            for e, edge in EDGE_OF_BEAM.items():
                outer = {"bottom": b == 0, "top": b == d2 - 1, "left": a == 0, "right": a == d1 - 1}[edge]
                if not outer:
                    continue
                n1, n2 = (NODE_IJ[BEAMS[e]] + np.array([3 * a, 3 * b])).tolist()
                own.append(e)
                dof_rows.append(_dofs(np.array([lookup[tuple(n1)], lookup[tuple(n2)]])))
    return np.array(own), np.array(dof_rows)


def _apply_corrections(s: np.ndarray, own_w: np.ndarray, shared_w: np.ndarray, d1: int, d2: int,
                       material: Material) -> None:
    """Make outer-edge beams count as the cell's own beams, not half the shared edge's beam."""
    own, rows = _outer_corrections(d1, d2)
    ke, _ = _cell_element_matrices(material)
    wt = own_w[:, own] - 0.5 * shared_w[:, own]  # (bt, m)
    n = s.shape[1]
    flat = (rows[:, :, None] * n + rows[:, None, :]).reshape(len(own), 36)
    vals = wt[:, :, None] * ke[own].reshape(len(own), 36)[None]
    sf = s.reshape(len(s), -1)
    for k in range(len(own)):  # slots share nodes, so add them one by one
        sf[:, flat[k]] += vals[:, k]


@lru_cache(maxsize=None)
def _load_partition(d1: int, d2: int, case: int, strain: float):
    """Free and prescribed DOFs, prescribed values, reaction DOFs and strain functional (root)."""
    nodes = block_shape(d1, d2).union_nodes
    x, y = nodes[:, 0], nodes[:, 1]
    nx, ny = 3 * d1, 3 * d2
    if case == 1:
        fixed, moved, comp, disp = x == 0, x == nx, 0, strain * CELL_SIZE * d1
        pos, neg, tcomp, span = y == ny, y == 0, 1, CELL_SIZE * d2
    else:
        fixed, moved, comp, disp = y == 0, y == ny, 1, strain * CELL_SIZE * d2
        pos, neg, tcomp, span = x == nx, x == 0, 0, CELL_SIZE * d1
    presc_nodes = np.flatnonzero(fixed | moved)
    presc = _dofs(presc_nodes)
    vals = np.zeros((len(presc_nodes), 3))
    vals[moved[presc_nodes], comp] = disp
    free = np.setdiff1d(np.arange(3 * len(nodes)), presc)
    react_pos = np.searchsorted(presc, 3 * np.flatnonzero(moved) + comp)
    # transverse strain: opposite-edge displacement difference averaged over the edge (SPEC 3)
    g = np.zeros(3 * len(nodes))
    g[3 * np.flatnonzero(pos) + tcomp] += 1.0 / (pos.sum() * span)
    g[3 * np.flatnonzero(neg) + tcomp] -= 1.0 / (neg.sum() * span)
    return free, presc, vals.ravel(), react_pos, g, span


def _spd_solve(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve batched symmetric positive definite systems a x = rhs with one Cholesky each."""
    from scipy.linalg import cho_solve

    low = np.linalg.cholesky(a)
    return np.stack([cho_solve((low[k], True), rhs[k], check_finite=False) for k in range(len(a))])


def _solve_cases(s: np.ndarray, d1: int, d2: int, material: Material) -> tuple[np.ndarray, np.ndarray]:
    """Properties (bt, 4) and root displacements (2, bt, n) for both load cases."""
    bt, n = s.shape[0], s.shape[1]
    props = np.empty((bt, 4))
    ub = np.empty((2, bt, n))
    for c in (1, 2):
        free, presc, vals, react_pos, g, span = _load_partition(d1, d2, c, material.strain)
        sff = gather(s, free, free)
        sfp = gather(s, free, presc)
        uf = _spd_solve(sff, -(sfp @ vals))
        r = np.einsum("bfp,bf->bp", sfp, uf) + gather(s, presc, presc) @ vals
        u = np.zeros((bt, n))
        u[:, free], u[:, presc] = uf, vals
        # the moved edge's length is the transverse span of the same load case
        props[:, c - 1] = r[:, react_pos].sum(axis=1) / (span * material.depth) / material.strain / material.e_b
        props[:, c + 1] = -(u @ g) / material.strain
        ub[c - 1] = u
    return props, ub


def _recover(root: Shape, recover: dict[int, np.ndarray], ub: np.ndarray, d1: int, d2: int) -> np.ndarray:
    """Displacements (bt, Ny * Nx, 3) of every grid node from the root's solution."""
    bt = ub.shape[0]
    nx = 3 * d1 + 1
    u = np.zeros((bt, (3 * d2 + 1) * nx, 3))

    def ids(xy: np.ndarray, o: np.ndarray) -> np.ndarray:
        return (o[:, None, 1] + xy[None, :, 1]) * nx + (o[:, None, 0] + xy[None, :, 0])

    u[:, ids(root.union_nodes, np.zeros((1, 2), int))[0]] = ub.reshape(bt, -1, 3)
    origins: dict[int, list] = {}
    for shape in _topological(root):
        if shape is root:
            o = np.zeros((1, 2), int)
        else:
            o = np.array(origins.pop(id(shape)))
            uk = u[:, ids(shape.nodes, o)].reshape(bt, len(o), -1)  # (bt, instances, 3 nk)
            ue = np.einsum("bek,bik->bie", recover[id(shape)], uk)
            u[:, ids(shape.elim_nodes, o)] = ue.reshape(bt, len(o), -1, 3)
        if shape.a is not None:
            origins.setdefault(id(shape.a), []).extend(map(tuple, o))
            origins.setdefault(id(shape.b), []).extend(map(tuple, o + np.array(shape.offset)))
    return u


def _peak_stress(own_w: np.ndarray, shared_w: np.ndarray, u: np.ndarray, d1: int, d2: int, material: Material
                 ) -> np.ndarray:
    """Peak normalised von Mises over the tiling's beams, (bt,), from all nodal displacements.

    A weighted beam carries its multiplier times the full beam's end forces.
    """
    _, kq = _cell_element_matrices(material)
    nx = 3 * d1 + 1
    a, b = np.meshgrid(np.arange(d1), np.arange(d2), indexing="ij")
    a, b = a.ravel(), b.ravel()
    ends = NODE_IJ[BEAMS]  # (42, 2, 2)
    gid = (3 * b[:, None, None] + ends[None, :, :, 1]) * nx + (3 * a[:, None, None] + ends[None, :, :, 0])
    ue = u[:, gid].reshape(len(u), len(a), N_BEAMS, 6)
    vm = von_mises(np.einsum("eij,bcej->bcei", kq, ue), material) / (material.e_b * material.strain)
    shared = np.zeros((len(a), N_BEAMS), bool)
    for e, edge in EDGE_OF_BEAM.items():
        shared[:, e] = {"bottom": b > 0, "top": b < d2 - 1, "left": a > 0, "right": a < d1 - 1}[edge]
    mult = np.where(shared[None], shared_w[:, None, :], own_w[:, None, :])  # (bt, cells, 42)
    return np.where(mult > 0, vm * mult, 0.0).max(axis=(1, 2))


@dataclass
class TilingResult:
    """Outputs of the tiling solver for N (design, d1, d2) rows."""

    properties: np.ndarray  # (N, 4): E11/Eb, E22/Eb, nu12, nu21
    peak_vm: np.ndarray | None = None  # (N, 2): peak von Mises / (Eb * strain) per load case


_THREADED_MIN_CELLS = 16  # below 4 x 4 cells, thread start-up costs more than it saves


def _batch_size(d1: int, d2: int, budget_bytes: float = 2.5e8) -> int:
    root = block_shape(d1, d2)
    biggest = max(s.n_union for s in _topological(root))
    return max(1, min(256, int(budget_bytes / (8 * 3 * biggest**2))))


def solve_same_size(designs: np.ndarray, d1: int, d2: int, *, stress: bool = False,
                    material: Material = SPEC_MATERIAL, weights: np.ndarray | None = None,
                    shared_weights: np.ndarray | None = None):
    """Properties (B, 4) and, with `stress`, peak von Mises (B, 2) of designs tiled d1 x d2."""
    root = block_shape(d1, d2)
    own_w, shared_w = multipliers(designs, weights, shared_weights)
    s, recover = _build(root, cell_weights(own_w, shared_w), material)
    _apply_corrections(s, own_w, shared_w, d1, d2, material)
    props, ub = _solve_cases(s, d1, d2, material)
    if not stress:
        return props, None
    peak = np.stack([_peak_stress(own_w, shared_w, _recover(root, recover, ub[c], d1, d2), d1, d2, material)
                     for c in (0, 1)], axis=1)
    return props, peak


def _rows(a: np.ndarray | None, p: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[p]


def _solve_threaded(designs: np.ndarray, d1: int, d2: int, stress: bool, threads: int, material: Material,
                    weights: np.ndarray | None = None, shared_weights: np.ndarray | None = None):
    """solve_same_size over `threads` slices of the batch, each thread with single-threaded BLAS.

    The dense blocks are a few hundred wide, too small for BLAS to use two cores well; splitting
    the designs between threads roughly halves the wall time on two cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    parts = [p for p in np.array_split(np.arange(len(designs)), threads) if len(p)]
    with threadpool_limits(1), ThreadPoolExecutor(len(parts)) as pool:
        outs = list(pool.map(lambda p: solve_same_size(designs[p], d1, d2, stress=stress, material=material,
                                                       weights=_rows(weights, p),
                                                       shared_weights=_rows(shared_weights, p)), parts))
    props = np.concatenate([o[0] for o in outs])
    return props, (np.concatenate([o[1] for o in outs]) if stress else None)


def check_shared_weights(shared_weights, designs: np.ndarray) -> np.ndarray:
    """(B, 42) float64 shared-edge multipliers: finite, >= 0, equal on opposite perimeter beams."""
    w = check_weights(shared_weights, designs, validate=False, what="shared_weights")
    odd = ON_PERIMETER & (w != w[:, OPPOSITE])
    if odd.any():
        r, c = np.argwhere(odd)[0]
        raise InputError(f"shared_weights must be equal on opposite edge beams (one shared beam): row {r} has "
                         f"{w[r, c].item()!r} at beam {c} but {w[r, OPPOSITE[c]].item()!r} at beam {OPPOSITE[c]} "
                         f"(rows: {first_rows(odd.any(axis=1))})")
    return w


def solve_tilings(designs, d1, d2, *, weights=None, shared_weights=None, stress: bool = False,
                  strict: bool = True, validate: bool = True, threads: int | None = None, progress=None,
                  material: Material = SPEC_MATERIAL) -> TilingResult:
    """Solve N (design, d1, d2) rows; rows are grouped by size and batched over designs.

    `weights` (N, 42), default 1: a cell's beam k has stiffness multiplier designs[k] * weights[k].
    A beam on an edge shared by two cells (perimeter beam k and its OPPOSITE o in the neighbour) is
    one beam of multiplier max(designs[k], designs[o]) * shared_weights[k]; `shared_weights` (N, 42)
    must be equal at k and o and defaults to max of the two own multipliers (the SPEC's union at
    0/1); its entries off the perimeter are unused. Beams on the tiling's outer edges keep their
    own multiplier. `threads` (default: all cores) splits large batches between threads; 1 keeps
    one thread.
    """
    d = check_designs(designs, require_valid=validate)
    n = len(d)
    wts = None if weights is None else check_weights(weights, d, validate=validate)
    swts = None if shared_weights is None else check_shared_weights(shared_weights, d)
    d1, d2 = (np.broadcast_to(np.asarray(v), (n,)) for v in (d1, d2))
    check_size(d1, d2, strict=strict)
    d1, d2 = d1.astype(np.int64), d2.astype(np.int64)
    threads = (os.cpu_count() or 1) if threads is None else max(1, int(threads))
    props = np.empty((n, 4))
    peak = np.empty((n, 2)) if stress else None
    sizes = np.unique(np.stack([d1, d2], axis=1), axis=0) if n else np.zeros((0, 2), int)
    for w, h in sizes.tolist():
        rows = np.flatnonzero((d1 == w) & (d2 == h))
        step = _batch_size(w, h)
        for s in range(0, len(rows), step):
            r = rows[s : s + step]
            if threads > 1 and len(r) > 1 and w * h >= _THREADED_MIN_CELLS:
                p, pk = _solve_threaded(d[r], w, h, stress, threads, material, _rows(wts, r), _rows(swts, r))
            else:
                p, pk = solve_same_size(d[r], w, h, stress=stress, material=material, weights=_rows(wts, r),
                                        shared_weights=_rows(swts, r))
            props[r] = p
            if stress:
                peak[r] = pk
            if progress is not None:
                progress(len(r))
    return TilingResult(props, peak)


def tiling_properties(design, d1: int, d2: int, **kwargs) -> np.ndarray:
    """(4,) properties of one design tiled d1 x d2."""
    return solve_tilings(np.asarray(design)[None], d1, d2, **kwargs).properties[0]
