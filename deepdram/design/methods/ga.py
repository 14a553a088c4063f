"""`ga` (GIDN's gradient-free baseline): a genetic algorithm on the design bits.

The seed's settings: a population of 10^3 random designs, the 10^2 fittest as parents, children
by centre-point crossover (the first half of one parent's genes, the second half of another's),
each gene flipped with the mutation probability (0.01 or 0.1), up to 10^3 generations. Fitness is
the request's objective of the FE properties (`oracle: fe`, the default; every new design costs
one FE call, designs seen before are not evaluated again) or of the surrogate's prediction
(`oracle: surrogate`; the final population then goes to the pipeline's FE verification). The
parents survive into the next generation (elitism, so the best design is never lost). Invalid
children are repaired where the space can repair them (the composite: its soft-cell count
restored by flipping random cells) and otherwise scored as unfit without an FE call (the
lattice: a disconnected network).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from deepdram.design.methods.base import Batch, Context, Method
from deepdram.errors import InputError


def centre_crossover(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Children (N, V): genes [0, V//2) from a, [V//2, V) from b (the seed's centre crossover point)."""
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], b[:, half:]], axis=1)


def mutate(x: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each gene flipped with probability `rate`."""
    flip = rng.random(x.shape) < rate
    return np.where(flip, 1 - x, x).astype(x.dtype)


def select_parents(fitness: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n fittest (lowest objective; ties by index)."""
    return np.argsort(fitness, kind="stable")[:n]


class GAMethod(Method):
    name = "ga"
    summary = "GIDN baseline: genetic algorithm (centre crossover, bit-flip mutation) on FE or surrogate fitness"
    uses_fe = True
    defaults = {"population": 1000, "parents": 100, "mutation": 0.01, "generations": 1000, "oracle": "fe"}
    option_help = {"population": "individuals per generation (seed: 1,000)",
                   "parents": "fittest individuals kept as parents (seed: 100)",
                   "mutation": "per-gene flip probability (seed: 0.01 or 0.1)",
                   "generations": "at most this many generations (seed: 1,000; budgets stop earlier)",
                   "oracle": "fitness from 'fe' (default) or 'surrogate'"}

    @classmethod
    def validate_options(cls, o, where):
        if o["oracle"] not in ("fe", "surrogate"):
            raise InputError(f"{where}.oracle must be 'fe' or 'surrogate'; got {o['oracle']!r}")
        if not (1 <= o["parents"] <= o["population"]) or o["generations"] < 1 or not 0 <= o["mutation"] <= 1:
            raise InputError(f"{where}: need 1 <= parents <= population, generations >= 1, 0 <= mutation <= 1; got {o}")

    def verification_fe(self, request) -> int:
        if self.check_options(request.options)["oracle"] == "fe" or request.budget_fe is None:
            return 0
        return min(request.top_k, request.budget_fe)

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        o = self.check_options(ctx.request.options)
        space, req, rng = ctx.space, ctx.request, ctx.rng
        use_fe = o["oracle"] == "fe"
        if not space.binary:
            raise InputError(f"the ga method works on binary design spaces; {space.name} is continuous")
        cache: dict = {}  # key -> (objective, properties, extras) of designs already scored

        def score(pop: np.ndarray):
            keys = space.keys(pop)
            ok = space.is_valid(pop) & space.meets(pop, req.constraints)
            new = [i for i, k in enumerate(keys) if ok[i] and k not in cache]
            _, first = np.unique(keys[new], return_index=True) if new else (None, np.zeros(0, int))
            new = [new[i] for i in sorted(first)]
            if use_fe:
                new = new[: int(max(0, min(len(new), ctx.fe_left())))]
            if new:
                d = pop[new]
                if use_fe:
                    props, extras = ctx.evaluate(d)
                else:
                    props, extras = ctx.predict(d), {}
                obj = ctx.objective(props, ctx.target)
                for j, i in enumerate(new):
                    cache[keys[i]] = (obj[j], props[j], {e: v[j] for e, v in extras.items()})
                if use_fe:
                    yield_batch.append(Batch(d, props, extras, work=len(d)))
            return np.array([cache[k][0] if ok[i] and k in cache else np.inf for i, k in enumerate(keys)])

        yield_batch: list[Batch] = []
        pop = space.sample_for(o["population"], rng, req.constraints)
        fit = score(pop)
        yield from yield_batch
        yield_batch.clear()
        for _ in range(1, int(o["generations"])):
            if ctx.exhausted():
                break
            parents = pop[select_parents(fit, o["parents"])]
            n_kids = o["population"] - len(parents)
            a = parents[rng.integers(len(parents), size=n_kids)]
            b = parents[rng.integers(len(parents), size=n_kids)]
            kids = mutate(centre_crossover(a, b), o["mutation"], rng)
            fixed = space.repair(kids, rng, req.constraints)
            kids = kids if fixed is None else fixed
            pop = np.concatenate([parents, kids])
            fit = score(pop)
            yield from yield_batch
            yield_batch.clear()
        if not use_fe:
            yield Batch(pop, work=len(pop))
