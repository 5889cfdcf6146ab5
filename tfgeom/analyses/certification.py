"""Analysis `certification`: certified radii (IBP, CROWN, MILP), segments, feature-space certificates."""
import time
from typing import NamedTuple

import numpy as np

from tfgeom.verify import milp
from tfgeom.analyses import plots
from tfgeom.analyses import Analysis, register
from tfgeom.errors import InputError, ModelError


def _bracket(lower, attack, labels, correct):
    """Per input `lower <= distance to the boundary <= upper`: the certified radius and the norm of an attack that
    changed the label (none where it failed), with their ratio; the summary's median over correct inputs."""
    found = attack.success & (attack.adv_labels != labels)
    upper = np.where(found, attack.norms, np.nan)
    ratio = np.where(found & (lower > 0), upper / np.maximum(lower, 1e-30), np.nan)
    rows = [{"input": i, "class": int(labels[i]), "certified_radius": float(lower[i]),
             "deepfool_norm": None if np.isnan(upper[i]) else float(upper[i]),
             "ratio": None if np.isnan(ratio[i]) else float(ratio[i])} for i in range(len(lower))]
    both = correct & np.isfinite(ratio)
    summary = {"bracketed_inputs": int(both.sum()),
               "median_deepfool_over_certified_radius": float(np.median(ratio[both])) if both.any() else None}
    return {"rows": rows, "summary": summary}


def _curve(radius, correct, top):
    eps = np.linspace(0.0, top, 200)
    return eps, np.array([np.mean(correct & (radius >= e)) for e in eps])


def _feature_side(context, settings, rows, pred):
    """Feature-space certificates: class hulls (LP), exact certified balls, guaranteed inputs."""
    gm = context.gm
    fs = context.feature_space(settings.max_train)
    table_rows = []
    hulls_certified = 0
    for c in range(gm.num_classes):
        try:
            cert = fs.certify_region(fs.class_hull(c, nonneg=fs.nonneg_features), c)
        except InputError as err:  # no correctly classified training example of c
            table_rows.append([c, 0, "-", str(err)])
            continue
        hulls_certified += cert.certified
        table_rows.append([c, int(np.sum(fs.correct & (fs.y_train == c))), bool(cert.certified),
                           f"{np.min(cert.margins):.4g} ({cert.status})"])
    z = context.features()[rows]
    radius = fs.boundary_distance(z, pred, nonneg=fs.nonneg_features)
    guaranteed = fs.guaranteed(context.data.x[rows], features=z)
    summary = {
        "feature_test_inputs": int(len(z)),
        "feature_class_hulls_certified": f"{hulls_certified} of {len(table_rows)}",
        "feature_in_guaranteed_region": float(np.mean(guaranteed.inside)),
        "feature_median_certified_l2_radius": float(np.median(radius)),
    }
    return summary, table_rows, radius


def _exact(gm, x, y, settings):
    """MILP margins at one eps next to CROWN's and IBP's bounds on the same inputs."""
    from tfgeom.verify.sets import ball

    eps = settings.milp_eps * (gm.bounds[1] - gm.bounds[0])
    cert = {m: gm.certify(x, eps, method=m, cls=y, intermediate=settings.intermediate) for m in ("ibp", "crown")}
    margins, status, _ = milp.exact_margins(gm.layer_graph, *gm.head, ball(x, np.full(len(x), eps, np.float32),
                                            settings.norm, gm.bounds), y, time_limit=settings.milp_seconds)
    done = np.isfinite(margins) & np.isfinite(cert["crown"].margins)
    return {
        "milp_eps_fraction_of_range": settings.milp_eps,
        "milp_inputs": int(len(x)),
        "milp_solves_optimal": int(sum(s == "optimal" for s in status)),
        "milp_certified": int(np.sum((margins.min(1) > 0) & (np.array(status) == "optimal"))),
        "milp_ordering_holds": bool(np.all(margins[done] >= cert["crown"].margins[done] - 1e-4)
                                    and np.all(cert["crown"].margins[done] >= cert["ibp"].margins[done] - 1e-6)),
    }


MILP_FLOOR = 1.0  # seconds per MILP solve however little of the budget is left
CALLS_PER_RADIUS = 8  # certify calls a secant radius search typically needs (5-7 on the demo CNN): the estimate


class _Budget:
    """The section's time budget: seconds left, the estimates made, and every choice taken to keep within it
    (all stated in the report, so a reader knows why a figure covers fewer inputs or a looser method)."""

    def __init__(self, seconds):
        self.seconds = float(seconds)
        self.start = time.perf_counter()
        self.estimated = 0.0
        self.choices = []

    def left(self):
        return self.seconds - (time.perf_counter() - self.start)

    def choose(self, text):
        self.choices.append(text)

    def summary(self):
        spent = time.perf_counter() - self.start
        return {"budget_seconds": self.seconds, "budget_estimated_seconds": self.estimated,
                "budget_spent_seconds": spent,
                "budget_choices": "; ".join(self.choices) if self.choices else
                f"none: the whole plan fitted (estimated {self.estimated:.3g} s)"}


def _timed(run):
    start = time.perf_counter()
    value = run()
    return value, time.perf_counter() - start


def _search(context, settings, method, rows, lower=None, intermediate=None):
    """Certified radii of `x[rows]` by the secant search from the bracket: `lower` (IBP's radius for CROWN, whose
    bounds are never looser) below, the DeepFool norm above."""
    gm, x, y = context.gm, context.data.x, context.labels()
    return gm.certified_radius(x[rows], settings.norm, method, cls=y[rows], rtol=settings.rtol,
                               intermediate=intermediate or settings.intermediate,
                               attack=context.deepfool(settings.norm, rows), lower=lower, search="secant",
                               executor=context.executor)


def _crown_plan(context, settings, budget, ibp_radius):
    """The pre-activation bounds CROWN can afford, from one timed certify call on input 0 (`None`: IBP only)."""
    gm, x, y = context.gm, context.data.x, context.labels()
    options = ("backward", "forward") if settings.intermediate == "backward" else ("forward",)
    last = None  # the estimate of the option tried before
    for intermediate in options:
        def one_call():
            return gm.certify(x[:1], ibp_radius, settings.norm, "crown", cls=y[:1], intermediate=intermediate)

        _, call = _timed(one_call)
        if CALLS_PER_RADIUS * call > budget.left() and call < budget.left():
            _, call = _timed(one_call)  # the first call compiled the programs: time a second for the estimate
        per_input = call * CALLS_PER_RADIUS
        if per_input <= budget.left():
            if intermediate != settings.intermediate:
                budget.choose(f"CROWN with forward pre-activation bounds: backward ones would take ~{last:.3g} s "
                              f"per input, over the {budget.left():.3g} s left")
            return intermediate, per_input
        last = per_input
    budget.choose(f"IBP only: one CROWN radius would take ~{last:.3g} s, over the {budget.left():.3g} s left")
    return None, last


def _radii(context, settings, budget):
    """IBP's and CROWN's radii (fractions of the range) on the same first inputs, as many as the budget allows:
    `(radii, table, n)`; `table` holds the certified-accuracy rows and the summary's per-method keys."""
    gm, x = context.gm, context.data.x
    span = gm.bounds[1] - gm.bounds[0]
    n = min(settings.points, len(x))
    context.tell("certified radius (ibp)", 0, 2)
    first, t0 = _timed(lambda: _search(context, settings, "ibp", slice(0, 1)))
    budget.estimated += t0 * n
    if n > 1 and t0 * (n - 1) > budget.left() / 2:  # keep half for CROWN
        k = max(1, min(n, 1 + int(budget.left() / 2 / t0)))
        budget.choose(f"{k} of {n} inputs: IBP took {t0:.3g} s on one, {budget.left():.3g} s were left")
        n = k
    parts, times, counts = {"ibp": [first]}, {"ibp": t0}, {"ibp": n}
    if n > 1:
        rest, t = _timed(lambda: _search(context, settings, "ibp", slice(1, n)))
        parts["ibp"].append(rest)
        times["ibp"] += t
    ibp_radius = np.concatenate([r.radius for r in parts["ibp"]])
    context.tell("certified radius (crown)", 1, 2)
    intermediate, estimate = _crown_plan(context, settings, budget, ibp_radius[0])
    info = {"crown_intermediate": intermediate or "not run"}
    if intermediate is not None:
        first, t0 = _timed(lambda: _search(context, settings, "crown", slice(0, 1), ibp_radius[:1], intermediate))
        budget.estimated += t0 * n
        parts["crown"], times["crown"] = [first], t0
        k = max(1, min(n, 1 + int(max(0.0, budget.left() - estimate * settings.segments / CALLS_PER_RADIUS) / t0)))
        if k < n:
            budget.choose(f"CROWN and IBP on {k} of {n} inputs: one CROWN radius took {t0:.3g} s, "
                          f"{budget.left():.3g} s were left")
            n = k
        counts["crown"] = n
        if n > 1:
            rest, t = _timed(lambda: _search(context, settings, "crown", slice(1, n), ibp_radius[1:n], intermediate))
            parts["crown"].append(rest)
            times["crown"] += t
    pred, y = context.predictions()[:n], context.labels()[:n]
    correct = pred == y
    radii, rows = {}, []
    for method, found in parts.items():
        radius = np.concatenate([r.radius for r in found])[:n] / span
        radii[method] = radius
        converged = int(np.concatenate([r.converged for r in found])[:n].sum())
        info["bisection_converged"] = min(info.get("bisection_converged", n), converged)
        median = float(np.median(radius[correct])) if correct.any() else 0.0
        rows.append([method, n, float(np.mean(correct)), median]
                    + [float(np.mean(correct & (radius >= e))) for e in settings.eps]
                    + [times[method] / counts[method]])
        info[f"{method}_median_radius_fraction_of_range"] = float(np.median(radius))
        info[f"{method}_median_radius_input_units"] = float(np.median(radius) * span)
        info[f"{method}_seconds_per_input"] = times[method] / counts[method]
    return radii, {"rows": rows, "summary": info}, n


def _segments(gm, x, pred, settings, method, intermediate, budget):
    """Morphing segments between same-class inputs certified by `method`, or why none were."""
    pairs = [(a, b) for a in range(len(x)) for b in range(a + 1, len(x)) if pred[a] == pred[b]]
    pairs = pairs[: 50 * settings.segments]
    pairs = pairs[:: max(1, len(pairs) // max(settings.segments, 1))][: settings.segments]
    if not pairs:
        return "no two inputs of one class"
    if budget.left() <= 0:
        budget.choose("segments not certified: the budget was spent")
        return "not run: the time budget was spent"
    a, b = (np.array(p) for p in zip(*pairs))
    seg = gm.certify_segment(x[a], x[b], method=method, intermediate=intermediate)
    return f"{int(seg.certified.sum())} of {len(pairs)} ({method})"


def _exact_within(gm, graph, x, y, settings, budget):
    """The MILP check on the first inputs, its per-solve time limit cut to what the budget leaves."""
    try:
        milp.check_size(graph)
    except ModelError as err:
        return {"milp": f"not run: {err}"}
    k = min(settings.milp_points, len(x))
    # the exact check always runs on small networks (it is what the bounds are checked against), with at least
    # MILP_FLOOR seconds per solve: small ReLU networks solve in milliseconds
    per_solve = min(settings.milp_seconds, max(MILP_FLOOR, budget.left() / max(1, k * (gm.num_classes - 1))))
    if per_solve < settings.milp_seconds:
        budget.choose(f"MILP time limit {per_solve:.3g} s per solve instead of {settings.milp_seconds:g} s")
    return _exact(gm, x[:k], y[:k], settings._replace(milp_seconds=per_solve))


@register
class CertificationAnalysis(Analysis):
    """Certified L-inf radii by IBP and CROWN on the same inputs (MILP for small ReLU nets), segments, feature space."""

    name = "certification"
    position = 70
    scaled = ("points",)  # per-input sizes whose cost grows with d (see settings.scale_defaults)
    labels = {
        "input_range": "input range (radii are fractions of it)",
        "crown_intermediate": "CROWN pre-activation bounds",
        "radius_inputs": "inputs behind every radius figure (same for IBP and CROWN)",
        "bisection_rtol": "radius resolution (bracket within this fraction of the radius)",
        "median_crown_over_ibp_radius": "median CROWN / IBP radius (correct inputs)",
        "ibp_median_radius_fraction_of_range": "IBP median certified radius (fraction of range)",
        "ibp_median_radius_input_units": "IBP median certified radius (input units)",
        "ibp_seconds_per_input": "IBP seconds per input",
        "crown_median_radius_fraction_of_range": "CROWN median certified radius (fraction of range)",
        "crown_median_radius_input_units": "CROWN median certified radius (input units)",
        "crown_seconds_per_input": "CROWN seconds per input",
        "segments_certified": "morphing segments certified (method)",
        "milp": "MILP",
        "milp_eps_fraction_of_range": "MILP eps (fraction of range)",
        "milp_inputs": "MILP inputs",
        "milp_solves_optimal": "MILP solves optimal",
        "milp_certified": "MILP certified inputs",
        "milp_ordering_holds": "MILP >= CROWN >= IBP on every margin",
        "feature_test_inputs": "feature space: test inputs",
        "feature_class_hulls_certified": "feature space: class hulls certified (LP)",
        "feature_in_guaranteed_region": "feature space: test inputs in a guaranteed region",
        "feature_median_certified_l2_radius": "feature space: median exact certified L2 radius",
        "budget_seconds": "time budget of this section (certification.seconds, or certification.share of the "
                          "other sections' time)",
        "budget_estimated_seconds": "estimated cost of the radius searches on every input (IBP and CROWN, from "
                                    "one timed input each)",
        "budget_spent_seconds": "seconds spent",
        "budget_choices": "choices made to keep within the budget",
        "bracketed_inputs": "inputs with both ends of the distance bracket (certified radius <= distance <= DeepFool)",
        "median_deepfool_over_certified_radius": "median DeepFool norm / certified radius (the bracket's "
                                                 "width as a ratio; 1 = the distance is known exactly)",
    }
    title = "Certified regions"
    intro = """A certified radius is one within which no input can change the class, proven by bound propagation
    (IBP: fast and loose; CROWN: tighter) or exactly by MILP on small ReLU networks. Radii are L-inf and given
    as fractions of the input range (input units beside them); larger is more robust. Certified accuracy at eps
    counts inputs that are correctly classified and certified at that radius."""
    CHOICES = {"intermediate": ("forward", "backward"), "norm": ("linf",)}

    class Settings(NamedTuple):
        points: int = 8  # test inputs whose radii IBP and CROWN both find (CROWN costs much more)
        eps: tuple = (0.005, 0.01, 0.02, 0.05)  # certified-accuracy grid, fractions of the input range
        rtol: float = 0.05  # bisection stops when the bracket is within this fraction of the radius
        intermediate: str = "forward"  # CROWN's pre-activation bounds: forward is ~6x cheaper on the demo CNN
        norm: str = "linf"
        segments: int = 2  # morphing segments between same-class test inputs certified by CROWN
        milp_points: int = 4  # exact MILP margins at milp_eps (small ReLU networks only)
        milp_eps: float = 0.01  # fraction of the input range
        milp_seconds: float = 20.0  # time limit per MILP solve (cut to what the budget leaves)
        seconds: float = 15.0  # the section's time budget (at least): fewer inputs, looser bounds beyond it
        share: float = 0.25  # ... or this share of the report's other sections' time, when that is more
        feature_points: int = 200  # test inputs of the (cheap, exact) feature-space certificates
        max_train: int = 4000  # training points whose class hulls are certified

    def check(self, settings):
        if settings.seconds < 0 or not 0 <= settings.share <= 1:
            raise InputError("certification.seconds must be >= 0 and certification.share in [0, 1]; got "
                             f"{settings.seconds!r} and {settings.share!r}")

    def compute(self, context, settings):
        gm, data = context.gm, context.data
        if not gm.has_feature_split:
            return {"summary": {"skipped": gm.split_error}}
        try:
            graph = gm.layer_graph
        except ModelError as err:
            return {"summary": {"skipped": str(err)}}
        x, pred, y = data.x, context.predictions(), context.labels()
        # work shared with other sections (memoised there) is not this section's: done before the clock starts
        context.deepfool(settings.norm, slice(0, min(settings.points, len(x))))
        if data.x_train is not None:
            context.feature_space(settings.max_train), context.features()
        budget = _Budget(max(settings.seconds, settings.share * sum(context.seconds.values())))
        span = gm.bounds[1] - gm.bounds[0]
        summary = {"norm": settings.norm, "input_range": list(gm.bounds), "crown_intermediate": settings.intermediate}
        result = {"summary": summary, "data": {"feature_radius": None}}
        if data.x_train is not None:  # exact and cheap: first, so the bound propagation gets what is left
            m = min(settings.feature_points, len(x))
            side, result["class_hulls"], result["data"]["feature_radius"] = _feature_side(
                context, settings, slice(0, m), pred[:m])
            summary.update(side)
        radii, table, n = _radii(context, settings, budget)
        rows = slice(0, n)
        correct = pred[rows] == y[rows]
        lower = radii["crown" if "crown" in radii else "ibp"]
        bracket = _bracket(lower * span, context.deepfool(settings.norm, rows), y[rows], correct)
        summary.update({"radius_inputs": n, "bisection_rtol": settings.rtol, **table.pop("summary"),
                        **bracket["summary"]})
        if "crown" in radii:
            summary["median_crown_over_ibp_radius"] = float(np.median(
                radii["crown"][correct] / np.maximum(radii["ibp"][correct], 1e-12))) if correct.any() else None
        method = "crown" if "crown" in radii else "ibp"
        summary["segments_certified"] = _segments(gm, x, pred, settings, method, summary["crown_intermediate"],
                                                  budget)
        summary.update(_exact_within(gm, graph, x, y, settings, budget))
        summary.update(budget.summary())
        result["data"]["correct"] = correct
        result.update({"certified_accuracy": table["rows"],
                       "radii_fraction_of_range": {m: radii[m].tolist() for m in radii},
                       "distance_bracket": bracket["rows"], "bracket_lower_method": method})
        return result

    def present(self, result, context, settings):
        out, span = context.out_dir, context.gm.bounds[1] - context.gm.bounds[0]
        radii = {m: np.asarray(r) for m, r in result["radii_fraction_of_range"].items()}
        correct, n = result["data"]["correct"], len(result["data"]["correct"])
        top = max(1e-3, 1.2 * max(float(v.max()) for v in radii.values()))
        figures = [
            ("Certified accuracy against eps (L-inf)",
             plots.certified_accuracy({f"{m} ({n} inputs)": _curve(radii[m], correct, top) for m in radii},
                                      "L-inf radius eps (fraction of the input range)", out / "certified_accuracy.png")),
            ("Certified radius per method",
             plots.histogram({f"{m} ({n} inputs)": radii[m] for m in radii},
                             "certified L-inf radius (fraction of the input range)", f"Certified radii, same {n} inputs",
                             out / "certified_radii.png")),
        ]
        tables = [{
            "title": f"Certified accuracy on the same {n} inputs (fraction correctly classified and certified at eps; "
            "eps as a fraction of the input range, input units in brackets)",
            "columns": ["method", "inputs", "clean accuracy", "median radius (correct, fraction of range)"]
            + [f"eps={e:g} ({e * span:.3g})" for e in settings.eps] + ["seconds per input"],
            "rows": result["certified_accuracy"],
        }]
        tables.append({
            "title": f"Distance to the boundary, bracketed ({settings.norm}, input units): the certified radius is a "
            "lower bound, the DeepFool norm an upper bound",
            "columns": ["input", "class", f"{result['bracket_lower_method'].upper()} certified radius", "DeepFool norm",
                        "DeepFool / certified"],
            "rows": [[r["input"], r["class"], r["certified_radius"], r["deepfool_norm"], r["ratio"]]
                     for r in result["distance_bracket"]],
        })
        radius = result["data"]["feature_radius"]
        if radius is not None:
            tables.append({
                "title": "Feature space: is the hull of each class's training features certified?",
                "columns": ["class", "training features", "certified", "min margin over the hull (status)"],
                "rows": result["class_hulls"],
            })
            figures.append(("Feature space: exact certified ball radius",
                            plots.histogram({"exact L2 radius of the certified ball": radius},
                                            "feature-space L2 distance to the class boundary",
                                            f"Feature space ({len(radius)} inputs)", out / "feature_radius.png")))
        return {"tables": tables, "figures": [{"title": t, "file": f.name} for t, f in figures]}
