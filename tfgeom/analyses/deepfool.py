"""Analysis `deepfool`: distance to the decision boundary by DeepFool (L2 and Linf)."""
import numpy as np

from tfgeom import plots
from tfgeom.analyses import register


def _stats(result, x):
    xnorm = np.linalg.norm(x.reshape(len(x), -1), axis=1)
    ok = result.success
    norms = result.norms[ok]
    return {
        "success_rate": float(ok.mean()),
        "median_norm": float(np.median(norms)) if ok.any() else None,
        "mean_norm": float(norms.mean()) if ok.any() else None,
        "median_relative_norm": float(np.median(result.norms_l2[ok] / np.maximum(xnorm[ok], 1e-12)))
        if ok.any()
        else None,
        "mean_iterations": float(result.iterations.mean()),
        "max_boundary_residual": float(np.nanmax(result.boundary_margin)) if ok.any() else None,
    }


def _per_class(results, num_classes):
    rows = []
    l2, linf = results["l2"], results["linf"]
    for c in range(num_classes):
        m = l2.labels == c
        if not m.any():
            continue
        ok2, okinf = m & l2.success, m & linf.success
        rows.append(
            [
                c,
                int(m.sum()),
                round(float(ok2.sum() / m.sum()), 4),
                round(float(np.median(l2.norms[ok2])), 4) if ok2.any() else None,
                round(float(np.median(linf.norms[okinf])), 4) if okinf.any() else None,
            ]
        )
    return rows


@register(
    "deepfool",
    "Distance to the decision boundary (DeepFool)",
    """DeepFool finds, for each input, a small perturbation that changes the predicted class; its norm
    estimates the distance to the decision boundary, in input units (L2 over all pixels, Linf the largest
    single-pixel change). Small norms mean a fragile model; the success rate should be close to 1.""",
)
def run(context):
    """DeepFool L2 and Linf on every example; norms, success, per-class table, histograms."""
    gm, x, out = context.gm, context.data.x, context.out_dir
    results = {}
    for norm in ("l2", "linf"):
        def progress(done, total, norm=norm):
            if context.progress:
                context.progress(f"DeepFool {norm}", done, total)

        results[norm] = gm.deepfool(x, norm=norm, progress=progress)
    r2 = results["l2"]
    np.savez_compressed(
        out / "deepfool_l2.npz",
        x_adv=r2.x_adv,
        boundary_points=r2.boundary_points,
        labels=r2.labels,
        adv_labels=r2.adv_labels,
        norms=r2.norms,
    )
    stats = {norm: _stats(r, x) for norm, r in results.items()}
    figures = []
    hist = plots.histogram(
        {"L2": r2.norms[r2.success]}, "L2 norm of the minimal perturbation", "DeepFool L2", out / "deepfool_l2_hist.png"
    )
    rinf = results["linf"]
    hist_inf = plots.histogram(
        {"Linf": rinf.norms[rinf.success]}, "Linf norm of the minimal perturbation", "DeepFool Linf",
        out / "deepfool_linf_hist.png",
    )
    figures += [
        {"title": "DeepFool L2 perturbation norms", "file": hist.name},
        {"title": "DeepFool Linf perturbation norms", "file": hist_inf.name},
    ]
    show = np.flatnonzero(r2.success)[:8]
    if len(show):
        strip = plots.image_pairs(
            x[show],
            r2.x_adv[show],
            [f"class {r2.labels[i]} → {r2.adv_labels[i]}\nL2 {r2.norms[i]:.2f}" for i in show],
            out / "deepfool_examples.png",
            bounds=gm.bounds,
        ) if x.ndim == 4 and x.shape[-1] in (1, 3) else None
        if strip is not None:
            figures.append({"title": "Clean (top) and DeepFool L2 (bottom)", "file": strip.name})
    return {
        "summary": {
            "examples": int(len(x)),
            "L2 success rate": stats["l2"]["success_rate"],
            "L2 median norm": stats["l2"]["median_norm"],
            "L2 median norm relative to ||x|| (median of ||r|| / ||x||)": stats["l2"]["median_relative_norm"],
            "Linf success rate": stats["linf"]["success_rate"],
            "Linf median norm": stats["linf"]["median_norm"],
        },
        "l2": stats["l2"],
        "linf": stats["linf"],
        "tables": [
            {
                "title": "Per predicted class",
                "columns": ["class", "examples", "L2 success", "L2 median norm", "Linf median norm"],
                "rows": _per_class(results, gm.num_classes),
            }
        ],
        "figures": figures,
        "arrays": "deepfool_l2.npz",
    }
