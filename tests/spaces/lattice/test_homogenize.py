"""Tests of deepdram.spaces.lattice.homogenize (periodic homogenisation) and the in-model Homogenization layer.

Truth: closed-form lattice stiffnesses (a square grid of beams: axial C11 = t/s exactly, bending-
dominated shear C66 = (t/s)^3 / 2 with Timoshenko's shear correction; the fully braced grid
against the pin-jointed truss estimate), exact symmetries of the design, and the dense NumPy
assembly as an independent path to the compiled kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import geometry as lattice
from deepdram.spaces.lattice import homogenize as H
from deepdram.spaces.lattice.constants import E_B, G_B, K_S, SPACING, THICKNESS, ZG_VALUES

T_OVER_S = THICKNESS / SPACING
GRID = np.zeros((1, 42), np.uint8)
GRID[0, :24] = 1  # the 24 horizontal and vertical beams, no diagonals
FULL = np.ones((1, 42), np.uint8)


def test_square_grid_matches_closed_form():
    """Square grid: C11 = C22 = E t / s (pure axial), no Poisson or shear coupling, and
    C66 = E (t/s)^3 / 2 / (1 + phi), phi = 12 E I / (K_s G A s^2) (Timoshenko bending)."""
    c = H.stiffness(GRID)[0]
    np.testing.assert_allclose([c[0, 0], c[1, 1]], T_OVER_S, rtol=1e-12)
    np.testing.assert_allclose([c[0, 1], c[0, 2], c[1, 2]], 0.0, atol=1e-14)
    phi = T_OVER_S**2 * E_B / (K_S * G_B)
    np.testing.assert_allclose(c[2, 2], T_OVER_S**3 / 2 / (1 + phi), rtol=1e-9)


def test_braced_grid_close_to_truss_estimate():
    """All 42 beams: the pin-jointed truss gives C11 = (t/s)(1 + 1/sqrt 2), C12 = C66 = (t/s)/sqrt 2;
    rigid joints add a little bending stiffness (within 2 %)."""
    c = H.stiffness(FULL)[0]
    diag = T_OVER_S / np.sqrt(2)
    np.testing.assert_allclose([c[0, 0], c[1, 1], c[0, 1], c[2, 2]],
                               [T_OVER_S + diag, T_OVER_S + diag, diag, diag], rtol=0.02)
    assert abs(c[0, 2]) < 1e-12 and abs(c[1, 2]) < 1e-12


@pytest.mark.parametrize("zg", ZG_VALUES)
def test_symmetries_and_positive_definite(zg):
    """Mirroring flips the sign of the normal-shear couplings; transposing swaps 1 and 2; C is SPD."""
    d = lattice.sample_designs(zg, 200, seed=11)
    c = H.stiffness(d)
    assert np.all(np.linalg.eigvalsh(c) > 0)
    for perm in (lattice.MIRROR_X, lattice.MIRROR_Y):
        m = H.stiffness(lattice.transform(d, perm))
        np.testing.assert_allclose(m[:, :2, :2], c[:, :2, :2], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(m[:, :2, 2], -c[:, :2, 2], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(m[:, 2, 2], c[:, 2, 2], rtol=1e-9)
    s = H.stiffness(lattice.transform(d, lattice.SWAP_XY))
    swap = [1, 0, 2]
    np.testing.assert_allclose(s, c[:, swap][:, :, swap], rtol=1e-9, atol=1e-14)
    # the test has teeth: random cells are anisotropic and coupled
    assert np.abs(c[:, 0, 2]).max() > 1e-3


def test_kernel_matches_dense_assembly():
    """The compiled sparse kernel and the dense NumPy assembly + LU agree to round-off."""
    d = np.concatenate([lattice.sample_designs(zg, 100, seed=3) for zg in ZG_VALUES])
    np.testing.assert_allclose(H.stiffness(d), H.stiffness_dense(d), rtol=1e-9, atol=1e-14)


def test_features_are_engineering_constants():
    """E1 = 1/S11 and nu12 = -S12/S11 of the homogenised medium; for the square grid E1 = C11 and
    nu12 = 0; the features of the full design are symmetric in 1 and 2."""
    f = dict(zip(H.FEATURE_NAMES, H.features(GRID)[0]))
    assert f["E1"] == pytest.approx(T_OVER_S, rel=1e-12) and abs(f["nu12"]) < 1e-12
    g = dict(zip(H.FEATURE_NAMES, H.features(FULL)[0]))
    c = H.stiffness(FULL)[0]
    s = np.linalg.inv(c)
    assert g["E1"] == pytest.approx(1 / s[0, 0]) and g["nu12"] == pytest.approx(-s[0, 1] / s[0, 0])
    assert g["E1"] == pytest.approx(g["E2"]) and g["nu12"] == pytest.approx(g["nu21"])


def test_invalid_designs_are_refused():
    """A disconnected design has no finite homogenised stiffness: refused, naming the row."""
    bad = np.zeros((2, 42), np.uint8)
    bad[0] = 1
    with pytest.raises(InputError, match="row 1"):
        H.stiffness(bad)


def test_keras_layer_matches_numpy(tmp_path):
    """The in-model layer reproduces the float64 reference (to 1e-4 of each feature's range) and
    survives a save / load round trip inside a model."""
    import keras

    from deepdram.learn import models as M
    from deepdram.spaces.lattice.layers import HOMOGENIZED, Homogenization

    d = np.concatenate([lattice.sample_designs(zg, 200, seed=5) for zg in ZG_VALUES])
    ref = H.features(d)
    inp = keras.Input((42,))
    model = keras.Model(inp, Homogenization(name="homogenization")(inp))
    got = M.predict(model, d)
    scale = np.abs(ref).max(axis=0)
    assert np.max(np.abs(got - ref) / scale) < 1e-4
    path = M.save_model(model, tmp_path / "h.keras")
    np.testing.assert_allclose(M.predict(M.load_model(path), d), got, rtol=1e-6, atol=1e-9)
    assert HOMOGENIZED.n_features == H.N_FEATURES
