"""Certify that every input of a set gets one class: balls, segments, certified radii.

A set `S` of inputs is certified for class `c` when a lower bound of every
margin `f_c(x) - f_j(x) = (w_c - w_j)^T phi(x) + b_c - b_j` over `S` is
positive. The margins are bounded directly (not each logit): for `"ibp"` over
the interval bounds of the features `phi(S)` in closed form; for `"crown"` by
a backward pass that starts from the margin rows `C W^T`; for `"milp"` exactly
(small ReLU networks). See `tfgeom.verify.crown` and `tfgeom.verify.milp`.

Bounds are computed in float32; a set counts as certified only when the
bound exceeds `1e-5` times the logit scale, so rounding cannot make a
certificate wrong.
"""
from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tfgeom.verify import alpha_crown, crown, forward, ibp
from tfgeom.verify.sets import ball, segment
from tfgeom.verify import bab, milp
from tfgeom import execution
from tfgeom.errors import InputError
from tfgeom.runtime.validation import check_choice, check_labels, check_positive_int

METHODS = ("ibp", "crown", "alpha-crown", "bab", "milp")
INTERMEDIATE = ("backward", "forward")
NORMS = ("linf", "l2")
ROUNDING = 1e-5


class Certificate(NamedTuple):
    """Result of certifying a batch of input sets (NumPy).

    Fields:
        certified: `[N]` every margin's lower bound is positive.
        margins: `[N, L]` lower bounds of `f_c - f_j` over the set (`+inf` at `j = c`;
            exact minima for `"milp"`, `-inf` where a solve failed).
        cls: `[N]` the class certified.
        eps: `[N]` the radius (`0` for segments).
        method: `"ibp"`, `"crown"`, `"alpha-crown"` or `"milp"`.
        norm: `"linf"`, `"l2"` or `"segment"`.
        status: `[N]` solver status for `"milp"` (`"optimal"` or why not), the verdict
            for `"bab"` (`"certified"`, `"counterexample"`, `"unknown"`), else None.
        counterexamples: for `"bab"`, `[N, ...]` an input of the set that the
            network does not give class `c` (NaN where none was found), else None.
    """

    certified: np.ndarray
    margins: np.ndarray
    cls: np.ndarray
    eps: np.ndarray
    method: str
    norm: str
    status: Optional[list] = None
    counterexamples: Optional[np.ndarray] = None

    @property
    def min_margin(self):
        """`[N]` the smallest margin bound (the certificate's slack; negative = not certified)."""
        return self.margins.min(axis=1)


def _rows(w, b, cls):
    wc = tf.gather(tf.transpose(w), cls)  # [N, D]
    return wc[:, None, :] - tf.transpose(w)[None], tf.gather(b, cls)[:, None] - b[None]


def _margin_rows(graph, weights, bias, cls):
    """`(coeffs [N, L, D], const [N, L])` of the margins `f_c - f_j` (row `c` is zero); one compiled call, not
    eight eager ops, per certified batch."""
    rows = graph.program("margin-rows", _rows, reduce_retracing=True)
    return rows(tf.constant(weights, tf.float32), tf.constant(bias, tf.float32),
                tf.cast(tf.convert_to_tensor(cls), tf.int32))


def _check_cls(gm, x, cls):
    if cls is None:
        return gm.runtime.predict(x)
    return check_labels(cls, gm.num_classes, len(x), name="cls")


def _bound(gm, input_set, cls, method, max_units=milp.MAX_UNITS, intermediate="backward"):
    """Margin lower bounds `[N, L]` (+inf at c) and statuses for one batch of input sets."""
    weights, bias = gm.head
    graph = gm.layer_graph
    status = None
    if method == "milp":
        margins, status, _ = milp.exact_margins(graph, weights, bias, input_set, cls, max_units)
    else:
        coeffs, const = _margin_rows(graph, weights, bias, cls)
        lower, _ = margin_lower_bounds(graph, input_set, coeffs, const, method, intermediate=intermediate)
        margins = lower.numpy().astype(np.float64)
        # intervals that overflow float32 on deep nets (inf - inf) give NaN: no bound at all
        margins[np.isnan(margins)] = -np.inf
    margins[np.arange(len(cls)), cls] = np.inf
    return margins, status


class MarginBounds(NamedTuple):
    """Lower bounds of linear functions of the features over input sets.

    Fields:
        lower: `[N, S]` lower bounds.
        bounds: `[(l, u)]` of every node (pre-activation bounds used on the way).
    """

    lower: tf.Tensor
    bounds: list


def _box_lower(coeffs, const, l, u):
    """Lower bounds of `coeffs @ z + const` over the box `[l, u]`: `[N, S]`."""
    return const + tf.einsum("nsd,nd->ns", tf.maximum(coeffs, 0.0), l) + tf.einsum(
        "nsd,nd->ns", tf.minimum(coeffs, 0.0), u)


def margin_lower_bounds(graph, input_set, coeffs, const, method, memory=crown.MEMORY, combine=True,
                        intermediate="backward"):
    """Lower bounds of `coeffs @ z + const` over the set, `z` the features.

    Args:
        coeffs: `[N, S, D]` rows of the margins (e.g. `w_c - w_j`).
        const: `[N, S]`.
        method: `"ibp"` (minimise over the feature box in closed form),
            `"crown"` (backward pass from the margins, never looser than IBP)
            or `"alpha-crown"` (CROWN with optimised slopes in the margins'
            backward pass, `tfgeom.verify.alpha_crown`; never looser than CROWN).
        combine: for `"crown"`, return `max(CROWN, IBP)`; `False` gives the
            backward pass's own bound (for measuring it).
        intermediate: for `"crown"`, how pre-activation bounds are found:
            `"backward"` (a backward pass per neuron, CROWN proper) or
            `"forward"` (forward linear bounds, much cheaper on convolutional
            networks, looser). The margins always get a backward pass.

    Returns:
        A `MarginBounds`.
    """
    if method == "ibp":
        bounds = ibp.compiled_interval_bounds(graph, input_set)
    elif method == "alpha-crown":
        backward, bounds = alpha_crown.optimise(graph, input_set, coeffs, const, memory=memory)
    elif intermediate == "forward":
        bounds = forward.forward_bounds(graph, input_set, memory)
    else:
        bounds = crown.crown_bounds(graph, input_set, memory)
    box = graph.program("box-lower", _box_lower, reduce_retracing=True)(coeffs, const, *bounds[-1])
    if method == "ibp":
        return MarginBounds(box, bounds)
    last = len(graph.nodes) - 1
    if method != "alpha-crown":
        backward = crown.compiled_backward(graph, last, input_set.kind)(coeffs, const, tuple(bounds[:last]), input_set)
    return MarginBounds(tf.maximum(backward, box) if combine else backward, bounds)


def _bucket(n):
    """Batch size a batch of `n` is padded to: powers of two up to 8, then multiples of 8 (compiled bound
    programs see few batch shapes in a radius search; padding wastes at most 7 examples)."""
    return 1 << max(0, (n - 1).bit_length()) if n <= 8 else -(-n // 8) * 8


def _certified(margins, scale):
    return margins.min(axis=1) > ROUNDING * np.maximum(1.0, scale)


def _eps_array(eps, n):
    eps = np.broadcast_to(np.asarray(eps, np.float32), (n,)).copy()
    if not np.all(np.isfinite(eps)) or np.any(eps < 0):
        raise InputError(f"eps must be finite and >= 0; got {eps[~(np.isfinite(eps) & (eps >= 0))][0]}")
    return eps


def _branch_and_bound(gm, x, eps, cls, crown, scale, time_limit):
    """`Certificate` of method `"bab"`: CROWN's certificates stand, the rest go to `tfgeom.verify.bab.verify`."""
    certified = crown.certified.copy()
    status = ["certified" if c else "unknown" for c in certified]
    found = np.full(x.shape, np.nan, np.float32)
    for i in np.flatnonzero(~certified):
        verdict = bab.verify(gm, x[i], eps[i], cls[i], time_limit=time_limit, scale=scale[i])
        status[i] = verdict.verdict
        certified[i] = verdict.verdict == "certified"
        if verdict.counterexample is not None:
            found[i] = verdict.counterexample
    return Certificate(certified, crown.margins, cls, eps, "bab", "linf", status, found)


def certify(gm, x, eps, norm="linf", method="crown", cls=None, batch_size=None, max_units=milp.MAX_UNITS,
            intermediate="backward", time_limit=60.0, executor=None):
    """Certify the `norm`-balls of radius `eps` around `x` (intersected with the bounds).

    Args:
        gm: a `GeometryModel` (Sequential or functional, affine head).
        x: `[N, ...]` centres.
        eps: radius, a scalar or `[N]`.
        norm: `"linf"` or `"l2"`. Defaults to `"linf"`.
        method: `"ibp"`, `"crown"`, `"alpha-crown"` (CROWN with optimised ReLU
            slopes, `tfgeom.verify.alpha_crown`), `"bab"` (branch and bound on the
            inputs CROWN does not certify, `tfgeom.verify.bab`: complete, with a time
            limit per input) or `"milp"`. Defaults to `"crown"`.
        cls: `[N]` classes to certify. Defaults to the predicted classes.
        batch_size: examples per bound computation. Defaults to the model's
            (CROWN's memory is also bounded per chunk of neurons).
        max_units: the MILP's size limit (see `tfgeom.verify.milp`).
        intermediate: CROWN's pre-activation bounds: `"backward"` (CROWN
            proper, one backward pass per neuron) or `"forward"` (forward
            linear bounds: several times cheaper on CNNs, looser). Defaults to
            `"backward"`.
        time_limit: for `"bab"`, seconds per input before its verdict is
            `"unknown"`. Defaults to `60`.
        executor: a `tfgeom.execution` executor to run the inputs in shards on
            (the stage `"certify"`). Defaults to `None`: in this process.

    Returns:
        A `Certificate`.
    """
    if executor is not None:
        x = gm.check(x)
        inputs = {"x": x, "eps": execution.per_example(np.asarray(eps, np.float32), len(x)), "cls": cls}
        params = dict(norm=norm, method=method, batch_size=batch_size, max_units=max_units, intermediate=intermediate,
                      time_limit=time_limit)
        return execution.run(gm, "certify", inputs, params, executor)
    norm = check_choice("norm", norm, NORMS)
    method = check_choice("method", method, METHODS)
    intermediate = check_choice("intermediate", intermediate, INTERMEDIATE)
    if method == "bab" and norm != "linf":
        raise InputError("method='bab' supports norm='linf' (its exact leaves are linear programs over a box); "
                         "use method='alpha-crown' for L2")
    x = gm.check(x)
    cls = _check_cls(gm, x, cls)
    eps = _eps_array(eps, len(x))
    scale = np.abs(gm.runtime.logits(x)).max(axis=1)
    if method == "bab":
        if not gm.layer_graph.piecewise_linear():
            raise InputError("method='bab' needs a piecewise-linear network (its subdomains end in linear programs); "
                             "this one has smooth units: use method='alpha-crown'")
        milp.check_encoded(gm.layer_graph, "method='bab'")  # before any work, not mid-search
        crown = certify(gm, x, eps, norm, "crown", cls, batch_size, intermediate=intermediate)
        return _branch_and_bound(gm, x, eps, cls, crown, scale, time_limit)
    margins, statuses = [], []
    for s in gm.runtime.batches(len(x), batch_size):
        size = len(x[s])
        pad = _bucket(size) if method != "milp" else size
        take = np.minimum(np.arange(pad), size - 1)  # repeat the last example: few distinct shapes
        input_set = ball(x[s][take], eps[s][take], norm, gm.bounds)
        m, status = _bound(gm, input_set, cls[s][take], method, max_units, intermediate)
        margins.append(m[:size])
        statuses += status or []
    margins = np.concatenate(margins)
    return Certificate(_certified(margins, scale), margins, cls, eps, method, norm,
                       statuses if method == "milp" else None)


def certify_segment(gm, x_a, x_b, method="crown", cls=None, batch_size=None, max_units=milp.MAX_UNITS,
                    intermediate="backward"):
    """Certify the segments `[x_a, x_b]` (morphing lines) for one class each.

    Returns:
        A `Certificate` with `norm="segment"`; `cls` defaults to the class of `x_a`.
    """
    method = check_choice("method", method, METHODS)
    x_a, x_b = gm.check(x_a), gm.check(x_b)
    if x_a.shape != x_b.shape:
        raise InputError(f"x_a and x_b must have the same shape; got {x_a.shape} and {x_b.shape}")
    cls = _check_cls(gm, x_a, cls)
    scale = np.maximum(np.abs(gm.runtime.logits(x_a)).max(axis=1), np.abs(gm.runtime.logits(x_b)).max(axis=1))
    margins, statuses = [], []
    for s in gm.runtime.batches(len(x_a), batch_size):
        size = len(x_a[s])
        pad = _bucket(size) if method != "milp" else size
        take = np.minimum(np.arange(pad), size - 1)  # repeat the last segment: few distinct shapes to compile
        m, status = _bound(gm, segment(x_a[s][take], x_b[s][take], gm.bounds), cls[s][take], method, max_units,
                           intermediate)
        margins.append(m[:size])
        statuses += (status or [])[:size]
    margins = np.concatenate(margins)
    return Certificate(_certified(margins, scale), margins, cls, np.zeros(len(x_a), np.float32), method,
                       "segment", statuses if method == "milp" else None)


class Radius(NamedTuple):
    """Certified radii by bisection (NumPy).

    Fields:
        radius: `[N]` certified radius: every ball of this radius is certified.
        upper: `[N]` the smallest radius tried that was not certified (or the
            starting upper end): the true certified radius of the method lies
            in `[radius, upper]`.
        cls: `[N]` the class certified.
        method: `"ibp"`, `"crown"`, `"alpha-crown"` or `"milp"`.
        norm: `"linf"` or `"l2"`.
        rtol: the relative resolution asked for: bisection stops when
            `upper - radius <= rtol * upper`.
        converged: `[N]` bool, the resolution was reached within the steps.
    """

    radius: np.ndarray
    upper: np.ndarray
    cls: np.ndarray
    method: str
    norm: str
    rtol: float = 0.0
    converged: Optional[np.ndarray] = None


def _midpoint(lo, hi):
    """Geometric midpoint once a certified radius is known: radii span decades, so this
    reaches a relative resolution in few steps; arithmetic while `lo = 0`."""
    return np.where(lo > 0, np.sqrt(lo * np.maximum(hi, lo)), hi / 2)


class _Search:
    """Where the next certify call of each bracket `[lo, hi]` goes (`lo`, `hi` are updated in place).

    The secant search keeps `f = smallest margin bound - rounding guard` at
    both ends (`f > 0` iff certified; at radius 0 it is the clean margin) and
    proposes the false-position point; the Illinois rule halves the retained
    end's `f` when the same end moves twice in a row, so neither end stalls.
    """

    def __init__(self, logits, cls, lo, hi, kind):
        self.kind = check_choice("search", kind, ("bisection", "secant"))
        self.lo, self.hi = lo, hi
        logits = logits.astype(np.float64)
        self.guard = ROUNDING * np.maximum(1.0, np.abs(logits).max(axis=1))
        own = logits[np.arange(len(cls)), cls]
        logits[np.arange(len(cls)), cls] = -np.inf
        self.f_zero = own - logits.max(axis=1) - self.guard  # at radius 0 the bound is the clean margin
        self.f_lo = np.where(lo == 0, self.f_zero, np.nan)
        self.f_hi = np.full(len(cls), np.nan)
        self.last = np.zeros(len(cls), np.int8)  # +1: lo moved last, -1: hi moved last

    def next(self, todo):
        lo, hi = self.lo[todo], self.hi[todo]
        mid = _midpoint(lo, hi)
        if self.kind == "bisection":
            return mid
        f_lo, f_hi = self.f_lo[todo], self.f_hi[todo]
        known = np.isfinite(f_lo) & np.isfinite(f_hi) & (f_lo > 0) & (f_hi <= 0)
        t = lo + (hi - lo) * np.where(known, f_lo / np.where(known, f_lo - f_hi, 1.0), 0.5)
        # no refuted end yet: extrapolate the line through radius 0 and the certified end
        f_zero = self.f_zero[todo]
        line = ~known & (lo > 0) & np.isfinite(f_lo) & (f_lo > 0) & (f_lo < f_zero)
        t = np.where(line, lo * f_zero / np.where(line, f_zero - f_lo, 1.0), t)
        # stay strictly inside the bracket so every call shrinks it
        t = np.clip(t, lo + 0.01 * (hi - lo), hi - 0.01 * (hi - lo))
        return np.where(known | line, t, mid)

    def update(self, todo, mid, cert):
        f = cert.min_margin.astype(np.float64) - self.guard[todo]
        up, down = todo[cert.certified], todo[~cert.certified]
        self.lo[up], self.f_lo[up] = mid[cert.certified], f[cert.certified]
        self.hi[down], self.f_hi[down] = mid[~cert.certified], f[~cert.certified]
        self.f_hi[up[self.last[up] == 1]] /= 2  # Illinois: the same end moved twice
        self.f_lo[down[self.last[down] == -1]] /= 2
        self.last[up], self.last[down] = 1, -1


def certified_radius(gm, x, norm="linf", method="crown", cls=None, upper=None, steps=40, rtol=0.02,
                     batch_size=None, max_units=milp.MAX_UNITS, intermediate="backward", lower=None, attack=None,
                     search="bisection", executor=None):
    """The largest certified radius around each input, by bisection on `eps`.

    Each step certifies all unresolved inputs at the midpoints of their
    brackets (batched); an input stops when its bracket is narrower than
    `rtol` of its upper end, so the resolution is relative to the radius
    itself, however small. Inputs misclassified (or not `cls`) at the centre get 0.

    Args:
        x: `[N, ...]` centres.
        norm: `"linf"` or `"l2"` (as in `certify`).
        method: `"ibp"`, `"crown"`, `"alpha-crown"` or `"milp"` (as in `certify`).
        cls: `[N]` classes; defaults to the predicted ones.
        upper: `[N]` or scalar starting upper end: a radius cannot exceed the
            distance of an adversarial example. Defaults to the norm of
            `attack`'s perturbation where it succeeded, else the whole bounds
            range (`high - low`, times `sqrt(d)` for L2).
        steps: maximum bisection steps. Defaults to `40`.
        rtol: stop when `upper - radius <= rtol * upper`. Defaults to `0.02`.
        lower: `[N]` or scalar radius already known to be certified by this
            method (e.g. IBP's radius for CROWN, whose bounds are never looser).
            Defaults to `None`: 0 (CROWN's radius for `"milp"`).
        attack: an `AttackResult` of `x` in `norm` (e.g. DeepFool's) to take the
            upper ends from. Defaults to `None`: the bounds range
            (`GeometryModel.certified_radius` runs DeepFool for it).
        search: `"bisection"` (midpoints: arithmetic until a radius is
            certified, then geometric) or `"secant"` (ours: false position on
            the smallest margin bound with the Illinois correction, falling
            back to midpoints; usually fewer certify calls, each bracket end
            still certified or refuted by a call). Defaults to `"bisection"`.
        executor: a `tfgeom.execution` executor to run the inputs in shards on
            (the stage `"certified_radius"`). Defaults to `None`: in this process.

    Returns:
        A `Radius`; `radius` is certified (a lower bound on the true robust radius).
    """
    if executor is not None:
        x = gm.check(x)
        inputs = {"x": x, "attack": attack,
                  **{key: execution.per_example(value, len(x)) for key, value in (("cls", cls), ("upper", upper),
                                                                                 ("lower", lower))}}
        params = dict(norm=norm, method=method, steps=steps, rtol=rtol, batch_size=batch_size, max_units=max_units,
                      intermediate=intermediate, search=search)
        return execution.run(gm, "certified_radius", inputs, params, executor)
    norm = check_choice("norm", norm, NORMS)
    method = check_choice("method", method, METHODS)
    steps = check_positive_int("steps", steps)
    if not 0 < rtol < 1:
        raise InputError(f"rtol must be in (0, 1); got {rtol!r}")
    x = gm.check(x)
    cls = _check_cls(gm, x, cls)
    span = gm.bounds[1] - gm.bounds[0]
    if upper is None:
        upper = np.full(len(x), span * (np.sqrt(np.prod(gm.input_shape)) if norm == "l2" else 1.0))
        if attack is not None:
            hit = attack.success & (attack.adv_labels != cls)
            upper[hit] = np.minimum(upper[hit], attack.norms[hit])
    hi = _eps_array(upper, len(x)).astype(np.float64)
    lo = np.zeros(len(x)) if lower is None else np.minimum(_eps_array(lower, len(x)).astype(np.float64), hi)
    logits = gm.runtime.logits(x, batch_size)  # once: the labels at the centres and the search's clean margins
    ok = logits.argmax(axis=1) == cls
    hi[~ok] = 0.0
    lo[~ok] = 0.0
    if method == "milp" and lower is None:  # CROWN's radius is certified, so the exact one is at least that
        lo[ok] = np.minimum(certified_radius(gm, x[ok], norm, "crown", cls[ok], hi[ok], steps, rtol,
                                             batch_size, intermediate=intermediate).radius, hi[ok])
    search = _Search(logits, cls, lo, hi, search)
    for _ in range(steps):
        todo = np.flatnonzero(ok & (hi - lo > rtol * hi))
        if len(todo) == 0:
            break
        mid = search.next(todo)
        cert = certify(gm, x[todo], mid, norm, method, cls[todo], batch_size, max_units, intermediate)
        search.update(todo, mid, cert)
    converged = ~ok | (hi - lo <= rtol * hi)
    return Radius(lo.astype(np.float32), hi.astype(np.float32), cls, method, norm, float(rtol), converged)


@execution.stage("certify")
def _certify_shard(gm, start, x, eps, cls=None, **params):
    return certify(gm, x, eps, cls=cls, **params)


@execution.stage("certified_radius")
def _certified_radius_shard(gm, start, x, cls=None, upper=None, lower=None, attack=None, **params):
    return certified_radius(gm, x, cls=cls, upper=upper, lower=lower, attack=attack, **params)
