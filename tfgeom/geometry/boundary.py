"""Locate decision-boundary points on segments by batched root search.

For a clean input `x` with label `k` and a perturbed `x_adv` with another
label, the margin `G(t) = f_k(x + t d) - max_{j != k} f_j(x + t d)`,
`d = x_adv - x`, is continuous, positive at `t = 0` and negative at `t = 1`.
A root `t*` gives `z = x + t* d` on the boundary of the region of `k`; the
class across it is the runner-up at `z`. Roots are found for the whole batch
at once with TFP's Chandrupatla search.
"""
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgeom.runtime.programs import expand_like


def margin_fn(logits_fn, labels):
    """`x [N, ...] -> [N]`: `f_k(x) - max_{j != k} f_j(x)` and the runner-up class."""

    def margin(x):
        z = logits_fn(x)
        own = tf.one_hot(labels, tf.shape(z)[1]) > 0
        top_other = tf.reduce_max(tf.where(own, tf.constant(-np.inf, z.dtype), z), axis=1)
        runner_up = tf.argmax(tf.where(own, tf.constant(-np.inf, z.dtype), z), axis=1, output_type=tf.int32)
        return tf.gather(z, labels, batch_dims=1) - top_other, runner_up

    return margin


def boundary_program(logits_fn, rtol=1e-3, max_iterations=60):
    """Build `program(x0, x_adv, labels) -> (t, z, classes, residual, iterations)`.

    Args:
        logits_fn: `[N, ...] -> [N, L]`.
        rtol: stop when `|G(z)| <= rtol * |G(x0)|`. Defaults to `1e-3`.
        max_iterations: cap on root-search iterations. Defaults to `60`.

    The program returns `t [N]` (position on the segment), `z [N, ...]`,
    the class across the boundary `[N]` and the relative residual
    `|G(z)| / |G(x0)|` `[N]` and TFP's iteration count `[N]`. Rows where `G(x_adv) >= 0` have no bracket; the
    caller masks them.
    """

    def program(x0, x_adv, labels):
        margin = margin_fn(logits_fn, labels)
        d = x_adv - x0

        def objective(t):
            return margin(x0 + expand_like(t, x0) * d)[0]

        g0 = objective(tf.zeros(tf.shape(x0)[:1]))
        root = tfp.math.find_root_chandrupatla(
            objective,
            low=tf.zeros_like(g0),
            high=tf.ones_like(g0),
            position_tolerance=1e-7,
            value_tolerance=rtol * tf.abs(g0),
            max_iterations=max_iterations,
        )
        t = root.estimated_root
        z = x0 + expand_like(t, x0) * d
        g, runner_up = margin(z)
        return t, z, runner_up, tf.abs(g) / tf.maximum(tf.abs(g0), 1e-30), root.num_iterations

    return program
