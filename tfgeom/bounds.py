"""Bounds on a network's features over a set of inputs: IBP and CROWN.

Input sets (`InputSet`, one per example, batched):

- `linf`: the box `{x : ||x - x0||_inf <= eps} ∩ [low, high]`;
- `l2`: the ball `{x : ||x - x0||_2 <= eps}` (its intersection with the bounds
  is bounded by the ball itself; interval bounds use the ball's box ∩ bounds);
- `segment`: the line `{x_a + t (x_b - x_a) : t in [0, 1]}`.

IBP (interval bound propagation) pushes a box `[l, u]` through every node:
an affine node maps centre `m` and radius `r` to `L(m) + c` and `|L|(r)`;
monotone activations and max-pooling map the ends.

CROWN (backward linear bound propagation, Zhang et al. 2018) bounds a linear
function `a^T y_t` of a node from below by a linear function of the input,
going backwards through the graph: affine nodes by `L^T`, activations by a
linear lower/upper relaxation valid on their input interval (chosen by the
sign of the coefficient), and max-pooling by selecting the window entry with
the largest lower bound (lower) and the same entry or the window's largest
upper bound (upper). The linear function of `x` is then minimised over the
input set in closed form (box: `a^T m - |a|^T r`; ball: `a^T x0 - eps ||a||`;
segment: `a^T x_a + min(0, a^T d)`). Pre-activation bounds of every
non-linear node are computed this way (neurons IBP already proves stable are
skipped) and intersected with the IBP bounds, so CROWN is never looser than
IBP; bounds are sound for any valid relaxation.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom.layer_graph import SENTINEL, activate, windows

MEMORY = 256 * 2**20  # bytes of coefficient tensors per backward chunk


class InputSet(NamedTuple):
    """A batch of input sets (see the module docstring); tensors are `[N, *input_shape]`."""

    kind: str
    center: tf.Tensor  # x0, or x_a for a segment
    eps: tf.Tensor  # [N] radius (ignored for a segment)
    low: tf.Tensor  # [N, *shape] interval hull of the set (within the bounds)
    high: tf.Tensor
    direction: tf.Tensor = None  # x_b - x_a (segment)


def _expand(v, like):
    return tf.reshape(v, [-1] + [1] * (like.shape.rank - 1))


def ball(x, eps, norm, bounds):
    """`InputSet` of `norm`-balls of radius `eps` (`[N]`) around `x` clipped into `bounds`."""
    x = tf.clip_by_value(tf.convert_to_tensor(x, tf.float32), *bounds)
    eps = tf.convert_to_tensor(eps, tf.float32)
    e = _expand(eps, x)
    low = tf.maximum(x - e, bounds[0])
    high = tf.minimum(x + e, bounds[1])
    return InputSet(norm, x, eps, low, high)


def segment(x_a, x_b, bounds):
    """`InputSet` of the segments `[x_a, x_b]` (both ends clipped into `bounds`)."""
    x_a = tf.clip_by_value(tf.convert_to_tensor(x_a, tf.float32), *bounds)
    x_b = tf.clip_by_value(tf.convert_to_tensor(x_b, tf.float32), *bounds)
    zero = tf.zeros([tf.shape(x_a)[0]])
    return InputSet("segment", x_a, zero, tf.minimum(x_a, x_b), tf.maximum(x_a, x_b), x_b - x_a)


def concretize(input_set, a):
    """Lower bound of `a^T x` over each example's set; `a` is `[N, S, *input_shape]`, result `[N, S]`."""
    n, s = tf.shape(a)[0], tf.shape(a)[1]
    flat = tf.reshape(a, [n, s, -1])

    def dot(v):
        return tf.einsum("nsd,nd->ns", flat, tf.reshape(v, [n, -1]))

    if input_set.kind == "linf":
        mid = (input_set.low + input_set.high) / 2
        rad = (input_set.high - input_set.low) / 2
        return dot(mid) - tf.einsum("nsd,nd->ns", tf.abs(flat), tf.reshape(rad, [n, -1]))
    if input_set.kind == "l2":
        return dot(input_set.center) - input_set.eps[:, None] * tf.norm(flat, axis=2)
    return dot(input_set.center) + tf.minimum(0.0, dot(input_set.direction))


# -- interval bounds -------------------------------------------------------


def _interval(node, ins):
    if node.kind == "affine":
        (l, u), = ins
        mid = node.linear((l + u) / 2) + node.bias
        rad = node.abs_linear((u - l) / 2)
        return mid - rad, mid + rad
    if node.kind == "add":
        return tf.add_n([b[0] for b in ins]), tf.add_n([b[1] for b in ins])
    (l, u), = ins
    if node.kind == "act":
        return activate(node, l), activate(node, u)
    shape = [-1, *node.shape]
    return (tf.reshape(tf.reduce_max(windows(node, l), -1), shape),
            tf.reshape(tf.reduce_max(windows(node, u), -1), shape))


def interval_bounds(graph, input_set, refine=None):
    """IBP: `[(l, u)]` for every node. `refine(n, bounds) -> (l, u)` may tighten node `n`."""
    bounds = [(input_set.low, input_set.high)]
    for n, node in enumerate(graph.nodes[1:], 1):
        bounds.append(_interval(node, [bounds[i] for i in node.inputs]))
        if refine is not None:
            bounds[n] = refine(n, bounds)
    return bounds


# -- linear relaxations ------------------------------------------------------


def _safe_div(a, b):
    ok = b > 1e-12
    return tf.where(ok, a / tf.where(ok, b, 1.0), 0.0)


def relaxation(node, l, u):
    """`(al, bl, au, bu)`: `al x + bl <= act(x) <= au x + bu` for `x` in `[l, u]` (element-wise)."""
    if node.activation in ("relu", "leaky_relu"):
        alpha = node.slope
        pos, neg = l >= 0, u <= 0
        chord = _safe_div(u - alpha * l, u - l)
        au = tf.where(pos, 1.0, tf.where(neg, alpha, chord))
        bu = tf.where(pos | neg, 0.0, alpha * l - chord * l)
        adaptive = tf.where(u > -l, 1.0, alpha)  # CROWN's choice of lower slope
        al = tf.where(pos, 1.0, tf.where(neg, alpha, adaptive))
        return al, tf.zeros_like(l), au, bu
    # tanh / sigmoid: f' is unimodal with its maximum at 0, so f(x) - lam x with
    # lam = min(f'(l), f'(u)) is non-decreasing on [l, u] (DeepPoly's bounds).
    fl, fu = activate(node, l), activate(node, u)
    if node.activation == "tanh":
        dl, du = 1 - fl**2, 1 - fu**2
    else:
        dl, du = fl * (1 - fl), fu * (1 - fu)
    lam = tf.minimum(dl, du)
    return lam, fl - lam * l, lam, fu - lam * u


def pool_relaxation(node, l, u):
    """`(select_l, select_u, bu)` `[N, out, k]`/`[N, out]`: `sum select_l x <= max <= sum select_u x + bu`."""
    wl, wu = windows(node, l), windows(node, u)
    k = tf.shape(wl)[-1]
    best = tf.argmax(wl, -1, output_type=tf.int32)
    select = tf.one_hot(best, k)
    best_l = tf.reduce_max(wl, -1)
    rest_u = tf.reduce_max(tf.where(select > 0, SENTINEL, wu), -1)
    stable = best_l >= rest_u
    select_u = tf.where(stable[..., None], select, 0.0)
    bu = tf.where(stable, 0.0, tf.reduce_max(wu, -1))
    return select, select_u, bu


# -- backward (CROWN) ----------------------------------------------------------


def _push(pending, n, a):
    pending[n] = pending[n] + a if n in pending else a


def _scatter_windows(node, coeff, in_shape):
    """Sum window coefficients `[N, S, out, k]` back onto the flattened input positions."""
    nb, s = tf.shape(coeff)[0], tf.shape(coeff)[1]
    size = int(np.prod(in_shape))
    idx = tf.broadcast_to(node.window, tf.shape(coeff)[2:])
    flat_coeff = tf.transpose(tf.reshape(coeff, [nb * s, -1]))  # [out*k, N*S]
    summed = tf.math.unsorted_segment_sum(flat_coeff, tf.reshape(idx, [-1]), size + 1)
    return tf.reshape(tf.transpose(summed[:size]), [nb, s, *in_shape])


def backward(graph, target, a, const, bounds, input_set):
    """Lower bound of `a^T y_target + const` over the input set (CROWN's backward pass).

    Args:
        a: `[N, S, *shape of target]` coefficients, `const` `[N, S]`.
        bounds: `(l, u)` of every node before `target` (pre-activation bounds).

    Returns:
        `[N, S]` lower bounds.
    """
    nodes = graph.nodes
    pending = {target: a}
    for n in range(target, -1, -1):
        if n not in pending:
            continue
        a = pending.pop(n)
        node = nodes[n]
        if node.kind == "input":
            return const + concretize(input_set, a)
        nb, s = tf.shape(a)[0], tf.shape(a)[1]
        axes = list(range(2, a.shape.rank))
        parent = node.inputs[0]
        in_shape = nodes[parent].shape
        if node.kind == "affine":
            const = const + tf.reduce_sum(a * node.bias, axes)
            passed = node.transpose(tf.reshape(a, [-1, *node.shape]))
            _push(pending, parent, tf.reshape(passed, [nb, s, *in_shape]))
        elif node.kind == "add":
            for i in node.inputs:
                _push(pending, i, a)
        elif node.kind == "act":
            al, bl, au, bu = relaxation(node, *bounds[parent])
            ap, an = tf.maximum(a, 0.0), tf.minimum(a, 0.0)
            const = const + tf.reduce_sum(ap * bl[:, None] + an * bu[:, None], axes)
            _push(pending, parent, ap * al[:, None] + an * au[:, None])
        else:
            select, select_u, bu = pool_relaxation(node, *bounds[parent])
            flat = tf.reshape(a, [nb, s, -1])
            ap, an = tf.maximum(flat, 0.0), tf.minimum(flat, 0.0)
            const = const + tf.einsum("nso,no->ns", an, bu)
            coeff = ap[..., None] * select[:, None] + an[..., None] * select_u[:, None]  # [N,S,out,k]
            _push(pending, parent, _scatter_windows(node, coeff, in_shape))
    raise AssertionError("backward pass did not reach the input")


_COMPILED = {}
JIT = True  # XLA-compile backward passes (2-3x faster on CPU than plain graphs)


def compiled_backward(graph, target, kind):
    """`backward` for one graph, target node and input-set kind, compiled once (XLA)."""
    key = (id(graph), target, kind)
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(
            lambda a, const, bounds, input_set: backward(graph, target, a, const, bounds, input_set),
            jit_compile=JIT,
            autograph=False,
        )
    return _COMPILED[key]


def _needs_refining(graph):
    """`(feeds, exact)`: the activation/max-pool nodes each node feeds, and which nodes IBP bounds
    exactly on a box (the input followed by one affine map and element-wise scalings/reshapes)."""
    box = [True] + [False] * (len(graph.nodes) - 1)
    exact = list(box)
    for n, node in enumerate(graph.nodes[1:], 1):
        if node.kind == "affine":
            parent = node.inputs[0]
            box[n] = node.diagonal and box[parent]
            exact[n] = exact[parent] if node.diagonal else box[parent]
    feeds = {}
    for n, node in enumerate(graph.nodes):
        if node.kind in ("act", "maxpool"):
            feeds.setdefault(node.inputs[0], []).append(n)
    return feeds, exact


def _relu(graph, me):
    node = graph.nodes[me]
    return node.kind == "act" and node.activation in ("relu", "leaky_relu")


def _only_unstable_matter(graph, me):
    """Whether only the unstable neurons' bounds matter: a (leaky) ReLU whose output feeds no max-pool.

    The relaxation of a stable ReLU is exact whatever its bounds; a max-pool's
    relaxation and anything downstream of it use the bounds themselves.
    """
    if not _relu(graph, me):
        return False
    return all(node.kind != "maxpool" for node in graph.nodes if me in node.inputs)


def _rows(n_total, idx, shape, nb):
    eye = tf.one_hot(idx, n_total)
    return tf.broadcast_to(tf.reshape(eye, [1, -1, *shape]), [nb, tf.shape(idx)[0], *shape])


def crown_bounds(graph, input_set, memory=MEMORY):
    """CROWN bounds `[(l, u)]` of every node (intermediate bounds by backward passes, chunked)."""
    feeds, exact = _needs_refining(graph)
    largest = max(node.size for node in graph.nodes)
    nb = int(input_set.center.shape[0])
    most = max(1, memory // (4 * largest * nb * 2))

    def refine(n, bounds):
        l, u = bounds[n]
        node = graph.nodes[n]
        if n not in feeds or node.kind == "act" or (input_set.kind == "linf" and exact[n]):
            return l, u  # act outputs: act(bounds of its input) is already the best interval
        flat_l, flat_u = tf.reshape(l, [nb, -1]), tf.reshape(u, [nb, -1])
        loose = flat_u > flat_l
        if all(graph.nodes[c].activation == "relu" for c in feeds[n]):
            loose &= flat_u > 0  # a ReLU is exactly 0 where u <= 0
        if all(_only_unstable_matter(graph, c) for c in feeds[n]):
            loose &= flat_l < 0  # ... and exactly linear where l >= 0
        unstable = tf.reduce_any(loose, axis=0)
        idx = tf.cast(tf.where(unstable)[:, 0], tf.int32)
        count = int(idx.shape[0])
        if count == 0:
            return l, u
        chunk = min(most, 1 << (count - 1).bit_length())
        program = compiled_backward(graph, n, input_set.kind)
        prior = tuple(bounds[:n])
        lows, highs = [], []
        for start in range(0, count, chunk):
            part = idx[start:start + chunk]
            size = int(part.shape[0])
            part = tf.pad(part, [[0, chunk - size]])  # fixed shapes: one compilation per node
            rows = _rows(node.size, part, node.shape, nb)
            lower = program(tf.concat([rows, -rows], 1), tf.zeros([nb, 2 * chunk]), prior, input_set)
            lows.append(lower[:, :size])
            highs.append(-lower[:, chunk:chunk + size])
        lows, highs = tf.concat(lows, 1), tf.concat(highs, 1)
        scatter = idx[:, None]
        new_l = tf.transpose(tf.tensor_scatter_nd_max(tf.transpose(flat_l), scatter, tf.transpose(lows)))
        new_u = tf.transpose(tf.tensor_scatter_nd_min(tf.transpose(flat_u), scatter, tf.transpose(highs)))
        return tf.reshape(new_l, l.shape), tf.reshape(new_u, u.shape)

    return interval_bounds(graph, input_set, refine)


# -- forward linear bounds -----------------------------------------------------


def _base(input_set):
    """The set as `x = c + A e`: `(A [N, m, *shape], c [N, *shape])`, `e` in a unit box/ball or `[0, 1]`."""
    n = int(input_set.center.shape[0])
    shape = input_set.center.shape[1:]
    if input_set.kind == "segment":
        return input_set.direction[:, None], input_set.center
    if input_set.kind == "linf":
        mid, rad = (input_set.low + input_set.high) / 2, (input_set.high - input_set.low) / 2
        return tf.reshape(tf.linalg.diag(tf.reshape(rad, [n, -1])), [n, -1, *shape]), mid
    d = int(np.prod(shape))
    eye = tf.eye(d, batch_shape=[n]) * input_set.eps[:, None, None]
    return tf.reshape(eye, [n, d, *shape]), input_set.center


def _forward_lower(kind, a, c):
    """Element-wise lower bound of `a^T e + c` over the base set; `a` is `[N, m, *shape]`."""
    if kind == "linf":
        return c - tf.reduce_sum(tf.abs(a), 1)
    if kind == "l2":
        return c - tf.norm(a, axis=1)
    return c + tf.minimum(0.0, a[:, 0])


def _forward_node(node, ins, bounds, fold):
    """Lower/upper linear functions `((A_lo, c_lo), (A_up, c_up))` of a node from its inputs'."""
    if node.kind == "add":
        return tuple((tf.add_n([i[k][0] for i in ins]), tf.add_n([i[k][1] for i in ins])) for k in (0, 1))
    (a_lo, c_lo), (a_up, c_up) = ins[0]
    if node.kind == "affine":
        out = []
        for sign in (-1.0, 1.0):
            a = fold(node.linear, (a_lo + a_up) / 2) + sign * fold(node.abs_linear, (a_up - a_lo) / 2)
            c = node.linear((c_lo + c_up) / 2) + node.bias + sign * node.abs_linear((c_up - c_lo) / 2)
            out.append((a, c))
        return tuple(out)
    l, u = bounds[node.inputs[0]]
    if node.kind == "act":  # every relaxation here has non-negative slopes
        al, bl, au, bu = relaxation(node, l, u)
        return (a_lo * al[:, None], c_lo * al + bl), (a_up * au[:, None], c_up * au + bu)
    select, select_u, bu = pool_relaxation(node, l, u)
    best = tf.reduce_sum(tf.cast(select, tf.int32) * node.window, -1)  # [N, out] flat input index
    stable = tf.reduce_sum(select_u, -1) > 0
    nb, m = tf.shape(a_lo)[0], tf.shape(a_lo)[1]

    def pick(a, c):
        a = tf.gather(tf.reshape(a, [nb, m, -1]), best, axis=2, batch_dims=1)
        return tf.reshape(a, [nb, m, *node.shape]), tf.reshape(tf.gather(tf.reshape(c, [nb, -1]), best, batch_dims=1), [-1, *node.shape])

    lo = pick(a_lo, c_lo)
    up_a, up_c = pick(a_up, c_up)
    shape = [-1, *node.shape]
    keep = tf.reshape(stable, shape)
    up = (tf.where(keep[:, None], up_a, 0.0), tf.where(keep, up_c, tf.reshape(bu, shape)))
    return lo, up


def forward_bounds(graph, input_set, memory=MEMORY):
    """Bounds `[(l, u)]` of every node by forward linear bounds (each node a linear function of the set).

    Cheaper than `crown_bounds` when the set has few dimensions compared with
    the network's neurons (e.g. 784 pixels vs tens of thousands of units, or
    a segment: one dimension), looser in general. Intersected with IBP.
    """
    nb = int(input_set.center.shape[0])
    dims = 1 if input_set.kind == "segment" else int(np.prod(graph.input_shape))
    per = max(1, memory // (4 * 8 * dims * max(node.size for node in graph.nodes)))  # ~8 live states
    if nb > per:  # a few examples at a time bound the memory
        parts = [forward_bounds(graph, _take(input_set, slice(i, i + per)), memory) for i in range(0, nb, per)]
        return [(tf.concat([p[n][0] for p in parts], 0), tf.concat([p[n][1] for p in parts], 0))
                for n in range(len(graph.nodes))]
    a, c = _base(input_set)
    m = int(a.shape[1])

    def fold(fn, t):
        shape = t.shape[2:]
        out = fn(tf.reshape(t, [-1, *shape]))
        return tf.reshape(out, [nb, m, *out.shape[1:]])

    states = {0: ((a, c), (a, c))}
    consumers = {}
    for n, node in enumerate(graph.nodes):
        for i in node.inputs:
            consumers[i] = n

    def refine(n, bounds):
        node = graph.nodes[n]
        states[n] = _forward_node(node, [states[i] for i in node.inputs], bounds, fold)
        for i in node.inputs:
            if consumers.get(i) == n:
                states.pop(i, None)
        (a_lo, c_lo), (a_up, c_up) = states[n]
        l, u = bounds[n]
        return (tf.maximum(l, _forward_lower(input_set.kind, a_lo, c_lo)),
                tf.minimum(u, -_forward_lower(input_set.kind, -a_up, -c_up)))

    return interval_bounds(graph, input_set, refine)


def _take(input_set, rows):
    return InputSet(input_set.kind, *[None if t is None else t[rows] for t in input_set[1:]])


def margin_lower_bounds(graph, input_set, coeffs, const, method, memory=MEMORY, combine=True,
                        intermediate="backward"):
    """Lower bounds of `coeffs @ z + const` over the set, `z` the features.

    Args:
        coeffs: `[N, S, D]` rows of the margins (e.g. `w_c - w_j`).
        const: `[N, S]`.
        method: `"ibp"` (minimise over the feature box in closed form) or
            `"crown"` (backward pass from the margins, never looser than IBP).
        combine: for `"crown"`, return `max(CROWN, IBP)`; `False` gives the
            backward pass's own bound (for measuring it).
        intermediate: for `"crown"`, how pre-activation bounds are found:
            `"backward"` (a backward pass per neuron, CROWN proper) or
            `"forward"` (forward linear bounds, much cheaper on convolutional
            networks, looser). The margins always get a backward pass.

    Returns:
        `(lower [N, S], bounds)` with `bounds` the per-node `(l, u)`.
    """
    if method == "ibp":
        bounds = interval_bounds(graph, input_set)
    elif intermediate == "forward":
        bounds = forward_bounds(graph, input_set, memory)
    else:
        bounds = crown_bounds(graph, input_set, memory)
    l, u = bounds[-1]
    ibp = const + tf.einsum("nsd,nd->ns", tf.maximum(coeffs, 0.0), l) + tf.einsum(
        "nsd,nd->ns", tf.minimum(coeffs, 0.0), u
    )
    if method == "ibp":
        return ibp, bounds
    last = len(graph.nodes) - 1
    crown = compiled_backward(graph, last, input_set.kind)(coeffs, const, tuple(bounds[:last]), input_set)
    return (tf.maximum(crown, ibp) if combine else crown), bounds
