"""Certification: tightness (MILP >= CROWN >= IBP), certified radii and times, soundness against attacks.

Models (trained here, seeded): a ReLU MLP and a small CNN with BatchNorm and
max-pooling on scikit-learn's digits, and the demo CNN on the MNIST sample
(IBP and CROWN only: it is far above the MILP size limit).

For each model and test input: the lower bounds of every margin at a fixed
L-inf eps by IBP, CROWN and the exact MILP (ordering checked on every
margin), certified radii by bisection per method, and PGD (40 steps, 3
restarts) plus DeepFool L-inf looking for a counterexample inside every
certified ball. Prints a table; paste it into docs/benchmarks.md.

    python benchmarks/certify.py [--points 40] [--milp-points 10]
"""
import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfgeom  # noqa: E402
from tfgeom.geometry import attacks  # noqa: E402


def models():
    digits = tfgeom.data.load("digits")
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    cnn = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                            keras.layers.BatchNormalization(), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                            keras.layers.Dropout(0.2), keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(10, activation="softmax")])
    yield "MLP 64-32-32-10 (digits)", tfgeom.zoo.train(mlp, digits.x_train, digits.y_train, epochs=20), digits, 0.02
    yield "CNN conv-BN-pool-32 (digits)", tfgeom.zoo.train(cnn, digits.x_train, digits.y_train, epochs=12), digits, 0.01
    mnist = tfgeom.data.load("mnist-sample")
    demo = tfgeom.zoo.train(tfgeom.zoo.demo_cnn(), mnist.x_train, mnist.y_train, epochs=10)
    yield "demo CNN (MNIST sample)", demo, mnist, 0.005


def backward_alone(gm, x, y, eps):
    """Fraction of margins where CROWN's backward bound alone (before max with IBP) is >= IBP's."""
    import tensorflow as tf

    from tfgeom.verify import certification, sets
    from tfgeom.verify.certification import _margin_rows

    input_set = sets.ball(x, np.full(len(x), eps, np.float32), "linf", gm.bounds)
    coeffs, const = _margin_rows(gm.layer_graph, *gm.head, tf.constant(y))
    raw, _ = certification.margin_lower_bounds(gm.layer_graph, input_set, coeffs, const, "crown", combine=False)
    ibp, _ = certification.margin_lower_bounds(gm.layer_graph, input_set, coeffs, const, "ibp")
    keep = np.ones(raw.shape, bool)
    keep[np.arange(len(y)), y] = False
    return float(np.mean((raw.numpy() >= ibp.numpy() - 1e-6)[keep]))


def counterexamples(gm, x, y, radius):
    """Inputs where PGD or DeepFool finds a misclassified point inside the certified ball."""
    found = np.zeros(len(x), bool)
    ok = radius > 0
    if not ok.any():
        return 0
    for i in np.flatnonzero(ok):
        for seed in range(3):  # PGD from the centre and from two random points of the ball
            start = x[i:i + 1]
            if seed:
                noise = np.random.default_rng(seed).uniform(-radius[i], radius[i], start.shape)
                start = np.clip(start + noise, 0, 1).astype(np.float32)
            adv = attacks.pgd(gm, start, float(2 * radius[i]), steps=40).x_adv
            inside = np.clip(x[i:i + 1] + np.clip(adv - x[i:i + 1], -radius[i], radius[i]), 0, 1)
            found[i] |= gm.predict(inside.astype(np.float32))[0] != y[i]
    df = gm.deepfool(x[ok], norm="linf")
    found[np.flatnonzero(ok)] |= df.success & (df.norms <= radius[ok]) & (df.adv_labels != y[ok])
    return int(found.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--milp-points", type=int, default=10)
    parser.add_argument("--demo-points", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
          f"tfgeom {tfgeom.__version__}")
    header = ("model", "eps", "method", "inputs", "certified", "median margin gap to MILP",
              "ordering holds", "median radius", "radius / IBP", "s/input (eps)", "s/input (radius)",
              "counterexamples")
    print(" | ".join(header))
    for name, model, data, eps in models():
        gm = tfgeom.GeometryModel(model)
        demo = name.startswith("demo")
        n = args.demo_points if demo else args.points
        x, y = data.x[:n], data.y[:n]
        methods = ["ibp", "crown"] if demo else ["ibp", "crown", "milp"]
        certs, radii, times = {}, {}, {}
        for method in methods:
            m = args.milp_points if method == "milp" else n
            start = time.perf_counter()
            certs[method] = gm.certify(x[:m], eps, method=method, cls=y[:m])
            t_eps = (time.perf_counter() - start) / m
            start = time.perf_counter()
            radii[method] = gm.certified_radius(x[:m], method=method, cls=y[:m], steps=8, rtol=0.05).radius
            times[method] = (t_eps, (time.perf_counter() - start) / m)
        for method in methods:
            m = len(radii[method])
            margins = certs[method].margins
            if "milp" in certs:
                k = len(certs["milp"].cls)
                exact = certs["milp"].margins
                fin = np.isfinite(exact[:k]) & np.isfinite(margins[:k])
                gap = float(np.median((exact[:k] - margins[:k])[fin]))
                lower = {"milp": "crown", "crown": "ibp"}.get(method)
                holds = "-" if lower is None else bool(np.all(
                    margins[:k][fin] >= certs[lower].margins[:k][fin] - 1e-4))
            else:
                gap, holds = "-", ("-" if method == "ibp" else bool(np.all(margins >= certs["ibp"].margins - 1e-6)))
            ok = radii["ibp"][:m] > 0
            ratio = float(np.median(radii[method][ok] / radii["ibp"][:m][ok])) if ok.any() else float("nan")
            bad = counterexamples(gm, x[:m], y[:m], radii[method])
            row = (name, eps, method, m, f"{certs[method].certified.mean():.2f}", gap if gap == "-" else f"{gap:.3g}",
                   holds, f"{np.median(radii[method]):.4f}", f"{ratio:.2f}", f"{times[method][0]:.3f}",
                   f"{times[method][1]:.3f}", bad)
            print(" | ".join(str(v) for v in row), flush=True)
        print(f"{name}: CROWN's backward bound alone >= IBP's on {100 * backward_alone(gm, x, y, eps):.1f}% "
              "of margins", flush=True)


if __name__ == "__main__":
    main()
