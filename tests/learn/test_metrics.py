"""Tests of deepdram.learn.metrics (regression tables, reconstruction scores, best of K) and the
lattice space's auxeticity classes they use. Truth: hand-computed numbers and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from deepdram.errors import InputError
from deepdram.learn import metrics as X
from deepdram.spaces.lattice.space import LatticeSpace, auxeticity_class

SPACE = LatticeSpace()


def regression_table(y_true, y_pred):
    """The paper's table layout (nu12, nu21, E11, E22, overall) of the lattice's properties."""
    return X.regression_table(y_true, y_pred, SPACE.properties, SPACE.table_order)


# [E11, E22, nu12, nu21]
Y_TRUE = np.array([[0.10, 0.20, 0.3, -0.1], [0.20, 0.10, 0.1, 0.2], [0.30, 0.30, -0.2, 0.5], [0.0, 0.4, 0.2, 0.0]])
Y_PRED = np.array([[0.12, 0.20, 0.2, -0.1], [0.18, 0.10, 0.1, 0.3], [0.30, 0.25, -0.1, 0.4], [0.0, 0.4, 0.2, 0.0]])


def test_regression_table_hand_computed():
    t = regression_table(Y_TRUE, Y_PRED)
    assert list(t.columns) == ["nu12", "nu21", "E11", "E22", "overall"]
    assert list(t.index) == ["R2", "MSE", "MAE", "RMSE"]
    # E11: errors -0.02, 0.02, 0, 0 -> MSE 2e-4, MAE 0.01; mean 0.15, SS_tot 0.05, SS_res 8e-4
    assert t.loc["MSE", "E11"] == pytest.approx(2e-4)
    assert t.loc["MAE", "E11"] == pytest.approx(0.01)
    assert t.loc["RMSE", "E11"] == pytest.approx(np.sqrt(2e-4))
    assert t.loc["R2", "E11"] == pytest.approx(1 - 8e-4 / 0.05)
    # nu12: errors 0.1, 0, -0.1, 0 -> MSE 0.005; mean 0.1, SS_tot 0.14 -> R2 = 1 - 0.02 / 0.14
    assert t.loc["MSE", "nu12"] == pytest.approx(0.005)
    assert t.loc["R2", "nu12"] == pytest.approx(1 - 0.02 / 0.14)
    for row in t.index:  # overall = uniform mean of the four
        assert t.loc[row, "overall"] == pytest.approx(t.loc[row, ["nu12", "nu21", "E11", "E22"]].mean())
    assert regression_table(Y_TRUE, Y_TRUE).loc["R2", "overall"] == 1.0


def test_regression_table_matches_sklearn():
    rng = np.random.default_rng(0)
    yt = rng.normal(size=(200, 4)) * [0.05, 0.05, 0.3, 0.3]
    yp = yt + rng.normal(size=(200, 4)) * [0.01, 0.02, 0.1, 0.2]
    t = regression_table(yt, yp)
    cols = ["E11", "E22", "nu12", "nu21"]  # data order
    np.testing.assert_allclose(t.loc["R2", cols], skm.r2_score(yt, yp, multioutput="raw_values"))
    np.testing.assert_allclose(t.loc["MSE", cols], skm.mean_squared_error(yt, yp, multioutput="raw_values"))
    np.testing.assert_allclose(t.loc["MAE", cols], skm.mean_absolute_error(yt, yp, multioutput="raw_values"))
    np.testing.assert_allclose(t.loc["RMSE", cols], skm.root_mean_squared_error(yt, yp, multioutput="raw_values"))
    assert t.loc["R2", "overall"] == pytest.approx(skm.r2_score(yt, yp))
    assert t.loc["MSE", "overall"] == pytest.approx(skm.mean_squared_error(yt, yp))
    assert t.loc["MAE", "overall"] == pytest.approx(skm.mean_absolute_error(yt, yp))
    assert t.loc["RMSE", "overall"] == pytest.approx(skm.root_mean_squared_error(yt, yp))
    # the paper's Table 6 overall R2 is this uniform mean
    assert np.mean([0.9934, 0.9945, 0.9997, 0.9997]) == pytest.approx(0.9968, abs=1e-4)


def test_r2_overall_matches_sklearn():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 4)) * [0.01, 0.1, 1, 10]
    p = y + rng.normal(size=y.shape) * [0.005, 0.02, 0.5, 1]
    assert X.r2_overall(y, p) == pytest.approx(r2_score(y, p), abs=1e-12)
    # invariant under per-column affine scaling (why per-epoch scores may use scaled targets)
    s, o = np.array([3.0, 0.5, 2.0, 7.0]), np.array([1.0, -2.0, 0.0, 5.0])
    assert X.r2_overall(y * s + o, p * s + o) == pytest.approx(X.r2_overall(y, p), abs=1e-12)


def test_flat_metrics():
    flat = X.flat_metrics(regression_table(Y_TRUE, Y_PRED), "test")
    assert len(flat) == 20
    assert flat["test_mse_E11"] == pytest.approx(2e-4)
    assert {"test_r2_overall", "test_r2_nu12", "test_rmse_nu21", "test_mae_E22"} <= set(flat)
    assert all(isinstance(v, float) for v in flat.values())


def test_auxeticity_class():
    props = np.array([
        [0.1, 0.1, -0.3, 0.2],   # one negative -> auxetic
        [0.1, 0.1, 0.3, -0.2],   # one negative -> auxetic
        [0.1, 0.1, 0.3, 0.2],    # both positive -> conventional
        [0.1, 0.1, 0.0, 0.0],    # zero is not auxetic -> conventional
        [0.1, 0.1, -0.3, -0.2],  # both negative -> double-auxetic
    ])
    np.testing.assert_array_equal(auxeticity_class(props), [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(SPACE.classify(props), [0, 0, 1, 1, 2])  # what the scores use
    assert SPACE.class_names == ("auxetic", "conventional", "double-auxetic")
    with pytest.raises(InputError):
        auxeticity_class(props[:, :3])


def test_reconstruction_scores_hand_and_sklearn():
    x = np.array([[1, 1, 0, 0], [1, 0, 1, 0]])
    p = np.array([[0.9, 0.4, 0.6, 0.1], [0.8, 0.2, 0.7, 0.5]])  # 0.5 is not > 0.5
    s = X.reconstruction_scores(x, p)
    # TP 3 (x[0,0], x[1,0], x[1,2]), FP 1 (x[0,2]), FN 1 (x[0,1])
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)
    assert s["bit_accuracy"] == pytest.approx(6 / 8) and s["exact_match"] == 0.5
    rng = np.random.default_rng(1)
    x = (rng.random((300, 42)) < 0.6).astype(np.uint8)
    p = np.clip(x * 0.7 + rng.random(x.shape) * 0.5 - 0.1, 0, 1)
    s = X.reconstruction_scores(x, p)
    pr, rc, f1, _ = skm.precision_recall_fscore_support(x.ravel(), (p > 0.5).ravel(), average="binary")
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((pr, rc, f1))
    yt = rng.normal(0.1, 0.3, size=(300, 4))
    yp = yt + rng.normal(0, 0.2, size=(300, 4))
    s = X.reconstruction_scores(x, p, yt, yp, classify=SPACE.classify)
    cm = skm.confusion_matrix(auxeticity_class(yt), auxeticity_class(yp), labels=[0, 1, 2])
    np.testing.assert_array_equal(s["confusion"], cm)
    assert s["class_accuracy"] == pytest.approx(np.trace(cm) / 300)


def test_best_of_k():
    target = np.array([[0.1, 0.1, 0.0, 0.0], [0.2, 0.2, -0.5, -0.5]])
    cand = np.array([
        [[0.1, 0.1, 0.3, 0.0], [0.1, 0.1, 0.0, 0.1], [0.1, 0.1, -0.2, 0.0]],  # MSE ~ 9, 1, 4 (x 0.01/4)
        [[0.2, 0.2, -0.5, -0.4], [0.2, 0.2, -0.5, -0.5], [np.nan, 0.2, -0.5, -0.5]],  # exact match at 1
    ])
    np.testing.assert_array_equal(X.best_of_k(target, cand), [1, 1])
    idx, mse = X.best_of_k_mse(target, cand)
    np.testing.assert_allclose(mse, [0.01 / 4, 0.0], atol=1e-15)
    # weights change the winner: ignore nu21 -> candidate 0 or 2 vs 1 in row 0
    np.testing.assert_array_equal(X.best_of_k(target, cand, weights=[1, 1, 1, 0])[0], 1)
    np.testing.assert_array_equal(X.best_of_k(target, cand, weights=[1, 1, 0, 1])[0], 0)
    with pytest.raises(InputError):
        X.best_of_k(target, cand[:1])
