"""Distance to the decision boundary of a small MNIST CNN (Fawzi et al. 2018, A.1).

Trains the demo CNN on the built-in `mnist-sample` digits, runs DeepFool (L2
and Linf) on the test split, prints the median perturbation norms, checks that
the boundary points sit on the boundary, and saves a histogram.

    python examples/deepfool_mnist.py [--out deepfool-mnist]
"""
import argparse
import pathlib

import numpy as np

import tfgeom
from tfgeom.analyses import plots
from tfgeom.runtime import zoo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("deepfool-mnist"))
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    ds = tfgeom.data.load("mnist-sample")
    model = zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0)
    gm = tfgeom.GeometryModel(model)
    x = ds.x[: args.limit]
    print(f"test accuracy {np.mean(gm.predict(ds.x) == ds.y):.3f}; logits: {gm.logits_source}")

    norms = {}
    for norm in ("l2", "linf"):
        r = gm.deepfool(x, norm=norm)
        ok = r.success
        norms[norm] = r.norms[ok]
        rel = np.median(r.norms_l2[ok] / np.linalg.norm(x[ok].reshape(ok.sum(), -1), axis=1))
        print(
            f"{norm}: success {ok.mean():.3f}, median norm {np.median(r.norms[ok]):.4f} "
            f"(L2 relative to ||x||: {rel:.3f}), mean steps {r.iterations.mean():.2f}, "
            f"worst boundary residual {np.nanmax(r.boundary_margin):.1e}"
        )
    path = plots.histogram({"L2": norms["l2"]}, "L2 norm", "DeepFool on the demo CNN", args.out / "l2_hist.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
