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
from typing import NamedTuple

import numpy as np

from tfgeom.verify.crown import crown_bounds
from tfgeom.verify.ibp import interval_bounds
from tfgeom.errors import ModelError, TfgeomError
from tfgeom.verify.operators import Affine

MAX_UNITS = 4096  # activation + max-pool units of the feature extractor
MIP_GAP = 1e-6
TIME_LIMIT = 120.0  # seconds per solve; a solve stopped by it reports its status and certifies nothing
# Pre-activation bounds come from float32 propagation; the true activations can lie outside them by a few
# float32 roundings of the values' scale (1e-8 to 1e-7 seen on small CNNs). An exact solver given them as hard
# constraints would optimise over a set that excludes the true minimiser (an overestimated margin, or
# "infeasible" on a set that is not empty), so every bound is widened by this fraction of its node's scale.
ROUNDING = 1e-5


def widened(bounds):
    """`[(l, u)]` of one example's nodes in float64, each widened by `ROUNDING` times its node's scale
    (the largest `|l|`, `|u|` of the node, at least 1): a sound margin for float32 rounding."""
    out = []
    for l, u in bounds:
        l, u = np.asarray(l, np.float64), np.asarray(u, np.float64)
        pad = ROUNDING * max(1.0, float(np.max(np.abs(l), initial=0.0)), float(np.max(np.abs(u), initial=0.0)))
        out.append((l - pad, u + pad))
    return out


def check_size(graph, max_units=MAX_UNITS):
    """Raise `ModelError` unless the network is piecewise linear and small enough for the MILP."""
    if not graph.piecewise_linear():
        raise ModelError(
            "method='milp' needs a piecewise-linear network (ReLU/LeakyReLU, max-pooling); this one has "
            "smooth units (tanh, sigmoid, softplus, silu, elu or gelu): use method='crown'"
        )
    check_encoded(graph, "method='milp'")
    units = sum(graph.counts().values())
    if units > max_units:
        raise ModelError(
            f"method='milp' is for small networks: this feature extractor has {units} activation/pooling "
            f"units, above the limit of {max_units} (pass max_units=... to try anyway, or use method='crown')"
        )


def check_encoded(graph, what):
    """Raise `ModelError` naming the first operator the MILP does not encode (before any work of `what`)."""
    for node in graph.nodes:
        if not node.milp_encoded:
            raise ModelError(f"layer '{node.name}' is a ReLU with a threshold (or max_value with negative_slope), "
                             f"which {what} does not encode in its exact linear programs; use method='crown', "
                             "'alpha-crown' or 'ibp'")


class Program:
    """The MILP of one input set (example `i` of `input_set`): each operator adds its own constraints.

    `input` is the cvxpy variable of the (flattened) input; `features` that of the features."""

    def __init__(self, graph, matrices, bounds, input_set, i):
        import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

        nodes = graph.nodes
        bounds = widened(bounds)
        self.binaries = 0
        self._matrices = matrices
        x = cp.Variable(nodes[0].size)
        self.input = x
        cons = list(input_set.milp_constraints(x, i))
        values = [x]
        for node in nodes[1:]:
            parent = bounds[node.inputs[0]]
            values.append(node.milp(self, [values[j] for j in node.inputs], parent, cons))
        self.features = values[-1]
        self.coeffs = cp.Parameter(nodes[-1].size)
        self.problem = cp.Problem(cp.Minimize(self.coeffs @ self.features), cons)

    def matrix(self, node):
        """The sparse matrix of an affine operator (built once per graph and reused by every example)."""
        return self._matrices[id(node)]

    def minimise(self, coeffs, time_limit=TIME_LIMIT):
        """`(value, status, features)` of `min coeffs^T z` over the set."""
        import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

        from tfgeom.runtime.backend import solver_output_silenced

        self.coeffs.value = np.asarray(coeffs, np.float64)
        try:
            with solver_output_silenced():
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


def affine_matrices(graph):
    """`{id(node): sparse matrix}` of the graph's affine operators (built once, shared by every program)."""
    return {id(node): node.matrix(graph.nodes[node.inputs[0]].shape)
            for node in graph.nodes if isinstance(node, Affine)}


class ExactMargins(NamedTuple):
    """Exact minimum margins of a batch of input sets.

    Fields:
        margins: `[N, L]` minima of `f_c - f_j` (`+inf` at `j = c`; `-inf` where a solve did not end optimal).
        status: `[N]` the worst solver status per example (`"optimal"` or why not).
        binaries: `[N]` binary variables of each example's MILP.
    """

    margins: np.ndarray
    status: list
    binaries: list


def exact_margins(graph, weights, bias, input_set, cls, max_units=MAX_UNITS, tighten=True, time_limit=TIME_LIMIT):
    """Exact minimum margins `[N, L]` (+inf at `j = c`) and per-example statuses.

    Args:
        graph: the `LayerGraph`.
        weights: the head's `W [D, L]`.
        bias: the head's `b [L]`.
        input_set: a `tfgeom.verify.sets.LinfBall` or `Segment` (an `L2Ball` is refused).
        cls: `[N]` classes to certify.
        tighten: take the big-M constants from CROWN's pre-activation bounds
            (intersected with IBP's) instead of IBP's alone: still valid
            bounds, so the MILP stays exact, with fewer binaries and a
            tighter relaxation. Defaults to `True`.
        time_limit: seconds per HiGHS solve (`TIME_LIMIT`); a solve that
            hits it reports status `user_limit`/`optimal_inaccurate` and a
            margin of `-inf`.

    Returns:
        `ExactMargins`; a margin is `-inf` when its solve did not end optimal
        (the status says why).
    """
    import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

    check_size(graph, max_units)
    input_set.milp_constraints(cp.Variable(graph.nodes[0].size), 0)  # refuses sets the MILP cannot express
    found = crown_bounds(graph, input_set) if tighten else interval_bounds(graph, input_set)
    bounds = [(l.numpy().astype(np.float64), u.numpy().astype(np.float64)) for l, u in found]
    matrices = affine_matrices(graph)
    w, b = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    n_ex, classes = len(cls), w.shape[1]
    margins = np.full((n_ex, classes), np.inf)
    statuses, binaries = [], []
    for i in range(n_ex):
        per = [(bl[i], bu[i]) for bl, bu in bounds]
        prog = Program(graph, matrices, per, input_set, i)
        worst = "optimal"
        c = int(cls[i])
        for j in range(classes):
            if j == c:
                continue
            value, status, _ = prog.minimise(w[:, c] - w[:, j], time_limit)
            if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):  # the set holds its centre or x_a: not empty
                raise TfgeomError(f"the MILP solver called the input set of example {i} infeasible, but it is not "
                                  "empty (numerical trouble in the solver); use method='crown' or 'bab' for it")
            margins[i, j] = value + b[c] - b[j]
            if status != cp.OPTIMAL:
                worst = status
        statuses.append(worst)
        binaries.append(prog.binaries)
    return ExactMargins(margins, statuses, binaries)
