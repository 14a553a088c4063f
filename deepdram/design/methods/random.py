"""`random`: valid random designs evaluated by FE, the floor every method must beat (the lattice:
a connectivity drawn uniformly from the five Z_g values, then a uniform valid design of it)."""

from __future__ import annotations

from collections.abc import Iterator


from deepdram.design.methods.base import Batch, Context, Method
from deepdram.errors import InputError


class RandomMethod(Method):
    name = "random"
    summary = "valid random designs, every one evaluated by FE (the baseline)"
    uses_fe = True
    defaults = {"batch": 256}
    option_help = {"batch": "designs drawn and evaluated per batch"}

    @classmethod
    def validate_options(cls, o, where):
        if o["batch"] < 1:
            raise InputError(f"{where}.batch must be >= 1; got {o['batch']}")

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        o = self.check_options(ctx.request.options)
        left = ctx.request.n_candidates
        while left > 0 and not ctx.exhausted():
            n = int(min(o["batch"], left, ctx.fe_left()))
            d = ctx.space.sample_for(n, ctx.rng, ctx.request.constraints)
            props, extras = ctx.evaluate(d)
            left -= n
            yield Batch(d, props, extras, work=n)
