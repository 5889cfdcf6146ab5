"""CROWN: backward linear bound propagation (Zhang et al. 2018).

Bounds a linear function `a^T y_t` of a node from below by a linear function
of the input, going backwards through the graph: affine nodes by `L^T`,
activations by a linear lower/upper relaxation valid on their input interval
(chosen by the sign of the coefficient), and max-pooling by selecting the
window entry with the largest lower bound (lower) and the same entry or the
window's largest upper bound (upper); each operator's `backward`
(`tfgeom.verify.operators`), conv chains in patch form (`tfgeom.verify.patches`).
The linear function of `x` is then minimised over the input set in closed form
(`tfgeom.verify.sets`). Pre-activation bounds of every non-linear node are
computed this way (neurons IBP already proves stable are skipped) and
intersected with the IBP bounds, so CROWN is never looser than IBP; bounds
are sound for any valid relaxation.
"""
import tensorflow as tf

from tfgeom.verify import patches
from tfgeom.verify.ibp import interval_bounds
from tfgeom.verify.operators import Activation, Affine, MaxPool

MEMORY = 256 * 2**20  # bytes of coefficient tensors per backward chunk


def backward(graph, target, a, const, bounds, input_set, alphas=None, offsets=None, coefficients=False):
    """Lower bound of `a^T y_target + const` over the input set (CROWN's backward pass).

    Args:
        a: `[N, S, *shape of target]` coefficients, `const` `[N, S]`.
        bounds: `(l, u)` of every node before `target` (pre-activation bounds).
        alphas: `{node: [N, S, *shape]}` lower slopes of (leaky) ReLU nodes
            (alpha-CROWN); other nodes use CROWN's adaptive slopes.
        offsets: `{node: [N, S, *shape]}` coefficients added to a node's when the pass reaches it (beta-CROWN's
            split multipliers on pre-activations, `tfgeom.verify.beta_crown`).
        coefficients: also return the bound's coefficients on the input.

    Returns:
        `[N, S]` lower bounds; with `coefficients`, `(lower bounds, [N, S, *input shape])`: the bound is
        `const' + coefficients . x` minimised over the input set.
    """
    nodes = graph.nodes
    pending = {target: a}
    for n in range(target, -1, -1):
        if n not in pending:
            continue
        a = pending.pop(n)
        if offsets is not None and n in offsets:
            a = a + offsets[n]
        node = nodes[n]
        if n == 0:
            lower = const + input_set.concretize(a)
            return (lower, a) if coefficients else lower
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


def compiled_backward(graph, target, kind, coefficients=False):
    """`backward` for one graph, target node and input-set kind, compiled once and cached on the graph."""
    # generalised shapes after the second batch size or row count: a branch and bound or a radius search sees
    # many, and each retrace costs more than the pass
    return graph.program((target, kind) + (("coefficients",) if coefficients else ()),
                         lambda a, const, bounds, input_set: backward(graph, target, a, const, bounds, input_set,
                                                                      coefficients=coefficients),
                         jit=use_xla(graph, target), reduce_retracing=True)


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


def _refining_flags(graph, kind):
    """`flags(n)`: `(relu_only, unstable_only)` for a node whose bounds a backward pass refines, else None."""
    feeds, exact = _needs_refining(graph)

    def flags(n):
        node = graph.nodes[n]
        if n not in feeds or isinstance(node, Activation) or (kind == "linf" and exact[n]):
            return None  # act outputs: act(bounds of its input) is already the best interval
        return (all(getattr(graph.nodes[c], "activation", None) == "relu" for c in feeds[n]),
                all(_only_unstable_matter(graph, c) for c in feeds[n]))

    return flags


def whole_bounds(graph, input_set):
    """`crown_bounds` with every unit of every refined node bounded, for tracing whole into one program.

    No unit selection and no chunks, so the shapes are fixed and nothing goes back to the host between nodes:
    on small dense networks (ACAS Xu's 6 x 50 units, a batch of 512 boxes) it bounds 1.3x the boxes per second of
    `crown_bounds` (2,552 against 1,941), whose per-node programs and unit selections cost time there. Its memory is
    `[N, 2 x units, units]` per pass: for networks of a few hundred units per layer (`fits`)."""
    flags = _refining_flags(graph, input_set.kind)
    nb = int(input_set.center.shape[0])

    def refine(n, bounds):
        l, u = bounds[n]
        if flags(n) is None:
            return l, u
        node = graph.nodes[n]
        rows = unit_rows(node.size, tf.range(node.size), node.shape, nb)
        lower = backward(graph, n, tf.concat([rows, -rows], 1), tf.zeros([nb, 2 * node.size]), bounds[:n],
                         input_set)
        return (tf.maximum(l, tf.reshape(lower[:, :node.size], tf.shape(l))),
                tf.minimum(u, tf.reshape(-lower[:, node.size:], tf.shape(u))))

    return interval_bounds(graph, input_set, refine)


def fits(graph, batch, memory=MEMORY):
    """Whether `whole_bounds` of `batch` sets keeps its largest coefficient tensor within `memory` bytes."""
    largest = max(node.size for node in graph.nodes)
    return 4 * batch * 2 * largest * largest <= memory


def crown_bounds(graph, input_set, memory=MEMORY, refined=None, constrain=None):
    """CROWN bounds `[(l, u)]` of every node (intermediate bounds by backward passes, chunked).

    `refined`, a dict, receives `{node: flat indices [K]}` of the neurons bounded by backward passes;
    `constrain(n, l, u) -> (l, u)` may tighten each node's bounds before later nodes use them (the
    splits of branch and bound)."""
    largest = max(node.size for node in graph.nodes)
    nb = int(input_set.center.shape[0])
    flags = _refining_flags(graph, input_set.kind)

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
            bounds[n] = constrain(n, *bounds[n])  # units the constraints already fix need no backward pass
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
