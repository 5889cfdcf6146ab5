"""Analysis `curvature`: the curvature profile at DeepFool boundary points and 2-D boundary sections."""
from typing import NamedTuple

import numpy as np

from tfgeom.analyses import plots
from tfgeom.analyses import Analysis, register
from tfgeom.geometry.curvature import curvature_profile, shared_direction_score
from tfgeom.geometry.spectrum import curvature_spectrum
from tfgeom.analyses.summaries import summarize_profile


@register
class CurvatureAnalysis(Analysis):
    """Curvature profile at DeepFool boundary points, and sections along curved and random directions."""

    name = "curvature"
    position = 20
    examples = ("points",)  # counts of its per-example evidence
    scaled = ("points", "sections", "resolution")  # per-input sizes whose cost grows with d (see settings.scale_defaults)
    labels = {
        "saturated": "points with more curved directions than computed (flat fraction then an upper bound)",
        "spectrum_flat_fraction": "median fraction of all d - 1 directions that are near-flat (whole spectrum)",
        "spectrum_flat_fraction_error": "median error bar of a point's flat fraction (probes and quadrature)",
        "spectrum_probes": "random probes per point (stochastic Lanczos quadrature)",
        "spectrum_steps": "quadrature nodes per probe (Lanczos steps)",
    }
    title = "Curvature of the decision boundary"
    intro = """Principal curvatures of the decision boundary at DeepFool boundary points (1/input units): the k most
    negative and k most positive of the d - 1 directions tangent to the boundary, averaged over points, and the
    density of all d - 1 of them estimated by stochastic Lanczos quadrature (random probes). A boundary that is
    flat in most directions and curved in a few shows values near 0 except at the ends; the flat fraction
    counts directions with |kappa| at most 10% of the point's largest. Negative curvature bends towards the
    input's class region (docs/science.md A.3)."""

    class Settings(NamedTuple):
        points: int = 100  # inputs whose boundary points are averaged in the profile
        k: int = 20  # curvatures at each end (capped at (d - 1) / 4 for small inputs)
        sections: int = 4  # inputs with a 2-D section along a curved and a random direction
        resolution: int = 81  # grid points per axis of a section (resolution^2 forward passes each)
        spectrum_probes: int = 4  # random probes per point for the whole spectrum (stochastic Lanczos quadrature)
        spectrum_steps: int = 40  # Lanczos steps (quadrature nodes) per probe

    def compute(self, context, settings):
        gm, x = context.gm, context.data.x
        rows = slice(0, settings.points)
        context.tell("curvature profile", 0, 1)
        k = max(1, min(settings.k, (gm.runtime.input_dim - 1) // 4))
        profile = curvature_profile(gm, x[rows], k=k, seed=context.seed, attack=context.deepfool("l2", rows),
                                    executor=context.executor)
        context.tell("curvature profile", 1, 1)
        context.tell("curvature spectrum", 0, 1)
        spectrum = curvature_spectrum(gm, x[rows], probes=settings.spectrum_probes, steps=settings.spectrum_steps,
                                      flat_tol=profile.flat_tol, seed=context.seed,
                                      attack=context.deepfool("l2", rows), curvatures=profile.curvatures,
                                      executor=context.executor)
        context.tell("curvature spectrum", 1, 1)
        shown = slice(0, settings.sections)
        sections = {}
        for direction in ("curved", "random"):
            # the profile's curvatures already cover the first inputs: their most curved directions are reused
            reuse = profile.curvatures if settings.sections <= settings.points else None
            sections[direction] = gm.boundary_sections(x[shown], direction=direction, seed=context.seed,
                                                       attack=context.deepfool("l2", shown), curvatures=reuse,
                                                       resolution=max(3, settings.resolution),
                                                       executor=context.executor)
        summary = summarize_profile(profile)
        summary["saturated"] = f"{summary['saturated_points']} of {summary['points']} points"
        summary.update(_spectrum_summary(spectrum, settings))
        return {
            "summary": {key: value for key, value in summary.items() if not isinstance(value, list)},
            "profile": {
                "mean_negative": profile.mean_negative.tolist(),
                "mean_positive": profile.mean_positive.tolist(),
                "negative_mass": profile.negative_mass,
                "positive_mass": profile.positive_mass,
            },
            "spectrum_density": _pooled_density(spectrum),
            "evidence": {  # one value per boundary point, for the claims' intervals (tfgeom.report.claims)
                "index": profile.curvatures.index.tolist(),  # the input of each point (comparisons pair points by it)
                "not_saturated": (~profile.saturated).tolist(),
                "flat_fraction_all": spectrum.flat_fraction.tolist(),
                "negative_mass": np.abs(np.minimum(profile.values, 0)).sum(axis=1).tolist(),
                "mean_abs_top": np.abs(profile.values).mean(axis=1).tolist(),  # of the 2k computed directions
                "most_negative": profile.values.min(axis=1).tolist(),
                "most_positive": profile.values.max(axis=1).tolist(),
                "positive_mass": np.maximum(profile.values, 0).sum(axis=1).tolist(),
                "shared_overlap_over_random": [None if not np.isfinite(v) else float(v)
                                               for v in shared_direction_score(profile.curvatures)],
            },
            "data": {"profile": profile, "sections": sections, "spectrum": spectrum},
        }

    def present(self, result, context, settings):
        out = context.out_dir
        profile = result["data"]["profile"]
        figures = [{"title": "Curvature profile",
                    "file": plots.curvature_profile(profile, out / "curvature_profile.png").name}]
        spectrum = result["data"]["spectrum"]
        if len(spectrum.index):
            figures.append({"title": "Density of all principal curvatures (stochastic Lanczos quadrature)",
                            "file": plots.curvature_density(spectrum, profile, out / "curvature_density.png").name})
        for direction, secs in result["data"]["sections"].items():
            if secs:
                f = plots.boundary_sections(secs, out / f"sections_{direction}.png")
                figures.append({"title": f"Boundary sections along {direction} directions", "file": f.name})
        return {
            "tables": [{
                "title": "Mean principal curvatures by rank",
                "columns": ["rank", "most negative", "most positive"],
                "rows": [[i + 1, float(profile.mean_negative[i]), float(profile.mean_positive[::-1][i])]
                         for i in range(len(profile.mean_negative))],
            }],
            "figures": figures,
        }


def _spectrum_summary(spectrum, settings):
    """The whole spectrum's flatness in the summary: medians over points of the flat fraction and its error bar."""
    found = len(spectrum.flat_fraction) > 0
    return {
        "spectrum_flat_fraction": float(np.median(spectrum.flat_fraction)) if found else None,
        "spectrum_flat_fraction_error": float(np.median(spectrum.flat_error)) if found else None,
        "spectrum_probes": settings.spectrum_probes,
        "spectrum_steps": min(settings.spectrum_steps, spectrum.input_dim - 1),
    }


def _pooled_density(spectrum, bins=81):
    """The estimated density of all principal curvatures pooled over points and probes, as a histogram
    (`edges [bins + 1]`, `share [bins]` of the directions): small enough for report.json, and what a
    comparison overlays."""
    count = max(spectrum.nodes.shape[0] * spectrum.nodes.shape[1], 1)
    nodes, weights = spectrum.nodes.ravel(), spectrum.weights.ravel() / count
    top = max(float(np.abs(nodes).max(initial=0.0)), 1e-12)
    share, edges = np.histogram(nodes, bins=np.linspace(-1.05 * top, 1.05 * top, bins + 1), weights=weights)
    return {"edges": edges.tolist(), "share": share.tolist()}
