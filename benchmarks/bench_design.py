"""Design speed benchmark: candidates per second through generate -> validate -> dedupe -> size-agnostic
prediction (deepdram.design.screen), with the real champion models (registry, else outputs/models),
projected to the paper's Fig. 4 sweep (196 targets x 1e5 = 1.96e7 designs, ~38 min on 18 cores).
"""

from __future__ import annotations

import argparse
import time

from deepdram import design as D

PAPER_DESIGNS = 196 * 100_000
PAPER_SECONDS = 38 * 60
TARGET_SECONDS = 600  # 1.96e7 designs in <= 10 minutes on 2 cores (>= 32.7k candidates/s)


def load_models() -> tuple[D.DesignModels, str]:
    """Champions from the registry, else the .keras files of the last training run."""
    try:
        return D.load_champions(), "registry champions"
    except Exception as e:  # no store / no champion: the pipeline's model files
        from deepdram.constants import OUTPUTS_DIR

        files = {k: OUTPUTS_DIR / "models" / f"{k}.keras" for k in D.MODEL_NAMES}
        return D.load_keras_models(files), f"outputs/models (registry: {e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=1_000_000, help="candidates per timed target (default 1e6)")
    ap.add_argument("--targets", type=int, default=3, help="targets timed (default 3)")
    args = ap.parse_args()
    m, source = load_models()
    targets = [(0.03, 0.03, -0.2, 0.2), (0.03, 0.03, 0.5, 0.5), (0.03, 0.03, 1.0, -0.6)][: args.targets]
    D.screen(m, D.DesignRequest(targets[0], 4, 4, n_candidates=20_000, top_k=0))  # warm-up
    total, seconds = 0, 0.0
    for k, t in enumerate(targets):
        req = D.DesignRequest(t, 4, 4, n_candidates=args.n, top_k=0, seed=k)
        t0 = time.perf_counter()
        s = D.screen(m, req)
        dt = time.perf_counter() - t0
        total += args.n
        seconds += dt
        c = s.counts
        print(f"target {t}: {args.n:,} candidates in {dt:.2f} s ({args.n / dt:,.0f}/s): {c['valid']:,} valid, "
              f"{c['distinct']:,} distinct, {c['accepted']:,} accepted")
    rate = total / seconds
    projected = PAPER_DESIGNS / rate
    print(f"models: {source}")
    print(f"throughput: {rate:,.0f} candidates/s (generate -> validate -> dedupe -> size-agnostic, D1 = D2 = 4)")
    print(f"projected for 1.96e7 designs: {projected / 60:.1f} min (paper: ~38 min on 18 cores; "
          f"{PAPER_SECONDS / projected:.1f}x the paper's speed)")
    ok = projected <= TARGET_SECONDS
    print(f"target 1.96e7 in <= 10 min (>= {PAPER_DESIGNS / TARGET_SECONDS:,.0f}/s): {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
