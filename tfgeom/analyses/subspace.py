"""Analysis `subspace`: the curved subspace S_c and whether it explains vulnerability."""
from typing import NamedTuple

import numpy as np

from tfgeom.analyses import plots
from tfgeom.analyses import Analysis, register
from tfgeom.geometry.subspace import curved_subspace, vulnerability


@register
class SubspaceAnalysis(Analysis):
    """S_c from some inputs' boundary points; energy, fooling and removal experiments on others."""

    name = "subspace"
    position = 30
    examples = ("fit", "evaluate")  # counts of its per-example evidence
    scaled = ("fit", "evaluate")  # per-input sizes whose cost grows with d (see settings.scale_defaults)
    labels = {
        "fit_points": "boundary points defining S_c",
        "evaluation_inputs": "evaluation inputs",
        "dim": "dimension m of S_c",
        "energy_curved": "share of DeepFool perturbation in S_c (||P r|| / ||r||)",
        "energy_random": "share in a random m-dimensional subspace",
        "noise_l2_norm": "L2 norm of the random noise (median DeepFool norm)",
        "fooling_rate_curved": "fooling rate of noise in S_c",
        "fooling_rate_random": "fooling rate of noise in a random subspace",
        "accuracy": "accuracy (original inputs)",
        "accuracy_curved_removed": "accuracy with S_c removed from the inputs",
        "median_l2_norm": "median DeepFool L2 norm (original inputs)",
        "median_l2_norm_curved_removed": "median DeepFool L2 norm with S_c removed",
    }
    title = "Curved subspace and vulnerability"
    intro = """The curved subspace S_c is spanned by the m most curved boundary directions, found on some inputs
    and tested on others. Energy is the share ||P r|| / ||r|| of DeepFool perturbations inside S_c (a random
    subspace gives about sqrt(m/d)); fooling rates are for random noise of one norm inside S_c vs a random
    subspace. Higher values in S_c than in random subspaces support the claim that curvature explains
    vulnerability."""

    class Settings(NamedTuple):
        fit: int = 100  # inputs whose boundary points define S_c (at most half of the inputs)
        evaluate: int = 200  # other inputs on which vulnerability is measured
        dims: tuple = (5, 10, 20, 40)  # subspace dimensions m swept (those with 2m <= d - 1)

    def compute(self, context, settings):
        gm, data = context.gm, context.data
        n_fit = min(settings.fit, len(data.x) // 2)
        fit, held = slice(0, n_fit), slice(n_fit, n_fit + settings.evaluate)
        x_eval = data.x[held]
        y_eval = None if data.y is None else data.y[held]
        d = gm.runtime.input_dim
        dims = tuple(m for m in settings.dims if 2 * m <= d - 1) or (max(1, (d - 1) // 2),)
        context.tell("curved subspace", 0, 2)
        sub = curved_subspace(gm, data.x[fit], dim=max(dims), seed=context.seed, attack=context.deepfool("l2", fit),
                              executor=context.executor)
        context.tell("curved subspace", 1, 2)
        res = vulnerability(gm, x_eval, y_eval, sub, dims=dims, seed=context.seed, attack=context.deepfool("l2", held),
                            executor=context.executor)
        context.tell("curved subspace", 2, 2)
        best = res.rows[-1]
        return {
            "summary": {
                "fit_points": int(sub.points),
                "evaluation_inputs": int(len(x_eval)),
                "hvp": sub.hvp,
                "dim": best["dim"],
                "energy_curved": best["energy_curved"],
                "energy_random": best["energy_random"],
                "noise_l2_norm": res.eps,
                "fooling_rate_curved": best["fooling_curved"],
                "fooling_rate_random": best["fooling_random"],
                "accuracy": res.accuracy,
                "accuracy_curved_removed": best["accuracy_removed"],
                "median_l2_norm": res.median_norm,
                "median_l2_norm_curved_removed": best["median_norm_removed"],
            },
            "experiments": {k: v for k, v in res._asdict().items() if k != "per_input"},
            "evidence": {"per_input": res.per_input, "dim": best["dim"]},
            "eigenvalues": np.asarray(sub.values).tolist(),
            "data": res,
        }

    def present(self, result, context, settings):
        res = result["data"]
        keys = ("dim", "energy_curved", "energy_random", "sqrt_m_over_d", "fooling_curved", "fooling_random",
                "accuracy_removed", "median_norm_removed")
        best = res.rows[-1]
        fig = plots.subspace_experiments(res, context.out_dir / "subspace.png")
        return {
            "tables": [
                {"title": "Sweep over the subspace dimension m",
                 "columns": ["m", "energy in S_c", "energy random", "sqrt(m/d)", "fooling S_c", "fooling random",
                             "accuracy S_c removed", "median norm S_c removed"],
                 "rows": [[r[k] for k in keys] for r in res.rows]},
                {"title": f"Fooling rate of random noise vs its norm (m={best['dim']})",
                 "columns": ["noise norm / median DeepFool norm", "noise norm", "fooling S_c", "fooling random"],
                 "rows": [[r["scale"], r["eps"], r["fooling_curved"], r["fooling_random"]] for r in res.noise_sweep]},
            ],
            "figures": [{"title": "Curved subspace vs random subspaces", "file": fig.name}],
        }
