"""Curvature-asymmetry detection on a boundary with known curvature, and API checks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgeom import GeometryModel, InputError
from tfgeom.detection import CurvatureDetector, evaluate

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
