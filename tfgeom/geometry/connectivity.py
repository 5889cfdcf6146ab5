"""Connectivity of classification regions: polygonal paths that never leave a region (Fawzi et al., CVPR 2018).

For two inputs with the same predicted class `i`, start with the segment
between them. A segment is *verified* when every point on it at spacing at
most `resolution` (L2) is classified `i` with a positive margin
`f_i - max_{j != i} f_j`. A segment that fails is split at its midpoint; a
midpoint outside the region is pushed back into it by a targeted DeepFool
step (target `i`; the anchor goes `1 + depth` times that step deep when
that point is still in the region), and both halves are checked in turn. All pending segments
of all pairs are evaluated together in each round (one batched pass), and
all midpoints are pushed together.

A pair is reported `connected` only when every segment of its path was
verified; a pair whose anchor budget runs out, or whose midpoint cannot be
pushed back, is reported not connected. "Not connected within the budget" is
not a proof that the region is disconnected.
"""
from typing import NamedTuple

import numpy as np

from tfgeom import execution
from tfgeom.errors import InputError
from tfgeom.geometry.deepfool import deepfool
from tfgeom.runtime.resources import FLOAT32, check_memory
from tfgeom.runtime.validation import check_positive_int


class Paths(NamedTuple):
    """Paths between pairs of inputs (NumPy).

    Fields:
        anchors: list of `P` arrays `[k_p + 2, ...]`: the path's vertices,
            endpoints included.
        connected: `[P]` every segment verified at `resolution`.
        num_anchors: `[P]` anchors inserted (vertices minus 2).
        straightness: `[P]` path length / straight distance (1 = straight).
        min_margin: `[P]` smallest `f_i - max_{j != i} f_j` over the checked points of the final path
            (segments that were split on the way are not on it).
        labels: `[P]` the class `i` of each pair.
        resolution: the spacing used.
        straight: `[P]` the plain segment stayed in the region (the convexity baseline).
    """

    anchors: list
    connected: np.ndarray
    num_anchors: np.ndarray
    straightness: np.ndarray
    min_margin: np.ndarray
    labels: np.ndarray
    resolution: float
    straight: np.ndarray


def _segment_samples(u, v, resolution):
    count = int(np.ceil(np.linalg.norm((v - u).ravel()) / resolution)) + 1
    t = np.linspace(0.0, 1.0, max(count, 2))
    return u[None] + t.reshape(-1, *[1] * u.ndim) * (v - u)[None]


def _margins(gm, points, labels):
    logits = gm.runtime.logits(np.asarray(points, np.float32))  # points between valid inputs: no checks
    own = logits[np.arange(len(points)), labels]
    logits[np.arange(len(points)), labels] = -np.inf
    return own - logits.max(axis=1)


SAMPLE_BYTES = 1 << 27  # segment samples held at once (128 MiB): memory does not grow with the pairs


def _segment_margins(gm, nodes, pending, labels, resolution):
    """Yield `((pair, k), margins along segment k)` for the pending segments, a bounded chunk at a time."""
    row_bytes = nodes[pending[0][0]][0].size * FLOAT32
    chunk, rows = [], 0
    for item in pending + [None]:
        if item is not None:
            p, k = item
            samples = _segment_samples(nodes[p][k], nodes[p][k + 1], resolution)
            chunk.append((item, samples))
            rows += len(samples)
        if chunk and (item is None or rows * row_bytes >= SAMPLE_BYTES):
            sizes = [len(s) for _, s in chunk]
            margins = _margins(gm, np.concatenate([s for _, s in chunk]),
                               np.repeat([labels[p] for (p, _), _ in chunk], sizes))
            yield from zip([i for i, _ in chunk], np.split(margins, np.cumsum(sizes)[:-1]))
            chunk, rows = [], 0


def default_resolution(gm, x1, x2):
    """1/256 of the median L2 distance between the endpoints (1e-3 of the input range if they coincide)."""
    dist = np.linalg.norm((x2 - x1).reshape(len(x1), -1), axis=1)
    return float(np.median(dist)) / 256 or 1e-3 * (gm.bounds[1] - gm.bounds[0])


def connect(gm, x1, x2, max_anchors=16, resolution=None, depth=0.5, batch_size=None, executor=None):
    """Find paths inside the region of the common class between pairs `(x1[p], x2[p])`.

    Args:
        gm: a `GeometryModel`.
        x1: `[P, ...]` first endpoints.
        x2: `[P, ...]` second endpoints, same predicted class as `x1`.
        max_anchors: anchors at most per path. Defaults to `16`.
        resolution: largest L2 spacing between checked points. Defaults to
            1/256 of the median distance between the endpoints.
        depth: an anchor is the midpoint plus `1 + depth` times its minimal
            targeted DeepFool perturbation when that point is in the region
            (well inside rather than on the boundary), else the DeepFool point
            itself (overshoot 0.02). Defaults to `0.5`.
        batch_size: examples per compiled call. Defaults to the model's.
        executor: a `tfgeom.execution` executor to run the pairs in shards on
            (the stage `"connect"`). Defaults to `None`: in this process.

    Returns:
        `Paths`.
    """
    x1, x2 = gm.check(x1), gm.check(x2)
    if x1.shape != x2.shape:
        raise InputError(f"x1 and x2 must have the same shape; got {x1.shape} and {x2.shape}")
    if executor is not None:
        resolution = default_resolution(gm, x1, x2) if resolution is None else resolution  # over all pairs
        params = dict(max_anchors=max_anchors, resolution=resolution, depth=depth, batch_size=batch_size)
        return execution.run(gm, "connect", {"x1": x1, "x2": x2}, params, executor)
    max_anchors = check_positive_int("max_anchors", max_anchors, 0)
    labels = gm.runtime.predict(x1, batch_size)
    other = gm.runtime.predict(x2, batch_size)
    if np.any(labels != other):
        bad = np.flatnonzero(labels != other)
        raise InputError(
            f"pairs {bad[:5].tolist()} have different predicted classes ({labels[bad[0]]} vs {other[bad[0]]}); "
            "connect() joins points of the same class"
        )
    d = int(np.prod(x1.shape[1:]))
    check_memory(f"{len(x1)} pairs with up to {max_anchors} anchors each",
                 len(x1) * (max_anchors + 2) * d * FLOAT32, "use fewer pairs or a lower max_anchors")
    dist = np.linalg.norm((x2 - x1).reshape(len(x1), -1), axis=1)
    if resolution is None:
        resolution = default_resolution(gm, x1, x2)
    nodes = [[x1[p], x2[p]] for p in range(len(x1))]
    pending = [(p, 0) for p in range(len(x1))]  # (pair, index of the segment's first node)
    failed = np.zeros(len(x1), bool)
    checked = {}  # (pair, id of a segment's first node, id of its last) -> smallest margin seen on it
    straight = np.zeros(len(x1), bool)
    first_round = True
    while pending:
        broken = []
        for (p, k), m in _segment_margins(gm, nodes, pending, labels, resolution):
            checked[(p, id(nodes[p][k]), id(nodes[p][k + 1]))] = float(m.min())
            if first_round:
                straight[p] = bool(np.all(m > 0))
            if np.all(m > 0) or failed[p]:
                continue
            if len(nodes[p]) - 2 >= max_anchors:
                failed[p] = True  # budget spent with a segment still leaving the region
            else:
                broken.append((p, k))
        first_round = False
        broken = [(p, k) for p, k in broken if not failed[p]]
        if not broken:
            break
        # Split broken segments at their midpoints; push midpoints outside the region back in.
        mids = np.stack([0.5 * (nodes[p][k] + nodes[p][k + 1]) for p, k in broken])
        targets = np.array([labels[p] for p, _ in broken], np.int32)
        outside = gm.runtime.predict(mids, batch_size) != targets
        if outside.any():
            pushed = deepfool(gm, mids[outside], targets=targets[outside], batch_size=batch_size)
            # Anchor deeper inside when the scaled perturbation still lands in the region.
            deep = np.clip(mids[outside] + (1.0 + depth) / 1.02 * pushed.perturbation, *gm.bounds)
            inside = gm.runtime.predict(deep, batch_size) == targets[outside]
            mids[outside] = np.where(inside.reshape(-1, *[1] * (deep.ndim - 1)), deep, pushed.x_adv)
            for b in np.flatnonzero(outside)[~pushed.success]:
                failed[broken[b][0]] = True
        # Insert anchors from the back of each path so earlier indices stay valid.
        pending = []
        for (p, k), mid in sorted(zip(broken, mids), key=lambda item: (item[0][0], -item[0][1])):
            if failed[p] or len(nodes[p]) - 2 >= max_anchors:
                failed[p] = failed[p] or len(nodes[p]) - 2 >= max_anchors
                continue
            nodes[p].insert(k + 1, mid)
            pending = [(q, j + 1 if q == p and j > k else j) for q, j in pending]
            pending += [(p, k), (p, k + 1)]
        pending = [(p, k) for p, k in pending if not failed[p]]
    # the smallest margin over the final path's segments only (a segment split later is not on the path)
    min_margin = np.array([min((checked.get((p, id(a), id(b)), np.inf) for a, b in zip(n[:-1], n[1:])),
                               default=np.inf) for p, n in enumerate(nodes)])
    anchors = [np.stack(n) for n in nodes]
    lengths = np.array([np.linalg.norm(np.diff(a.reshape(len(a), -1), axis=0), axis=1).sum() for a in anchors])
    return Paths(
        anchors=anchors,
        connected=~failed,
        num_anchors=np.array([len(a) - 2 for a in anchors]),
        straightness=lengths / np.maximum(dist, 1e-12),
        min_margin=min_margin,
        labels=labels,
        resolution=float(resolution),
        straight=straight,
    )


@execution.stage("connect")
def _connect_shard(gm, start, x1, x2, **params):
    return connect(gm, x1, x2, **params)
