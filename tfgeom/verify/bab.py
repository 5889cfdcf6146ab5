"""Branch and bound: complete verification of an L-inf ball by splitting unstable ReLUs.

A ball is certified when every margin `f_c - f_j` is positive on it (or, for
a VNN-LIB property, every row `A f - c` over any box). alpha-CROWN at the root
gives lower bounds that may be too loose; branch and bound splits an unstable
ReLU `y = max(x, 0)` into the subdomains `x >= 0` (the unit is linear there)
and `x <= 0` (it is zero), which together cover the ball. In a subdomain the
split units' pre-activation bounds are clamped at 0 (`l = max(l, 0)` or
`u = min(u, 0)`). By default (`fixed`) every other node keeps the root's
alpha-CROWN bounds and the rows' bound is beta-CROWN's
(`tfgeom.verify.beta_crown`: the splits' Lagrange multipliers optimised with
the slopes, warm-started from the parent subdomain); otherwise (`beta=None`
or `fixed=False`) CROWN recomputes every later node's bounds from the
clamped ones, so every later bound tightens too, at a much higher cost.

On networks without convolutions, when the root leaves a row unproved, the
root's node bounds are first refined layer by layer (`tfgeom.verify.refine`:
each hidden unit bounded over the sign patterns of the earlier units that
matter most to it, alpha-CROWN again after each layer) for at most half of
the time limit: on VNN-COMP 2022's deep MNIST MLPs the root's bounds, not
the search's speed, were what left instances undecided.

With beta-CROWN, every row the root leaves unproved gets a search of its own
(`separate`, easiest first, all sharing the root's node bounds): the rows are
a conjunction, so each subdomain carries one row instead of all of them.

The loop takes the open subdomains with the lowest bound (a batch, bounded
together on the device), and for each:

- drops it when its bounds are contradictory (`l > u`: no input satisfies its
  splits) or every margin's lower bound is positive;
- tries the input that minimises the worst margin's linear bound (a box
  corner): if the network misclassifies it, it is a counterexample (checked
  by a forward pass) and the search ends;
- when no unstable unit is left, solves the subdomain exactly: the network
  is linear there, so the minimum margin under the splits' sign constraints
  is a linear program (HiGHS through `tfgeom.verify.milp`); positive: verified,
  else its minimiser is checked by a forward pass;
- otherwise splits an unstable unit: the one with the largest score (the
  gradient of the unproved rows' bound with respect to the unit's
  pre-activation bounds times their width, a first-order estimate of what
  fixing the unit gains, in the spirit of BaBSR's intercept scores; ties
  broken by `min(u, -l)`), or, with beta-CROWN on fixed bounds, the best of
  the top `candidates` by the bound of its better child, each child bounded
  once with the parent's slopes and multipliers (filtered smart branching,
  De Palma et al. 2021; the better child, not the worse, as the reference
  verifier's VNN-COMP 2022 settings choose: a split that nearly closes one
  side removes that subtree early).

With beta-CROWN on fixed node bounds, a batch's bounds, contradiction checks,
corners and branching choices come from one compiled program
(`_step_program`: one host round trip per batch; on the benchmark MLPs the
staged version spent up to a third of its time in NumPy and TensorFlow's argument
handling between the stages).

Verdicts: `"certified"` (no open subdomain left), `"counterexample"` (with
the input), or `"unknown"` when the time limit or the domain budget runs out
(never "certified"). With an unlimited budget the search is complete: every
path ends in a bound, a contradiction or an exact linear program.
"""
import copy
import time
from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tfgeom.runtime.resources import memory_budget
from tfgeom.verify import alpha_crown, beta_crown, milp, refine
from tfgeom.verify import crown as bd
from tfgeom.verify.sets import LinfBall, ball

TOLERANCE = 1e-6  # a forward margin below -TOLERANCE * scale is a counterexample
# subdomains bounded together: as many as fit in an eighth of the memory budget, within these (larger batches
# spend less per subdomain in TensorFlow's call overhead: 54 s -> 41 s from 128 to 1024 on one mnist_fc row)
BATCHES = (128, 1024)
MIN_PAD = 128  # where XLA compiles the bounds (once per batch shape), batches are padded to 128, 256, 512, ...
COPIES = 32  # float32 copies of a subdomain's per-unit tensors while it is bounded (slopes, moments, children)


class Verdict(NamedTuple):
    """The result of branch and bound on one input set.

    Fields:
        verdict: `"certified"`, `"counterexample"` or `"unknown"`.
        counterexample: an input of the set the network does not give class
            `c` (`[*input shape]`), or None.
        domains: subdomains bounded.
        seconds: time spent.
        lower: the lowest margin bound over the subdomains still open when the
            search stopped (`+inf` when certified).
    """

    verdict: str
    counterexample: Optional[np.ndarray]
    domains: int
    seconds: float
    lower: float


def _crown_with_grads(graph, coeffs, const, bounds, input_set, threshold):
    """The rows' CROWN bound `[B, R]` with its gradients w.r.t. the node bounds (the branching scores) and the box
    (the corners that minimise the linear bound); only rows below `threshold` count in the gradients."""
    with tf.GradientTape() as tape:
        tape.watch([bounds, input_set.low, input_set.high])
        lower = bd.backward(graph, len(graph.nodes) - 1, coeffs, const, bounds, input_set)
        # scores count only the margins not yet proved (a constant weight: no gradient through it)
        weights = tf.stop_gradient(tf.cast(lower < threshold, tf.float32))
        objective = tf.reduce_sum(lower * weights)
    grads, box = tape.gradient(objective, [bounds, [input_set.low, input_set.high]])
    return lower, grads, box


def _program(graph, kind):
    """`_crown_with_grads` compiled."""
    return graph.program(("bab", kind), lambda *args: _crown_with_grads(graph, *args),
                         reduce_retracing=True)  # batches of 1, 2, 4, ... subdomains


class Step(NamedTuple):
    """One batch of subdomains bounded and branched (`_Problem.step`).

    Fields:
        lower: `[B, R]` the rows' lower bounds.
        empty: `[B]` whether the subdomain's bounds are contradictory (no input satisfies its splits).
        choices: `[B]` the unit to split next (flat, `_Problem.start`'s layout); -1 where none is unstable or
            the subdomain is proved.
        corners: `[B, *input shape]` the box corners minimising the rows' linear bound (candidate
            counterexamples).
        states: per subdomain what its children start from (slopes and multipliers), or None.
        bounds: `bounds(i)`: every node's `(l, u)` in subdomain `i` (the exact LP's input).
    """

    lower: np.ndarray
    empty: np.ndarray
    choices: np.ndarray
    corners: np.ndarray
    states: object
    bounds: object


def _unflat(graph, start, flat, pre, lead):
    """Node `pre`'s part of `flat [*lead, ...]` (`_Problem.start`'s layout) as `[*lead, *shape]`."""
    node = graph.nodes[pre]
    return tf.reshape(flat[..., start[pre]:start[pre] + node.size], [*lead, *node.shape])


def _inherited(graph, relus, start, bounds, kept, have):
    """`(alphas, betas)` each subdomain starts from: its parent's `kept [B, R, 2 units]` (slopes then
    multipliers, flat) where `have [B]`, else CROWN's adaptive slopes and multipliers 0."""
    count, rows, units = tf.shape(kept)[0], kept.shape[1], kept.shape[2] // 2
    alphas, betas = {}, {}
    for pre, n in relus.items():
        adaptive = tf.repeat(graph.nodes[n].adaptive_slope(*bounds[pre])[:, None], rows, axis=1)
        mask = tf.reshape(have, [-1] + [1] * (adaptive.shape.rank - 1))
        slopes = tf.clip_by_value(_unflat(graph, start, kept[:, :, :units], pre, [count, rows]),
                                  graph.nodes[n].slope, 1.0)
        alphas[n] = tf.where(mask, slopes, adaptive)
        betas[pre] = tf.where(mask, _unflat(graph, start, kept[:, :, units:], pre, [count, rows]), 0.0)
    return alphas, betas


def _flat_states(relus, alphas, betas):
    """`[B, R, 2 units]` the slopes then the multipliers, flat (`_inherited`'s `kept`)."""
    lead = tf.shape(next(iter(alphas.values())))[:2]
    flat = lambda t: tf.reshape(t, tf.concat([lead, [-1]], 0))  # noqa: E731
    return tf.concat([flat(alphas[n]) for n in relus.values()] + [flat(betas[pre]) for pre in relus], axis=2)


def _step_program(problem, candidates):
    """One batch of beta-CROWN subdomains on fixed node bounds in one compiled program (under XLA where the
    graph allows, `crown.use_xla`): clamp the root's bounds by the splits, CROWN's bound and its gradients,
    beta-CROWN's Adam loop from the inherited slopes and multipliers, and filtered smart branching (the
    `candidates` best-scored units, both children of each bounded once with the parent's final slopes and
    multipliers; the unit whose better child is higher wins). Host round trips per batch: one."""
    graph, relus, start = problem.graph, problem.relus, problem.start
    last = len(graph.nodes) - 1

    def unflat(flat, pre, lead):
        return _unflat(graph, start, flat, pre, lead)

    def run(flat, states, have, reference, coeffs, const, input_set, children_set, guard, iterations, lr_alpha,
            lr_beta, decay):
        count, rows = tf.shape(flat)[0], coeffs.shape[0]
        signs = tf.cast(flat, tf.float32)
        sides = {pre: unflat(signs, pre, [count]) for pre in relus}
        bounds = refine.clamped([tuple(tf.broadcast_to(v, [count, *v.shape[1:]]) for v in b) for b in reference],
                                sides)
        bounds = tuple(bounds[:last])
        coeffs = tf.broadcast_to(coeffs[None], [count, *coeffs.shape])
        const = tf.broadcast_to(const[None], [count, rows])
        lower, grads, box = _crown_with_grads(graph, coeffs, const, bounds, input_set, guard)
        corners = tf.where(box[0] + box[1] > 0, input_set.low, input_set.high)
        alphas, betas = _inherited(graph, relus, start, bounds, states, have)
        lower, alphas, betas = beta_crown.loop(graph, coeffs, const, bounds, input_set, sides, alphas, betas,
                                               iterations, lr_alpha, lr_beta, decay, guard, lower)
        states = _flat_states(relus, alphas, betas)
        empty = tf.zeros([count], tf.bool)
        for l, u in bounds:
            empty |= tf.reduce_any(tf.reshape(l > u, [count, -1]), axis=1)
        flat_of = lambda t: tf.reshape(t, [count, -1])  # noqa: E731
        scores = tf.concat([refine.scores(flat_of(bounds[pre][0]), flat_of(bounds[pre][1]), flat_of(grads[pre][0]),
                                          flat_of(grads[pre][1])) for pre in relus], axis=1)
        values, top = tf.math.top_k(scores, candidates)  # equal scores: the lower unit first
        choice = top[:, 0]
        if candidates > 1:
            # every candidate's two children: the parent's splits with the unit set to +1 / -1 (repeats and a
            # one-hot mask: gathers and a scatter cost ~45 ms more per batch of 1,024 under XLA on CPU)
            copies = 2 * candidates
            unit = tf.repeat(tf.reshape(top, [-1]), 2)
            side = tf.tile(tf.constant([1.0, -1.0]), [count * candidates])
            repeated = tf.repeat(signs, copies, axis=0)
            hot = tf.one_hot(unit, problem.units)
            children = repeated + hot * (side[:, None] - repeated)
            child_bounds = refine.clamped([tuple(tf.broadcast_to(v, [count * copies, *v.shape[1:]]) for v in b)
                                           for b in reference[:last]],
                                          {pre: unflat(children, pre, [-1]) for pre in relus})
            # the parent's multipliers on the parent's splits (the new split's multiplier starts at 0)
            offsets = {pre: tf.repeat(-betas[pre] * sides[pre][:, None], copies, axis=0) for pre in relus}
            found = bd.backward(graph, last, tf.repeat(coeffs, copies, axis=0), tf.repeat(const, copies, axis=0),
                                child_bounds, children_set,
                                {n: tf.repeat(a, copies, axis=0) for n, a in alphas.items()}, offsets)
            better = tf.reduce_max(tf.reshape(tf.reduce_min(found, 1), [count, candidates, 2]), axis=2)
            better = tf.where(values >= 0, better, -float("inf"))
            choice = tf.gather(top, tf.argmax(better, axis=1, output_type=tf.int32), batch_dims=1)
        proved = empty | tf.reduce_all(lower > guard, axis=1)
        choice = tf.where((values[:, 0] >= 0) & ~proved, choice, -1)
        return lower, empty, choice, corners, states  # to float16 on the host: oneDNN logs an error line otherwise

    return graph.program(("bab-step", problem.input_set(1).kind, candidates), run,
                         jit=bd.use_xla(graph, last), reduce_retracing=True)


class _Problem:
    """One example's ball, class and margins; bounds batches of subdomains (dicts of split arrays)."""

    def __init__(self, gm, x, eps, cls, scale, box=None, rows=None):
        self.gm, self.graph = gm, gm.layer_graph
        self.x, self.eps, self.cls = x, eps, int(cls)
        weights, bias = gm.head
        w, b = np.asarray(weights, np.float32), np.asarray(bias, np.float32)
        if rows is None:  # the margins f_c - f_j
            keep = [j for j in range(w.shape[1]) if j != self.cls]
            a = np.eye(w.shape[1], dtype=np.float32)
            rows = (a[self.cls][None] - a[keep], np.zeros(len(keep), np.float32))
        self.rows = tuple(np.asarray(r, np.float32) for r in rows)  # safe iff A f - c > 0 row by row
        self.all_rows = self.rows  # a search on one row (`restricted`) still reports a point violating any
        self.coeffs = self.rows[0] @ w.T  # [R, D] rows over the features
        self.const = self.rows[0] @ b - self.rows[1]
        self.box = None if box is None else tuple(np.asarray(v, np.float32).reshape(x.shape) for v in box)
        self.guard = guard(scale)
        self.relus = refine.relu_inputs(self.graph)
        # a subdomain's splits: one flat int8 array over every ReLU's units (+1 active, -1 inactive, 0 free);
        # `start[n]` is where pre-activation node n's units begin
        self.start, units = {}, 0
        for n in self.relus:
            self.start[n], units = units, units + self.graph.nodes[n].size
        self.units = units
        self._matrices = None
        self._sets = {}  # input sets by batch size
        self.reference = None  # the root's alpha-CROWN bounds of every node (valid in every subdomain)
        self.beta = None  # beta_crown.Settings, or None: CROWN bounds only
        self.fixed = False  # subdomains keep the root's node bounds (only the splits clamp them)
        self.pad_to = None  # bound batches padded to at least this many subdomains (then powers of two)
        self._stacked, self._last = None, None  # the last batch's splits and final (slopes, multipliers)
        self._reference = None  # `reference` as tensors

    def root(self, beta=beta_crown.Settings(), fixed=True, batch=None):
        """alpha-CROWN at the root: `[R]` the rows' lower bounds; its node bounds tighten every subdomain's, and
        with `beta` the subdomains' bounds are beta-CROWN's. `fixed`: the subdomains keep the root's node
        bounds (only their split units clamped) instead of recomputing them by CROWN. `batch`: the search's
        batch size (the fused program's one shape, `step`)."""
        lower = self._alpha_crown()
        self.beta, self.fixed, self.batch = beta, fixed, batch or BATCHES[0]
        if beta is not None and bd.use_xla(self.graph, len(self.graph.nodes) - 1):
            self.pad_to = min(batch or MIN_PAD, MIN_PAD)
        return lower

    def _alpha_crown(self, refined=None):
        """alpha-CROWN over the whole input set, with the nodes of `refined` (`{node: (l, u)}`) kept within those
        bounds: the rows' `[R]` lower bounds; sets `reference`."""
        constrain = None
        if refined:
            kept = {n: tuple(tf.constant(v) for v in b) for n, b in refined.items()}

            def constrain(n, l, u):
                return (tf.maximum(l, kept[n][0]), tf.minimum(u, kept[n][1])) if n in kept else (l, u)

        lower, bounds = alpha_crown.optimise(self.graph, self.input_set(1), tf.constant(self.coeffs[None]),
                                             tf.constant(self.const[None]), constrain=constrain)
        self.reference = [(np.asarray(l), np.asarray(u)) for l, u in bounds]
        return np.asarray(lower)[0]

    def refine(self, settings, until):
        """Tighten the root's node bounds layer by layer (`tfgeom.verify.refine`: each hidden layer after the
        first, its unstable units bounded over the sign patterns of the earlier units that matter most to them),
        alpha-CROWN again after each layer, while `time.perf_counter()` is before `until`: the rows' `[R]` lower
        bounds, or None when nothing was refined."""
        refined, lower = {}, None
        for target in list(self.relus)[1:]:
            if time.perf_counter() >= until:
                break
            refined[target] = refine.refine_node(self.graph, self.input_set(1), self.reference, target, settings)
            lower = self._alpha_crown(refined)
            if (lower > self.guard).all():
                break
        return lower

    def restricted(self, row):
        """The same problem on row `row` alone, sharing the root's node bounds and settings."""
        part = copy.copy(self)  # the last batch's splits and slopes are set again by each batch before use
        part.rows = (self.rows[0][row:row + 1], self.rows[1][row:row + 1])
        part.coeffs, part.const = self.coeffs[row:row + 1], self.const[row:row + 1]
        return part

    def split(self, sides=None):
        """A subdomain's flat splits from `{pre-activation node: [*shape] int8}` (missing nodes free)."""
        flat = np.zeros(self.units, np.int8)
        for n, side in (sides or {}).items():
            flat[self.start[n]:self.start[n] + self.graph.nodes[n].size] = np.asarray(side).reshape(-1)
        return flat

    def input_set(self, count):
        """The input set repeated `count` times (cached: every batch of a size uses the same)."""
        if count not in self._sets:
            self._sets[count] = self._input_set(count)
        return self._sets[count]

    def _input_set(self, count):
        x = np.repeat(self.x[None], count, 0)
        if self.box is not None:  # any box (a VNN-LIB property's), not only a ball within the bounds
            low, high = (tf.constant(np.repeat(v[None], count, 0)) for v in self.box)
            return LinfBall(tf.constant(x), tf.fill([count], float(self.eps)), low, high)
        return ball(x, np.full(count, self.eps, np.float32), "linf", self.gm.bounds)

    def step(self, splits, states, candidates=3):
        """Bound and branch a batch of subdomains (flat split arrays, `split`) whose slopes and multipliers start
        from `states` (None entries: CROWN's slopes, multipliers 0): a `Step`. With beta-CROWN on fixed node
        bounds, one compiled program (`_step_program`); otherwise `bound` then `branch` (the same numbers, with
        a host round trip per stage). Under XLA the fused program takes ~8 s to compile per batch shape on the
        benchmark MLPs, so batches are padded to `MIN_PAD` or to the batch size: two shapes."""
        count = len(splits)
        if self.beta is None or not self.fixed or not self.units:
            return self._step_in_parts(splits, states, candidates)
        if bd.use_xla(self.graph, len(self.graph.nodes) - 1):
            pad = MIN_PAD if count <= MIN_PAD else max(count, self.batch)
        else:  # a plain graph: shapes generalise after the second trace
            pad = count
        flat = np.stack(splits + [splits[-1]] * (pad - count))
        kept, have = self._kept(states, pad)
        if self._reference is None:
            self._reference = tuple(tuple(tf.constant(v) for v in b) for b in self.reference)
        candidates = min(candidates, self.units)
        program = _step_program(self, candidates)
        out = program(tf.constant(flat), kept, have, self._reference,
                      tf.constant(self.coeffs), tf.constant(self.const), self.input_set(pad),
                      self.input_set(pad * 2 * candidates if candidates > 1 else 1),  # the candidates' children
                      tf.constant(self.guard, tf.float32), tf.constant(float(self.beta.iterations)),
                      tf.constant(self.beta.lr_alpha), tf.constant(self.beta.lr_beta), tf.constant(self.beta.decay))
        lower, empty, choices, corners, states = (np.asarray(t)[:count] for t in out)
        return Step(lower, empty, choices, corners, states.astype(np.float16), lambda i: self.node_bounds(splits[i]))

    def _kept(self, states, pad):
        """`(kept [pad, R, 2 units] float32, have [pad] bool)` tensors of a batch's inherited states (`_inherited`;
        None entries: zeros, not had), padded with the last one."""
        states = list(states) + [states[-1]] * (pad - len(states))
        none = np.zeros((len(self.coeffs), 2 * self.units), np.float16)
        kept = np.stack([none if s is None else s for s in states]).astype(np.float32)
        return tf.constant(kept), tf.constant([s is not None for s in states])

    def _step_in_parts(self, splits, states, candidates):
        lower, node_bounds, grads, (direction, low, high), states = self.bound(splits, states)
        count = len(splits)
        empty = _empty(node_bounds, count)
        picks = self.branch(lower, node_bounds, {n: grads[n] for n in self.relus}, count, candidates, empty)
        choices = np.array([-1 if c is None else self.start[c[0]] + c[1] for c in picks], np.int64)
        return Step(lower, empty, choices, np.where(direction > 0, low, high), states,
                    lambda i: [(l[i], u[i]) for l, u in node_bounds])

    def node_bounds(self, split):
        """Every node's `(l, u)` in the subdomain `split` on the root's node bounds (fixed bounds)."""
        sides = {n: split[self.start[n]:self.start[n] + self.graph.nodes[n].size].reshape(
            1, *self.graph.nodes[n].shape) for n in self.relus}
        return [(np.asarray(l)[0], np.asarray(u)[0]) for l, u in refine.clamped(self.reference, sides)]

    def bound(self, splits, states_in=None):
        """`(lower [B, R], bounds, grads, box grads, states)` of the subdomains `splits` (a list of flat split
        arrays, `split`) whose beta-CROWN slopes and multipliers start from `states_in` (a list, None entries:
        CROWN's)."""
        count = len(splits)
        states_in = [None] * count if states_in is None else list(states_in)
        # few distinct batch shapes; one when XLA compiles the bounds (it compiles per shape)
        pad = max(self.pad_to or 1, 1 << (count - 1).bit_length())
        flat = np.stack(splits + [splits[-1]] * (pad - count))
        stacked = {n: tf.constant(flat[:, self.start[n]:self.start[n] + self.graph.nodes[n].size].reshape(
            pad, *self.graph.nodes[n].shape)) for n in self.relus}
        self._stacked = stacked  # the batch's splits (the branching rule's children keep them)

        def constrain(n, l, u):
            if self.reference is not None:
                l, u = tf.maximum(l, self.reference[n][0]), tf.minimum(u, self.reference[n][1])
            return refine.clamp(l, u, stacked[n]) if n in stacked else (l, u)

        input_set = self.input_set(pad)
        if self.fixed:  # beta-CROWN's usual setting: the multipliers carry the splits to the final bound
            found = refine.clamped([tuple(tf.broadcast_to(v, [pad, *v.shape[1:]]) for v in b)
                                    for b in self.reference], stacked)
        else:
            found = bd.crown_bounds(self.graph, input_set, constrain=constrain)
        last = len(self.graph.nodes) - 1
        coeffs = tf.constant(np.repeat(self.coeffs[None], pad, 0))
        const = tf.constant(np.repeat(self.const[None], pad, 0))
        lower, grads, box = _program(self.graph, "linf")(coeffs, const, tuple(found[:last]), input_set,
                                                         tf.constant(self.guard, tf.float32))
        states = [None] * count
        if self.beta is not None:
            lower, states = self._beta(lower, found[:last], stacked, states_in, input_set, coeffs, const, count)

        def take(t, like=None):
            return np.zeros_like(np.asarray(like))[:count] if t is None else np.asarray(t)[:count]

        return (take(lower), [(take(l), take(u)) for l, u in found],
                [(take(g[0], b[0]), take(g[1], b[1])) for g, b in zip(grads, found)],
                (take(box[0]) + take(box[1]), take(input_set.low), take(input_set.high)), states)

    def _beta(self, lower, bounds, stacked, states, input_set, coeffs, const, count):
        """beta-CROWN on the batch (where CROWN left a row unproved), from each subdomain's inherited slopes and
        multipliers (`states`: per subdomain a `[R, 2 units]` float16 array, the slopes then the multipliers in
        `start`'s layout, or None: CROWN's slopes, 0)."""
        if bool(tf.reduce_all(lower[:count] > self.guard)):
            return lower, [None] * count
        kept, have = self._kept(states, int(lower.shape[0]))
        alphas, betas = _inherited(self.graph, self.relus, self.start, bounds, kept, have)
        better, alphas, betas = beta_crown.optimise(self.graph, input_set, coeffs, const, bounds, stacked, alphas,
                                                    betas, self.beta, self.guard)
        lower = tf.maximum(lower, better)
        self._last = (alphas, betas)  # the batch's final slopes and multipliers (the branching rule reuses them)
        return lower, np.asarray(_flat_states(self.relus, alphas, betas))[:count].astype(np.float16)

    def branch(self, lower, node_bounds, grads, count, candidates=3, empty=None):
        """Filtered smart branching: per open subdomain, the `candidates` units with the best BaBSR-like score,
        each tried by bounding both children once (the parent's node bounds with the unit clamped, the parent's
        final slopes and multipliers, one backward pass); the unit whose better child has the higher bound wins.
        Returns `[(node, flat index) or None]` per subdomain (None: none unstable, or already proved).
        `empty`: `[B]` the subdomains with contradictory bounds (`_empty`; computed when not given)."""
        choices, tried = [None] * count, []
        empty = _empty(node_bounds, count) if empty is None else empty
        open_ = np.flatnonzero(~empty & (lower[:count].min(axis=1) <= self.guard))
        for i, ranked in zip(open_, _ranked(node_bounds, grads, self.relus, open_, candidates)):
            choices[i] = ranked[0] if ranked else None
            if len(ranked) > 1:
                tried += [(i, n, k, side) for n, k in ranked for side in (1, -1)]
        if not tried or self.beta is None or not self.fixed:
            return choices
        alphas, betas = self._last
        index = tf.constant([t[0] for t in tried], tf.int32)
        child = [[np.asarray(l)[[t[0] for t in tried]], np.asarray(u)[[t[0] for t in tried]]] for l, u in node_bounds]
        for row, (_, n, k, side) in enumerate(tried):
            l, u = child[n][0][row].reshape(-1), child[n][1][row].reshape(-1)
            if side > 0:
                l[k] = max(l[k], 0.0)
            else:
                u[k] = min(u[k], 0.0)
        last = len(self.graph.nodes) - 1
        bounds = tuple((tf.constant(l), tf.constant(u)) for l, u in child[:last])
        sides = {n: tf.gather(tf.cast(side, tf.float32), index) for n, side in self._stacked.items()}
        offsets = {pre: -tf.gather(b, index) * sides[pre][:, None] for pre, b in betas.items()}
        found = _children_program(self.graph)(
            tf.constant(np.repeat(self.coeffs[None], len(tried), 0)), tf.constant(np.repeat(self.const[None],
                                                                                           len(tried), 0)),
            bounds, self.input_set(len(tried)), {n: tf.gather(a, index) for n, a in alphas.items()}, offsets)
        better = np.asarray(found).min(axis=1).reshape(-1, 2).max(axis=1)  # per (subdomain, unit): the better child
        best = {}
        for (i, n, k, _), value in zip(tried[::2], better):
            if i not in best or value > best[i][0]:
                best[i] = (value, (n, k))
        for i, (_, choice) in best.items():
            choices[i] = choice
        return choices

    def misclassified(self, x):
        """Whether some row `A f(x) - c` is not positive at the inputs `x [B, ...]` (for margin rows: the class is
        not `cls`)."""
        logits = self.gm.runtime.logits(np.asarray(x, np.float32))
        values = logits @ self.all_rows[0].T - self.all_rows[1]
        return values.min(axis=1) < TOLERANCE * np.maximum(1.0, np.abs(logits).max(axis=1))

    def exact(self, node_bounds, time_limit=milp.TIME_LIMIT):
        """The LP of a subdomain without unstable units: `(min margin, minimiser)`; a solve cut short by
        `time_limit` (seconds for them all) gives `-inf` (not proved)."""
        per = [(np.asarray(l, np.float64), np.asarray(u, np.float64)) for l, u in node_bounds]
        if self._matrices is None:
            self._matrices = milp.affine_matrices(self.graph)
        program = milp.Program(self.graph, self._matrices, per, self.input_set(1), 0)
        worst, point = np.inf, None
        end = time.perf_counter() + time_limit
        for coeffs, const in zip(self.coeffs, self.const):
            value, status, _ = program.minimise(coeffs.astype(np.float64), max(0.05, end - time.perf_counter()))
            if status in ("infeasible", "infeasible_inaccurate"):
                # the splits' activation pattern occurs nowhere in the set: the subdomain is empty (an input on
                # its edge has a pre-activation at 0 and lies in the sibling subdomain too)
                return np.inf, None
            if status != "optimal":
                return -np.inf, None
            if value + const < worst:
                worst, point = value + const, program.input.value
        return worst, point


def guard(scale):
    """The bound a margin must exceed to count as positive (the certificates' rounding guard)."""
    return 1e-5 * max(1.0, float(scale))


def _empty(node_bounds, count):
    """`[B]` whether each of the first `count` subdomains has contradictory bounds (`l > u` somewhere: no input
    satisfies its splits)."""
    out = np.zeros(count, bool)
    for l, u in node_bounds:
        out |= (np.asarray(l)[:count] > np.asarray(u)[:count]).reshape(count, -1).any(axis=1)
    return out


def _children_program(graph):
    """The rows' bound of a batch of candidate children with given slopes and multipliers (no optimisation)."""
    last = len(graph.nodes) - 1
    return graph.program(("bab-children",), lambda coeffs, const, bounds, input_set, alphas, offsets: bd.backward(
        graph, last, coeffs, const, bounds, input_set, alphas, offsets), reduce_retracing=True)


def _ranked(node_bounds, grads, relus, examples, count):
    """Per subdomain of `examples` (indices), the `count` unstable units with the best `refine.scores`, best first:
    `[[(node, flat index)]]` (all subdomains' scores at once)."""
    if not len(examples):
        return []
    scores, owners = [], []
    for n in relus:
        l, u, g_lo, g_up = (np.asarray(t)[examples].reshape(len(examples), -1) for t in (*node_bounds[n], *grads[n]))
        scores.append(np.asarray(refine.scores(l, u, g_lo, g_up)))
        owners += [(n, k) for k in range(l.shape[1])]
    scores = np.concatenate(scores, axis=1)
    count = min(count, scores.shape[1])
    top = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    values = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -values), axis=1)  # best first; equal scores by unit order
    top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
    return [[owners[k] for k, v in zip(row, vals) if v >= 0] for row, vals in zip(top, values)]


def batch_size(problem, rows=None):
    """Subdomains per batch for `problem` (on `rows` of its rows; None: all): a power of two in `BATCHES`, as
    many as fit in an eighth of the memory budget at `COPIES` float32 copies of every node per row."""
    rows = len(problem.coeffs) if rows is None else rows
    per = 4 * COPIES * rows * sum(node.size for node in problem.graph.nodes)
    fits = max(1, memory_budget() // 8 // per)
    return int(min(BATCHES[1], max(BATCHES[0], 1 << (fits.bit_length() - 1))))


def verify(gm, x, eps, cls, time_limit=60.0, batch=None, max_domains=100_000, scale=1.0, box=None, rows=None,
           beta=beta_crown.Settings(), fixed=True, candidates=3, separate=True, refinement=None, refine_share=0.5):
    """Branch and bound on the L-inf ball of radius `eps` around `x` (one example) for class `cls`.

    Args:
        gm: a `GeometryModel` with a plain-ReLU feature extractor.
        x: `[*input shape]` the centre.
        eps: the radius (input units).
        cls: the class to certify.
        time_limit: seconds before the verdict is `"unknown"`.
        batch: subdomains bounded together (None: `batch_size`, from the memory budget).
        max_domains: subdomains bounded before the verdict is `"unknown"`.
        scale: the logit scale for the rounding guard.
        box: `(low, high)` of the input's shape: verify over this box instead of the ball (a VNN-LIB
            property's input set; `x` then only names the shape). Defaults to `None`.
        rows: `(A [R, L], c [R])`: certify `A f(x) - c > 0` row by row instead of the margins of `cls`
            (a VNN-LIB property's negated disjuncts). Defaults to `None`.
        beta: `beta_crown.Settings`: alpha-CROWN at the root (its node bounds tighten every subdomain's) and
            beta-CROWN in the subdomains; None: CROWN only (the search before beta-CROWN).
        fixed: with `beta`, subdomains keep the root's node bounds (their split units clamped; beta-CROWN's
            multipliers carry the splits) instead of recomputing every node's bounds by CROWN per subdomain
            (tighter per subdomain, ~50x dearer on the benchmark MLPs).
        candidates: with beta-CROWN on fixed bounds, the units per subdomain whose children are bounded before
            one is split (filtered smart branching, `_Problem.branch`); 1: the best score alone.
        separate: with `beta`, one search per row the root leaves unproved (easiest first, each sharing the
            root's node bounds), instead of one search over all rows: the rows are a conjunction, each
            subdomain then carries one row instead of all of them (the bounds' cost grows with the rows), and
            the branching serves that row alone, as the reference verifier does with robustness margins.
        refinement: with beta-CROWN on fixed bounds, when the root leaves a row unproved: `refine.Settings` to
            tighten the root's node bounds layer by layer before branching (`_Problem.refine`), False not to;
            None: on networks without convolutions (each sign pattern's pass is cheap there).
        refine_share: the share of `time_limit` after which no further layer is refined.

    Returns:
        A `Verdict` (`"certified"`: every row positive over the set; `"counterexample"`: an input of the set
        where a row is not positive).
    """
    start = time.perf_counter()
    problem = _Problem(gm, np.asarray(x, np.float32), float(eps), cls, scale, box, rows)
    if beta is None:
        return _search(problem, start, time_limit, batch or BATCHES[0], max_domains, candidates)
    batch = batch or batch_size(problem, 1 if separate else None)
    lower = problem.root(beta, fixed, batch)
    if refinement is None:  # MLPs: each pattern's pass is cheap there (through convolutions it is not)
        refinement = refine.Settings() if bd.use_xla(problem.graph, len(problem.graph.nodes) - 1) else False
    if refinement and fixed and (lower <= problem.guard).any():
        better = problem.refine(refinement, start + refine_share * time_limit)
        lower = lower if better is None else np.maximum(lower, better)
    unproved = [int(r) for r in np.argsort(-lower, kind="stable") if lower[r] <= problem.guard]
    if not unproved:
        return Verdict("certified", None, 0, time.perf_counter() - start, float("inf"))
    if not separate or len(lower) == 1:
        return _search(problem, start, time_limit, batch, max_domains, candidates)
    domains = 0
    for r in unproved:
        part = problem.restricted(r)
        verdict = _search(part, start, time_limit, batch, max_domains - domains, candidates)
        domains += verdict.domains
        if verdict.verdict != "certified":
            return verdict._replace(domains=domains)
    return Verdict("certified", None, domains, time.perf_counter() - start, float("inf"))


def _search(problem, start, time_limit, batch, max_domains, candidates):
    """The branch-and-bound loop on `problem` from its root subdomain (module docstring); a `Verdict`."""
    open_domains = [(-np.inf, problem.split(), None)]
    bounded = 0
    # inherited slopes and multipliers while they fit in a quarter of the memory budget (then children start over)
    state_bytes = 2 * 2 * len(problem.coeffs) * problem.units
    keep_states = max(1, memory_budget() // 4 // max(1, state_bytes))

    def result(verdict, point=None):
        lowest = min((item[0] for item in open_domains), default=np.inf)
        return Verdict(verdict, point, bounded, time.perf_counter() - start, float(lowest))

    while open_domains:
        if time.perf_counter() - start > time_limit or bounded >= max_domains:
            return result("unknown")
        open_domains.sort(key=lambda item: item[0])
        todo, open_domains = open_domains[:batch], open_domains[batch:]
        splits = [item[1] for item in todo]
        step = problem.step(splits, [item[2] for item in todo], candidates)
        bounded += len(splits)
        bad = problem.misclassified(step.corners)
        if bad.any():
            return result("counterexample", step.corners[int(np.argmax(bad))])
        worst = step.lower.min(axis=1)
        unresolved = False
        for i in np.flatnonzero(~step.empty & (worst <= problem.guard) & (step.choices < 0)):
            if time.perf_counter() - start > time_limit:  # a batch's LPs can take long
                return result("unknown")
            # linear on this subdomain: solve it exactly
            value, point = problem.exact(step.bounds(i), time_limit - (time.perf_counter() - start))
            if value > problem.guard:
                continue
            if point is not None and problem.misclassified(point.reshape(1, *problem.x.shape))[0]:
                return result("counterexample", point.reshape(problem.x.shape).astype(np.float32))
            unresolved = True  # a margin at 0 up to rounding, or a failed solve: cannot certify
        if unresolved:
            return result("unknown")
        split = np.flatnonzero(step.choices >= 0)  # the step chose a unit only where the subdomain is open
        children = np.repeat(np.stack([splits[i] for i in split]), 2, axis=0) if len(split) else []
        for j, i in enumerate(split):
            children[2 * j, step.choices[i]], children[2 * j + 1, step.choices[i]] = 1, -1
            state = step.states[i] if len(open_domains) < keep_states else None
            open_domains += [(float(worst[i]), children[2 * j], state), (float(worst[i]), children[2 * j + 1], state)]
    return result("certified")
