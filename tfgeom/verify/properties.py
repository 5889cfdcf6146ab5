"""Deciding a VNN-LIB property on a network: attack, bound, branch and bound, within a time limit.

`decide(gm, prop, timeout)` answers whether some input of the property's box
reaches its unsafe outputs (`tfgeom.verify.vnnlib`):

1. **Attack** (falsifiable instances answered in seconds): projected signed
   gradient descent on the constraint rows `r(y) = a^T y - b` of the unsafe
   disjuncts (each step the largest row of a disjunct: all of them must reach
   `<= 0`), from the box's centre and random points (`restarts`, batched; half
   of them first moved to output-diversified points; half targeted at one
   disjunct each, half at the disjunct closest to unsafe), `steps` steps from a
   tenth to all of the box's width, decaying. A point whose outputs meet a
   disjunct by a forward pass is a counterexample: `sat`.
2. **Bound propagation** over the whole box: CROWN (forward pre-activation
   bounds) on every row; all positive (above the rounding guard): `unsat`.
3. **Branch and bound** (`tfgeom.verify.bab`: alpha-CROWN at the root, on
   MLPs its intermediate bounds refined over sign patterns
   (`tfgeom.verify.refine`), beta-CROWN in the subdomains, ReLU splits,
   exact LPs at the leaves) for
   what is left of the time: `unsat`, `sat` (its counterexample checked again
   by a forward pass) or `timeout`.

On inputs of at most `tfgeom.verify.input_split.MAX_INPUTS` elements (ACAS Xu's
5), step 3 splits the box instead of ReLUs (`tfgeom.verify.input_split`), which
also decides properties whose disjuncts hold several constraints each. On larger
inputs such properties (no single-row form) get the attack only, then `unknown`.

A property whose input set is a disjunction of boxes (`vnnlib.Property.boxes`)
is attacked on each box, then proved box by box within the one time limit.
"""
import time
from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tfgeom.verify import bab, input_split, vnnlib
from tfgeom.verify.sets import LinfBall

ROUNDING = 1e-5  # a bound counts as positive above this times the logit scale (as tfgeom.verify.certification)


class Decision(NamedTuple):
    """The answer to one property (NumPy).

    Fields:
        verdict: `"unsat"` (the property holds), `"sat"` (a counterexample), `"unknown"` or `"timeout"`.
        counterexample: `[*input shape]` for `"sat"` (in the ONNX model's layout), else None.
        outputs: `[L]` the network's outputs at the counterexample, else None.
        phase: which phase decided: `"attack"`, `"bounds"`, `"bab"`, `"input_split"`, or `""`.
        seconds: wall time.
    """

    verdict: str
    counterexample: Optional[np.ndarray]
    outputs: Optional[np.ndarray]
    phase: str
    seconds: float


def _box(gm, prop):
    shape = gm.input_shape
    return prop.lower.reshape(shape).astype(np.float32), prop.upper.reshape(shape).astype(np.float32)


def diversified(gm, x, low, high, seed=0, steps=10):
    """Output-diversified starting points (Tashiro et al., NeurIPS 2020): from each row of `x [B, ...]`, `steps`
    signed-gradient steps of a quarter of the box's width ascending `w^T f(x)` for a random `w ~ U(-1, 1)^L`
    per row. Margin descent from the box's inside can stall where the network's path to another class runs
    through units inactive everywhere near it (a 256x6 MNIST net of VNN-COMP 2022 has one active unit in a
    layer: its counterexample lies behind another one's switching on); random output directions reach such
    regions."""
    w = np.random.default_rng(seed).uniform(-1, 1, (len(x), gm.num_classes)).astype(np.float32)
    step = 0.25 * (high - low)
    for _ in range(steps):
        _, grad = gm.runtime.gradient(x, -w)  # the gradient of -w^T f: descending it ascends w^T f
        x = np.clip(x - step * np.sign(grad), low, high).astype(np.float32)
    return x


def attack(gm, prop, restarts=128, steps=100, seed=0):
    """`(x, outputs)` of a counterexample found by projected gradient descent on the property's rows, or None.

    Restarts (the box's centre, then uniform random points, every other block of four of them moved first
    to output-diversified points by `diversified`) are batched. Restart `r` descends disjunct `r mod J`
    for its whole run (targeted: a disjunct that starts far from unsafe can still get there) when `r` is odd,
    and the disjunct currently closest to unsafe when it is even; a disjunct's largest row is the one descended
    (a disjunct of several constraints is met when all of them are `<= 0`: ACAS Xu's property 2 asks that
    four outputs be at most a fifth). Signed-gradient steps start at a tenth, a quarter, half or
    all of the box's width (restarts in turn: on the benchmark MLPs some counterexamples sit in corners that
    small steps from the inside never reach, others need small steps) and decay geometrically to a hundredth
    of that by the last step."""
    low, high = _box(gm, prop)
    a, b, group = vnnlib.constraints(prop)
    count, rows = len(prop.disjuncts), a.astype(np.float32)
    g = np.random.default_rng(seed)
    x = np.concatenate([((low + high) / 2)[None], g.uniform(low, high, (restarts - 1, *low.shape))]).astype(
        np.float32)
    diverse = (np.arange(restarts) // 4) % 2 == 1
    if diverse.any():
        x[diverse] = diversified(gm, x[diverse], low, high, seed)
    target = np.arange(restarts) % count
    targeted = np.arange(restarts) % 2 == 1
    first = np.array([0.1, 0.25, 0.5, 1.0], np.float32)[np.arange(restarts) % 4]
    step, decay = first.reshape(-1, *[1] * low.ndim) * (high - low), 0.01 ** (1 / max(1, steps - 1))
    logits = gm.runtime.logits(x)
    for _ in range(steps):
        # the disjunct to descend by the previous step's logits: the gradient program returns the logits at x
        slack, largest = vnnlib.disjunct_slack(logits @ a.T - b, group, count)
        worst = largest[np.arange(restarts), np.where(targeted, target, slack.argmin(axis=1))]
        logits, grad = gm.runtime.gradient(x, rows[worst])
        found = vnnlib.violated(prop, logits)
        if found.any():
            i = int(np.argmax(found))
            return x[i], logits[i]
        x = np.clip(x - step * np.sign(grad), low, high).astype(np.float32)
        step = step * decay
    logits = gm.runtime.logits(x)
    found = vnnlib.violated(prop, logits)
    return (x[int(np.argmax(found))], logits[int(np.argmax(found))]) if found.any() else None


def bound_rows(gm, prop):
    """`[R]` CROWN lower bounds of the rows `A f(x) - c` over the box (forward pre-activation bounds)."""
    from tfgeom.verify.certification import margin_lower_bounds

    low, high = _box(gm, prop)
    weights, bias = (np.asarray(v, np.float32) for v in gm.head)
    a, c = (np.asarray(v, np.float32) for v in prop.rows)
    coeffs = tf.constant((a @ weights.T)[None])
    const = tf.constant((a @ bias - c)[None])
    box = LinfBall(tf.constant(((low + high) / 2)[None]), tf.constant([float((high - low).max() / 2)]),
                   tf.constant(low[None]), tf.constant(high[None]))
    lower, _ = margin_lower_bounds(gm.layer_graph, box, coeffs, const, "crown", intermediate="forward")
    return lower.numpy()[0].astype(np.float64)


def decide(gm, prop, timeout=60.0, restarts=128, steps=100, seed=0):
    """Decide `prop` on `gm` within `timeout` seconds (module docstring); returns a `Decision`.

    A property over a disjunction of input boxes (`prop.boxes`) is attacked on every box first, then proved box
    by box: `sat` if any box has a counterexample, `unsat` if every box is proved, else the first other answer.
    """
    start = time.perf_counter()
    pieces = vnnlib.pieces(prop)
    for piece in pieces:
        found = attack(gm, piece, restarts, steps, seed)
        if found is not None:
            return Decision("sat", *found, "attack", time.perf_counter() - start)
    answers = []
    for piece in pieces:
        answer = _prove(gm, piece, start, timeout)
        if answer.verdict == "sat":
            return answer
        answers.append(answer)
    return next((a for a in answers if a.verdict != "unsat"), answers[-1])


def _prove(gm, prop, start, timeout):
    """Steps 2 and 3 of `decide` on a single-box `prop`, with `timeout` seconds counted from `start`."""

    def done(verdict, x=None, y=None, phase=""):
        return Decision(verdict, x, y, phase, time.perf_counter() - start)

    def searched(verdict, phase):
        """A search's `Verdict` as a `Decision`: a counterexample only once a forward pass confirms it."""
        if verdict.verdict == "certified":
            return done("unsat", phase=phase)
        if verdict.counterexample is not None:
            x = np.clip(np.asarray(verdict.counterexample, np.float32), low, high)
            logits = gm.runtime.logits(x[None])
            if vnnlib.violated(prop, logits)[0]:  # checked by a forward pass before it is reported
                return done("sat", x, logits[0], phase=phase)
        return done("timeout" if time.perf_counter() - start >= timeout else "unknown")

    few_inputs = input_split.applies(int(np.prod(gm.input_shape)))
    if prop.rows is None and not few_inputs:
        return done("unknown")
    low, high = _box(gm, prop)
    scale = float(np.abs(gm.runtime.logits(((low + high) / 2)[None])).max())
    guard = ROUNDING * max(1.0, scale)
    if prop.rows is not None and bound_rows(gm, prop).min() > guard:
        return done("unsat", phase="bounds")
    left = timeout - (time.perf_counter() - start)
    if left <= 0:
        return done("timeout")
    if few_inputs:
        return searched(input_split.search(gm, prop, low, high, left, guard=guard), "input_split")
    # the property's time limit is the budget: no cap on subdomains (bab's default 100,000 stopped a 300 s
    # instance at 214 s); open subdomains cost ~1 KB each, their inherited slopes are capped by memory
    verdict = bab.verify(gm, (low + high) / 2, float((high - low).max() / 2), 0, time_limit=left, scale=scale,
                         box=(low, high), rows=prop.rows, max_domains=10**8)
    return searched(verdict, "bab")
