"""Tests of deepdram.spaces.lattice.fem against independent truth.

Truth sources: the reference values of SPEC section 5; closed-form beam theory (axial bar,
Timoshenko cantilever, rigid-body modes, rotation invariance); an independent assembly and
solve with calfem-python (beam2te / assem / solveq / beam2ts); and the mirror / transpose
symmetries of the unit cell.
"""

from __future__ import annotations

import calfem.core as cfc
import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import fem
from deepdram.spaces.lattice import geometry as lattice
from deepdram.spaces.lattice.constants import AREA, E_B, G_B, INERTIA, K_S, THICKNESS

ZGS = (2.5, 3.0, 3.5, 4.0, 4.5)
EPS = 0.05  # applied strain, SPEC section 3
SPAN = 22.5  # mm, cell width W = height L
T_OUT = 10.0  # mm, out-of-plane depth T
EP = [E_B, G_B, AREA, INERTIA, K_S]  # calfem beam2te element properties

# Node ids of the unit-cell edges, written out by hand from SPEC section 1 (n = j*4 + i).
LEFT, RIGHT = np.array([0, 4, 8, 12]), np.array([3, 7, 11, 15])
BOTTOM, TOP = np.array([0, 1, 2, 3]), np.array([12, 13, 14, 15])

FULL = np.ones(42, dtype=np.uint8)
NO_27_31 = FULL.copy()
NO_27_31[[27, 31]] = 0


def rel_err(a, b) -> float:
    """Max abs difference relative to the max abs value of the reference b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --- SPEC section 5 reference values ---------------------------------------------------------


@pytest.mark.parametrize(
    "design, expected",
    [
        (FULL, [0.25037, 0.25037, 0.18057, 0.18057]),
        (NO_27_31, [0.24315, 0.24315, 0.15864, 0.15864]),
    ],
    ids=["all-42", "without-27-31"],
)
def test_reference_properties(design, expected):
    """solve_cells and cell_properties reproduce the SPEC section 5 table to 5e-5 relative."""
    props = fem.solve_cells(design[None]).properties[0]
    np.testing.assert_allclose(props, expected, rtol=5e-5, atol=0)
    np.testing.assert_allclose(fem.cell_properties(design[None])[0], expected, rtol=5e-5, atol=0)


def test_reference_solver_matches_table():
    """The NumPy baseline solve_cell_reference reproduces SPEC section 5 for both designs."""
    for design, expected in ((FULL, [0.25037, 0.25037, 0.18057, 0.18057]),
                             (NO_27_31, [0.24315, 0.24315, 0.15864, 0.15864])):
        props, u, r = fem.solve_cell_reference(design)
        assert u.shape == (2, 48) and r.shape == (2, 48)
        np.testing.assert_allclose(props, expected, rtol=5e-5, atol=0)


def test_reference_summed_reaction():
    """Full design: 1.69001 N summed reaction on the moved edge in both load cases (SPEC 5)."""
    _, _, r = fem.solve_cell_reference(FULL)
    r1 = r[0, 3 * RIGHT].sum()  # u1 reactions of right-edge nodes, load case 1
    r2 = r[1, 3 * TOP + 1].sum()  # u2 reactions of top-edge nodes, load case 2
    assert r1 == pytest.approx(1.69001, rel=1e-5)
    assert r2 == pytest.approx(1.69001, rel=1e-5)
    # the reaction on the clamped edge balances it
    assert r[0, 3 * LEFT].sum() == pytest.approx(-r1, rel=1e-10)


def test_reference_peak_von_mises():
    """Full design: peak von Mises 0.035881 MPa in both load cases (SPEC 5), per-beam max agrees."""
    res = fem.solve_cells(FULL[None], stress=True, per_beam=True)
    peak_mpa = res.peak_vm[0] * E_B * EPS
    np.testing.assert_allclose(peak_mpa, [0.035881, 0.035881], rtol=5e-5, atol=0)
    np.testing.assert_allclose(res.beam_vm[0].max(axis=0), res.peak_vm[0], rtol=1e-12)


# --- Analytic checks of the element and the generic frame functions ------------------------


def rot6(theta: float) -> np.ndarray:
    """Global-to-local transformation of a 2-node frame element at angle theta (written here)."""
    c, s = np.cos(theta), np.sin(theta)
    r = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    q = np.zeros((6, 6))
    q[:3, :3] = q[3:, 3:] = r
    return q


def line_frame(length: float, n_el: int, theta: float = 0.0):
    """Straight frame of n_el equal elements from the origin along angle theta."""
    s = np.linspace(0.0, length, n_el + 1)
    nodes = np.stack([s * np.cos(theta), s * np.sin(theta)], axis=1)
    beams = np.stack([np.arange(n_el), np.arange(1, n_el + 1)], axis=1)
    return nodes, beams


@pytest.mark.parametrize("n_el", [1, 3])
def test_axial_bar(n_el):
    """Bar pulled by a prescribed end displacement: R = E A u / L and a linear axial field."""
    length, u_end = 15.0, 0.3
    nodes, beams = line_frame(length, n_el)
    k = fem.assemble(nodes, beams)
    tip = 3 * n_el
    dofs = np.array([0, 1, 2, tip, tip + 1, tip + 2])
    u, r = fem.solve_prescribed(k, dofs, np.array([0, 0, 0, u_end, 0, 0]))
    force = r[tip]
    assert u_end == pytest.approx(force * length / (E_B * AREA), rel=1e-12)
    assert r[0] == pytest.approx(-force, rel=1e-12)
    np.testing.assert_allclose(u[0::3], u_end * nodes[:, 0] / length, rtol=0, atol=1e-12)
    np.testing.assert_allclose(u[1::3], 0.0, atol=1e-12)


def cantilever_compliances(length: float):
    """Tip compliance (bending, shear) of a Timoshenko cantilever under a tip load."""
    bending = length**3 / (3 * E_B * INERTIA)
    shear = length / (K_S * G_B * AREA)
    return bending, shear


@pytest.mark.parametrize("theta_deg", [0.0, 90.0, 30.0])
@pytest.mark.parametrize("n_el", [1, 4])
def test_timoshenko_cantilever_tip_load(n_el, theta_deg):
    """Tip deflection under a transverse tip force = P L^3/(3EI) + P L/(Ks G A); EB alone fails."""
    length, load = 2.0, 1e-3  # short, thick beam: the shear term is ~16 % of the deflection
    theta = np.radians(theta_deg)
    nodes, beams = line_frame(length, n_el, theta)
    k = fem.assemble(nodes, beams)
    free = np.arange(3, k.shape[0])  # node 0 clamped
    f = np.zeros(k.shape[0])
    normal = np.array([-np.sin(theta), np.cos(theta)])
    f[3 * n_el : 3 * n_el + 2] = load * normal
    u = np.zeros(k.shape[0])
    u[free] = np.linalg.solve(k[np.ix_(free, free)], f[free])
    tip = u[3 * n_el : 3 * n_el + 2] @ normal
    bending, shear = cantilever_compliances(length)
    assert shear / (bending + shear) > 0.05
    assert tip == pytest.approx(load * (bending + shear), rel=1e-10)
    assert tip != pytest.approx(load * bending, rel=0.05)  # Euler-Bernoulli alone is off
    # tip rotation: P L^2 / (2 E I), unaffected by shear
    assert u[3 * n_el + 2] == pytest.approx(load * length**2 / (2 * E_B * INERTIA), rel=1e-10)


def test_timoshenko_cantilever_prescribed_tip():
    """solve_prescribed: imposing tip deflection v gives the reaction v / (bending + shear compliance)."""
    length, v = 1.5, 0.01
    nodes, beams = line_frame(length, 2)
    k = fem.assemble(nodes, beams)
    u, r = fem.solve_prescribed(k, np.array([0, 1, 2, 7]), np.array([0, 0, 0, v]))
    bending, shear = cantilever_compliances(length)
    assert r[7] == pytest.approx(v / (bending + shear), rel=1e-10)
    assert r[7] != pytest.approx(v / bending, rel=0.05)
    np.testing.assert_allclose(r[[3, 4, 5, 6, 8]], 0.0, atol=1e-14)  # free DOFs carry no load


def test_local_stiffness_matches_calfem_and_is_physical():
    """local_stiffness equals calfem beam2te on the x axis, is symmetric and kills rigid modes."""
    lengths = np.array([0.5, 7.5, 7.5 * np.sqrt(2)])
    kl = fem.local_stiffness(lengths)
    assert kl.shape == (3, 6, 6)
    for L, k in zip(lengths, kl):
        np.testing.assert_allclose(k, cfc.beam2te([0, L], [0, 0], EP), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(k, k.T, atol=1e-15)
        rigid = np.array([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, L, 1]], float)
        np.testing.assert_allclose(k @ rigid.T, 0.0, atol=1e-13)
        assert np.all(np.linalg.eigvalsh(k)[3:] > 0)  # exactly 3 zero-energy modes


def test_rotated_element_equals_axis_aligned():
    """A 45 degree element's global K, rotated back to its axis, equals the axis-aligned K."""
    L = 7.5 * np.sqrt(2)
    theta = np.pi / 4
    ke, kq = fem.element_matrices(np.array([[1.0, 2.0]]), np.array([[1.0 + 7.5, 2.0 + 7.5]]))
    q = rot6(theta)
    k_axis, _ = fem.element_matrices(np.array([[0.0, 0.0]]), np.array([[L, 0.0]]))
    np.testing.assert_allclose(q @ ke[0] @ q.T, k_axis[0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(q @ ke[0] @ q.T, fem.local_stiffness(L)[0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(kq[0], fem.local_stiffness(L)[0] @ q, rtol=0, atol=1e-14)
    ex, ey = [1.0, 8.5], [2.0, 9.5]
    np.testing.assert_allclose(ke[0], cfc.beam2te(ex, ey, EP), rtol=0, atol=1e-14)


def test_axial_pull_along_45_degrees():
    """Pulling a 45 degree bar along its axis gives the axial-bar force E A delta / L, no bending."""
    L, delta = 7.5 * np.sqrt(2), 0.2
    nodes, beams = line_frame(L, 2, np.pi / 4)
    k = fem.assemble(nodes, beams)
    axis = np.array([1.0, 1.0]) / np.sqrt(2)
    dofs = np.array([0, 1, 2, 6, 7])  # tip rotation left free
    u, r = fem.solve_prescribed(k, dofs, np.array([0, 0, 0, *(delta * axis)]))
    tip_force = r[6:8]
    np.testing.assert_allclose(tip_force, E_B * AREA * delta / L * axis, rtol=1e-12)
    np.testing.assert_allclose(u[[3, 4]], 0.5 * delta * axis, rtol=1e-12)
    np.testing.assert_allclose(u[[2, 5, 8]], 0.0, atol=1e-14)


def test_von_mises_formula():
    """von_mises implements SPEC 3: sigma = |N|/A + max|M| (t/2)/I, tau = 1.5|V|/A."""
    f = np.array([[-2.0, 0.4, 0.3, 2.0, -0.4, -0.5]])
    sigma = 2.0 / AREA + 0.5 * (THICKNESS / 2) / INERTIA
    tau = 1.5 * 0.4 / AREA
    assert fem.von_mises(f)[0] == pytest.approx(np.sqrt(sigma**2 + 3 * tau**2), rel=1e-14)


# --- Independent implementation: calfem-python ------------------------------------------------

EDOF = np.array([[3 * a + 1, 3 * a + 2, 3 * a + 3, 3 * b + 1, 3 * b + 2, 3 * b + 3]
                 for a, b in lattice.BEAMS])  # calfem 1-based DOF topology


def calfem_bcs(case: int):
    """1-based prescribed DOFs and values of SPEC 3 load cases, written from scratch."""
    move = EPS * SPAN
    if case == 1:
        fixed, moved, comp = LEFT, RIGHT, 0
    else:
        fixed, moved, comp = BOTTOM, TOP, 1
    dofs, vals = [], []
    for n in fixed:
        dofs += [3 * n + 1, 3 * n + 2, 3 * n + 3]
        vals += [0.0, 0.0, 0.0]
    for n in moved:
        dofs += [3 * n + 1, 3 * n + 2, 3 * n + 3]
        vals += [move if comp == 0 else 0.0, move if comp == 1 else 0.0, 0.0]
    return np.array(dofs), np.array(vals)


def calfem_cell(design):
    """calfem assembly and solve: K (48, 48), u (2, 48), r (2, 48)."""
    k = np.zeros((48, 48))
    for e in np.flatnonzero(design):
        a, b = lattice.BEAMS[e]
        ex, ey = lattice.NODE_XY[[a, b], 0], lattice.NODE_XY[[a, b], 1]
        k = cfc.assem(EDOF[e], k, cfc.beam2te(ex, ey, EP))
    us, rs = [], []
    for case in (1, 2):
        bc, val = calfem_bcs(case)
        a, r = cfc.solveq(k, np.zeros((48, 1)), bc, val)
        us.append(a.ravel())
        rs.append(r.ravel())
    return k, np.array(us), np.array(rs)


def spec_properties(u, r):
    """[E11/Eb, E22/Eb, nu12, nu21] from both load cases by the SPEC 3 definitions."""
    e11 = r[0, 3 * RIGHT].sum() / (SPAN * T_OUT) / EPS / E_B
    e22 = r[1, 3 * TOP + 1].sum() / (SPAN * T_OUT) / EPS / E_B
    eps22 = np.mean(u[0, 3 * TOP + 1] - u[0, 3 * BOTTOM + 1]) / SPAN
    eps11 = np.mean(u[1, 3 * RIGHT] - u[1, 3 * LEFT]) / SPAN
    return np.array([e11, e22, -eps22 / EPS, -eps11 / EPS])


def calfem_peak_vm(design, u):
    """Peak von Mises / (Eb eps) per load case from calfem beam2ts end section forces."""
    peaks = np.zeros(2)
    for c in range(2):
        for e in np.flatnonzero(design):
            a, b = lattice.BEAMS[e]
            ex, ey = lattice.NODE_XY[[a, b], 0], lattice.NODE_XY[[a, b], 1]
            es = cfc.beam2ts(ex, ey, EP, u[c, EDOF[e] - 1])
            assert es.shape == (2, 3)
            n, v, m = np.abs(es).T
            sigma = n.max() / AREA + m.max() * (THICKNESS / 2) / INERTIA
            tau = 1.5 * v.max() / AREA
            peaks[c] = max(peaks[c], np.sqrt(sigma**2 + 3 * tau**2))
    return peaks / (E_B * EPS)


@pytest.fixture(scope="module")
def calfem_cases():
    """25 random valid designs per Z_g (plus the two reference designs) with calfem solutions."""
    designs = [FULL[None], NO_27_31[None]] + [lattice.sample_designs(z, 25, seed=100 + i)
                                              for i, z in enumerate(ZGS)]
    designs = np.concatenate(designs)
    return designs, [calfem_cell(d) for d in designs]


def test_calfem_cases_cover_every_zg(calfem_cases):
    """The calfem comparison set holds at least 20 designs of every Z_g."""
    designs, _ = calfem_cases
    counts = {z: int((lattice.zg_of(designs) == z).sum()) for z in ZGS}
    assert all(c >= 20 for c in counts.values()), counts


def test_assembled_stiffness_matches_calfem(calfem_cases):
    """fem.assemble (dense and sparse) equals the calfem-assembled 48 x 48 matrix."""
    designs, sols = calfem_cases
    for d, (k_cf, _, _) in zip(designs, sols):
        beams = lattice.BEAMS[d.astype(bool)]
        k = fem.assemble(lattice.NODE_XY, beams)
        assert rel_err(k, k_cf) < 1e-13
        assert rel_err(fem.assemble(lattice.NODE_XY, beams, sparse=True).toarray(), k_cf) < 1e-13


def test_displacements_match_calfem(calfem_cases):
    """solve_cells displacements (both load cases) equal calfem's to 1e-9 relative."""
    designs, sols = calfem_cases
    disp = fem.solve_cells(designs, displacements=True).displacements
    assert disp.shape == (len(designs), 2, 48)
    for i, (_, u_cf, _) in enumerate(sols):
        for c in range(2):
            assert rel_err(disp[i, c], u_cf[c]) < 1e-9, (i, c)


def test_reactions_match_calfem(calfem_cases):
    """Our K @ u (fem.assemble, solve_cells u) equals calfem's reaction vector to 1e-9 relative."""
    designs, sols = calfem_cases
    disp = fem.solve_cells(designs, displacements=True).displacements
    for i, (d, (_, _, r_cf)) in enumerate(zip(designs, sols)):
        k = fem.assemble(lattice.NODE_XY, lattice.BEAMS[d.astype(bool)])
        for c in range(2):
            assert rel_err(k @ disp[i, c], r_cf[c]) < 1e-9, (i, c)


def test_summed_reactions_match_calfem(calfem_cases):
    """Summed edge reactions implied by our E11, E22 equal calfem's sums to 1e-9 relative."""
    designs, sols = calfem_cases
    props = fem.cell_properties(designs)
    ours = props[:, :2] * (SPAN * T_OUT) * EPS * E_B
    theirs = np.array([[r[0, 3 * RIGHT].sum(), r[1, 3 * TOP + 1].sum()] for _, _, r in sols])
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)


def test_properties_match_calfem(calfem_cases):
    """solve_cells properties equal SPEC 3 properties of calfem's solution to 1e-9."""
    designs, sols = calfem_cases
    props = fem.solve_cells(designs).properties
    theirs = np.array([spec_properties(u, r) for _, u, r in sols])
    np.testing.assert_allclose(props, theirs, rtol=1e-9, atol=1e-11)


def test_reference_solver_matches_calfem(calfem_cases):
    """solve_cell_reference (NumPy baseline) matches calfem displacements and reactions."""
    designs, sols = calfem_cases
    for d, (_, u_cf, r_cf) in list(zip(designs, sols))[::5]:
        props, u, r = fem.solve_cell_reference(d)
        assert rel_err(u, u_cf) < 1e-9 and rel_err(r, r_cf) < 1e-9
        np.testing.assert_allclose(props, spec_properties(u_cf, r_cf), rtol=1e-9, atol=1e-11)


def test_peak_von_mises_matches_calfem(calfem_cases):
    """solve_cells peak and per-beam von Mises match calfem beam2ts section forces."""
    designs, sols = calfem_cases
    res = fem.solve_cells(designs, stress=True, per_beam=True)
    theirs = np.array([calfem_peak_vm(d, u) for d, (_, u, _) in zip(designs, sols)])
    np.testing.assert_allclose(res.peak_vm, theirs, rtol=1e-8)
    absent = designs == 0
    assert np.all(res.beam_vm[absent] == 0)


# --- Symmetry invariances ----------------------------------------------------------------------


@pytest.mark.parametrize("zg", ZGS)
def test_mirror_and_transpose_invariance(zg):
    """Mirrors keep all four properties; swapping x and y swaps E11<->E22 and nu12<->nu21."""
    d = lattice.sample_designs(zg, 300, seed=7)
    p = fem.cell_properties(d)
    tol = dict(rtol=1e-9, atol=1e-12)
    for perm in (lattice.MIRROR_X, lattice.MIRROR_Y):
        np.testing.assert_allclose(fem.cell_properties(lattice.transform(d, perm)), p, **tol)
    swapped = fem.cell_properties(lattice.transform(d, lattice.SWAP_XY))
    np.testing.assert_allclose(swapped, p[:, [1, 0, 3, 2]], **tol)
    # the test has teeth: the designs are not all symmetric already
    assert np.abs(p[:, 0] - p[:, 1]).max() > 1e-3


# --- Bad input ----------------------------------------------------------------------------------


def test_solve_cells_rejects_wrong_length():
    """solve_cells refuses designs without 42 entries, naming the 42 rule."""
    with pytest.raises(InputError, match="42"):
        fem.solve_cells(np.ones((4, 41)))


@pytest.mark.parametrize("bad_value", [2, 0.5, -1])
def test_solve_cells_rejects_non_binary(bad_value):
    """solve_cells refuses an entry that is not 0/1, naming its row and the 0-or-1 rule."""
    d = np.ones((5, 42))
    d[3, 10] = bad_value
    with pytest.raises(InputError) as info:
        fem.solve_cells(d)
    msg = str(info.value)
    assert "row 3" in msg and "0 or 1" in msg and "b10" in msg


def test_solve_cells_rejects_disconnected():
    """solve_cells refuses a disconnected design, naming its row and the connectivity rule."""
    d = np.ones((5, 42), dtype=np.uint8)
    d[3] = 0
    d[3, :12] = 1  # only the horizontal beams: four disconnected rows of nodes
    with pytest.raises(InputError, match=r"(?s)\brows? 3\b.*connected"):
        fem.solve_cells(d)
