"""`cvae`: the Deep-DRAM procedure (paper sections 2.5, 2.6): generate n candidates from the CVAE
generator (target + z ~ N(0, I) -> probabilities -> designs by the request's rule: "threshold",
beam present where p > 0.5, or "bernoulli"), in chunks of 250,000 (a wall-time budget stops
between chunks); the pipeline keeps the best predicted and FE-verifies the top k."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from deepdram.design.methods.base import Batch, Context, Method

CHUNK = 250_000  # candidates generated and screened per batch


class CVAEMethod(Method):
    name = "cvae"
    summary = "Deep-DRAM: best of n CVAE-generated candidates by the surrogate (the default)"
    option_help: dict = {}
    needs = ("generator",)

    def candidates(self, ctx: Context) -> Iterator[Batch]:
        from deepdram.learn.generation import generate, generator_decoder, latent_size

        req = ctx.request
        gen = ctx.surrogates.models["generator"]
        latent = latent_size(gen, ctx.space.n_properties)
        target = np.asarray(req.target, np.float32)[None]
        for start in range(0, req.n_candidates, CHUNK):
            if start and ctx.time_left() <= 0:
                return
            n = min(CHUNK, req.n_candidates - start)
            yield Batch(generate(generator_decoder(gen, n), target, n, latent, ctx.rng, req.rule), work=n)
