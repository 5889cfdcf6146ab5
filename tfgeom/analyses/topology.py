"""Analysis `connectivity`: paths inside classification regions between same-class inputs."""
import numpy as np

from tfgeom import plots
from tfgeom.analyses import register, rng
from tfgeom.connectivity import connect
from tfgeom.errors import TfgeomError

PAIRS = 40  # random same-class pairs
ADVERSARIAL_PAIRS = 20  # pairs with one end pushed into the class from another


def same_class_pairs(labels, count, generator):
    """Index pairs `[count, 2]` of distinct inputs with the same label (fewer if impossible)."""
    pairs = []
    classes = [c for c in np.unique(labels) if np.sum(labels == c) >= 2]
    for _ in range(count if classes else 0):
        c = generator.choice(classes)
        pairs.append(generator.choice(np.flatnonzero(labels == c), size=2, replace=False))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def adversarial_pairs(gm, x, labels, count, generator):
    """`(x_adv, x_b)`: an input of another class pushed into class `i` by targeted DeepFool, and an input of `i`."""
    pairs = same_class_pairs(labels, count, generator)
    if len(pairs) == 0:
        return x[:0], x[:0]
    sources = np.array([generator.choice(np.flatnonzero(labels != labels[a])) for a, _ in pairs])
    pushed = gm.deepfool(x[sources], targets=labels[pairs[:, 0]])
    ok = pushed.success
    return pushed.x_adv[ok], x[pairs[ok, 1]]


def summarize_paths(paths):
    """A flat summary of `Paths` (shared by `tfgeom connect` and the report)."""
    if len(paths.connected) == 0:
        return {"pairs": 0}
    n = int(len(paths.connected))
    return {
        "pairs": n,
        "connected_pairs": int(np.sum(paths.connected)),
        "connected": float(np.mean(paths.connected)),
        "straight segment stays in region (convexity baseline)": float(np.mean(paths.straight)),
        "mean anchors": float(np.mean(paths.num_anchors)),
        "max anchors": int(np.max(paths.num_anchors)),
        "median path length / straight distance": float(np.median(paths.straightness[paths.connected]))
        if paths.connected.any()
        else None,
        "median minimum margin along path": float(np.median(paths.min_margin)),
    }


def _of(paths):
    return f"{int(np.sum(paths.connected))} of {len(paths.connected)} pairs connected"


@register(
    "connectivity",
    "Connectivity of classification regions",
    """For pairs of inputs with the same predicted class, tfgeom searches a polygonal path that never leaves
    the class region (every point checked at the reported L2 resolution). Connected pairs support the claim
    that regions are connected; "straight" pairs need no anchor at all (the region is convex along that segment).
    Adversarial pairs join an input pushed into the class from another class with a natural member.""",
)
def run(context):
    """Paths between random same-class pairs and between adversarial and natural pairs."""
    gm, x, out = context.gm, context.data.x, context.out_dir
    g = rng(context)
    labels = gm.predict(x)
    idx = same_class_pairs(labels, PAIRS, g)
    natural = connect(gm, x[idx[:, 0]], x[idx[:, 1]])
    xa, xb = adversarial_pairs(gm, x, labels, ADVERSARIAL_PAIRS, g)
    adversarial = connect(gm, xa, xb) if len(xa) else None
    figures = []
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        shown = adversarial if adversarial is not None and adversarial.connected.any() else natural
        best = int(np.argmax(np.where(shown.connected, shown.num_anchors, -1)))
        kind = "adversarial" if shown is adversarial else "natural"
        figures.append({"title": f"Images at the vertices of the path with most anchors ({kind} pair)",
                        "file": plots.path_strip(shown.anchors[best], gm.predict(shown.anchors[best]),
                                                 out / "path.png", bounds=gm.bounds).name})
    summary = {"natural pairs connected": _of(natural), "L2 resolution of the checks": natural.resolution}
    summary.update({f"natural: {k}": v for k, v in summarize_paths(natural).items()})
    if adversarial is not None:
        summary["adversarial pairs connected"] = _of(adversarial)
        summary.update({f"adversarial: {k}": v for k, v in summarize_paths(adversarial).items()})
    counts = np.bincount(natural.num_anchors, minlength=1)
    return {
        "summary": summary,
        "tables": [{"title": "Anchors per path (natural pairs)", "columns": ["anchors", "pairs"],
                    "rows": [[int(a), int(c)] for a, c in enumerate(counts) if c]}],
        "figures": figures,
        "resolution": natural.resolution,
    }


def _auc(value):
    """An AUC below chance is flagged, not presented as a result."""
    return f"{value:.3f} (below chance: the score points the wrong way here)" if value < 0.5 else value


DETECT_CALIBRATION = 200
DETECT_EVALUATION = 200
ATTACKS = ("deepfool-l2", "deepfool-linf", "fgsm", "pgd")


@register(
    "detection",
    "Detection of perturbed inputs by curvature asymmetry",
    """The curvature detector scores each input by the oriented curvature of the boundary towards its runner-up
    class, calibrated on clean inputs only (threshold at the 5% false-positive rate), and is evaluated on other
    inputs and their perturbed versions. AUC 1 separates perfectly, 0.5 is chance; an AUC below 0.5 means the
    score points the wrong way on this model. The top-2 logit margin is shown beside it as a simple baseline.""",
)
def run_detection(context):
    """Calibrate the detector on clean inputs; ROC, TPR at the threshold and recovery per attack on others."""
    from tfgeom.detection import CurvatureDetector, evaluate

    gm, x, out = context.gm, context.data.x, context.out_dir
    n_cal = min(DETECT_CALIBRATION, len(x) // 2)
    det = CurvatureDetector(gm, seed=context.seed).fit(x[:n_cal])
    x_eval = x[n_cal : n_cal + DETECT_EVALUATION]
    results = []
    for attack in ATTACKS:
        try:
            results.append(evaluate(det, x_eval, attack))
        except TfgeomError:  # an attack with no successful perturbation has nothing to detect
            continue
    fig = plots.roc({r["attack"]: (r["roc_fpr"], r["roc_tpr"], r["auc"]) for r in results}, out / "roc.png")
    rows = []
    for r in results:
        rows.append([r["attack"], "curvature detector", r["perturbed"], _auc(r["auc"]), r["tpr"], r["fpr"],
                     r["recovery"] if r["recovery"] is not None else "none detected", r["recovery_runner_up"]])
        rows.append([r["attack"], "top-2 logit margin (baseline)", r["perturbed"], _auc(r["auc_margin_baseline"]),
                     "-", "-", "-", "-"])
    summary = {"calibration inputs (clean only)": n_cal, "evaluation inputs": int(len(x_eval)),
               "finite-difference step h (input units)": det.step, "threshold on the score": det.threshold,
               "orientation": "score = +rho (clean inputs have negative rho)" if det.orientation > 0
               else "score = -rho (clean inputs have positive rho)"}
    for r in results:
        summary[f"{r['attack']}: AUC of the curvature detector"] = _auc(r["auc"])
        summary[f"{r['attack']}: AUC of the margin baseline"] = _auc(r["auc_margin_baseline"])
        summary[f"{r['attack']}: TPR at the calibrated 5% threshold"] = r["tpr"]
    return {
        "summary": summary,
        "results": [{k: v for k, v in r.items() if not k.startswith("roc")} for r in results],
        "tables": [{"title": "Per attack and detector (evaluation split)",
                    "columns": ["attack", "detector", "perturbed inputs", "AUC", "TPR at threshold",
                                "FPR at threshold", "recovery (of detected)", "runner-up = original"],
                    "rows": rows}],
        "figures": [{"title": "ROC curves of the curvature score", "file": fig.name}],
    }
