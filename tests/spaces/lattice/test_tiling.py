"""Tiling solver: against a plain sparse assemble-and-solve of the full tiling, SPEC values, limits."""

from __future__ import annotations

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import fem, tiling
from deepdram.spaces.lattice import geometry as lattice

FULL = np.ones(42, dtype=np.uint8)


def sparse_reference(design: np.ndarray, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Properties and peak stresses from the whole tiling assembled with scipy.sparse and spsolve."""
    nodes, beams = lattice.tiling_geometry(design, d1, d2)
    props, u, _ = fem.solve_frame(nodes, beams, 3 * d1 + 1, 3 * d2 + 1, sparse=True)
    peak = [fem.beam_von_mises(nodes, beams, u[c]).max() for c in (0, 1)]
    return props, np.array(peak)


def test_full_design_2x2_matches_spec_reference():
    """SPEC section 5: the full design tiled 2 x 2 has E = 0.2251 and nu = 0.2345 (4 digits)."""
    p = tiling.tiling_properties(FULL, 2, 2)
    np.testing.assert_allclose(p, [0.2251, 0.2251, 0.2345, 0.2345], rtol=2.5e-4)


@pytest.mark.parametrize("zg", [2.5, 3.0, 3.5, 4.0, 4.5])
@pytest.mark.parametrize("size", [(2, 2), (4, 2), (2, 6), (3, 5), (6, 4)])
def test_substructured_solver_equals_sparse_direct_solve(zg, size):
    """Exact condensation agrees with an independent full sparse solve, properties and stresses."""
    d1, d2 = size
    designs = lattice.sample_designs(zg, 3, seed=hash(size) % 1000)
    res = tiling.solve_tilings(designs, d1, d2, stress=True, strict=False)
    for k, design in enumerate(designs):
        props, peak = sparse_reference(design, d1, d2)
        np.testing.assert_allclose(res.properties[k], props, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.peak_vm[k], peak, rtol=1e-9)


def test_one_by_one_tiling_equals_unit_cell_solver():
    """A 1 x 1 tiling is the unit cell: same properties and peak stresses as the cell kernel."""
    designs = np.concatenate([lattice.sample_designs(z, 20, seed=7) for z in (2.5, 3.5, 4.5)])
    cell = fem.solve_cells(designs, stress=True)
    til = tiling.solve_tilings(designs, 1, 1, stress=True, strict=False)
    np.testing.assert_allclose(til.properties, cell.properties, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(til.peak_vm, cell.peak_vm, rtol=1e-9)


def test_shared_edge_beams_count_once():
    """A beam on an edge shared by two cells is one beam: a lone bottom-row beam shows up once."""
    design = FULL.copy()
    design[[9, 10, 11]] = 0  # top row missing: stacked cells still share the bottom row's beams
    nodes, beams = lattice.tiling_geometry(design, 1, 2)
    keys = {tuple(b) for b in beams.tolist()}
    assert len(keys) == len(beams)
    # rows y = 0 and y = 3 both hold horizontal beams (row 3 from the upper cell's bottom row)
    nx = 4
    row3 = [(3 * nx + i, 3 * nx + i + 1) for i in range(3)]
    assert all(b in keys for b in row3)
    top = [(6 * nx + i, 6 * nx + i + 1) for i in range(3)]
    assert not any(b in keys for b in top)
    props, _ = sparse_reference(design, 1, 2)
    np.testing.assert_allclose(tiling.tiling_properties(design, 1, 2, strict=False), props, rtol=1e-9)


def test_tiling_is_mirror_and_transpose_consistent():
    """Swapping x and y of the design and of (d1, d2) swaps E11<->E22 and nu12<->nu21."""
    designs = lattice.sample_designs(3.0, 6, seed=3)
    p = tiling.solve_tilings(designs, 4, 2).properties
    q = tiling.solve_tilings(lattice.transform(designs, lattice.SWAP_XY), 2, 4).properties
    np.testing.assert_allclose(q, p[:, [1, 0, 3, 2]], rtol=1e-8, atol=1e-12)
    m = tiling.solve_tilings(lattice.transform(designs, lattice.MIRROR_X), 4, 2).properties
    np.testing.assert_allclose(m, p, rtol=1e-8, atol=1e-12)


def test_properties_settle_with_size():
    """The full design's properties change by under 1 % from 18 x 18 to 20 x 20."""
    p18 = tiling.tiling_properties(FULL, 18, 18)
    p20 = tiling.tiling_properties(FULL, 20, 20)
    assert np.all(np.abs(p20 - p18) / np.abs(p20) < 0.01)
    p2 = tiling.tiling_properties(FULL, 2, 2)
    assert np.abs(p2 - p20).max() > 10 * np.abs(p18 - p20).max()  # it did move on the way


def test_batch_api_mixed_sizes_matches_single_calls():
    """Rows of many sizes solved in one call equal each row solved alone."""
    designs = lattice.sample_designs(3.5, 6, seed=11)
    d1 = np.array([2, 4, 2, 6, 4, 2])
    d2 = np.array([2, 2, 4, 2, 2, 2])
    done = []
    res = tiling.solve_tilings(designs, d1, d2, stress=True, progress=done.append)
    assert sum(done) == 6
    for k in range(6):
        np.testing.assert_allclose(res.properties[k], tiling.tiling_properties(designs[k], d1[k], d2[k]))


@pytest.mark.parametrize(
    "d1, d2, match",
    [(3, 2, "d1 must be even"), (2, 22, "d2 must be even integers in \\[2, 20\\]; got 22"),
     (0, 2, "d1"), (2.5, 2, "integer")],
)
def test_bad_sizes_are_rejected_with_the_rule(d1, d2, match):
    """Odd, out-of-range or fractional sizes name the field and the rule."""
    with pytest.raises(InputError, match=match):
        tiling.solve_tilings(FULL[None], d1, d2)


def test_bad_size_in_a_batch_names_the_row():
    """In a batch, the first offending row is named."""
    with pytest.raises(InputError, match="at row 2"):
        tiling.solve_tilings(np.stack([FULL] * 3), [2, 4, 5], [2, 2, 2])
