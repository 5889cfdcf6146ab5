"""Analyses `curvature` (profile and 2-D sections) and `subspace` (curved subspace vs vulnerability)."""
import numpy as np

from tfgeom import plots
from tfgeom.analyses import register
from tfgeom.curvature import curvature_profile
from tfgeom.sections import boundary_sections
from tfgeom.subspace import curved_subspace, vulnerability

PROFILE_POINTS = 100  # boundary points averaged in the profile
SECTION_POINTS = 4
SUBSPACE_FIT = 100  # inputs whose boundary points define S_c
SUBSPACE_EVAL = 200  # other inputs on which vulnerability is measured
SUBSPACE_DIMS = (5, 10, 20, 40)


def _progress(context, what, done, total):
    if context.progress:
        context.progress(what, done, total)


@register(
    "curvature",
    "Curvature of the decision boundary",
    """Principal curvatures of the decision boundary at DeepFool boundary points (1/input units): the k most
    negative and k most positive of the d - 1 directions tangent to the boundary, averaged over points.
    A boundary that is flat in most directions and curved in a few shows values near 0 except at the ends;
    the asymmetry compares the negative end with the positive one.""",
)
def run_curvature(context):
    """Curvature profile at DeepFool boundary points, and sections along curved and random directions."""
    gm, x, out = context.gm, context.data.x, context.out_dir
    x_prof = x[:PROFILE_POINTS]
    _progress(context, "curvature profile", 0, 1)
    k = min(20, (int(np.prod(gm.input_shape)) - 1) // 4)
    profile, _, index = curvature_profile(gm, x_prof, k=k, seed=context.seed)
    _progress(context, "curvature profile", 1, 1)
    fig = plots.curvature_profile(profile, out / "curvature_profile.png")
    figures = [{"title": "Curvature profile", "file": fig.name}]
    for direction in ("curved", "random"):
        secs = boundary_sections(gm, x[:SECTION_POINTS], direction=direction, seed=context.seed)
        if secs:
            f = plots.boundary_sections(secs, out / f"sections_{direction}.png")
            figures.append({"title": f"Boundary sections along {direction} directions", "file": f.name})
    flat = float(np.mean(profile.flat_fraction)) if len(index) else None
    return {
        "summary": {
            "points": int(len(index)),
            "hvp": profile.hvp,
            "finite-difference step": profile.step,
            f"fraction of near-flat directions (|κ| <= {profile.flat_tol:g} of the largest)": flat,
            f"points with more than {k} curved directions at an end (flat fraction is then an upper bound)":
                f"{int(profile.saturated.sum())} of {len(index)}",
            "mean most negative κ": float(profile.mean_negative[0]) if len(index) else None,
            "mean most positive κ": float(profile.mean_positive[-1]) if len(index) else None,
            "asymmetry (neg - pos) / (neg + pos)": profile.asymmetry,
        },
        "profile": {
            "mean_negative": profile.mean_negative.tolist(),
            "mean_positive": profile.mean_positive.tolist(),
            "negative_mass": profile.negative_mass,
            "positive_mass": profile.positive_mass,
        },
        "tables": [
            {
                "title": "Mean principal curvatures by rank",
                "columns": ["rank", "most negative", "most positive"],
                "rows": [
                    [i + 1, float(profile.mean_negative[i]), float(profile.mean_positive[::-1][i])]
                    for i in range(len(profile.mean_negative))
                ],
            }
        ],
        "figures": figures,
    }


@register(
    "subspace",
    "Curved subspace and vulnerability",
    """The curved subspace S_c is spanned by the m most curved boundary directions, found on some inputs
    and tested on others. Energy is the share ||P r|| / ||r|| of DeepFool perturbations inside S_c (a random
    subspace gives about sqrt(m/d)); fooling rates are for random noise of one norm inside S_c vs a random
    subspace. Higher values in S_c than in random subspaces support the claim that curvature explains vulnerability.""",
)
def run_subspace(context):
    """S_c from some inputs' boundary points; energy, fooling and removal experiments on others."""
    gm, data, out = context.gm, context.data, context.out_dir
    n = len(data.x)
    n_fit = min(SUBSPACE_FIT, n // 2)
    x_fit, x_eval = data.x[:n_fit], data.x[n_fit : n_fit + SUBSPACE_EVAL]
    y_eval = None if data.y is None else data.y[n_fit : n_fit + SUBSPACE_EVAL]
    d = int(np.prod(gm.input_shape))
    dims = tuple(m for m in SUBSPACE_DIMS if 2 * m <= d - 1)
    _progress(context, "curved subspace", 0, 2)
    sub = curved_subspace(gm, x_fit, dim=max(dims), seed=context.seed)
    _progress(context, "curved subspace", 1, 2)
    res = vulnerability(gm, x_eval, y_eval, sub, dims=dims, seed=context.seed)
    _progress(context, "curved subspace", 2, 2)
    fig = plots.subspace_experiments(res, out / "subspace.png")
    rows = [
        [
            r["dim"], r["energy_curved"], r["energy_random"], r["sqrt_m_over_d"], r["fooling_curved"],
            r["fooling_random"], r["accuracy_removed"], r["median_norm_removed"],
        ]
        for r in res["rows"]
    ]
    best = res["rows"][-1]
    return {
        "summary": {
            "fit points": int(sub.points),
            "evaluation inputs": int(len(x_eval)),
            "hvp": sub.hvp,
            f"DeepFool energy in S_c (m={best['dim']})": best["energy_curved"],
            f"DeepFool energy in a random subspace (m={best['dim']})": best["energy_random"],
            f"fooling rate in S_c at ‖v‖={res['eps']:.3g}": best["fooling_curved"],
            "fooling rate in a random subspace": best["fooling_random"],
            "accuracy (original)": res["accuracy"],
            f"accuracy with S_c removed (m={best['dim']})": best["accuracy_removed"],
            "median DeepFool norm (original)": res["median_norm"],
            f"median DeepFool norm with S_c removed (m={best['dim']})": best["median_norm_removed"],
        },
        "experiments": res,
        "eigenvalues": sub.values.tolist(),
        "tables": [
            {
                "title": "Sweep over the subspace dimension m",
                "columns": [
                    "m", "energy in S_c", "energy random", "sqrt(m/d)", "fooling S_c", "fooling random",
                    "accuracy S_c removed", "median norm S_c removed",
                ],
                "rows": rows,
            },
            {
                "title": f"Fooling rate of random noise vs its norm (m={best['dim']})",
                "columns": ["noise norm / median DeepFool norm", "noise norm", "fooling S_c", "fooling random"],
                "rows": [
                    [r["scale"], r["eps"], r["fooling_curved"], r["fooling_random"]] for r in res["noise_sweep"]
                ],
            },
        ],
        "figures": [{"title": "Curved subspace vs random subspaces", "file": fig.name}],
    }
