"""Refined intermediate bounds: a hidden layer's unstable units bounded over every sign pattern of a few earlier units.

Branch and bound with beta-CROWN on fixed node bounds (`tfgeom.verify.bab`) keeps the root's alpha-CROWN
bounds of every hidden unit in all its subdomains. On deep MLPs those bounds are the weak point: alpha-CROWN
reaches the single-neuron LP relaxation (Salman et al. 2019), and on VNN-COMP 2022's 4- and 6-layer MNIST
MLPs at `eps = 0.05` the relaxation of the first hidden layer leaves the second layer's unstable units 12 to
15 wide on average, the deeper layers' 25 to 83. The reference verifier tightens them before branching by a
MILP per unit (its `bab-refine` mode, Gurobi on 32 processes); on two cores a full MILP per unit is out of
reach (docs/choices.md).

This module gets most of that gain with the bound propagation itself. For each unstable unit `i` of a
target pre-activation node, the `splits` earlier unstable units that matter most to it (`scores`, the
BaBSR-like score branch and bound also uses: the gradient of its CROWN bounds with respect to their
pre-activation bounds times their width) are split both ways, all `2^splits` sign patterns at once, and
each pattern's lower and upper bound of `z_i` is beta-CROWN's (`tfgeom.verify.beta_crown`: the splits'
multipliers and the slopes optimised together). The patterns cover the input box, so

    l_i' = min over patterns of the pattern's lower bound,   u_i' = max over patterns of its upper bound

are valid bounds of `z_i`, intersected with the old ones. It is the partial MILP with `splits` binaries per
unit (each pattern's beta-CROWN bound converges to that pattern's LP), solved by enumeration in one batched
program instead of a solver's search per unit.

A stable unit's relaxation is exact whatever its bounds, so proving a unit stable is all its refinement can
give the layers after it. A first pass with `screen` splits (16 patterns per unit) goes over every unstable
unit; only the units it leaves unstable get the `splits` pass. On the deeper layers of the 6-layer MLP most
units are proved stable by the first pass (e.g. 182 of 248), which about halves those layers' time with the same
bounds on the units that stay unstable. Settings and measurements: docs/choices.md, docs/benchmarks.md.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom.verify import beta_crown
from tfgeom.verify import crown as bd
from tfgeom.verify.operators import ReLU
from tfgeom.runtime.resources import memory_budget


class Settings(NamedTuple):
    """Refinement settings.

    Fields:
        splits: earlier units split per refined unit (`2^splits` sign patterns each).
        iterations: beta-CROWN's Adam steps per pattern, at most.
        lr_alpha: learning rate of the slopes.
        lr_beta: learning rate of the split multipliers.
        decay: learning rate factor per step.
        screen: splits of a first, cheaper pass over all unstable units; only the units it leaves unstable get
            the `splits` pass (a stable unit's relaxation is exact whatever its bounds). 0: no first pass.
        stall: a batch of patterns stops after three steps that each raise its summed bound by at most this
            share of it (the second layer's bounds settle in ~20 steps, the last hidden layer's need ~60).
    """

    splits: int = 8
    iterations: int = 60
    lr_alpha: float = 0.2
    lr_beta: float = 0.2
    decay: float = 0.95
    screen: int = 4
    stall: float = 1e-4


def relu_inputs(graph):
    """`{pre-activation node: ReLU node}` of the graph's plain ReLUs, in graph order."""
    return {node.inputs[0]: n for n, node in enumerate(graph.nodes) if isinstance(node, ReLU) and not node.slope}


def scores(l, u, g_lo, g_up):
    """`[B, K]` scores of units with bounds `l, u` and bound gradients `g_lo, g_up` (all `[B, K]`), used to choose
    the units to split here and in branch and bound (`tfgeom.verify.bab`):
    `|g_l| (-l) + |g_u| u` (a first-order estimate of what fixing the unit gains, in the spirit of BaBSR's
    intercept scores), ties broken by `min(u, -l)`; -1 for stable units."""
    gain = tf.abs(g_lo) * (-l) + tf.abs(g_up) * u
    return tf.where((l < 0) & (u > 0), gain + 1e-6 * tf.minimum(u, -l), -1.0)


def clamp(l, u, side):
    """`(l, u)` with the split units clamped: `l >= 0` where active (`side` +1), `u <= 0` where inactive (-1)."""
    return tf.where(side > 0, tf.maximum(l, 0.0), l), tf.where(side < 0, tf.minimum(u, 0.0), u)


def clamped(bounds, sides):
    """Every node's `(l, u)` with its split units clamped (`clamp`); `sides`: `{pre-activation node:
    [B, *shape]}`."""
    return [clamp(l, u, sides[n]) if n in sides else (l, u) for n, (l, u) in enumerate(bounds)]


def _repeat_set(input_set, count):
    return type(input_set)(*[tf.repeat(t, count, axis=0) for t in input_set])


def _unit_rows(node, idx):
    """`[K, 2, size]`: for each unit, the rows `z_i` and `-z_i` (its lower and, negated, upper bound)."""
    eye = tf.one_hot(idx, node.size)
    return tf.reshape(tf.stack([eye, -eye], 1), [-1, 2, *node.shape])


def _scores_program(graph, target, earlier):
    """`[K, units of earlier nodes]` branching scores of every earlier unstable unit for each target unit."""
    def run(rows, bounds, input_set):
        with tf.GradientTape() as tape:
            tape.watch(bounds)
            lower = bd.backward(graph, target, rows, tf.zeros(tf.shape(rows)[:2]), bounds, input_set)
            objective = tf.reduce_sum(lower)
        grads = tape.gradient(objective, bounds)
        flat = lambda t: tf.reshape(t, [tf.shape(rows)[0], -1])  # noqa: E731
        return tf.concat([scores(flat(bounds[p][0]), flat(bounds[p][1]), flat(grads[p][0]), flat(grads[p][1]))
                          for p in earlier], axis=1)

    return graph.program(("refine-scores", target, tuple(earlier)), run, jit=bd.use_xla(graph, target),
                         reduce_retracing=True)


def _bound_program(graph, target, earlier):
    """Every pattern's beta-CROWN bounds of its unit, `[B, 2]` (lower, negated upper), in one program."""
    relus = relu_inputs(graph)

    def run(rows, sides_flat, bounds, input_set, iterations, lr_alpha, lr_beta, decay, stall):
        count = tf.shape(rows)[0]
        sides, offset = {}, 0
        for p in earlier:
            node = graph.nodes[p]
            sides[p] = tf.reshape(sides_flat[:, offset:offset + node.size], [count, *node.shape])
            offset += node.size
        split = clamped(bounds, sides)
        alphas = {relus[p]: tf.repeat(graph.nodes[relus[p]].adaptive_slope(*split[p])[:, None], 2, axis=1)
                  for p in earlier}
        betas = {p: tf.zeros([count, 2, *graph.nodes[p].shape]) for p in earlier}
        const = tf.zeros([count, 2])
        best = bd.backward(graph, target, rows, const, split, input_set)
        best, _, _ = beta_crown.loop(graph, rows, const, split, input_set, sides, alphas, betas, iterations,
                                     lr_alpha, lr_beta, decay, float("inf"), best, target=target, stall=stall)
        return best

    return graph.program(("refine-bound", target, tuple(earlier)), run, jit=bd.use_xla(graph, target),
                         reduce_retracing=True)


def _patterns(splits):
    """`[2^splits, splits]` every sign pattern (+1 / -1)."""
    bits = (np.arange(1 << splits)[:, None] >> np.arange(splits)[None]) & 1
    return (1 - 2 * bits).astype(np.float32)


def refine_node(graph, input_set, bounds, target, settings=Settings(), memory=None):
    """Tighter bounds of pre-activation node `target`'s unstable units (module docstring).

    Args:
        graph: the `LayerGraph`.
        input_set: the input set, one example (`[1, ...]`).
        bounds: `[(l, u)]` of every node (`[1, *shape]` each; e.g. the root's alpha-CROWN bounds).
        target: a pre-activation node (the input of a ReLU) after at least one other ReLU.
        settings: a `Settings`.
        memory: bytes a batch of patterns may take (None: an eighth of the memory budget).

    Returns:
        `(l, u)` of `target` (`[1, *shape]`), never looser than `bounds[target]`.
    """
    relus = relu_inputs(graph)
    earlier = [p for p in relus if p < target]
    l, u = (np.asarray(v) for v in bounds[target])
    idx = np.flatnonzero(((l < 0) & (u > 0)).reshape(-1)).astype(np.int32)
    if not earlier or not len(idx):
        return bounds[target]
    node = graph.nodes[target]
    prior = tuple(tuple(tf.constant(v) for v in b) for b in bounds[:target])
    k = len(idx)
    rows = _unit_rows(node, idx)
    per = 4 * 16 * sum(int(np.prod(graph.nodes[n].shape)) for n in range(target + 1)) * 2  # ~16 copies per row
    budget = memory or memory_budget() // 8
    # scores: one batch element per unit (both its rows), as many units per call as fit in the budget
    step, parts = max(1, int(budget // per)), []
    score_of = _scores_program(graph, target, earlier)
    for i in range(0, k, step):
        m = min(step, k - i)
        repeated = tuple(tuple(tf.repeat(v, m, axis=0) for v in b) for b in prior)
        parts.append(score_of(rows[i:i + m], repeated, _repeat_set(input_set, m)).numpy())
    score = np.concatenate(parts)
    usable = int((score[0] >= 0).sum())
    program = _bound_program(graph, target, earlier)
    new_l, new_u = l.reshape(-1).copy(), u.reshape(-1).copy()
    todo = np.arange(k)
    for splits in ((settings.screen,) if 0 < settings.screen < settings.splits else ()) + (settings.splits,):
        splits = min(splits, usable)
        found = _enumerate(program, rows, score, todo, splits, prior, input_set, settings, budget // per)
        new_l[idx[todo]] = np.maximum(new_l[idx[todo]], found[:, 0])
        new_u[idx[todo]] = np.minimum(new_u[idx[todo]], -found[:, 1])
        todo = todo[(new_l[idx[todo]] < 0) & (new_u[idx[todo]] > 0)]  # stable units gain nothing from more
        if not len(todo):
            break
    return new_l.reshape(l.shape), new_u.reshape(u.shape)


def _enumerate(program, rows, score, todo, splits, prior, input_set, settings, capacity):
    """`[len(todo), 2]` (lower, negated upper) bounds of units `todo` (indices into `rows` and `score`), each the
    worst over every sign pattern of its `splits` best-scored earlier units; `capacity`: batch elements per call."""
    chosen = np.argsort(-score[todo], axis=1, kind="stable")[:, :splits]  # [T, splits] flat over the earlier units
    patterns = _patterns(splits)  # [P, splits]
    width = score.shape[1]
    chunk = max(1, int(capacity // len(patterns)))  # units per batch of patterns
    parts = []
    for start in range(0, len(todo), chunk):
        units = chosen[start:start + chunk]
        n = len(units) * len(patterns)
        sides = np.zeros([n, width], np.float32)
        sides[np.arange(n)[:, None], np.repeat(units, len(patterns), axis=0)] = np.tile(patterns, (len(units), 1))
        found = program(tf.repeat(tf.gather(rows, todo[start:start + chunk]), len(patterns), axis=0),
                        tf.constant(sides), tuple(tuple(tf.repeat(v, n, axis=0) for v in b) for b in prior),
                        _repeat_set(input_set, n), tf.constant(float(settings.iterations)),
                        tf.constant(settings.lr_alpha), tf.constant(settings.lr_beta),
                        tf.constant(settings.decay), tf.constant(settings.stall)).numpy()
        parts.append(found.reshape(len(units), len(patterns), 2).min(axis=1))
    return np.concatenate(parts)
