"""Analysis `connectivity`: paths inside classification regions between same-class inputs."""
from typing import NamedTuple

import numpy as np

from tfgeom.analyses import plots
from tfgeom.analyses import Analysis, image_like, register
from tfgeom.analyses.summaries import summarize_paths


class Proofs(NamedTuple):
    """Which found paths are proved to stay in their region (NumPy).

    Fields:
        status: `[P]` per pair: `"proved"` (every piece of the path certified by bound propagation over the
            segment: the path provably stays in the region), `"sampled"` (found, but some piece only sampled)
            or `"not found"` (no path within the anchor budget).
        pieces: `[P]` certified pieces of each proved path (segments, after bisection).
        margin_bound: `[P]` the smallest certified lower bound of the margin over a proved path (NaN otherwise).
        note: why nothing could be proved (a model bound propagation does not cover), or "".
    """

    status: list
    pieces: np.ndarray
    margin_bound: np.ndarray
    note: str = ""


def prove_paths(gm, paths, depth=3, method="crown", intermediate="forward"):
    """Certify every segment of every found path (`GeometryModel.certify_segment`), bisecting a segment whose
    bound is not positive down to `depth` halvings.

    Args:
        gm: the `GeometryModel`.
        paths: `tfgeom.geometry.connectivity.Paths`.
        depth: halvings at most per segment. Defaults to `3`.
        method: `"crown"` or `"ibp"`. Defaults to `"crown"`.
        intermediate: CROWN's pre-activation bounds (forward bounds are cheap over a one-dimensional
            set). Defaults to `"forward"`.

    Returns:
        `Proofs`.
    """
    from tfgeom.errors import ModelError

    count = len(paths.connected)
    status = ["sampled" if c else "not found" for c in paths.connected]
    pieces, bound = np.zeros(count, np.int64), np.full(count, np.inf)
    pending = [(p, a, b, 0) for p in np.flatnonzero(paths.connected)
               for a, b in zip(paths.anchors[p][:-1], paths.anchors[p][1:])]
    failed = set()
    while pending:
        xa, xb = np.stack([t[1] for t in pending]), np.stack([t[2] for t in pending])
        try:
            cert = gm.certify_segment(xa, xb, method=method, cls=paths.labels[[t[0] for t in pending]],
                                      intermediate=intermediate)
        except ModelError as err:  # layers bound propagation does not cover: every found path stays "sampled"
            return Proofs(status, np.zeros(count, np.int64), np.full(count, np.nan), str(err))
        halves = []
        for (p, a, b, level), ok, margin in zip(pending, cert.certified, cert.min_margin):
            if ok:
                pieces[p] += 1
                bound[p] = min(bound[p], float(margin))
            elif level < depth:
                mid = 0.5 * (a + b)
                halves += [(p, a, mid, level + 1), (p, mid, b, level + 1)]
            else:
                failed.add(p)
        pending = [t for t in halves if t[0] not in failed]
    for p in np.flatnonzero(paths.connected):
        if p not in failed:
            status[p] = "proved"
    proved = np.array([s == "proved" for s in status], bool)
    return Proofs(status, np.where(proved, pieces, 0), np.where(proved, bound, np.nan))


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


def _of(paths, proofs):
    proved = proofs.status.count("proved")
    found = int(np.sum(paths.connected))
    return f"{found} of {len(paths.connected)} pairs connected ({proved} proved, {found - proved} sampled)"


def _proof_summary(prefix, proofs):
    return {f"{prefix}_proved_pairs": proofs.status.count("proved"),
            f"{prefix}_sampled_pairs": proofs.status.count("sampled")}


@register
class ConnectivityAnalysis(Analysis):
    """Paths between random same-class pairs and between adversarial and natural pairs."""

    name = "connectivity"
    position = 40
    examples = ("pairs", "adversarial_pairs")  # counts of its per-example evidence
    labels = {
        "natural_connected": "natural pairs",
        "adversarial_connected": "adversarial pairs",
        "proved_pairs": "pairs whose path is proved to stay in the region (bound propagation over each piece)",
        "sampled_pairs": "pairs whose path was found by sampling but not proved",
        "proof_note": "why no path could be proved",
    }
    title = "Connectivity of classification regions"
    intro = """For pairs of inputs with the same predicted class, tfgeom searches a polygonal path that never leaves
    the class region (every point checked at the reported L2 resolution), then tries to prove it: each piece
    of the path is certified by bound propagation over the segment (CROWN), a piece that fails is halved a few
    times. "Proved" paths provably stay in the region; "sampled" ones were only checked at points. Connected
    pairs support the claim that regions are connected; "straight" pairs need no anchor at all (the region is
    convex along that segment). Adversarial pairs join an input pushed into the class from another class with
    a natural member."""

    class Settings(NamedTuple):
        pairs: int = 40  # random same-class pairs
        adversarial_pairs: int = 20  # pairs with one end pushed into the class from another
        max_anchors: int = 16  # anchors at most per path
        proof_depth: int = 3  # halvings of a segment whose certificate fails before its path counts as sampled

    def compute(self, context, settings):
        gm, x = context.gm, context.data.x
        g = context.rng()
        labels = context.predictions()
        idx = same_class_pairs(labels, settings.pairs, g)
        ex = context.executor
        natural = connect_with_retry(gm, x[idx[:, 0]], x[idx[:, 1]], settings.max_anchors, ex)
        xa, xb = adversarial_pairs(gm, x, labels, settings.adversarial_pairs, g, ex)
        adversarial = connect_with_retry(gm, xa, xb, settings.max_anchors, ex) if len(xa) else None
        context.tell("proving paths", 0, 1)
        proofs = prove_paths(gm, natural, settings.proof_depth)
        adversarial_proofs = prove_paths(gm, adversarial, settings.proof_depth) if adversarial is not None else None
        context.tell("proving paths", 1, 1)
        summary = {"natural_connected": _of(natural, proofs)}
        summary.update({f"natural_{k}": v for k, v in summarize_paths(natural).items()})
        summary.update(_proof_summary("natural", proofs))
        if adversarial is not None:
            summary["adversarial_connected"] = _of(adversarial, adversarial_proofs)
            summary.update({f"adversarial_{k}": v for k, v in summarize_paths(adversarial).items()})
            summary.update(_proof_summary("adversarial", adversarial_proofs))
        if proofs.note:
            summary["proof_note"] = proofs.note
        shown = None
        if len(natural.connected):  # the path with most anchors, adversarial pairs first
            paths = adversarial if adversarial is not None and adversarial.connected.any() else natural
            best = int(np.argmax(np.where(paths.connected, paths.num_anchors, -1)))
            shown = ("adversarial" if paths is adversarial else "natural", paths.anchors[best],
                     gm.runtime.predict(paths.anchors[best]))
        return {
            "summary": summary,
            "evidence": {"natural_connected": natural.connected.tolist(),  # per pair, for the claims (tfgeom.report.claims)
                         "adversarial_connected": [] if adversarial is None else adversarial.connected.tolist(),
                         "natural_proved": [s == "proved" for s in proofs.status],
                         "adversarial_proved": [] if adversarial is None else
                         [s == "proved" for s in adversarial_proofs.status]},
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
