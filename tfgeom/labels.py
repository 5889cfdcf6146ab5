"""Display labels for the summary keys of reports and CLI tables (one table, used by both).

Keys are stable snake_case names that programs read from `report.json`; a
label adds units and words for a reader. Keys without an entry are shown with
spaces for underscores.
"""

LABELS = {
    # deepfool
    "examples": "examples",
    "l2_success_rate": "L2 success rate",
    "l2_median_norm": "L2 median norm (input units)",
    "l2_median_relative_norm": "L2 median norm relative to ||x|| (median of ||r|| / ||x||)",
    "linf_success_rate": "Linf success rate",
    "linf_median_norm": "Linf median norm (input units)",
    "success_rate": "success rate",
    "median_norm": "median norm (input units)",
    "mean_norm": "mean norm (input units)",
    "median_relative_norm": "median ||r|| / ||x||",
    "mean_iterations": "mean DeepFool steps",
    "max_boundary_residual": "largest relative residual of the boundary points",
    # curvature
    "points": "boundary points",
    "hvp": "Hessian-vector products",
    "step": "finite-difference step (input units)",
    "flat_fraction": "fraction of near-flat directions (|κ| <= flat_tol of the largest)",
    "flat_tol": "flat_tol (relative threshold)",
    "flat_fraction_is_upper_bound": "flat fraction is an upper bound (more curved directions than computed)",
    "saturated_points": "points with more curved directions than computed at an end",
    "saturated": "points with more curved directions than computed (flat fraction then an upper bound)",
    "mean_most_negative": "mean most negative curvature κ (1/input units)",
    "mean_most_positive": "mean most positive curvature κ (1/input units)",
    "asymmetry": "asymmetry (neg - pos) / (neg + pos) of the curvature mass",
    # subspace
    "fit_points": "boundary points defining S_c",
    "evaluation_inputs": "evaluation inputs",
    "dim": "dimension m of S_c",
    "energy_curved": "share of DeepFool perturbation in S_c (||P r|| / ||r||)",
    "energy_random": "share in a random m-dimensional subspace",
    "noise_l2_norm": "L2 norm of the random noise (median DeepFool norm)",
    "fooling_rate_curved": "fooling rate of noise in S_c",
    "fooling_rate_random": "fooling rate of noise in a random subspace",
    "accuracy": "accuracy (original inputs)",
    "accuracy_curved_removed": "accuracy with S_c removed from the inputs",
    "median_l2_norm": "median DeepFool L2 norm (original inputs)",
    "median_l2_norm_curved_removed": "median DeepFool L2 norm with S_c removed",
    # connectivity
    "natural_connected": "natural pairs",
    "adversarial_connected": "adversarial pairs",
    "pairs": "pairs",
    "connected_pairs": "pairs connected",
    "connected_fraction": "fraction connected",
    "straight_fraction": "straight segment stays in the region (convexity baseline)",
    "mean_anchors": "mean anchors per path",
    "max_anchors": "most anchors on a path",
    "median_path_length_ratio": "median path length / straight distance",
    "median_min_margin": "median smallest margin along the path",
    "resolution_l2": "L2 spacing of the checked points (input units)",
    # detection
    "calibration_inputs": "calibration inputs (clean only)",
    "step_h": "finite-difference step h (input units)",
    "chosen_directions": "directions chosen on the calibration split",
    "chosen_rule": "score chosen on the calibration split",
    "chosen_calibration_auc": "its AUC on the calibration split",
    "threshold": "threshold on the score",
    "orientation": "orientation",
    # feature space
    "test_inputs": "test inputs",
    "training_points": "training points",
    "feature_dim": "feature dimension",
    "inside_feature_hull": "inside the training hull, feature space",
    "inside_pixel_hull": "inside the training hull, pixel space",
    "in_guaranteed_region": "in a guaranteed region (own class hull)",
    "median_feature_hull_distance": "median distance to the training hull, feature space",
    "median_pixel_hull_distance": "median distance to the training hull, pixel space",
    "median_distance_to_own_class_hull": "median feature distance to the own class hull",
    "median_feature_boundary_distance": "median exact boundary distance, feature space",
    "median_deepfool_over_feature_distance": "median DeepFool L2 / feature boundary distance",
    "rank_correlation_deepfool_feature_distance": "rank correlation DeepFool vs feature distance",
    "ambiguous_fraction": "ambiguous (second boundary within 10% of the first)",
    "accuracy_in_guaranteed_regions": "accuracy in guaranteed regions",
    "median_hull_distance_correct": "median hull distance, correct inputs",
    "median_hull_distance_wrong": "median hull distance, misclassified inputs",
    "rank_correlation_hull_distance_confidence": "rank correlation hull distance vs confidence",
    "morph_class_changes_pixel_line": "morph: class changes along the pixel line",
    "morph_class_changes_feature_line": "morph: class changes along the feature line",
    # certification
    "norm": "norm",
    "input_range": "input range (radii are fractions of it)",
    "crown_intermediate": "CROWN pre-activation bounds",
    "radius_inputs": "inputs behind every radius figure (same for IBP and CROWN)",
    "bisection_rtol": "radius resolution (bracket within this fraction of the radius)",
    "bisection_converged": "inputs whose search reached that resolution",
    "median_crown_over_ibp_radius": "median CROWN / IBP radius (correct inputs)",
    "ibp_median_radius_fraction_of_range": "IBP median certified radius (fraction of range)",
    "ibp_median_radius_input_units": "IBP median certified radius (input units)",
    "ibp_seconds_per_input": "IBP seconds per input",
    "crown_median_radius_fraction_of_range": "CROWN median certified radius (fraction of range)",
    "crown_median_radius_input_units": "CROWN median certified radius (input units)",
    "crown_seconds_per_input": "CROWN seconds per input",
    "segments_certified": "morphing segments certified (CROWN)",
    "milp": "MILP",
    "milp_eps_fraction_of_range": "MILP eps (fraction of range)",
    "milp_inputs": "MILP inputs",
    "milp_solves_optimal": "MILP solves optimal",
    "milp_certified": "MILP certified inputs",
    "milp_ordering_holds": "MILP >= CROWN >= IBP on every margin",
    "feature_test_inputs": "feature space: test inputs",
    "feature_class_hulls_certified": "feature space: class hulls certified (LP)",
    "feature_in_guaranteed_region": "feature space: test inputs in a guaranteed region",
    "feature_median_certified_l2_radius": "feature space: median exact certified L2 radius",
    # certify command
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


def label(key):
    """The display label of a summary key."""
    if key in LABELS:
        return LABELS[key]
    for prefix, text in _PREFIXES.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            return text + LABELS.get(rest, rest.replace("_", "-" if prefix.startswith(("auc", "tpr")) else " "))
    return key.replace("_", " ")
