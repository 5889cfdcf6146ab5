"""Analysis `connectivity`: paths inside classification regions between same-class inputs."""
from typing import NamedTuple

import numpy as np

from tfgeom.analyses import plots
from tfgeom.analyses import Analysis, image_like, register
from tfgeom.analyses.summaries import summarize_paths


def same_class_pairs(labels, count, generator):
    """Index pairs `[count, 2]` of distinct inputs with the same label (fewer if impossible)."""
    pairs = []
    classes = [c for c in np.unique(labels) if np.sum(labels == c) >= 2]
    for _ in range(count if classes else 0):
        c = generator.choice(classes)
        pairs.append(generator.choice(np.flatnonzero(labels == c), size=2, replace=False))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def distinct_pairs(labels):
    """How many distinct same-class pairs `labels` allow."""
    return int(sum(c * (c - 1) // 2 for c in np.bincount(labels)))


def adversarial_pairs(gm, x, labels, count, generator, executor=None):
    """`(x_adv, x_b)`: an input of another class pushed into class `i` by targeted DeepFool, and an input of `i`."""
    pairs = same_class_pairs(labels, count, generator)
    if len(pairs) == 0 or len(np.unique(labels)) < 2:  # no pair, or no other class to push from
        return x[:0], x[:0]
    sources = np.array([generator.choice(np.flatnonzero(labels != labels[a])) for a, _ in pairs])
    pushed = gm.deepfool(x[sources], targets=labels[pairs[:, 0]], executor=executor)
    ok = pushed.success
    return pushed.x_adv[ok], x[pairs[ok, 1]]


RETRY_FACTOR = 4  # a pair without a path gets this many times the anchor budget once more before "not shown"


def connect_with_retry(gm, x1, x2, max_anchors, executor=None):
    """`connect`, then pairs without a path again with `RETRY_FACTOR` times the anchors (same resolution)."""
    paths = gm.connect(x1, x2, max_anchors=max_anchors, executor=executor)
    failed = np.flatnonzero(~paths.connected)
    if len(failed) == 0 or max_anchors == 0:
        return paths
    again = gm.connect(x1[failed], x2[failed], max_anchors=RETRY_FACTOR * max_anchors, resolution=paths.resolution,
                       executor=executor)
    anchors = list(paths.anchors)
    for k, p in enumerate(failed):
        anchors[p] = again.anchors[k]
    fields = {"anchors": anchors}
    for name in ("connected", "num_anchors", "straightness", "min_margin", "straight"):
        value = getattr(paths, name).copy()
        value[failed] = getattr(again, name)
        fields[name] = value
    return paths._replace(**fields)


def _of(paths):
    return f"{int(np.sum(paths.connected))} of {len(paths.connected)} pairs connected"


@register
class ConnectivityAnalysis(Analysis):
    """Paths between random same-class pairs and between adversarial and natural pairs."""

    name = "connectivity"
    position = 40
    labels = {
        "natural_connected": "natural pairs",
        "adversarial_connected": "adversarial pairs",
    }
    title = "Connectivity of classification regions"
    intro = """For pairs of inputs with the same predicted class, tfgeom searches a polygonal path that never leaves
    the class region (every point checked at the reported L2 resolution). Connected pairs support the claim
    that regions are connected; "straight" pairs need no anchor at all (the region is convex along that segment).
    Adversarial pairs join an input pushed into the class from another class with a natural member."""

    class Settings(NamedTuple):
        pairs: int = 40  # random same-class pairs
        adversarial_pairs: int = 20  # pairs with one end pushed into the class from another
        max_anchors: int = 16  # anchors at most per path

    def compute(self, context, settings):
        gm, x = context.gm, context.data.x
        g = context.rng()
        labels = context.predictions()
        idx = same_class_pairs(labels, settings.pairs, g)
        ex = context.executor
        natural = connect_with_retry(gm, x[idx[:, 0]], x[idx[:, 1]], settings.max_anchors, ex)
        xa, xb = adversarial_pairs(gm, x, labels, settings.adversarial_pairs, g, ex)
        adversarial = connect_with_retry(gm, xa, xb, settings.max_anchors, ex) if len(xa) else None
        summary = {"natural_connected": _of(natural)}
        summary.update({f"natural_{k}": v for k, v in summarize_paths(natural).items()})
        if adversarial is not None:
            summary["adversarial_connected"] = _of(adversarial)
            summary.update({f"adversarial_{k}": v for k, v in summarize_paths(adversarial).items()})
        shown = None
        if len(natural.connected):  # the path with most anchors, adversarial pairs first
            paths = adversarial if adversarial is not None and adversarial.connected.any() else natural
            best = int(np.argmax(np.where(paths.connected, paths.num_anchors, -1)))
            shown = ("adversarial" if paths is adversarial else "natural", paths.anchors[best],
                     gm.runtime.predict(paths.anchors[best]))
        return {
            "summary": summary,
            "evidence": {"natural_connected": natural.connected.tolist(),  # per pair, for the claims (tfgeom.report.claims)
                         "adversarial_connected": [] if adversarial is None else adversarial.connected.tolist()},
            "anchor_counts": np.bincount(natural.num_anchors, minlength=1).tolist(),
            "resolution": natural.resolution,
            "data": shown,
        }

    def present(self, result, context, settings):
        figures = []
        if image_like(context.data.x) and result["data"] is not None:
            kind, anchors, labels = result["data"]
            strip = plots.path_strip(anchors, labels, context.out_dir / "path.png", bounds=context.gm.bounds)
            figures.append({"title": f"Images at the vertices of the path with most anchors ({kind} pair)",
                            "file": strip.name})
        counts = result["anchor_counts"]
        return {
            "tables": [{"title": "Anchors per path (natural pairs)", "columns": ["anchors", "pairs"],
                        "rows": [[a, c] for a, c in enumerate(counts) if c]}],
            "figures": figures,
        }
