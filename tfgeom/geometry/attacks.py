"""FGSM and PGD, batched and compiled (the perturbations the detector is evaluated on).

Both maximise the cross-entropy of the clean predicted label (targeted:
minimise that of the target). Linf steps use the sign of the gradient, L2
steps the normalised gradient; PGD projects onto the `eps`-ball around `x`
and the bounds after every step. Like `tfgeom.geometry.deepfool.deepfool`, they take
`(gm, x, ..., norm=, targets=, batch_size=)` and return an `AttackResult`.

References:
    Goodfellow et al. "Explaining and harnessing adversarial examples." ICLR 2015.
    Madry et al. "Towards deep learning models resistant to adversarial attacks." ICLR 2018.
"""
import numpy as np
import tensorflow as tf

from tfgeom import execution
from tfgeom.geometry.deepfool import attack_result, deepfool
from tfgeom.errors import InputError
from tfgeom.runtime.programs import expand_like
from tfgeom.runtime.validation import check_choice, check_labels, check_positive_int


def _direction(g, norm):
    if norm == "linf":
        return tf.sign(g)
    flat = tf.norm(tf.reshape(g, [tf.shape(g)[0], -1]), axis=1)
    return g / expand_like(tf.maximum(flat, 1e-12), g)


def _project(delta, eps, norm):
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    flat = tf.norm(tf.reshape(delta, [tf.shape(delta)[0], -1]), axis=1)
    return delta * expand_like(tf.minimum(1.0, eps / tf.maximum(flat, 1e-12)), delta)


def pgd_program(logits_fn, bounds, norm):
    """`program(x, labels, sign, eps, alpha, steps) -> x_adv`; FGSM is one step with `alpha = eps`.

    `labels [N]` are the classes whose cross-entropy is ascended (`sign = 1`,
    untargeted: the clean labels) or descended (`sign = -1`, targeted: the targets).
    """
    low, high = float(bounds[0]), float(bounds[1])

    def program(x, labels, sign, eps, alpha, steps):
        def body(i, xa):
            with tf.GradientTape() as tape:
                tape.watch(xa)
                loss = sign * tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits_fn(xa))
                )
            step = xa + alpha * _direction(tape.gradient(loss, xa), norm)
            return i + 1, tf.clip_by_value(x + _project(step - x, eps, norm), low, high)

        _, xa = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x))
        return xa

    return program


def pgd(gm, x, eps, norm="linf", targets=None, steps=10, alpha=None, batch_size=None, executor=None):
    """Projected gradient ascent on the cross-entropy of the predicted label (or descent on a target's).

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs.
        eps: radius of the perturbation ball, in input units.
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        targets: `[N]` target classes, or `None` (untargeted). Defaults to `None`.
        steps: iterations. Defaults to `10`.
        alpha: step size. Defaults to `2.5 * eps / steps`.
        batch_size: examples per compiled call. Defaults to the model's.
        executor: a `tfgeom.execution` executor to run the inputs in shards on
            (the stage `"pgd"`). Defaults to `None`: in this process.

    Returns:
        An `AttackResult` (no boundary points).
    """
    if executor is not None:
        params = dict(eps=eps, norm=norm, steps=steps, alpha=alpha, batch_size=batch_size)
        return execution.run(gm, "pgd", {"x": gm.check(x), "targets": targets}, params, executor)
    rt = gm.runtime
    norm = check_choice("norm", norm, ("l2", "linf"))
    steps = check_positive_int("steps", steps)
    x = gm.check(x)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    program = rt.program(
        ("pgd", norm),
        lambda: pgd_program(rt.logits_fn, gm.bounds, norm),
        [rt.spec(), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32),
         tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)],
    )
    labels = rt.predict(x, batch_size)
    goal = labels if targets is None else check_labels(targets, rt.num_classes, len(x), name="targets")
    sign = tf.constant(1.0 if targets is None else -1.0)
    x_adv = rt.map(program, [x, goal], batch_size,
                   (sign, tf.constant(eps, tf.float32), tf.constant(alpha, tf.float32), tf.constant(steps)))
    adv_labels = rt.predict(x_adv, batch_size)
    success = adv_labels != labels if targets is None else adv_labels == goal
    return attack_result(x, x_adv, labels, adv_labels, success, np.full(len(x), steps, np.int32), norm)


def by_name(name, eps=None):
    """The attacks the detector is evaluated on, as `attack(gm, x, executor=None) -> AttackResult`.

    `name`: `"deepfool-l2"`, `"deepfool-linf"` (overshoot 0.02), `"fgsm"` or
    `"pgd"` (Linf, `eps` defaults to 10% of the input range; PGD 10 steps).
    """
    def radius(gm):
        return 0.1 * (gm.bounds[1] - gm.bounds[0]) if eps is None else eps

    table = {
        "deepfool-l2": lambda gm, x, executor=None: deepfool(gm, x, norm="l2", executor=executor),
        "deepfool-linf": lambda gm, x, executor=None: deepfool(gm, x, norm="linf", executor=executor),
        "fgsm": lambda gm, x, executor=None: fgsm(gm, x, radius(gm), executor=executor),
        "pgd": lambda gm, x, executor=None: pgd(gm, x, radius(gm), steps=10, executor=executor),
    }
    if name not in table:
        raise InputError(f"attack {name!r} is not one of {sorted(table)}")
    return table[name]


def fgsm(gm, x, eps, norm="linf", targets=None, batch_size=None, executor=None):
    """One gradient-sign (Linf) or normalised-gradient (L2) step of size `eps`; see `pgd`."""
    return pgd(gm, x, eps, norm=norm, targets=targets, steps=1, alpha=eps, batch_size=batch_size, executor=executor)


@execution.stage("pgd")
def _pgd_shard(gm, start, x, targets=None, **params):
    return pgd(gm, x, targets=targets, **params)
