"""Input splitting: complete verification of a low-dimensional box by halving the box.

On networks with few inputs (ACAS Xu's 5), a VNN-LIB box is wide compared with what
the network resolves, so almost every ReLU is unstable over it and splitting ReLUs
(`tfgeom.verify.bab`) makes slow progress: one split fixes one unit. Halving the box
instead tightens every unit's bounds at once, and with few inputs the number of boxes
stays small. This is the reference verifier's branching on such benchmarks.

The loop takes a batch of open boxes (padded to one shape, so the compiled passes
are traced once) and for each:

- bounds every constraint row `a^T y - b` of the property's unsafe set: every node's
  bounds by CROWN's backward passes (`tfgeom.verify.crown.whole_bounds`, all in one
  program), then the rows by `SLOPE_STEPS` steps of alpha-CROWN on the rows' own
  slopes (`tfgeom.verify.alpha_crown.optimise_rows`); the box is safe when **each** disjunct has a row
  whose lower bound is above `guard` (some constraint of the conjunction fails
  everywhere in the box). Disjuncts with several constraints are handled as they
  are, without a single-row form;
- otherwise cuts the box to the unsafe side of the rows' linear bounds (`clip`: CROWN's
  bound is linear in the input, so unsafe points satisfy a linear inequality; the
  reference verifier's input clipping) and checks the cut box's centre, the corner
  where the binding row's linear bound is lowest and `SAMPLES` uniform points by a
  forward pass: unsafe outputs there are a counterexample and the search ends;
- otherwise halves the box (`sides`, `split`) where the binding disjunct's input
  coefficients times the width are largest, among sides not much narrower than the
  widest; while the open boxes do not fill a batch, several times at once.

Verdicts are `tfgeom.verify.bab.Verdict`s: `"certified"` (no open box left),
`"counterexample"` (a candidate point, checked by the caller again) or `"unknown"` when the
time limit or the box budget runs out. A property that holds with zero slack at a
point can keep halving until the limit; one that holds with any positive slack ends.
"""
import time

import numpy as np
import tensorflow as tf

from tfgeom.verify import alpha_crown, crown, vnnlib
from tfgeom.verify.bab import Verdict
from tfgeom.verify.sets import LinfBall

MAX_INPUTS = 8  # input splitting is used on boxes of at most this many dimensions (the halvings grow as 2^d)
BATCH = 512  # boxes bounded together (ACAS Xu's 300 units: ~10 MB of bounds per batch)
MAX_DEPTH = 10  # halvings of one box at once while the open boxes do not fill a batch
SAMPLES = 32  # uniform points per open box checked for a counterexample (ACAS Xu 5_3 property 2's unsafe set is
# a thin ridge: found within 4 s from 3 of 4 seeds, 16 points 2 of 4, 8 points 0 of 4; +10-20% time on proofs)
SLOPE_STEPS = 5  # alpha-CROWN steps on the rows' slopes per batch (ACAS Xu 4_2 property 2: 17,477 boxes in 20 s
# against more than 255,000 in 137 s with CROWN's slopes; 10 steps did not decide 5_5 property 1 either)
SPREAD = 64  # smart branching halves only sides at least 1/SPREAD of the widest (relative); 8 and no cap measured
# worse on ACAS Xu (docs/benchmarks.md)


def applies(input_size):
    """Whether input splitting is the search for an input of `input_size` elements."""
    return 0 < input_size <= MAX_INPUTS


def _rows(gm, prop):
    """Every constraint of every disjunct as a row over the last hidden layer: `(coeffs [S, H], const [S])`
    with `a^T y - b = coeffs . h + const`, and `group [S]`, each row's disjunct."""
    weights, bias = (np.asarray(v, np.float64) for v in gm.head)
    a, b, group = vnnlib.constraints(prop)
    return (a @ weights.T).astype(np.float32), (a @ bias - b).astype(np.float32), group


def _binding(lower, group, count):
    """`(slack [B], row [B])`: per box the smallest over disjuncts of the disjunct's best row lower bound
    (`> guard`: the box is safe), and that row (the one a split must raise)."""
    values, best = vnnlib.disjunct_slack(lower, group, count)
    worst = values.argmin(axis=1)
    return values[np.arange(len(lower)), worst], best[np.arange(len(lower)), worst]


def clip(low, high, coeffs, lower, group, guard):
    """Each box `low`..`high` (`[B, d]`) cut to the smallest box holding its unsafe points, and `[B]` whether
    any are left.

    CROWN's bound is linear in the input: row `r` is at least `lower_r + coeffs_r . (x - argmin)`, so a point
    where the row is `<= guard` satisfies `coeffs_r . x <= guard - lower_r + min_box coeffs_r . x`. Each
    disjunct's rows cut the box to such half-spaces, one side at a time (sound: only points outside them are
    dropped); the result is the hull of the disjuncts' boxes, rounded outwards to float32.
    """
    low64, high64, a = low.astype(np.float64), high.astype(np.float64), coeffs.astype(np.float64)
    offset = lower - np.minimum(a * low64[:, None], a * high64[:, None]).sum(-1)  # row >= offset + a . x
    pieces = []
    for j in np.unique(group):
        lo, hi = low64.copy(), high64.copy()
        for r in np.flatnonzero(group == j):
            ar = a[:, r]
            least = np.minimum(ar * lo, ar * hi)
            room = guard - offset[:, r] - least.sum(-1)  # a_i x_i <= room + least_i where the row can be <= guard
            with np.errstate(divide="ignore", invalid="ignore"):
                end = (room[:, None] + least) / ar
            hi = np.where(ar > 1e-12, np.minimum(hi, end), hi)
            lo = np.where(ar < -1e-12, np.maximum(lo, end), lo)
        pieces.append((lo, hi, np.all(lo <= hi, axis=1)))
    new_low = np.min([np.where(ok[:, None], lo, np.inf) for lo, _, ok in pieces], axis=0)
    new_high = np.max([np.where(ok[:, None], hi, -np.inf) for _, hi, ok in pieces], axis=0)
    keep = np.any([ok for _, _, ok in pieces], axis=0)
    new_low = np.maximum(np.nextafter(new_low.astype(np.float32), np.float32(-np.inf)), low)
    new_high = np.minimum(np.nextafter(new_high.astype(np.float32), np.float32(np.inf)), high)
    return np.where(keep[:, None], new_low, low), np.where(keep[:, None], new_high, high), keep


def sides(low, high, coeffs, depth, extent):
    """`[B, depth]` the sides of boxes `[B, d]` to halve, one after the other.

    Each time the side where the bound's coefficient `coeffs [B, d]` (summed in absolute value over the binding
    disjunct's rows) times the width (what halving it can gain) is largest, that score then halved: "smart
    branching" on the input (the reference verifier's `sb`). Only
    sides at least `1 / SPREAD` of the box's widest side relative to `extent [d]` (the property's box) take
    part: on ACAS Xu a steep input's coefficient otherwise gets it halved to 1e-5 of its range while another
    stays at a quarter, and the box never closes. The relative width breaks ties where coefficients are 0.
    """
    width = high - low
    relative = width / extent
    eligible = relative * SPREAD >= relative.max(axis=1, keepdims=True)
    score = np.where(eligible, np.abs(coeffs) * width, 0.0) + 1e-12 * relative
    picks = []
    for _ in range(depth):
        pick = score.argmax(axis=1)
        picks.append(pick)
        score[np.arange(len(score)), pick] /= 2
    return np.stack(picks, 1)


def split(low, high, picks):
    """The `2^k` boxes of each box `[B, d]` halved along its sides `picks [B, k]` in turn (box-major order)."""
    for k in range(picks.shape[1]):
        side = np.repeat(picks[:, k], 2 ** k)
        rows = np.arange(len(low))
        middle = (low[rows, side] + high[rows, side]) / 2
        upper_low, lower_high = low.copy(), high.copy()
        upper_low[rows, side], lower_high[rows, side] = middle, middle
        low = np.stack([low, upper_low], 1).reshape(-1, low.shape[1])
        high = np.stack([lower_high, high], 1).reshape(-1, high.shape[1])
    return low, high


def search(gm, prop, low, high, time_limit, guard=0.0, max_boxes=10**8, batch=BATCH, seed=0):
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
        seed: of the uniform candidate points.

    Returns:
        A `tfgeom.verify.bab.Verdict` (`domains`: boxes bounded; `lower`: the lowest slack, the smallest over
        disjuncts of the best row's lower bound, among the boxes the last batch left open; `+inf` when certified).
    """
    start = time.perf_counter()
    graph = gm.layer_graph
    last = len(graph.nodes) - 1
    shape = low.shape
    coeffs, const, group = _rows(gm, prop)
    coeffs_b, const_b = tf.constant(np.repeat(coeffs[None], batch, 0)), tf.constant(np.repeat(const[None], batch, 0))
    if crown.fits(graph, batch):
        # every node's bounds and the rows' in one graph program: 1.3x the boxes per second of `crown_bounds`' per-node
        # programs on ACAS Xu (512 boxes); XLA made it slower there (the passes are memory-bound elementwise work)
        rows_bound = graph.program(("input_split", last, SLOPE_STEPS), lambda a, c, box: alpha_crown.optimise_rows(
            graph, a, c, crown.whole_bounds(graph, box)[:last], box, SLOPE_STEPS))
    else:  # wide layers: CROWN's chunked passes, CROWN's slopes
        backward = crown.compiled_backward(graph, last, "linf", coefficients=True)

        def rows_bound(a, c, box):
            lower, coef = backward(a, c, tuple(crown.crown_bounds(graph, box)[:last]), box)
            return lower, coef, coef

    def bound(lo, hi):
        """`(lower [B, S], input coefficients [B, S, d], CROWN's input coefficients)` of the rows over the boxes
        `[B, d]` (padded to `batch`)."""
        take = len(lo)
        box_low, box_high = (tf.constant(np.concatenate([v, np.repeat(v[-1:], batch - take, 0)]).reshape(-1, *shape))
                             for v in (lo, hi))
        box = LinfBall((box_low + box_high) / 2, tf.reduce_max(tf.reshape(box_high - box_low, [batch, -1]), 1) / 2,
                       box_low, box_high)
        lower, coef, first = rows_bound(coeffs_b, const_b, box)
        return (np.asarray(lower)[:take], *(np.asarray(v)[:take].reshape(take, len(const), -1) for v in (coef, first)))

    extent = np.maximum((high - low).reshape(-1), 1e-12)
    open_low, open_high = low.reshape(1, -1).astype(np.float32), high.reshape(1, -1).astype(np.float32)
    bounded, worst = 0, -np.inf
    rng = np.random.default_rng(seed)
    while len(open_low):
        if time.perf_counter() - start > time_limit or bounded >= max_boxes:
            return Verdict("unknown", None, bounded, time.perf_counter() - start, worst)
        take = min(batch, len(open_low))
        lo, hi = open_low[:take], open_high[:take]
        open_low, open_high = open_low[take:], open_high[take:]
        lower, coef, first = bound(lo, hi)
        bounded += take
        slack, row = _binding(lower, group, len(prop.disjuncts))
        left = slack <= guard
        if not left.any():
            continue
        worst = float(slack[left].min())
        lo, hi, keep = clip(lo[left], hi[left], coef[left], lower[left], group, guard)
        # the open boxes' coefficients [B, S, d] (of the bound, and CROWN's for branching) and binding rows
        coef, first, row = coef[left][keep], first[left][keep], row[left][keep]
        lo, hi, binding = lo[keep], hi[keep], coef[np.arange(len(row)), row]
        if not len(lo):
            continue
        # candidates: each box's centre, the corner where the binding row's linear bound is lowest, and uniform
        # points: the search thereby samples most where the bounds cannot yet prove the property
        points = np.concatenate([(lo + hi) / 2, np.where(binding > 0, lo, hi),
                                 rng.uniform(lo, hi, (SAMPLES, *lo.shape)).reshape(-1, lo.shape[1])])
        points = points.astype(np.float32)
        # one call for all of them (in the runtime's batches of 256, a fifth of the search's time on ACAS Xu)
        unsafe = vnnlib.violated(prop, gm.runtime.logits(points.reshape(-1, *shape), batch_size=len(points)))
        if unsafe.any():
            return Verdict("counterexample", points[int(np.argmax(unsafe))].reshape(shape), bounded,
                           time.perf_counter() - start, worst)
        # while the open boxes do not fill a batch, split each several times (the padding would be bounded anyway)
        depth = int(np.clip(np.log2(batch / (len(open_low) + len(lo))), 1, MAX_DEPTH))
        # every row of the binding disjunct counts (any of them can close the box; with the best row's alone,
        # ACAS Xu's property 3, four rows, did not close on 1_1 in 30 s, with all of them in 2,563 boxes)
        rows = group[None, :] == group[row][:, None]
        # CROWN's coefficients, not the optimised slopes' (with those, ACAS Xu 4_8 property 1 took 26,827 boxes, not
        # 3,897)
        weight = (np.abs(first) * rows[:, :, None]).sum(axis=1)
        halves = split(lo, hi, sides(lo, hi, weight, depth, extent))
        # the new boxes go first: depth first keeps the open list short
        open_low, open_high = np.concatenate([halves[0], open_low]), np.concatenate([halves[1], open_high])
    return Verdict("certified", None, bounded, time.perf_counter() - start, float("inf"))
