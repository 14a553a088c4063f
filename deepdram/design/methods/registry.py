"""Design methods by name: `get("cvae")`. Each method is imported only when asked for."""

from __future__ import annotations

from deepdram.design.methods.base import Method
from deepdram.errors import InputError
from deepdram.spaces.base import DesignSpace

NAMES = ("cvae",)
EXTRA: dict[str, type[Method]] = {}  # methods registered at run time (`register`), e.g. by a plugin


def _load(name: str) -> type[Method]:
    # One explicit import per method, so the static import closure of a caller sees them.
    if name == "cvae":
        from deepdram.design.methods.cvae import CVAEMethod

        return CVAEMethod
    raise InputError(f"unknown method {name!r}")


def names() -> tuple[str, ...]:
    """Every known method name."""
    return (*NAMES, *EXTRA)


def register(cls: type[Method]) -> type[Method]:
    """Make a method class available by its name (usable as a class decorator)."""
    if cls.name in NAMES:
        raise InputError(f"method {cls.name!r} is built in")
    EXTRA[cls.name] = cls
    return cls


def check_method(name: str, space: DesignSpace, where: str = "method") -> None:
    """InputError unless `name` is a known method."""
    if name not in names():
        raise InputError(f"{where} must be one of {list(names())}; got {name!r}")


def get(name: str) -> Method:
    """A new instance of the method `name`."""
    if name in EXTRA:
        return EXTRA[name]()
    if name not in NAMES:
        raise InputError(f"unknown method {name!r}; known: {', '.join(names())}")
    return _load(name)()
