"""Bounds on a network's features over a set of inputs: IBP and CROWN.

Input sets (one class per kind, batched over examples; each concretises
linear bounds over itself):

- `LinfBall`: the box `{x : ||x - x0||_inf <= eps} ∩ [low, high]`;
- `L2Ball`: the ball `{x : ||x - x0||_2 <= eps}` (its intersection with the
  bounds is bounded by the ball itself; interval bounds use the ball's box ∩ bounds);
- `Segment`: the line `{x_a + t (x_b - x_a) : t in [0, 1]}`.

The propagation through each operator lives in its class in
`tfgeom.verify.operators`; this module walks the graph.

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

import cvxpy as cp
import numpy as np
import tensorflow as tf

from tfgeom.verify import patches
from tfgeom.errors import InputError
from tfgeom.verify.operators import Activation, Affine, MaxPool

MEMORY = 256 * 2**20  # bytes of coefficient tensors per backward chunk


def _expand(v, like):
    return tf.reshape(v, [-1] + [1] * (like.shape.rank - 1))


def _dot(a, v):
    """`[N, S]` dot products of coefficient rows `a [N, S, *shape]` with `v [N, *shape]`."""
    n, s = tf.shape(a)[0], tf.shape(a)[1]
    return tf.einsum("nsd,nd->ns", tf.reshape(a, [n, s, -1]), tf.reshape(v, [n, -1]))


class LinfBall(NamedTuple):
    """L-inf balls of radius `eps [N]` around `center [N, *shape]`, intersected with the bounds (`low`, `high`)."""

    center: tf.Tensor
    eps: tf.Tensor
    low: tf.Tensor
    high: tf.Tensor
    kind = "linf"

    def concretize(self, a):
        """Lower bound of `a^T x` over each set: `a^T m - |a|^T r` (box centre `m`, radius `r`)."""
        return self.concretize_with(a, _dot)

    def concretize_with(self, a, dot):
        """`concretize` for coefficients in another layout: `dot(a, v [N, *shape]) -> [N, S]` (e.g. patches)."""
        mid, rad = (self.low + self.high) / 2, (self.high - self.low) / 2
        return dot(a, mid) - dot(tf.abs(a), rad)

    def base(self):
        """The set as `x = c + A e` with `e` in the unit box: `(A [N, d, *shape], c [N, *shape])`."""
        n, shape = int(self.center.shape[0]), self.center.shape[1:]
        mid, rad = (self.low + self.high) / 2, (self.high - self.low) / 2
        return tf.reshape(tf.linalg.diag(tf.reshape(rad, [n, -1])), [n, -1, *shape]), mid

    def forward_lower(self, a, c):
        """Element-wise lower bound of `a^T e + c` over the unit box; `a` is `[N, m, *shape]`."""
        return c - tf.reduce_sum(tf.abs(a), 1)

    def milp_constraints(self, x, i):
        """cvxpy constraints of example `i` on the flat input variable `x`."""
        return [x >= self.low[i].numpy().reshape(-1).astype(np.float64),
                x <= self.high[i].numpy().reshape(-1).astype(np.float64)]

    def take(self, rows):
        """The sets of examples `rows`."""
        return type(self)(*[t[rows] for t in self])


class L2Ball(LinfBall):
    """L2 balls of radius `eps [N]` around `center`; `low`, `high` is the ball's box within the bounds."""

    kind = "l2"

    def concretize_with(self, a, dot):
        """`a^T x0 - eps ||a||_2`."""
        n, s = tf.shape(a)[0], tf.shape(a)[1]
        return dot(a, self.center) - self.eps[:, None] * tf.norm(tf.reshape(a, [n, s, -1]), axis=2)

    def base(self):
        """`x = x0 + eps I e` with `e` in the unit ball."""
        n, shape = int(self.center.shape[0]), self.center.shape[1:]
        d = int(np.prod(shape))
        eye = tf.eye(d, batch_shape=[n]) * self.eps[:, None, None]
        return tf.reshape(eye, [n, d, *shape]), self.center

    def forward_lower(self, a, c):
        return c - tf.norm(a, axis=1)

    def milp_constraints(self, x, i):
        raise InputError(
            "method='milp' supports norm='linf' and segments; an L2 ball needs a mixed-integer SOCP "
            "solver: use method='crown' for L2"
        )


class Segment(NamedTuple):
    """Segments `center + t direction`, `t in [0, 1]`; `low`, `high` their interval hulls."""

    center: tf.Tensor
    direction: tf.Tensor
    low: tf.Tensor
    high: tf.Tensor
    kind = "segment"

    @property
    def eps(self):
        return tf.zeros([tf.shape(self.center)[0]])

    def concretize(self, a):
        """`a^T x_a + min(0, a^T d)`."""
        return self.concretize_with(a, _dot)

    def concretize_with(self, a, dot):
        return dot(a, self.center) + tf.minimum(0.0, dot(a, self.direction))

    def base(self):
        """`x = x_a + d e` with `e` in `[0, 1]`."""
        return self.direction[:, None], self.center

    def forward_lower(self, a, c):
        return c + tf.minimum(0.0, a[:, 0])

    def milp_constraints(self, x, i):
        t = cp.Variable()
        centre = self.center[i].numpy().reshape(-1).astype(np.float64)
        direction = self.direction[i].numpy().reshape(-1).astype(np.float64)
        return [t >= 0, t <= 1, x == centre + t * direction]

    def take(self, rows):
        """The sets of examples `rows`."""
        return type(self)(*[t[rows] for t in self])


def ball(x, eps, norm, bounds):
    """`LinfBall` or `L2Ball` (`norm` `"linf"`/`"l2"`) of radius `eps` (`[N]`) around `x` clipped into `bounds`."""
    x = tf.clip_by_value(tf.convert_to_tensor(x, tf.float32), *bounds)
    eps = tf.convert_to_tensor(eps, tf.float32)
    e = _expand(eps, x)
    low = tf.maximum(x - e, bounds[0])
    high = tf.minimum(x + e, bounds[1])
    return (LinfBall if norm == "linf" else L2Ball)(x, eps, low, high)


def segment(x_a, x_b, bounds):
    """`Segment`s `[x_a, x_b]` (both ends clipped into `bounds`)."""
    x_a = tf.clip_by_value(tf.convert_to_tensor(x_a, tf.float32), *bounds)
    x_b = tf.clip_by_value(tf.convert_to_tensor(x_b, tf.float32), *bounds)
    return Segment(x_a, x_b - x_a, tf.minimum(x_a, x_b), tf.maximum(x_a, x_b))


# -- interval bounds -------------------------------------------------------


def interval_bounds(graph, input_set, refine=None):
    """IBP: `[(l, u)]` for every node. `refine(n, bounds) -> (l, u)` may tighten node `n`."""
    bounds = [(input_set.low, input_set.high)]
    for n, node in enumerate(graph.nodes[1:], 1):
        bounds.append(node.interval([bounds[i] for i in node.inputs]))
        if refine is not None:
            bounds[n] = refine(n, bounds)
    return bounds


def compiled_interval_bounds(graph, input_set):
    """`interval_bounds` as one compiled program per graph and input-set kind (no per-node Python overhead)."""
    return graph.program(("ibp", input_set.kind), lambda s: interval_bounds(graph, s))(input_set)


# -- backward (CROWN) ----------------------------------------------------------


def backward(graph, target, a, const, bounds, input_set, alphas=None):
    """Lower bound of `a^T y_target + const` over the input set (CROWN's backward pass).

    Args:
        a: `[N, S, *shape of target]` coefficients, `const` `[N, S]`.
        bounds: `(l, u)` of every node before `target` (pre-activation bounds).
        alphas: `{node: [N, S, *shape]}` lower slopes of (leaky) ReLU nodes
            (alpha-CROWN); other nodes use CROWN's adaptive slopes.

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
        if n == 0:
            return const + input_set.concretize(a)
        parent = node.inputs[0]
        if alphas is not None and n in alphas:
            const, coeff = node.backward_alpha(a, const, bounds[parent], alphas[n])
            passed = [(parent, coeff)]
        else:
            const, passed = node.backward(a, const, bounds[parent], nodes[parent].shape)
        for i, coeff in passed:
            pending[i] = pending[i] + coeff if i in pending else coeff
    raise AssertionError("backward pass did not reach the input")


PATCHES = True  # convolutional neurons' bounds by the patch-form pass where it applies (tfgeom.verify.patches)
JIT = True  # XLA-compile backward passes (2-3x faster on CPU than plain graphs, but see `use_xla`)


def use_xla(graph, target):
    """Whether to XLA-compile a backward pass from `target`: yes unless it crosses a convolution, whose
    transpose XLA's CPU backend runs ~2x slower than TensorFlow's own kernel (measured on the benchmark CNNs)."""
    return JIT and not any(getattr(node, "conv", None) is not None for node in graph.nodes[1:target + 1])


def compiled_backward(graph, target, kind):
    """`backward` for one graph, target node and input-set kind, compiled once and cached on the graph."""
    return graph.program((target, kind),
                         lambda a, const, bounds, input_set: backward(graph, target, a, const, bounds, input_set),
                         jit=use_xla(graph, target))


def row_chunk(count, most):
    """Rows per backward call for `count` neurons (at most `most`): powers of two up to 32, then multiples of
    32, so that padding wastes little and a radius search compiles few shapes."""
    size = 1 << max(0, (count - 1).bit_length()) if count <= 32 else -(-count // 32) * 32
    return max(1, min(most, size))


def _needs_refining(graph):
    """`(feeds, exact)`: the activation/max-pool nodes each node feeds, and which nodes IBP bounds
    exactly on a box (the input followed by one affine map and element-wise scalings/reshapes)."""
    box = [True] + [False] * (len(graph.nodes) - 1)
    exact = list(box)
    for n, node in enumerate(graph.nodes[1:], 1):
        if isinstance(node, Affine):
            parent = node.inputs[0]
            box[n] = node.diagonal and box[parent]
            exact[n] = exact[parent] if node.diagonal else box[parent]
    feeds = {}
    for n, node in enumerate(graph.nodes):
        if isinstance(node, (Activation, MaxPool)):
            feeds.setdefault(node.inputs[0], []).append(n)
    return feeds, exact


def _relu(graph, me):
    return getattr(graph.nodes[me], "activation", None) in ("relu", "leaky_relu")


def _only_unstable_matter(graph, me):
    """Whether only the unstable neurons' bounds matter: a (leaky) ReLU whose output feeds no max-pool.

    The relaxation of a stable ReLU is exact whatever its bounds; a max-pool's
    relaxation and anything downstream of it use the bounds themselves.
    """
    if not _relu(graph, me):
        return False
    return all(not isinstance(node, MaxPool) for node in graph.nodes if me in node.inputs)


def unit_rows(n_total, idx, shape, nb):
    """`[nb, K, *shape]` coefficient rows selecting the neurons `idx` (flat, `K` of them) of a node of `shape`."""
    eye = tf.one_hot(idx, n_total)
    return tf.broadcast_to(tf.reshape(eye, [1, -1, *shape]), [nb, tf.shape(idx)[0], *shape])


def _program(graph, key, fn):
    """`fn` as a cached graph program: one call instead of a dozen eager ops (most of a small network's time
    when it bounds one input per call); shapes vary (batch, unstable neurons), so one generalised trace."""
    return graph.program(key, fn, reduce_retracing=True)


def _loose_neurons(l, u, relu_only, unstable_only):
    """Flat indices `[K]` of the neurons with bounds `(l, u)` that some example still needs refined."""
    nb = tf.shape(l)[0]
    flat_l, flat_u = tf.reshape(l, [nb, -1]), tf.reshape(u, [nb, -1])
    mask = flat_u > flat_l
    if relu_only:
        mask &= flat_u > 0  # a ReLU is exactly 0 where u <= 0
    if unstable_only:
        mask &= flat_l < 0  # ... and exactly linear where l >= 0
    return tf.cast(tf.where(tf.reduce_any(mask, axis=0))[:, 0], tf.int32)


def _segment(graph, first, last, flags):
    """Interval bounds of nodes `first..last` from those before, and the loose neurons of `last` when `flags`
    (`(relu_only, unstable_only)`) is given: one program between two refined nodes."""

    def run(prior):
        bounds = list(prior)
        for node in graph.nodes[first:last + 1]:
            bounds.append(node.interval([bounds[i] for i in node.inputs]))
        idx = tf.zeros([0], tf.int32) if flags is None else _loose_neurons(*bounds[last], *flags)
        return bounds[first:], idx

    return _program(graph, ("segment", first, last, flags), run)


def tighten(l, u, idx, lows, highs):
    """`(l, u)` with the entries `idx` (flat, shared by the batch) raised to `lows` / lowered to `highs` `[N, K]`."""
    nb = tf.shape(l)[0]
    flat_l, flat_u = tf.reshape(l, [nb, -1]), tf.reshape(u, [nb, -1])
    scatter = idx[:, None]
    new_l = tf.transpose(tf.tensor_scatter_nd_max(tf.transpose(flat_l), scatter, tf.transpose(lows)))
    new_u = tf.transpose(tf.tensor_scatter_nd_min(tf.transpose(flat_u), scatter, tf.transpose(highs)))
    return tf.reshape(new_l, tf.shape(l)), tf.reshape(new_u, tf.shape(u))


def crown_bounds(graph, input_set, memory=MEMORY, refined=None, constrain=None):
    """CROWN bounds `[(l, u)]` of every node (intermediate bounds by backward passes, chunked).

    `refined`, a dict, receives `{node: flat indices [K]}` of the neurons bounded by backward passes;
    `constrain(n, l, u) -> (l, u)` may tighten each node's bounds before later nodes use them (the
    splits of branch and bound)."""
    feeds, exact = _needs_refining(graph)
    largest = max(node.size for node in graph.nodes)
    nb = int(input_set.center.shape[0])

    def flags(n):
        """`(relu_only, unstable_only)` for a node whose bounds a backward pass refines, else None."""
        node = graph.nodes[n]
        if n not in feeds or isinstance(node, Activation) or (input_set.kind == "linf" and exact[n]):
            return None  # act outputs: act(bounds of its input) is already the best interval
        return (all(getattr(graph.nodes[c], "activation", None) == "relu" for c in feeds[n]),
                all(_only_unstable_matter(graph, c) for c in feeds[n]))

    def refine(n, bounds, idx):
        l, u = bounds[n]
        count = int(idx.shape[0])
        if count == 0:
            return l, u
        node = graph.nodes[n]
        window = patches.row_size(graph, n) if PATCHES else None
        per_row = largest if window is None else window  # coefficients per row on the largest tensor
        chunk = row_chunk(count, memory // (4 * per_row * nb * 2))
        prior = tuple(bounds[:n])
        lowers = []
        padded = tf.pad(idx, [[0, -count % chunk]])  # fixed shapes: one compilation per node
        for start in range(0, count, chunk):
            part = padded if count <= chunk else padded[start:start + chunk]
            if window is None:
                rows = unit_rows(node.size, part, node.shape, nb)
                lower = compiled_backward(graph, n, input_set.kind)(
                    tf.concat([rows, -rows], 1), tf.zeros([nb, 2 * chunk]), prior, input_set)
            else:
                signs = tf.concat([tf.ones([chunk]), -tf.ones([chunk])], 0)
                lower = patches.compiled(graph, n, input_set.kind, use_xla(graph, n))(
                    tf.concat([part, part], 0), signs, prior, input_set)
            lowers.append(lower)
        if refined is not None:
            refined[n] = idx
        return _program(graph, ("tighten", chunk), _tighten_chunks(chunk))(l, u, idx, lowers)

    if constrain is not None:  # node by node: the splits apply to every node's bounds
        def step(n, bounds):
            f = flags(n)
            idx = tf.zeros([0], tf.int32) if f is None else _loose_neurons(*bounds[n], *f)
            return constrain(n, *refine(n, bounds, idx))

        return interval_bounds(graph, input_set, step)
    bounds, first, count = [(input_set.low, input_set.high)], 1, len(graph.nodes)
    while first < count:  # the stretches between refined nodes as one program each
        last = first
        while last < count - 1 and flags(last) is None:
            last += 1
        out, idx = _segment(graph, first, last, flags(last))(tuple(bounds))
        bounds += out
        bounds[last] = refine(last, bounds, idx)
        first = last + 1
    return bounds


def _tighten_chunks(chunk):
    """`tighten` from the chunks' backward results `[N, 2 chunk]` (lower bounds, then minus the upper bounds)."""

    def step(l, u, idx, lowers):
        count = tf.shape(idx)[0]
        lows = tf.concat([lower[:, :chunk] for lower in lowers], 1)[:, :count]
        highs = -tf.concat([lower[:, chunk:] for lower in lowers], 1)[:, :count]
        return tighten(l, u, idx, lows, highs)

    return step


# -- forward linear bounds -----------------------------------------------------


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
        parts = [forward_bounds(graph, input_set.take(slice(i, i + per)), memory) for i in range(0, nb, per)]
        return [(tf.concat([p[n][0] for p in parts], 0), tf.concat([p[n][1] for p in parts], 0))
                for n in range(len(graph.nodes))]
    # a graph (not XLA) program: the same numbers as eager execution, ~1.6x faster on the demo CNN
    return graph.program(("forward", input_set.kind), lambda s: _forward_chunk(graph, s))(input_set)


def _forward_chunk(graph, input_set):
    """`forward_bounds` of a batch small enough to hold every linear state."""
    nb = int(input_set.center.shape[0])
    a, c = input_set.base()
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
        states[n] = node.forward([states[i] for i in node.inputs], bounds[node.inputs[0]], fold)
        for i in node.inputs:
            if consumers.get(i) == n:
                states.pop(i, None)
        (a_lo, c_lo), (a_up, c_up) = states[n]
        l, u = bounds[n]
        return (tf.maximum(l, input_set.forward_lower(a_lo, c_lo)),
                tf.minimum(u, -input_set.forward_lower(-a_up, -c_up)))

    return interval_bounds(graph, input_set, refine)


class MarginBounds(NamedTuple):
    """Lower bounds of linear functions of the features over input sets.

    Fields:
        lower: `[N, S]` lower bounds.
        bounds: `[(l, u)]` of every node (pre-activation bounds used on the way).
    """

    lower: tf.Tensor
    bounds: list


@tf.function(autograph=False, reduce_retracing=True)
def _box_lower(coeffs, const, l, u):
    """Lower bounds of `coeffs @ z + const` over the box `[l, u]`: `[N, S]`."""
    return const + tf.einsum("nsd,nd->ns", tf.maximum(coeffs, 0.0), l) + tf.einsum(
        "nsd,nd->ns", tf.minimum(coeffs, 0.0), u)


def margin_lower_bounds(graph, input_set, coeffs, const, method, memory=MEMORY, combine=True,
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
        bounds = compiled_interval_bounds(graph, input_set)
    elif method == "alpha-crown":
        from tfgeom.verify import alpha_crown  # it builds on this module

        crown, bounds = alpha_crown.optimise(graph, input_set, coeffs, const, memory=memory)
    elif intermediate == "forward":
        bounds = forward_bounds(graph, input_set, memory)
    else:
        bounds = crown_bounds(graph, input_set, memory)
    ibp = _box_lower(coeffs, const, *bounds[-1])
    if method == "ibp":
        return MarginBounds(ibp, bounds)
    last = len(graph.nodes) - 1
    if method != "alpha-crown":
        crown = compiled_backward(graph, last, input_set.kind)(coeffs, const, tuple(bounds[:last]), input_set)
    return MarginBounds(tf.maximum(crown, ibp) if combine else crown, bounds)
