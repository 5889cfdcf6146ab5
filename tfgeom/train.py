"""Robust twins, trained the Keras way: PGD adversarial training and the CURE curvature regulariser.

Both are `keras.Model` subclasses that wrap a classifier and change only
what one training step does; compile and `fit` them like the classifier. The
wrapped classifier is trained in place (its weights are the wrapper's) and is
what you save and analyse (`wrapper.classifier.save("robust.keras")`).

- `AdversarialTraining` (Madry et al. 2018): each batch is replaced by its
  projected-gradient-descent adversarial examples (L-inf or L2 ball of radius
  `eps`, random start, `steps` steps of `step_size`, clipped to the input
  bounds) before Keras' own `train_step`. The attack runs the classifier in
  inference mode (BatchNorm statistics are not updated by attack steps,
  Dropout is off) and ascends the compiled loss.
- `CurvatureRegularized` (CURE: Moosavi-Dezfooli, Fawzi, Uesato, Frossard,
  CVPR 2019; docs/science.md): the compiled loss plus `weight` times the
  finite-difference curvature penalty `||grad l(x + h z) - grad l(x)||^2`
  (mean over the batch), `z = sign(grad l(x)) / ||sign(grad l(x))||` the
  normalised gradient-sign direction (held constant, as in the paper), `l` the
  per-example cross-entropy. The penalty is computed in inference mode (no
  Dropout noise between the two gradients) and differentiated through both
  gradients (double backpropagation).
"""
import keras
import tensorflow as tf

from tfgeom.errors import InputError


def _from_logits(model):
    """Whether the classifier outputs logits (its last layer has no softmax)."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    return last is None or last.get_config().get("activation") != "softmax"


def _per_example_loss(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=_from_logits(model), reduction=None)
    return lambda y, x: loss(y, model(x, training=False))


def _flat_norm(t):
    return tf.sqrt(tf.reduce_sum(tf.reshape(t * t, [tf.shape(t)[0], -1]), axis=1))


def _expand(v, like):
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def pgd(model, x, y, eps, norm="linf", steps=10, step_size=None, bounds=(0.0, 1.0), loss=None, seed=None):
    """Projected gradient ascent on `loss(y, x)` (default: the classifier's per-example cross-entropy).

    Args:
        x: `[N, ...]` inputs; y: `[N]` integer labels.
        eps: the ball's radius (input units).
        norm: `"linf"` (signed steps) or `"l2"` (normalised steps).
        steps: ascent steps; step_size: defaults to `2.5 eps / steps` (Madry et al.).
        bounds: the input range the perturbed inputs are clipped to.
        seed: seed of the random start.

    Returns:
        `[N, ...]` perturbed inputs within the ball and the bounds (no gradient through them).
    """
    if norm not in ("linf", "l2"):
        raise InputError(f"norm={norm!r}: use 'linf' or 'l2'")
    loss = loss or _per_example_loss(model)
    x = tf.convert_to_tensor(x, tf.float32)
    step = 2.5 * eps / steps if step_size is None else step_size
    noise = tf.random.uniform(tf.shape(x), -1.0, 1.0, seed=seed)
    if norm == "l2":  # a random point of the ball
        noise = noise / _expand(tf.maximum(_flat_norm(noise), 1e-12), x) * eps * tf.random.uniform([], seed=seed)
    delta = eps * noise if norm == "linf" else noise
    low, high = bounds
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            value = tf.reduce_sum(loss(y, tf.clip_by_value(x + delta, low, high)))
        grad = tape.gradient(value, delta)
        if norm == "linf":
            delta = tf.clip_by_value(delta + step * tf.sign(grad), -eps, eps)
        else:
            delta = delta + step * grad / _expand(tf.maximum(_flat_norm(grad), 1e-12), x)
            delta = delta * _expand(tf.minimum(1.0, eps / tf.maximum(_flat_norm(delta), 1e-12)), x)
        delta = tf.clip_by_value(x + delta, low, high) - x
    return tf.stop_gradient(x + delta)


def cure_penalty(model, x, y, h, loss=None):
    """CURE's penalty `mean_n ||grad l(x_n + h z_n) - grad l(x_n)||^2` (module docstring), differentiable in the
    classifier's weights. `x [N, ...]`, `y [N]`; `h` in input units (the L2 length of the step)."""
    loss = loss or _per_example_loss(model)
    x = tf.convert_to_tensor(x, tf.float32)

    def input_gradient(at):
        with tf.GradientTape() as tape:
            tape.watch(at)
            value = tf.reduce_sum(loss(y, at))
        return tape.gradient(value, at)

    grad = input_gradient(x)
    z = tf.stop_gradient(tf.sign(grad))
    z = z / _expand(tf.maximum(_flat_norm(z), 1e-12), x)
    diff = input_gradient(x + h * z) - grad
    return tf.reduce_mean(tf.reduce_sum(tf.reshape(diff * diff, [tf.shape(x)[0], -1]), axis=1))


class _Wrapper(keras.Model):
    """A classifier whose training step a subclass changes; predicts as the classifier."""

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier

    def call(self, x, training=False):
        return self.classifier(x, training=training)


class AdversarialTraining(_Wrapper):
    """PGD adversarial training of `classifier` (module docstring).

    Args:
        classifier: a Keras classifier (softmax or logits output).
        eps: the ball's radius in input units.
        norm: `"linf"` or `"l2"`.
        steps: PGD steps per batch (7, as Madry et al. on CIFAR-10).
        step_size: defaults to `2.5 eps / steps`.
        bounds: the input range.
    """

    def __init__(self, classifier, eps, norm="linf", steps=7, step_size=None, bounds=(0.0, 1.0), **kwargs):
        super().__init__(classifier, **kwargs)
        if not eps > 0:
            raise InputError(f"eps={eps!r}: the adversarial training radius must be positive")
        self.eps, self.norm, self.steps, self.step_size, self.bounds = float(eps), norm, int(steps), step_size, bounds
        pgd(classifier, tf.zeros([1, *classifier.input_shape[1:]]), tf.zeros([1], tf.int32), self.eps, norm, 1,
            bounds=bounds)  # a bad norm fails here, not inside fit

    def train_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        adversarial = pgd(self.classifier, x, y, self.eps, self.norm, self.steps, self.step_size, self.bounds)
        return super().train_step((adversarial, y) if weight is None else (adversarial, y, weight))


class CurvatureRegularized(_Wrapper):
    """CURE training of `classifier`: the compiled loss plus `weight * cure_penalty(h)` (module docstring).

    Args:
        classifier: a Keras classifier (softmax or logits output).
        h: the finite-difference step in input units (L2 length).
        weight: the penalty's weight (the paper's gamma).
    """

    def __init__(self, classifier, h=0.1, weight=4.0, **kwargs):
        super().__init__(classifier, **kwargs)
        if not h > 0 or not weight >= 0:
            raise InputError(f"h={h!r}, weight={weight!r}: CURE needs h > 0 and weight >= 0")
        self.h, self.weight = float(h), float(weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        base = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not training or not self.weight:
            return base
        return base + self.weight * cure_penalty(self.classifier, x, y, self.h)
