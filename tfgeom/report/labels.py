"""Display labels for the summary keys of reports and CLI tables.

Keys are stable snake_case names that programs read from `report.json`; a
label adds units and words for a reader. `LABELS` holds the keys of the
result summaries (`tfgeom.analyses.summaries`, shared by the CLI's commands
and the analyses) and of the `certify` command; each analysis declares the
labels of its own keys next to its code (`Analysis.labels`). Keys without an
entry are shown with spaces for underscores.
"""

LABELS = {
    "examples": "examples",
    "success_rate": "success rate",
    "median_norm": "median norm (input units)",
    "mean_norm": "mean norm (input units)",
    "mean_iterations": "mean DeepFool steps",
    "points": "boundary points",
    "hvp": "Hessian-vector products",
    "step": "finite-difference step (input units)",
    "flat_fraction": "fraction of near-flat directions (|κ| <= flat_tol of the largest)",
    "flat_tol": "flat_tol (relative threshold)",
    "flat_fraction_is_upper_bound": "flat fraction is an upper bound (more curved directions than computed)",
    "saturated_points": "points with more curved directions than computed at an end",
    "mean_most_negative": "mean most negative curvature κ (1/input units)",
    "mean_most_positive": "mean most positive curvature κ (1/input units)",
    "asymmetry": "asymmetry (neg - pos) / (neg + pos) of the curvature mass",
    "pairs": "pairs",
    "connected_pairs": "pairs connected",
    "connected_fraction": "fraction connected",
    "straight_fraction": "straight segment stays in the region (convexity baseline)",
    "mean_anchors": "mean anchors per path",
    "max_anchors": "most anchors on a path",
    "median_path_length_ratio": "median path length / straight distance",
    "median_min_margin": "median smallest margin along the path",
    "resolution_l2": "L2 spacing of the checked points (input units)",
    "test_inputs": "test inputs",
    "training_points": "training points",
    "inside_feature_hull": "inside the training hull, feature space",
    "inside_pixel_hull": "inside the training hull, pixel space",
    "in_guaranteed_region": "in a guaranteed region (own class hull)",
    "median_feature_hull_distance": "median distance to the training hull, feature space",
    "median_pixel_hull_distance": "median distance to the training hull, pixel space",
    "median_distance_to_own_class_hull": "median feature distance to the own class hull",
    "norm": "norm",
    "bisection_converged": "inputs whose search reached that resolution",
    "inputs": "inputs",
    "method": "method",
    "clean_accuracy": "clean accuracy",
    "eps_fraction_of_range": "eps (fraction of the input range)",
    "eps_input_units": "eps (input units)",
    "certified_accuracy": "certified accuracy",
    "median_smallest_margin_bound": "median smallest margin bound",
    "solves_not_optimal": "solves not optimal",
    "median_radius_fraction_of_range": "median certified radius, correct inputs (fraction of range)",
    "median_radius_input_units": "median certified radius, correct inputs (input units)",
    "radius_quantiles_10_90_fraction_of_range": "10% / 90% radius quantiles (fraction of range)",
    "seconds": "seconds",
    "skipped": "skipped",
}

_PREFIXES = {
    "natural_": "natural pairs: ",
    "adversarial_": "adversarial pairs: ",
    "auc_margin_baseline_": "AUC of the margin baseline: ",
    "auc_interval_": "95% interval of the curvature detector's AUC: ",
    "auc_": "AUC of the curvature detector: ",
    "tpr_": "TPR at the calibrated threshold: ",
}


def all_labels():
    """`{key: label}`: the summaries' and commands' labels and those every analysis declares."""
    from tfgeom.analyses import REGISTRY

    out = dict(LABELS)
    for analysis in REGISTRY.values():
        out.update(analysis.labels)
    return out


def label(key):
    """The display label of a summary key."""
    if key in LABELS:
        return LABELS[key]
    labels = all_labels()
    if key in labels:
        return labels[key]
    for prefix, text in _PREFIXES.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            return text + labels.get(rest, rest.replace("_", "-" if prefix.startswith(("auc", "tpr")) else " "))
    return key.replace("_", " ")
