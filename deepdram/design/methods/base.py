"""The `Method` interface: how a design method proposes candidates for one request, under a budget.

A method yields batches of candidate designs (they may be invalid or repeat: the shared pipeline
in `deepdram.design.pipeline` drops those, screens the rest with the surrogate, FE-verifies the
best, ranks them and marks the Pareto front, the same way for every method). A method that
evaluates designs with the FE oracle itself (`Context.evaluate`, which counts the FE calls)
attaches their properties to the batch, and the pipeline does not evaluate them again; a method
with its own surrogate (active learning) may attach its predictions.

Budgets: `Context.time_left()` and `Context.fe_left()` (one FE call = one design evaluated at one
size) say what remains of the request's `budget_seconds` and `budget_fe`; the pipeline reserves
the FE calls its verification needs before the method starts.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from deepdram.errors import InputError, check_number
from deepdram.spaces.base import DesignSpace


@dataclass
class Batch:
    """Candidate designs; `properties` / `extras` hold their FE results when the method computed them,
    `predicted` its own surrogate's predictions."""

    designs: np.ndarray
    properties: np.ndarray | None = None
    extras: dict[str, np.ndarray] | None = None
    predicted: np.ndarray | None = None
    work: int = 0  # units of progress this batch stands for


@dataclass
class Context:
    """What a method gets for one request: the space, the request, the surrogates, a seeded rng, the
    objective, and the budget bookkeeping."""

    space: DesignSpace
    request: Any  # design.requests.DesignRequest
    surrogates: Any  # design.pipeline.Surrogates
    rng: np.random.Generator
    objective: Any  # design.objectives.Objective
    progress: Callable[[int], None] | None = None
    fe_reserved: int = 0  # FE calls kept for the pipeline's verification
    counters: dict[str, float] = field(default_factory=lambda: {"fe_calls": 0, "surrogate_calls": 0})
    records: list[dict] = field(default_factory=list)  # per-round facts a caller may log (active learning)
    trace: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, FE calls, best FE objective)
    started: float = field(default_factory=time.perf_counter)
    threads: int | None = None
    acquired: Any = None  # a table of FE rows the method acquired (active learning), for the caller

    @property
    def target(self) -> np.ndarray | None:
        return None if self.request.target is None else np.asarray(self.request.target, float)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def time_left(self) -> float:
        """Seconds left of the request's wall-time budget (inf without one)."""
        b = self.request.budget_seconds
        return float("inf") if b is None else b - self.elapsed()

    def fe_left(self) -> float:
        """FE calls the method may still make (inf without a budget)."""
        b = self.request.budget_fe
        return float("inf") if b is None else b - self.fe_reserved - self.counters["fe_calls"]

    def exhausted(self) -> bool:
        return self.time_left() <= 0 or self.fe_left() <= 0

    def evaluate(self, designs: np.ndarray, *, validate: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """FE properties and the ranking extras of designs at the request's conditions (counted)."""
        r = self.space.evaluate(designs, self.request.conditions, extras=self.space.ranking_extras,
                                validate=validate, threads=self.threads)
        self.counters["fe_calls"] += len(designs)
        if len(designs):
            self.note_fe(r.properties)
        return np.asarray(r.properties, float), r.extras

    def note_fe(self, props: np.ndarray) -> None:
        """Add the best FE objective so far to the trace (time, FE calls, value)."""
        best = float(np.min(self.objective(props, self.target)))
        prev = self.trace[-1][2] if self.trace else float("inf")
        self.trace.append((self.elapsed(), int(self.counters["fe_calls"]), min(best, prev)))

    def predict(self, designs: np.ndarray) -> np.ndarray:
        """Surrogate properties of designs at the request's conditions (counted)."""
        self.counters["surrogate_calls"] += len(designs)
        return self.surrogates.predict(self.space, designs, self.request.conditions)


class Method(ABC):
    """An inverse-design method: proposes candidates for one request.

    `defaults` are its options (a request's `options` override them; unknown names are errors),
    `option_help` says what each does; `needs` names the surrogate roles it uses."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    option_help: ClassVar[dict[str, str]] = {}
    uses_fe: ClassVar[bool] = False  # evaluates candidates with the FE oracle itself

    @abstractmethod
    def candidates(self, ctx: Context) -> Iterator[Batch]:
        """Batches of candidate designs for ctx.request."""

    def total_work(self, ctx: Context) -> int:
        """Units of progress the candidates add up to (for progress bars)."""
        return int(ctx.request.n_candidates)

    def verification_fe(self, request) -> int:
        """FE calls the pipeline's verification needs after this method (reserved from budget_fe):
        none when the method evaluates its candidates by FE itself."""
        if self.uses_fe or request.budget_fe is None:
            return 0
        return min(request.top_k, request.budget_fe)

    @classmethod
    def check_options(cls, options: Mapping[str, Any], where: str = "options") -> dict[str, Any]:
        """The method's options with the request's values applied (InputError naming a bad one)."""
        unknown = sorted(set(options) - set(cls.defaults))
        if unknown:
            raise InputError(f"{where}: unknown option(s) {unknown} for method {cls.name!r}; its options: "
                             f"{', '.join(cls.defaults) or 'none'}")
        out = dict(cls.defaults)
        for k, v in options.items():
            d = cls.defaults[k]
            if isinstance(d, bool):
                if not isinstance(v, bool):
                    raise InputError(f"{where}.{k} must be true or false; got {v!r}")
            elif isinstance(d, (int, float)) or d is None:
                if d is not None or not isinstance(v, str):
                    v = check_number(v, f"{where}.{k}")
                    if isinstance(d, int) and v != int(v):
                        raise InputError(f"{where}.{k} must be an integer; got {v!r}")
                    v = int(v) if isinstance(d, int) else v
            elif isinstance(d, str) and not isinstance(v, str):
                raise InputError(f"{where}.{k} must be a string; got {v!r}")
            out[k] = v
        cls.validate_options(out, where)
        return out

    @classmethod
    def validate_options(cls, options: dict[str, Any], where: str) -> None:
        """Range checks of the method's options (InputError)."""
