"""Q4 element, cracked mesh, mirror and supports of the composite specimen (SPEC 8)."""

import numpy as np
import pytest

from deepdram.spaces.composite.mesh import (
    grid_mesh,
    half_mesh,
    half_supports,
    mirror_design,
    phase_moduli,
    q4_stiffness,
    q4_stiffness_gauss,
    specimen_mesh,
    specimen_supports,
)
from deepdram.spaces.composite.reference import assemble, fracture_run, reaction, solve_supported


@pytest.mark.parametrize("E,nu,a,b,t", [(1.0, 0.3, 1.0, 1.0, 1.0), (0.1, 0.3, 0.5, 0.5, 1.0),
                                        (2.5, 0.25, 0.7, 0.4, 2.0), (1.0, 0.0, 3.0, 1.0, 1.0)])
def test_q4_closed_form_matches_gauss_integration(E, nu, a, b, t):
    k = q4_stiffness(E, nu, a, b, t)
    np.testing.assert_allclose(k, q4_stiffness_gauss(E, nu, a, b, t), rtol=0, atol=1e-14 * np.abs(k).max())


def test_q4_square_matches_textbook_values():
    # unit-square entries as in Sigmund's 99-line topology-optimisation code (k1, k2, k3, k7)
    nu = 0.3
    k = q4_stiffness(1.0, nu)
    f = 1 / (1 - nu**2)
    assert k[0, 0] == pytest.approx(f * (1 / 2 - nu / 6))
    assert k[0, 1] == pytest.approx(f * (1 / 8 + nu / 8))
    assert k[0, 2] == pytest.approx(f * (-1 / 4 - nu / 12))
    assert k[0, 6] == pytest.approx(f * (nu / 6))


def test_q4_has_exactly_the_three_rigid_modes():
    k = q4_stiffness(1.0, 0.3, 0.5, 0.8)
    x = np.array([0, 0.5, 0.5, 0])
    y = np.array([0, 0, 0.8, 0.8])
    modes = [np.tile([1.0, 0.0], 4), np.tile([0.0, 1.0], 4), np.column_stack([-y, x]).ravel()]
    for u in modes:
        np.testing.assert_allclose(k @ u, 0, atol=1e-14)
    assert np.sum(np.linalg.eigvalsh(k) > 1e-10) == 5


@pytest.mark.parametrize("m", [1, 2, 3])
def test_specimen_mesh_has_double_nodes_below_the_tip_only(m):
    mesh = specimen_mesh(m)
    n = 8 * m
    assert len(mesh.xy) == (n + 1) ** 2 + 2 * m
    assert mesh.elements.shape == (n * n, 4)
    centre = mesh.nodes_at(x=4.0)
    ys = np.sort(mesh.xy[centre, 1])
    # y < 2 twice, the tip (4, 2) and above once
    below = ys[ys < 2 - 1e-12]
    np.testing.assert_allclose(below, np.repeat(np.arange(2 * m) / m, 2))
    assert np.sum(np.isclose(ys, 2.0)) == 1
    # left and right elements of the crack share no node below the tip, but share the tip
    r, c = np.divmod(np.arange(n * n), n)
    for row in range(2 * m):
        le = set(mesh.elements[(r == row) & (c == 4 * m - 1)].ravel())
        ri = set(mesh.elements[(r == row) & (c == 4 * m)].ravel())
        shared = le & ri
        if row < 2 * m - 1:
            assert not shared
        else:
            assert [tuple(mesh.xy[s]) for s in shared] == [(4.0, 2.0)]
    # elements are counter-clockwise with the right size
    for e in (0, n * n // 2 + 3, n * n - 1):
        p = mesh.xy[mesh.elements[e]]
        np.testing.assert_allclose(p[1] - p[0], [1 / m, 0])
        np.testing.assert_allclose(p[3] - p[0], [0, 1 / m])


def test_uncracked_mesh_has_no_double_nodes():
    mesh = specimen_mesh(2, crack_cells=0)
    assert len(mesh.xy) == 17**2


@pytest.mark.parametrize("E", [1.0, 0.1, 3.0])
def test_uncracked_strip_stiffness_is_E_height_over_width(E):
    # a non-square strip of non-square elements: K = E t H / W exactly (uniaxial stress is linear)
    mesh = grid_mesh(5, 3, 0.7, 0.4)
    sup = specimen_supports(mesh)
    K = assemble(mesh, np.full(15, E), q4_stiffness(1.0, 0.3, 0.7, 0.4))
    u = solve_supported(K, sup)
    assert reaction(K, u, sup) == pytest.approx(E * 1.2 / 3.5, rel=1e-12)


@pytest.mark.parametrize("m", [1, 2])
def test_uncracked_specimen_k0_is_E_and_the_crack_softens_it(m):
    for E in (1.0, 0.1):
        assert fracture_run(np.full((8, 8), E), m=m, crack_cells=0).k0 == pytest.approx(E, rel=1e-12)
        assert fracture_run(np.full((8, 8), E), m=m).k0 < 0.95 * E


def test_mirror_design_maps_cell_j_i_to_j_7_minus_i():
    x = np.arange(32)
    full = mirror_design(x)
    assert full.shape == (8, 8)
    for j in range(8):
        for i in range(4):
            assert full[j, i] == 4 * j + i == full[j, 7 - i]
    assert mirror_design(np.stack([x, x + 1])).shape == (2, 8, 8)


def test_phase_moduli_are_one_and_one_over_ratio():
    np.testing.assert_array_equal(phase_moduli(np.array([1, 0, 1]), 10.0), [1.0, 0.1, 1.0])
    np.testing.assert_array_equal(phase_moduli(np.array([0]), 4.0), [0.25])


def test_supports_full_and_half():
    mesh = specimen_mesh(1)
    sup = specimen_supports(mesh)
    assert sup.dofs.size == 9 + 9 + 1
    assert set(sup.values) == {0.0, 1.0}
    corner = mesh.nodes_at(x=0.0, y=8.0)
    assert 2 * corner[0] + 1 in sup.dofs
    half = half_mesh(1)
    hs = half_supports(half)
    # left edge 9, centre line from the tip y = 2 up to y = 8: 7 nodes, corner 1
    assert hs.dofs.size == 9 + 7 + 1
    assert np.sum(hs.values == 0.5) == 7
    assert np.all(half.xy[hs.dofs[hs.values == 0.5] // 2, 1] >= 2.0)
