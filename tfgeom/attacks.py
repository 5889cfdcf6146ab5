"""FGSM and PGD, batched and compiled (the perturbations the detector is evaluated on).

Both maximise the cross-entropy of the clean predicted label. Linf steps use
the sign of the gradient, L2 steps the normalised gradient; PGD projects onto
the `eps`-ball around `x` and the bounds after every step.

References:
    Goodfellow et al. "Explaining and harnessing adversarial examples." ICLR 2015.
    Madry et al. "Towards deep learning models resistant to adversarial attacks." ICLR 2018.
"""
import numpy as np
import tensorflow as tf

from tfgeom.deepfool import _expand_like
from tfgeom.validation import check_choice, check_positive_int


def _direction(g, norm):
    if norm == "linf":
        return tf.sign(g)
    flat = tf.norm(tf.reshape(g, [tf.shape(g)[0], -1]), axis=1)
    return g / _expand_like(tf.maximum(flat, 1e-12), g)


def _project(delta, eps, norm):
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    flat = tf.norm(tf.reshape(delta, [tf.shape(delta)[0], -1]), axis=1)
    return delta * _expand_like(tf.minimum(1.0, eps / tf.maximum(flat, 1e-12)), delta)


def pgd_program(logits_fn, bounds, norm):
    """`program(x, labels, eps, alpha, steps) -> x_adv`; FGSM is one step with `alpha = eps`."""
    low, high = float(bounds[0]), float(bounds[1])

    def program(x, labels, eps, alpha, steps):
        def body(i, xa):
            with tf.GradientTape() as tape:
                tape.watch(xa)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits_fn(xa))
                )
            step = xa + alpha * _direction(tape.gradient(loss, xa), norm)
            return i + 1, tf.clip_by_value(x + _project(step - x, eps, norm), low, high)

        _, xa = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x))
        return xa

    return program


def pgd(gm, x, eps, norm="linf", steps=10, alpha=None, batch_size=None):
    """Projected gradient ascent on the cross-entropy of the predicted label.

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs.
        eps: radius of the perturbation ball.
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        steps: iterations. Defaults to `10`.
        alpha: step size. Defaults to `2.5 * eps / steps`.
        batch_size: examples per compiled call. Defaults to the model's.

    Returns:
        `(x_adv [N, ...], labels [N], adv_labels [N])` as NumPy arrays.
    """
    norm = check_choice("norm", norm, ("l2", "linf"))
    steps = check_positive_int("steps", steps)
    x = gm.check(x)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    program = gm.program(
        ("pgd", norm),
        lambda: pgd_program(gm._head.logits_fn, gm.bounds, norm),
        [gm._spec(), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
         tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)],
    )
    labels = gm.predict(x, batch_size)
    out = [
        program(tf.constant(x[s]), tf.constant(labels[s]), tf.constant(eps, tf.float32),
                tf.constant(alpha, tf.float32), tf.constant(steps)).numpy()
        for s in gm._batches(len(x), batch_size)
    ]
    x_adv = np.concatenate(out)
    return x_adv, labels, gm.predict(x_adv, batch_size)


def fgsm(gm, x, eps, norm="linf", batch_size=None):
    """One gradient-sign (Linf) or normalised-gradient (L2) step of size `eps`; see `pgd`."""
    return pgd(gm, x, eps, norm=norm, steps=1, alpha=eps, batch_size=batch_size)
