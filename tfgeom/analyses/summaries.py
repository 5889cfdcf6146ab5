"""One summary per result type: flat dicts with stable snake_case keys (units in the name where it matters).

The CLI commands and the report print the same numbers from these functions;
display labels for the keys live in `tfgeom.report.labels`.
"""
import numpy as np


def _median(values):
    values = np.asarray(values)
    return float(np.median(values)) if values.size else None


def summarize_attack(result, x=None):
    """Summary of an `AttackResult` (successful perturbations only); `x` adds the relative norm."""
    ok = result.success
    summary = {
        "examples": int(len(ok)),
        "norm": result.norm,
        "success_rate": float(ok.mean()) if len(ok) else None,
        "median_norm": _median(result.norms[ok]),
        "mean_norm": float(result.norms[ok].mean()) if ok.any() else None,
        "mean_iterations": float(result.iterations.mean()) if len(ok) else None,
    }
    if x is not None:
        xnorm = np.linalg.norm(np.asarray(x).reshape(len(x), -1), axis=1)
        summary["median_relative_norm"] = _median(result.norms_l2[ok] / np.maximum(xnorm[ok], 1e-12))
    if result.boundary_margin is not None:
        summary["max_boundary_residual"] = float(np.nanmax(result.boundary_margin)) if ok.any() else None
    return summary


def summarize_profile(profile):
    """Summary of a curvature `Profile`."""
    n = len(profile.values)
    return {
        "points": int(n),
        "hvp": profile.hvp,
        "step": profile.step,
        "flat_fraction": float(np.mean(profile.flat_fraction)) if n else None,
        "flat_tol": profile.flat_tol,
        "flat_fraction_is_upper_bound": bool(profile.saturated.any()),
        "saturated_points": int(profile.saturated.sum()),
        "mean_most_negative": float(profile.mean_negative[0]) if n else None,
        "mean_most_positive": float(profile.mean_positive[-1]) if n else None,
        "asymmetry": profile.asymmetry,
        "mean_negative": profile.mean_negative.tolist(),
        "mean_positive": profile.mean_positive.tolist(),
    }


def summarize_paths(paths):
    """Summary of connectivity `Paths`."""
    n = int(len(paths.connected))
    if n == 0:
        return {"pairs": 0}
    connected = paths.connected
    return {
        "pairs": n,
        "connected_pairs": int(np.sum(connected)),
        "connected_fraction": float(np.mean(connected)),
        "straight_fraction": float(np.mean(paths.straight)),
        "mean_anchors": float(np.mean(paths.num_anchors)),
        "max_anchors": int(np.max(paths.num_anchors)),
        "median_path_length_ratio": _median(paths.straightness[connected]),
        "median_min_margin": float(np.median(paths.min_margin)),
        "resolution_l2": float(paths.resolution),
    }


def summarize_hulls(fs, features_distance, pixel_distance, guaranteed):
    """Summary of hull distances of test inputs (`HullResult.distance` in both spaces) and a `Guaranteed`."""
    return {
        "test_inputs": int(len(features_distance)),
        "training_points": int(len(fs.features)),
        "inside_feature_hull": float(np.mean(fs.inside(features_distance, "feature"))),
        "inside_pixel_hull": float(np.mean(fs.inside(pixel_distance, "pixel"))),
        "in_guaranteed_region": float(np.mean(guaranteed.inside)),
        "median_feature_hull_distance": _median(features_distance),
        "median_pixel_hull_distance": _median(pixel_distance),
        "median_distance_to_own_class_hull": _median(guaranteed.distance),
    }


def summarize_certificates(certified, margins_min, correct, eps, span, status=None):
    """Summary of certificates at one radius `eps` (input units) over inputs with `correct` predictions."""
    summary = {
        "inputs": int(len(certified)),
        "clean_accuracy": float(np.mean(correct)),
        "eps_fraction_of_range": float(eps / span),
        "eps_input_units": float(eps),
        "certified_accuracy": float(np.mean(np.asarray(certified) & correct)),
        "median_smallest_margin_bound": _median(margins_min),
    }
    if status is not None:
        summary["solves_not_optimal"] = int(sum(s != "optimal" for s in status))
    return summary


def summarize_radii(radius, correct, span, converged):
    """Summary of certified radii (input units) over inputs with `correct` predictions."""
    radius = np.asarray(radius, np.float64)
    med = _median(radius[correct]) if np.any(correct) else 0.0
    return {
        "inputs": int(len(radius)),
        "clean_accuracy": float(np.mean(correct)),
        "median_radius_fraction_of_range": med / span,
        "median_radius_input_units": med,
        "radius_quantiles_10_90_fraction_of_range": [float(q) / span for q in np.quantile(radius, [0.1, 0.9])],
        "bisection_converged": int(np.sum(converged)),
    }
