"""Relaxed densities: 0/1 limit = the solvers, adjoint = finite differences, weighted solvers, SIMP,
symmetry and input errors."""

from __future__ import annotations

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import fem, relaxed, tiling
from deepdram.spaces.lattice import geometry as lattice

ONES = np.ones((1, 42))


def interior(n: int, seed: int) -> np.ndarray:
    """(n, 42) densities uniform in [0.2, 0.8], away from the bounds where FD turns one-sided."""
    return np.random.default_rng(seed).uniform(0.2, 0.8, (n, 42))


def mixed_designs(per_zg: int, seed: int) -> np.ndarray:
    return np.concatenate([lattice.sample_designs(z, per_zg, seed=seed + k) for k, z in enumerate(lattice.ZG_VALUES)])


def assert_jacobian_close(j: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    """Entrywise |j - ref| <= rtol * (largest |ref| of the same design and property)."""
    scale = np.abs(ref).max(axis=2, keepdims=True)
    err = np.abs(j - ref) / scale
    assert err.max() <= rtol, f"max relative error {err.max():.2e} at {np.unravel_index(err.argmax(), err.shape)}"


# --- 0/1 densities are the designs ------------------------------------------------------------------


def assert_floor_close(got: np.ndarray, ref: np.ndarray, floor: float) -> None:
    """0/1 densities miss the design by O(floor): E relative to the design's E scale, nu absolute.

    The floor stiffens every absent beam a little; floppy designs (E/Eb ~ 1e-3, nu ~ 1e-4) feel it
    most: measured over 1,000 designs, |dE| / max(E11, E22) <= 1.4e2 floor, |dnu| <= 2.4e3 floor.
    """
    scale = ref[:, :2].max(axis=1, keepdims=True)
    assert (np.abs(got[:, :2] - ref[:, :2]) / scale).max() <= 1e3 * floor
    assert np.abs(got[:, 2:] - ref[:, 2:]).max() <= 1e4 * floor


@pytest.mark.parametrize("floor", [1e-12, 1e-9])
def test_zero_one_densities_match_cell_solver(floor):
    designs = mixed_designs(40, seed=11)
    ref = fem.solve_cells(designs).properties
    got = relaxed.properties(designs, floor=floor)
    assert_floor_close(got, ref, floor)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5 if floor > 1e-10 else 1e-8)


@pytest.mark.parametrize("size", [(2, 2), (4, 2), (2, 6)])
def test_zero_one_densities_match_tiling_solver(size):
    designs = mixed_designs(1, seed=5 + size[1])
    ref = tiling.solve_tilings(designs, *size).properties
    got = relaxed.properties(designs, *size, floor=1e-12)
    assert_floor_close(got, ref, 1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


def test_full_density_matches_spec_reference():
    """SPEC section 5: all 42 beams give E = 0.25037, nu = 0.18057 (the cell), 0.2251 / 0.2345 (2 x 2)."""
    np.testing.assert_allclose(relaxed.properties(ONES)[0], [0.25037, 0.25037, 0.18057, 0.18057], rtol=5e-5)
    np.testing.assert_allclose(relaxed.properties(ONES, 2, 2)[0], [0.2251, 0.2251, 0.2345, 0.2345], rtol=2.5e-4)


def test_floor_keeps_disconnected_densities_solvable():
    """Density 0 everywhere but one row still solves: the floor holds the loose nodes."""
    rho = np.zeros((1, 42))
    rho[0, :12] = 1.0  # horizontal beams only: a mechanism without the floor
    p = relaxed.properties(rho)
    assert np.isfinite(p).all()
    with pytest.raises(InputError, match="singular"):
        relaxed.properties(np.zeros((1, 42)), 2, 2, floor=0.0)


# --- Adjoint = finite differences ---------------------------------------------------------------------


@pytest.mark.parametrize("size, n, seed", [((None, None), 6, 1), ((2, 2), 2, 2), ((4, 2), 2, 3), ((6, 6), 1, 4)])
def test_adjoint_matches_central_differences(size, n, seed):
    rho = interior(n, seed)
    props, jac = relaxed.gradient(rho, *size)
    fd_props, fd_jac = relaxed.fd_gradient(rho, *size, h=1e-6)
    np.testing.assert_allclose(props, fd_props, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(props, relaxed.properties(rho, *size), rtol=1e-10, atol=1e-14)
    assert_jacobian_close(jac, fd_jac, 1e-5)


@pytest.mark.parametrize("penalty, floor", [(1.0, 0.0), (2.0, 1e-3), (4.5, 1e-6)])
def test_adjoint_matches_central_differences_for_other_simp_parameters(penalty, floor):
    rho = interior(3, 8)
    _, jac = relaxed.gradient(rho, 2, 4, penalty=penalty, floor=floor)
    _, fd_jac = relaxed.fd_gradient(rho, 2, 4, h=1e-6, penalty=penalty, floor=floor)
    assert_jacobian_close(jac, fd_jac, 1e-5)


def test_adjoint_matches_a_directional_difference_on_a_large_tiling():
    """J v = (P(rho + h v) - P(rho - h v)) / 2h along a random direction, 14 x 12 cells."""
    rho = interior(1, 9)
    v = np.random.default_rng(10).normal(size=(1, 42))
    h = 1e-6
    _, jac = relaxed.gradient(rho, 14, 12)
    dp = (relaxed.properties(rho + h * v, 14, 12) - relaxed.properties(rho - h * v, 14, 12)) / (2 * h)
    np.testing.assert_allclose(jac[0] @ v[0], dp[0], rtol=1e-5)


def test_fd_gradient_is_one_sided_at_the_bounds():
    rho = interior(1, 12)
    rho[0, [3, 30]] = 0.0, 1.0
    _, jac = relaxed.gradient(rho)
    _, fd = relaxed.fd_gradient(rho, h=1e-6)
    assert np.isfinite(fd).all()
    # at rho = 0 the cubic SIMP has zero slope; at rho = 1 the one-sided error is O(h)
    np.testing.assert_allclose(fd[0, :, 3], 0.0, atol=1e-8)
    np.testing.assert_allclose(fd[0, :, 30], jac[0, :, 30], rtol=1e-4, atol=1e-9)


# --- The weighted batched solvers ------------------------------------------------------------------


def test_weighted_cell_solver_agrees_with_relaxed_path():
    rho = interior(50, 13)
    got = fem.solve_cells(np.ones_like(rho), weights=relaxed.simp(rho)).properties
    np.testing.assert_allclose(got, relaxed.properties(rho), rtol=1e-9, atol=1e-13)


def test_weighted_cell_solver_weights_only_the_designs_beams():
    """Multiplier designs * weights: a design with weights = the relaxed SIMP at penalty 1, floor 0."""
    designs = mixed_designs(4, seed=14)
    w = interior(len(designs), 15)
    got = fem.solve_cells(designs, weights=w).properties
    np.testing.assert_allclose(got, relaxed.properties(designs * w, penalty=1.0, floor=0.0), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("size", [(2, 2), (4, 2), (3, 5)])
def test_weighted_tiling_solver_agrees_with_relaxed_sparse_path(size):
    rho = interior(3, 16)
    w, shared = relaxed.tiling_weights(rho)
    got = tiling.solve_tilings(np.ones_like(rho), *size, weights=w, shared_weights=shared, strict=False).properties
    np.testing.assert_allclose(got, relaxed.properties(rho, *size), rtol=1e-9, atol=1e-13)


def test_weighted_tiling_default_shared_weight_is_the_larger_own_weight():
    rho = interior(3, 17)
    w = relaxed.simp(rho)
    a = tiling.solve_tilings(np.ones_like(rho), 4, 2, weights=w).properties
    b = tiling.solve_tilings(np.ones_like(rho), 4, 2, weights=w, shared_weights=np.maximum(w, w[:, tiling.OPPOSITE]))
    np.testing.assert_array_equal(a, b.properties)


def test_unit_weights_are_the_designs_exactly():
    designs = mixed_designs(4, seed=18)
    plain = fem.solve_cells(designs, stress=True)
    unit = fem.solve_cells(designs, weights=np.ones(designs.shape), stress=True)
    np.testing.assert_array_equal(unit.properties, plain.properties)
    np.testing.assert_array_equal(unit.peak_vm, plain.peak_vm)
    t_plain = tiling.solve_tilings(designs[:5], 4, 2, stress=True)
    t_unit = tiling.solve_tilings(designs[:5], 4, 2, weights=np.ones((5, 42)), stress=True)
    np.testing.assert_array_equal(t_unit.properties, t_plain.properties)
    np.testing.assert_array_equal(t_unit.peak_vm, t_plain.peak_vm)


def test_scaling_all_weights_scales_stiffness_and_stresses():
    """Weights t w: same displacements, so E and the beam forces scale by t, nu stays."""
    designs = mixed_designs(2, seed=19)
    w = interior(len(designs), 20)
    a = fem.solve_cells(designs, weights=w, stress=True)
    b = fem.solve_cells(designs, weights=2.5 * w, stress=True)
    np.testing.assert_allclose(b.properties, a.properties * [2.5, 2.5, 1, 1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(b.peak_vm, 2.5 * a.peak_vm, rtol=1e-10)
    ta = tiling.solve_tilings(designs[:4], 2, 4, weights=w[:4], stress=True)
    tb = tiling.solve_tilings(designs[:4], 2, 4, weights=2.5 * w[:4], stress=True)
    np.testing.assert_allclose(tb.properties, ta.properties * [2.5, 2.5, 1, 1], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(tb.peak_vm, 2.5 * ta.peak_vm, rtol=1e-9)


def test_dense_and_sparse_relaxed_solves_agree():
    rho = interior(3, 21)
    m = relaxed.mesh(1, 1)
    w = relaxed.simp(relaxed.beam_densities(rho, m))
    pd, jd = relaxed.solve_weighted(w, m, dense=True)
    ps, js = relaxed.solve_weighted(w, m, dense=False)
    np.testing.assert_allclose(ps, pd, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(js, jd, rtol=1e-8, atol=1e-12)


# --- SIMP and the chain rule -------------------------------------------------------------------------


def test_simp_at_penalty_one_and_floor_zero_is_the_multiplier():
    rho = interior(5, 22)
    np.testing.assert_array_equal(relaxed.simp(rho, 1.0, 0.0), rho)
    p = relaxed.properties(rho, penalty=1.0, floor=0.0)
    np.testing.assert_allclose(p, fem.solve_cells(np.ones_like(rho), weights=rho).properties, rtol=1e-9)
    # linear in the multiplier: E scales with it, nu does not change
    q = relaxed.properties(0.5 * rho, penalty=1.0, floor=0.0)
    np.testing.assert_allclose(q, p * [0.5, 0.5, 1, 1], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("penalty", [1.0, 3.0])
def test_euler_identity_checks_the_chain_rule(penalty):
    """At floor 0, E is homogeneous of degree `penalty` in rho and nu of degree 0 (unit cell)."""
    rho = interior(4, 23)
    p, jac = relaxed.gradient(rho, penalty=penalty, floor=0.0)
    euler = np.einsum("bpk,bk->bp", jac, rho)
    np.testing.assert_allclose(euler[:, :2], penalty * p[:, :2], rtol=1e-9)
    np.testing.assert_allclose(euler[:, 2:], 0.0, atol=1e-9 * np.abs(jac).max())


def test_euler_identity_in_the_tiling_multipliers():
    """Sum_e w_e dE/dw_e = E and sum_e w_e dnu/dw_e = 0 on the assembled 2 x 4 tiling."""
    m = relaxed.mesh(2, 4)
    w = relaxed.simp(relaxed.beam_densities(interior(2, 24), m))
    p, dw = relaxed.solve_weighted(w, m)
    euler = np.einsum("bpm,bm->bp", dw, w)
    np.testing.assert_allclose(euler[:, :2], p[:, :2], rtol=1e-9)
    np.testing.assert_allclose(euler[:, 2:], 0.0, atol=1e-9 * np.abs(dw).max())


def test_union_rule_is_the_spec_rule_at_zero_one():
    d = mixed_designs(4, seed=25).astype(float)
    np.testing.assert_array_equal(relaxed.union(d), np.maximum(d, d[:, tiling.OPPOSITE]))
    np.testing.assert_allclose(relaxed.simp_derivative(np.array([0.3]), 3.0, 0.1), [0.9 * 3 * 0.09])


# --- Symmetry ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(None, None), (4, 2)])
def test_mirrored_densities_give_the_same_properties_and_the_mirrored_jacobian(size):
    rho = interior(3, 26)
    p, jac = relaxed.gradient(rho, *size)
    pm, jm = relaxed.gradient(lattice.transform(rho, lattice.MIRROR_X), *size)
    np.testing.assert_allclose(pm, p, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(jm[:, :, lattice.MIRROR_X], jac, rtol=1e-7, atol=1e-10 * np.abs(jac).max())


def test_transposed_densities_swap_directions():
    rho = interior(2, 27)
    p, jac = relaxed.gradient(rho, 4, 2)
    pt, jt = relaxed.gradient(lattice.transform(rho, lattice.SWAP_XY), 2, 4)
    swap = [1, 0, 3, 2]
    np.testing.assert_allclose(pt, p[:, swap], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(jt[:, swap][:, :, lattice.SWAP_XY], jac, rtol=1e-7, atol=1e-10 * np.abs(jac).max())


# --- Bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rho, match",
    [
        (np.full(41, 0.5), "shape"),
        (np.full((2, 43), 0.5), "shape"),
        (np.full((2, 3, 42), 0.5), "shape"),
        (np.r_[np.full(41, 0.5), 1.2], "b41 is 1.2"),
        (np.r_[-0.1, np.full(41, 0.5)], r"\[0, 1\].*b00"),
        (np.r_[np.full(20, 0.5), np.nan, np.full(21, 0.5)], "b20 is NaN"),
        (np.array(["0.5"] * 42), "dtype"),
    ],
)
def test_bad_densities_raise_input_error(rho, match):
    for call in (relaxed.properties, relaxed.gradient, relaxed.fd_gradient):
        with pytest.raises(InputError, match=match):
            call(rho)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d1": 2}, "both d1 and d2"),
        ({"d1": 0, "d2": 2}, "d1"),
        ({"d1": 2, "d2": 2.5}, "d2"),
        ({"d1": 22, "d2": 2}, "d1"),
        ({"penalty": 0.5}, "penalty"),
        ({"penalty": np.nan}, "penalty"),
        ({"floor": 1.0}, "floor"),
        ({"floor": -1e-6}, "floor"),
    ],
)
def test_bad_sizes_and_simp_parameters_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        relaxed.gradient(np.full(42, 0.5), **kwargs)


def test_bad_fd_step_raises_input_error():
    with pytest.raises(InputError, match="h must be"):
        relaxed.fd_gradient(np.full(42, 0.5), h=0.0)


def test_bad_solver_weights_raise_input_error():
    designs = mixed_designs(1, seed=28)
    with pytest.raises(InputError, match="shape"):
        fem.solve_cells(designs, weights=np.ones((len(designs), 41)))
    bad = np.ones(designs.shape)
    bad[1, 7] = np.nan
    with pytest.raises(InputError, match="row 1 beam 7"):
        fem.solve_cells(designs, weights=bad)
    bad[1, 7] = -0.5
    with pytest.raises(InputError, match=">= 0"):
        tiling.solve_tilings(designs, 2, 2, weights=bad)
    zero = np.ones(designs.shape)
    zero[2, designs[2].astype(bool)] = 0.0
    with pytest.raises(InputError, match="disconnected"):
        fem.solve_cells(designs, weights=zero)
    shared = np.ones(designs.shape)
    shared[0, 0] = 0.5  # beam 0 and its opposite 9 are one beam: their shared weights must agree
    with pytest.raises(InputError, match="opposite"):
        tiling.solve_tilings(designs, 2, 2, weights=np.ones(designs.shape), shared_weights=shared)
