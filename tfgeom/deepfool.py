"""DeepFool: minimal perturbations to the decision boundary, batched and compiled.

The functional core. `deepfool_program` builds one TensorFlow program (a
`tf.while_loop` over iterations) that attacks a whole batch; examples that
are already adversarial are frozen by a per-example `done` mask and dropped
from the gradient computation, and the loop stops when every example is done.
`GeometryModel.deepfool` wraps it with validation, batching and root search.

References:
    Moosavi-Dezfooli, Fawzi, Frossard. "DeepFool: a simple and accurate method
    to fool deep neural networks." CVPR 2016.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

_EPS_NORM = 1e-8  # guards the division by a zero gradient norm
_EPS_STEP = 1e-4  # pushes each linearised step just past the boundary


class DeepFoolResult(NamedTuple):
    """What `GeometryModel.deepfool` returns (NumPy arrays, batch first).

    Fields:
        x_adv: `[N, ...]` perturbed inputs, clipped to the bounds.
        perturbation: `[N, ...]` `x_adv - x`.
        norms: `[N]` norm of the perturbation in the attack's norm (`norm`).
        norms_l2: `[N]` its L2 norm.
        norms_linf: `[N]` its Linf norm.
        success: `[N]` bool, the label of `x_adv` differs from `labels`
            (targeted mode: equals the target).
        iterations: `[N]` DeepFool steps taken.
        labels: `[N]` predicted labels of the clean inputs.
        adv_labels: `[N]` predicted labels of `x_adv`.
        boundary_points: `[N, ...]` points on the segment `[x, x_adv]` on the
            decision boundary of the clean label's region (NaN where the attack
            failed).
        boundary_classes: `[N]` the class across the boundary at each boundary
            point (-1 where the attack failed).
        boundary_margin: `[N]` `|f_k(z) - max_{j != k} f_j(z)| / |f_k(x) - max_{j != k} f_j(x)|`
            at the boundary point `z`: the relative residual of the root search.
        norm: `"l2"` or `"linf"`.
    """

    x_adv: np.ndarray
    perturbation: np.ndarray
    norms: np.ndarray
    norms_l2: np.ndarray
    norms_linf: np.ndarray
    success: np.ndarray
    iterations: np.ndarray
    labels: np.ndarray
    adv_labels: np.ndarray
    boundary_points: np.ndarray
    boundary_classes: np.ndarray
    boundary_margin: np.ndarray
    norm: str


def _expand_like(v, x):
    """`[S]` -> `[S, 1, ..., 1]` broadcastable against `x`."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([tf.rank(x) - 1], tf.int32)], 0))


def candidate_gradients(logits_fn, x, source, candidates):
    """Losses `f_j - f_s` and their input gradients for candidate classes `j`.

    One forward pass over the batch and a backward pass vectorised over the
    `C` candidates (`batch_jacobian`, i.e. `pfor`), instead of `C` separate
    forward and backward passes.

    Args:
        logits_fn: `[M, ...] -> [M, L]`.
        x: `[S, ...]` inputs.
        source: `[S]` int32, the class `s` each example is moved away from.
        candidates: `[S, C]` int32, the classes `j` whose boundary with `s` is linearised.

    Returns:
        losses `[S, C]` and gradients `[S, C, ...]`.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = logits_fn(x)
        losses = tf.gather(z, candidates, batch_dims=1) - tf.gather(z, source, batch_dims=1)[:, None]
    return losses, tape.batch_jacobian(losses, x)


def _best_candidate(losses, grads, dual_ord):
    """Distance to each linearised boundary; pick the closest per example."""
    flat = tf.reshape(grads, tf.concat([tf.shape(grads)[:2], [-1]], 0))
    if dual_ord == 1:
        gnorm = tf.reduce_sum(tf.abs(flat), axis=-1)
    else:
        gnorm = tf.norm(flat, axis=-1)
    distances = tf.abs(losses) / (gnorm + _EPS_NORM)
    best = tf.argmin(distances, axis=1, output_type=tf.int32)
    return (
        tf.gather(distances, best, batch_dims=1) + _EPS_STEP,
        tf.gather(grads, best, batch_dims=1),
        distances,
    )


def l2_step(losses, grads):
    """L2 DeepFool step `(|F| / ||w||_2^2) w` towards the closest linearised boundary.

    Returns the step `[S, ...]` and the distances to every candidate's
    linearised boundary `[S, C]`.
    """
    distance, g, distances = _best_candidate(losses, grads, 2)
    gnorm = tf.norm(tf.reshape(g, [tf.shape(g)[0], -1]), axis=1)
    return _expand_like(distance / (gnorm + _EPS_NORM), g) * g, distances


def linf_step(losses, grads):
    """Linf DeepFool step `(|F| / ||w||_1) sign(w)` (the L1 norm is Linf's dual); also the distances."""
    distance, g, distances = _best_candidate(losses, grads, 1)
    return _expand_like(distance, g) * tf.sign(g), distances


STEPS = {"l2": l2_step, "linf": linf_step}


def _scatter(tensor, index, values):
    return tf.tensor_scatter_nd_update(tensor, index[:, None], values)


def mask_blocked(grads, x, low, high):
    """Zero gradient components that would push a pixel already at a bound out of the box.

    `grads [S, C, ...]`, `x [S, ...]`. Linearising with the remaining
    components gives the step to the closest boundary point reachable inside
    the box, instead of a step that clipping then shortens.
    """
    at_low = tf.expand_dims(x <= low, 1)
    at_high = tf.expand_dims(x >= high, 1)
    blocked = tf.logical_or(tf.logical_and(at_low, grads < 0), tf.logical_and(at_high, grads > 0))
    return tf.where(blocked, tf.zeros_like(grads), grads)


def deepfool_program(logits_fn, bounds, norm, targeted, box_aware=False, narrow=0):
    """Build the batched DeepFool loop (to be wrapped in `tf.function`).

    Args:
        logits_fn: `[M, ...] -> [M, L]` pre-softmax scores.
        bounds: `(low, high)` input range; every iterate is clipped to it.
        norm: `"l2"` or `"linf"`.
        targeted: if True, `classes` are the targets `[N, 1]` and an example is
            done when it is classified as its target; otherwise `classes` are
            the candidates `[N, C]` (top classes after the label) and an example
            is done when its label changes.
        box_aware: linearise only along components that can move inside the
            bounds (ours; `False` is the classic clip-after-step DeepFool).
        narrow: if > 0 (ours), the first step linearises all `C` candidates
            and later steps only the `narrow` candidates whose linearised
            boundaries were closest; 0 keeps all candidates at every step.

    Returns:
        `program(x0, labels, classes, max_iter, overshoot) -> (x_adv, iterations)`
        with `x0 [N, ...]` float32, `labels [N]` int32 (clean predictions),
        `classes` int32 as above, `max_iter` int32 and `overshoot` float32 scalars.
    """
    step_fn = STEPS[norm]
    low, high = float(bounds[0]), float(bounds[1])

    def _step(x, source, cands):
        losses, grads = candidate_gradients(logits_fn, x, source, cands)
        if box_aware:
            grads = mask_blocked(grads, x, low, high)
        return step_fn(losses, grads)

    def _sources(z, keep, go, labels, cands):
        if not targeted:
            return tf.gather(labels, go)
        # Move away from the current winner towards the target.
        is_target = tf.one_hot(cands[:, 0], tf.shape(z)[1]) > 0
        masked = tf.where(is_target, tf.constant(-np.inf, z.dtype), tf.boolean_mask(z, keep))
        return tf.argmax(masked, axis=1, output_type=tf.int32)

    def _loop(x0, labels, overshoot, max_iter, state):
        """Run steps until every example is done or `max_iter` steps; `state[-1]` are the classes,
        re-sorted per example by distance after each step."""

        def cond(i, x, p_total, done, iters, classes):
            return tf.logical_and(i < max_iter, tf.logical_not(tf.reduce_all(done)))

        def body(i, x, p_total, done, iters, classes):
            active = tf.where(tf.logical_not(done))[:, 0]
            z = logits_fn(tf.gather(x, active))
            pred = tf.argmax(z, axis=1, output_type=tf.int32)
            goal = tf.gather(classes[:, 0] if targeted else labels, active)
            reached = tf.equal(pred, goal) if targeted else tf.not_equal(pred, goal)
            done = _scatter(done, active, reached)
            keep = tf.logical_not(reached)
            go = tf.boolean_mask(active, keep)
            cands = tf.gather(classes, go)
            source = _sources(z, keep, go, labels, cands)
            x_go = tf.gather(x, go)
            step, distances = tf.cond(
                tf.size(go) > 0,
                lambda: _step(x_go, source, cands),
                lambda: (tf.zeros_like(x_go), tf.zeros(tf.shape(cands), x_go.dtype)),
            )
            ranked = tf.gather(cands, tf.argsort(distances, axis=1, stable=True), batch_dims=1)
            p_new = tf.gather(p_total, go) + step
            x_new = tf.clip_by_value(tf.gather(x0, go) + (1.0 + overshoot) * p_new, low, high)
            iters = tf.tensor_scatter_nd_add(iters, go[:, None], tf.ones_like(go, tf.int32))
            return (
                i + 1, _scatter(x, go, x_new), _scatter(p_total, go, p_new), done, iters,
                _scatter(classes, go, ranked),
            )

        return tf.while_loop(cond, body, (tf.constant(0),) + state)[1:]

    def program(x0, labels, classes, max_iter, overshoot):
        n = tf.shape(x0)[0]
        state = (
            tf.clip_by_value(x0, low, high),
            tf.zeros_like(x0),
            tf.zeros([n], tf.bool),
            tf.zeros([n], tf.int32),
            classes,
        )
        if narrow and not targeted and classes.shape[1] > narrow:
            state = _loop(x0, labels, overshoot, tf.minimum(max_iter, 1), state)
            state = state[:-1] + (state[-1][:, :narrow],)
            state = _loop(x0, labels, overshoot, max_iter - 1, state)
        else:
            state = _loop(x0, labels, overshoot, max_iter, state)
        return state[0], state[3]

    return program
