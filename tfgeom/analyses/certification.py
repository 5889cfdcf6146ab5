"""Analysis `certification`: certified radii (IBP, CROWN, MILP), segments, feature-space regions."""
import time

import numpy as np

from tfgeom import milp, plots
from tfgeom.analyses import register
from tfgeom.errors import InputError, ModelError
from tfgeom.feature_space import FeatureSpace

POINTS = {"ibp": 200, "crown": 8}  # test inputs per method (CROWN costs much more)
MILP_POINTS = 4  # exact margins at eps = MILP_EPS (small ReLU networks only)
MILP_EPS = 0.01
MILP_TIME = 20.0  # seconds per MILP solve
INTERMEDIATE = "forward"  # CROWN's pre-activation bounds: forward bounds are ~6x cheaper on the demo CNN
SEGMENTS = 2  # morphing segments between same-class test inputs
NORM = "linf"
EPS = (0.005, 0.01, 0.02, 0.05)
MAX_TRAIN = 4000


def _curve(radius, correct, top):
    eps = np.linspace(0.0, top, 200)
    return eps, np.array([np.mean(correct & (radius >= e)) for e in eps])


def _feature_side(gm, data, x, pred, out):
    """Feature-space certificates: class hulls (LP), exact certified balls, guaranteed inputs."""
    fs = FeatureSpace(gm, data.x_train[:MAX_TRAIN], data.y_train[:MAX_TRAIN])
    rows = []
    hulls_certified = 0
    for c in range(gm.num_classes):
        try:
            cert = fs.certify_region(fs.class_hull(c, nonneg=fs.nonneg_features), c)
        except InputError as err:  # no correctly classified training example of c
            rows.append([c, 0, "-", str(err)])
            continue
        hulls_certified += cert.certified
        rows.append([c, int(np.sum(fs.correct & (fs.y_train == c))), bool(cert.certified),
                     f"{np.min(cert.margins):.4g} ({cert.status})"])
    z = gm.features(x)
    radius = fs.boundary_distance(z, pred, nonneg=fs.nonneg_features)
    _, guaranteed, _ = fs.guaranteed(x, features=z)
    summary = {
        "feature space: class hulls certified (LP)": f"{hulls_certified} of {len(rows)}",
        "feature space: test inputs in a guaranteed region (class hull)": float(np.mean(guaranteed)),
        "feature space: median exact certified L2 radius": float(np.median(radius)),
    }
    table = {
        "title": "Feature space: is the hull of each class's training features certified?",
        "columns": ["class", "training features", "certified", "min margin over the hull (status)"],
        "rows": rows,
    }
    figure = plots.histogram({"exact L2 radius of the certified ball": radius},
                             "feature-space L2 distance to the class boundary", "Feature space",
                             out / "feature_radius.png")
    return summary, table, figure


def _exact(gm, x, y):
    """MILP margins at one eps next to CROWN's and IBP's bounds on the same inputs."""
    from tfgeom import bounds as bd

    cert = {m: gm.certify(x, MILP_EPS, method=m, cls=y, intermediate=INTERMEDIATE) for m in ("ibp", "crown")}
    margins, status, _ = milp.exact_margins(gm.layer_graph, *gm.head, bd.ball(x, np.full(len(x), MILP_EPS, np.float32),
                                            NORM, gm.bounds), y, time_limit=MILP_TIME)
    done = np.isfinite(margins) & np.isfinite(cert["crown"].margins)
    return {
        f"milp at eps={MILP_EPS}: inputs (solves optimal)": f"{len(x)} ({sum(s == 'optimal' for s in status)})",
        f"milp at eps={MILP_EPS}: certified": int(np.sum((margins.min(1) > 0) & (np.array(status) == "optimal"))),
        f"milp at eps={MILP_EPS}: MILP >= CROWN >= IBP on every margin": bool(
            np.all(margins[done] >= cert["crown"].margins[done] - 1e-4)
            and np.all(cert["crown"].margins[done] >= cert["ibp"].margins[done] - 1e-6)),
    }


@register("certification", "Certified regions")
def run(context):
    """Certified L-inf radii by IBP, CROWN (and MILP for small ReLU nets), segments, feature-space certificates."""
    gm, data, out = context.gm, context.data, context.out_dir
    if gm._head.dense is None:
        return {"summary": {"skipped": gm._head.split_error}}
    try:
        graph = gm.layer_graph
    except ModelError as err:
        return {"summary": {"skipped": str(err)}}
    x = data.x
    pred = gm.predict(x)
    y = pred if data.y is None else data.y
    methods = ["ibp", "crown"]
    notes = {}
    try:
        milp.check_size(graph)
        notes.update(_exact(gm, x[:MILP_POINTS], y[:MILP_POINTS]))
    except ModelError as err:
        notes["milp"] = f"not run: {err}"
    radii, times, rows = {}, {}, []
    for i, method in enumerate(methods):
        if context.progress:
            context.progress(f"certified radius ({method})", i, len(methods))
        n = min(POINTS[method], len(x))
        start = time.perf_counter()
        r = gm.certified_radius(x[:n], NORM, method, cls=y[:n], steps=5, rtol=0.05, intermediate=INTERMEDIATE)
        times[method] = time.perf_counter() - start
        radii[method] = r.radius
        correct = pred[:n] == y[:n]
        rows.append([method, n, float(np.mean(correct)), float(np.median(r.radius[correct])) if correct.any() else 0.0]
                    + [float(np.mean(correct & (r.radius >= e))) for e in EPS] + [times[method] / n])
    common = min(len(v) for v in radii.values())
    ordered = bool(np.all(radii["crown"][:common] >= radii["ibp"][:common] - 1e-7))
    top = max(1e-3, 1.2 * max(float(v.max()) for v in radii.values()))
    curves = {m: _curve(radii[m], pred[: len(radii[m])] == y[: len(radii[m])], top) for m in methods}
    figures = [
        plots.certified_accuracy({f"{m} ({len(radii[m])} inputs)": c for m, c in curves.items()},
                                 "L-inf radius eps", out / "certified_accuracy.png"),
        plots.histogram({m: radii[m] for m in methods}, "certified L-inf radius", "Certified radii",
                        out / "certified_radii.png"),
    ]
    titles = ["Certified accuracy against eps (L-inf)", "Certified radius per method"]
    # a morphing segment between two same-class test inputs is certified when CROWN proves the line keeps the class
    pairs = [(a, b) for a in range(len(x)) for b in range(a + 1, len(x)) if pred[a] == pred[b]][: 50 * SEGMENTS]
    pairs = pairs[:: max(1, len(pairs) // SEGMENTS)][:SEGMENTS]
    summary = {"norm": NORM, "crown: pre-activation bounds": INTERMEDIATE,
               "crown radius >= ibp radius on every input": ordered}
    if pairs:
        a, b = (np.array(p) for p in zip(*pairs))
        seg = gm.certify_segment(x[a], x[b], method="crown", intermediate=INTERMEDIATE)
        summary["morphing segments certified (CROWN)"] = f"{int(seg.certified.sum())} of {len(pairs)}"
    for m in methods:
        summary[f"{m}: median certified radius"] = float(np.median(radii[m]))
        summary[f"{m}: seconds per input"] = times[m] / len(radii[m])
    summary.update(notes)
    tables = [{
        "title": "Certified accuracy (fraction of inputs correctly classified and certified at eps)",
        "columns": ["method", "inputs", "clean accuracy", "median radius (correct)"]
        + [f"eps={e}" for e in EPS] + ["seconds per input"],
        "rows": rows,
    }]
    if data.x_train is not None:
        side, table, figure = _feature_side(gm, data, x[: POINTS["ibp"]], pred[: POINTS["ibp"]], out)
        summary.update(side)
        tables.append(table)
        figures.append(figure)
        titles.append("Feature space: exact certified ball radius")
    return {
        "summary": summary,
        "tables": tables,
        "figures": [{"title": t, "file": f.name} for t, f in zip(titles, figures)],
        "radii": {m: radii[m].tolist() for m in methods},
    }
