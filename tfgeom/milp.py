"""Exact minimum margins of small piecewise-linear networks: a big-M MILP (cvxpy + HiGHS).

For an input set that is a box (L-inf ball ∩ bounds) or a segment, the
feature extractor is written as linear constraints on one variable vector per
node; each unstable ReLU `y = max(x, 0)` with pre-activation bounds `l < 0 < u`
(from IBP, by default tightened by CROWN) gets a binary `d` and

    y >= 0,  y >= x,  y <= u d,  y <= x - l (1 - d)

(leaky ReLU with slope `a`: `y >= x, y >= a x, y <= x - (1-a) l (1-d),
y <= a x + (1-a) u d`), and each max-pooling window with more than one
possible maximiser gets one binary per candidate (`y >= x_k`,
`y <= x_k + (U - l_k)(1 - d_k)`, `sum d = 1`). Stable units are linear. The
minimum of every margin `(w_c - w_j)^T z + b_c - b_j` is then a MILP that
HiGHS solves exactly (to its optimality gap); a solve that does not end
`optimal` is reported with its status and never counts as certified.

Networks are refused above `MAX_UNITS` activation/pooling units (the number
of binaries grows with them and MILP time is exponential in the worst case);
L2 balls are refused (they need a mixed-integer SOCP solver).
"""
import cvxpy as cp
import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfgeom.bounds import crown_bounds, interval_bounds
from tfgeom.errors import InputError, ModelError
from tfgeom.layer_graph import SENTINEL

MAX_UNITS = 4096  # activation + max-pool units of the feature extractor
MIP_GAP = 1e-6
TIME_LIMIT = 120.0  # seconds per solve; a solve stopped by it reports its status and certifies nothing


def check_size(graph, max_units=MAX_UNITS):
    """Raise `ModelError` unless the network is piecewise linear and small enough for the MILP."""
    if not graph.piecewise_linear():
        raise ModelError(
            "method='milp' needs a piecewise-linear network (ReLU/LeakyReLU, max-pooling); this one has "
            "tanh/sigmoid units: use method='crown'"
        )
    units = sum(graph.counts().values())
    if units > max_units:
        raise ModelError(
            f"method='milp' is for small networks: this feature extractor has {units} activation/pooling "
            f"units, above the limit of {max_units} (pass max_units=... to try anyway, or use method='crown')"
        )


def _matrix(node, in_shape):
    """Sparse `[out, in]` matrix of an affine node's linear part."""
    size = int(np.prod(in_shape))
    cols = []
    for start in range(0, size, 1024):
        eye = tf.one_hot(tf.range(start, min(start + 1024, size)), size)
        cols.append(tf.reshape(node.linear(tf.reshape(eye, [-1, *in_shape])), [eye.shape[0], -1]).numpy())
    dense = np.concatenate(cols).T
    dense[np.abs(dense) < 1e-12] = 0.0
    return sp.csr_matrix(dense.astype(np.float64))


class _Program:
    """The MILP of one input set (one example)."""

    def __init__(self, graph, matrices, bounds, kind, center, low, high, direction):
        nodes = graph.nodes
        self.binaries = 0
        cons = []
        x = cp.Variable(nodes[0].size)
        if kind == "segment":
            t = cp.Variable()
            cons += [t >= 0, t <= 1, x == center + t * direction]
        else:
            cons += [x >= low, x <= high]
        values = [x]
        for n, node in enumerate(nodes[1:], 1):
            ins = [values[i] for i in node.inputs]
            if node.kind == "affine":
                values.append(matrices[n] @ ins[0] + node.bias.numpy().reshape(-1).astype(np.float64))
            elif node.kind == "add":
                values.append(sum(ins[1:], ins[0]))
            elif node.kind == "act":
                l, u = (b.reshape(-1) for b in bounds[node.inputs[0]])
                values.append(self._relu(ins[0], l, u, node.slope, cons))
            else:
                l, u = (b.reshape(-1) for b in bounds[node.inputs[0]])
                values.append(self._maxpool(ins[0], l, u, node.window.numpy(), cons))
        self.features = values[-1]
        self.coeffs = cp.Parameter(nodes[-1].size)
        self.problem = cp.Problem(cp.Minimize(self.coeffs @ self.features), cons)

    def _relu(self, x, l, u, slope, cons):
        y = cp.Variable(x.shape[0])
        pos, neg = l >= 0, u <= 0
        unstable = ~(pos | neg)
        if pos.any():
            cons.append(y[pos] == x[pos])
        if neg.any():
            cons.append(y[neg] == slope * x[neg])
        k = int(unstable.sum())
        if k:
            self.binaries += k
            d = cp.Variable(k, boolean=True)
            xi, yi, li, ui = x[unstable], y[unstable], l[unstable], u[unstable]
            cons += [
                yi >= xi,
                yi >= slope * xi,
                yi <= xi - (1 - slope) * cp.multiply(li, 1 - d),
                yi <= slope * xi + (1 - slope) * cp.multiply(ui, d),
            ]
        return y

    def _maxpool(self, x, l, u, window, cons):
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
            self.binaries += len(cand)
            d = cp.Variable(len(cand), boolean=True)
            top = uw[o, cand].max()
            cons += [y[o] >= x[idx], y[o] <= x[idx] + cp.multiply(top - lw[o, cand], 1 - d), cp.sum(d) == 1]
        return y

    def minimise(self, coeffs, time_limit=TIME_LIMIT):
        """`(value, status, features)` of `min coeffs^T z` over the set."""
        self.coeffs.value = np.asarray(coeffs, np.float64)
        try:
            value = self.problem.solve(
                solver=cp.HIGHS, mip_rel_gap=MIP_GAP, mip_abs_gap=1e-9, warm_start=False,
                time_limit=float(time_limit)
            )
        except cp.error.SolverError as err:
            return -np.inf, f"solver error: {err}", None
        status = self.problem.status
        if status != cp.OPTIMAL:
            return -np.inf, status, None
        return float(value), status, self.features.value


def exact_margins(graph, weights, bias, input_set, cls, max_units=MAX_UNITS, tighten=True, time_limit=TIME_LIMIT):
    """Exact minimum margins `[N, L]` (+inf at `j = c`) and per-example statuses.

    Args:
        graph: the `LayerGraph`.
        weights: the head's `W [D, L]`.
        bias: the head's `b [L]`.
        input_set: a `tfgeom.bounds.InputSet` of kind `linf` or `segment`.
        cls: `[N]` classes to certify.
        tighten: take the big-M constants from CROWN's pre-activation bounds
            (intersected with IBP's) instead of IBP's alone: still valid
            bounds, so the MILP stays exact, with fewer binaries and a
            tighter relaxation. Defaults to `True`.
        time_limit: seconds per HiGHS solve (`TIME_LIMIT`); a solve that
            hits it reports status `user_limit`/`optimal_inaccurate` and a
            margin of `-inf`.

    Returns:
        `(margins [N, L], statuses [N], binaries [N])`; a margin is `-inf`
        when its solve did not end optimal (the status says why).
    """
    check_size(graph, max_units)
    if input_set.kind == "l2":
        raise InputError(
            "method='milp' supports norm='linf' and segments; an L2 ball needs a mixed-integer SOCP "
            "solver: use method='crown' for L2"
        )
    found = crown_bounds(graph, input_set) if tighten else interval_bounds(graph, input_set)
    bounds = [(l.numpy().astype(np.float64), u.numpy().astype(np.float64)) for l, u in found]
    matrices = {
        n: _matrix(node, graph.nodes[node.inputs[0]].shape)
        for n, node in enumerate(graph.nodes)
        if node.kind == "affine"
    }
    w, b = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    n_ex, classes = len(cls), w.shape[1]
    margins = np.full((n_ex, classes), np.inf)
    statuses, binaries = [], []
    direction = None if input_set.direction is None else input_set.direction.numpy().reshape(n_ex, -1)
    centre = input_set.center.numpy().reshape(n_ex, -1).astype(np.float64)
    low = input_set.low.numpy().reshape(n_ex, -1).astype(np.float64)
    high = input_set.high.numpy().reshape(n_ex, -1).astype(np.float64)
    for i in range(n_ex):
        per = [(bl[i], bu[i]) for bl, bu in bounds]
        prog = _Program(graph, matrices, per, input_set.kind, centre[i], low[i], high[i],
                        None if direction is None else direction[i].astype(np.float64))
        worst = "optimal"
        c = int(cls[i])
        for j in range(classes):
            if j == c:
                continue
            value, status, _ = prog.minimise(w[:, c] - w[:, j], time_limit)
            margins[i, j] = value + b[c] - b[j]
            if status != cp.OPTIMAL:
                worst = status
        statuses.append(worst)
        binaries.append(prog.binaries)
    return margins, statuses, binaries
