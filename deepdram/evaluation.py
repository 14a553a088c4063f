"""Test-split evaluation of the three models, as in the paper (Tables 6, 8, 9, 12; Fig. S7, S9, S12)
and beyond it (generator designs verified by FE, valid and distinct shares)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from deepdram import constants as C
from deepdram import params as P
from deepdram.training import EVAL_DIR, MODELS_DIR, cell_xy, split_rows, tiling_xy

PROPS = list(C.PROPERTY_COLUMNS)


def _paper(key: str) -> pd.DataFrame | None:
    import yaml

    if not C.PAPER_TABLES_PATH.is_file():
        return None
    tables = yaml.safe_load(C.PAPER_TABLES_PATH.read_text())
    t = tables.get(key)
    return None if t is None else pd.DataFrame(t, index=tables["regression_columns"]).T


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Our regression table with the paper's values interleaved as `<column> (paper)`."""
    if paper is None:
        return ours
    out = {}
    for c in ours.columns:
        out[c] = ours[c]
        out[f"{c} (paper)"] = paper[c].reindex(ours.index)
    return pd.DataFrame(out)


def _write_table(df: pd.DataFrame, stem: Path, title: str) -> None:
    from deepdram.io import atomic_target

    with atomic_target(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp)
    with atomic_target(stem.with_suffix(".md")) as tmp:
        tmp.write_text(f"# {title}\n\n" + df.to_markdown(floatfmt=".4f") + "\n")


def _figure(path: Path, draw, size=(10, 2.8)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from deepdram.io import atomic_target

    fig = Figure(figsize=size)
    draw(fig)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def parity_plot(y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str, seed: int = 0) -> None:
    """Predicted vs target per property with R2 (paper Fig. S7 / S12), on <= 20,000 points."""
    from sklearn.metrics import r2_score

    idx = np.random.default_rng(seed).permutation(len(y_true))[:20000]

    def draw(fig):
        axes = fig.subplots(1, 4)
        for k, ax in enumerate(axes):
            t, p = y_true[idx, k], y_pred[idx, k]
            ax.scatter(t, p, s=2, alpha=0.3, rasterized=True)
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"{PROPS[k]}  R2 = {r2_score(y_true[:, k], y_pred[:, k]):.4f}", fontsize=9)
            ax.set_xlabel("target")
            ax.set_ylabel("predicted" if k == 0 else "")
        fig.suptitle(title, fontsize=10)

    _figure(path, draw)


def _log_to_run(kind: str, metrics: dict, artifacts: list[Path]) -> None:
    import mlflow
    from mlflow.entities import Metric

    from deepdram import tracking

    record = json.loads((MODELS_DIR / f"{kind}.json").read_text())
    tracking.configure()
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    tracking.client().log_batch(record["run_id"], metrics=[Metric(k, v, 0, 0) for k, v in finite.items()])
    with mlflow.start_run(run_id=record["run_id"]):
        for a in artifacts:
            mlflow.log_artifact(str(a), "evaluation")


def evaluate_regressor(kind: str, x: np.ndarray, y: np.ndarray, paper_key: str, title: str) -> dict:
    """Test metrics, paper comparison and parity plot of the forward or size-agnostic model."""
    from deepdram import models
    from deepdram.metrics import flat_metrics, regression_table

    model = models.load_model(MODELS_DIR / f"{kind}.keras")
    pred = models.predict(model, x)
    table = regression_table(y, pred)
    out = EVAL_DIR / kind
    both = side_by_side(table, _paper(paper_key))
    _write_table(both, out / "test_metrics", f"{title}: test split, deepdram vs paper")
    parity_plot(y, pred, out / "parity.png", f"{title} (test split, {len(y):,} rows)")
    print(f"\n{title} — test split ({len(y):,} rows), next to the paper:\n{both.round(4).to_string()}")
    metrics = flat_metrics(table, "test")
    _log_to_run(kind, metrics, [out / "test_metrics.csv", out / "test_metrics.md", out / "parity.png"])
    return metrics


def _tsne_plot(z: np.ndarray, classes: np.ndarray, path: Path, seed: int) -> None:
    from sklearn.manifold import TSNE

    emb = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(z)
    names = ["auxetic", "conventional", "double-auxetic"]

    def draw(fig):
        ax = fig.subplots()
        for c in range(3):
            m = classes == c
            ax.scatter(emb[m, 0], emb[m, 1], s=4, label=f"{names[c]} ({m.sum()})")
        ax.legend(markerscale=3)
        ax.set_title("CVAE latent space (t-SNE of z mean, test split)")

    _figure(path, draw, size=(6, 5))


def _eval_draws(n: int, tsne_points: int, n_targets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the t-SNE sample and of the generation targets (one seeded stream)."""
    rng = np.random.default_rng(seed)
    tsne_idx = rng.permutation(n)[: min(tsne_points, n)]
    return tsne_idx, rng.permutation(n)[: min(n_targets, n)]


def generate_best_of_k(generator, forward, targets: np.ndarray, k: int, seed: int) -> dict:
    """K generated designs per target, their forward-model properties, and the best valid one each
    (by scaled MSE, `metrics.best_of_k`): arrays designs, valid, fwd (N*K rows), has, chosen, best_fwd."""
    from deepdram import models
    from deepdram.lattice import is_valid
    from deepdram.metrics import best_of_k

    probs = models.generate(generator, targets, k=k, seed=seed)  # (N, K, 42)
    designs = models.designs_from_probabilities(probs.reshape(-1, C.N_BEAMS))
    valid = is_valid(designs)
    fwd = models.predict(forward, designs.astype(np.float32)).astype(float)
    fwd_valid = np.where(valid[:, None], fwd, np.nan).reshape(len(targets), k, 4)
    best = best_of_k(targets, fwd_valid)
    has = np.isfinite(fwd_valid).all(axis=2).any(axis=1)
    rows = np.arange(len(targets))
    chosen = designs.reshape(len(targets), k, C.N_BEAMS)[rows, best][has]
    return {"designs": designs, "valid": valid, "fwd": fwd, "has": has, "chosen": chosen,
            "best_fwd": fwd_valid[rows, best][has]}


def promotion_value(kind: str, model, params: dict) -> float:
    """The promotion metric of a (champion's) Keras model on the CURRENT test split, computed as
    `evaluate` computes it for a new model, so that two versions compare on the same rows."""
    from deepdram import models
    from deepdram.metrics import regression_table

    if kind == "forward":
        x, y = cell_xy(pd.read_parquet(C.SPLITS_DIR / "test.parquet"))
        return float(regression_table(y, models.predict(model, x)).loc["R2", "overall"])
    if kind == "size_agnostic":
        x, y = tiling_xy(split_rows(pd.read_parquet(C.TILINGS_PATH), "test"))
        return float(regression_table(y, models.predict(model, x)).loc["R2", "overall"])
    sec = P.section(params, "evaluate")
    seed = P.seed(sec, "seed", "evaluate")
    k = P.positive_int(sec, "generator_k", "evaluate")
    x, y = cell_xy(pd.read_parquet(C.SPLITS_DIR / "test.parquet"))
    _, t_idx = _eval_draws(len(x), P.positive_int(sec, "tsne_points", "evaluate"),
                           P.positive_int(sec, "generator_targets", "evaluate"), seed)
    g = generate_best_of_k(model, models.load_model(MODELS_DIR / "forward.keras"), y[t_idx], k, seed)
    return float(regression_table(y[t_idx][g["has"]], g["best_fwd"]).loc["R2", "overall"])


def evaluate_generator(x: np.ndarray, y: np.ndarray, sec: dict) -> dict:
    """Reconstruction scores, latent t-SNE, single-shot and best-of-K generation (forward and FE)."""
    from deepdram import models
    from deepdram.fem import cell_properties
    from deepdram.lattice import to_keys
    from deepdram.metrics import auxeticity_class, flat_metrics, reconstruction_scores, regression_table

    seed = P.seed(sec, "seed", "evaluate")
    k = P.positive_int(sec, "generator_k", "evaluate")
    n_targets = P.positive_int(sec, "generator_targets", "evaluate")
    tsne_points = P.positive_int(sec, "tsne_points", "evaluate")
    out = EVAL_DIR / "cvae"
    generator = models.load_model(MODELS_DIR / "generator.keras")
    encoder = models.load_model(MODELS_DIR / "encoder.keras")
    forward = models.load_model(MODELS_DIR / "forward.keras")
    metrics: dict[str, float] = {}

    # reconstruction of the test designs through z mean (paper Fig. S9b)
    p_rec = models.reconstruct(generator, encoder, x, y)
    d_rec = models.designs_from_probabilities(p_rec)
    props_rec = models.predict(forward, d_rec.astype(np.float32))
    rec = reconstruction_scores(x, p_rec, y, props_rec)
    metrics.update({f"test_recon_{m}": float(rec[m]) for m in ("precision", "recall", "f1")})
    cm = pd.DataFrame(rec["confusion"], index=["auxetic", "conventional", "double-auxetic"],
                      columns=["pred auxetic", "pred conventional", "pred double-auxetic"])
    _write_table(cm, out / "confusion_matrix", "Reconstruction: auxeticity class confusion matrix (rows: true)")

    tsne_idx, t_idx = _eval_draws(len(x), tsne_points, n_targets, seed)
    z = models.predict(encoder, np.concatenate([x[tsne_idx], y[tsne_idx]], axis=1))
    _tsne_plot(z, auxeticity_class(y[tsne_idx]), out / "latent_tsne.png", seed)

    # generation for test targets (Tables S8, S9) and FE verification
    targets = y[t_idx]
    g = generate_best_of_k(generator, forward, targets, k, seed)
    designs, valid, fwd, has, chosen, best_fwd = (g[n] for n in ("designs", "valid", "fwd", "has", "chosen", "best_fwd"))
    keys = to_keys(designs)
    metrics["test_gen_valid_share"] = float(valid.mean())
    metrics["test_gen_distinct_share"] = float(len(np.unique(keys[valid])) / max(1, valid.sum()))
    single = regression_table(targets, fwd.reshape(len(targets), k, 4)[:, 0])
    best_table = regression_table(targets[has], best_fwd)
    fe = cell_properties(chosen, validate=False)
    fe_table = regression_table(targets[has], fe)
    metrics["test_gen_targets_with_valid_design"] = float(has.mean())
    metrics.update(flat_metrics(single, "test_gen_single"))
    metrics.update(flat_metrics(best_table, "test_gen_best"))
    metrics.update(flat_metrics(fe_table, "test_gen_best_fe"))
    _write_table(side_by_side(single, _paper("table8_generator_single")), out / "generator_single_shot",
                 "Generator, single shot, properties by the forward model (paper Table S8)")
    _write_table(side_by_side(best_table, _paper("table9_generator_best_of_100")), out / "generator_best_of_k",
                 f"Generator, best of {k}, properties by the forward model (paper Table S9)")
    _write_table(fe_table, out / "generator_best_of_k_fe", f"Generator, best of {k}, properties by FE")
    parity_plot(targets[has], best_fwd, out / "generator_best_parity.png",
                f"Generator best of {k}: forward-model properties vs targets")
    parity_plot(targets[has], fe, out / "generator_best_fe_parity.png",
                f"Generator best of {k}: FE-verified properties vs targets")
    print(f"\nGenerator, best of {k} ({has.sum():,} targets), forward model, next to the paper:\n"
          f"{side_by_side(best_table, _paper('table9_generator_best_of_100')).round(4).to_string()}")
    print(f"FE-verified R2 overall {fe_table.loc['R2', 'overall']:.4f}; valid {metrics['test_gen_valid_share']:.3f}, "
          f"distinct {metrics['test_gen_distinct_share']:.3f}; reconstruction F1 {metrics['test_recon_f1']:.3f}")
    _log_to_run("cvae", metrics, sorted(p for p in out.iterdir() if p.is_file()))
    return metrics


def evaluate(params: dict) -> dict:
    """All three models on the held-out test split; metrics go to DVC and to each MLflow run."""
    sec = P.section(params, "evaluate")
    x, y = cell_xy(pd.read_parquet(C.SPLITS_DIR / "test.parquet"))
    xt, yt = tiling_xy(split_rows(pd.read_parquet(C.TILINGS_PATH), "test"))
    metrics = {}
    for kind, xx, yy, key, title in (("forward", x, y, "table6_forward", "Forward model"),
                                     ("size_agnostic", xt, yt, "table12_size_agnostic", "Size-agnostic model")):
        metrics.update({f"{kind}.{k}": v for k, v in evaluate_regressor(kind, xx, yy, key, title).items()})
    metrics.update({f"cvae.{k}": v for k, v in evaluate_generator(x, y, sec).items()})
    from deepdram.io import write_json

    write_json(metrics, EVAL_DIR / "metrics.json")
    return metrics
