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


def _summary(paths):
    if len(paths.connected) == 0:
        return {}
    return {
        "pairs": int(len(paths.connected)),
        "connected": float(np.mean(paths.connected)),
        "straight segment stays in region (convexity baseline)": float(np.mean(paths.straight)),
        "mean anchors": float(np.mean(paths.num_anchors)),
        "max anchors": int(np.max(paths.num_anchors)),
        "median path length / straight distance": float(np.median(paths.straightness[paths.connected]))
        if paths.connected.any()
        else None,
        "median minimum margin along path": float(np.median(paths.min_margin)),
    }


@register("connectivity", "Connectivity of classification regions")
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
    summary = {f"natural: {k}": v for k, v in _summary(natural).items()}
    if adversarial is not None:
        summary.update({f"adversarial: {k}": v for k, v in _summary(adversarial).items()})
    counts = np.bincount(natural.num_anchors, minlength=1)
    return {
        "summary": summary,
        "tables": [{"title": "Anchors per path (natural pairs)", "columns": ["anchors", "pairs"],
                    "rows": [[int(a), int(c)] for a, c in enumerate(counts) if c]}],
        "figures": figures,
        "resolution": natural.resolution,
    }


DETECT_CALIBRATION = 200
DETECT_EVALUATION = 200
ATTACKS = ("deepfool-l2", "deepfool-linf", "fgsm", "pgd")


@register("detection", "Detection of perturbed inputs by curvature asymmetry")
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
    rows = [
        [r["attack"], r["perturbed"], r["auc"], r["tpr"], r["fpr"], r["recovery"], r["recovery_runner_up"],
         r["auc_margin_baseline"]]
        for r in results
    ]
    summary = {"calibration inputs": n_cal, "evaluation inputs": int(len(x_eval)), "step h": det.step,
               "threshold": det.threshold, "orientation": det.orientation}
    for r in results:
        summary[f"{r['attack']}: AUC"] = r["auc"]
        summary[f"{r['attack']}: TPR at the 5% threshold"] = r["tpr"]
    return {
        "summary": summary,
        "results": [{k: v for k, v in r.items() if not k.startswith("roc")} for r in results],
        "tables": [{"title": "Per attack (evaluation split)",
                    "columns": ["attack", "perturbed", "AUC", "TPR", "FPR", "recovery (detected)",
                                "runner-up = original", "AUC of margin baseline"],
                    "rows": rows}],
        "figures": [{"title": "ROC curves of the curvature score", "file": fig.name}],
    }
