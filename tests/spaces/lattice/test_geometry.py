"""Tests of deepdram.spaces.lattice.geometry against independent truth.

Truth sources: the geometry rules of SPEC section 1 (re-derived here), networkx connected
components for validity, the acceptance rates measured in SPEC section 1, Python integer
arithmetic for the packed keys, coordinate mirrors for the symmetry permutations, and the
input rules (42 entries, 0 or 1, connected) for the error messages.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import geometry as lattice

ZGS = (2.5, 3.0, 3.5, 4.0, 4.5)
SPEC_ACCEPTANCE = {2.5: 0.331, 3.0: 0.650, 3.5: 0.856, 4.0: 0.956, 4.5: 0.993}


def nx_connected(design) -> bool:
    """True when all 16 nodes form one connected component (networkx)."""
    g = nx.Graph()
    g.add_nodes_from(range(16))
    g.add_edges_from((int(a), int(b)) for a, b in lattice.BEAMS[np.asarray(design).astype(bool)])
    return nx.is_connected(g)


# --- Geometry (SPEC section 1) -----------------------------------------------------------------


def test_beam_table_follows_spec_order():
    """BEAMS equals the canonical order of SPEC 1, re-derived here from (i, j) coordinates."""
    node = lambda i, j: 4 * j + i  # noqa: E731
    expected = [(node(i, j), node(i + 1, j)) for j in range(4) for i in range(3)]
    expected += [(node(i, j), node(i, j + 1)) for j in range(3) for i in range(4)]
    for j in range(3):
        for i in range(3):
            expected += [(node(i, j), node(i + 1, j + 1)), (node(i + 1, j), node(i, j + 1))]
    assert lattice.BEAMS.shape == (42, 2)
    assert [tuple(map(int, b)) for b in lattice.BEAMS] == expected
    # spot checks written out by hand
    assert tuple(lattice.BEAMS[11]) == (14, 15) and tuple(lattice.BEAMS[23]) == (11, 15)
    assert tuple(lattice.BEAMS[24]) == (0, 5) and tuple(lattice.BEAMS[41]) == (11, 14)


def test_node_coordinates_and_beam_lengths():
    """Node n = 4 j + i sits at (7.5 i, 7.5 j); beams are 24 of 7.5 mm and 18 of 7.5 sqrt(2) mm."""
    assert lattice.NODE_XY.shape == (16, 2)
    for n in range(16):
        assert tuple(lattice.NODE_XY[n]) == (7.5 * (n % 4), 7.5 * (n // 4))
    xy = lattice.NODE_XY[lattice.BEAMS]
    length = np.hypot(*(xy[:, 1] - xy[:, 0]).T)
    np.testing.assert_allclose(length[:24], 7.5)
    np.testing.assert_allclose(length[24:], 7.5 * np.sqrt(2))
    assert len({tuple(sorted(b)) for b in lattice.BEAMS.tolist()}) == 42


@pytest.mark.parametrize("zg, n_beams", [(2.5, 20), (3.0, 24), (3.5, 28), (4.0, 32), (4.5, 36)])
def test_beams_for_zg(zg, n_beams):
    """beams_for_zg gives Z_g * 16 / 2 and zg_of inverts it."""
    assert lattice.beams_for_zg(zg) == n_beams
    d = np.zeros((1, 42), np.uint8)
    d[0, :n_beams] = 1
    assert lattice.zg_of(d)[0] == zg


# --- Validity ------------------------------------------------------------------------------------


def test_validity_agrees_with_networkx():
    """is_valid equals networkx connectivity on 12,500 random subsets of 10..34 beams."""
    rng = np.random.default_rng(2024)
    d = np.concatenate([lattice.random_subsets(rng, 500, n) for n in range(10, 35)])
    truth = np.array([nx_connected(x) for x in d])
    assert truth.sum() > 3000 and (~truth).sum() > 3000  # both outcomes common
    np.testing.assert_array_equal(lattice.is_valid(d), truth)


def test_validity_edge_cases():
    """No beams, all beams, a spanning tree, and one isolated node are classified correctly."""
    empty, full = np.zeros(42, np.uint8), np.ones(42, np.uint8)
    tree = np.zeros(42, np.uint8)
    tree[:12] = 1  # four horizontal rows
    tree[[12, 16, 20]] = 1  # joined by the left column: 15 beams, a spanning tree
    isolated = full.copy()
    isolated[[0, 12, 24]] = 0  # every beam at node 0 removed
    d = np.stack([empty, full, tree, isolated])
    np.testing.assert_array_equal(lattice.is_valid(d), [False, True, True, False])
    assert [nx_connected(x) for x in d] == [False, True, True, False]


@pytest.mark.parametrize("zg", ZGS)
def test_acceptance_rate_matches_spec(zg):
    """Share of valid uniform random subsets is within 1.5 points of SPEC 1 (20,000 draws)."""
    rng = np.random.default_rng(int(zg * 10))
    d = lattice.random_subsets(rng, 20_000, lattice.beams_for_zg(zg))
    rate = lattice.is_valid(d).mean()
    # the sampling standard error is at most 0.35 points, so 1.5 points is > 4 sigma
    assert abs(rate - SPEC_ACCEPTANCE[zg]) < 0.015, rate


def test_random_subsets_shape_and_counts():
    """random_subsets gives uint8 0/1 rows with exactly n distinct beams, all beams used."""
    d = lattice.random_subsets(np.random.default_rng(1), 3000, 17)
    assert d.shape == (3000, 42) and d.dtype == np.uint8
    assert set(np.unique(d)) == {0, 1}
    assert np.all(d.sum(axis=1) == 17)
    freq = d.mean(axis=0)  # uniform: every beam chosen with probability 17/42
    assert np.all(np.abs(freq - 17 / 42) < 0.05)


# --- Sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("zg", ZGS)
def test_sample_designs_count_validity_determinism(zg):
    """Seeded sampling is reproducible, has 8 Z_g beams per row and only connected designs."""
    a = lattice.sample_designs(zg, 400, seed=11)
    b = lattice.sample_designs(zg, 400, seed=11)
    c = lattice.sample_designs(zg, 400, seed=12)
    assert a.shape == (400, 42) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert np.all(a.sum(axis=1) == int(8 * zg))
    assert all(nx_connected(x) for x in a)
    assert len(np.unique(lattice.to_keys(a))) == 400


def test_sample_designs_unique_large():
    """unique=True: 200,000 draws at Z_g = 4.5 have 200,000 distinct keys; unique=False repeats."""
    n = 200_000
    u = lattice.sample_designs(4.5, n, seed=5)
    assert u.shape == (n, 42)
    assert len(np.unique(lattice.to_keys(u))) == n
    # C(42, 36) ~ 5.2e6, so ~3,800 repeated pairs are expected without deduplication
    r = lattice.sample_designs(4.5, n, seed=5, unique=False)
    assert len(np.unique(lattice.to_keys(r))) < n - 1000


def test_sample_designs_zero():
    """n = 0 gives an empty (0, 42) array."""
    assert lattice.sample_designs(3.0, 0, seed=1).shape == (0, 42)


@pytest.mark.parametrize("zg", [2.7, 5.0, 0.0, 2.0])
def test_sample_designs_unknown_zg(zg):
    """An unsupported Z_g raises InputError naming the value."""
    with pytest.raises(InputError, match=str(zg)):
        lattice.sample_designs(zg, 10, seed=1)


def test_sample_designs_negative_n():
    """A negative count raises InputError."""
    with pytest.raises(InputError, match="-3"):
        lattice.sample_designs(3.0, -3, seed=1)


# --- Encodings -----------------------------------------------------------------------------------


def test_keys_round_trip():
    """from_keys(to_keys(d)) == d for random designs of any beam count, including all/none."""
    rng = np.random.default_rng(3)
    d = np.concatenate([lattice.random_subsets(rng, 200, n) for n in range(1, 43)])
    d = np.concatenate([d, np.zeros((1, 42), np.uint8)])
    keys = lattice.to_keys(d)
    assert keys.dtype == np.uint64 and keys.shape == (len(d),)
    np.testing.assert_array_equal(lattice.from_keys(keys), d)
    assert lattice.from_keys(keys).dtype == np.uint8


def test_key_bit_k_is_beam_k():
    """A one-hot design for beam k packs to 1 << k; random keys equal sum(d_k << k)."""
    keys = lattice.to_keys(np.eye(42, dtype=np.uint8))
    assert [int(k) for k in keys] == [1 << k for k in range(42)]
    np.testing.assert_array_equal(lattice.from_keys(np.array([1 << 41], np.uint64))[0],
                                  np.eye(42, dtype=np.uint8)[41])
    d = lattice.random_subsets(np.random.default_rng(4), 100, 21)
    expected = [sum(int(b) << k for k, b in enumerate(row)) for row in d]
    assert [int(k) for k in lattice.to_keys(d)] == expected
    assert int(lattice.to_keys(np.ones((1, 42)))[0]) == (1 << 42) - 1


def test_frame_round_trip():
    """to_frame gives columns b00..b41 (uint8) plus extras; from_frame recovers the designs."""
    d = lattice.sample_designs(3.0, 50, seed=9)
    df = lattice.to_frame(d, E11=np.arange(50.0))
    assert list(df.columns) == [f"b{k:02d}" for k in range(42)] + ["E11"]
    assert all(df[f"b{k:02d}"].dtype == np.uint8 for k in range(42))
    np.testing.assert_array_equal(df["b07"].to_numpy(), d[:, 7])
    back = lattice.from_frame(df)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, d)
    # column order in the frame does not matter
    np.testing.assert_array_equal(lattice.from_frame(df[df.columns[::-1]]), d)


def test_from_frame_missing_column():
    """from_frame names a missing bit column."""
    df = lattice.to_frame(lattice.sample_designs(3.0, 5, seed=9)).drop(columns=["b17"])
    with pytest.raises(InputError, match="b17"):
        lattice.from_frame(df)


# --- Symmetries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fx",
    [
        ("MIRROR_X", lambda x, y: (22.5 - x, y)),
        ("MIRROR_Y", lambda x, y: (x, 22.5 - y)),
        ("SWAP_XY", lambda x, y: (y, x)),
    ],
)
def test_symmetry_permutations_follow_coordinates(name, fx):
    """Beam perm[k] has the mirrored end points of beam k; each map is an involution."""
    perm = getattr(lattice, name)
    assert sorted(perm.tolist()) == list(range(42))
    xy = lattice.NODE_XY
    for k, (a, b) in enumerate(lattice.BEAMS):
        ends = {fx(*xy[a]), fx(*xy[b])}
        a2, b2 = lattice.BEAMS[perm[k]]
        assert ends == {tuple(xy[a2]), tuple(xy[b2])}
    np.testing.assert_array_equal(perm[perm], np.arange(42))


@pytest.mark.parametrize("zg", ZGS)
def test_transformed_designs_stay_valid(zg):
    """Mirrored and transposed designs keep their beam count and stay valid (and differ)."""
    d = lattice.sample_designs(zg, 300, seed=21)
    for perm in (lattice.MIRROR_X, lattice.MIRROR_Y, lattice.SWAP_XY):
        t = lattice.transform(d, perm)
        np.testing.assert_array_equal(t.sum(axis=1), d.sum(axis=1))
        assert lattice.is_valid(t).all()
        assert all(nx_connected(x) for x in t[:30])
        assert (t != d).any(axis=1).mean() > 0.9
        np.testing.assert_array_equal(lattice.transform(t, perm), d)


# --- Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(41,), (3, 41), (5, 43)])
def test_check_designs_wrong_length(shape):
    """A design without 42 entries raises InputError naming the 42-entry rule."""
    with pytest.raises(InputError, match="42"):
        lattice.check_designs(np.ones(shape))


def test_check_designs_accepts_single_row_and_bool():
    """A 1-D design of 42 entries is one row; bool and float 0/1 are converted to uint8."""
    out = lattice.check_designs(np.ones(42, dtype=bool))
    assert out.shape == (1, 42) and out.dtype == np.uint8
    assert lattice.check_designs(np.ones((2, 42), dtype=float)).dtype == np.uint8


@pytest.mark.parametrize("bad_value", [2, 0.5, -1, np.nan])
def test_check_designs_non_binary(bad_value):
    """An entry other than 0/1 raises InputError naming the row, the column and the rule."""
    d = np.ones((6, 42))
    d[3, 5] = bad_value
    with pytest.raises(InputError) as info:
        lattice.check_designs(d)
    msg = str(info.value)
    assert "row 3" in msg and "0 or 1" in msg and "b05" in msg


def test_check_designs_non_numeric():
    """Text entries raise InputError naming the 0-or-1 rule."""
    with pytest.raises(InputError, match="0 or 1"):
        lattice.check_designs(np.array([["1"] * 42]))


def test_check_designs_disconnected():
    """A disconnected design raises InputError naming its row and the connectivity rule."""
    d = np.ones((6, 42), dtype=np.uint8)
    d[3, [0, 12, 24]] = 0  # node 0 isolated
    with pytest.raises(InputError, match=r"(?s)\brows? 3\b.*connected"):
        lattice.check_designs(d)
    # without the validity requirement the same array passes unchanged
    np.testing.assert_array_equal(lattice.check_designs(d, require_valid=False), d)


def test_check_designs_ragged_rows():
    """Rows of unequal length raise InputError naming the short row and the 42 rule."""
    rows = [[1] * 42, [1] * 42, [1] * 42, [1] * 41]
    with pytest.raises(InputError, match=r"(?s)42.*row 3 has 41"):
        lattice.check_designs(rows)
