"""The `Method` interface: how a design method proposes candidates for one request.

A method yields batches of candidate designs (they may be invalid or repeat: the shared pipeline
in `deepdram.design.pipeline` drops those, screens the rest with the surrogate, FE-verifies the
best, ranks them and marks the Pareto front, the same way for every method). A method that
evaluates designs itself (with the FE oracle) may attach their properties to a batch so that the
pipeline does not evaluate them twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from deepdram.spaces.base import DesignSpace


@dataclass
class Context:
    """What a method gets for one request."""

    space: DesignSpace
    request: Any  # design.requests.DesignRequest
    surrogates: Any  # design.pipeline.Surrogates
    rng: np.random.Generator
    objective: Any  # design.objectives.Objective
    progress: Callable[[int], None] | None = None
    counters: dict[str, int] = field(default_factory=dict)  # e.g. fe_calls, surrogate_calls


@dataclass
class Batch:
    """Candidate designs; `properties` holds their oracle properties when the method computed them."""

    designs: np.ndarray
    properties: np.ndarray | None = None
    work: int = 0  # candidates' worth of progress this batch stands for


class Method(ABC):
    """An inverse-design method: proposes candidates for one request."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # surrogate roles it uses, e.g. ("generator",)

    @abstractmethod
    def candidates(self, ctx: Context) -> Iterator[Batch]:
        """Batches of candidate designs for ctx.request."""

    def total_work(self, ctx: Context) -> int:
        """Units of progress the candidates add up to (for progress bars)."""
        return int(ctx.request.n_candidates)
