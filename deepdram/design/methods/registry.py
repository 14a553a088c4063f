"""Design methods by name: `get("cvae")`. Each method is imported only when asked for.

Built in: cvae (Deep-DRAM, the default), backprop (GIDN: gradients through the surrogate),
active (GIDN active learning with the FE oracle), ga (genetic algorithm), topopt (gradient
topology optimisation with exact adjoint gradients), random (valid random designs, the floor).
`register(cls)` adds a method of your own (see the README, "How to add a design method").
"""

from __future__ import annotations

from collections.abc import Mapping

from deepdram.design.methods.base import Method
from deepdram.errors import InputError
from deepdram.spaces.base import DesignSpace

from deepdram.design.methods.names import BUILT_IN as NAMES  # noqa: E402
EXTRA: dict[str, type[Method]] = {}  # methods registered at run time (`register`), e.g. by a plugin


def method_class(name: str) -> type[Method]:
    """The class of method `name` (InputError naming the known ones otherwise)."""
    if name in EXTRA:
        return EXTRA[name]
    # One explicit import per method, so the static import closure of a caller sees them.
    if name == "cvae":
        from deepdram.design.methods.cvae import CVAEMethod

        return CVAEMethod
    if name == "backprop":
        from deepdram.design.methods.backprop import BackpropMethod

        return BackpropMethod
    if name == "active":
        from deepdram.design.methods.active import ActiveMethod

        return ActiveMethod
    if name == "ga":
        from deepdram.design.methods.ga import GAMethod

        return GAMethod
    if name == "topopt":
        from deepdram.design.methods.topopt import TopOptMethod

        return TopOptMethod
    if name == "random":
        from deepdram.design.methods.random import RandomMethod

        return RandomMethod
    raise InputError(f"unknown method {name!r}; known: {', '.join(names())}")


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


def check_options(name: str, options: Mapping, where: str = "options") -> dict:
    """The method's checked options."""
    return method_class(name).check_options(options, where)


def check_all_options(methods: Mapping[str, Mapping | None], where: str) -> dict[str, dict]:
    """Each method's checked options (InputError naming `where`.method.option otherwise)."""
    return {name: check_options(name, options or {}, f"{where}.{name}") for name, options in methods.items()}


def get(name: str) -> Method:
    """A new instance of the method `name`."""
    return method_class(name)()
