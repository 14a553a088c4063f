"""The composite's learning data: nested, seeded training groups that never hold an excluded design,
a disjoint test set, FE labels, and the Great Expectations suite of the 'designs' kind."""

from __future__ import annotations

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.composite import datasets
from deepdram.spaces.composite.enumeration import rank_designs
from deepdram.spaces.composite.fem import toughness
from deepdram.spaces.composite.space import DESIGN_COLUMNS, CompositeSpace


def test_draw_ranks_is_seeded_distinct_and_excludes():
    a = datasets.draw_ranks(2, 300, seed=1, exclude=range(100))
    assert len(np.unique(a)) == 300 and a.min() >= 100
    assert np.array_equal(a, datasets.draw_ranks(2, 300, seed=1, exclude=range(100)))
    assert not np.array_equal(a, datasets.draw_ranks(2, 300, seed=2, exclude=range(100)))
    with pytest.raises(InputError, match="only 396 designs"):
        datasets.draw_ranks(2, 397, seed=0, exclude=range(100))


def test_groups_are_nested_prefixes_and_the_test_set_is_disjoint():
    excluded = np.arange(0, 496, 5)  # 100 ranks
    train, test = datasets.build_sets(2, [50, 10, 200], 100, seed=3, exclude=excluded)
    assert len(train) == 200 and len(test) == 100
    assert list(train.columns) == [*DESIGN_COLUMNS, "soft_count", "toughness"]
    ranks_train = rank_designs(train[list(DESIGN_COLUMNS)].to_numpy())
    ranks_test = rank_designs(test[list(DESIGN_COLUMNS)].to_numpy())
    assert not np.isin(ranks_train, excluded).any() and not np.isin(ranks_test, excluded).any()
    assert not np.isin(ranks_test, ranks_train).any()
    assert len(np.unique(ranks_train)) == 200
    again, _ = datasets.build_sets(2, [10, 50, 200], 100, seed=3, exclude=excluded)
    assert again.equals(train)  # the groups are prefixes of one draw, whatever their order
    np.testing.assert_allclose(train["toughness"], toughness(train[list(DESIGN_COLUMNS)].to_numpy()).toughness)
    stats = datasets.group_stats(train, [10, 50, 200])
    assert [s["group"] for s in stats] == [10, 50, 200]
    assert stats[0]["max"] == pytest.approx(train["toughness"].iloc[:10].max())
    assert stats[0]["max"] <= stats[1]["max"] <= stats[2]["max"]  # nested: the max can only grow


def test_a_dataset_passes_its_suite_and_a_broken_one_is_named(tmp_path):
    from deepdram.data.validation import ValidationFailed, validate

    space = CompositeSpace()
    train, _ = datasets.build_sets(4, [60], 10, seed=0)
    assert train["soft_count"].dtype == np.int64 and train["x00"].dtype == np.uint8
    summary = validate(train, space, "designs", tmp_path, name="groups")
    assert summary["success"] and (tmp_path / "groups.md").is_file()
    bad = train.copy()
    bad.loc[3, "x05"] = 1 - bad.loc[3, "x05"]  # soft count no longer 4
    bad.loc[7] = bad.loc[2]  # a duplicate design
    with pytest.raises(ValidationFailed) as e:
        validate(bad, space, "designs", tmp_path, name="bad")
    assert "soft cell count" in str(e.value) and "duplicate design" in str(e.value)
