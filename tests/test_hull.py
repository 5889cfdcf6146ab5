"""Convex-hull distances: closed forms, the direct cvxpy solve, and LP membership."""
import itertools

import numpy as np
import pytest

from tfgeom import InputError
from tfgeom.features.hull import HullEngine, direct_distance, in_hull_lp


def _cube(d):
    return np.array(list(itertools.product([0.0, 1.0], repeat=d)))


@pytest.mark.parametrize("d", [2, 4, 6])
def test_cube_distances_are_the_closed_form(d):
    """Distance to the unit cube: 0 inside, ||q - clip(q, 0, 1)|| outside."""
    rng = np.random.default_rng(d)
    queries = np.concatenate([rng.uniform(0, 1, (5, d)), rng.uniform(-2, 3, (10, d))])
    expected = np.linalg.norm(queries - np.clip(queries, 0, 1), axis=1)
    result = HullEngine(_cube(d), working_size=4).distance(queries)
    np.testing.assert_allclose(result.distance, expected, atol=1e-9)
    np.testing.assert_allclose(result.projection, np.clip(queries, 0, 1), atol=1e-8)
    for w in result.weights:
        assert np.all(w > 0) and abs(w.sum() - 1) < 1e-12


@pytest.mark.parametrize("n, d", [(60, 3), (300, 10), (800, 40)])
def test_engine_equals_direct_cvxpy_solve(n, d):
    """Random clouds with duplicates: distances equal the direct Clarabel solve within 1e-5."""
    rng = np.random.default_rng(n)
    points = rng.normal(size=(n, d))
    points = np.concatenate([points, points[:10]])  # exact duplicates
    queries = np.concatenate([2.0 * rng.normal(size=(6, d)), points[3:5], 0.01 * rng.normal(size=(2, d))])
    result = HullEngine(points, working_size=8).distance(queries)
    for q, got in zip(queries, result.distance):
        ref, _ = direct_distance(points, q)
        assert abs(got - ref) <= 1e-5
    assert result.distance[6] < 1e-9 and result.distance[7] < 1e-9  # queries equal to vertices


def test_membership_agrees_with_lp_feasibility():
    """Zero distance exactly where the LP finds q as a convex combination."""
    rng = np.random.default_rng(3)
    points = rng.normal(size=(40, 5))
    inside = rng.dirichlet(np.ones(40), size=4) @ points
    outside = 3.0 * rng.normal(size=(4, 5)) + 6.0
    result = HullEngine(points).distance(np.concatenate([inside, outside]))
    for q, dist in zip(np.concatenate([inside, outside]), result.distance):
        assert (dist <= 1e-7) == in_hull_lp(points, q)


def test_bad_points_are_refused():
    """Empty or non-finite point sets and wrong query shapes get InputError."""
    with pytest.raises(InputError):
        HullEngine(np.zeros((0, 3)))
    with pytest.raises(InputError):
        HullEngine(np.array([[0.0, np.nan]]))
    with pytest.raises(InputError):
        HullEngine(np.zeros((3, 2))).distance(np.zeros((1, 3)))


def test_streamed_points_give_the_exact_distances_without_a_copy():
    """With a memory budget far below the points' size the engine streams the caller's float32 array in
    chunks (no copy kept) and returns the in-memory engine's distances, which match cvxpy's direct QP."""
    rng = np.random.default_rng(5)
    points = rng.normal(size=(300, 40)).astype(np.float32)
    queries = np.concatenate([rng.normal(size=(4, 40)) * 2.0, points[:2].astype(np.float64) * 0.5])
    whole = HullEngine(points)
    streamed = HullEngine(points, memory_budget=20_000)  # ~ 60 rows per chunk
    assert streamed.streamed and not whole.streamed and streamed.chunk < 100
    assert streamed._data is points
    a, b = whole.distance(queries), streamed.distance(queries)
    np.testing.assert_allclose(b.distance, a.distance, rtol=1e-9, atol=1e-9)
    for q, d in zip(queries, b.distance):
        ref, _ = direct_distance(points.astype(np.float64), q)
        assert d == pytest.approx(ref, rel=1e-4, abs=1e-6)
