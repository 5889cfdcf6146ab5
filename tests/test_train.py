"""Robust twins: PGD adversarial training raises PGD accuracy; CURE's penalty equals its closed form."""
import keras
import numpy as np
import pytest

import tfgeom


def _mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


def _compile(model):
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _pgd_accuracy(model, x, y, eps):
    adversarial = tfgeom.train.pgd(model, x, y, eps, "linf", steps=20, seed=1).numpy()
    assert np.abs(adversarial - x).max() <= eps + 1e-6 and adversarial.min() >= 0 and adversarial.max() <= 1
    return float(np.mean(np.argmax(model(adversarial), axis=1) == y))


def test_pgd_training_raises_pgd_accuracy(digits):
    eps = 0.1
    standard = _compile(_mlp(0))
    standard.fit(digits.x_train, digits.y_train, epochs=15, batch_size=64, verbose=0)
    robust = _compile(tfgeom.train.AdversarialTraining(_mlp(0), eps=eps, steps=5))
    robust.fit(digits.x_train, digits.y_train, epochs=15, batch_size=64, verbose=0)
    x, y = digits.x[:300], digits.y[:300]
    plain = _pgd_accuracy(standard, x, y, eps)
    hardened = _pgd_accuracy(robust.classifier, x, y, eps)
    assert hardened > plain + 0.15, (plain, hardened)
    assert np.mean(np.argmax(robust.classifier(x), axis=1) == y) > 0.8  # still a classifier


def test_cure_penalty_equals_the_closed_form_of_a_linear_softmax_model():
    """For logits `x W + b`, `grad_x CE = W (softmax - onehot)`: the penalty in NumPy, to float32 precision."""
    rng = np.random.default_rng(0)
    d, k, n, h = 6, 4, 5, 0.3
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
    w, b = rng.normal(size=(d, k)).astype(np.float32), rng.normal(size=k).astype(np.float32)
    model.layers[-1].set_weights([w, b])
    x, y = rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, k, n)

    def grad(at):
        z = at @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p - np.eye(k)[y]) @ w.T

    g = grad(x)
    z = np.sign(g) / np.linalg.norm(np.sign(g), axis=1, keepdims=True)
    expected = np.mean(np.sum((grad(x + h * z) - g) ** 2, axis=1))
    got = float(tfgeom.train.cure_penalty(model, x, y, h))
    assert got == pytest.approx(expected, rel=1e-4)


def test_cure_training_runs_with_fit_and_lowers_the_penalty(digits):
    """A CURE-trained twin ends with a smaller penalty than the standard model trained the same way."""
    h = 0.5
    standard = _compile(_mlp(0))
    standard.fit(digits.x_train, digits.y_train, epochs=8, batch_size=64, verbose=0)
    cured = _compile(tfgeom.train.CurvatureRegularized(_mlp(0), h=h, weight=4.0))
    cured.fit(digits.x_train, digits.y_train, epochs=8, batch_size=64, verbose=0)
    x, y = digits.x[:200], digits.y[:200]
    assert float(tfgeom.train.cure_penalty(cured.classifier, x, y, h)) < \
        0.7 * float(tfgeom.train.cure_penalty(standard, x, y, h))


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(tfgeom.InputError, match="norm"):
        tfgeom.train.AdversarialTraining(_mlp(0), eps=0.1, norm="l1")
    with pytest.raises(tfgeom.InputError, match="positive"):
        tfgeom.train.AdversarialTraining(_mlp(0), eps=0.0)
    with pytest.raises(tfgeom.InputError, match="CURE"):
        tfgeom.train.CurvatureRegularized(_mlp(0), h=-1.0)
