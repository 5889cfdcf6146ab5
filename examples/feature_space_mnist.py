"""Feature space of a small MNIST CNN: regions, hulls, guaranteed regions (Yousefzadeh 2022).

Trains the demo CNN on the built-in `mnist-sample` digits and measures, in the
128-d feature space of its last hidden layer: exact distances to the
polyhedral decision boundaries against DeepFool's pixel-space distances, the
fraction of test inputs inside the convex hull of the training set in feature
and pixel space, inputs in guaranteed regions, and a morph between two digits.

    python examples/feature_space_mnist.py [--limit 300]
"""
import argparse

import numpy as np

import tfgeom
from tfgeom.runtime import zoo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    ds = tfgeom.data.load("mnist-sample")
    gm = tfgeom.GeometryModel(zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0))
    fs = gm.feature_space(ds.x_train, ds.y_train)
    x = ds.x[: args.limit]
    z = gm.features(x)
    regions = fs.regions(z)
    relu = fs.regions(z, nonneg=True) if fs.nonneg_features else None
    df = gm.deepfool(x)
    print(f"median exact feature-space boundary distance {np.median(regions.distance):.3f}"
          + (f" ({np.median(relu.distance):.3f} with z >= 0)" if relu is not None else ""))
    print(f"median DeepFool pixel distance {np.median(df.norms_l2[df.success]):.3f}; rank correlation "
          f"{np.corrcoef(np.argsort(np.argsort(df.norms_l2)), np.argsort(np.argsort(regions.distance)))[0, 1]:.3f}")
    for space, q in (("feature", z), ("pixel", x)):
        res = fs.hull_distance(q, space=space)
        inside = np.mean(res.distance <= 1e-6 * fs._engine(space, None).radius)
        print(f"{space:7s} space: {100 * inside:.1f}% of test inputs inside the training hull, "
              f"median distance {np.median(res.distance):.3f}")
    cls, guaranteed, dist = fs.guaranteed(x)
    print(f"{100 * guaranteed.mean():.1f}% in guaranteed regions; median distance to own class hull {np.median(dist):.3f}")
    a, b = 0, int(np.flatnonzero(ds.y[: args.limit] == ds.y[0])[1])
    m = fs.morph(x[a], x[b], steps=11)
    print(f"morph {a}->{b} (class {cls[a]}): pixel-line classes {m.pixel_classes.tolist()}, "
          f"max hull distance {m.pixel_hull_distance.max():.3f}; feature-line classes {m.feature_classes.tolist()}")


if __name__ == "__main__":
    main()
