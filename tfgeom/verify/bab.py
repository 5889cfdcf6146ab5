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
  the top `candidates` by the bound of its worse child, each child bounded
  once with the parent's slopes and multipliers (filtered smart branching,
  De Palma et al. 2021).

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
from tfgeom.verify import alpha_crown, beta_crown, milp
from tfgeom.verify import crown as bd
from tfgeom.verify.operators import ReLU
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


def _relu_inputs(graph):
    """`{pre-activation node: ReLU node}` of the graph's (plain) ReLUs."""
    return {node.inputs[0]: n for n, node in enumerate(graph.nodes)
            if isinstance(node, ReLU) and not node.slope}


def _program(graph, kind):
    """The margins' backward pass with gradients of the bound w.r.t. the node bounds and the box, compiled."""
    last = len(graph.nodes) - 1

    def run(coeffs, const, bounds, input_set, threshold):
        with tf.GradientTape() as tape:
            tape.watch([bounds, input_set.low, input_set.high])
            lower = bd.backward(graph, last, coeffs, const, bounds, input_set)
            # scores count only the margins not yet proved (a constant weight: no gradient through it)
            weights = tf.stop_gradient(tf.cast(lower < threshold, tf.float32))
            objective = tf.reduce_sum(lower * weights)
        grads, box = tape.gradient(objective, [bounds, [input_set.low, input_set.high]])
        return lower, grads, box

    return graph.program(("bab", kind), run, reduce_retracing=True)  # batches of 1, 2, 4, ... subdomains


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
        self.relus = _relu_inputs(self.graph)
        # a subdomain's splits: one flat int8 array over every ReLU's units (+1 active, -1 inactive, 0 free);
        # `start[n]` is where pre-activation node n's units begin
        self.start, units = {}, 0
        for n in self.relus:
            self.start[n], units = units, units + self.graph.nodes[n].size
        self.units = units
        self._matrices = None
        self.reference = None  # the root's alpha-CROWN bounds of every node (valid in every subdomain)
        self.beta = None  # beta_crown.Settings, or None: CROWN bounds only
        self.fixed = False  # subdomains keep the root's node bounds (only the splits clamp them)
        self.pad_to = None  # bound batches padded to at least this many subdomains (then powers of two)
        self._stacked, self._last = None, None  # the last batch's splits and final (slopes, multipliers)

    def root(self, beta=beta_crown.Settings(), fixed=True, batch=None):
        """alpha-CROWN at the root: `[R]` the rows' lower bounds; its node bounds tighten every subdomain's, and
        with `beta` the subdomains' bounds are beta-CROWN's. `fixed`: the subdomains keep the root's node
        bounds (only their split units clamped) instead of recomputing them by CROWN."""
        lower, bounds = alpha_crown.optimise(self.graph, self.input_set(1), tf.constant(self.coeffs[None]),
                                             tf.constant(self.const[None]))
        self.reference = [(np.asarray(l), np.asarray(u)) for l, u in bounds]
        self.beta, self.fixed = beta, fixed
        if beta is not None and bd.use_xla(self.graph, len(self.graph.nodes) - 1):
            self.pad_to = min(batch or MIN_PAD, MIN_PAD)
        return np.asarray(lower)[0]

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
        x = np.repeat(self.x[None], count, 0)
        if self.box is not None:  # any box (a VNN-LIB property's), not only a ball within the bounds
            low, high = (tf.constant(np.repeat(v[None], count, 0)) for v in self.box)
            return LinfBall(tf.constant(x), tf.fill([count], float(self.eps)), low, high)
        return ball(x, np.full(count, self.eps, np.float32), "linf", self.gm.bounds)

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
            if n not in stacked:
                return l, u
            side = stacked[n]
            return tf.where(side > 0, tf.maximum(l, 0.0), l), tf.where(side < 0, tf.minimum(u, 0.0), u)

        input_set = self.input_set(pad)
        if self.fixed:  # beta-CROWN's usual setting: the multipliers carry the splits to the final bound
            found = [constrain(n, *(tf.broadcast_to(b, [pad, *b.shape[1:]]) for b in bounds))
                     for n, bounds in enumerate(self.reference)]
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
        multipliers (`states`: per subdomain `(alphas, betas)` of float16 arrays, or None: CROWN's slopes, 0)."""
        if bool(tf.reduce_all(lower[:count] > self.guard)):
            return lower, [None] * count
        pad, rows = int(lower.shape[0]), self.coeffs.shape[0]
        states = states + [states[-1]] * (pad - len(states))
        alphas, betas = {}, {}
        for pre, n in self.relus.items():
            l, u = bounds[pre]
            adaptive = tf.repeat(self.graph.nodes[n].adaptive_slope(l, u)[:, None], rows, axis=1)
            have = [s is not None for s in states]
            if any(have):
                kept = np.stack([s[0][n] if s is not None else np.zeros(adaptive.shape[1:], np.float16)
                                 for s in states]).astype(np.float32)
                mask = tf.reshape(tf.constant(have), [pad] + [1] * (adaptive.shape.rank - 1))
                alphas[n] = tf.where(mask, tf.clip_by_value(kept, self.graph.nodes[n].slope, 1.0), adaptive)
                betas[pre] = tf.constant(np.stack([s[1][pre] if s is not None else
                                                   np.zeros(adaptive.shape[1:], np.float16)
                                                   for s in states]).astype(np.float32))
            else:
                alphas[n], betas[pre] = adaptive, tf.zeros_like(adaptive)
        better, alphas, betas = beta_crown.optimise(self.graph, input_set, coeffs, const, bounds, stacked, alphas,
                                                    betas, self.beta, self.guard)
        lower = tf.maximum(lower, better)
        self._last = (alphas, betas)  # the batch's final slopes and multipliers (the branching rule reuses them)
        a16 = {n: np.asarray(a).astype(np.float16) for n, a in alphas.items()}
        b16 = {n: np.asarray(b).astype(np.float16) for n, b in betas.items()}
        return lower, [({n: a[i] for n, a in a16.items()}, {n: b[i] for n, b in b16.items()}) for i in range(count)]

    def branch(self, lower, node_bounds, grads, count, candidates=3, empty=None):
        """Filtered smart branching: per open subdomain, the `candidates` units with the best BaBSR-like score,
        each tried by bounding both children once (the parent's node bounds with the unit clamped, the parent's
        final slopes and multipliers, one backward pass); the unit whose worse child has the higher bound wins.
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
        worst = np.asarray(found).min(axis=1).reshape(-1, 2).min(axis=1)  # per (subdomain, unit): the worse child
        best = {}
        for (i, n, k, _), value in zip(tried[::2], worst):
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
    """Per subdomain of `examples` (indices), the `count` unstable units with the best scores, best first:
    `[[(node, flat index)]]`.

    A unit's score is the gradient of the unproved rows' bound with respect to its pre-activation bounds times
    their width (a first-order estimate of what fixing the unit gains, in the spirit of BaBSR's intercept
    scores), ties broken by `min(u, -l)`; all subdomains' scores at once."""
    if not len(examples):
        return []
    scores, owners = [], []
    for n in relus:
        l = np.asarray(node_bounds[n][0])[examples].reshape(len(examples), -1)
        u = np.asarray(node_bounds[n][1])[examples].reshape(len(examples), -1)
        g_lo = np.asarray(grads[n][0])[examples].reshape(len(examples), -1)
        g_up = np.asarray(grads[n][1])[examples].reshape(len(examples), -1)
        gain = np.abs(g_lo) * (-l) + np.abs(g_up) * u
        scores.append(np.where((l < 0) & (u > 0), gain + 1e-6 * np.minimum(u, -l), -1.0))
        owners += [(n, k) for k in range(l.shape[1])]
    scores = np.concatenate(scores, axis=1)
    count = min(count, scores.shape[1])
    top = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    values = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -values), axis=1)  # best first; equal scores by unit order
    top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
    return [[owners[k] for k, v in zip(row, vals) if v >= 0] for row, vals in zip(top, values)]


def batch_size(problem):
    """Subdomains per batch for `problem`: a power of two in `BATCHES`, as many as fit in an eighth of the memory
    budget at `COPIES` float32 copies of every node per row."""
    per = 4 * COPIES * len(problem.coeffs) * sum(node.size for node in problem.graph.nodes)
    fits = max(1, memory_budget() // 8 // per)
    return int(min(BATCHES[1], max(BATCHES[0], 1 << (fits.bit_length() - 1))))


def verify(gm, x, eps, cls, time_limit=60.0, batch=None, max_domains=100_000, scale=1.0, box=None, rows=None,
           beta=beta_crown.Settings(), fixed=True, candidates=3, separate=True):
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

    Returns:
        A `Verdict` (`"certified"`: every row positive over the set; `"counterexample"`: an input of the set
        where a row is not positive).
    """
    start = time.perf_counter()
    problem = _Problem(gm, np.asarray(x, np.float32), float(eps), cls, scale, box, rows)
    if beta is None:
        return _search(problem, start, time_limit, batch or BATCHES[0], max_domains, candidates)
    single = problem.restricted(0) if separate else problem
    batch = batch or batch_size(single)
    lower = problem.root(beta, fixed, batch)
    unproved = [int(r) for r in np.argsort(-lower, kind="stable") if lower[r] <= problem.guard]
    if not unproved:
        return Verdict("certified", None, 0, time.perf_counter() - start, float("inf"))
    if not separate or len(unproved) == 1 and len(lower) == 1:
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
        lower, node_bounds, grads, (direction, low, high), states = problem.bound(splits, [item[2] for item in todo])
        bounded += len(splits)
        grads = {n: grads[n] for n in problem.relus}
        empty = _empty(node_bounds, len(splits))
        choices = problem.branch(lower, node_bounds, grads, len(splits), candidates, empty)
        corners = np.where(direction > 0, low, high)  # minimisers of the weighted margins' linear bound
        bad = problem.misclassified(corners)
        if bad.any():
            return result("counterexample", corners[int(np.argmax(bad))])
        unresolved = False
        for i, split in enumerate(splits):
            if time.perf_counter() - start > time_limit:  # within a batch too: a batch's LPs can take long
                return result("unknown")
            if empty[i] or lower[i].min() > problem.guard:
                continue
            choice = choices[i]
            if choice is None:  # linear on this subdomain: solve it exactly
                value, point = problem.exact([(l[i], u[i]) for l, u in node_bounds],
                                             time_limit - (time.perf_counter() - start))
                if value > problem.guard:
                    continue
                if point is not None and problem.misclassified(point.reshape(1, *problem.x.shape))[0]:
                    return result("counterexample", point.reshape(problem.x.shape).astype(np.float32))
                unresolved = True  # a margin at 0 up to rounding, or a failed solve: cannot certify
                continue
            n, k = choice
            state = states[i] if len(open_domains) < keep_states else None
            for side in (1, -1):
                child = split.copy()
                child[problem.start[n] + k] = side
                open_domains.append((float(lower[i].min()), child, state))
        if unresolved:
            return result("unknown")
    return result("certified")
