"""DeepFool: exactness on linear models, boundary crossing, bounds, masks, targets, peers."""
import numpy as np
import pytest

from tfgeom import GeometryModel, InputError

from conftest import linear_model


def _linear_problem(seed=0, d=20, classes=5, n=32):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(d, classes)), rng.normal(size=classes)
    x = rng.uniform(-1, 1, size=(n, d)).astype(np.float32)
    return w, b, x


def _closed_form(w, b, x, dual_ord):
    """Exact distance to the boundary of each point's polyhedral region, and the nearest class."""
    z = x @ w + b
    k = z.argmax(1)
    dist = np.full(len(x), np.inf)
    for j in range(w.shape[1]):
        wd = w[:, j] - w[:, k].T  # [n, d] after broadcasting below
        wd = (w[:, [j]] - w[:, k]).T
        gap = z[np.arange(len(x)), k] - z[:, j]
        dj = np.where(j == k, np.inf, gap / np.maximum(np.linalg.norm(wd, ord=dual_ord, axis=1), 1e-12))
        dist = np.minimum(dist, dj)
    return dist


@pytest.mark.parametrize("norm, dual_ord", [("l2", 2), ("linf", 1)])
def test_linear_classifier_distance_is_exact_in_one_step(norm, dual_ord):
    """On f(x) = xW + b DeepFool reaches the nearest hyperplane in one step: the closed-form distance."""
    w, b, x = _linear_problem()
    gm = GeometryModel(linear_model(w, b), bounds=(-100.0, 100.0))
    result = gm.deepfool(x, norm=norm, candidates=5)
    exact = _closed_form(w, b, x, dual_ord)
    assert result.success.all()
    np.testing.assert_array_equal(result.iterations, 1)
    # The step is (distance + 1e-4) scaled by (1 + overshoot).
    np.testing.assert_allclose(result.norms, (exact + 1e-4) * 1.02, rtol=1e-4)
    # The boundary point lies at the exact distance.
    to_boundary = result.boundary_points - x
    got = np.linalg.norm(to_boundary, axis=1) if norm == "l2" else np.abs(to_boundary).max(axis=1)
    np.testing.assert_allclose(got, exact, rtol=2e-3)


def test_outputs_cross_the_boundary_and_stay_in_bounds(small_cnn, digits):
    """x_adv has another label, lies inside the bounds, and boundary points have top-2 classes {k, j}."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:60]
    for norm in ("l2", "linf"):
        r = gm.deepfool(x, norm=norm)
        assert r.success.mean() == 1.0
        assert (r.x_adv >= 0).all() and (r.x_adv <= 1).all()
        np.testing.assert_array_equal(gm.predict(r.x_adv), r.adv_labels)
        assert (r.adv_labels != r.labels).all()
        np.testing.assert_array_equal(gm.predict(x), r.labels)
        # Root search: |G(z)| <= 1e-3 |G(x)| and the two leading classes at z are k and j.
        assert np.nanmax(r.boundary_margin) <= 1e-3 + 1e-6
        top2 = np.argsort(-gm.logits(r.boundary_points), axis=1)[:, :2]
        pair = np.sort(np.stack([r.labels, r.boundary_classes], 1), 1)
        np.testing.assert_array_equal(np.sort(top2, 1), pair)
        np.testing.assert_allclose(r.perturbation, r.x_adv - x, atol=1e-7)


def test_finished_examples_are_frozen(small_cnn, digits):
    """An example done within k steps gets the same x_adv whether max_iter is k or 50."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:40]
    full = gm.deepfool(x, max_iter=50)
    k = int(full.iterations.min())
    short = gm.deepfool(x, max_iter=k)
    early = full.iterations <= k
    assert early.any() and (~early).any()
    np.testing.assert_array_equal(short.x_adv[early], full.x_adv[early])
    assert (short.iterations <= k).all()


def test_batching_does_not_change_results(small_cnn, digits):
    """Results are the same for batch sizes 7 and 128."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:30]
    a, b = gm.deepfool(x, batch_size=7), gm.deepfool(x, batch_size=128)
    np.testing.assert_allclose(a.x_adv, b.x_adv, atol=1e-5)


def test_targeted_mode_reaches_the_target(small_cnn, digits):
    """With targets, every successful example is classified as its target."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:30]
    labels = gm.predict(x)
    targets = (labels + 3) % 10
    r = gm.deepfool(x, targets=targets, max_iter=100)
    assert r.success.mean() >= 0.95
    np.testing.assert_array_equal(gm.predict(r.x_adv)[r.success], targets[r.success])


def test_targeted_linear_step_reaches_the_target_hyperplane():
    """On a two-class linear model the targeted step equals the untargeted one."""
    w, b, x = _linear_problem(classes=2)
    gm = GeometryModel(linear_model(w, b), bounds=(-100.0, 100.0))
    untargeted = gm.deepfool(x)
    targeted = gm.deepfool(x, targets=1 - untargeted.labels)
    np.testing.assert_allclose(targeted.x_adv, untargeted.x_adv, atol=1e-5)


def test_linf_norm_is_max_abs(small_cnn, digits):
    """Linf results report the max-abs norm of the perturbation."""
    gm = GeometryModel(small_cnn)
    r = gm.deepfool(digits.x[:20], norm=np.inf)
    assert r.norm == "linf"
    np.testing.assert_allclose(r.norms, np.abs(r.perturbation).reshape(20, -1).max(1), rtol=1e-6)


def test_bad_arguments_are_refused(small_cnn, digits):
    """Unknown norms, bad max_iter, out-of-range targets get InputError."""
    gm = GeometryModel(small_cnn)
    with pytest.raises(InputError, match="norm"):
        gm.deepfool(digits.x[:2], norm="l7")
    with pytest.raises(InputError, match="max_iter"):
        gm.deepfool(digits.x[:2], max_iter=0)
    with pytest.raises(InputError, match="outside"):
        gm.deepfool(digits.x[:2], targets=[0, 12])


def test_median_norm_agrees_with_foolbox(small_cnn, digits):
    """Median L2 and Linf norms agree with Foolbox 3's DeepFool within 2%."""
    fb = pytest.importorskip("foolbox")
    import tensorflow as tf

    gm = GeometryModel(small_cnn)
    x = digits.x[:100]
    fmodel = fb.TensorFlowModel(gm.runtime.logits_program(), bounds=(0, 1))
    labels = tf.constant(gm.predict(x).astype(np.int64))
    for norm, attack in (("l2", fb.attacks.L2DeepFoolAttack), ("linf", fb.attacks.LinfDeepFoolAttack)):
        _, adv, ok = attack(steps=50, candidates=10, overshoot=0.02)(fmodel, tf.constant(x), labels, epsilons=None)
        flat = (adv.numpy() - x).reshape(len(x), -1)
        theirs = np.linalg.norm(flat, axis=1) if norm == "l2" else np.abs(flat).max(1)
        ours = gm.deepfool(x, norm=norm)
        assert ours.success.mean() >= ok.numpy().mean()
        assert abs(np.median(ours.norms) / np.median(theirs[ok.numpy()]) - 1) <= 0.02


def test_narrowing_candidates_keeps_the_classic_result(small_cnn, digits):
    """narrow=3 (all candidates in step 1, the 3 closest after) matches narrow=0 in median norm within 1%."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:80]
    for norm in ("l2", "linf"):
        classic, narrowed = gm.deepfool(x, norm=norm, narrow=0), gm.deepfool(x, norm=norm, narrow=3)
        assert narrowed.success.mean() == classic.success.mean() == 1.0
        assert abs(np.median(narrowed.norms) / np.median(classic.norms) - 1) <= 0.01
