"""Principal curvatures: Lanczos vs dense eigh, exact vs finite-difference HVPs, closed forms."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgeom import GeometryModel
from tfgeom.geometry import curvature, hvp

from conftest import linear_model

D = 12


@pytest.fixture(scope="module")
def smooth_gm():
    """A random tanh/softplus network on 12 inputs (a smooth, curved boundary)."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(16, activation="softplus"),
            keras.layers.Dense(4),
        ]
    )
    return GeometryModel(model, bounds=(-3.0, 3.0))


def _points(n=6, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, D)).astype(np.float32)


def test_lanczos_extremes_equal_dense_eigh(smooth_gm):
    """Lanczos' most negative and positive curvatures equal dense eigh within 1e-3 relative."""
    x = _points()
    lan = smooth_gm.principal_curvatures(x, k=3, hvp="exact", steps=D - 1)
    den = smooth_gm.principal_curvatures(x, k=3, hvp="exact", method="dense")
    idx, idx2 = lan.index, den.index
    np.testing.assert_array_equal(idx, idx2)
    assert len(idx) >= 4
    scale = np.abs(den.values).max(axis=1, keepdims=True)
    np.testing.assert_allclose(lan.values / scale, den.values / scale, atol=1e-3)
    # Directions are unit, tangent (orthogonal to the normal) and eigenvectors of the dense matrix.
    flat = lan.directions.reshape(len(idx), 6, D)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=2), 1.0, atol=1e-3)


def test_exact_and_finite_difference_products_agree(smooth_gm):
    """On a smooth model reverse-over-reverse, forward-over-reverse (eager and compiled) and central differences agree."""
    rng = np.random.default_rng(1)
    z = tf.constant(_points(8, seed=2))
    coeffs = tf.constant(np.eye(4, dtype=np.float32)[rng.integers(0, 4, 8)] - np.eye(4, dtype=np.float32)[[3] * 8])
    v = tf.constant(rng.normal(size=(8, D)).astype(np.float32))
    f = smooth_gm.runtime.logits_fn
    exact = hvp.exact_hvp(f, z, coeffs, v).numpy()
    fd = hvp.finite_difference_hvp(f, z, coeffs, v, 3e-3).numpy()
    forward = hvp.exact_hvp(f, z, coeffs, v, mode="forward").numpy()
    np.testing.assert_allclose(fd, exact, atol=1e-3 * np.abs(exact).max())
    np.testing.assert_allclose(forward, exact, atol=1e-5 * np.abs(exact).max())
    compiled = tf.function(lambda z, c, v: hvp.forward_over_reverse_hvp(f, z, c, v))
    np.testing.assert_allclose(compiled(z, coeffs, v).numpy(), exact, atol=1e-5 * np.abs(exact).max())


def test_dense_hessian_matches_autodiff_hessian(smooth_gm):
    """The dense projected operator equals P H P / ||grad F|| from tf.hessians-style double autodiff."""
    z = tf.constant(_points(1, seed=3))
    coeffs = tf.constant([[1.0, -1.0, 0.0, 0.0]])
    f = smooth_gm.runtime.logits_fn
    with tf.GradientTape() as outer:
        outer.watch(z)
        with tf.GradientTape() as inner:
            inner.watch(z)
            F = tf.reduce_sum(f(z) * coeffs)
        g = inner.gradient(F, z)
    H = outer.jacobian(g, z).numpy().reshape(D, D)
    g = g.numpy().ravel()
    n = g / np.linalg.norm(g)
    P = np.eye(D) - np.outer(n, n)
    expected = np.linalg.eigvalsh(P @ H @ P / np.linalg.norm(g))
    values, _, _ = curvature.dense_curvatures(f, z, coeffs)
    np.testing.assert_allclose(values[0], expected, atol=1e-4 * np.abs(expected).max())


def test_linear_classifier_has_zero_curvature():
    """A linear classifier's boundary is flat: all principal curvatures are 0."""
    rng = np.random.default_rng(0)
    gm = GeometryModel(linear_model(rng.normal(size=(D, 3)), rng.normal(size=3)), bounds=(-100, 100))
    for method in ("lanczos", "dense"):
        c = gm.principal_curvatures(_points(), k=3, hvp="exact", method=method)
        np.testing.assert_allclose(c.values, 0.0, atol=1e-6)
    c = gm.principal_curvatures(_points(), k=3, hvp="finite-difference")
    np.testing.assert_allclose(c.values, 0.0, atol=1e-4)


def test_sphere_boundary_has_curvature_minus_one_over_r():
    """Class 0 inside a ball of radius R: every tangent curvature is -1/R (our sign convention)."""
    radius, center = 1.5, np.full(D, 0.2, np.float32)
    inputs = keras.Input((D,))
    scores = keras.layers.Lambda(
        lambda t: tf.stack([radius**2 - tf.reduce_sum((t - center) ** 2, axis=1), tf.zeros_like(t[:, 0])], axis=1)
    )(inputs)
    gm = GeometryModel(keras.Model(inputs, scores), bounds=(-10, 10))
    x = center + np.random.default_rng(4).uniform(-0.3, 0.3, size=(5, D)).astype(np.float32)
    c = gm.principal_curvatures(x, k=4, hvp="exact")
    idx = c.index
    assert len(idx) == 5
    np.testing.assert_allclose(c.values, -1.0 / radius, rtol=2e-3)
    assert c.hvp == "exact"


def test_auto_picks_finite_differences_for_relu_networks(small_cnn, digits, smooth_gm):
    """hvp="auto" uses finite differences for ReLU networks and exact products for smooth ones."""
    assert curvature.is_piecewise_linear(small_cnn)
    assert not curvature.is_piecewise_linear(smooth_gm.model)
    gm = GeometryModel(small_cnn)
    c = gm.principal_curvatures(digits.x[:4], k=2)
    idx = c.index
    assert c.hvp == "finite-difference" and c.step == pytest.approx(hvp.default_step(64, (0, 1)))
    assert c.values.shape == (len(idx), 4) and np.isfinite(c.values).all()


def _sphere_gm(radius=1.5, center_value=0.2):
    center = np.full(D, center_value, np.float32)
    inputs = keras.Input((D,))
    scores = keras.layers.Lambda(
        lambda t: tf.stack([radius**2 - tf.reduce_sum((t - center) ** 2, axis=1), tf.zeros_like(t[:, 0])], axis=1)
    )(inputs)
    return GeometryModel(keras.Model(inputs, scores), bounds=(-10, 10)), center


def test_section_of_a_sphere_follows_the_closed_form():
    """Along a tangent u at a point of the sphere, F(z + b u) = -b^2 exactly; along the normal F is monotone."""
    gm, center = _sphere_gm()
    x = center + np.random.default_rng(5).uniform(-0.3, 0.3, size=(2, D)).astype(np.float32)
    secs = gm.boundary_sections(x, direction="random", radius=0.5, resolution=21, hvp="exact", k=2)
    assert len(secs) == 2
    for sec in secs:
        mid = len(sec.offsets) // 2
        np.testing.assert_allclose(sec.margin[mid], -sec.offsets**2, atol=2e-3)
        column = sec.margin[:, mid]
        assert np.all(np.diff(column) > 0)  # F grows along the normal, into the region of class 0
        assert abs(float(np.dot(sec.direction.ravel(), sec.normal.ravel()))) < 1e-5


def test_curved_subspace_finds_planted_directions():
    """A boundary curved only along e1, e2, e3: the 3-dimensional S_c spans exactly those."""
    planted = {1: 3.0, 2: -2.0, 3: 1.5}
    weights = np.zeros(D, np.float32)
    for i, c in planted.items():
        weights[i] = c
    inputs = keras.Input((D,))
    score = keras.layers.Lambda(
        lambda t: tf.stack([t[:, 0] - 0.5 + tf.reduce_sum(weights * t**2, axis=1), tf.zeros_like(t[:, 0])], axis=1)
    )(inputs)
    gm = GeometryModel(keras.Model(inputs, score), bounds=(-5, 5))
    rng = np.random.default_rng(6)
    x = rng.uniform(-0.1, 0.1, size=(40, D)).astype(np.float32)
    x[:, 0] = rng.uniform(0.8, 1.2, size=40)
    sub = gm.curved_subspace(x, dim=3, hvp="exact")
    inside = np.linalg.norm(sub.basis[:, [1, 2, 3]], axis=1)
    np.testing.assert_allclose(inside, 1.0, atol=1e-2)  # normals tilt slightly off e0, mixing a little
    # Sorted by |eigenvalue|: the direction with c = 3 first.
    assert np.argmax(np.abs(sub.basis[0])) == 1


def test_random_subspace_energy_is_about_sqrt_m_over_d(small_cnn, digits):
    """Baseline of experiment (a): DeepFool perturbations hold about sqrt(m/d) of their norm in a random subspace."""
    from tfgeom.geometry.subspace import vulnerability

    gm = GeometryModel(small_cnn)
    sub = gm.curved_subspace(digits.x[:40], dim=10)
    res = vulnerability(gm, digits.x[40:140], digits.y[40:140], sub, dims=(5, 10))
    for row in res.rows:
        assert abs(row["energy_random"] / row["sqrt_m_over_d"] - 1) < 0.2
        assert 0 <= row["fooling_curved"] <= 1 and 0 <= row["accuracy_removed"] <= 1
    assert sub.basis.shape == (10, 64)
    np.testing.assert_allclose(sub.basis @ sub.basis.T, np.eye(10), atol=1e-4)


def test_profile_counts_flat_directions(smooth_gm):
    """Profile fields agree with the per-point curvatures they summarise."""
    prof = smooth_gm.curvature_profile(_points(), k=3, hvp="exact", steps=D - 1)
    curv = prof.curvatures
    np.testing.assert_allclose(prof.mean_negative, curv.values[:, :3].mean(0))
    top = np.abs(curv.values).max(1, keepdims=True)
    expected = 1 - (np.abs(curv.values) > 0.1 * top).sum(1) / (D - 1)
    np.testing.assert_allclose(prof.flat_fraction, expected)
    assert -1 <= prof.asymmetry <= 1


def test_lanczos_batches_shrink_to_the_memory_budget(monkeypatch):
    """The Krylov bases [b, steps, d] of one call fit the budget: 224x224x3 with 80 steps is 3 points per
    call in 600 MB, the batch size itself when memory is plentiful, never 0."""
    from tfgeom.geometry import curvature as curvature_lib

    d = 224 * 224 * 3
    monkeypatch.setenv("TFGEOM_MEMORY_BUDGET_MIB", "600")
    assert curvature_lib.lanczos_batch(128, 80, d) == int(600 * 2**20 // (3 * 80 * d * 4))
    monkeypatch.setenv("TFGEOM_MEMORY_BUDGET_MIB", "1")
    assert curvature_lib.lanczos_batch(128, 80, d) == 1
    monkeypatch.setenv("TFGEOM_MEMORY_BUDGET_MIB", "100000")
    assert curvature_lib.lanczos_batch(128, 80, 784) == 128
