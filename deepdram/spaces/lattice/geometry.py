"""Random-network lattice geometry: the 42-beam layout, validity, sampling, encodings, tilings."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from deepdram.spaces.lattice.constants import (
    ACCEPTANCE_RATES,
    BIT_COLUMNS,
    D_MAX,
    D_MIN,
    N_BEAMS,
    N_GRID,
    N_NODES,
    SPACING,
    ZG_VALUES,
)
from deepdram.errors import InputError, first_rows

FULL_MASK = (1 << N_NODES) - 1


def _node(i: int, j: int) -> int:
    return j * N_GRID + i


def _beam_table() -> np.ndarray:
    """The canonical beam order of SPEC section 1 as (42, 2) node pairs."""
    beams = []
    for j in range(N_GRID):
        for i in range(N_GRID - 1):
            beams.append((_node(i, j), _node(i + 1, j)))
    for j in range(N_GRID - 1):
        for i in range(N_GRID):
            beams.append((_node(i, j), _node(i, j + 1)))
    for j in range(N_GRID - 1):
        for i in range(N_GRID - 1):
            beams.append((_node(i, j), _node(i + 1, j + 1)))
            beams.append((_node(i + 1, j), _node(i, j + 1)))
    return np.array(beams, dtype=np.int64)


BEAMS = _beam_table()
NODE_IJ = np.array([(n % N_GRID, n // N_GRID) for n in range(N_NODES)], dtype=np.int64)
NODE_XY = NODE_IJ.astype(float) * SPACING


def beams_for_zg(zg: float) -> int:
    """Number of beams of a design with mean nodal connectivity `zg` (Z_g * 16 / 2)."""
    if not any(abs(zg - z) < 1e-9 for z in ZG_VALUES):
        raise InputError(f"zg={zg} is not one of the supported connectivities {list(ZG_VALUES)}")
    return int(round(zg * N_NODES / 2))


def zg_of(designs: np.ndarray) -> np.ndarray:
    """Mean nodal connectivity Z_g = 2 * beams / 16 of each design."""
    return np.asarray(designs).sum(axis=1) * 2.0 / N_NODES


# --- Validity -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _adjacency_weights() -> np.ndarray:
    """(42, 16) int64: beam k adds bit `other` to node n's neighbour mask."""
    w = np.zeros((N_BEAMS, N_NODES), dtype=np.int64)
    for k, (a, b) in enumerate(BEAMS):
        w[k, a] = 1 << b
        w[k, b] = 1 << a
    return w


_NODE_BITS = np.arange(N_NODES, dtype=np.int64)


def reach_masks(designs: np.ndarray) -> np.ndarray:
    """Bit mask of the nodes connected to node 0, per design (vectorised closure)."""
    # Each beam at a node leads to a different neighbour, so OR over beams equals the sum.
    adj = np.asarray(designs).astype(np.int64) @ _adjacency_weights()
    reach = np.ones(adj.shape[0], dtype=np.int64)
    # Each step adds the neighbours of every reached node at once (a few NumPy calls per step, so a
    # served request of a few rows pays microseconds); only the rows still growing take the next step.
    rows, got = np.arange(adj.shape[0]), reach.copy()
    while rows.size:
        grown = got | np.bitwise_or.reduce(adj * ((got[:, None] >> _NODE_BITS) & 1), axis=1)
        moved = grown != got
        reach[rows] = grown
        rows, got, adj = rows[moved], grown[moved], adj[moved]
    return reach


def is_valid(designs: np.ndarray) -> np.ndarray:
    """True where all 16 nodes form one connected component."""
    return reach_masks(designs) == FULL_MASK


def check_designs(designs, *, require_valid: bool = True, what: str = "design") -> np.ndarray:
    """Validate a (B, 42) array of 0/1 designs and return it as uint8, else raise InputError."""
    try:
        arr = np.asarray(designs)
    except ValueError:  # ragged rows
        lengths = [len(r) for r in designs]
        bad = [i for i, n in enumerate(lengths) if n != N_BEAMS]
        raise InputError(
            f"a {what} must have {N_BEAMS} beam entries (b00..b41); row {bad[0] if bad else '?'} "
            f"has {lengths[bad[0]] if bad else '?'}"
        ) from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != N_BEAMS:
        raise InputError(
            f"a {what} must have {N_BEAMS} beam entries (b00..b41); got shape {tuple(np.shape(designs))}"
        )
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} entries must be numbers 0 or 1; got dtype {arr.dtype}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        rows = bad.any(axis=1)
        r, c = np.argwhere(bad)[0]
        raise InputError(
            f"{what} entries must be 0 or 1: row {r} column {BIT_COLUMNS[c]} is {arr[r, c].item()!r} "
            f"(rows with bad entries: {first_rows(rows)})"
        )
    out = arr.astype(np.uint8)
    if require_valid:
        ok = is_valid(out)
        if not ok.all():
            rows = "row" if (~ok).sum() == 1 else "rows"
            raise InputError(
                f"invalid {what} in {rows} {first_rows(~ok)}: not all 16 nodes are connected "
                "(every node must belong to one connected network)"
            )
    return out


# --- Sampling -------------------------------------------------------------------------------


def random_subsets(rng: np.random.Generator, m: int, n_beams: int) -> np.ndarray:
    """(m, 42) uint8 designs with `n_beams` distinct beams chosen uniformly at random."""
    idx = np.argpartition(rng.random((m, N_BEAMS)), n_beams - 1, axis=1)[:, :n_beams]
    out = np.zeros((m, N_BEAMS), dtype=np.uint8)
    np.put_along_axis(out, idx, 1, axis=1)
    return out


def sample_designs(zg: float, n: int, seed: int | Sequence[int], *, unique: bool = True) -> np.ndarray:
    """Draw `n` valid designs uniformly at random for connectivity `zg` (rejection sampling)."""
    if n < 0:
        raise InputError(f"n must be >= 0; got {n}")
    n_beams = beams_for_zg(zg)
    rng = np.random.default_rng(seed)
    rate = ACCEPTANCE_RATES[min(ACCEPTANCE_RATES, key=lambda z: abs(z - zg))]
    parts: list[np.ndarray] = []
    keys = np.empty(0, dtype=np.uint64)
    total = 0
    while total < n:
        m = int((n - total) / rate * 1.1) + 64
        cand = random_subsets(rng, m, n_beams)
        cand = cand[is_valid(cand)]
        if unique:
            k = to_keys(cand)
            _, first = np.unique(k, return_index=True)
            first.sort()
            first = first[~np.isin(k[first], keys)]
            cand, k = cand[first], k[first]
            keys = np.concatenate([keys, k])
        parts.append(cand)
        total += len(cand)
    return np.concatenate(parts)[:n] if parts else np.zeros((0, N_BEAMS), np.uint8)


# --- Encodings ------------------------------------------------------------------------------


def to_keys(designs: np.ndarray) -> np.ndarray:
    """Pack (B, 42) 0/1 designs into uint64 keys, bit k = beam k."""
    d = np.atleast_2d(np.asarray(designs, dtype=np.uint8))
    packed = np.packbits(d, axis=1, bitorder="little")
    buf = np.zeros((d.shape[0], 8), dtype=np.uint8)
    buf[:, : packed.shape[1]] = packed
    return buf.view("<u8").ravel().astype(np.uint64)


def from_keys(keys: np.ndarray) -> np.ndarray:
    """Unpack uint64 keys into (B, 42) uint8 designs."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=np.uint64).astype("<u8"))
    bits = np.unpackbits(k.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return bits[:, :N_BEAMS].copy()


def to_frame(designs: np.ndarray, **columns):
    """DataFrame with columns b00..b41 (uint8) followed by extra named columns."""
    import pandas as pd

    d = np.asarray(designs, dtype=np.uint8)
    df = pd.DataFrame(d, columns=list(BIT_COLUMNS))
    for name, values in columns.items():
        df[name] = values
    return df


def from_frame(df, *, require_valid: bool = True) -> np.ndarray:
    """(B, 42) uint8 designs from the b00..b41 columns of a DataFrame, validated."""
    missing = [c for c in BIT_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"missing design column(s): {', '.join(missing)} (need b00..b41)")
    block = df[list(BIT_COLUMNS)]
    nonnum = [c for c in BIT_COLUMNS if block[c].dtype.kind not in "biuf"]
    if nonnum:
        c = nonnum[0]
        bad = ~block[c].astype(str).isin(["0", "1", "0.0", "1.0"])
        raise InputError(
            f"design entries must be 0 or 1: column {c} is not numeric, e.g. row "
            f"{first_rows(bad.to_numpy(), 1)} holds {block[c][bad].iloc[0]!r}"
        )
    values = block.to_numpy()
    if np.isnan(values.astype(float)).any():
        r, c = np.argwhere(np.isnan(values.astype(float)))[0]
        raise InputError(f"design entries must be 0 or 1: row {r} column {BIT_COLUMNS[c]} is empty")
    return check_designs(values, require_valid=require_valid)


# --- Symmetries -----------------------------------------------------------------------------


def _beam_permutation(node_map) -> np.ndarray:
    lookup = {tuple(sorted(map(int, b))): k for k, b in enumerate(BEAMS)}
    perm = np.empty(N_BEAMS, dtype=np.int64)
    for k, (a, b) in enumerate(BEAMS):
        perm[k] = lookup[tuple(sorted((node_map(a), node_map(b))))]
    return perm


def _map_ij(f):
    return lambda n: _node(*f(*NODE_IJ[n]))


MIRROR_X = _beam_permutation(_map_ij(lambda i, j: (N_GRID - 1 - i, j)))  # left-right
MIRROR_Y = _beam_permutation(_map_ij(lambda i, j: (i, N_GRID - 1 - j)))  # top-bottom
SWAP_XY = _beam_permutation(_map_ij(lambda i, j: (j, i)))  # transpose: direction 1 <-> 2


def transform(designs: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Designs after a node symmetry: new beam perm[k] takes old beam k."""
    d = np.asarray(designs)
    out = np.empty_like(d)
    out[:, perm] = d
    return out


# --- Tilings (SPEC section 4) ---------------------------------------------------------------


def check_size(d1, d2, *, strict: bool = True) -> None:
    """Raise InputError unless d1, d2 are even integers in [2, 20] (any >= 1 if not strict)."""
    for name, d in (("d1", d1), ("d2", d2)):
        arr = np.atleast_1d(np.asarray(d))
        if arr.dtype.kind not in "iuf" or np.any(arr != np.round(arr)):
            raise InputError(f"{name} must be an integer number of cells; got {arr[:5].tolist()}")
        lo = D_MIN if strict else 1
        bad = (arr < lo) | (arr > D_MAX) | ((arr % 2 != 0) if strict else False)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            rule = f"even integers in [{D_MIN}, {D_MAX}]" if strict else f"integers in [1, {D_MAX}]"
            where = f" at row {i}" if arr.size > 1 else ""
            raise InputError(f"{name} must be {rule}; got {arr[i]:g}{where}")


def tiling_geometry(design: np.ndarray, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Node coordinates (N, 2) and unique beams (M, 2) of a d1 x d2 tiling of one design."""
    design = np.asarray(design).ravel()
    nx, ny = 3 * d1 + 1, 3 * d2 + 1
    on = BEAMS[design.astype(bool)]
    ia, ja = NODE_IJ[on[:, 0]].T
    ib, jb = NODE_IJ[on[:, 1]].T
    ox, oy = np.meshgrid(np.arange(d1) * 3, np.arange(d2) * 3, indexing="xy")
    ox, oy = ox.ravel()[:, None], oy.ravel()[:, None]
    na = (oy + ja) * nx + (ox + ia)
    nb = (oy + jb) * nx + (ox + ib)
    pairs = np.stack([np.minimum(na, nb).ravel(), np.maximum(na, nb).ravel()], axis=1)
    beams = np.unique(pairs, axis=0)
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="xy")
    nodes = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(float) * SPACING
    return nodes, beams
