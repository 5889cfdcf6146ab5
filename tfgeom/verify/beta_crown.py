"""beta-CROWN: a branch-and-bound subdomain's bound with its splits' multipliers optimised (Wang et al. 2021).

A subdomain of branch and bound (`tfgeom.verify.bab`) fixes the sign of some
ReLU pre-activations: `s z(x) >= 0`, with `s = +1` (active) or `-1` (inactive).
CROWN uses a split only through the clamped bounds of its unit; the linear
bound it then minimises over the input box forgets the constraint, so its
minimiser may lie where the split does not hold. For any `beta >= 0`,

    min_{x in box, s z(x) >= 0} f(x)  >=  min_{x in box} f(x) - sum_i beta_i s_i z_i(x),

because the added term is `<= 0` wherever the splits hold. The right-hand
side is CROWN's backward pass with `-beta_i s_i` added to the coefficients of
the pre-activation `z_i` (`tfgeom.verify.crown.backward`'s `offsets`), so it
is a valid bound for every `beta >= 0` and every alpha-CROWN slope
(`tfgeom.verify.alpha_crown`). beta-CROWN raises it by projected gradient
ascent on both (Adam; slopes clipped to `[slope, 1]`, multipliers to
`>= 0`), one slope and one multiplier per unit and per bounded row; every
iterate is sound, so each row keeps its best bound. Children of a subdomain
start from their parent's slopes and multipliers (a new split's multiplier
at 0), which is why a few iterations per subdomain suffice.

Settings follow the reference implementation's branch-and-bound defaults in
spirit (Adam, learning rates 0.1 for slopes and 0.05 for multipliers, a few
iterations per batch of subdomains, decayed by 0.98).
"""
from typing import NamedTuple

import tensorflow as tf

from tfgeom.verify import crown as bd


class Settings(NamedTuple):
    """Optimisation settings per batch of subdomains.

    Fields:
        iterations: Adam steps at most.
        lr_alpha: learning rate of the slopes.
        lr_beta: learning rate of the multipliers.
        decay: learning rate factor per step.
    """

    iterations: int = 10
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    decay: float = 0.98


def _adam(x, g, m, v, t, lr):
    b1, b2 = 0.9, 0.999
    g = tf.zeros_like(x) if g is None else g
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return x + lr * (m / (1 - b1 ** t)) / (tf.sqrt(v / (1 - b2 ** t)) + 1e-8), m, v


def loop(graph, coeffs, const, bounds, input_set, sides, alphas, betas, iterations, lr_alpha, lr_beta, decay,
         threshold, best, target=None, stall=None):
    """All projected Adam steps on the slopes and multipliers (ascent on the summed row bounds) as one
    `tf.while_loop`, stopping once every row's bound exceeds `threshold`: `(best lower [B, R] over the iterates
    and `best`, alphas, betas)`. `target`: the node the rows bound (None: the last). `stall`: also stop after
    three steps that each raise the summed bound by at most this share of it (None: never). Plain TensorFlow: for
    compiled programs (`_program`, the branch and bound's batch step, `tfgeom.verify.refine`)."""
    last = len(graph.nodes) - 1 if target is None else target

    def step(alphas, betas, moments, t, lr_a, lr_b):
        with tf.GradientTape() as tape:
            tape.watch([alphas, betas])
            offsets = {pre: -betas[pre] * sides[pre][:, None] for pre in betas}
            lower = bd.backward(graph, last, coeffs, const, bounds, input_set, alphas, offsets)
            objective = tf.reduce_sum(lower)
        grad_a, grad_b = tape.gradient(objective, [alphas, betas])
        new_a, new_b, new_m = {}, {}, {}
        for n, a in alphas.items():
            a, *new_m[n] = _adam(a, grad_a[n], *moments[n], t, lr_a)
            new_a[n] = tf.clip_by_value(a, graph.nodes[n].slope, 1.0)
        for pre, b in betas.items():
            b, *new_m[pre] = _adam(b, grad_b[pre], *moments[pre], t, lr_b)
            new_b[pre] = tf.maximum(b, 0.0)
        return lower, new_a, new_b, new_m

    moments = {n: [tf.zeros_like(v), tf.zeros_like(v)] for n, v in [*alphas.items(), *betas.items()]}

    def more(t, best, *rest):  # every row proved: later steps cannot matter
        going = (t <= iterations) & tf.logical_not(tf.reduce_all(best > threshold))
        return going if stall is None else going & (rest[-1] < 3.0)

    def body(t, best, alphas, betas, moments, lr_a, lr_b, *stale):
        lower, alphas, betas, moments = step(alphas, betas, moments, t, lr_a, lr_b)
        better = tf.maximum(best, lower)
        out = [t + 1.0, better, alphas, betas, moments, lr_a * decay, lr_b * decay]
        if stall is not None:  # three steps in a row that raise the summed bound by less than `stall` of it
            total = tf.reduce_sum(better)
            small = total - tf.reduce_sum(best) <= stall * tf.abs(total)
            out.append(tf.where(small, stale[0] + 1.0, 0.0))
        return out

    start = [tf.constant(1.0), best, alphas, betas, moments, lr_alpha, lr_beta]
    _, best, alphas, betas, *_ = tf.while_loop(more, body, start + ([] if stall is None else [tf.constant(0.0)]))
    return best, alphas, betas


def _program(graph, kind):
    """`loop` compiled: one call per batch of subdomains (a call per step spent more time in TensorFlow's
    argument handling (the nested slopes, bounds, moments) than in the steps themselves on the benchmark MLPs)."""
    last = len(graph.nodes) - 1

    def run(coeffs, const, bounds, input_set, sides, alphas, betas, iterations, lr_alpha, lr_beta, decay,
            threshold):
        best = tf.fill(tf.shape(const), -float("inf"))
        return loop(graph, coeffs, const, bounds, input_set, sides, alphas, betas, iterations, lr_alpha, lr_beta,
                    decay, threshold, best)

    # a loop, not unrolled steps: XLA compiles it in about a second per batch shape (unrolled steps took ~7 s)
    return graph.program(("beta-loop", kind), run, jit=bd.use_xla(graph, last), reduce_retracing=True)


def optimise(graph, input_set, coeffs, const, bounds, sides, alphas, betas, settings=Settings(), threshold=None):
    """beta-CROWN lower bounds of `coeffs @ z + const` (`z` the last node) over a batch of subdomains.

    Args:
        input_set: the subdomains' input sets (`[B, ...]`).
        coeffs: `[B, R, D]`, `const` `[B, R]`.
        bounds: `(l, u)` of every node before the last, the splits already applied (`[B, *shape]`).
        sides: `{pre-activation node: [B, *shape]}` the splits: +1 active, -1 inactive, 0 free.
        alphas: `{ReLU node: [B, R, *shape]}` starting slopes.
        betas: `{pre-activation node: [B, R, *shape]}` starting multipliers (`>= 0`).
        settings: a `Settings`.
        threshold: stop early once every row's bound exceeds it (None: run every iteration).

    Returns:
        `(lower [B, R], alphas, betas)`: each row's best bound over the iterates, and the last slopes and
        multipliers (for the subdomains' children).
    """
    sides = {n: tf.cast(s, tf.float32) for n, s in sides.items()}
    threshold = float("inf") if threshold is None else float(threshold)
    return _program(graph, input_set.kind)(
        coeffs, const, tuple(bounds), input_set, sides, alphas, betas, tf.constant(float(settings.iterations)),
        tf.constant(settings.lr_alpha), tf.constant(settings.lr_beta), tf.constant(settings.decay),
        tf.constant(threshold))
