"""Design spaces by name: `get("lattice")`. Each space is imported only when asked for."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from deepdram.errors import InputError

if TYPE_CHECKING:  # the CLI imports NAMES at start-up: keep numpy (spaces.base) out of it
    from deepdram.spaces.base import DesignSpace

NAMES = ("lattice", "composite", "peaks")
DEFAULT = "lattice"


def _load(name: str) -> DesignSpace:
    # One explicit import per space, so the static import closure of a caller sees them.
    if name == "lattice":
        from deepdram.spaces.lattice.space import LatticeSpace

        return LatticeSpace()
    if name == "composite":
        from deepdram.spaces.composite.space import CompositeSpace

        return CompositeSpace()
    if name == "peaks":
        from deepdram.spaces.peaks.space import PeaksSpace

        return PeaksSpace()
    raise InputError(f"unknown design space {name!r}; known: {', '.join(NAMES)}")


@lru_cache(maxsize=None)
def get(name: str = DEFAULT) -> DesignSpace:
    """The design space registered as `name` (InputError naming the known ones otherwise)."""
    if name not in NAMES:
        raise InputError(f"unknown design space {name!r}; known: {', '.join(NAMES)}")
    return _load(name)
