"""Curvature-asymmetry detection on a boundary with known curvature, and API checks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgeom import GeometryModel, InputError
from tfgeom.geometry.detection import CurvatureDetector, evaluate

D = 10


@pytest.fixture(scope="module")
def ball():
    """Class 0 inside a ball (F = R^2 - ||x - c||^2, second derivative -2 in every direction), class 1 outside."""
    center = np.full(D, 0.5, np.float32)
    inputs = keras.Input((D,))
    out = keras.layers.Lambda(
        lambda t: tf.stack([2.25 - tf.reduce_sum((t - center) ** 2, axis=1), tf.zeros_like(t[:, 0])], axis=1)
    )(inputs)
    gm = GeometryModel(keras.Model(inputs, out), bounds=(-10.0, 10.0))
    rng = np.random.default_rng(0)
    x = center + rng.normal(size=(120, D)).astype(np.float32) * 0.3
    x = x[np.linalg.norm(x - center, axis=1) < 1.2][:80]  # clean points well inside the ball
    assert len(x) == 80
    return gm, x


def test_second_differences_equal_the_analytic_curvature(ball):
    """rho = F'' along unit directions: -2 for clean points inside the ball, for every direction average."""
    gm, x = ball
    det = CurvatureDetector(gm, directions=8, step=0.1, candidates=1)
    labels, cands, rho = det.curvatures(x)
    assert np.all(labels == 0) and np.all(cands[:, 0] == 1)
    np.testing.assert_allclose(rho[:, 0], -2.0, rtol=1e-3)


def test_detector_separates_deepfool_crossings_and_recovers_the_label(ball):
    """Perturbed points see F'' = +2 from the other side: AUC 1, all detected, label recovered."""
    gm, x = ball
    det = CurvatureDetector(gm, directions=8, step=0.1, candidates=1).fit(x[:40])
    assert det.orientation == 1.0
    result = evaluate(det, x[40:], gm.deepfool(x[40:], norm="l2"), "deepfool-l2")
    assert result.auc == 1.0 and result.tpr == 1.0
    assert result.fpr <= 0.1  # clean scores tie at -2 up to rounding; the threshold is their 95% quantile
    assert result.recovery == 1.0


def test_unfitted_detector_and_bad_arguments_are_refused(ball):
    """Scoring before fit and an fpr outside (0, 1) give InputError."""
    gm, x = ball
    with pytest.raises(InputError, match="fit"):
        CurvatureDetector(gm).detect(x[:2])
    with pytest.raises(InputError, match="fpr"):
        CurvatureDetector(gm, fpr=1.5)


def test_false_positive_rate_on_calibration_data_is_at_most_the_target(small_cnn, digits):
    """On its own calibration inputs the detector flags at most fpr of them (quantile threshold)."""
    gm = GeometryModel(small_cnn)
    det = CurvatureDetector(gm, directions=8, fpr=0.1).fit(digits.x[:100])
    assert np.mean(det.detect(digits.x[:100])) <= 0.1
    assert det.recover(digits.x[:5]).shape == (5,)


def test_max_class_rule_equals_a_direct_computation(small_cnn, digits):
    """The authors' score, max over classes i != k of the curvature of f_i - f_k, recomputed from the logits
    at x +- h v with NumPy; the recovered label is its argmax."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:12]
    det = CurvatureDetector(gm, directions=4, rule="max-class").fit(digits.x[12:40])
    assert det.orientation == -1.0 and det.candidates == gm.num_classes - 1
    v, h = det.directions, det.step
    logits = gm.runtime.logits  # the neighbours may leave the input bounds, where the model is evaluated as it is
    z0 = logits(x)
    second = np.mean([logits(x + h * v[r]) + logits(x - h * v[r]) - 2 * z0 for r in range(len(v))], 0) / h**2
    k = z0.argmax(1)
    curv = second - second[np.arange(len(x)), k][:, None]  # curvature of f_i - f_k
    curv[np.arange(len(x)), k] = -np.inf
    np.testing.assert_allclose(det.score(x), curv.max(1), rtol=1e-3, atol=1e-3 * np.abs(curv[np.isfinite(curv)]).max())
    assert np.array_equal(det.recover(x), curv.argmax(1))


def test_calibrate_chooses_the_best_calibration_auc(small_cnn, digits):
    """`calibrate` returns the grid row with the largest AUC on the calibration split, and the detector it
    returns reproduces that AUC (scikit-learn) on the same calibration inputs and perturbations."""
    from sklearn.metrics import roc_auc_score

    from tfgeom.geometry.detection import calibrate

    gm = GeometryModel(small_cnn)
    x_cal = digits.x[:40]
    attack = gm.deepfool(x_cal)
    det, rows = calibrate(gm, x_cal, attack, step_scales=(0.3, 3.0), counts=(8,))
    assert len(rows) == 2 * 3  # two steps x (runner-up + max-class with both signs)
    best = max(rows, key=lambda r: r["calibration_auc"])
    assert det.rule == best["rule"] and det.step == pytest.approx(best["step"])
    s_clean, s_dirty = det.score(x_cal), det.score(attack.x_adv[attack.success])
    auc = roc_auc_score(np.r_[np.zeros(len(s_clean)), np.ones(len(s_dirty))], np.r_[s_clean, s_dirty])
    assert auc == pytest.approx(best["calibration_auc"], abs=1e-6)
    sides = {(r["step_scale"], r["side"]): r["calibration_auc"] for r in rows if r["rule"] == "max-class"}
    for scale in (0.3, 3.0):  # the two flag sides of one score: AUCs sum to 1
        assert sides[(scale, "above")] + sides[(scale, "below")] == pytest.approx(1.0, abs=1e-9)
