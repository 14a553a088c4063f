"""Stage `peaks_demo`: the GIDN seed's peaks demonstration (predictor, backprop from Gaussian starts,
verification by the true function, the solution paths of Fig. S1), next to the seed's numbers."""

from __future__ import annotations

from deepdram.jobs.runner import run

SECTIONS = ("peaks_demo",)


def job(params) -> dict:
    from deepdram.data.atomic import write_json
    from deepdram.paths import OUTPUTS_DIR
    from deepdram.spaces.peaks import demo
    from deepdram.spaces.peaks.space import GLOBAL_MINIMUM, GLOBAL_MINIMUM_VALUE

    sec = params.peaks_demo
    out = OUTPUTS_DIR / "peaks"
    r = demo.run(sec.points, sec.train, epochs=sec.epochs, batch_size=sec.batch_size,
                 learning_rate=sec.learning_rate, dropout=sec.dropout, n_starts=sec.n_starts, sd=sec.sd,
                 steps=sec.steps, lr=sec.lr, seed=sec.seed)
    demo.plot_paths(r, out / "solution_paths.png")
    r.table.to_csv(out / "designs.csv", index=False)
    facts = {"train_mse": r.train_mse, "test_mse": r.test_mse, "seed_train_mse": demo.SEED_TRAIN_MSE,
             "seed_test_mse": demo.SEED_TEST_MSE, "best_x": float(r.best[0]), "best_y": float(r.best[1]),
             "best_z": r.best_z, "distance_to_minimum": r.distance, "global_minimum_x": GLOBAL_MINIMUM[0],
             "global_minimum_y": GLOBAL_MINIMUM[1], "global_minimum_z": GLOBAL_MINIMUM_VALUE, "dropout": sec.dropout}
    write_json(facts, out / "demo.json")
    print(f"peaks predictor: test MSE {r.test_mse:.5f} (seed: {demo.SEED_TEST_MSE}), train {r.train_mse:.5f} "
          f"(seed: {demo.SEED_TRAIN_MSE})")
    print(f"backprop from {sec.n_starts} starts: best ({r.best[0]:.4f}, {r.best[1]:.4f}), z = {r.best_z:.4f}; "
          f"global minimum {GLOBAL_MINIMUM} z = {GLOBAL_MINIMUM_VALUE}; distance {r.distance:.4f}")
    return facts


def main() -> int:
    return run("peaks_demo", job)
