"""The sorted-key lookup (deepdram.data.keys) against NumPy's own membership test."""

from __future__ import annotations

import numpy as np

from deepdram.data.keys import sorted_index


def test_sorted_index_finds_what_numpy_isin_finds():
    """The key lookup of `evaluate`'s fresh set and the design cache: a key's index in the sorted
    keys where np.isin finds it, -1 where it does not, edges and an empty table included."""
    rng = np.random.default_rng(0)
    known = np.unique(rng.integers(0, 2**63, 5000, dtype=np.uint64))
    keys = np.concatenate([rng.choice(known, 300), rng.integers(0, 2**63, 700, dtype=np.uint64),
                           known[[0, -1]], np.array([0, 2**64 - 1], np.uint64)])
    at = sorted_index(known, keys)
    np.testing.assert_array_equal(at >= 0, np.isin(keys, known))
    np.testing.assert_array_equal(known[at[at >= 0]], keys[at >= 0])
    assert (at >= 0).sum() >= 302
    assert (sorted_index(np.zeros(0, np.uint64), keys) == -1).all()
