"""Curvature of the decision boundary of a small MNIST CNN (Fawzi et al. 2018, A.3-A.4).

Trains the demo CNN on the built-in `mnist-sample` digits and reproduces the
paper's qualitative analyses: the curvature profile at DeepFool boundary
points, 2-D boundary sections along the most curved and random directions,
and the curved subspace `S_c` against random subspaces (energy of DeepFool
perturbations, fooling rate of noise, removal of `S_c`).

    python examples/curvature_mnist.py [--out curvature-mnist] [--points 100]
"""
import argparse
import pathlib

import numpy as np

import tfgeom
from tfgeom.analyses import plots
from tfgeom.runtime import zoo
from tfgeom.geometry.subspace import vulnerability


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("curvature-mnist"))
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    ds = tfgeom.data.load("mnist-sample")
    gm = tfgeom.GeometryModel(zoo.train(zoo.demo_cnn(), ds.x_train, ds.y_train, epochs=10, seed=0))
    x = ds.x[: args.points]

    profile = gm.curvature_profile(x, k=20)
    index = profile.curvatures.index
    print(f"{len(index)} boundary points, HVP: {profile.hvp} (h = {profile.step})")
    print(f"mean 5 most negative curvatures: {np.round(profile.mean_negative[:5], 3)}")
    print(f"mean 5 most positive curvatures: {np.round(profile.mean_positive[-5:], 3)}")
    bound = "at most " if profile.saturated.any() else ""
    print(f"near-flat directions: {bound}{100 * profile.flat_fraction.mean():.1f}%; "
          f"asymmetry (neg - pos)/(neg + pos): {profile.asymmetry:.3f}")
    plots.curvature_profile(profile, args.out / "profile.png")

    for direction in ("curved", "random"):
        plots.boundary_sections(gm.boundary_sections(ds.x[:4], direction=direction), args.out / f"{direction}.png")

    sub = gm.curved_subspace(x, dim=40)
    res = vulnerability(gm, ds.x[args.points : args.points + 200], ds.y[args.points : args.points + 200], sub,
                        dims=(5, 10, 20, 40))
    print(f"noise norm {res.eps:.3f}; accuracy {res.accuracy:.3f}; median DeepFool norm {res.median_norm:.3f}")
    print("   m  energy S_c  energy rand  sqrt(m/d)  fool S_c  fool rand  acc removed  norm removed")
    for r in res.rows:
        print(f"{r['dim']:4d}  {r['energy_curved']:10.3f}  {r['energy_random']:11.3f}  {r['sqrt_m_over_d']:9.3f}"
              f"  {r['fooling_curved']:8.3f}  {r['fooling_random']:9.3f}  {r['accuracy_removed']:11.3f}"
              f"  {r['median_norm_removed']:12.3f}")
    plots.subspace_experiments(res, args.out / "subspace.png")
    print(f"figures in {args.out}/")


if __name__ == "__main__":
    main()
