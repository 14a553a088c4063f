"""Design checks, column names and the enumeration / sampling helpers of the composite space."""

import itertools
from math import comb

import numpy as np
import pandas as pd
import pytest

from deepdram.errors import InputError
from deepdram.spaces.composite.enumeration import designs_range, n_designs, rank_designs, sample_designs, unrank_soft
from deepdram.spaces.composite.fem import DESIGN_COLUMNS, check_designs, design_columns, toughness


def test_design_columns_are_x00_to_x31():
    cols = design_columns()
    assert cols == DESIGN_COLUMNS
    assert len(cols) == 32 and cols[0] == "x00" and cols[7] == "x07" and cols[31] == "x31"


def test_check_designs_accepts_arrays_lists_and_tables():
    d = sample_designs(3, 8, seed=0)
    np.testing.assert_array_equal(check_designs(d.astype(float)), d)
    assert check_designs(list(d[0])).shape == (1, 32)
    df = pd.DataFrame(d, columns=DESIGN_COLUMNS).assign(extra=1)[["extra", *DESIGN_COLUMNS[::-1]]]
    np.testing.assert_array_equal(check_designs(df), d)
    assert check_designs(d, soft_count=8).dtype == np.uint8


@pytest.mark.parametrize("bad", [np.ones((2, 31)), np.ones(33), np.ones((2, 4, 8))])
def test_wrong_number_of_columns_is_named(bad):
    with pytest.raises(InputError, match=r"needs 32 columns x00\.\.x31"):
        toughness(bad)


def test_ragged_rows_name_the_row():
    with pytest.raises(InputError, match=r"32 columns x00\.\.x31; row 1 has 30"):
        check_designs([[1] * 32, [1] * 30])


def test_missing_table_columns_are_named():
    df = pd.DataFrame(np.ones((2, 32)), columns=DESIGN_COLUMNS).drop(columns=["x05"])
    with pytest.raises(InputError, match="missing x05"):
        check_designs(df)


def test_entries_not_0_or_1_name_row_and_column():
    d = np.ones((4, 32))
    d[2, 13] = 2
    with pytest.raises(InputError, match=r"0 \(soft\) or 1 \(stiff\): row 2 column x13 is 2"):
        toughness(d)
    d[2, 13] = 0.5
    with pytest.raises(InputError, match="row 2 column x13 is 0.5"):
        check_designs(d)
    with pytest.raises(InputError, match="numbers 0 .* or 1"):
        check_designs(np.array([["a"] * 32]))


def test_wrong_soft_count_names_row_and_count():
    d = sample_designs(5, 8, seed=1)
    d[3, np.flatnonzero(d[3])[0]] = 0  # now 9 soft cells
    with pytest.raises(InputError, match="exactly 8 soft cells .* row 3 has 9"):
        toughness(d, soft_count=8)
    toughness(d[:3], soft_count=8)


def test_bad_solver_parameters():
    with pytest.raises(InputError, match="m .* integer >= 1"):
        toughness(np.ones(32), m=0)
    with pytest.raises(InputError, match="ratio"):
        toughness(np.ones(32), ratio=-1.0)
    with pytest.raises(InputError, match="threads"):
        toughness(np.ones(32), threads=0)


def test_n_designs_is_the_binomial():
    assert n_designs(8) == 10_518_300
    assert [n_designs(k) for k in (0, 1, 4, 16, 32)] == [1, 32, comb(32, 4), comb(32, 16), 1]
    with pytest.raises(InputError, match=r"soft cells k .* \[0, 32\]"):
        n_designs(33)


@pytest.mark.parametrize("k", [2, 3])
def test_enumeration_covers_all_designs_once_in_lexicographic_order(k):
    full = designs_range(k, 0, n_designs(k))
    assert full.shape == (comb(32, k), 32) and full.dtype == np.uint8
    assert np.all((full == 0).sum(axis=1) == k)
    assert len(np.unique(full, axis=0)) == comb(32, k)
    expected = [tuple(c) for c in itertools.combinations(range(32), k)]
    assert [tuple(np.flatnonzero(d == 0)) for d in full] == expected
    np.testing.assert_array_equal(rank_designs(full), np.arange(comb(32, k)))


@pytest.mark.parametrize(
    "k,start,stop", [(3, 0, 1), (3, 1234, 2345), (3, 4000, 4960), (8, 1_000_000, 1_000_300)]
)
def test_unranking_a_slice_equals_the_slice_of_the_full_list(k, start, stop):
    part = designs_range(k, start, stop)
    expected = list(itertools.islice(itertools.combinations(range(32), k), start, stop))
    assert [tuple(np.flatnonzero(d == 0)) for d in part] == expected
    if k == 3:
        np.testing.assert_array_equal(part, designs_range(k, 0, n_designs(k))[start:stop])
    np.testing.assert_array_equal(rank_designs(part), np.arange(start, stop))


def test_shards_of_the_25_percent_enumeration_join_up():
    a = designs_range(8, 5_000_000, 5_000_100)
    b = designs_range(8, 5_000_100, 5_000_200)
    both = designs_range(8, 5_000_000, 5_000_200)
    np.testing.assert_array_equal(np.vstack([a, b]), both)
    assert len(np.unique(both, axis=0)) == 200
    np.testing.assert_array_equal(unrank_soft([0], 8), [np.arange(8)])
    np.testing.assert_array_equal(unrank_soft([n_designs(8) - 1], 8), [np.arange(24, 32)])
    with pytest.raises(InputError):
        designs_range(8, 10, 10_518_301)


def test_sampler_is_seeded_and_has_k_soft_cells():
    a = sample_designs(1000, 8, seed=7)
    np.testing.assert_array_equal(a, sample_designs(1000, 8, seed=7))
    assert not np.array_equal(a, sample_designs(1000, 8, seed=8))
    assert np.all((a == 0).sum(axis=1) == 8)
    # every cell is soft about a quarter of the time
    assert np.all(np.abs((a == 0).mean(axis=0) - 0.25) < 0.06)
    assert sample_designs(3, 0).min() == 1 and sample_designs(3, 32).max() == 0
