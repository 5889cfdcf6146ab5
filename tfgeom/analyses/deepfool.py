"""Analysis `deepfool`: distance to the decision boundary by DeepFool (L2 and Linf)."""
from typing import NamedTuple

import numpy as np

from tfgeom.analyses import plots
from tfgeom.analyses import Analysis, image_like, register
from tfgeom.analyses.summaries import summarize_attack
from tfgeom.runtime.statistics import listed


def _per_class(l2, linf, num_classes):
    rows = []
    for c in range(num_classes):
        m = l2.labels == c
        if not m.any():
            continue
        ok2, okinf = m & l2.success, m & linf.success
        rows.append([
            c, int(m.sum()), round(float(ok2.sum() / m.sum()), 4),
            round(float(np.median(l2.norms[ok2])), 4) if ok2.any() else None,
            round(float(np.median(linf.norms[okinf])), 4) if okinf.any() else None,
        ])
    return rows


@register
class DeepFoolAnalysis(Analysis):
    """DeepFool L2 and Linf on every example; norms, success, per-class table, histograms."""

    name = "deepfool"
    position = 10
    labels = {
        "l2_success_rate": "L2 success rate",
        "l2_median_norm": "L2 median norm (input units)",
        "l2_median_relative_norm": "L2 median norm relative to ||x|| (median of ||r|| / ||x||)",
        "linf_success_rate": "Linf success rate",
        "linf_median_norm": "Linf median norm (input units)",
        "median_relative_norm": "median ||r|| / ||x||",
        "max_boundary_residual": "largest relative residual of the boundary points",
    }
    title = "Distance to the decision boundary (DeepFool)"
    intro = """DeepFool finds, for each input, a small perturbation that changes the predicted class; its norm
    estimates the distance to the decision boundary, in input units (L2 over all pixels, Linf the largest
    single-pixel change). Small norms mean a fragile model; the success rate should be close to 1."""

    class Settings(NamedTuple):
        examples_shown: int = 8  # clean/perturbed pairs drawn in the image strip

    def compute(self, context, settings):
        x, out = context.data.x, context.out_dir
        l2, linf = context.deepfool("l2"), context.deepfool("linf")
        np.savez_compressed(out / "deepfool_l2.npz", x_adv=l2.x_adv, boundary_points=l2.boundary_points,
                            labels=l2.labels, adv_labels=l2.adv_labels, norms=l2.norms)
        stats = {"l2": summarize_attack(l2, x), "linf": summarize_attack(linf, x)}
        return {
            "summary": {
                "examples": int(len(x)),
                "l2_success_rate": stats["l2"]["success_rate"],
                "l2_median_norm": stats["l2"]["median_norm"],
                "l2_median_relative_norm": stats["l2"]["median_relative_norm"],
                "linf_success_rate": stats["linf"]["success_rate"],
                "linf_median_norm": stats["linf"]["median_norm"],
            },
            "l2": stats["l2"],
            "linf": stats["linf"],
            "arrays": "deepfool_l2.npz",
            # one value per analysed input (None where DeepFool failed), for comparisons (tfgeom.report.comparison)
            "evidence": {"l2_norms": listed(l2.norms, l2.success), "linf_norms": listed(linf.norms, linf.success)},
            "data": {"l2": l2, "linf": linf},
        }

    def present(self, result, context, settings):
        gm, x, out = context.gm, context.data.x, context.out_dir
        l2, linf = result["data"]["l2"], result["data"]["linf"]
        figures = [
            {"title": "DeepFool L2 perturbation norms",
             "file": plots.histogram({"L2": l2.norms[l2.success]}, "L2 norm of the minimal perturbation (input units)",
                                     f"DeepFool L2 ({len(x)} inputs)", out / "deepfool_l2_hist.png").name},
            {"title": "DeepFool Linf perturbation norms",
             "file": plots.histogram({"Linf": linf.norms[linf.success]},
                                     "Linf norm of the minimal perturbation (input units)",
                                     f"DeepFool Linf ({len(x)} inputs)", out / "deepfool_linf_hist.png").name},
        ]
        show = np.flatnonzero(l2.success)[: settings.examples_shown]
        if len(show) and image_like(x):
            strip = plots.image_pairs(x[show], l2.x_adv[show],
                                      [f"class {l2.labels[i]} → {l2.adv_labels[i]}\nL2 {l2.norms[i]:.2f}" for i in show],
                                      out / "deepfool_examples.png", bounds=gm.bounds)
            figures.append({"title": "Clean (top) and DeepFool L2 (bottom)", "file": strip.name})
        return {
            "tables": [{
                "title": "Per predicted class",
                "columns": ["class", "examples", "L2 success", "L2 median norm", "Linf median norm"],
                "rows": _per_class(l2, linf, gm.num_classes),
            }],
            "figures": figures,
        }
