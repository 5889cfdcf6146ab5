"""Bound propagation, one class per operator of the feature extractor.

Each operator of a `tfgeom.verify.graph.LayerGraph` carries its own four
propagations (the pattern of auto_LiRPA's `Bound` classes and decomon's
layers), so that adding a Keras layer means writing (or reusing) one class:

- `evaluate(xs)`: the value of the node from its inputs' values `[N, *in_shape]`;
- `interval(ins)`: IBP, `(l, u)` of the node from its inputs' `(l, u)`;
- `backward(a, const, parent)`: CROWN's step, with `a [N, S, *shape]` the
  coefficients of a linear bound of the node and `parent` the `(l, u)` of its
  (first) input; returns the new constant `[N, S]` and `[(input, coeffs)]`;
- `forward(ins, parent, fold)`: forward linear bounds, with `ins` the inputs'
  `((A_lo, c_lo), (A_up, c_up))`, `A [N, m, *shape]`, `c [N, *shape]`;
- `milp(program, ins, parent, cons)`: the cvxpy expression of the node from
  its inputs' expressions, appending constraints (big-M for non-linear units).

Shapes exclude the batch axis; `N` is the batch of input sets, `S` the number
of linear functions bounded at once, `m` the dimensions of the input set.
"""
import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfgeom.errors import ModelError

SENTINEL = -1e30  # value of padded positions in max-pooling windows


def _safe_div(a, b):
    ok = b > 1e-12
    return tf.where(ok, a / tf.where(ok, b, 1.0), 0.0)


class Operator:
    """Base class: a node reading `inputs` (node indices) with output `shape`, from Keras layer `name`."""

    piecewise_linear = True  # for the MILP and for choosing finite-difference HVPs
    milp_encoded = True  # whether `milp` encodes the operator (the MILP and branch and bound's leaves need it)
    units = False  # activation/pooling units count towards the MILP size limit

    def __init__(self, name, inputs, shape):
        self.name = name
        self.inputs = tuple(inputs)
        self.shape = tuple(int(d) for d in shape)

    @property
    def size(self):
        """Number of scalar outputs."""
        return int(np.prod(self.shape))

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, inputs={self.inputs}, shape={self.shape})"


class Input(Operator):
    """The input node (node 0); input sets concretise the bounds that reach it."""


class Affine(Operator):
    """`y = L(x) + c`: Dense, Conv, BatchNormalization, average pooling, reshapes, Rescaling.

    Args:
        linear: `x [M, *in_shape] -> L(x) [M, *shape]`.
        abs_linear: `r -> |L|(r)` (the same map with absolute weights).
        transpose: `a [M, *shape] -> L^T a [M, *in_shape]`.
        bias: `c` with shape `shape`.
        diagonal: the map scales or reshapes element-wise (IBP is exact on boxes through it).
    """

    conv = None  # a `tfgeom.verify.patches.ConvGeometry` for 2-D convolutions (CROWN's patch form)

    def __init__(self, name, inputs, shape, linear, abs_linear, transpose, bias, diagonal=False):
        super().__init__(name, inputs, shape)
        self.linear, self.abs_linear, self.transpose = linear, abs_linear, transpose
        self.bias = bias
        self.diagonal = diagonal

    def evaluate(self, xs):
        return self.linear(xs[0]) + self.bias

    def interval(self, ins):
        (l, u), = ins
        mid = self.linear((l + u) / 2) + self.bias
        rad = self.abs_linear((u - l) / 2)
        return mid - rad, mid + rad

    def backward(self, a, const, parent, in_shape):
        nb, s = tf.shape(a)[0], tf.shape(a)[1]
        const = const + tf.reduce_sum(a * self.bias, list(range(2, a.shape.rank)))
        passed = self.transpose(tf.reshape(a, [-1, *self.shape]))
        return const, [(self.inputs[0], tf.reshape(passed, [nb, s, *in_shape]))]

    def forward(self, ins, parent, fold):
        (a_lo, c_lo), (a_up, c_up) = ins[0]
        # centre and radius are mapped once for both ends; equal ends (before any relaxation) have radius 0
        a_mid = fold(self.linear, (a_lo + a_up) / 2)
        a_rad = 0.0 if a_lo is a_up else fold(self.abs_linear, (a_up - a_lo) / 2)
        c_mid = self.linear((c_lo + c_up) / 2) + self.bias
        c_rad = 0.0 if c_lo is c_up else self.abs_linear((c_up - c_lo) / 2)
        return (a_mid - a_rad, c_mid - c_rad), (a_mid + a_rad, c_mid + c_rad)

    def matrix(self, in_shape):
        """Sparse `[out, in]` matrix of the linear part (for the MILP)."""
        size = int(np.prod(in_shape))
        cols = []
        for start in range(0, size, 1024):
            eye = tf.one_hot(tf.range(start, min(start + 1024, size)), size)
            cols.append(tf.reshape(self.linear(tf.reshape(eye, [-1, *in_shape])), [eye.shape[0], -1]).numpy())
        dense = np.concatenate(cols).T
        dense[np.abs(dense) < 1e-12] = 0.0
        return sp.csr_matrix(dense.astype(np.float64))

    def milp(self, program, ins, parent, cons):
        matrix = program.matrix(self)
        return matrix @ ins[0] + self.bias.numpy().reshape(-1).astype(np.float64)


class Add(Operator):
    """The sum of several nodes of one shape (residual `Add`)."""

    def evaluate(self, xs):
        return tf.add_n(xs)

    def interval(self, ins):
        return tf.add_n([b[0] for b in ins]), tf.add_n([b[1] for b in ins])

    def backward(self, a, const, parent, in_shape):
        return const, [(i, a) for i in self.inputs]

    def forward(self, ins, parent, fold):
        return tuple((tf.add_n([i[k][0] for i in ins]), tf.add_n([i[k][1] for i in ins])) for k in (0, 1))

    def milp(self, program, ins, parent, cons):
        return sum(ins[1:], ins[0])


class Activation(Operator):
    """An element-wise monotone activation with a linear relaxation `al x + bl <= f(x) <= au x + bu`."""

    units = True
    activation = ""

    def relaxation(self, l, u):
        """`(al, bl, au, bu)` valid for `x` in `[l, u]` (element-wise), every slope >= 0."""
        raise NotImplementedError

    def interval(self, ins):
        (l, u), = ins
        return self.evaluate([l]), self.evaluate([u])

    def backward(self, a, const, parent, in_shape):
        const, passed = self.backward_relaxed(a, const, [r[:, None] for r in self.relaxation(*parent)])
        return const, [(self.inputs[0], passed)]

    def backward_relaxed(self, a, const, relaxation):
        """CROWN's step with the relaxation `(al, bl, au, bu)` already laid out like `a` (broadcastable):
        positive coefficients take the lower line, negative ones the upper line. Returns `(const, coeffs)`."""
        al, bl, au, bu = relaxation
        ap, an = tf.maximum(a, 0.0), tf.minimum(a, 0.0)
        const = const + tf.reduce_sum(ap * bl + an * bu, list(range(2, a.shape.rank)))
        return const, ap * al + an * au

    def forward(self, ins, parent, fold):
        (a_lo, c_lo), (a_up, c_up) = ins[0]
        al, bl, au, bu = self.relaxation(*parent)
        return (a_lo * al[:, None], c_lo * al + bl), (a_up * au[:, None], c_up * au + bu)


class ReLU(Activation):
    """ReLU, or leaky ReLU with `slope` > 0: CROWN's adaptive lower slope, the chord above."""

    def __init__(self, name, inputs, shape, slope=0.0):
        super().__init__(name, inputs, shape)
        self.slope = float(slope)
        self.activation = "leaky_relu" if self.slope else "relu"

    def evaluate(self, xs):
        x = xs[0]
        return tf.nn.relu(x) if not self.slope else tf.where(x >= 0, x, self.slope * x)

    def relaxation(self, l, u):
        alpha = self.slope
        pos, neg = l >= 0, u <= 0
        chord = _safe_div(u - alpha * l, u - l)
        au = tf.where(pos, 1.0, tf.where(neg, alpha, chord))
        bu = tf.where(pos | neg, 0.0, alpha * l - chord * l)
        al = tf.where(pos, 1.0, tf.where(neg, alpha, self.adaptive_slope(l, u)))
        return al, tf.zeros_like(l), au, bu

    def adaptive_slope(self, l, u):
        """CROWN's lower slope of an unstable unit: 1 when `u > -l`, else the negative-side slope."""
        return tf.where(u > -l, 1.0, self.slope)

    def backward_alpha(self, a, const, parent, alpha):
        """CROWN's step with the lower slopes of unstable units set to `alpha` (`[N, S, *shape]`, each in
        `[slope, 1]`; alpha-CROWN's variables): any such slope gives a valid lower line."""
        l, u = parent
        _, bl, au, bu = self.relaxation(l, u)
        al = tf.where((l >= 0)[:, None], 1.0, tf.where((u <= 0)[:, None], self.slope, alpha))
        return self.backward_relaxed(a, const, (al, bl[:, None], au[:, None], bu[:, None]))

    def milp(self, program, ins, parent, cons):
        import cvxpy as cp  # only the exact MILP needs it: IBP and CROWN do not load it

        x = ins[0]
        l, u = (b.reshape(-1) for b in parent)
        slope = self.slope
        y = cp.Variable(x.shape[0])
        pos, neg = l >= 0, u <= 0
        unstable = ~(pos | neg)
        # stable units are linear; their sign constraints are implied by valid bounds, and enforce the
        # splits of a branch-and-bound subdomain (bounds clamped at 0)
        if pos.any():
            cons += [y[pos] == x[pos], x[pos] >= l[pos]]
        if neg.any():
            cons += [y[neg] == slope * x[neg], x[neg] <= u[neg]]
        k = int(unstable.sum())
        if k:
            program.binaries += k
            d = cp.Variable(k, boolean=True)
            xi, yi, li, ui = x[unstable], y[unstable], l[unstable], u[unstable]
            cons += [
                yi >= xi,
                yi >= slope * xi,
                yi <= xi - (1 - slope) * cp.multiply(li, 1 - d),
                yi <= slope * xi + (1 - slope) * cp.multiply(ui, d),
            ]
        return y


class ThresholdReLU(Activation):
    """Keras' `ReLU(negative_slope, max_value, threshold)` in general: `slope (x - t)` for `x <= t`, then
    `min(x, top)` for `x > t` (a jump from 0 to `min(t, top)` at the threshold `t >= 0`).

    Monotone and piecewise linear with breakpoints `t` and `top`, so the
    extremes of `f(x) - lam x` over `[l, u]` lie among the ends, the
    breakpoints and the one-sided limits at the jump: both lines take the
    chord's slope `lam` and those extremes as intercepts (exact on an
    interval inside one piece, up to a float32 allowance). The MILP is not
    offered (the jump needs its own encoding); IBP, CROWN and forward bounds are.
    """

    def __init__(self, name, inputs, shape, threshold=0.0, slope=0.0, top=None):
        super().__init__(name, inputs, shape)
        self.threshold, self.slope = float(threshold), float(slope)
        self.top = None if top is None else float(top)
        self.activation = "threshold_relu"

    def evaluate(self, xs):
        x, t = xs[0], self.threshold
        above = x if self.top is None else tf.minimum(x, self.top)
        return tf.where(x > t, above, self.slope * (x - t))

    def relaxation(self, l, u):
        t = self.threshold
        jump = t if self.top is None else min(t, self.top)
        fl, fu = self.evaluate([l]), self.evaluate([u])
        lam = _safe_div(fu - fl, u - l)
        inside_t = (l <= t) & (t <= u)
        points = [(l, fl, True), (u, fu, True),
                  (tf.fill(tf.shape(l), t), tf.zeros_like(l), inside_t),
                  (tf.fill(tf.shape(l), t), tf.fill(tf.shape(l), jump), inside_t)]
        if self.top is not None and self.top > t:
            points.append((tf.fill(tf.shape(l), self.top), tf.fill(tf.shape(l), self.top),
                           (l <= self.top) & (self.top <= u)))
        gs = [(v - lam * x, tf.broadcast_to(ok, tf.shape(l))) for x, v, ok in points]
        low = tf.reduce_min(tf.stack([tf.where(ok, g, np.inf) for g, ok in gs]), 0)
        high = tf.reduce_max(tf.stack([tf.where(ok, g, -np.inf) for g, ok in gs]), 0)
        slack = 1e-6 * (1.0 + tf.maximum(tf.abs(low), tf.abs(high)))  # float32 rounding of f - lam x
        return lam, low - slack, lam, high + slack

    milp_encoded = False

    def milp(self, program, ins, parent, cons):
        raise ModelError(f"ReLU layer '{self.name}' has a threshold (or max_value with negative_slope), which "
                         "method='milp' does not encode; use method='crown', 'alpha-crown' or 'ibp'")


class SShaped(Activation):
    """tanh or sigmoid: `f'` is unimodal with its maximum at 0, so `f(x) - lam x` with
    `lam = min(f'(l), f'(u))` is non-decreasing on `[l, u]` (DeepPoly's bounds)."""

    piecewise_linear = False

    def __init__(self, name, inputs, shape, activation):
        super().__init__(name, inputs, shape)
        self.activation = activation

    def evaluate(self, xs):
        return tf.tanh(xs[0]) if self.activation == "tanh" else tf.sigmoid(xs[0])

    def relaxation(self, l, u):
        fl, fu = self.evaluate([l]), self.evaluate([u])
        if self.activation == "tanh":
            dl, du = 1 - fl**2, 1 - fu**2
        else:
            dl, du = fl * (1 - fl), fu * (1 - fu)
        lam = tf.minimum(dl, du)
        return lam, fl - lam * l, lam, fu - lam * u


class Smooth(Activation):
    """A smooth activation `f` with `|f''| <= curvature` (softplus, silu/swish, elu, gelu): sound linear bounds
    on any interval without case analysis.

    Both lines take the chord's slope `lam = (f(u) - f(l)) / (u - l)`; their
    intercepts are the extremes of `g = f - lam x` on `[l, u]`, read on a grid
    of `POINTS` points spaced `h` and widened by `curvature h^2 / 8` (between
    two grid points `g` stays within that of its chord, since `|g''| <= curvature`)
    plus a float32 rounding allowance. For convex `f` (softplus, elu) the
    lower line is then the tangent parallel to the chord and the upper line
    the chord, up to the widening. Interval bounds are the same extremes of `f`.
    """

    piecewise_linear = False
    POINTS = 17
    FUNCTIONS = {
        "softplus": (tf.nn.softplus, 0.25),
        "silu": (tf.nn.silu, 0.5),
        "elu": (tf.nn.elu, 1.0),  # alpha = 1: C1 at 0, f'' jumps from 1 to 0
        "gelu": (lambda x: tf.nn.gelu(x, approximate=False), 0.8),
        "gelu_tanh": (lambda x: tf.nn.gelu(x, approximate=True), 0.8),
    }

    def __init__(self, name, inputs, shape, activation):
        super().__init__(name, inputs, shape)
        self.activation = activation
        self.function, self.curvature = self.FUNCTIONS[activation]

    def evaluate(self, xs):
        return self.function(xs[0])

    def _extremes(self, l, u, lam):
        """`(min, max)` of `f(x) - lam x` over `[l, u]` (sound, see the class)."""
        t = tf.linspace(0.0, 1.0, self.POINTS)
        x = l[..., None] + (u - l)[..., None] * t
        g = self.function(x) - lam[..., None] * x
        h = (u - l) / (self.POINTS - 1)
        slack = self.curvature * h * h / 8 + 1e-6 * (1.0 + tf.reduce_max(tf.abs(g), -1))
        return tf.reduce_min(g, -1) - slack, tf.reduce_max(g, -1) + slack

    def interval(self, ins):
        (l, u), = ins
        return self._extremes(l, u, tf.zeros_like(l))

    def relaxation(self, l, u):
        lam = _safe_div(self.function(u) - self.function(l), u - l)
        low, high = self._extremes(l, u, lam)
        return lam, low, lam, high

    def forward(self, ins, parent, fold):
        (a_lo, c_lo), (a_up, c_up) = ins[0]
        al, bl, au, bu = self.relaxation(*parent)
        # a negative slope (silu, gelu below their minimum) turns the input's upper bound into a lower one
        pos_l, pos_u = al >= 0, au >= 0
        lower = (tf.where(pos_l[:, None], a_lo, a_up) * al[:, None], tf.where(pos_l, c_lo, c_up) * al + bl)
        upper = (tf.where(pos_u[:, None], a_up, a_lo) * au[:, None], tf.where(pos_u, c_up, c_lo) * au + bu)
        return lower, upper


class Concatenate(Operator):
    """Inputs joined along `axis` (of the shape without batch); `sizes` their extents along it."""

    def __init__(self, name, inputs, shape, axis, sizes):
        super().__init__(name, inputs, shape)
        self.axis, self.sizes = axis, list(sizes)

    def evaluate(self, xs):
        return tf.concat(xs, self.axis + 1)

    def interval(self, ins):
        return tf.concat([b[0] for b in ins], self.axis + 1), tf.concat([b[1] for b in ins], self.axis + 1)

    def backward(self, a, const, parent, in_shape):
        return const, list(zip(self.inputs, tf.split(a, self.sizes, self.axis + 2)))

    def forward(self, ins, parent, fold):
        return tuple((tf.concat([i[k][0] for i in ins], self.axis + 2),
                      tf.concat([i[k][1] for i in ins], self.axis + 1)) for k in (0, 1))

    def milp(self, program, ins, parent, cons):
        import cvxpy as cp  # only the exact MILP needs it: IBP and CROWN do not load it

        positions = np.split(np.arange(self.size).reshape(self.shape), np.cumsum(self.sizes)[:-1], self.axis)
        y = cp.Variable(self.size)
        for x, pos in zip(ins, positions):
            cons.append(y[pos.reshape(-1)] == x)
        return y


class MaxPool(Operator):
    """A maximum over windows, stored as an index table `window [outputs, k]` into the flattened input
    (padded positions point at the extra entry `size`)."""

    units = True
    conv = None  # a `tfgeom.verify.patches.PoolGeometry` for 2-D pooling (CROWN's patch form)

    def __init__(self, name, inputs, shape, window):
        super().__init__(name, inputs, shape)
        self.window = window

    def windows(self, x, fill=SENTINEL):
        """`[N, outputs, k]` window values of the input `x` (padding = `fill`)."""
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        flat = tf.concat([flat, tf.fill([tf.shape(x)[0], 1], tf.cast(fill, x.dtype))], 1)
        return tf.gather(flat, self.window, axis=1)

    def evaluate(self, xs):
        return tf.reshape(tf.reduce_max(self.windows(xs[0]), -1), [-1, *self.shape])

    def interval(self, ins):
        (l, u), = ins
        return self.evaluate([l]), self.evaluate([u])

    def relaxation(self, l, u):
        """`(select_l, select_u, bu)` `[N, out, k]`/`[N, out]`: `sum select_l x <= max <= sum select_u x + bu`.

        The lower bound selects the window entry with the largest lower bound;
        the upper bound is that entry when it dominates the window, else the
        window's largest upper bound.
        """
        wl, wu = self.windows(l), self.windows(u)
        k = tf.shape(wl)[-1]
        best = tf.argmax(wl, -1, output_type=tf.int32)
        select = tf.one_hot(best, k)
        best_l = tf.reduce_max(wl, -1)
        rest_u = tf.reduce_max(tf.where(select > 0, SENTINEL, wu), -1)
        stable = best_l >= rest_u
        select_u = tf.where(stable[..., None], select, 0.0)
        bu = tf.where(stable, 0.0, tf.reduce_max(wu, -1))
        return select, select_u, bu

    def _scatter(self, coeff, in_shape):
        """Sum window coefficients `[N, S, out, k]` back onto the flattened input positions."""
        nb, s = tf.shape(coeff)[0], tf.shape(coeff)[1]
        size = int(np.prod(in_shape))
        idx = tf.broadcast_to(self.window, tf.shape(coeff)[2:])
        flat_coeff = tf.transpose(tf.reshape(coeff, [nb * s, -1]))  # [out*k, N*S]
        summed = tf.math.unsorted_segment_sum(flat_coeff, tf.reshape(idx, [-1]), size + 1)
        return tf.reshape(tf.transpose(summed[:size]), [nb, s, *in_shape])

    def backward(self, a, const, parent, in_shape):
        select, select_u, bu = self.relaxation(*parent)
        nb, s = tf.shape(a)[0], tf.shape(a)[1]
        flat = tf.reshape(a, [nb, s, -1])
        ap, an = tf.maximum(flat, 0.0), tf.minimum(flat, 0.0)
        const = const + tf.einsum("nso,no->ns", an, bu)
        coeff = ap[..., None] * select[:, None] + an[..., None] * select_u[:, None]  # [N,S,out,k]
        return const, [(self.inputs[0], self._scatter(coeff, in_shape))]

    def forward(self, ins, parent, fold):
        (a_lo, c_lo), (a_up, c_up) = ins[0]
        select, select_u, bu = self.relaxation(*parent)
        best = tf.reduce_sum(tf.cast(select, tf.int32) * self.window, -1)  # [N, out] flat input index
        stable = tf.reduce_sum(select_u, -1) > 0
        nb, m = tf.shape(a_lo)[0], tf.shape(a_lo)[1]

        def pick(a, c):
            a = tf.gather(tf.reshape(a, [nb, m, -1]), best, axis=2, batch_dims=1)
            c = tf.gather(tf.reshape(c, [nb, -1]), best, batch_dims=1)
            return tf.reshape(a, [nb, m, *self.shape]), tf.reshape(c, [-1, *self.shape])

        lo = pick(a_lo, c_lo)
        up_a, up_c = pick(a_up, c_up)
        shape = [-1, *self.shape]
        keep = tf.reshape(stable, shape)
        return lo, (tf.where(keep[:, None], up_a, 0.0), tf.where(keep, up_c, tf.reshape(bu, shape)))

    def milp(self, program, ins, parent, cons):
        import cvxpy as cp  # only the exact MILP needs it: IBP and CROWN do not load it

        x = ins[0]
        l, u = (b.reshape(-1) for b in parent)
        window = self.window.numpy()
        size = x.shape[0]
        y = cp.Variable(window.shape[0])
        valid = window < size
        lw = np.where(valid, l[np.minimum(window, size - 1)], SENTINEL)
        uw = np.where(valid, u[np.minimum(window, size - 1)], SENTINEL)
        for o in range(window.shape[0]):
            best = int(np.argmax(lw[o]))
            cand = [best] + [k for k in range(window.shape[1]) if k != best and valid[o, k] and uw[o, k] > lw[o, best]]
            idx = window[o, cand]
            if len(cand) == 1:
                cons.append(y[o] == x[int(idx[0])])
                continue
            program.binaries += len(cand)
            d = cp.Variable(len(cand), boolean=True)
            top = uw[o, cand].max()
            cons += [y[o] >= x[idx], y[o] <= x[idx] + cp.multiply(top - lw[o, cand], 1 - d), cp.sum(d) == 1]
        return y
