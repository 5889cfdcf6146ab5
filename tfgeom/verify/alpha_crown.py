"""alpha-CROWN: CROWN with the lower slopes of unstable ReLUs optimised (Xu et al. 2021).

For an unstable (leaky) ReLU with pre-activation bounds `l < 0 < u`, every
line `alpha x` with `alpha` in `[slope, 1]` is below the unit on `[l, u]`,
so CROWN's backward pass gives a valid lower bound for any such choice.
alpha-CROWN makes the slopes variables, one per unit and per bounded row:
for the margins (`[N, S, *shape]` for every ReLU node before the features)
and, as auto_LiRPA does, for the intermediate bounds too (`[N, 2K, *shape]`
for every earlier ReLU node, K the neurons of a layer CROWN bounded by a
backward pass, lower and upper rows). Each iteration recomputes the
intermediate bounds with their slopes (intersected with CROWN's, so they
never get looser; each iteration starts from the tightest intermediate
bounds seen so far, as auto_LiRPA does), then the margins' bounds; Adam raises the sum of the
margins' lower bounds by gradient ascent through both, and the slopes are
clipped back into `[slope, 1]`. Every iterate is sound, so the result is the
best bound seen for each margin, never below CROWN's (the first iterate has
CROWN's adaptive slopes).

Settings follow auto_LiRPA's defaults (20 iterations, learning rate 0.5
decayed by 0.98 per iteration, early stop after 10 iterations without
improvement). Intermediate slopes take memory `N x 2K x` (earlier units) per
layer, and their backward passes are dense (auto_LiRPA keeps only the
unstable units' slopes and patch-form passes): they are optimised when they
fit in the memory budget, else only the margins' slopes are.
`Settings(intermediate=False)` trades tightness for speed (on the benchmark
CNN ~40x faster, median margin bound 0.002 looser).
"""
from typing import NamedTuple

import tensorflow as tf

from tfgeom.verify import crown as bd
from tfgeom.verify.operators import ReLU
from tfgeom.runtime.resources import memory_budget


class Settings(NamedTuple):
    """Optimisation settings (auto_LiRPA's defaults).

    Fields:
        iterations: Adam steps at most.
        lr: learning rate of the slopes.
        decay: learning rate factor per step.
        patience: stop after this many steps without a better summed bound.
        intermediate: also optimise the slopes of the intermediate bounds
            (`None`: when they fit in the memory budget).
    """

    iterations: int = 20
    lr: float = 0.5
    decay: float = 0.98
    patience: int = 10
    intermediate: object = None


def _relus(graph, target):
    return [n for n in range(1, target + 1) if isinstance(graph.nodes[n], ReLU)]  # the target itself too


def initial_slopes(graph, bounds, targets):
    """CROWN's adaptive lower slopes for every `(target, relu)` pair, tiled over the target's rows.

    Args:
        targets: `{target node: rows}`.

    Returns:
        `{(target, relu node): [N, rows, *relu shape]}`.
    """
    slopes = {}
    for target, rows in targets.items():
        for n in _relus(graph, target):
            node = graph.nodes[n]
            slope = node.adaptive_slope(*bounds[node.inputs[0]])
            slopes[(target, n)] = tf.repeat(slope[:, None], rows, axis=1)
    return slopes


def _for(alphas, target):
    return {n: a for (t, n), a in alphas.items() if t == target}


def _both_signs(rows):
    """Rows for lower bounds then (negated) for upper bounds, in one backward pass."""
    return tf.concat([rows, -rows], 1)


def bounds_with_slopes(graph, input_set, reference, refined, alphas):
    """Every node's `(l, u)`: IBP, with the `refined` neurons bounded by backward passes using `alphas`,
    intersected with the `reference` bounds (CROWN's, or the tightest seen so far)."""
    nb = tf.shape(input_set.center)[0]
    bounds = [(input_set.low, input_set.high)]
    for n, node in enumerate(graph.nodes[1:], 1):
        l, u = node.interval([bounds[i] for i in node.inputs])
        l, u = tf.maximum(l, reference[n][0]), tf.minimum(u, reference[n][1])
        if n in refined:
            idx = refined[n]
            k = int(idx.shape[0])
            rows = _both_signs(bd.unit_rows(node.size, idx, node.shape, nb))
            lower = bd.backward(graph, n, rows, tf.zeros([nb, 2 * k]), bounds, input_set,
                                _for(alphas, n))
            l, u = bd.tighten(l, u, idx, lower[:, :k], -lower[:, k:])
        bounds.append((l, u))
    return bounds


def _program(graph, kind):
    """One projected Adam step on all slopes, compiled once per graph and input-set kind (and shapes)."""
    nodes = graph.nodes
    last = len(nodes) - 1

    def step(coeffs, const, reference, input_set, refined, alphas, ms, vs, t, lr):
        with tf.GradientTape() as tape:
            tape.watch(alphas)
            bounds = bounds_with_slopes(graph, input_set, reference, refined, alphas)
            lower = bd.backward(graph, last, coeffs, const, bounds, input_set, _for(alphas, last))
            objective = tf.reduce_sum(lower)
        # every iterate's intermediate bounds are valid: later iterates start from the tightest seen
        tightest = tuple(bounds)  # already intersected with `reference`
        grads = tape.gradient(objective, alphas)
        new_a, new_m, new_v = {}, {}, {}
        b1, b2 = 0.9, 0.999
        for key, g in grads.items():
            g = tf.zeros_like(alphas[key]) if g is None else g
            m = b1 * ms[key] + (1 - b1) * g
            v = b2 * vs[key] + (1 - b2) * g * g
            ascent = alphas[key] + lr * (m / (1 - b1 ** t)) / (tf.sqrt(v / (1 - b2 ** t)) + 1e-8)
            new_a[key] = tf.clip_by_value(ascent, nodes[key[1]].slope, 1.0)
            new_m[key], new_v[key] = m, v
        return lower, tightest, new_a, new_m, new_v

    return graph.program(("alpha-step", kind), step, jit=bd.use_xla(graph, last))


def _slope_bytes(graph, nb, targets):
    return sum(4 * nb * rows * graph.nodes[n].size for target, rows in targets.items() for n in _relus(graph, target))


def optimise(graph, input_set, coeffs, const, settings=Settings(), memory=bd.MEMORY, constrain=None):
    """alpha-CROWN lower bounds of `coeffs @ z + const` over the input set, `z` the features (the last node).

    Args:
        coeffs: `[N, S, D]`, `const` `[N, S]`.
        settings: a `Settings`.

    Returns:
        `(lower [N, S], bounds)`: the best bound of each row over the iterates
        (CROWN's at worst) and the tightest `(l, u)` of every node seen.
    """
    refined = {}
    reference = bd.crown_bounds(graph, input_set, memory, refined, constrain)
    # few distinct shapes, few compilations: pad each index list to a power of two (repeats are harmless)
    refined = {n: tf.gather(idx, tf.minimum(tf.range(1 << (int(idx.shape[0]) - 1).bit_length()), idx.shape[0] - 1))
               for n, idx in refined.items()}
    last = len(graph.nodes) - 1
    nb = int(coeffs.shape[0])
    targets = {last: int(coeffs.shape[1])}
    with_intermediate = {**targets, **{n: 2 * int(idx.shape[0]) for n, idx in refined.items()}}
    # slopes, two Adam moments, gradients and the backward passes' coefficients: ~8 copies
    fits = 8 * _slope_bytes(graph, nb, with_intermediate) <= memory_budget()
    # through convolutions the intermediate layers' passes are dense and un-fused: on the benchmark CNN they make
    # alpha-CROWN ~40x slower (1.6 s vs 0.04 s per input) and the median margin bound 0.002 tighter
    if settings.intermediate or (settings.intermediate is None and fits):
        targets = with_intermediate
    else:
        refined = {}
    alphas = initial_slopes(graph, reference, targets)
    if not alphas:  # no ReLU: nothing to optimise
        return bd.compiled_backward(graph, last, input_set.kind)(coeffs, const, tuple(reference[:last]),
                                                                 input_set), reference
    ms = {k: tf.zeros_like(a) for k, a in alphas.items()}
    vs = {k: tf.zeros_like(a) for k, a in alphas.items()}
    step = _program(graph, input_set.kind)
    best, best_total, stale = None, -float("inf"), 0
    lr = settings.lr
    reference = tuple(reference)
    for t in range(1, settings.iterations + 1):
        lower, reference, alphas, ms, vs = step(coeffs, const, reference, input_set, refined, alphas, ms, vs,
                                     tf.constant(float(t)), tf.constant(lr))
        best = lower if best is None else tf.maximum(best, lower)
        total = float(tf.reduce_sum(lower))
        stale = 0 if total > best_total else stale + 1
        best_total = max(best_total, total)
        if stale >= settings.patience:
            break
        lr *= settings.decay
    return best, list(reference)


def optimise_rows(graph, coeffs, const, bounds, input_set, steps, settings=Settings()):
    """alpha-CROWN on the rows only, the node bounds `bounds` fixed: `steps` Adam steps traced inline (for use
    inside one compiled program; no early stop, no host round trip).

    Args:
        coeffs: `[N, S, D]` rows over the last node, `const` `[N, S]`.
        bounds: `(l, u)` of every node before the last (CROWN's, e.g. `crown.whole_bounds`).
        steps: Adam steps; 0 gives CROWN's bound.

    Returns:
        `(lower [N, S], coefficients [N, S, *input shape], crown_coefficients)`: per row the best bound over the
        iterates (CROWN's at worst) with the input coefficients of that iterate (so `lower` is
        `const' + coefficients . x` minimised over the set, as `clip` needs), and CROWN's own coefficients.
    """
    last = len(graph.nodes) - 1
    best, coef = bd.backward(graph, last, coeffs, const, bounds, input_set, coefficients=True)
    first = coef
    alphas = {n: a for (_, n), a in initial_slopes(graph, bounds, {last: int(coeffs.shape[1])}).items()}
    ms = {n: tf.zeros_like(a) for n, a in alphas.items()}
    vs = {n: tf.zeros_like(a) for n, a in alphas.items()}
    lr = settings.lr

    def keep(lower, cf):  # the better iterate's bound and coefficients, row by row
        better = lower > best
        wide = tf.reshape(better, [*better.shape, *([1] * (cf.shape.rank - 2))])
        return tf.where(better, lower, best), tf.where(wide, cf, coef)

    for t in range(1, steps + 1):
        with tf.GradientTape() as tape:
            tape.watch(alphas)
            lower, cf = bd.backward(graph, last, coeffs, const, bounds, input_set, alphas, coefficients=True)
            objective = tf.reduce_sum(lower)
        if t > 1:  # the first iterate is CROWN's own
            best, coef = keep(lower, cf)
        grads = tape.gradient(objective, alphas)
        for n, g in grads.items():
            ms[n] = 0.9 * ms[n] + 0.1 * g
            vs[n] = 0.999 * vs[n] + 0.001 * g * g
            ascent = lr * (ms[n] / (1 - 0.9 ** t)) / (tf.sqrt(vs[n] / (1 - 0.999 ** t)) + 1e-8)
            alphas[n] = tf.clip_by_value(alphas[n] + ascent, graph.nodes[n].slope, 1.0)
        lr *= settings.decay
    if steps:
        best, coef = keep(*bd.backward(graph, last, coeffs, const, bounds, input_set, alphas, coefficients=True))
    return best, coef, first
