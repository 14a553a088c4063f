"""Test-set evaluation of the models, as in the paper (Tables 6, 8, 9, 12; Fig. S7, S9, S12) and
beyond it (generator designs verified by the oracle, valid and distinct shares).

Pure functions of models, arrays and an output folder: the `evaluate` job chooses the data, the
paths and the MLflow runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from deepdram.spaces.base import DesignSpace


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Our regression table with the paper's values interleaved as `<column> (paper)`."""
    if paper is None:
        return ours
    out = {}
    for c in ours.columns:
        out[c] = ours[c]
        out[f"{c} (paper)"] = paper[c].reindex(ours.index) if c in paper.columns else np.nan
    return pd.DataFrame(out)


def paper_table(tables: dict | None, key: str) -> pd.DataFrame | None:
    """One of the paper's regression tables (rows R2, MSE, ...) from data/reference/paper_tables.yaml."""
    if not tables or tables.get(key) is None:
        return None
    return pd.DataFrame(tables[key], index=tables["regression_columns"]).T


def write_table(df: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """`stem`.csv and `stem`.md (a titled markdown table), atomically; returns both paths."""
    from deepdram.data.atomic import write_text

    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text(csv, df.to_csv())
    write_text(md, f"# {title}\n\n" + df.to_markdown(floatfmt=".4f") + "\n")
    return [csv, md]


def figure(path: Path, draw, size=(10, 2.8)) -> Path:
    """Draw a Figure with `draw(fig)` and save it as PNG (no run-dependent metadata)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from deepdram.data.atomic import save_png

    fig = Figure(figsize=size)
    draw(fig)
    fig.tight_layout()
    return save_png(path, fig)


def parity_plot(y_true: np.ndarray, y_pred: np.ndarray, names, path: Path, title: str, seed: int = 0) -> Path:
    """Predicted vs target per property with R2 (paper Fig. S7 / S12), on <= 20,000 points."""
    from deepdram.learn.metrics import r2_scores

    idx = np.random.default_rng(seed).permutation(len(y_true))[:20000]
    r2 = r2_scores(y_true, y_pred)

    def draw(fig):
        axes = np.atleast_1d(fig.subplots(1, len(names)))
        for k, ax in enumerate(axes):
            t, p = y_true[idx, k], y_pred[idx, k]
            ax.scatter(t, p, s=2, alpha=0.3, rasterized=True)
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"{names[k]}  R2 = {r2[k]:.4f}", fontsize=9)
            ax.set_xlabel("target")
            ax.set_ylabel("predicted" if k == 0 else "")
        fig.suptitle(title, fontsize=10)

    return figure(path, draw, size=(2.5 * len(names), 2.8))


def tsne_plot(z: np.ndarray, classes: np.ndarray, names, path: Path, seed: int) -> Path:
    """2-D t-SNE of latent vectors coloured by class (paper Fig. S9a)."""
    from sklearn.manifold import TSNE

    emb = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(z)

    def draw(fig):
        ax = fig.subplots()
        for c, name in enumerate(names):
            m = classes == c
            ax.scatter(emb[m, 0], emb[m, 1], s=4, label=f"{name} ({m.sum()})")
        ax.legend(markerscale=3)
        ax.set_title("CVAE latent space (t-SNE of z mean, test split)")

    return figure(path, draw, size=(6, 5))


def regressor_report(space: DesignSpace, model, x: np.ndarray, y: np.ndarray, paper: pd.DataFrame | None,
                     out_dir: Path, title: str) -> tuple[dict, list[Path]]:
    """Test metrics (flat), paper comparison table and parity plot of a forward regressor."""
    from deepdram.learn.metrics import flat_metrics, regression_table
    from deepdram.learn.models import predict

    pred = predict(model, x)
    table = regression_table(y, pred, space.properties, space.table_order)
    both = side_by_side(table, paper)
    files = write_table(both, out_dir / "test_metrics", f"{title}: test split, deepdram vs paper")
    files.append(parity_plot(y, pred, space.properties, out_dir / "parity.png", f"{title} (test split, {len(y):,} rows)"))
    print(f"\n{title} — test split ({len(y):,} rows), next to the paper:\n{both.round(4).to_string()}")
    return flat_metrics(table, "test"), files


def eval_draws(n: int, tsne_points: int, n_targets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the t-SNE sample and of the generation targets (one seeded stream)."""
    rng = np.random.default_rng(seed)
    tsne_idx = rng.permutation(n)[: min(tsne_points, n)]
    return tsne_idx, rng.permutation(n)[: min(n_targets, n)]


def generated_best_of_k(space: DesignSpace, generator, forward, targets: np.ndarray, k: int, seed: int,
                        weights=None, designs: np.ndarray | None = None):
    """K designs per target from the generator (threshold rule) and the best valid one each by the
    forward model (`generation.best_of_k`; `weights` per property: None the paper's unweighted MSE,
    1 / train variance the scaled rule). Pass `designs` to choose again among the same candidates."""
    from deepdram.learn.generation import best_of_k, generate, generator_decoder, latent_size
    from deepdram.learn.models import predict

    if designs is None:
        designs = generate(generator_decoder(generator, 65536), targets, k,
                           latent_size(generator, space.n_properties), np.random.default_rng(seed))
    return best_of_k(space, designs, lambda d: predict(forward, d.astype(np.float32)), targets, k, weights)


def group_r2(space: DesignSpace, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """R2 per property group: the space's tolerance groups (the lattice: E = mean of E11, E22 R2,
    nu = mean of nu12, nu21 R2) and overall."""
    from deepdram.learn.metrics import r2_scores

    r2 = r2_scores(y_true, y_pred)
    out = {g: float(np.mean([r2[space.properties.index(c)] for c in cols]))
           for g, (cols, _, _) in space.tolerance_groups.items()}
    return {**out, "overall": float(np.mean(r2))}


def by_group(space: DesignSpace, y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, name: str) -> pd.DataFrame:
    """R2 per property and overall for each value of `groups` (e.g. Z_g or the tiling size), with counts."""
    from deepdram.learn.metrics import r2_scores

    rows = []
    for g in np.unique(groups):
        m = groups == g
        r2 = r2_scores(y_true[m], y_pred[m])
        rows.append({name: g, "rows": int(m.sum()), **dict(zip(space.properties, r2)), "overall": float(np.mean(r2))})
    return pd.DataFrame(rows)


def generator_value(space: DesignSpace, generator, forward, y: np.ndarray, tsne_points: int, n_targets: int,
                    k: int, seed: int) -> float:
    """The generator's promotion metric (best-of-K R2 overall by the forward model) on test targets,
    computed exactly as `generator_report` computes it."""
    from deepdram.learn.metrics import r2_overall

    _, t_idx = eval_draws(len(y), tsne_points, n_targets, seed)
    g = generated_best_of_k(space, generator, forward, y[t_idx], k, seed)
    return r2_overall(y[t_idx][g.has], g.chosen_properties)


def generator_report(space: DesignSpace, generator, encoder, forward, x: np.ndarray, y: np.ndarray, *, k: int,
                     n_targets: int, tsne_points: int, seed: int, out_dir: Path, paper_tables: dict | None,
                     variances=None, prefix: str = "test") -> tuple[dict, list[Path]]:
    """Reconstruction scores, latent t-SNE, single-shot and best-of-K generation (forward model and
    oracle) under the paper's selection (unweighted MSE) and, with `variances`, the scaled one."""
    from deepdram.learn.metrics import flat_metrics, reconstruction_scores, regression_table
    from deepdram.learn.models import designs_from_probabilities, predict, reconstruct

    props, order = space.properties, space.table_order
    metrics: dict[str, float] = {}
    files: list[Path] = []

    # reconstruction of the test designs through z mean (paper Fig. S9b)
    p_rec = reconstruct(generator, encoder, x, y)
    d_rec = designs_from_probabilities(p_rec)
    props_rec = predict(forward, d_rec.astype(np.float32))
    rec = reconstruction_scores(x, p_rec, y, props_rec, classify=space.classify)
    metrics.update({f"{prefix}_recon_{m}": float(rec[m]) for m in ("precision", "recall", "f1")})
    if "confusion" in rec:
        names = space.class_names
        cm = pd.DataFrame(rec["confusion"], index=list(names), columns=[f"pred {n}" for n in names])
        files += write_table(cm, out_dir / "confusion_matrix",
                             "Reconstruction: class confusion matrix (rows: true)")

    tsne_idx, t_idx = eval_draws(len(x), tsne_points, n_targets, seed)
    z = predict(encoder, np.concatenate([x[tsne_idx], y[tsne_idx]], axis=1))
    classes = space.classify(y[tsne_idx])
    if classes is not None:
        files.append(tsne_plot(z, classes, space.class_names, out_dir / "latent_tsne.png", seed))

    # generation for test targets (Tables S8, S9) and oracle verification
    targets = y[t_idx]
    g = generated_best_of_k(space, generator, forward, targets, k, seed)
    keys = space.keys(g.designs)
    metrics[f"{prefix}_gen_valid_share"] = float(g.valid.mean())
    metrics[f"{prefix}_gen_distinct_share"] = float(len(np.unique(keys[g.valid])) / max(1, g.valid.sum()))
    single_props = predict(forward, g.designs.reshape(len(targets), k, -1)[:, 0].astype(np.float32))
    single = regression_table(targets, single_props, props, order)
    best_table = regression_table(targets[g.has], g.chosen_properties, props, order)
    fe = space.evaluate(g.chosen, validate=False).properties
    fe_table = regression_table(targets[g.has], fe, props, order)
    metrics[f"{prefix}_gen_targets_with_valid_design"] = float(g.has.mean())
    metrics.update(flat_metrics(single, f"{prefix}_gen_single"))
    metrics.update(flat_metrics(best_table, f"{prefix}_gen_best"))
    metrics.update(flat_metrics(fe_table, f"{prefix}_gen_best_fe"))
    metrics.update({f"{prefix}_gen_best_fe_r2_{n}": v for n, v in group_r2(space, targets[g.has], fe).items()
                    if n != "overall"})
    metrics.update({f"{prefix}_gen_best_r2_{n}": v for n, v in group_r2(space, targets[g.has], g.chosen_properties).items()
                    if n != "overall"})
    if variances is not None:  # the scaled rule, choosing among the same candidates
        gs = generated_best_of_k(space, generator, forward, targets, k, seed, 1.0 / np.asarray(variances),
                                 designs=g.designs)
        fe_s = space.evaluate(gs.chosen, validate=False).properties
        metrics.update({f"{prefix}_gen_scaled_best_r2_{n}": v
                        for n, v in group_r2(space, targets[gs.has], gs.chosen_properties).items()})
        metrics.update({f"{prefix}_gen_scaled_best_fe_r2_{n}": v
                        for n, v in group_r2(space, targets[gs.has], fe_s).items()})
        scaled_table = regression_table(targets[gs.has], fe_s, props, order)
        files += write_table(scaled_table, out_dir / "generator_best_of_k_scaled_fe",
                             f"Generator, best of {k} by the scaled error, properties by FE")
        files.append(parity_plot(targets[gs.has], fe_s, props, out_dir / "generator_scaled_best_fe_parity.png",
                                 f"Generator best of {k} (scaled selection): FE-verified properties vs targets"))
    best_vs_paper = side_by_side(best_table, paper_table(paper_tables, "table9_generator_best_of_100"))
    files += write_table(side_by_side(single, paper_table(paper_tables, "table8_generator_single")),
                         out_dir / "generator_single_shot",
                         "Generator, single shot, properties by the forward model (paper Table S8)")
    files += write_table(best_vs_paper, out_dir / "generator_best_of_k",
                         f"Generator, best of {k}, properties by the forward model (paper Table S9)")
    files += write_table(fe_table, out_dir / "generator_best_of_k_fe", f"Generator, best of {k}, properties by FE")
    files.append(parity_plot(targets[g.has], g.chosen_properties, props, out_dir / "generator_best_parity.png",
                             f"Generator best of {k}: forward-model properties vs targets"))
    files.append(parity_plot(targets[g.has], fe, props, out_dir / "generator_best_fe_parity.png",
                             f"Generator best of {k}: FE-verified properties vs targets"))
    print(f"\nGenerator, best of {k} ({g.has.sum():,} targets), forward model, next to the paper:\n"
          f"{best_vs_paper.round(4).to_string()}")
    print(f"FE-verified R2 overall {fe_table.loc['R2', 'overall']:.4f}; valid {metrics[f'{prefix}_gen_valid_share']:.3f}, "
          f"distinct {metrics[f'{prefix}_gen_distinct_share']:.3f}; reconstruction F1 {metrics[f'{prefix}_recon_f1']:.3f}")
    return metrics, files
