"""Principal curvatures: tfgeom's batched Lanczos vs SciPy `eigsh` (ARPACK), side by side.

Top-k most negative and most positive principal curvatures at the DeepFool
boundary points of test images of the demo CNN. The peer is what a user would
otherwise write: `scipy.sparse.linalg.eigsh` on a `LinearOperator` whose
matvec is the same projected Hessian-vector product (compiled for one point),
one point at a time. Prints times, HVPs used, time per HVP against one
forward+backward pass, and the largest relative eigenvalue difference.

    python benchmarks/curvature.py [--points 100] [--k 20] [--hvp auto]
"""
import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.sparse.linalg import LinearOperator, eigsh  # noqa: E402

import tfgeom  # noqa: E402
from tfgeom.geometry import curvature, hvp as hvp_lib
from tfgeom.runtime import zoo  # noqa: E402


def scipy_curvatures(gm, z, coeffs, k, hvp, step):
    """eigsh per point on the same operator; returns values [N, 2k] and matvec count."""
    d = int(np.prod(gm.input_shape))
    op = curvature.projected_operator(gm.runtime.logits_fn, hvp, step)
    spec = tf.TensorSpec([1, *gm.input_shape], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([1, gm.num_classes]), tf.TensorSpec([1, d])])
    def matvec(zi, ci, v):
        g, _ = hvp_lib.gradient(gm.runtime.logits_fn, zi, ci)
        g = tf.reshape(g, [1, -1])
        gnorm = tf.norm(g, axis=1)
        return op(zi, ci, g / gnorm[:, None], gnorm, v)

    values, calls = [], 0
    for i in range(len(z)):
        zi, ci = tf.constant(z[i : i + 1]), tf.constant(coeffs[i : i + 1])

        def mv(v, zi=zi, ci=ci):
            nonlocal calls
            calls += 1
            return matvec(zi, ci, tf.constant(v.reshape(1, d), tf.float32)).numpy().ravel().astype(np.float64)

        vals = eigsh(LinearOperator((d, d), matvec=mv, dtype=np.float64), k=2 * k, which="BE", tol=1e-6,
                     return_eigenvectors=False)
        values.append(np.sort(vals))
    return np.array(values), calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="Lanczos steps (default: tfgeom's)")
    parser.add_argument("--hvp", default="auto", choices=["auto", "exact", "finite-difference"])
    parser.add_argument("--activation", default="relu", help="demo CNN activation (softplus: smooth twin)")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}")
    ds = tfgeom.data.load("mnist-sample")
    gm = tfgeom.GeometryModel(zoo.train(zoo.demo_cnn(activation=args.activation), ds.x_train, ds.y_train, epochs=10, seed=0))
    x = ds.x[: args.points]
    attack = gm.deepfool(x)
    kw = dict(k=args.k, hvp=args.hvp, attack=attack, steps=args.steps)
    gm.principal_curvatures(x[:2], **dict(kw, attack=gm.deepfool(x[:2])))  # trace once
    start = time.perf_counter()
    ours = gm.principal_curvatures(x, **kw)
    index = ours.index
    t_ours = time.perf_counter() - start
    n = len(index)
    hvps_ours = ours.lanczos_steps * n

    z = attack.boundary_points[index]
    coeffs = curvature.margin_coefficients(attack.labels[index], attack.boundary_classes[index], gm.num_classes)
    start = time.perf_counter()
    theirs, hvps_theirs = scipy_curvatures(gm, z, coeffs, args.k, ours.hvp, ours.step)
    t_theirs = time.perf_counter() - start

    scale = np.abs(theirs).max(axis=1, keepdims=True)
    rel = np.abs(ours.values - theirs) / scale
    # Floor: one forward+backward pass per example, batched as tfgeom batches the HVPs.
    zb = tf.constant(np.repeat(z, 2, axis=0)[: 2 * min(n, 64)])
    cb = tf.constant(np.repeat(coeffs, 2, axis=0)[: len(zb)])
    gm.runtime.gradient_program()(zb, cb)
    start = time.perf_counter()
    for _ in range(10):
        gm.runtime.gradient_program()(zb, cb)
    per_grad = (time.perf_counter() - start) / (10 * len(zb))
    print(f"demo CNN ({args.activation}), {n} boundary points, k={args.k} at each end, hvp={ours.hvp} (step {ours.step})")
    print(f"{'method':10s} {'time s':>8s} {'HVPs':>8s} {'ms/HVP':>8s}")
    print(f"{'tfgeom':10s} {t_ours:8.2f} {hvps_ours:8d} {1e3 * t_ours / hvps_ours:8.3f}")
    print(f"{'eigsh':10s} {t_theirs:8.2f} {hvps_theirs:8d} {1e3 * t_theirs / hvps_theirs:8.3f}")
    print(f"speed-up eigsh / tfgeom: {t_theirs / t_ours:.2f}x")
    print(f"floor: one forward+backward pass {1e3 * per_grad:.3f} ms per example (batched); tfgeom's HVP costs "
          f"{t_ours / hvps_ours / per_grad:.2f} of them, eigsh's {t_theirs / hvps_theirs / per_grad:.2f}")
    print(f"max relative eigenvalue difference: {rel.max():.2e} (median over points of the max: "
          f"{np.median(rel.max(axis=1)):.2e}); extremes only (|kappa| max): "
          f"{np.max(np.abs(ours.values[:, [0, -1]] - theirs[:, [0, -1]]) / scale):.2e}")


if __name__ == "__main__":
    main()
