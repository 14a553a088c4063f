"""Q4 plane-stress element, cracked-specimen meshes, phase moduli and boundary conditions (SPEC 8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_CELLS = 8  # specimen side in cells
HALF_CELLS = N_CELLS // 2  # design columns (the left half)
N_VARS = N_CELLS * HALF_CELLS  # 32 design cells x00..x31
CRACK_CELLS = 2  # edge-crack length in cells (25 % of the height)

# --- Element -------------------------------------------------------------------------------------


def q4_stiffness(
    E: float = 1.0, nu: float = 0.3, a: float = 1.0, b: float = 1.0, t: float = 1.0
) -> np.ndarray:
    """(8, 8) stiffness of a rectangular a x b plane-stress Q4 from the seed's closed-form C1..C8."""
    f = E * t / (1.0 - nu**2)
    c1 = (b / (3 * a) + (1 - nu) * a / (6 * b)) * f
    c2 = (nu / 4 + (1 - nu) / 8) * f
    c3 = (a / (3 * b) + (1 - nu) * b / (6 * a)) * f
    c4 = (-b / (3 * a) + (1 - nu) * a / (12 * b)) * f
    c5 = (nu / 4 - (1 - nu) / 8) * f
    c6 = (a / (6 * b) - (1 - nu) * b / (6 * a)) * f
    c7 = (b / (6 * a) - (1 - nu) * a / (6 * b)) * f
    c8 = (-a / (3 * b) + (1 - nu) * b / (12 * a)) * f
    # Diagonally opposite nodes: the remaining terms follow from rigid-body equilibrium.
    d1, d3 = -c1 / 2, -c3 / 2
    # dof order u1 v1 u2 v2 u3 v3 u4 v4, nodes counter-clockwise from (0, 0)
    return np.array(
        [
            [c1, c2, c4, c5, d1, -c2, c7, -c5],
            [c2, c3, -c5, c6, -c2, d3, c5, c8],
            [c4, -c5, c1, -c2, c7, c5, d1, c2],
            [c5, c6, -c2, c3, -c5, c8, c2, d3],
            [d1, -c2, c7, -c5, c1, c2, c4, c5],
            [-c2, d3, c5, c8, c2, c3, -c5, c6],
            [c7, c5, d1, c2, c4, -c5, c1, -c2],
            [-c5, c8, c2, d3, c5, c6, -c2, c3],
        ]
    )


def q4_stiffness_gauss(
    E: float = 1.0, nu: float = 0.3, a: float = 1.0, b: float = 1.0, t: float = 1.0
) -> np.ndarray:
    """(8, 8) stiffness of a rectangular a x b plane-stress Q4 by 2 x 2 Gauss integration of B^T D B."""
    D = E / (1 - nu**2) * np.array([[1.0, nu, 0.0], [nu, 1.0, 0.0], [0.0, 0.0, (1 - nu) / 2]])
    xi_n = np.array([-1.0, 1.0, 1.0, -1.0])
    eta_n = np.array([-1.0, -1.0, 1.0, 1.0])
    g = 1.0 / np.sqrt(3.0)
    k = np.zeros((8, 8))
    for xi in (-g, g):
        for eta in (-g, g):
            dndx = 0.25 * xi_n * (1 + eta * eta_n) * (2.0 / a)
            dndy = 0.25 * eta_n * (1 + xi * xi_n) * (2.0 / b)
            B = np.zeros((3, 8))
            B[0, 0::2], B[1, 1::2] = dndx, dndy
            B[2, 0::2], B[2, 1::2] = dndy, dndx
            k += B.T @ D @ B * (a * b / 4.0) * t
    return k


# --- Meshes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mesh:
    """A structured Q4 mesh: node coordinates, element nodes (counter-clockwise) and element size."""

    xy: np.ndarray  # (N, 2)
    elements: np.ndarray  # (nel, 4) node ids, elements row-major from the bottom-left
    nx: int  # elements per row
    ny: int  # element rows
    a: float  # element length in x
    b: float  # element length in y

    @property
    def n_dofs(self) -> int:
        """Number of degrees of freedom (2 per node)."""
        return 2 * len(self.xy)

    @property
    def element_dofs(self) -> np.ndarray:
        """(nel, 8) global dofs of each element in Q4 order u1 v1 .. u4 v4."""
        return np.stack([2 * self.elements, 2 * self.elements + 1], axis=-1).reshape(-1, 8)

    def nodes_at(self, x: float | None = None, y: float | None = None) -> np.ndarray:
        """Ids of the nodes lying on the line x = `x` and/or y = `y` (ascending)."""
        sel = np.ones(len(self.xy), bool)
        tol = 1e-9 * max(self.a, self.b)
        if x is not None:
            sel &= np.abs(self.xy[:, 0] - x) < tol
        if y is not None:
            sel &= np.abs(self.xy[:, 1] - y) < tol
        return np.flatnonzero(sel)


def grid_mesh(nx: int, ny: int, a: float = 1.0, b: float = 1.0, split_column: int | None = None,
              split_rows: int = 0) -> Mesh:
    """nx x ny grid of a x b Q4 elements; the nodes of vertical grid line `split_column` below row
    `split_rows` are doubled (a crack): the originals stay with the left elements, copies go right."""
    gx, gy = np.meshgrid(np.arange(nx + 1) * a, np.arange(ny + 1) * b)
    xy = np.column_stack([gx.ravel(), gy.ravel()])
    node = np.arange((nx + 1) * (ny + 1)).reshape(ny + 1, nx + 1)
    r, c = np.divmod(np.arange(nx * ny), nx)
    elements = np.column_stack([node[r, c], node[r, c + 1], node[r + 1, c + 1], node[r + 1, c]])
    if split_column is not None and split_rows > 0:
        copies = len(xy) + np.arange(split_rows)
        xy = np.vstack([xy, xy[node[:split_rows, split_column]]])
        # right-hand elements of the split line: their left nodes (1 and 4) below the tip move to the copy
        right = np.flatnonzero(c == split_column)
        for k in (0, 3):
            row = r[right] + (1 if k == 3 else 0)
            low = row < split_rows
            elements[right[low], k] = copies[row[low]]
    return Mesh(xy=xy, elements=elements, nx=nx, ny=ny, a=a, b=b)


def specimen_mesh(m: int = 1, crack_cells: int = CRACK_CELLS) -> Mesh:
    """The full 8 x 8-cell specimen, m x m elements per cell, with the centre-line edge crack."""
    h = 1.0 / m
    n = N_CELLS * m
    return grid_mesh(n, n, h, h, split_column=HALF_CELLS * m, split_rows=crack_cells * m)


def half_mesh(m: int = 1) -> Mesh:
    """The left half of the specimen (4 x 8 cells, m x m elements per cell); the crack face is free."""
    h = 1.0 / m
    return grid_mesh(HALF_CELLS * m, N_CELLS * m, h, h)


# --- Designs and moduli --------------------------------------------------------------------------


def mirror_design(designs: np.ndarray) -> np.ndarray:
    """(..., 8, 8) full-specimen 0/1 cell field from (..., 32) left-half designs (row j, column i)."""
    d = np.asarray(designs)
    left = d.reshape(d.shape[:-1] + (N_CELLS, HALF_CELLS))
    return np.concatenate([left, left[..., ::-1]], axis=-1)


def phase_moduli(cells: np.ndarray, ratio: float = 10.0) -> np.ndarray:
    """Young's moduli of 0/1 cells: stiff (1) E = 1, soft (0) E = 1 / ratio."""
    c = np.asarray(cells)
    return np.where(c != 0, 1.0, 1.0 / ratio)


def element_moduli(cell_field: np.ndarray, m: int = 1) -> np.ndarray:
    """(rows * m * cols * m,) element moduli, row-major from the bottom, from a (rows, cols) cell field."""
    f = np.asarray(cell_field, dtype=float)
    return np.repeat(np.repeat(f, m, axis=0), m, axis=1).ravel()


# --- Boundary conditions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Supports:
    """Prescribed dofs with their values at unit opening, and the dofs whose reactions make K."""

    dofs: np.ndarray
    values: np.ndarray
    reaction_dofs: np.ndarray
    reaction_sign: float  # K = sign * sum of reactions on reaction_dofs


def specimen_supports(mesh: Mesh, width: float | None = None) -> Supports:
    """Mode I load of the full specimen at unit delta: left edge u_x = 0, right edge u_x = 1,
    top-left corner u_y = 0; K from the right-edge x reactions."""
    w = mesh.nx * mesh.a if width is None else width
    top = mesh.ny * mesh.b
    left = mesh.nodes_at(x=0.0)
    right = mesh.nodes_at(x=w)
    corner = mesh.nodes_at(x=0.0, y=top)
    dofs = np.concatenate([2 * left, 2 * right, 2 * corner + 1])
    values = np.concatenate([np.zeros(len(left)), np.ones(len(right)), np.zeros(len(corner))])
    return Supports(dofs=dofs, values=values, reaction_dofs=2 * right, reaction_sign=1.0)


def half_supports(mesh: Mesh, crack: float = float(CRACK_CELLS)) -> Supports:
    """Mirror-symmetric half of the full load at unit delta: left edge u_x = 0, centre line at and
    above the crack tip u_x = 1/2, top-left corner u_y = 0; K = minus the left-edge x reactions."""
    w = mesh.nx * mesh.a
    top = mesh.ny * mesh.b
    left = mesh.nodes_at(x=0.0)
    centre = mesh.nodes_at(x=w)
    centre = centre[mesh.xy[centre, 1] >= crack - 1e-9 * mesh.b]
    corner = mesh.nodes_at(x=0.0, y=top)
    dofs = np.concatenate([2 * left, 2 * centre, 2 * corner + 1])
    values = np.concatenate([np.zeros(len(left)), np.full(len(centre), 0.5), np.zeros(len(corner))])
    return Supports(dofs=dofs, values=values, reaction_dofs=2 * left, reaction_sign=-1.0)
