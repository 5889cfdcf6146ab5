"""Analysis `feature_space`: polyhedral regions, hulls, guaranteed regions, extrapolation, morphing."""
from typing import NamedTuple

import numpy as np

from tfgeom.analyses import plots
from tfgeom.runtime import statistics
from tfgeom.analyses import Analysis, image_like, register
from tfgeom.analyses.summaries import summarize_hulls


def rank_correlation(a, b):
    """Spearman rank correlation; None for fewer than 3 values."""
    return statistics.rank_correlation(a, b) if len(a) >= 3 else None


def _median_or_none(values):
    return float(np.median(values)) if len(values) else None


@register
class FeatureSpaceAnalysis(Analysis):
    """Exact boundary distances vs DeepFool, hulls in both spaces, guaranteed regions, morphing."""

    name = "feature_space"
    position = 60
    labels = {
        "feature_dim": "feature dimension",
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
    }
    title = "Feature space of the last hidden layer"
    intro = """In the space of the last hidden layer the classifier is affine, so its regions are polyhedra and the
    distance to the boundary is exact (feature units, L2). Distances to the convex hull of the training
    features (and pixels) measure extrapolation: 0 means inside the hull; a test point inside its class hull
    lies in a guaranteed region, where the class cannot change."""

    class Settings(NamedTuple):
        max_train: int = 4000  # training points whose hulls are measured
        ambiguous: float = 0.1  # "ambiguous": second-closest boundary within this fraction of the closest
        morph_steps: int = 9  # images along the morphing line

    def compute(self, context, settings):
        gm, data = context.gm, context.data
        if data.x_train is None:
            return {"summary": {"skipped": "needs x_train/y_train in the data file (keys x_train, y_train, x_test, y_test)"}}
        if not gm.has_feature_split:
            return {"summary": {"skipped": gm.split_error}}
        fs = context.feature_space(settings.max_train)
        x = data.x
        z = context.features().astype(np.float64)
        logits = z @ fs.W + fs.b
        pred = logits.argmax(axis=1)
        correct = pred == (pred if data.y is None else data.y)
        regions = fs.regions(z)
        df = context.deepfool("l2")
        ok = df.success
        ambiguous = (regions.second - regions.distance) <= settings.ambiguous * regions.distance
        feat = fs.hull_distance(z, executor=context.executor)
        pix = fs.hull_distance(x, space="pixel", executor=context.executor)
        guaranteed = fs.guaranteed(x, features=z)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        confidence = (probs / probs.sum(1, keepdims=True)).max(1)
        a, b = 0, int(np.flatnonzero(pred != pred[0])[0]) if np.any(pred != pred[0]) else 1
        m = fs.morph(x[a], x[b], steps=settings.morph_steps)
        inside = guaranteed.inside
        summary = summarize_hulls(fs, feat.distance, pix.distance, guaranteed)
        summary.update({
            "feature_dim": int(z.shape[1]),
            "median_feature_boundary_distance": float(np.median(regions.distance)),
            "median_deepfool_over_feature_distance":
                _median_or_none(df.norms_l2[ok] / np.maximum(regions.distance[ok], 1e-12)),
            "rank_correlation_deepfool_feature_distance": rank_correlation(df.norms_l2[ok], regions.distance[ok]),
            "ambiguous_fraction": float(np.mean(ambiguous)),
            "accuracy_in_guaranteed_regions": float(np.mean(correct[inside])) if inside.any()
            else "no test point in a guaranteed region",
            "median_hull_distance_correct": _median_or_none(feat.distance[correct]),
            "median_hull_distance_wrong": _median_or_none(feat.distance[~correct]),
            "rank_correlation_hull_distance_confidence": rank_correlation(feat.distance, confidence),
            "morph_class_changes_pixel_line": int(np.sum(np.diff(m.pixel_classes) != 0)),
            "morph_class_changes_feature_line": int(np.sum(np.diff(m.feature_classes) != 0)),
        })
        per_class = [
            [int(c), int(np.sum(pred == c)), float(np.mean(inside[pred == c])),
             float(np.median(guaranteed.distance[pred == c])), float(np.median(pix.distance[pred == c]))]
            for c in np.unique(pred)
        ]
        data = {"df": df, "regions": regions, "feat": feat.distance, "pix": pix.distance, "z": z, "pred": pred,
                "fs": fs, "morph": m}
        evidence = {  # one value per test input, for the claims' intervals (tfgeom.report.claims)
            "outside_pixel_hull": (~fs.inside(pix.distance, "pixel")).tolist(),
            "outside_feature_hull": (~fs.inside(feat.distance, "feature")).tolist(),
            "correct_in_guaranteed_region": correct[inside].tolist(),
            "deepfool_l2": statistics.listed(df.norms_l2, ok),
            "feature_boundary_distance": regions.distance.tolist(),
        }
        return {"summary": summary, "per_class": per_class, "evidence": evidence, "data": data}

    def present(self, result, context, settings):
        d, out = result["data"], context.out_dir
        ok = d["df"].success
        figures = [
            ("Feature-space vs pixel-space boundary distance",
             plots.scatter(d["df"].norms_l2[ok], d["regions"].distance[ok], "DeepFool L2 distance (pixel space)",
                           "exact distance to the boundary (feature space)", out / "feature_vs_pixel.png")),
            ("Distances to the training hull",
             plots.histogram({"pixel space": d["pix"], "feature space": d["feat"]},
                             "distance to the hull of all training points", "Extrapolation", out / "hull_distances.png")),
            ("Features (PCA), class hulls and test points",
             plots.feature_pca(d["fs"].features, d["fs"].predicted, d["z"], d["pred"], out / "feature_pca.png")),
        ]
        if image_like(context.data.x):
            figures.append(("Morphing: pixel line (classes, hull distance)",
                            plots.morph_strip(d["morph"], out / "morph.png", bounds=context.gm.bounds)))
        return {
            "tables": [{"title": "Per predicted class",
                        "columns": ["class", "examples", "guaranteed", "median feature distance to class hull",
                                    "median pixel distance to hull"],
                        "rows": result["per_class"]}],
            "figures": [{"title": t, "file": f.name} for t, f in figures],
        }
