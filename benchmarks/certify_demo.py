"""The demo CNN's certification times: a CROWN certified radius per input, and the `analyze` section.

Issue 12's targets: a CROWN (backward intermediate bounds) certified radius
in at most 5 s per input, and the `certification` section of `tfgeom
analyze` within 60 s. The model is trained as `tfgeom demo` trains it (10
epochs, seed 0, the MNIST sample); inputs are the first test digits with
their labels; L-inf radii. Each search is timed warm (one radius of two
inputs first) and includes everything a user's call does (DeepFool for the
upper ends, IBP's radius where it is the starting point). The section runs
through the command line in a process of its own, as a user would.

    python benchmarks/certify_demo.py [--points 50]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import tfgeom  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def section_seconds(path, intermediate):
    """Seconds of the `certification` section of `tfgeom analyze` (read from its report)."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "analyze", path, "--data", "mnist-sample", "--only",
                        "certification", "--out", out, "--set", f"certification.intermediate={intermediate}"],
                       check=True, capture_output=True)
        with open(os.path.join(out, "report.json")) as f:
            return json.load(f)["sections"]["certification"]["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50)
    args = parser.parse_args()
    data = tfgeom.data.load("mnist-sample")
    model = tfgeom.zoo.train(tfgeom.zoo.demo_cnn(), data.x_train, data.y_train, epochs=10, seed=0)
    gm = tfgeom.GeometryModel(model)
    x, y = data.x[:args.points], data.y[:args.points]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
          f"tfgeom {tfgeom.__version__}; demo CNN, {args.points} test inputs, accuracy "
          f"{np.mean(gm.predict(x) == y):.2f}")
    gm.certified_radius(x[:2], method="crown", cls=y[:2])  # warm-up: compile the programs
    print("CROWN radius search | s/input | median radius")
    for search in ("bisection", "secant"):
        r, t = timed(lambda: gm.certified_radius(x, method="crown", cls=y, search=search))
        print(f"{search} from 0 (defaults) | {t / len(x):.2f} | {np.median(r.radius):.4f}", flush=True)

    def from_ibp():
        ibp = gm.certified_radius(x, method="ibp", cls=y).radius
        return gm.certified_radius(x, method="crown", cls=y, lower=ibp, search="secant")

    r, t = timed(from_ibp)
    print(f"secant from IBP's radius (the report's search; IBP included) | {t / len(x):.2f} | "
          f"{np.median(r.radius):.4f}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "demo.keras")
        model.save(path)
        for intermediate in ("forward", "backward"):
            print(f"analyze certification section, {intermediate} intermediate bounds: "
                  f"{section_seconds(path, intermediate):.1f} s", flush=True)


if __name__ == "__main__":
    main()
