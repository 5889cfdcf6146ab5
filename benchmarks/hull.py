"""Convex-hull distances: tfgeom's column-generation engine vs the direct cvxpy problem.

1,000 `mnist-sample` test queries against the 4,000 training points, in the
feature space of the demo CNN (128-d) and in pixel space (784-d). The peer is
the direct per-query formulation `min ||Z^T a - q||^2, a >= 0, sum a = 1` in
cvxpy with Clarabel (tight tolerances), timed on a subsample of queries and
extrapolated per query. Prints per-query times, the ratio, and the largest
distance difference on the subsample.

    python benchmarks/hull.py [--queries 1000] [--direct 5]
"""
import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import tfgeom  # noqa: E402
from tfgeom.runtime import zoo  # noqa: E402
from tfgeom.features.hull import HullEngine, direct_distance  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--direct", type=int, default=5, help="queries solved directly (subsample)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    ds = tfgeom.data.load("mnist-sample")
    gm = tfgeom.GeometryModel(zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0))
    spaces = {
        "feature": (gm.features(ds.x_train), gm.features(ds.x[: args.queries])),
        "pixel": (ds.x_train.reshape(len(ds.x_train), -1), ds.x[: args.queries].reshape(args.queries, -1)),
    }
    print(f"{'space':8s} {'dim':>4s} {'tfgeom ms/q':>12s} {'direct ms/q':>12s} {'ratio':>8s} {'max |diff|':>11s} "
          f"{'inside':>7s} {'median dist':>12s} {'rounds':>7s}")
    for name, (points, queries) in spaces.items():
        engine = HullEngine(points)
        start = time.perf_counter()
        result = engine.distance(queries)
        ours = (time.perf_counter() - start) / len(queries)
        pick = np.linspace(0, len(queries) - 1, args.direct).astype(int)
        start = time.perf_counter()
        ref = np.array([direct_distance(points, queries[i])[0] for i in pick])
        direct = (time.perf_counter() - start) / len(pick)
        diff = np.abs(ref - result.distance[pick]).max()
        inside = np.mean(result.distance <= 1e-9 * engine.scale)
        print(f"{name:8s} {points.shape[1]:4d} {1e3 * ours:12.2f} {1e3 * direct:12.1f} {direct / ours:8.0f} "
              f"{diff:11.2e} {inside:7.3f} {np.median(result.distance):12.4f} {result.rounds.mean():7.2f}")


if __name__ == "__main__":
    main()
