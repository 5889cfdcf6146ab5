"""Feature space: polyhedral regions against cvxpy, guaranteed regions against the model."""
import cvxpy as cp
import numpy as np
import pytest

from tfgeom import GeometryModel
from tfgeom.features.feature_space import FeatureSpace
from tfgeom.features.hull import CLARABEL_TIGHT


@pytest.fixture(scope="module")
def space(small_cnn, digits):
    return FeatureSpace(GeometryModel(small_cnn), digits.x_train[:600], digits.y_train[:600])


def _qp_distance(fs, z, c, j, nonneg):
    """Independent: min ||p - z|| s.t. the head scores j at least as high as c (and p >= 0)."""
    p = cp.Variable(len(z))
    a = fs.W[:, j] - fs.W[:, c]
    cons = [a @ p + fs.b[j] - fs.b[c] >= 0] + ([p >= 0] if nonneg else [])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(p - z)), cons)
    prob.solve(solver="CLARABEL", **CLARABEL_TIGHT)
    return np.sqrt(max(prob.value, 0.0))


@pytest.mark.parametrize("nonneg", [False, True])
def test_boundary_distances_equal_an_independent_qp(space, digits, nonneg):
    """Closed form (and the z >= 0 multiplier search) equal the cvxpy QP over every class pair."""
    z = space.gm.features(digits.x[:6]).astype(np.float64)
    reg = space.regions(z, nonneg=nonneg)
    for i in range(len(z)):
        c = reg.cls[i]
        expected = min(_qp_distance(space, z[i], c, j, nonneg) for j in range(10) if j != c)
        assert reg.distance[i] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        # The flip point lies on the boundary: classes c and nearest tie there.
        logits = reg.flip_point[i] @ space.W + space.b
        assert logits[reg.nearest[i]] == pytest.approx(logits[c], abs=1e-6 * np.abs(logits).max())
        if nonneg:
            assert reg.flip_point[i].min() >= 0
    np.testing.assert_array_equal(space.boundary_distance(z, nonneg=nonneg), reg.distance)


def test_guaranteed_regions_hold_for_random_convex_combinations(space):
    """Every convex combination of class-c training features is classified c by the head."""
    rng = np.random.default_rng(0)
    for c in range(10):
        pts = space.features[(space.predicted == c) & space.correct]
        combos = rng.dirichlet(np.full(len(pts), 0.3), size=200) @ pts
        assert np.all((combos @ space.W + space.b).argmax(1) == c)
        assert space.in_hull(combos[:3], cls=c).all()


def test_training_points_are_in_their_hull_and_pixel_space_works(space, digits):
    """A training feature is in the overall hull (distance 0); pixel-space hull distances are finite."""
    res = space.hull_distance(space.features[:3])
    np.testing.assert_allclose(res.distance, 0, atol=1e-7)
    pix = space.hull_distance(digits.x[:3], space="pixel")
    assert np.all(np.isfinite(pix.distance)) and np.all(pix.distance >= 0)
    cls, inside, dist = space.guaranteed(space.x_train[:20])
    assert np.all(inside[space.correct[:20]])  # a correctly classified training point is in its class hull
    assert np.all(dist[~inside] > 0)


def test_feature_line_between_same_class_ends_never_changes_class(space, digits):
    """Morphing: the straight feature line between two class-c points stays in class c; ends match."""
    preds = space.gm.predict(digits.x[:50])
    a, b = np.flatnonzero(preds == preds[0])[:2]
    m = space.morph(digits.x[a], digits.x[b], steps=11)
    assert np.all(m.feature_classes == preds[a])
    assert m.pixel_classes[0] == m.pixel_classes[-1] == preds[a]
    np.testing.assert_allclose(m.pixel_path[0], digits.x[a])
    assert m.feature_hull_distance.shape == (11,)
    # The feature line is a convex combination of its ends: its hull distance is at most the ends' maximum.
    assert m.feature_hull_distance.max() <= max(m.feature_hull_distance[[0, -1]]) + 1e-6
