"""Analysis `certification`: certified radii (IBP, CROWN, MILP), segments, feature-space regions."""
import time

import numpy as np

from tfgeom import milp, plots
from tfgeom.analyses import register
from tfgeom.errors import InputError, ModelError
from tfgeom.feature_space import FeatureSpace

POINTS = 8  # test inputs whose radii both methods find (CROWN costs much more than IBP)
FEATURE_POINTS = 200  # test inputs of the (cheap, exact) feature-space certificates
MILP_POINTS = 4  # exact margins at eps = MILP_EPS (small ReLU networks only)
MILP_TIME = 20.0  # seconds per MILP solve
INTERMEDIATE = "forward"  # CROWN's pre-activation bounds: forward bounds are ~6x cheaper on the demo CNN
SEGMENTS = 2  # morphing segments between same-class test inputs
NORM = "linf"
# Radii as fractions of the input range (high - low): the same grid reads the same on 0..1 and 0..255 data.
EPS = (0.005, 0.01, 0.02, 0.05)
MILP_EPS = 0.01
RTOL = 0.05  # bisection stops when the bracket is within 5% of the radius
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

    eps = MILP_EPS * (gm.bounds[1] - gm.bounds[0])
    cert = {m: gm.certify(x, eps, method=m, cls=y, intermediate=INTERMEDIATE) for m in ("ibp", "crown")}
    margins, status, _ = milp.exact_margins(gm.layer_graph, *gm.head, bd.ball(x, np.full(len(x), eps, np.float32),
                                            NORM, gm.bounds), y, time_limit=MILP_TIME)
    done = np.isfinite(margins) & np.isfinite(cert["crown"].margins)
    key = f"milp at eps={MILP_EPS:g} of the range ({eps:.4g})"
    return {
        f"{key}: inputs (solves optimal)": f"{len(x)} ({sum(s == 'optimal' for s in status)})",
        f"{key}: certified": f"{int(np.sum((margins.min(1) > 0) & (np.array(status) == 'optimal')))} of {len(x)}",
        f"{key}: MILP >= CROWN >= IBP on every margin": bool(
            np.all(margins[done] >= cert["crown"].margins[done] - 1e-4)
            and np.all(cert["crown"].margins[done] >= cert["ibp"].margins[done] - 1e-6)),
    }


@register(
    "certification",
    "Certified regions",
    """A certified radius is one within which no input can change the class, proven by bound propagation
    (IBP: fast and loose; CROWN: tighter) or exactly by MILP on small ReLU networks. Radii are L-inf and given
    as fractions of the input range (input units beside them); larger is more robust. Certified accuracy at eps
    counts inputs that are correctly classified and certified at that radius.""",
)
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
    span = gm.bounds[1] - gm.bounds[0]
    n = min(POINTS, len(x))
    correct = pred[:n] == y[:n]
    radii, times, rows, converged = {}, {}, [], {}
    for i, method in enumerate(methods):
        if context.progress:
            context.progress(f"certified radius ({method})", i, len(methods))
        start = time.perf_counter()
        r = gm.certified_radius(x[:n], NORM, method, cls=y[:n], rtol=RTOL, intermediate=INTERMEDIATE)
        times[method] = time.perf_counter() - start
        radii[method] = r.radius / span
        converged[method] = int(np.sum(r.converged))
        rows.append([method, n, float(np.mean(correct)),
                     float(np.median(radii[method][correct])) if correct.any() else 0.0]
                    + [float(np.mean(correct & (radii[method] >= e))) for e in EPS] + [times[method] / n])
    ratio = radii["crown"][correct] / np.maximum(radii["ibp"][correct], 1e-12)
    top = max(1e-3, 1.2 * max(float(v.max()) for v in radii.values()))
    curves = {m: _curve(radii[m], correct, top) for m in methods}
    figures = [
        plots.certified_accuracy({f"{m} ({n} inputs)": c for m, c in curves.items()},
                                 "L-inf radius eps (fraction of the input range)", out / "certified_accuracy.png"),
        plots.histogram({f"{m} ({n} inputs)": radii[m] for m in methods},
                        "certified L-inf radius (fraction of the input range)", f"Certified radii, same {n} inputs",
                        out / "certified_radii.png"),
    ]
    titles = ["Certified accuracy against eps (L-inf)", "Certified radius per method"]
    # a morphing segment between two same-class test inputs is certified when CROWN proves the line keeps the class
    pairs = [(a, b) for a in range(len(x)) for b in range(a + 1, len(x)) if pred[a] == pred[b]][: 50 * SEGMENTS]
    pairs = pairs[:: max(1, len(pairs) // SEGMENTS)][:SEGMENTS]
    summary = {
        "norm": NORM,
        "input range (radii are fractions of it)": f"{gm.bounds[0]:g} to {gm.bounds[1]:g}",
        "inputs behind every radius figure (same for IBP and CROWN)": n,
        "bisection resolution": f"bracket within {RTOL:.0%} of the radius "
        f"(reached on {min(converged.values())} of {n} inputs)",
        "crown: pre-activation bounds": INTERMEDIATE,
        "crown radius >= ibp radius on every input": f"{int(np.sum(radii['crown'] >= radii['ibp'] - 1e-9))} of {n}",
        "median crown / ibp radius (correct inputs)": float(np.median(ratio)) if correct.any() else None,
    }
    if pairs:
        a, b = (np.array(p) for p in zip(*pairs))
        seg = gm.certify_segment(x[a], x[b], method="crown", intermediate=INTERMEDIATE)
        summary["morphing segments certified (CROWN)"] = f"{int(seg.certified.sum())} of {len(pairs)}"
    for m in methods:
        summary[f"{m}: median certified radius (fraction of range)"] = float(np.median(radii[m]))
        summary[f"{m}: median certified radius (input units)"] = float(np.median(radii[m]) * span)
        summary[f"{m}: seconds per input"] = times[m] / n
    summary.update(notes)
    tables = [{
        "title": f"Certified accuracy on the same {n} inputs (fraction correctly classified and certified at eps; "
        "eps as a fraction of the input range, input units in brackets)",
        "columns": ["method", "inputs", "clean accuracy", "median radius (correct, fraction of range)"]
        + [f"eps={e:g} ({e * span:.3g})" for e in EPS] + ["seconds per input"],
        "rows": rows,
    }]
    if data.x_train is not None:
        m = min(FEATURE_POINTS, len(x))
        side, table, figure = _feature_side(gm, data, x[:m], pred[:m], out)
        side["feature space: test inputs behind these figures"] = m
        summary.update(side)
        tables.append(table)
        figures.append(figure)
        titles.append("Feature space: exact certified ball radius")
    return {
        "summary": summary,
        "tables": tables,
        "figures": [{"title": t, "file": f.name} for t, f in zip(titles, figures)],
        "radii_fraction_of_range": {m: radii[m].tolist() for m in methods},
    }
