"""Evaluation metrics of the models (NumPy / pandas only, no Keras).

Property arrays are ordered as the design space orders them (the lattice: [E11/Eb, E22/Eb,
nu12, nu21]); a regression table lists them in the space's display order (the lattice: the
paper's nu12, nu21, E11, E22 of supplementary Tables 6, 8, 9, 12), then "overall".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from deepdram.errors import InputError

TABLE_ROWS = ("R2", "MSE", "MAE", "RMSE")


def _props(a, what: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or (n is not None and a.shape[1] != n):
        raise InputError(f"{what} must have shape (N, {n if n is not None else 'P'}); got {a.shape}")
    return a


def r2_scores(y_true, y_pred) -> np.ndarray:
    """Per-column R2 = 1 - SS_res / SS_tot (a constant target gives 1.0 if predicted exactly, else 0.0)."""
    yt, yp = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    ss_res = np.sum((yt - yp) ** 2, axis=0)
    ss_tot = np.sum((yt - yt.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))


def r2_overall(y_true, y_pred) -> float:
    """Uniform mean over columns of R2 (scikit-learn's multioutput='uniform_average')."""
    return float(np.mean(r2_scores(y_true, y_pred)))


def regression_table(y_true, y_pred, columns: Sequence[str], order: Sequence[str] | None = None) -> pd.DataFrame:
    """R2, MSE, MAE, RMSE per property and overall, laid out like the paper's tables.

    `columns` names the properties in data order; `order` is the display order (default: data
    order), e.g. the lattice space's `table_order`.

    Per property: R2 = 1 - SS_res / SS_tot (Eq. 2; a constant target gives 1.0 if predicted
    exactly, else 0.0, as scikit-learn), MSE, MAE, RMSE = sqrt(MSE). "overall" is the uniform mean
    of the four per-property values for every row (scikit-learn's multioutput="uniform_average";
    RMSE overall is the mean of the four RMSEs). This reproduces the paper's Overall columns,
    e.g. Table 6: mean(0.9934, 0.9945, 0.9997, 0.9997) = 0.9968.
    """
    columns = list(columns)
    yt, yp = _props(y_true, "y_true", len(columns)), _props(y_pred, "y_pred", len(columns))
    if yt.shape != yp.shape or len(yt) == 0:
        raise InputError(f"y_true and y_pred need the same non-empty shape; got {yt.shape}, {yp.shape}")
    res = yt - yp
    mse = np.mean(res**2, axis=0)
    mae = np.mean(np.abs(res), axis=0)
    rows = {"R2": r2_scores(yt, yp), "MSE": mse, "MAE": mae, "RMSE": np.sqrt(mse)}
    shown = list(order or columns)
    idx = [columns.index(c) for c in shown]
    data = {name: [*vals[idx], float(np.mean(vals))] for name, vals in rows.items()}
    return pd.DataFrame.from_dict(data, orient="index", columns=[*shown, "overall"]).loc[list(TABLE_ROWS)]


def flat_metrics(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    """{f"{prefix}_{row lower-cased}_{column}": value}, e.g. test_r2_overall, test_mse_E11."""
    sep = "_" if prefix else ""
    return {f"{prefix}{sep}{row.lower()}_{col}": float(table.loc[row, col])
            for row in table.index for col in table.columns}


def confusion_3(true_cls, pred_cls) -> np.ndarray:
    """3 x 3 counts: rows actual class, columns predicted class (0, 1, 2)."""
    t, p = np.asarray(true_cls, np.int64).ravel(), np.asarray(pred_cls, np.int64).ravel()
    if t.shape != p.shape:
        raise InputError(f"class arrays differ in length: {t.size}, {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) > 2):
        raise InputError("classes must be 0, 1 or 2")
    return np.bincount(t * 3 + p, minlength=9).reshape(3, 3)


def reconstruction_scores(x_true, p_pred, props_true=None, props_pred=None, threshold: float = 0.5,
                          classify: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Bit-level scores of reconstructed designs and the 3-class auxeticity confusion matrix.

    x_true: (N, 42) 0/1 designs; p_pred: (N, 42) probabilities (or 0/1), a beam counts as
    predicted where p > threshold. precision, recall, f1 are micro-averaged over all N*42 bits
    (Eq. 6, positive = beam present); bit_accuracy is the fraction of bits right, exact_match the
    fraction of designs reconstructed without error. With props_true, props_pred (the properties
    of the true and of the reconstructed designs, however the caller got them) and `classify`
    (properties -> class 0, 1, 2, e.g. the lattice's auxeticity classes), also "confusion"
    (3 x 3, rows actual class) and "class_accuracy".
    """
    x = np.asarray(x_true)
    p = np.asarray(p_pred, dtype=np.float64)
    if x.ndim != 2 or x.shape != p.shape:
        raise InputError(f"x_true and p_pred need the same 2D shape; got {x.shape}, {p.shape}")
    t = x.astype(bool)
    y = p > threshold
    tp = int(np.sum(t & y))
    fp = int(np.sum(~t & y))
    fn = int(np.sum(t & ~y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "bit_accuracy": float(np.mean(t == y)) if t.size else 0.0,
        "exact_match": float(np.mean(np.all(t == y, axis=1))) if len(t) else 0.0,
    }
    if props_true is not None and props_pred is not None and classify is not None:
        cm = confusion_3(classify(props_true), classify(props_pred))
        out["confusion"] = cm
        out["class_accuracy"] = float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0
    return out


def best_of_k(target, candidates_props, weights=None) -> np.ndarray:
    """Index (N,) of the candidate whose properties are closest to each target by MSE.

    target: (N, P); candidates_props: (N, K, P). The MSE is the mean over the P properties of
    the squared differences, in the units given (the paper compares physical values); optional
    per-property `weights` (P,) multiply the squared differences. Ties go to the lowest index;
    candidates with non-finite properties never win unless all are non-finite.
    """
    t = _props(target, "target")
    n_p = t.shape[1]
    c = np.asarray(candidates_props, dtype=np.float64)
    if c.ndim != 3 or c.shape[0] != t.shape[0] or c.shape[2] != n_p or c.shape[1] == 0:
        raise InputError(f"candidates_props must have shape (N, K, {n_p}) with N = {len(t)}; got {c.shape}")
    w = np.ones(n_p) if weights is None else np.asarray(weights, dtype=np.float64).reshape(n_p)
    mse = np.mean(w * (c - t[:, None, :]) ** 2, axis=2)
    mse = np.where(np.isfinite(mse), mse, np.inf)
    return np.argmin(mse, axis=1)


def best_of_k_mse(target, candidates_props, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """(index, its MSE) of the best candidate per target; see `best_of_k`."""
    idx = best_of_k(target, candidates_props, weights)
    c = np.asarray(candidates_props, dtype=np.float64)[np.arange(len(idx)), idx]
    w = np.ones(c.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64).reshape(c.shape[1])
    return idx, np.mean(w * (c - np.asarray(target, dtype=np.float64)) ** 2, axis=1)
