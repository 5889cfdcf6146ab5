"""Connectivity: a ring is connected but not convex; two blobs are never reported connected."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgeom import GeometryModel, InputError
from tfgeom.geometry.attacks import fgsm, pgd
from tfgeom.geometry.connectivity import connect


def _toy(score):
    """A 2-D classifier with logits [score(x), 0]: class 0 where score > 0."""
    inputs = keras.Input((2,))
    out = keras.layers.Lambda(lambda t: tf.stack([score(t), tf.zeros_like(t[:, 0])], axis=1))(inputs)
    return GeometryModel(keras.Model(inputs, out), bounds=(-4.0, 4.0))


def _ring(t):
    r = tf.norm(t, axis=1)
    return 0.25 - (r - 1.5) ** 2  # class 0 on the annulus 1 < r < 2


def _blobs(t):
    a = 0.36 - tf.reduce_sum((t - [-2.0, 0.0]) ** 2, axis=1)
    b = 0.36 - tf.reduce_sum((t - [2.0, 0.0]) ** 2, axis=1)
    return tf.maximum(a, b)  # class 0 on two discs of radius 0.6


def _dense_check(gm, anchors, label, step=1e-3):
    for u, v in zip(anchors[:-1], anchors[1:]):
        n = int(np.ceil(np.linalg.norm(v - u) / step)) + 1
        pts = u + np.linspace(0, 1, n)[:, None] * (v - u)
        if not np.all(gm.predict(pts) == label):
            return False
    return True


def test_ring_region_is_connected_by_a_bending_path():
    """Opposite points of a ring: the segment crosses the hole, the found path bends and stays inside."""
    gm = _toy(_ring)
    angles = np.array([0.1, 1.0, 2.0])
    x1 = 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    x2 = -x1 * np.array([1.0, 0.97], np.float32)
    paths = connect(gm, x1, x2, max_anchors=32)
    assert paths.connected.all()
    assert not paths.straight.any()  # not convex: the plain segment leaves the region
    assert np.all(paths.num_anchors >= 1) and np.all(paths.straightness > 1.0)
    for anchors in paths.anchors:
        assert _dense_check(gm, anchors, 0)  # verified independently at a much finer spacing


def test_two_blobs_are_never_reported_connected():
    """Points in two disjoint discs: not connected within the budget, never connected."""
    gm = _toy(_blobs)
    x1 = np.array([[-2.0, 0.1], [-2.2, -0.1]], np.float32)
    x2 = np.array([[2.0, -0.1], [2.1, 0.2]], np.float32)
    paths = connect(gm, x1, x2, max_anchors=8)
    assert not paths.connected.any()


def test_same_blob_pairs_are_straight():
    """Within one disc (convex) the plain segment is the path."""
    gm = _toy(_blobs)
    paths = connect(gm, np.array([[-2.3, 0.0]], np.float32), np.array([[-1.7, 0.1]], np.float32))
    assert paths.connected.all() and paths.straight.all() and paths.num_anchors[0] == 0


def test_pairs_of_different_classes_are_refused():
    """connect() needs both endpoints in the same predicted class."""
    gm = _toy(_blobs)
    with pytest.raises(InputError, match="different predicted classes"):
        connect(gm, np.array([[-2.0, 0.0]], np.float32), np.array([[0.0, 3.0]], np.float32))


def test_attacks_respect_bounds_and_budgets(small_cnn, digits):
    """FGSM and PGD stay inside the eps-ball and the bounds; PGD fools at least as often as FGSM."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:40]
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        one = fgsm(gm, x, eps, norm=norm)
        many = pgd(gm, x, eps, norm=norm, steps=10)
        for result in (one, many):
            xa = result.x_adv
            d = (xa - x).reshape(len(x), -1)
            size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
            assert np.all(size <= eps * (1 + 1e-5)) and xa.min() >= 0 and xa.max() <= 1
            np.testing.assert_allclose(result.norms, size, rtol=1e-6)
            np.testing.assert_array_equal(result.success, result.adv_labels != result.labels)
        assert np.mean(many.success) >= np.mean(one.success)
    # targeted PGD: the same call shape as DeepFool's, success = reaching the target
    targets = (gm.predict(x) + 1) % 10
    hit = pgd(gm, x, 0.3, targets=targets, steps=20)
    np.testing.assert_array_equal(hit.success, hit.adv_labels == targets)
    assert hit.success.mean() > 0.5


def _wedge_model(width=0.002, height=0.2):
    """A ReLU network on [0, 1]^2 whose class 1 is a thin diamond around (0.5, 0.5), |x0 - 0.5| < width / 2 on the
    line x1 = 0.5: class 0 everywhere else."""
    inputs = keras.Input((2,))
    h = keras.layers.Dense(4, activation="relu")(inputs)
    h = keras.layers.Dense(1, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.layers[1].set_weights([np.array([[1, -1, 0, 0], [0, 0, 1, -1]], np.float32),
                                 np.array([-0.5, 0.5, -0.5, 0.5], np.float32)])
    model.layers[2].set_weights([np.array([[-1 / width], [-1 / width], [-1 / height], [-1 / height]], np.float32),
                                 np.array([1.0], np.float32)])
    model.layers[3].set_weights([np.array([[0.0, 2.0]], np.float32), np.array([0.0, -1.0], np.float32)])
    return GeometryModel(model)


def test_a_thin_wedge_between_samples_is_caught_by_the_proof():
    """Sampling at the default spacing misses a class-1 wedge crossing the segment and calls the pair connected;
    the certificate over the segment refuses it, and the path re-routed around the refused piece is proved (and,
    sampled 10^5 times finer, never enters the wedge); the same segment moved off the wedge is proved as it is."""
    from tfgeom.analyses.connectivity import _prove, prove_paths

    gm = _wedge_model()
    ends = None
    for b0 in np.linspace(0.85, 0.95, 2001):  # an end whose sample points all miss the wedge
        t = np.linspace(0.0, 1.0, int(np.ceil((b0 - 0.1) / ((b0 - 0.1) / 256))) + 1)
        if np.min(np.abs(0.1 + t * (b0 - 0.1) - 0.5)) > 0.0012:
            ends = b0
            break
    assert ends is not None
    a = np.array([[0.1, 0.5], [0.1, 0.8]], np.float32)
    b = np.array([[ends, 0.5], [ends, 0.8]], np.float32)
    assert gm.predict(np.array([[0.5, 0.5]], np.float32))[0] == 1  # the wedge is there
    paths = gm.connect(a, b)
    assert paths.connected.all() and paths.straight.all()  # sampling saw nothing
    straight = _prove(gm, [(list(zip(paths.anchors[0][:-1], paths.anchors[0][1:])), 0)], 4, "crown", "forward")
    assert not straight[0].proved  # the certificate refuses the straight segment through the wedge
    proofs = prove_paths(gm, paths, depth=4)
    assert proofs.status == ["proved", "proved"] and list(proofs.detours) == [1, 0]
    detour = proofs.anchors[0]
    assert len(detour) > len(paths.anchors[0]) and np.array_equal(detour[0], a[0]) and np.array_equal(detour[-1], b[0])
    t = np.linspace(0.0, 1.0, 100001)[:, None]
    dense = np.concatenate([u + t * (v - u) for u, v in zip(detour[:-1], detour[1:])]).astype(np.float32)
    assert (gm.predict(dense) == 0).all()  # the proved path stays in class 0, checked independently
    assert proofs.pieces[1] >= 1 and proofs.margin_bound[1] > 0 and proofs.margin_bound[0] > 0
