"""Exact distance from queries to the convex hull of many points, by column generation.

The distance from `q` to `conv(Z)` solves
`min_a ||Z^T a - q||^2  s.t.  a >= 0, sum(a) = 1` (Yousefzadeh, arXiv 2202.04052). With
thousands of points the direct problem is slow, but its solution is supported
on at most `D + 1` of them. The engine therefore

1. solves the problem exactly on a small working set per query (its nearest
   points). On a working set `S` with `P = Z_S - q` the problem is equivalent
   to the non-negative least-squares problem
   `min_{u >= 0} ||[P^T; 1^T] u - [0; 1]||^2`: its KKT conditions are those of
   the hull problem for `a = u / sum(u)`. SciPy's Lawson-Hanson active-set NNLS
   solves it exactly in well under a millisecond, where a cvxpy solve costs
   8-10 ms of overhead (measured; cvxpy solves the reference problem and the
   LP membership check below);
2. checks optimality over *all* points with one matrix product: the
   projection `p` is optimal iff `(z_i - p)^T (q - p) <= 0` for every `i`;
3. keeps the support, adds the worst violators, and repeats.

On exit every query satisfies the optimality condition over all points (to
`tol`), so the result is the exact projection, not an approximation.

Memory: the points are copied once, centred and scaled, in float64 when that
copy fits the memory budget (`tfgeom.runtime.resources.memory_budget`). Otherwise (224x224x3
images: 1.2 MB per point in float64) the engine keeps a reference to the
caller's array and streams it in row chunks, normalising each chunk as it
goes: every pass over all points (nearest points, the optimality check) is a
chunked matrix product, and a working set gathers only its own rows. The
results are the same; only the peak memory differs.
"""
from typing import NamedTuple

import numpy as np
from scipy.optimize import nnls

from tfgeom import execution
from tfgeom.errors import InputError, TfgeomError
from tfgeom.runtime.resources import memory_budget


INSIDE = 1e-9  # distance (in coordinates scaled to max-abs 1) below which q is in the hull


class HullResult(NamedTuple):
    """Distances from queries to a convex hull (NumPy).

    Fields:
        distance: `[m]` Euclidean distance to the hull.
        projection: `[m, D]` the closest point of the hull.
        support: list of `m` index arrays: points with positive weight.
        weights: list of `m` arrays: their weights (sum 1).
        rounds: `[m]` column-generation rounds used.
    """

    distance: np.ndarray
    projection: np.ndarray
    support: list
    weights: list
    rounds: np.ndarray


class HullEngine:
    """Column-generation engine for distances to `conv(points)`.

    Args:
        points: `[n, D]` the points whose hull is measured.
        working_size: initial working-set size per query. Defaults to `32`;
            doubled automatically when a support fills half of it.
        tol: optimality tolerance: stop when no point outside the working
            set has `(z_i - p)^T (q - p) > tol ||q - p||` (coordinates scaled to
            max-abs 1). Defaults to `1e-6`.
        max_rounds: column-generation rounds at most. Defaults to `50`.
        memory_budget: bytes the normalised float64 copy may take; above it the
            points are streamed in chunks of this size. Defaults to `None`:
            `tfgeom.runtime.resources.memory_budget()`.

    Example:
        >>> engine = HullEngine(train_features)  # doctest: +SKIP
        >>> engine.distance(test_features).distance  # doctest: +SKIP
    """

    def __init__(self, points, working_size=None, tol=1e-6, max_rounds=50, memory_budget=None):
        if not isinstance(points, np.ndarray) or points.dtype.kind != "f":
            points = np.asarray(points, np.float64)
        if points.ndim != 2 or len(points) == 0:
            raise InputError(f"points must be a non-empty [n, D] array; got shape {points.shape}")
        n, dim = points.shape
        budget = _budget(memory_budget)
        self.chunk = max(1, min(n, budget // (8 * dim * 4)))  # rows per streamed chunk (a few float64 temporaries)
        self.streamed = n * dim * 8 > budget
        self.center, sq_max = self._moments(points)
        # Work in centred, scaled coordinates for conditioning; distances scale back.
        self.scale = sq_max or 1.0
        if self.streamed:
            self._data = points  # the caller's array, normalised chunk by chunk
        else:
            self._data = (points.astype(np.float64) - self.center) / self.scale
            self.chunk = n
        self.sq_norms = np.concatenate([np.einsum("nd,nd->n", c, c) for _, c in self._chunks()])
        self.radius = float(np.sqrt(self.sq_norms.max())) * self.scale  # largest distance from the centre
        self.n, self.dim = n, dim
        self.working_size = min(n, working_size or 32)
        self.tol = tol
        self.max_rounds = max_rounds

    def _moments(self, points):
        """Mean and max-abs deviation of the points, in chunks; refuses NaN/Inf."""
        n = len(points)
        total = np.zeros(points.shape[1])
        for i in range(0, n, self.chunk):
            block = np.asarray(points[i : i + self.chunk], np.float64)
            if not np.all(np.isfinite(block)):
                raise InputError("points contain NaN/Inf; clean them first")
            total += block.sum(axis=0)
        center = total / n
        deviation = max(float(np.abs(np.asarray(points[i : i + self.chunk], np.float64) - center).max())
                        for i in range(0, n, self.chunk))
        return center, deviation

    def _normalise(self, rows):
        return rows if not self.streamed else (np.asarray(rows, np.float64) - self.center) / self.scale

    def _chunks(self):
        """`(start, normalised rows)` over all points, `self.chunk` rows at a time."""
        for i in range(0, len(self._data), self.chunk):
            yield i, self._normalise(self._data[i : i + self.chunk])

    def rows(self, index):
        """`[k, D]` normalised points `index` (a working set)."""
        return self._normalise(self._data[index])

    def products(self, v):
        """`[n, k]` products of every normalised point with the columns of `v [D, k]` (streamed)."""
        return np.concatenate([block @ v for _, block in self._chunks()])

    @staticmethod
    def _solve_one(basis, query):
        """Exact weights on a working set: NNLS on `[P^T; 1^T] u = [0; 1]`, `a = u / sum(u)`."""
        system = np.vstack([(basis - query).T, np.ones((1, len(basis)))])
        target = np.zeros(len(system))
        target[-1] = 1.0
        u, _ = nnls(system, target, maxiter=50 * len(basis))
        total = u.sum()
        if not total > 0:
            raise TfgeomError("hull subproblem degenerated (zero weights); check the points for NaN")
        return u / total

    def distance(self, queries, chunk=1024):
        """Distances, projections and supports for `queries [m, D]` (in chunks, bounding memory)."""
        q = np.asarray(queries, np.float64)
        if q.ndim != 2 or q.shape[1] != self.dim or len(q) == 0:
            raise InputError(f"queries must have shape [m >= 1, {self.dim}]; got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise InputError("queries contain NaN/Inf; clean them first")
        parts = [self._distance((q[i : i + chunk] - self.center) / self.scale) for i in range(0, len(q), chunk)]
        return HullResult(
            np.concatenate([p.distance for p in parts]),
            np.concatenate([p.projection for p in parts]),
            [s for p in parts for s in p.support],
            [w for p in parts for w in p.weights],
            np.concatenate([p.rounds for p in parts]),
        )

    def _distance(self, q):
        m, n = len(q), self.n
        size = self.working_size
        # Start from each query's nearest points.
        sq = self.sq_norms[None, :] - 2.0 * self.products(q.T).T
        sets = np.argsort(sq, axis=1)[:, :size]
        proj = np.zeros_like(q)
        weights = [None] * m
        rounds = np.zeros(m, np.int64)
        todo = np.arange(m)
        while len(todo):
            if rounds[todo].max() >= self.max_rounds:
                raise TfgeomError(
                    f"hull distance did not converge in {self.max_rounds} rounds for {len(todo)} queries; "
                    "raise max_rounds or working_size"
                )
            for r in todo:
                basis = self.rows(sets[r])
                weights[r] = self._solve_one(basis, q[r])
                proj[r] = weights[r] @ basis
                rounds[r] += 1
            # Optimality over all points: (z_i - p)^T (q - p) <= tol.
            gap = q[todo] - proj[todo]
            viol = self.products(gap.T) - np.einsum("md,md->m", proj[todo], gap)[None, :]
            limit = self.tol * np.maximum(np.linalg.norm(gap, axis=1), 1e-12)
            updates = {}
            inside = np.linalg.norm(gap, axis=1) <= INSIDE
            for col, r in enumerate(todo):
                if inside[col]:  # q is (numerically) a convex combination of its working set
                    continue
                bad = np.flatnonzero(viol[:, col] > limit[col])
                if len(bad) == 0:
                    continue
                new = bad[~np.isin(bad, sets[r])]  # points of the working set were optimised over
                if len(new) == 0:
                    continue
                keep = sets[r][: len(weights[r])][weights[r] > 1e-9 * weights[r].max()]
                updates[r] = (keep, new[np.argsort(-viol[new, col])])
            if updates and max(len(k) for k, _ in updates.values()) > size // 2 and size < n:
                size = min(n, 2 * size)  # supports fill the working set: enlarge it
                sets = np.concatenate([sets, np.repeat(sets[:, :1], size - sets.shape[1], axis=1)], axis=1)
            for r, (keep, new) in updates.items():
                fill = np.concatenate([keep, new])[:size]
                if len(fill) < size:  # top up with the nearest points not yet in the set
                    near = np.argsort(sq[r])
                    fill = np.concatenate([fill, near[~np.isin(near, fill)][: size - len(fill)]])
                sets[r] = fill
            todo = np.array(sorted(updates), np.int64)
        dist = np.linalg.norm(q - proj, axis=1) * self.scale
        support, weight_out = [], []
        for r in range(m):
            on = weights[r] > 1e-9
            support.append(sets[r][: len(weights[r])][on])
            weight_out.append(weights[r][on] / weights[r][on].sum())
        return HullResult(dist, proj * self.scale + self.center, support, weight_out, rounds)


def _budget(value):
    if value is None:
        return memory_budget()
    if not value > 0:
        raise InputError(f"memory_budget must be a positive number of bytes; got {value!r}")
    return int(value)


# Tight gaps: for a query inside the hull the optimum is 0, and Clarabel's
# default absolute gap (1e-8) would leave a distance of about 1e-4.
CLARABEL_TIGHT = {"tol_gap_abs": 1e-14, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def direct_distance(points, query, solver="CLARABEL"):
    """The reference: one cvxpy problem over all points for one query (slow)."""
    import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

    points = np.asarray(points, np.float64)
    a = cp.Variable(len(points), nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(points.T @ a - query)), [cp.sum(a) == 1])
    problem.solve(solver=solver, **(CLARABEL_TIGHT if solver == "CLARABEL" else {}))
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise TfgeomError(f"direct hull QP ended with status {problem.status!r}")
    p = points.T @ a.value
    return float(np.linalg.norm(p - query)), p


def in_hull_lp(points, query, solver="HIGHS"):
    """Membership by LP feasibility: exists `a >= 0`, `sum a = 1`, `Z^T a = q`."""
    import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

    points = np.asarray(points, np.float64)
    a = cp.Variable(len(points), nonneg=True)
    problem = cp.Problem(cp.Minimize(0), [cp.sum(a) == 1, points.T @ a == query])
    from tfgeom.runtime.backend import solver_output_silenced

    with solver_output_silenced():  # HiGHS' banner
        problem.solve(solver=solver)
    return problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)


@execution.stage("hull_distance")
def _hull_distance_shard(gm, start, query, points, **params):
    return HullEngine(points, **params).distance(query)
