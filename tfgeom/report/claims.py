"""The papers' claims, judged on the analysed model: the scorecard at the top of every report.

Each `Claim` names its source (the paper's section and `docs/science.md`'s), the
statistic that measures it, and a criterion fixed here, in code, before any
measurement (`tfgeom.runtime.statistics.Criterion`; never tuned on a result). The
evidence comes from the report's sections (their `evidence` records: one value
per example), so a scorecard can be recomputed from `report.json` alone. Every
statistic has a bootstrap 95% interval over examples, and the verdict is read
from the interval (`tfgeom.runtime.statistics.verdict`): `holds`, `does not hold`, or
`inconclusive` when the interval straddles the criterion, there are fewer than
10 examples, or the section did not run.

Connectivity can only be shown, never refuted: a pair for which no path was
found within the anchor budget is "not shown", so that claim is `holds` or
`inconclusive`, never `does not hold`. Flatness is read from the whole
spectrum of principal curvatures (`tfgeom.geometry.spectrum`), so it can be
decided either way.
"""
from typing import Callable, NamedTuple

import numpy as np

from tfgeom.runtime import statistics as st


class Claim(NamedTuple):
    """One claim of the papers.

    Fields:
        key: stable snake_case key in `report.json` `claims`.
        claim: the claim in one sentence.
        source: paper and section.
        statistic: what is measured, per example, and how it is summarised.
        criteria: `[(name, Criterion)]`; all must hold.
        evidence: `sections -> [Estimate]` (one per criterion), or None when a section is missing.
        unshown: for claims the statistic can support but not refute, why a failed criterion is
            `inconclusive` rather than `does not hold` (connectivity, flatness); empty otherwise.
        sections: the report sections its evidence comes from (`tfgeom.report.rounds` grows their examples).
        context: `sections -> str` added to the verdict's note (e.g. how tight a DeepFool distance is), or None.
    """

    key: str
    claim: str
    source: str
    statistic: str
    criteria: list
    evidence: Callable
    unshown: str = ""
    sections: tuple = ()
    context: Callable = None


def _values(values):
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _section(sections, name, *keys):
    """`sections[name]["evidence"][keys...]`, or None when the section did not run or has no such evidence."""
    node = sections.get(name, {}).get("evidence")
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fraction(name, *keys):
    def evidence(sections):
        values = _section(sections, name, *keys)
        return None if values is None else [st.interval(_values(values))]
    return evidence


def _median(name, *keys):
    def evidence(sections):
        values = _section(sections, name, *keys)
        return None if values is None else [st.interval(_values(values), np.median)]
    return evidence


def _more_negative(sections):
    neg, pos = _section(sections, "curvature", "negative_mass"), _section(sections, "curvature", "positive_mass")
    return None if neg is None else [st.interval(_values(neg) > _values(pos))]


def _shared(sections):
    overlap = _section(sections, "curvature", "shared_overlap_over_random")
    return None if overlap is None else [st.interval(_values(overlap), np.median)]


def _energy(sections):
    ev = _section(sections, "subspace", "per_input")
    if ev is None:
        return None
    ratio = _values(ev["energy_curved"]) / np.maximum(_values(ev["energy_random"]), 1e-12)
    return [st.interval(ratio, np.median)]


def _noise(sections):
    ev = _section(sections, "subspace", "per_input")
    if ev is None:
        return None
    return [st.interval(_values(ev["fooled_curved"]) - _values(ev["fooled_random"]))]


def _removal(sections):
    ev = _section(sections, "subspace", "per_input")
    if ev is None:
        return None
    ratio = _values(ev["norm_removed"]) / np.maximum(_values(ev["norm"]), 1e-12)
    drop = _values(ev["correct_removed"]).astype(float) - _values(ev["correct"]).astype(float)
    return [st.interval(ratio, np.median), st.interval(drop)]


def _detection(sections):
    ev = _section(sections, "detection", "deepfool-l2")
    if ev is None:
        return None
    return [st.auc_interval(ev["scores_clean"], ev["scores_perturbed"])]


def _recovery(sections):
    ev = _section(sections, "detection", "deepfool-l2")
    return None if ev is None else [st.interval(_values(ev["recovered"]))]


def _distances(sections):
    pixel = _section(sections, "feature_space", "deepfool_l2")
    feature = _section(sections, "feature_space", "feature_boundary_distance")
    if pixel is None or feature is None:
        return None
    return [st.paired_interval(_values(pixel), _values(feature), st.rank_correlation)]


def _bracket(sections):
    """How far DeepFool's distance (an upper bound) can be above the true one, from the certification section's
    bracket `certified radius <= distance <= DeepFool norm`."""
    summary = sections.get("certification", {}).get("summary", {})
    ratio, n = summary.get("median_deepfool_over_certified_radius"), summary.get("bracketed_inputs", 0)
    if not ratio:
        return "pixel distances are DeepFool's, upper bounds (no certified bracket in this report)"
    return (f"pixel distances are DeepFool's, upper bounds: on the {n} bracketed inputs the true distance is at least "
            f"1/{ratio:.3g} of it (median, {summary.get('norm', 'linf')}; certification section)")


A, B = "Fawzi et al. 2018", "Yousefzadeh 2022"
NOT_SHOWN = "pairs without a path within the anchor budget are not shown, not disconnected"
CLAIMS = [
    Claim("regions_connected", "Classification regions are connected: same-class natural inputs are joined by a "
          "path that stays in the region.", f"{A}, Sec. 3 (docs/science.md A.2)",
          "fraction of random same-class pairs joined by a found path (proved by bound propagation or sampled at the "
          "reported resolution: the connectivity section counts which)", [("connected", st.Criterion(">", 0.9))],
          _fraction("connectivity", "natural_connected"), NOT_SHOWN, sections=("connectivity",)),
    Claim("adversarial_regions_connected", "An input pushed into a class by an adversarial perturbation is connected "
          "to natural members of that class.", f"{A}, Sec. 3 (docs/science.md A.2)",
          "fraction of adversarial/natural pairs joined by a found path (proved or sampled: the connectivity "
          "section counts which)", [("connected", st.Criterion(">", 0.9))],
          _fraction("connectivity", "adversarial_connected"), NOT_SHOWN, sections=("connectivity",)),
    Claim("boundary_flat", "Near data points the decision boundary is flat in most directions and curved in a few.",
          f"{A}, Sec. 4 (docs/science.md A.3)", "median over boundary points of the fraction of all d - 1 tangent "
          "directions whose |curvature| is at most 10% of the point's largest, from the whole spectrum (stochastic "
          "Lanczos quadrature)", [("flat", st.Criterion(">", 0.5))], _median("curvature", "flat_fraction_all"),
          sections=("curvature",)),
    Claim("more_negative_curvature", "The boundary bends towards the input's class region more than away from it "
          "(curvature is asymmetric; negative curvature in tfgeom's convention).",
          f"{A}, Sec. 4 (docs/science.md A.3)", "fraction of boundary points whose summed curvature towards the "
          "input's region (negative, F = f_k - f_j) exceeds the summed curvature away from it; the paper's own sign "
          "cannot be confirmed, so read the verdict geometrically (docs/science.md A.3)",
          [("negative", st.Criterion(">", 0.5))], _more_negative, sections=("curvature",)),
    Claim("curved_directions_shared", "The curved directions are shared across data points.",
          f"{A}, Sec. 4 (docs/science.md A.4)", "median over points of the mean squared cosine between a point's most "
          "curved direction and the other points' ones, over its value for random directions (1/d)",
          [("shared", st.Criterion(">", 2.0))], _shared, sections=("curvature",)),
    Claim("curved_subspace_holds_perturbations", "Adversarial perturbations lie mostly in the curved subspace S_c.",
          f"{A}, Sec. 4 (docs/science.md A.4)", "median over evaluation inputs of ||P_Sc r|| / ||P_rand r|| for DeepFool "
          "L2 perturbations r (S_c fitted on other inputs; a random subspace of the same dimension)",
          [("energy_ratio", st.Criterion(">", 1.5))], _energy, sections=("subspace",)),
    Claim("noise_in_curved_subspace_fools_more", "Random noise inside S_c fools the classifier more often than "
          "noise of the same norm in a random subspace.", f"{A}, Sec. 4 (docs/science.md A.4)",
          "mean over inputs of (fooling rate in S_c - fooling rate in a random subspace), noise norm = median "
          "DeepFool L2 norm", [("difference", st.Criterion(">", 0.0))], _noise, sections=("subspace",)),
    Claim("removing_curved_subspace_adds_robustness", "Removing the S_c component of inputs raises robustness and "
          "barely changes accuracy.", f"{A}, Sec. 4 (docs/science.md A.4)", "median over inputs of DeepFool L2 norm "
          "after / before removing S_c (> 1), and mean change of correctness (> -0.05)",
          [("norm_ratio", st.Criterion(">", 1.0)), ("accuracy_change", st.Criterion(">", -0.05))], _removal,
          sections=("subspace",)),
    Claim("curvature_detects_perturbations", "Curvature asymmetry detects small adversarial perturbations.",
          f"{A}, Sec. 5 (docs/science.md A.5)", "ROC AUC of the calibrated curvature score, clean evaluation inputs vs "
          "their DeepFool L2 perturbations (threshold and orientation set on a disjoint calibration split)",
          [("auc", st.Criterion(">", 0.9))], _detection, sections=("detection",)),
    Claim("curvature_recovers_labels", "The curvature of the detected inputs recovers their original label.",
          f"{A}, Sec. 5 (docs/science.md A.5)", "fraction of detected DeepFool L2 perturbations whose recovered label is "
          "the original", [("recovered", st.Criterion(">", 0.5))], _recovery, sections=("detection",)),
    Claim("test_outside_training_hull_pixel", "Test inputs lie outside the convex hull of the training set in pixel "
          "space.", f"{B}, Sec. 1 (docs/science.md B.2)", "fraction of test inputs outside the hull of the training inputs",
          [("outside", st.Criterion(">", 0.5))], _fraction("feature_space", "outside_pixel_hull"),
          sections=("feature_space",)),
    Claim("test_outside_training_hull_feature", "Test inputs lie outside the convex hull of the training features "
          "too.", f"{B}, Sec. 1 (docs/science.md B.2)", "fraction of test inputs whose features are outside the hull of "
          "the training features", [("outside", st.Criterion(">", 0.5))],
          _fraction("feature_space", "outside_feature_hull"), sections=("feature_space",)),
    Claim("guaranteed_regions_classify_correctly", "Inputs whose features fall in a class's training hull (a "
          "guaranteed region) are classified correctly.", f"{B}, Sec. 3 (docs/science.md B.3)",
          "accuracy on test inputs inside the guaranteed region of their predicted class",
          [("accuracy", st.Criterion(">", 0.95))], _fraction("feature_space", "correct_in_guaranteed_region"),
          sections=("feature_space",)),
    Claim("feature_and_pixel_distances_differ", "Distances to the boundary in feature space and in pixel space "
          "tell different stories.", f"{B}, Sec. 1 (docs/science.md B.1)", "Spearman rank correlation between the "
          "DeepFool L2 distance (pixel space) and the exact feature-space boundary distance, over test inputs",
          [("rank_correlation", st.Criterion("<", 0.9))], _distances, context=_bracket, sections=("feature_space",)),
]

# every section a claim reads, and DeepFool's (the shared attack, shown first), in report order
SECTIONS = ("deepfool", "curvature", "subspace", "connectivity", "detection", "feature_space")


def scorecard(sections):
    """One JSON-ready record per claim (`CLAIMS` order) from a report's sections.

    Each record: `key`, `claim`, `source`, `statistic`, `criterion` (text),
    `value`, `low`, `high` (95% interval), `examples`, `examples_needed` (for a decisive verdict at the
    observed spread; None when no number would do), `verdict`, `note`;
    claims with several criteria list each under `parts` and report the first
    one's figures at the top.
    """
    cards = []
    for claim in CLAIMS:
        estimates = claim.evidence(sections)
        record = {"key": claim.key, "claim": claim.claim, "source": claim.source, "statistic": claim.statistic,
                  "criterion": " and ".join(c.describe(name) for name, c in claim.criteria)}
        if estimates is None:
            cards.append(dict(record, value=None, low=None, high=None, examples=0, verdict=st.INCONCLUSIVE,
                              note="its section did not run or has no per-example evidence", examples_needed=None))
            continue
        verdicts = [st.verdict(e, c) for e, (_, c) in zip(estimates, claim.criteria)]
        verdict, note = st.all_of(verdicts), ""
        if verdict == st.FAILS and claim.unshown:
            verdict, note = st.INCONCLUSIVE, claim.unshown
        if min(e.n for e in estimates) < st.MIN_EXAMPLES:
            note = f"fewer than {st.MIN_EXAMPLES} examples"
        if claim.context is not None:
            note = "; ".join(t for t in (note, claim.context(sections)) if t)
        first = estimates[0]
        needed = [st.examples_needed(e, c) for e, (_, c) in zip(estimates, claim.criteria)]
        record.update(value=first.value, low=first.low, high=first.high, examples=first.n, verdict=verdict,
                      note=note, examples_needed=None if None in needed else max(needed))
        if len(estimates) > 1:
            record["parts"] = [dict(name=name, criterion=c.describe(name), verdict=v, **e.as_dict())
                               for (name, c), e, v in zip(claim.criteria, estimates, verdicts)]
        cards.append(record)
    return cards
