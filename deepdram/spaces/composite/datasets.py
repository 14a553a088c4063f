"""The composite's learning data (the seed's Table S1): random designs of one soft count in nested
training groups, and a held-out test set, FE-labelled.

Ranks are drawn uniformly without replacement from the C(32, k) enumeration, seeded; the ranks of
the excluded designs (the brute-force top 100) are dropped, so no group ever holds one of them.
The first `max(groups)` drawn designs form the training table in draw order, and the group of N
designs is its first N rows: the groups are NESTED (1,000 contains 100), as one growing random
sample; the next `test` drawn designs are the test set, disjoint from every group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepdram.errors import InputError
from deepdram.spaces.composite.enumeration import designs_from_soft, n_designs, unrank_soft


def draw_ranks(k: int, n: int, seed: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """n distinct random ranks of the k-soft enumeration, none of them in `exclude`, in draw order."""
    total = n_designs(k)
    excl = np.unique(np.asarray(exclude, np.int64))
    excl = excl[(excl >= 0) & (excl < total)]
    if n > total - len(excl):
        raise InputError(f"only {total - len(excl):,} designs with {k} soft cells are left after excluding "
                         f"{len(excl)}; asked for {n:,}")
    rng = np.random.default_rng(seed)
    ranks = rng.choice(total, size=min(total, n + len(excl)), replace=False, shuffle=True)
    keep = ranks[~np.isin(ranks, excl)]
    return keep[:n].astype(np.int64)


def labelled(designs: np.ndarray, k: int, m: int = 1, ratio: float = 10.0, threads: int | None = None):
    """The designs with soft_count and FE toughness, as the composite 'designs' table."""
    from deepdram.spaces.composite.fem import toughness
    from deepdram.spaces.composite.space import CompositeSpace

    space = CompositeSpace(m, ratio)
    t = toughness(designs, m=m, ratio=ratio, soft_count=k, threads=threads).toughness
    df = space.frame(designs, t[:, None], soft_count=np.full(len(designs), k, np.int64))
    return df


def build_sets(k: int, groups: Sequence[int], test: int, seed: int, exclude: Sequence[int] = (), m: int = 1,
               ratio: float = 10.0):
    """(training table of max(groups) designs, test table): nested groups = prefixes of the first."""
    sizes = sorted(set(int(g) for g in groups))
    if not sizes or sizes[0] < 1:
        raise InputError(f"training groups must be positive sizes; got {list(groups)}")
    n_train = sizes[-1]
    ranks = draw_ranks(k, n_train + int(test), seed, exclude)
    designs = designs_from_soft(unrank_soft(ranks, k))
    return labelled(designs[:n_train], k, m, ratio), labelled(designs[n_train:], k, m, ratio)


def group_stats(train, groups: Sequence[int]) -> list[dict]:
    """Per group (its first N rows): size, max and mean toughness (the seed's Table S1)."""
    t = train["toughness"].to_numpy()
    return [{"group": int(n), "max": float(t[:n].max()), "mean": float(t[:n].mean())} for n in sorted(set(groups))]
