"""The whole curvature spectrum by stochastic Lanczos quadrature, against dense eigendecompositions."""
import keras
import numpy as np

import tfgeom
from tfgeom.geometry.curvature import dense_curvatures, margin_coefficients, principal_curvatures
from tfgeom.geometry.spectrum import curvature_spectrum
from tfgeom.execution import LocalExecutor


def _exact(gm, attack, hvp, step):
    """`[M, d - 1]` every tangent curvature from the dense projected Hessian (its normal's zero removed)."""
    index = np.flatnonzero(attack.success)
    z = attack.boundary_points[index]
    coeffs = margin_coefficients(attack.labels[index], attack.boundary_classes[index], gm.num_classes)
    values, vectors, gnorm = dense_curvatures(gm.runtime.logits_fn, z, coeffs, hvp, step)
    # the normal is an eigenvector with eigenvalue 0: drop the eigenvalue whose vector is closest to it
    _, grads = gm.runtime.gradient(z, coeffs)
    normal = grads.reshape(len(z), -1) / np.linalg.norm(grads.reshape(len(z), -1), axis=1, keepdims=True)
    drop = np.abs(np.einsum("nd,ndk->nk", normal, vectors)).argmax(axis=1)
    return np.stack([np.delete(v, i) for v, i in zip(values, drop)])


def _check(gm, x, hvp, step, probes=24, steps=40):
    attack = gm.deepfool(x)
    curv = principal_curvatures(gm, x, k=3, hvp=hvp, step=step, attack=attack)
    spec = curvature_spectrum(gm, x, probes=probes, steps=steps, hvp=hvp, step=step, attack=attack, curvatures=curv)
    exact = _exact(gm, attack, hvp, step)
    top = np.abs(exact).max(axis=1)
    np.testing.assert_allclose(spec.kappa_max, top, rtol=0.02)  # the extremes' Lanczos finds the largest
    truth = (np.abs(exact) <= spec.flat_tol * top[:, None]).mean(axis=1)
    grid = np.linspace(exact.min(), exact.max(), 400)
    exact_cdf = (exact[:, :, None] <= grid).mean(axis=1)
    kolmogorov = np.abs(spec.cdf(grid) - exact_cdf).max(axis=1)
    return spec, truth, kolmogorov


def _smooth_net(shape, seed, x=None, y=None):
    """A small tanh network (a linear operator P H P: exact Hessian-vector products), briefly trained if given data."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    h = keras.layers.Dense(16, activation="tanh")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    if x is not None:
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return tfgeom.GeometryModel(model)


def test_spectrum_flat_fraction_matches_the_dense_eigendecomposition(digits):
    """On 8x8 digits (d = 64, a trained tanh CNN, exact Hessian-vector products) the estimated flat fraction of
    all 63 tangent directions is within 0.03 of the dense eigendecomposition's on average (0.1 per point or
    inside 3 error bars), and the estimated distribution of curvatures within Kolmogorov distance 0.15."""
    gm = _smooth_net((8, 8, 1), 0, digits.x, digits.y)
    spec, truth, kolmogorov = _check(gm, digits.x[:8], "exact", None)
    assert abs(spec.flat_fraction.mean() - truth.mean()) <= 0.03, (spec.flat_fraction, truth)
    assert np.all(np.abs(spec.flat_fraction - truth) <= np.maximum(0.1, 3 * spec.flat_error))
    assert np.all(kolmogorov <= 0.15), kolmogorov


def test_spectrum_on_a_16x16_network_matches_dense(digits):
    """On 16x16 inputs (d = 256; the digits upsampled) the same agreement, 60 quadrature nodes per probe."""
    x = np.stack([np.kron(img[..., 0], np.ones((2, 2))) for img in digits.x[:300]])[..., None].astype("float32")
    gm = _smooth_net((16, 16, 1), 3, x, digits.y[:300])
    spec, truth, kolmogorov = _check(gm, x[:5], "exact", None, probes=24, steps=60)
    assert abs(spec.flat_fraction.mean() - truth.mean()) <= 0.03, (spec.flat_fraction, truth)
    assert np.all(kolmogorov <= 0.15), kolmogorov


def test_spectrum_rows_do_not_depend_on_the_shards(small_cnn, digits):
    """Probes are drawn per example index: shards of the inputs give the rows of the whole."""
    gm = tfgeom.GeometryModel(small_cnn)
    whole = curvature_spectrum(gm, digits.x[:6], probes=3, steps=20)
    split = curvature_spectrum(gm, digits.x[:6], probes=3, steps=20, executor=LocalExecutor(shard_size=3))
    assert np.array_equal(whole.index, split.index)
    np.testing.assert_allclose(split.flat_fraction, whole.flat_fraction, atol=1e-6)
