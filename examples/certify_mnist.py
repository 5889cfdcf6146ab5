"""Certified regions of the demo MNIST CNN, in feature space and in pixel space.

Trains the demo CNN on the built-in `mnist-sample` digits, then:

- feature space (exact, paper B.3): certifies the convex hull of each class's
  training features (an LP per margin), a ball around a test feature vector up
  to its exact boundary distance, and a box around it;
- pixel space (bound propagation, ours): certifies L-inf balls at a few radii
  by IBP and CROWN, finds certified radii by bisection, certifies a morphing
  segment between two same-class digits, and checks with PGD that no certified
  ball holds a counterexample.

    python examples/certify_mnist.py [--points 2]
"""
import argparse

import numpy as np

import tfgeom
from tfgeom.geometry import attacks
from tfgeom.features import regions
from tfgeom.runtime import zoo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2, help="test digits for CROWN (about 1 min each on 2 CPU cores)")
    args = parser.parse_args()
    ds = tfgeom.data.load("mnist-sample")
    gm = tfgeom.GeometryModel(zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0))

    print("== feature space (exact) ==")
    fs = gm.feature_space(ds.x_train, ds.y_train)
    for c in range(gm.num_classes):
        cert = fs.certify_region(fs.class_hull(c, nonneg=fs.nonneg_features), c)
        print(f"class {c}: hull of {int(np.sum(fs.correct & (fs.y_train == c)))} training features "
              f"{'certified' if cert.certified else 'NOT certified'} (min margin {cert.margins.min():.3f}, {cert.status})")
    z = gm.features(ds.x[:1])[0].astype(np.float64)
    c = int(gm.predict(ds.x[:1])[0])
    d = float(fs.boundary_distance(z[None], np.array([c]))[0])
    for r in (0.9 * d, 1.1 * d):
        cert = fs.certify_region(regions.Ball(z, r), c)
        print(f"ball of radius {r:.3f} around test feature 0 (boundary at {d:.3f}): certified={cert.certified}")
    box = fs.certify_region(regions.Box(z - 0.05, z + 0.05, nonneg=True), c)
    print(f"box +-0.05 around it (with z >= 0): certified={box.certified}, min margin {box.margins.min():.3f}")

    print("== pixel space (bound propagation) ==")
    x, y = ds.x[: args.points], ds.y[: args.points]
    for eps in (0.005, 0.01, 0.02):
        for method in ("ibp", "crown"):
            cert = gm.certify(x, eps, method=method, cls=y)
            print(f"eps={eps:<6} {method:5s}: {cert.certified.sum()} of {len(x)} certified, "
                  f"median margin bound {np.median(cert.min_margin):.3f}")
    for method in ("ibp", "crown"):
        r = gm.certified_radius(x, method=method, cls=y, steps=6)
        print(f"{method:5s} certified L-inf radii: {np.round(r.radius, 4)}")
        for i in np.flatnonzero(r.radius > 0):
            labels = attacks.pgd(gm, x[i:i + 1], float(r.radius[i]), steps=40).adv_labels
            assert labels[0] == y[i], "a certified ball held a counterexample"
    print("PGD found no counterexample inside any certified ball")
    same = np.flatnonzero(ds.y == y[0])[1:2]
    seg = gm.certify_segment(x[:1], ds.x[same], method="crown")
    print(f"morphing segment between two '{y[0]}' digits certified by CROWN: {bool(seg.certified[0])} "
          f"(min margin bound {seg.min_margin[0]:.3f})")


if __name__ == "__main__":
    main()
