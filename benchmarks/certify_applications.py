"""IBP and CROWN on keras.applications MobileNetV2 and ResNet50 (weights=None, 32x32x3): time, whatever it is.

IBP, CROWN with forward intermediate bounds (each node a linear function of
the input, cost linear in depth) and CROWN proper (a backward pass per
unstable intermediate neuron). Each (network, method) runs in its own process with a wall-time limit, so a
bound computation that does not finish is reported as such. One input
(uniform random 0..255 pixels), an L-inf ball of 0.001 of the input range;
heads rescaled to unit-variance logits as in tests/test_applications.py.

    python benchmarks/certify_applications.py [--limit 600]
"""
import argparse
import os
import subprocess
import sys
import time

CHILD = r"""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, "tests")
import numpy as np
from test_applications import balanced_application
from tfgeom import GeometryModel
name, method, intermediate = sys.argv[1], sys.argv[2], sys.argv[3]
x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
gm = GeometryModel(balanced_application(name, x), bounds=(0, 255))
start = time.perf_counter()
graph = gm.layer_graph
built = time.perf_counter() - start
start = time.perf_counter()
cert = gm.certify(x[:1], 0.255, method=method, intermediate=intermediate)
print(f"{len(graph.nodes)} operators (built in {built:.1f} s); {time.perf_counter() - start:.1f} s; "
      f"smallest margin bound {cert.min_margin[0]:.3g}")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=600.0, help="seconds per run")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, CPU only")
    for name in ("MobileNetV2", "ResNet50"):
        for method, intermediate in (("ibp", "backward"), ("crown", "forward"), ("crown", "backward")):
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, "-c", CHILD, name, method, intermediate], capture_output=True,
                                      text=True, timeout=args.limit)
                line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else done.stderr.strip()[-300:]
            except subprocess.TimeoutExpired:
                line = f"did not finish within {args.limit:.0f} s"
            label = method if method == "ibp" else f"{method} ({intermediate} intermediate bounds)"
            print(f"{name} | {label} | {line} | wall {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
