"""Branch and bound against the exact MILP: same verdicts, time per input (issue 12's target: >= 5x faster).

The MLP of `benchmarks/certify.py` (64-32-32-10 on scikit-learn's digits,
trained here, seeded), the first test inputs, L-inf balls at several radii
around where CROWN stops certifying. Both methods get the same inputs and
labels; each is timed warm (one call on two inputs first). A verdict of
branch and bound is "certified", "counterexample" (an input of the ball
that a forward pass misclassifies, checked) or "unknown" (time limit); the
MILP's is certified or not. Prints a table; paste it into docs/benchmarks.md.

    python benchmarks/bab_vs_milp.py [--points 40] [--eps 0.02,0.03,0.04] [--time-limit 60]
"""
import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfgeom  # noqa: E402


def mlp(digits):
    """The MLP of benchmarks/certify.py, trained the same way."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    return tfgeom.zoo.train(model, digits.x_train, digits.y_train, epochs=20)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--eps", default="0.02,0.03,0.04")
    parser.add_argument("--time-limit", type=float, default=60.0, help="branch and bound seconds per input")
    args = parser.parse_args()
    digits = tfgeom.data.load("digits")
    gm = tfgeom.GeometryModel(mlp(digits))
    x, y = digits.x[:args.points], digits.y[:args.points]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
          f"tfgeom {tfgeom.__version__}; {args.points} inputs; branch-and-bound limit {args.time_limit:g} s per input")
    for method in ("milp", "bab"):  # warm-up: compile the bound programs, load the solver
        gm.certify(x[:2], 0.02, method=method, cls=y[:2])
    print("eps | CROWN certified | MILP certified | BaB certified / counterexample / unknown | verdicts agree | "
          "s/input MILP | s/input BaB | speed-up")
    for eps in (float(e) for e in args.eps.split(",")):
        crown = gm.certify(x, eps, method="crown", cls=y)
        exact, t_milp = timed(lambda: gm.certify(x, eps, method="milp", cls=y))
        bab, t_bab = timed(lambda: gm.certify(x, eps, method="bab", cls=y, time_limit=args.time_limit))
        status = np.asarray(bab.status)
        found = status == "counterexample"
        if found.any():  # every counterexample is an input of the ball that the model misclassifies
            cex = bab.counterexamples[found]
            assert np.all(np.abs(cex - x[found]).reshape(len(cex), -1).max(1) <= eps + 1e-6)
            assert np.all(gm.predict(cex) != y[found])
        decided = status != "unknown"
        agree = np.all(bab.certified[decided] == exact.certified[decided])
        print(f"{eps:g} | {crown.certified.sum()} | {exact.certified.sum()} | {(status == 'certified').sum()} / "
              f"{found.sum()} / {(~decided).sum()} | {'yes' if agree and decided.all() else 'NO'} | "
              f"{t_milp / len(x):.3f} | {t_bab / len(x):.3f} | {t_milp / t_bab:.1f}x", flush=True)


if __name__ == "__main__":
    main()
