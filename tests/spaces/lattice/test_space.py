"""The `LatticeSpace` seam (deepdram.spaces.lattice.space) against independent truth.

Truth sources: the SPEC column names (written out here), the FE solvers themselves for the
physics of the symmetry group (each image, solved again, must have the gathered properties at the
gathered sizes), group closure, `geometry.to_keys` and a brute-force Python set for dedupe, and the
direct solver calls for `evaluate`.
"""

from __future__ import annotations

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import fem, tiling
from deepdram.spaces.lattice import geometry as G
from deepdram.spaces.lattice.space import LatticeSpace
from deepdram.spaces.registry import get

SPACE = LatticeSpace()
ZGS = (2.5, 3.0, 3.5, 4.0, 4.5)
MIRRORS = {"identity", "mirror_x", "mirror_y", "mirror_xy"}
TOL = dict(rtol=1e-9, atol=1e-12)


def designs_all_zg(per_zg: int, seed: int) -> np.ndarray:
    return np.concatenate([G.sample_designs(z, per_zg, seed=seed + i) for i, z in enumerate(ZGS)])


# --- Columns ---------------------------------------------------------------------------------------


def test_columns_are_the_spec_columns():
    """b00..b41 (SPEC 1), E11, E22, nu12, nu21 (SPEC 3), d1, d2 (SPEC 4); registered as 'lattice'."""
    assert SPACE.variables == tuple(f"b{k:02d}" for k in range(42))
    assert SPACE.properties == ("E11", "E22", "nu12", "nu21")
    assert SPACE.conditions == ("d1", "d2")
    assert (SPACE.n_variables, SPACE.n_properties, SPACE.n_conditions) == (42, 4, 2)
    assert SPACE.binary
    assert SPACE.name == "lattice" and isinstance(get("lattice"), LatticeSpace)


# --- Symmetries ------------------------------------------------------------------------------------


def test_symmetries_are_eight_permutations_identity_first_and_a_group():
    group = SPACE.symmetries()
    assert len(group) == 8
    ident = group[0]
    assert ident.name == "identity"
    np.testing.assert_array_equal(ident.variables, np.arange(42))
    np.testing.assert_array_equal(ident.properties, np.arange(4))
    np.testing.assert_array_equal(ident.conditions, np.arange(2))
    assert len({s.name for s in group}) == 8
    elements = set()
    for s in group:
        assert sorted(s.variables.tolist()) == list(range(42))
        assert sorted(s.properties.tolist()) == list(range(4))
        assert sorted(s.conditions.tolist()) == list(range(2))
        elements.add((tuple(s.variables), tuple(s.properties), tuple(s.conditions)))
    assert len(elements) == 8  # eight distinct beam permutations
    # closed under composition: applying s then t gathers with s[t] (the dihedral group D4)
    for s in group:
        for t in group:
            comp = (tuple(s.variables[t.variables]), tuple(s.properties[t.properties]),
                    tuple(s.conditions[t.conditions]))
            assert comp in elements, (s.name, t.name)


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    return designs_all_zg(8, seed=31)  # 40 random valid designs


def test_symmetry_images_of_unit_cells_have_the_gathered_fe_properties(cells):
    """FE of x[:, variables] == FE(x)[:, properties] for every symmetry (the physics check)."""
    p = SPACE.evaluate(cells).properties
    assert np.abs(p[:, 0] - p[:, 1]).max() > 1e-3  # random cells are anisotropic: transposes have teeth
    for s in SPACE.symmetries():
        image = cells[:, s.variables]
        assert G.is_valid(image).all()
        if s.name != "identity":
            assert (image != cells).any(axis=1).mean() > 0.9  # the images are other designs
        np.testing.assert_allclose(SPACE.evaluate(image).properties, p[:, s.properties], **TOL, err_msg=s.name)


def test_symmetry_images_of_a_4x2_tiling_have_the_gathered_fe_properties(cells):
    """The same on a 4 x 2 tiling, the image solved at the gathered sizes (2 x 4 for transposes)."""
    d = cells[::4]  # 10 designs, two per Z_g
    c = np.tile([4, 2], (len(d), 1))
    p = SPACE.evaluate(d, c).properties
    assert np.abs(p[:, 0] - p[:, 1]).max() > 1e-3
    for s in SPACE.symmetries():
        cond = c[:, s.conditions]
        np.testing.assert_array_equal(cond[0], [2, 4] if s.name.startswith("transpose") else [4, 2])
        got = SPACE.evaluate(d[:, s.variables], cond).properties
        np.testing.assert_allclose(got, p[:, s.properties], **TOL, err_msg=s.name)


def test_symmetry_sets():
    """'mirrors' is exactly the four property-keeping symmetries; 'none' the identity; 'all' all 8."""
    group = SPACE.symmetries()
    keeping = [s for s in group if np.array_equal(s.properties, np.arange(4))
               and np.array_equal(s.conditions, np.arange(2))]
    mirrors = SPACE.symmetry_set("mirrors")
    assert [s.name for s in mirrors] == [s.name for s in keeping]
    assert {s.name for s in mirrors} == MIRRORS
    assert all(s.keeps_properties for s in mirrors)
    assert not any(s.keeps_properties for s in group if s.name not in MIRRORS)
    for s in group:
        if s.name not in MIRRORS:  # the transposes swap E11 <-> E22, nu12 <-> nu21 and d1 <-> d2
            np.testing.assert_array_equal(s.properties, [1, 0, 3, 2])
            np.testing.assert_array_equal(s.conditions, [1, 0])
    assert [s.name for s in SPACE.symmetry_set("none")] == ["identity"]
    assert [s.name for s in SPACE.symmetry_set("all")] == [s.name for s in group]
    with pytest.raises(InputError, match="symmetries must be one of"):
        SPACE.symmetry_set("rotations")


# --- Keys and dedupe -------------------------------------------------------------------------------


def test_keys_equal_geometry_keys():
    rng = np.random.default_rng(8)
    d = np.concatenate([G.random_subsets(rng, 50, n) for n in range(1, 43)])
    keys = SPACE.keys(d)
    assert keys.dtype == np.uint64
    np.testing.assert_array_equal(keys, G.to_keys(d))


def test_distinct_valid_drops_invalid_and_repeated_designs():
    """Against a brute-force Python set of the valid rows' bit tuples; `seen` keys are dropped too."""
    rng = np.random.default_rng(12)
    valid = designs_all_zg(30, seed=5)
    noise = G.random_subsets(rng, 300, 18)  # 18 beams: mostly disconnected
    assert (~G.is_valid(noise)).sum() > 100
    pool = np.concatenate([valid, noise, valid[::3], noise[::7]])
    pool = pool[rng.permutation(len(pool))]
    truth = {tuple(int(b) for b in row) for row in pool if G.is_valid(row[None])[0]}
    n_valid_rows = sum(bool(G.is_valid(row[None])[0]) for row in pool)

    out, keys, n_valid, n_distinct = SPACE.distinct_valid(pool)
    assert {tuple(int(b) for b in row) for row in out} == truth
    assert len(out) == len(truth) == n_distinct
    assert n_valid == n_valid_rows > n_distinct  # repeats counted as valid rows, kept once
    np.testing.assert_array_equal(keys, G.to_keys(out))
    assert np.all(np.diff(keys.astype(np.float64)) > 0)  # sorted by key, unique

    seen = np.sort(G.to_keys(valid[:40]))
    out2, keys2, _, n2 = SPACE.distinct_valid(pool, seen=seen)
    truth2 = truth - {tuple(int(b) for b in row) for row in valid[:40]}
    assert {tuple(int(b) for b in row) for row in out2} == truth2 and n2 == len(truth2)
    assert not np.isin(keys2, seen).any()


# --- Checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [2, 0.5, -1])
def test_check_designs_names_row_and_column(bad_value):
    d = np.ones((6, 42))
    d[4, 17] = bad_value
    with pytest.raises(InputError) as info:
        SPACE.check_designs(d)
    msg = str(info.value)
    assert "row 4" in msg and "b17" in msg and "0 or 1" in msg


def test_check_designs_names_a_disconnected_row_and_passes_good_ones():
    d = np.ones((5, 42), dtype=np.uint8)
    d[2, [0, 12, 24]] = 0  # node 0 isolated
    with pytest.raises(InputError, match=r"(?s)\brow 2\b.*connected"):
        SPACE.check_designs(d)
    out = SPACE.check_designs(d, require_valid=False)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, d)
    with pytest.raises(InputError, match="42"):
        SPACE.check_designs(np.ones((2, 41)))


# --- The oracle ------------------------------------------------------------------------------------


def test_evaluate_equals_the_solvers_with_and_without_stresses(cells):
    d = cells[:12]
    r = SPACE.evaluate(d, extras=("vm",))
    ref = fem.solve_cells(d, stress=True)
    np.testing.assert_allclose(r.properties, ref.properties, rtol=1e-12, atol=0)
    np.testing.assert_allclose(r.extras["vm"], ref.peak_vm, rtol=1e-12, atol=0)
    assert set(r.extras) == {"vm"} and r.extras["vm"].shape == (12, 2)
    plain = SPACE.evaluate(d)
    assert plain.extras == {}
    np.testing.assert_allclose(plain.properties, ref.properties, rtol=1e-12, atol=0)

    d1, d2 = np.array([2, 4, 6, 2] * 3), np.array([2, 2, 4, 6] * 3)
    t = SPACE.evaluate(d, np.stack([d1, d2], axis=1), extras=("vm",))
    tref = tiling.solve_tilings(d, d1, d2, stress=True)
    np.testing.assert_allclose(t.properties, tref.properties, rtol=1e-12, atol=0)
    np.testing.assert_allclose(t.extras["vm"], tref.peak_vm, rtol=1e-12, atol=0)
    # the test has teeth: tilings differ from the cells
    assert np.abs(t.properties - r.properties).max() > 1e-3


def test_evaluate_rejects_unknown_extras_and_bad_input():
    d = np.ones((1, 42), np.uint8)
    with pytest.raises(InputError, match=r"(?s)unknown oracle extra.*'stress'.*vm"):
        SPACE.evaluate(d, extras=("stress",))
    bad = np.ones((2, 42), np.uint8)
    bad[1] = 0
    with pytest.raises(InputError, match=r"(?s)\brow 1\b.*connected"):
        SPACE.evaluate(bad)
    with pytest.raises(InputError, match="d1 must be even"):
        SPACE.evaluate(d, [[3, 2]])
