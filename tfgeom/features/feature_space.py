"""Geometry of the feature space of the last hidden layer (Yousefzadeh, arXiv 2202.04052, 2022).

With features `z = phi(x)` and the affine head `f(z) = W^T z + b`, the region
of class `c` is the polyhedron `P_c = {z : (w_c - w_j)^T z + b_c - b_j >= 0 for all j}`.
`FeatureSpace` holds the training features and answers, exactly:
boundary distances and flip points (with or without `z >= 0` for ReLU
features), distances to convex hulls of training points (overall, per class,
in feature or pixel space) and membership in guaranteed regions.
"""
from typing import NamedTuple

import numpy as np

from tfgeom import execution
from tfgeom.features import regions

from tfgeom.errors import InputError
from tfgeom.features.hull import INSIDE, HullEngine

FLOAT32_TOL = 1e-6  # relative: float32 features of one input vary this much across batch sizes


class Regions(NamedTuple):
    """Distances from feature vectors to the boundary of their class polyhedron (NumPy).

    Fields:
        cls: `[m]` the class whose region is measured (the predicted class by default).
        distance: `[m]` distance to the boundary of `P_cls` (0 if outside it).
        nearest: `[m]` the class across the closest boundary.
        flip_point: `[m, D]` the closest point of the boundary.
        second: `[m]` distance to the second-closest boundary (for ambiguity).
    """

    cls: np.ndarray
    distance: np.ndarray
    nearest: np.ndarray
    flip_point: np.ndarray
    second: np.ndarray


def _halfspace_projection(q, a, c, nonneg):
    """Closest points to `q [m, D]` with `a^T p + c <= 0` (and `p >= 0` if `nonneg`).

    Without `nonneg` this is the closed form `q - max(a^T q + c, 0) a / ||a||^2`.
    With it, the KKT conditions give `p(l) = max(q - l a, 0)` for a multiplier
    `l >= 0` at which `a^T p(l) + c = 0`; `a^T p(l)` decreases in `l`, so `l`
    is found by bisection to machine precision. Infeasible rows give NaN.
    """
    margin = q @ a + c
    norm2 = float(a @ a)
    if not nonneg:
        return q - np.maximum(margin, 0.0)[:, None] * a[None, :] / max(norm2, 1e-300)
    if np.any(q < 0):
        raise InputError("features have negative entries; nonneg=True applies to ReLU features only")
    out = np.array(q, dtype=np.float64)
    rows = np.flatnonzero(margin > 0)
    if len(rows) == 0:
        return out
    if not (np.any(a < 0) or c <= 0):  # a >= 0 and c > 0: no p >= 0 reaches the halfspace
        out[rows] = np.nan
        return out

    def excess(lam):
        return np.maximum(q[rows] - lam[:, None] * a[None, :], 0.0) @ a + c

    lo, hi = np.zeros(len(rows)), np.ones(len(rows))
    while np.any(up := excess(hi) > 0):
        hi = np.where(up, 2.0 * hi, hi)
    for _ in range(100):  # bisection on the multiplier, all rows at once
        mid = 0.5 * (lo + hi)
        above = excess(mid) > 0
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    out[rows] = np.maximum(q[rows] - hi[:, None] * a[None, :], 0.0)
    return out


def exact_regions(z, W, b, cls=None, nonneg=False):
    """Exact distance from features `z [m, D]` to the boundary of `P_cls`.

    Args:
        z: `[m, D]` feature vectors.
        W: `[D, L]` head weights.
        b: `[L]` head bias.
        cls: `[m]` classes; defaults to the predicted class of each `z`.
        nonneg: restrict the feature space to `z >= 0` (ReLU features):
            the flip point must be a reachable feature vector. Defaults to `False`.

    Returns:
        `Regions`. Without `nonneg`, `min_j margin_j / ||w_c - w_j||` in
        closed form; with it, per class `j` the projection onto
        `{margin_j <= 0, z >= 0}` (see `_halfspace_projection`).
    """
    z = np.asarray(z, np.float64)
    cls = (z @ W + b).argmax(axis=1) if cls is None else np.asarray(cls)
    m, classes = len(z), W.shape[1]
    dist = np.full((m, classes), np.inf)
    points = np.zeros((m, classes, z.shape[1]))
    for j in range(classes):
        rows = np.flatnonzero(cls != j)
        for c in np.unique(cls[rows]):
            sel = rows[cls[rows] == c]
            a = W[:, j] - W[:, c]  # crossing into j: a^T p + (b_j - b_c) >= 0
            p = _halfspace_projection(z[sel], -a, -(b[j] - b[c]), nonneg)
            points[sel, j] = p
            dist[sel, j] = np.linalg.norm(p - z[sel], axis=1)
    order = np.argsort(dist, axis=1)
    nearest = order[:, 0]
    return Regions(
        cls=cls,
        distance=dist[np.arange(m), nearest],
        nearest=nearest,
        flip_point=points[np.arange(m), nearest],
        second=dist[np.arange(m), order[:, 1]] if classes > 2 else np.full(m, np.inf),
    )


class FeatureSpace:
    """Training features of a `GeometryModel` and the exact geometry of its head.

    Args:
        gm: a `GeometryModel` with a feature/head split.
        x_train: `[n, ...]` training inputs.
        y_train: `[n]` their labels.
        batch_size: examples per compiled call. Defaults to the model's.

    Attributes:
        features: `[n, D]` training features.
        predicted: `[n]` the model's labels of the training inputs.
        correct: `[n]` bool, predicted equals `y_train`.
        W, b: the head (`[D, L]`, `[L]`).
    """

    def __init__(self, gm, x_train, y_train, batch_size=None):
        self.gm = gm
        self.x_train, self.y_train = gm.check(x_train, y_train)
        self.W, self.b = (v.astype(np.float64) for v in gm.head)
        self.features = gm.runtime.features(self.x_train, batch_size).astype(np.float64)
        self.predicted = (self.features @ self.W + self.b).argmax(axis=1)
        self.correct = self.predicted == self.y_train
        self.nonneg_features = bool(np.all(self.features >= 0))
        self._engines = {}

    # -- regions -----------------------------------------------------------

    def margins(self, z, cls):
        """`[m, L]` margins `(w_c - w_j)^T z + b_c - b_j` (column `c` is 0)."""
        logits = z @ self.W + self.b
        return logits[np.arange(len(z)), cls][:, None] - logits

    def regions(self, z, cls=None, nonneg=False):
        """Exact distance from features `z [m, D]` to the boundary of `P_cls` (see `exact_regions`)."""
        return exact_regions(z, self.W, self.b, cls, nonneg)

    def boundary_distance(self, z, cls=None, nonneg=False):
        """`[m]` exact distances to the boundary of the class polyhedra (`regions(...).distance`)."""
        return self.regions(z, cls, nonneg).distance

    def flip_point(self, z, cls=None, nonneg=False):
        """`[m, D]` closest boundary points (`regions(...).flip_point`)."""
        return self.regions(z, cls, nonneg).flip_point

    def morph(self, x_a, x_b, steps=21):
        """Pixel-space line vs feature-space line between two inputs; see `morph`."""
        return morph(self, x_a, x_b, steps)

    # -- hulls ---------------------------------------------------------------

    def _points(self, space, cls):
        pts = self.features if space == "feature" else self.x_train.reshape(len(self.x_train), -1)
        if cls is not None:
            pts = pts[(self.predicted == cls) & self.correct]
            if len(pts) == 0:
                raise InputError(f"no correctly classified training example of class {cls}")
        return pts

    def _engine(self, space, cls):
        key = (space, cls)
        if key not in self._engines:
            self._engines[key] = HullEngine(self._points(space, cls))
        return self._engines[key]

    def hull_distance(self, q, space="feature", cls=None, executor=None):
        """Distance from queries to the hull of training points.

        Args:
            q: `[m, D]` features (`space="feature"`) or `[m, ...]` inputs (`"pixel"`).
            space: `"feature"` or `"pixel"`. Defaults to `"feature"`.
            cls: a class: the hull of the training points the model classifies
                correctly as `cls`; `None`: all training points. Defaults to `None`.
            executor: a `tfgeom.execution.executor` executor to solve the queries in
                shards on (each worker builds the hull's engine from the points). Defaults to `None`.

        Returns:
            a `tfgeom.features.hull.HullResult`.
        """
        if space not in ("feature", "pixel"):
            raise InputError(f"space={space!r} is not one of ['feature', 'pixel']")
        q = np.asarray(q, np.float64)
        q = q.reshape(len(q), -1)
        if executor is not None:
            return execution.run(self.gm, "hull_distance", {"query": q}, {"points": self._points(space, cls)},
                                 executor)
        return self._engine(space, cls).distance(q)

    def in_hull(self, q, space="feature", cls=None, tol=FLOAT32_TOL):
        """`[m]` bool: the query lies in the hull, up to `tol` times the hull's radius.

        `tol` defaults to `1e-6`: float32 features of the same input differ at
        that level between batch sizes, so an exact test would call a training
        point outside its own hull.
        """
        return self.inside(self.hull_distance(q, space, cls).distance, space, cls, tol)

    def inside(self, distance, space="feature", cls=None, tol=FLOAT32_TOL):
        """`[m]` bool: hull distances (from `hull_distance`) that count as inside that hull (see `in_hull`)."""
        engine = self._engine(space, cls)
        return np.asarray(distance) <= max(tol * engine.radius, INSIDE * engine.scale)

    def class_hull(self, cls, nonneg=False):
        """The convex hull of the training features the model classifies correctly as `cls` (a `Polytope`)."""
        rows = np.flatnonzero(self.correct & (self.y_train == cls))
        if len(rows) == 0:
            raise InputError(f"no correctly classified training example of class {cls}")
        return regions.hull(self.features[rows], nonneg)

    def certify_region(self, region, cls):
        """Certify a convex feature set for class `cls`; see `tfgeom.features.regions.certify_region`."""
        return regions.certify_region(self.W, self.b, region, cls)

    def guaranteed(self, x, tol=FLOAT32_TOL, features=None):
        """Which inputs fall in a guaranteed region: the hull of class-`c` training features.

        Returns a `Guaranteed` `(cls [m], inside [m] bool, distance [m])` for the predicted
        class `c` of each input: `inside` means the features are a convex
        combination of training features classified `c` (up to `tol`, see
        `in_hull`), so the classification is guaranteed (`P_c` is convex and
        contains that hull). Pass `features` (the features of `x`) when
        they are already computed.
        """
        z = (self.gm.runtime.features(self.gm.check(x)) if features is None else np.asarray(features)).astype(np.float64)
        cls = (z @ self.W + self.b).argmax(axis=1)
        dist = np.zeros(len(z))
        inside = np.zeros(len(z), bool)
        for c in np.unique(cls):
            rows = np.flatnonzero(cls == c)
            if not np.any((self.predicted == c) & self.correct):  # no training hull for c: nothing guaranteed
                dist[rows] = np.inf
                continue
            res = self.hull_distance(z[rows], "feature", int(c))
            dist[rows] = res.distance
            inside[rows] = self.inside(res.distance, "feature", int(c), tol)
        return Guaranteed(cls, inside, dist)


class Guaranteed(NamedTuple):
    """Which inputs lie in a guaranteed region (NumPy).

    Fields:
        cls: `[m]` predicted class of each input.
        inside: `[m]` bool, the features lie in the hull of the training
            features classified (correctly) as `cls`.
        distance: `[m]` L2 distance of the features to that hull.
    """

    cls: np.ndarray
    inside: np.ndarray
    distance: np.ndarray


class Morph(NamedTuple):
    """A morph between two inputs (NumPy), `T` steps.

    Fields:
        t: `[T]` positions in `[0, 1]`.
        pixel_path: `[T, ...]` the inputs `(1 - t) x_a + t x_b`.
        pixel_classes: `[T]` predicted classes along the pixel path.
        pixel_hull_distance: `[T]` distance of the path's features to the
            hull of training features of `x_a`'s class.
        feature_classes: `[T]` classes along the straight feature line `(1 - t) z_a + t z_b`.
        feature_hull_distance: `[T]` its distance to the same hull.
    """

    t: np.ndarray
    pixel_path: np.ndarray
    pixel_classes: np.ndarray
    pixel_hull_distance: np.ndarray
    feature_classes: np.ndarray
    feature_hull_distance: np.ndarray


def morph(fs, x_a, x_b, steps=21):
    """Straight line in pixel space, mapped to features, vs the straight line between the features.

    If both ends' features lie in `P_c`, the feature line cannot change class
    (`P_c` is convex); the pixel line's image is a curve that may leave `P_c`
    and the class hull.
    """
    gm = fs.gm
    x = gm.check(np.stack([x_a, x_b]))
    t = np.linspace(0.0, 1.0, steps)
    shape = (-1,) + (1,) * (x.ndim - 1)
    path = (1 - t).reshape(shape) * x[0] + t.reshape(shape) * x[1]
    z_path = gm.runtime.features(gm.check(path)).astype(np.float64)
    z_line = (1 - t)[:, None] * z_path[0] + t[:, None] * z_path[-1]
    cls = int((z_path[0] @ fs.W + fs.b).argmax())
    return Morph(
        t=t,
        pixel_path=path,
        pixel_classes=(z_path @ fs.W + fs.b).argmax(axis=1),
        pixel_hull_distance=fs.hull_distance(z_path, cls=cls).distance,
        feature_classes=(z_line @ fs.W + fs.b).argmax(axis=1),
        feature_hull_distance=fs.hull_distance(z_line, cls=cls).distance,
    )
