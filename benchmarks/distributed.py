"""Ray workers vs one process: DeepFool L2 on 2,000 mnist-sample inputs and curvature at 200 points, demo CNN.

    python benchmarks/distributed.py [--inputs 2000] [--points 200] [--epochs 2]

Three ways, one run, warm (each first runs a small batch so that programs are
compiled and actors have loaded the model):

- in process, TensorFlow limited to 1 thread (this process);
- Ray, 1 worker of 1 thread;
- Ray, 2 workers of 1 thread each.

Prints wall times, the speedup of 2 workers over 1 worker (target >= 1.6x on
2 cores), the overhead of 1 Ray worker over the in-process path (target <= 15%)
and the largest difference between the results (they must be identical).
The model's batch size is 50 so that the default shards (about four per
worker, multiples of the batch size) divide both workloads evenly.
"""
import argparse
import os
import time

os.environ["TF_NUM_INTRAOP_THREADS"] = "1"  # the in-process baseline gets one thread, as each worker
os.environ["TF_NUM_INTEROP_THREADS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def workloads(gm, x, points, executor):
    """DeepFool L2 on `x`, then curvature (k=10) at the boundary points of the first `points` inputs."""
    t_df, df = timed(lambda: gm.deepfool(x, executor=executor))
    t_cv, cv = timed(lambda: gm.principal_curvatures(x[:points], k=10, attack=df.rows(slice(0, points)),
                                                     executor=executor))
    return (t_df, df), (t_cv, cv)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import ray
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfgeom import GeometryModel
    from tfgeom.runtime import data, zoo
    from tfgeom.execution.ray import RayExecutor

    digits = data.load("mnist-sample")
    model = zoo.train(zoo.demo_cnn(), digits.x_train, digits.y_train, epochs=args.epochs, seed=0)
    gm = GeometryModel(model, batch_size=50)
    # the 1,000 held-out digits, then training digits: DeepFool needs no labels, 2,000 inputs need both
    x = np.concatenate([digits.x, digits.x_train])[: args.inputs]
    warm = x[:100]
    print(f"machine: {os.cpu_count()} cores, CPU only; {len(x)} inputs, curvature at {args.points} points")

    workloads(gm, warm, 50, None)
    results = {"in process, 1 thread": workloads(gm, x, args.points, None)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for workers in (1, 2):
        with RayExecutor(workers=workers) as executor:
            workloads(gm, warm, 50, executor)  # actors load the model and compile
            results[f"Ray, {workers} worker(s) of 1 thread"] = workloads(gm, x, args.points, executor)
    ray.shutdown()

    base = results["in process, 1 thread"]
    print(f"{'path':34s} {'DeepFool s':>11s} {'curvature s':>12s}  max |diff| vs in process (x_adv, curvatures)")
    for name, ((t_df, df), (t_cv, cv)) in results.items():
        diff_df = float(np.abs(df.x_adv - base[0][1].x_adv).max())
        diff_cv = float(np.abs(cv.values - base[1][1].values).max())
        print(f"{name:34s} {t_df:11.1f} {t_cv:12.1f}  {diff_df:.1e}, {diff_cv:.1e}")
    one, two = results["Ray, 1 worker(s) of 1 thread"], results["Ray, 2 worker(s) of 1 thread"]
    for i, what in enumerate(("DeepFool L2", "curvature")):
        print(f"{what}: speedup 2 workers / 1 worker {one[i][0] / two[i][0]:.2f}x (target >= 1.6x); "
              f"overhead of 1 Ray worker vs in process {100 * (one[i][0] / base[i][0] - 1):+.1f}% (target <= 15%)")


if __name__ == "__main__":
    main()
