"""Convex sets in feature space and their certificates for a class.

A convex set `Z` is certified for class `c` when every margin
`m_j(z) = (w_c - w_j)^T z + b_c - b_j` has a positive minimum over `Z`
(paper B.3: `Z` then lies in the class polyhedron `P_c`). The minimum of a
linear function is closed-form on a ball (`a^T z0 - r ||a||`), a box
(`a^T m - |a|^T h`) and a polytope given by vertices (the smallest vertex
value); with `z >= 0` added (ReLU features) the box stays closed-form, the
ball becomes an SOCP (Clarabel) and the polytope an LP (HiGHS), both through
cvxpy. A solve that does not end `optimal` is reported with its status and
is never certified.
"""
from typing import NamedTuple, Optional

import numpy as np

from tfgeom.errors import InputError


def _vector(name, v):
    v = np.asarray(v, np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise InputError(f"{name} must be a finite vector [D]; got shape {v.shape}")
    return v


class Ball(NamedTuple):
    """`{z : ||z - center||_2 <= radius}` (and `z >= 0` when `nonneg`)."""

    center: np.ndarray
    radius: float
    nonneg: bool = False


class Box(NamedTuple):
    """`{z : low <= z <= high}` (and `z >= 0` when `nonneg`)."""

    low: np.ndarray
    high: np.ndarray
    nonneg: bool = False


class Polytope(NamedTuple):
    """The convex hull of `vertices [K, D]` (and `z >= 0` when `nonneg`)."""

    vertices: np.ndarray
    nonneg: bool = False


def hull(features, nonneg=False):
    """The convex hull of feature vectors `[K, D]` (a `Polytope`)."""
    return Polytope(np.asarray(features, np.float64), nonneg)


def _check(region, dim):
    if isinstance(region, Ball):
        c = _vector("Ball.center", region.center)
        if not (np.isfinite(region.radius) and region.radius >= 0):
            raise InputError(f"Ball.radius must be finite and >= 0; got {region.radius}")
        out = Ball(c, float(region.radius), bool(region.nonneg))
        size = c.shape[0]
    elif isinstance(region, Box):
        lo, hi = _vector("Box.low", region.low), _vector("Box.high", region.high)
        if lo.shape != hi.shape or np.any(lo > hi):
            raise InputError("Box needs low and high of the same shape with low <= high")
        out = Box(lo, hi, bool(region.nonneg))
        size = lo.shape[0]
    elif isinstance(region, Polytope):
        v = np.asarray(region.vertices, np.float64)
        if v.ndim != 2 or v.shape[0] == 0 or not np.all(np.isfinite(v)):
            raise InputError(f"Polytope.vertices must be a finite [K, D] array with K >= 1; got shape {v.shape}")
        out = Polytope(v, bool(region.nonneg))
        size = v.shape[1]
    else:
        raise InputError(
            f"region must be a tfgeom.features.regions Ball, Box or Polytope (hull(...)); got {type(region).__name__}"
        )
    if size != dim:
        raise InputError(f"region has dimension {size} but the features have {dim}")
    return out


class _Solver:
    """`min a^T z` over one region, for many `a` (closed form or one parameterised cvxpy problem)."""

    def __init__(self, region):
        import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

        self.region = region
        self.problem = None
        r = region
        if isinstance(r, Box):
            self.low = np.maximum(r.low, 0.0) if r.nonneg else r.low
            self.empty = bool(np.any(self.low > r.high))
            return
        self.empty = False
        if not r.nonneg:
            return
        dim = r.center.shape[0] if isinstance(r, Ball) else r.vertices.shape[1]
        self.a = cp.Parameter(dim)
        if isinstance(r, Ball):
            z = cp.Variable(dim)
            cons = [cp.norm(z - r.center, 2) <= r.radius, z >= 0]
            self.solver = cp.CLARABEL
        else:
            lam = cp.Variable(r.vertices.shape[0], nonneg=True)
            z = r.vertices.T @ lam
            cons = [cp.sum(lam) == 1, z >= 0]
            self.solver = cp.HIGHS
        self.z = z
        self.problem = cp.Problem(cp.Minimize(self.a @ z), cons)

    def minimise(self, a):
        """`(value, point, status)`."""
        import cvxpy as cp  # loaded by the solves that need it, not by importing tfgeom

        r = self.region
        if isinstance(r, Box):
            if self.empty:
                return np.nan, None, "infeasible (the box does not meet z >= 0)"
            z = np.where(a >= 0, self.low, r.high)
            return float(a @ z), z, "optimal"
        if self.problem is None:
            if isinstance(r, Ball):
                norm = np.linalg.norm(a)
                z = r.center - (r.radius * a / norm if norm > 0 else 0.0)
            else:
                z = r.vertices[int(np.argmin(r.vertices @ a))]
            return float(a @ z), z, "optimal"
        from tfgeom.runtime.backend import solver_output_silenced

        self.a.value = a
        try:
            with solver_output_silenced():  # HiGHS' banner
                value = self.problem.solve(solver=self.solver)
        except cp.error.SolverError as err:
            return np.nan, None, f"solver error: {err}"
        status = self.problem.status
        if status != cp.OPTIMAL:
            return np.nan, None, status
        return float(value), np.asarray(self.z.value, np.float64), status


class RegionCertificate(NamedTuple):
    """Certificate of one convex feature set for one class.

    Fields:
        certified: every margin's minimum over the set is positive (and every solve optimal).
        cls: the class.
        margins: `[L]` minimum of `f_c - f_j` over the set (`+inf` at `c`, NaN where a solve failed).
        point: `[D]` the minimiser of the smallest margin (a candidate
            counterexample when not certified), or None.
        status: `"optimal"` or the first non-optimal solver status.
    """

    certified: bool
    cls: int
    margins: np.ndarray
    point: Optional[np.ndarray]
    status: str


def certify_region(weights, bias, region, cls):
    """Certify a convex feature set for class `cls` under the head `f(z) = W^T z + b`.

    Args:
        weights: `W [D, L]`; bias: `b [L]`.
        region: a `Ball`, `Box` or `Polytope` (e.g. `hull(features)`).
        cls: the class.

    Returns:
        A `RegionCertificate`.
    """
    w, b = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    classes = w.shape[1]
    if not (isinstance(cls, (int, np.integer)) and 0 <= cls < classes):
        raise InputError(f"cls must be a class index in [0, {classes}); got {cls!r}")
    region = _check(region, w.shape[0])
    solver = _Solver(region)
    margins = np.full(classes, np.inf)
    point, status, worst = None, "optimal", np.inf
    for j in range(classes):
        if j == cls:
            continue
        value, z, s = solver.minimise(w[:, cls] - w[:, j])
        margins[j] = value + b[cls] - b[j]
        if s != "optimal":
            status = status if status != "optimal" else s
        elif margins[j] < worst:
            worst, point = margins[j], z
    certified = status == "optimal" and bool(np.all(margins > 0))
    return RegionCertificate(certified, int(cls), margins, point, status)
