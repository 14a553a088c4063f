"""Gradient speed benchmark: adjoint against central finite differences (the GIDN seed's method).

Prints, in one run, seconds per design for d properties / d rho (4 x 42) of relaxed densities on
the unit cell and on 4 x 4, 10 x 10 and 20 x 20 tilings, by `relaxed.gradient` (adjoint: two
sparse LUs per design) and `relaxed.fd_gradient` (85 property evaluations per design), the
speed-up, and the largest relative difference of the two jacobians. Each timing is the best of
`--repeat` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deepdram.spaces.lattice import relaxed

# (d1, d2, designs per timing): unit cells are solved batched, so time many at once
CASES = ((None, None, 500), (4, 4, 2), (10, 10, 1), (20, 20, 1))


def best_of(fn, repeat: int) -> float:
    """Smallest wall time of `repeat` calls of fn()."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--h", type=float, default=1e-5, help="finite-difference step (the seed's 1e-5)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'size':>8} {'adjoint s/design':>17} {'FD s/design':>12} {'speed-up':>9} {'max rel diff':>13}")
    for d1, d2, n in CASES:
        rho = rng.uniform(0.2, 0.8, (n, 42))
        _, jac = relaxed.gradient(rho[:1], d1, d2)  # warm-up: mesh tables, imports
        t_adj = best_of(lambda r=rho, a=d1, b=d2: relaxed.gradient(r, a, b), args.repeat) / n
        t = time.perf_counter()
        _, fd = relaxed.fd_gradient(rho, d1, d2, h=args.h)  # once: it is the slow one
        t_fd = (time.perf_counter() - t) / n
        _, jac = relaxed.gradient(rho, d1, d2)
        diff = (np.abs(jac - fd) / np.abs(fd).max(axis=2, keepdims=True)).max()
        size = "cell" if d1 is None else f"{d1}x{d2}"
        print(f"{size:>8} {t_adj:17.2e} {t_fd:12.2e} {t_fd / t_adj:9.0f} {diff:13.1e}", flush=True)


if __name__ == "__main__":
    main()
