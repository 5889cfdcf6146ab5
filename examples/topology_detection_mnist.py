"""Connectivity of classification regions and curvature-asymmetry detection on a small MNIST CNN (A.2, A.5).

Trains the demo CNN on the built-in `mnist-sample` digits; finds paths between
random same-class test digits and between digits pushed into a class from
another and natural digits of that class; calibrates the detector on clean
digits and evaluates it on others against DeepFool, FGSM and PGD.

    python examples/topology_detection_mnist.py
"""
import numpy as np

import tfgeom
from tfgeom.runtime import zoo
from tfgeom.analyses.connectivity import adversarial_pairs, same_class_pairs
from tfgeom.geometry.attacks import by_name
from tfgeom.geometry.connectivity import connect
from tfgeom.geometry.detection import CurvatureDetector, evaluate


def main():
    ds = tfgeom.data.load("mnist-sample")
    gm = tfgeom.GeometryModel(zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0))
    x, rng = ds.x[:600], np.random.default_rng(0)
    labels = gm.predict(x)
    idx = same_class_pairs(labels, 40, rng)
    for name, (a, b) in (("natural", (x[idx[:, 0]], x[idx[:, 1]])),
                         ("adversarial", adversarial_pairs(gm, x, labels, 20, rng))):
        p = connect(gm, a, b)
        print(f"{name:11s}: {100 * p.connected.mean():.0f}% connected, {100 * p.straight.mean():.0f}% straight, "
              f"anchors mean {p.num_anchors.mean():.2f} max {p.num_anchors.max()}, "
              f"median length/straight {np.median(p.straightness):.3f}")
    det = CurvatureDetector(gm).fit(x[:200])
    for attack in ("deepfool-l2", "deepfool-linf", "fgsm", "pgd"):
        r = evaluate(det, x[200:400], by_name(attack)(gm, x[200:400]), attack)
        print(f"{attack:13s}: AUC {r.auc:.3f}, TPR {r.tpr:.3f} at FPR {r.fpr:.3f}, recovery "
              f"{r.recovery}, margin-baseline AUC {r.auc_margin_baseline:.3f}")


if __name__ == "__main__":
    main()
