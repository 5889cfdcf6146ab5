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
        anchors: list of `P` arrays `[k_p + 2, ...]`: the vertices of the proved path (a found path re-routed
            around a piece the certificate refused has a detour vertex more), else the found path's.
        detours: `[P]` detour vertices added to prove the path.
    """

    status: list
    pieces: np.ndarray
    margin_bound: np.ndarray
    note: str = ""
    anchors: list = None
    detours: np.ndarray = None


SHRINK = 4.0  # a halving cuts a segment bound's slack at most this much (its error is second order in the width)
DETOURS = (1.0, 2.0, 4.0, 8.0)  # detour offsets tried around a refused piece, in lengths of that piece, in turn


def _margins(gm, x, cls):
    """`[N]` clean margins `f_c - max_{j != c} f_j` at `x`."""
    logits = gm.runtime.logits(x).astype(np.float64)
    own = logits[np.arange(len(x)), cls]
    logits[np.arange(len(x)), cls] = -np.inf
    return own - logits.max(axis=1)


def _hopeless(bound, ends, levels_left):
    """Pieces no halving within the budget can prove: a segment's bound is below the true margin at its ends
    (`slack = ends - bound >= 0`); even if each halving cut the slack by `SHRINK` (optimistic: the relaxation's
    error is about second order in the width), the bound would stay at or below zero. Giving up on them early
    changes no verdict that could have been proved under that rate, only the time spent."""
    return (ends <= 0) | ((ends - bound) / SHRINK ** levels_left >= ends)


class _Outcome(NamedTuple):
    proved: bool
    pieces: dict  # {segment index: certified pieces} of the segments proved whole
    bound: dict  # {segment index: smallest certified margin bound} of the same
    leaf: tuple  # (segment index, a, b, re-routable) of the first refused piece, or None


def _prove(gm, jobs, depth, method, intermediate):
    """Certify each job's segments (`jobs`: `[(segments [(a, b)], cls)]`), bisecting refused pieces down to
    `depth` halvings, all pieces of all jobs in one batch per level: `[_Outcome]`, or a `ModelError`'s text when
    bound propagation does not cover the model. A job stops at its first refused piece."""
    from tfgeom.errors import ModelError

    leaf = [None] * len(jobs)
    open_, pieces, bound = ([{} for _ in jobs] for _ in range(3))  # per job and segment: pieces outstanding, ...
    pending = [(j, s, a, b, 0) for j, (segments, _) in enumerate(jobs) for s, (a, b) in enumerate(segments)]
    for j, s, *_ in pending:
        open_[j][s], pieces[j][s], bound[j][s] = 1, 0, np.inf
    labels = np.array([cls for _, cls in jobs], np.int32)
    while pending:
        xa, xb = np.stack([t[2] for t in pending]), np.stack([t[3] for t in pending])
        cls = labels[[t[0] for t in pending]]
        try:
            cert = gm.certify_segment(xa, xb, method=method, cls=cls, intermediate=intermediate)
        except ModelError as err:
            return str(err)
        ends = np.minimum(_margins(gm, xa, cls), _margins(gm, xb, cls))
        levels = np.array([t[4] for t in pending])
        hopeless = _hopeless(cert.min_margin, ends, depth - levels)
        fresh = ~_hopeless(cert.min_margin, ends, depth)  # a detour of this piece's size could still be proved
        halves = []
        for i, (j, s, a, b, level) in enumerate(pending):
            if leaf[j] is not None:
                continue
            if cert.certified[i]:
                open_[j][s] -= 1
                pieces[j][s] += 1
                bound[j][s] = min(bound[j][s], float(cert.min_margin[i]))
            elif level < depth and not hopeless[i]:
                mid = 0.5 * (a + b)
                open_[j][s] += 1
                halves += [(j, s, a, mid, level + 1), (j, s, mid, b, level + 1)]
            else:
                leaf[j] = (s, a, b, bool(fresh[i]))
        pending = [t for t in halves if leaf[t[0]] is None]
    out = []
    for j in range(len(jobs)):
        whole = [s for s, left in open_[j].items() if left == 0]
        out.append(_Outcome(leaf[j] is None, {s: pieces[j][s] for s in whole}, {s: bound[j][s] for s in whole},
                            leaf[j]))
    return out


def _direction(gm, a, b, cls, seed):
    """A unit direction off the piece `[a, b]` at its midpoint: the margin's gradient there, orthogonal to the
    piece (a seeded random orthogonal direction where it vanishes)."""
    mid, along = 0.5 * (a + b), (b - a).ravel().astype(np.float64)
    logits = gm.runtime.logits(mid[None])[0]
    other = int(np.argsort(logits)[-2] if int(np.argmax(logits)) == cls else np.argmax(logits))
    coeffs = np.zeros((1, len(logits)), np.float32)
    coeffs[0, cls], coeffs[0, other] = 1.0, -1.0
    _, grad = gm.runtime.gradient(mid[None], coeffs)
    u = grad[0].ravel().astype(np.float64)
    unit = along / max(float(np.linalg.norm(along)), 1e-30)
    u -= (u @ unit) * unit
    if np.linalg.norm(u) <= 1e-12 * max(1.0, float(np.abs(grad).max())):
        u = np.random.default_rng(seed).normal(size=u.shape)
        u -= (u @ unit) * unit
    return (u / max(float(np.linalg.norm(u)), 1e-30)).reshape(mid.shape)


def _detour(gm, anchors, leaf, u, scale):
    """`(vertices, new segments)`: the path with the refused piece `(s, a, b)` of segment `s` replaced by a
    detour through its midpoint moved by `scale` piece lengths along `u` (clipped to the bounds)."""
    s, a, b, _ = leaf
    low, high = gm.bounds
    far = np.clip(0.5 * (a + b) + scale * float(np.linalg.norm(b - a)) * u, low, high).astype(anchors.dtype)
    around = [v for v in (anchors[s], a, far, b, anchors[s + 1])]
    around = [v for i, v in enumerate(around) if i == 0 or not np.array_equal(v, around[i - 1])]
    vertices = np.stack(list(anchors[:s]) + around + list(anchors[s + 2:]))
    return vertices, list(zip(around[:-1], around[1:]))


def prove_paths(gm, paths, depth=3, method="crown", intermediate="forward", seed=0):
    """Certify every segment of every found path (`GeometryModel.certify_segment`), bisecting a segment whose
    bound is not positive down to `depth` halvings, and re-route a path once around a refused piece.

    A piece no halving within the budget could prove, at the optimistic rate `SHRINK` per halving, is given up
    at once. When a refused piece's ends are well inside the region (a detour of its size could be proved: a thin
    feature of another class crossing the segment, not an end on the boundary), the path gets one detour vertex:
    the piece's midpoint moved off the segment along the margin's gradient, by `DETOURS` piece lengths in turn;
    the segments proved already are kept, and the first detour whose new segments (and the path's segments not
    yet proved) are all certified gives the proved path. A path refused again stays "sampled".

    Args:
        gm: the `GeometryModel`.
        paths: `tfgeom.geometry.connectivity.Paths`.
        depth: halvings at most per segment. Defaults to `3`.
        method: `"crown"` or `"ibp"`. Defaults to `"crown"`.
        intermediate: CROWN's pre-activation bounds (forward bounds are cheap over a one-dimensional
            set). Defaults to `"forward"`.
        seed: seeds the detour direction where the margin's gradient vanishes. Defaults to `0`.

    Returns:
        `Proofs`.
    """
    count = len(paths.connected)
    status = ["sampled" if c else "not found" for c in paths.connected]
    pieces, bound = np.zeros(count, np.int64), np.full(count, np.nan)
    anchors, detours = list(paths.anchors), np.zeros(count, np.int64)
    found = np.flatnonzero(paths.connected)
    jobs = [(list(zip(paths.anchors[p][:-1], paths.anchors[p][1:])), int(paths.labels[p])) for p in found]
    outcomes = _prove(gm, jobs, depth, method, intermediate)
    if isinstance(outcomes, str):  # layers bound propagation does not cover: every found path stays "sampled"
        return Proofs(status, pieces, bound, outcomes, anchors, detours)
    retry = {}
    for p, outcome in zip(found, outcomes):
        if outcome.proved:
            status[p], pieces[p], bound[p] = "proved", sum(outcome.pieces.values()), min(outcome.bound.values())
        elif outcome.leaf[3]:
            leaf = outcome.leaf
            retry[p] = (outcome, _direction(gm, leaf[1], leaf[2], int(paths.labels[p]), seed + int(p)))
    for scale in DETOURS:  # one batch per offset: most detours are proved at the first
        tries = []
        for p, (outcome, u) in retry.items():
            vertices, around = _detour(gm, paths.anchors[p], outcome.leaf, u, scale)
            s = outcome.leaf[0]
            rest = [(a, b) for i, (a, b) in enumerate(zip(paths.anchors[p][:-1], paths.anchors[p][1:]))
                    if i != s and i not in outcome.pieces]
            tries.append((p, vertices, around + rest))
        if not tries:
            break
        again = _prove(gm, [(segments, int(paths.labels[p])) for p, _, segments in tries], depth, method,
                       intermediate)
        for (p, vertices, _), outcome in zip(tries, again if not isinstance(again, str) else []):
            if outcome.proved:
                kept = retry.pop(p)[0]
                status[p], anchors[p], detours[p] = "proved", vertices, 1
                pieces[p] = sum(kept.pieces.values()) + sum(outcome.pieces.values())
                bound[p] = min(list(kept.bound.values()) + list(outcome.bound.values()))
    return Proofs(status, pieces, bound, "", anchors, detours)


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
            f"{prefix}_sampled_pairs": proofs.status.count("sampled"),
            f"{prefix}_detoured_pairs": int(np.sum(proofs.detours))}


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
        "detoured_pairs": "proved pairs whose path was re-routed around a piece the certificate refused",
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
