"""Input splitting: complete verification of a low-dimensional box by halving the box.

On networks with few inputs (ACAS Xu's 5), a VNN-LIB box is wide compared with what
the network resolves, so almost every ReLU is unstable over it and splitting ReLUs
(`tfgeom.verify.bab`) makes slow progress: one split fixes one unit. Halving the box
instead tightens every unit's bounds at once, and with few inputs the number of boxes
stays small. This is the reference verifier's branching on such benchmarks.

The loop takes a batch of open boxes (padded to one shape, so the compiled passes
are traced once) and for each:

- bounds every constraint row `a^T y - b` of the property's unsafe set by CROWN
  (every node's bounds by backward passes, `tfgeom.verify.crown.crown_bounds`, then
  one backward pass from the rows); the box is safe when **each** disjunct has a row
  whose lower bound is above `guard` (some constraint of the conjunction fails
  everywhere in the box). Disjuncts with several constraints are handled as they
  are, without a single-row form;
- otherwise checks the box's centre by a forward pass: unsafe outputs there are a
  counterexample and the search ends;
- otherwise halves the box along the side that is widest relative to the property's
  box.

Verdicts are `tfgeom.verify.bab.Verdict`s: `"certified"` (no open box left),
`"counterexample"` (the centre, checked by the caller again) or `"unknown"` when the
time limit or the box budget runs out. A property that holds with zero slack at a
point can keep halving until the limit; one that holds with any positive slack ends.
"""
import time

import numpy as np
import tensorflow as tf

from tfgeom.verify import crown, vnnlib
from tfgeom.verify.bab import Verdict
from tfgeom.verify.sets import LinfBall

MAX_INPUTS = 8  # input splitting is used on boxes of at most this many dimensions (the halvings grow as 2^d)
BATCH = 512  # boxes bounded together (ACAS Xu's 300 units: ~10 MB of bounds per batch)


def applies(input_size):
    """Whether input splitting is the search for an input of `input_size` elements."""
    return 0 < input_size <= MAX_INPUTS


def _rows(gm, prop):
    """Every constraint of every disjunct as a row over the last hidden layer: `(coeffs [S, H], const [S])`
    with `a^T y - b = coeffs . h + const`, and `group [S]`, each row's disjunct."""
    weights, bias = (np.asarray(v, np.float64) for v in gm.head)
    a = np.concatenate([a for a, _ in prop.disjuncts]).astype(np.float64)
    b = np.concatenate([b for _, b in prop.disjuncts]).astype(np.float64)
    group = np.concatenate([np.full(len(b_), j) for j, (_, b_) in enumerate(prop.disjuncts)])
    return (a @ weights.T).astype(np.float32), (a @ bias - b).astype(np.float32), group


def _slack(lower, group, count):
    """`[B]` per box the smallest over disjuncts of its best row's lower bound (`> guard`: the box is safe)."""
    return np.min([lower[:, group == j].max(axis=1) for j in range(count)], axis=0)


def _halve(low, high, width):
    """Both halves of each box `[B, *shape]`, split along the side widest relative to `width`."""
    flat_low, flat_high = low.reshape(len(low), -1), high.reshape(len(high), -1)
    side = np.argmax((flat_high - flat_low) / width, axis=1)
    rows = np.arange(len(low))
    middle = (flat_low[rows, side] + flat_high[rows, side]) / 2
    upper_low, lower_high = flat_low.copy(), flat_high.copy()
    upper_low[rows, side], lower_high[rows, side] = middle, middle
    return (np.concatenate([flat_low, upper_low]).reshape(-1, *low.shape[1:]),
            np.concatenate([lower_high, flat_high]).reshape(-1, *low.shape[1:]))


def search(gm, prop, low, high, time_limit, guard=0.0, max_boxes=10**8, batch=BATCH):
    """Input splitting on the box `low`..`high` (`[*input shape]`) of VNN-LIB property `prop` (module docstring).

    Args:
        gm: a `GeometryModel` with a plain-ReLU feature extractor.
        prop: the `tfgeom.verify.vnnlib.Property`; its disjuncts are the unsafe outputs.
        low: the box's lower corner, in the model's input shape.
        high: the box's upper corner.
        time_limit: seconds before the verdict is `"unknown"`.
        guard: a row counts as positive above this (the rounding guard, logit units).
        max_boxes: boxes bounded before the verdict is `"unknown"`.
        batch: boxes bounded together.

    Returns:
        A `tfgeom.verify.bab.Verdict` (`domains`: boxes bounded; `lower`: the lowest slack, the smallest over
        disjuncts of the best row's lower bound, among the boxes the last batch left open; `+inf` when certified).
    """
    start = time.perf_counter()
    graph = gm.layer_graph
    last = len(graph.nodes) - 1
    coeffs, const, group = _rows(gm, prop)
    coeffs_b, const_b = tf.constant(np.repeat(coeffs[None], batch, 0)), tf.constant(np.repeat(const[None], batch, 0))
    width = np.maximum((high - low).reshape(-1), 1e-12)
    backward = crown.compiled_backward(graph, last, "linf")
    open_low, open_high = low[None].astype(np.float32), high[None].astype(np.float32)
    bounded, worst = 0, -np.inf
    while len(open_low):
        if time.perf_counter() - start > time_limit or bounded >= max_boxes:
            return Verdict("unknown", None, bounded, time.perf_counter() - start, worst)
        take = min(batch, len(open_low))
        lo, hi = open_low[:take], open_high[:take]
        open_low, open_high = open_low[take:], open_high[take:]
        pad = np.repeat(lo[-1:], batch - take, 0), np.repeat(hi[-1:], batch - take, 0)
        box_low, box_high = tf.constant(np.concatenate([lo, pad[0]])), tf.constant(np.concatenate([hi, pad[1]]))
        box = LinfBall((box_low + box_high) / 2, tf.reduce_max(tf.reshape(box_high - box_low, [batch, -1]), 1) / 2,
                       box_low, box_high)
        bounds = crown.crown_bounds(graph, box)
        lower = np.asarray(backward(coeffs_b, const_b, tuple(bounds[:last]), box))[:take]
        bounded += take
        slack = _slack(lower, group, len(prop.disjuncts))
        left = slack <= guard
        if not left.any():
            continue
        lo, hi = lo[left], hi[left]
        worst = float(slack[left].min())
        centre = (lo + hi) / 2
        unsafe = vnnlib.violated(prop, gm.runtime.logits(centre))
        if unsafe.any():
            return Verdict("counterexample", centre[int(np.argmax(unsafe))], bounded, time.perf_counter() - start,
                           worst)
        halves = _halve(lo, hi, width)
        # the new halves go first: depth first keeps the open list short (each box's pair is bounded together)
        open_low, open_high = np.concatenate([halves[0], open_low]), np.concatenate([halves[1], open_high])
    return Verdict("certified", None, bounded, time.perf_counter() - start, float("inf"))
