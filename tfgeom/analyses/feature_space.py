"""Analysis `feature_space`: polyhedral regions, hulls, guaranteed regions, extrapolation, morphing."""
import numpy as np

from tfgeom import plots
from tfgeom.analyses import register
from tfgeom.feature_space import FeatureSpace

MAX_TRAIN = 4000  # training points whose hulls are measured
AMBIGUOUS = 0.1  # second-closest boundary within 10% of the closest


def _rank_corr(a, b):
    """Spearman rank correlation (ties broken by order)."""
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@register(
    "feature_space",
    "Feature space of the last hidden layer",
    """In the space of the last hidden layer the classifier is affine, so its regions are polyhedra and the
    distance to the boundary is exact (feature units, L2). Distances to the convex hull of the training
    features (and pixels) measure extrapolation: 0 means inside the hull; a test point inside its class hull
    lies in a guaranteed region, where the class cannot change.""",
)
def run(context):
    """Exact boundary distances vs DeepFool, hulls in both spaces, guaranteed regions, morphing."""
    gm, data, out = context.gm, context.data, context.out_dir
    if data.x_train is None:
        return {"summary": {"skipped": "needs x_train/y_train in the data file (keys x_train, y_train, x_test, y_test)"}}
    if gm._head.dense is None:
        return {"summary": {"skipped": gm._head.split_error}}
    fs = FeatureSpace(gm, data.x_train[:MAX_TRAIN], data.y_train[:MAX_TRAIN])
    x = data.x
    z = gm.features(x).astype(np.float64)
    logits = z @ fs.W + fs.b
    pred = logits.argmax(axis=1)
    truth = pred if data.y is None else data.y
    regions = fs.regions(z)
    df = gm.deepfool(x)
    ok = df.success
    ratio = df.norms_l2[ok] / np.maximum(regions.distance[ok], 1e-12)
    ambiguous = (regions.second - regions.distance) <= AMBIGUOUS * regions.distance

    feat = fs.hull_distance(z)
    pix = fs.hull_distance(x, space="pixel")
    cls, guaranteed, class_dist = fs.guaranteed(x, features=z)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    confidence = (probs / probs.sum(1, keepdims=True)).max(1)
    correct = pred == truth
    figures = [
        plots.scatter(df.norms_l2[ok], regions.distance[ok], "DeepFool L2 distance (pixel space)",
                      "exact distance to the boundary (feature space)", out / "feature_vs_pixel.png"),
        plots.histogram({"pixel space": pix.distance, "feature space": feat.distance},
                        "distance to the hull of all training points", "Extrapolation", out / "hull_distances.png"),
        plots.feature_pca(fs.features, fs.predicted, z, pred, out / "feature_pca.png"),
    ]
    a, b = 0, int(np.flatnonzero(pred != pred[0])[0]) if np.any(pred != pred[0]) else 1
    m = fs.morph(x[a], x[b], steps=9)
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        figures.append(plots.morph_strip(m, out / "morph.png", bounds=gm.bounds))
    titles = ["Feature-space vs pixel-space boundary distance", "Distances to the training hull",
              "Features (PCA), class hulls and test points", "Morphing: pixel line (classes, hull distance)"]
    inside_feat = feat.distance <= 1e-6 * fs._engine("feature", None).radius
    inside_pix = pix.distance <= 1e-6 * fs._engine("pixel", None).radius
    per_class = [
        [int(c), int(np.sum(pred == c)), float(np.mean(guaranteed[pred == c])),
         float(np.median(class_dist[pred == c])), float(np.median(pix.distance[pred == c]))]
        for c in np.unique(pred)
    ]
    return {
        "summary": {
            "training points": int(len(fs.features)),
            "test inputs": int(len(x)),
            "feature dimension": int(z.shape[1]),
            "median exact feature-space boundary distance": float(np.median(regions.distance)),
            "median DeepFool / feature distance": float(np.median(ratio)) if ok.any() else None,
            "rank correlation DeepFool vs feature distance": _rank_corr(df.norms_l2[ok], regions.distance[ok]),
            f"ambiguous (2nd boundary within {AMBIGUOUS:.0%})": float(np.mean(ambiguous)),
            "inside training hull, feature space": float(np.mean(inside_feat)),
            "inside training hull, pixel space": float(np.mean(inside_pix)),
            "in a guaranteed region (class hull)": float(np.mean(guaranteed)),
            "accuracy in guaranteed regions": float(np.mean(correct[guaranteed])) if guaranteed.any()
            else "no test point in a guaranteed region",
            "median hull distance, correct": float(np.median(feat.distance[correct])) if correct.any() else None,
            "median hull distance, wrong": float(np.median(feat.distance[~correct])) if (~correct).any() else None,
            "rank correlation hull distance vs confidence": _rank_corr(feat.distance, confidence),
            "morph: class changes along pixel line": int(np.sum(np.diff(m.pixel_classes) != 0)),
            "morph: class changes along feature line": int(np.sum(np.diff(m.feature_classes) != 0)),
        },
        "tables": [
            {
                "title": "Per predicted class",
                "columns": ["class", "examples", "guaranteed", "median feature distance to class hull",
                            "median pixel distance to hull"],
                "rows": per_class,
            }
        ],
        "figures": [{"title": t, "file": f.name} for t, f in zip(titles, figures)],
    }
