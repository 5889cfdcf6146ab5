"""DeepFool speed and quality: tfgeom vs Foolbox 3 vs ART, side by side in one run.

Same Keras models (the demo CNN and a 2-hidden-layer MLP, trained here on
`mnist-sample` with fixed seeds), same correctly classified test images,
same settings (50 steps, 10 candidates, overshoot 0.02). Prints time, success
rate, median L2 norm, the ratios, and the cost floor: one forward+backward
pass over `batch x classes` images times the mean iterations tfgeom used.

    pip install ".[bench]"
    python benchmarks/deepfool_vs_peers.py [--images 500] [--skip-art]
"""
import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfgeom  # noqa: E402
from tfgeom.runtime import zoo  # noqa: E402


def _timed(fn, repeats=1):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _l2(adv, x):
    return np.linalg.norm((np.asarray(adv) - x).reshape(len(x), -1), axis=1)


def run_tfgeom(gm, x, **options):
    gm.deepfool(x[:8], **options)  # trace once, outside the timing
    seconds, r = _timed(lambda: gm.deepfool(x, **options))
    return seconds, r.success, r.norms_l2, float(r.iterations.mean())


def run_foolbox(model, x, labels):
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0, 1))
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    xt, yt = tf.constant(x), tf.constant(labels.astype(np.int64))
    attack(fmodel, xt[:8], yt[:8], epsilons=None)  # warm-up
    seconds, (_, adv, ok) = _timed(lambda: attack(fmodel, xt, yt, epsilons=None))
    return seconds, ok.numpy(), _l2(adv.numpy(), x), None


def run_art(model, x, labels, classes):
    from art.attacks.evasion import DeepFool
    from art.estimators.classification import TensorFlowV2Classifier

    clf = TensorFlowV2Classifier(
        model=model,
        nb_classes=classes,
        input_shape=x.shape[1:],
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    attack = DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=128, verbose=False)
    seconds, adv = _timed(lambda: attack.generate(x))
    ok = clf.predict(adv).argmax(1) != labels
    return seconds, ok, _l2(adv, x), None


def floor(gm, x, iterations, classes):
    """Time of one forward+backward over len(x) * classes images, times the iterations."""
    xr = tf.constant(np.repeat(x, classes, axis=0))
    coeffs = tf.one_hot(np.arange(len(xr)) % classes, classes)
    step = 1280
    gm.runtime.gradient_program()(xr[:step], coeffs[:step])

    def once():
        for i in range(0, len(xr), step):
            gm.runtime.gradient_program()(xr[i : i + step], coeffs[i : i + step])

    seconds, _ = _timed(once, repeats=2)
    return seconds, seconds * iterations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--skip-art", action="store_true")
    args = parser.parse_args()

    ds = tfgeom.data.load("mnist-sample")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}")
    models = {
        "demo CNN": zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0),
        "MLP 256-256": zoo.train(zoo.mlp(), ds.x_train, ds.y_train, epochs=10, seed=0),
    }
    rows = []
    for name, model in models.items():
        gm = tfgeom.GeometryModel(model)
        pred = gm.predict(ds.x)
        keep = np.flatnonzero(pred == ds.y)[: args.images]
        x, labels = ds.x[keep], pred[keep]
        print(f"\n{name}: {len(x)} correctly classified test images")
        results = {
            "tfgeom": run_tfgeom(gm, x),
            "tfgeom narrow=0": run_tfgeom(gm, x, narrow=0),
            "tfgeom box-aware": run_tfgeom(gm, x, box_aware=True),
            "foolbox": run_foolbox(_logits_model(gm), x, labels),
        }
        if not args.skip_art:
            results["art"] = run_art(_logits_model(gm), x, labels, gm.num_classes)
        one_pass, cost_floor = floor(gm, x, results["tfgeom narrow=0"][3], gm.num_classes)
        base = results["tfgeom"]
        print(f"{'method':18s} {'time s':>8s} {'success':>8s} {'median L2':>10s} {'time / tfgeom':>14s}")
        for method, (seconds, ok, norms, _) in results.items():
            med = float(np.median(norms[ok])) if ok.any() else float("nan")
            print(f"{method:18s} {seconds:8.2f} {ok.mean():8.3f} {med:10.4f} {seconds / base[0]:14.2f}")
            rows.append((name, method, seconds, ok.mean(), med, seconds / base[0]))
        fb_med = float(np.median(results["foolbox"][2][results["foolbox"][1]]))
        print(
            f"median L2 tfgeom / foolbox = {np.median(base[2][base[1]]) / fb_med:.4f}; "
            f"tfgeom mean iterations {base[3]:.2f}; one forward+backward over {len(x)}x{gm.num_classes} "
            f"images {one_pass:.2f} s; classic floor (x iterations) {cost_floor:.2f} s"
        )
    print("\n| model | method | time (s) | success | median L2 | time / tfgeom |")
    print("|---|---|---:|---:|---:|---:|")
    for name, method, seconds, succ, med, ratio in rows:
        print(f"| {name} | {method} | {seconds:.2f} | {succ:.3f} | {med:.4f} | {ratio:.2f} |")


def _logits_model(gm):
    """The model as a user hands it to a peer: a Keras model returning logits (softmax removed)."""
    import keras

    clone = keras.models.clone_model(gm.model)
    clone.set_weights(gm.model.get_weights())
    clone.layers[-1].activation = keras.activations.linear
    return clone


if __name__ == "__main__":
    main()
