"""FE speed benchmark: batched unit-cell and tiling solvers against straightforward baselines.

Prints, in one run: seconds per unit cell (properties + validity; with per-beam von Mises) for
B = 1e5 designs next to a plain per-design NumPy 48 x 48 solve and the paper's MATLAB figure, and
seconds per tiling at D = 2, 4, 10, 20 next to a plain scipy.sparse assemble + spsolve.
Each timing is the best of `--repeat` runs after a warm-up (the compiled kernel is cached).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deepdram.spaces.lattice import fem, geometry, tiling
from deepdram.spaces.lattice.constants import ZG_VALUES

PAPER_S_PER_CELL = 5.42e-4  # Deep-DRAM supplementary Figure 3 (MATLAB)
TARGET_CELL = 5e-6
TARGET_CELL_STRESS = 1.5e-5
TARGET_TILING_SPEEDUP_D20 = 3.0


def best_of(fn, repeat: int) -> float:
    """Smallest wall time of `repeat` calls of fn()."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def mixed_designs(n: int, seed: int) -> np.ndarray:
    """n valid designs, equal numbers per Z_g."""
    per = n // len(ZG_VALUES)
    return np.concatenate([geometry.sample_designs(z, per, seed + k) for k, z in enumerate(ZG_VALUES)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_cells(n: int, n_baseline: int, repeat: int) -> None:
    designs = mixed_designs(n, seed=0)
    fem.solve_cells(designs[:100], stress=True, per_beam=True)  # warm up / load the compiled kernel
    t_props = best_of(lambda: fem.solve_cells(designs), repeat) / len(designs)
    t_stress = best_of(lambda: fem.solve_cells(designs, stress=True, per_beam=True), repeat) / len(designs)
    sub = designs[:: max(1, len(designs) // n_baseline)][:n_baseline]
    t_base = best_of(lambda: [fem.solve_cell_reference(d) for d in sub], 1) / len(sub)
    base_props = np.array([fem.solve_cell_reference(d)[0] for d in sub[:200]])
    err = np.abs(base_props - fem.cell_properties(sub[:200])).max()
    print(f"Unit cells (B = {len(designs):,}, both load cases, validity checked)")
    print(f"  {'solver':44s} {'s/design':>10s} {'vs baseline':>12s} {'vs paper':>9s}")
    print(f"  {'paper MATLAB (supp. Fig. 3)':44s} {PAPER_S_PER_CELL:10.2e} {'':>12s} {1:8.0f}x")
    print(f"  {'baseline: per-design NumPy 48x48 solve':44s} {t_base:10.2e} {1:11.1f}x "
          f"{PAPER_S_PER_CELL / t_base:8.0f}x")
    print(f"  {'deepdram: properties':44s} {t_props:10.2e} {t_base / t_props:11.1f}x "
          f"{PAPER_S_PER_CELL / t_props:8.0f}x   target <= {TARGET_CELL:.1e}: {verdict(t_props <= TARGET_CELL)}")
    print(f"  {'deepdram: + per-beam von Mises':44s} {t_stress:10.2e} {t_base / t_stress:11.1f}x "
          f"{PAPER_S_PER_CELL / t_stress:8.0f}x   target <= {TARGET_CELL_STRESS:.1e}: "
          f"{verdict(t_stress <= TARGET_CELL_STRESS)}")
    print(f"  max |difference| to the baseline on 200 designs: {err:.1e}")


def bench_tilings(sizes: list[int], n_designs: int, n_baseline: int, repeat: int) -> None:
    designs = mixed_designs(max(n_designs, len(ZG_VALUES)), seed=1)[:n_designs]
    print(f"\nTilings (both load cases; {n_designs} designs per size, batched)")
    print(f"  {'D1 x D2':8s} {'sparse spsolve s/tiling':>24s} {'deepdram s/tiling':>18s} {'+stress':>10s} "
          f"{'speed-up':>9s} {'max rel diff':>12s}")
    for d in sizes:
        tiling.solve_tilings(designs[:2], d, d, stress=True)  # warm the per-size geometry caches
        t_fast = best_of(lambda: tiling.solve_tilings(designs, d, d), repeat) / n_designs
        t_stress = best_of(lambda: tiling.solve_tilings(designs, d, d, stress=True), repeat) / n_designs
        base, ref = [], []
        for design in designs[:n_baseline]:
            nodes, beams = geometry.tiling_geometry(design, d, d)
            t = time.perf_counter()
            props, _, _ = fem.solve_frame(nodes, beams, 3 * d + 1, 3 * d + 1, sparse=True)
            base.append(time.perf_counter() - t)
            ref.append(props)
        t_base = min(base)
        fast = tiling.solve_tilings(designs[:n_baseline], d, d).properties
        diff = (np.abs(fast - np.array(ref)) / np.abs(np.array(ref)).max(axis=1, keepdims=True)).max()
        line = (f"  {f'{d} x {d}':8s} {t_base:24.2e} {t_fast:18.2e} {t_stress:10.2e} "
                f"{t_base / t_fast:8.1f}x {diff:12.1e}")
        if d == 20:
            line += f"   target >= {TARGET_TILING_SPEEDUP_D20:.0f}x: {verdict(t_base / t_fast >= 3)}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--cells", type=int, default=100_000, help="unit cells to time (default 1e5)")
    ap.add_argument("--baseline-cells", type=int, default=1000, help="cells for the slow baseline")
    ap.add_argument("--tiling-designs", type=int, default=16, help="designs per tiling size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 10, 20])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    bench_cells(args.cells, args.baseline_cells, args.repeat)
    bench_tilings(args.sizes, args.tiling_designs, min(4, args.tiling_designs), args.repeat)


if __name__ == "__main__":
    main()
