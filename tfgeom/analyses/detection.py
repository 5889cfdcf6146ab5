"""Analysis `detection`: perturbed inputs detected by curvature asymmetry, beside a margin baseline."""
from typing import NamedTuple

from tfgeom import attacks, plots
from tfgeom.analyses import Analysis, register
from tfgeom.detection import CurvatureDetector, evaluate
from tfgeom.errors import TfgeomError


def flag_auc(value):
    """An AUC below chance is flagged, not presented as a result."""
    return f"{value:.3f} (below chance: the score points the wrong way here)" if value < 0.5 else value


@register
class DetectionAnalysis(Analysis):
    """Calibrate the detector on clean inputs; ROC, TPR at the threshold and recovery per attack on others."""

    name = "detection"
    title = "Detection of perturbed inputs by curvature asymmetry"
    intro = """The curvature detector scores each input by the oriented curvature of the boundary towards its runner-up
    class, calibrated on clean inputs only (threshold at the 5% false-positive rate), and is evaluated on other
    inputs and their perturbed versions. AUC 1 separates perfectly, 0.5 is chance; an AUC below 0.5 means the
    score points the wrong way on this model. The top-2 logit margin is shown beside it as a simple baseline."""

    class Settings(NamedTuple):
        calibration: int = 200  # clean inputs that set orientation and threshold (at most half of the inputs)
        evaluation: int = 200  # other inputs, clean and perturbed
        directions: int = 32  # random directions of the second differences
        fpr: float = 0.05  # target false-positive rate of the threshold
        attacks: str = "deepfool-l2,deepfool-linf,fgsm,pgd"  # comma-separated

    def check(self, settings):
        for name in settings.attacks.split(","):
            if name.strip():
                attacks.by_name(name.strip())

    def compute(self, context, settings):
        gm, x = context.gm, context.data.x
        n_cal = min(settings.calibration, len(x) // 2)
        held = slice(n_cal, n_cal + settings.evaluation)
        det = CurvatureDetector(gm, directions=settings.directions, fpr=settings.fpr, seed=context.seed,
                                executor=context.executor)
        det.fit(x[:n_cal])
        x_eval = x[held]
        clean = det.curvatures(x_eval)  # shared by every attack's evaluation
        results = []
        for name in [a.strip() for a in settings.attacks.split(",") if a.strip()]:
            # DeepFool comes from the run's shared attacks: the same rows, computed once
            perturbed = (context.deepfool(name.split("-")[1], held) if name.startswith("deepfool")
                         else attacks.by_name(name)(gm, x_eval, executor=context.executor))
            try:
                results.append(evaluate(det, x_eval, perturbed, name, clean=clean))
            except TfgeomError:  # an attack with no successful perturbation has nothing to detect
                continue
        summary = {"calibration_inputs": n_cal, "evaluation_inputs": int(len(x_eval)), "step_h": det.step,
                   "threshold": det.threshold,
                   "orientation": "score = +rho (clean inputs have negative rho)" if det.orientation > 0
                   else "score = -rho (clean inputs have positive rho)"}
        for r in results:
            key = r.attack.replace("-", "_")
            summary[f"auc_{key}"] = flag_auc(r.auc)
            summary[f"auc_margin_baseline_{key}"] = flag_auc(r.auc_margin_baseline)
            summary[f"tpr_{key}"] = r.tpr
        evidence = {r.attack: {"scores_clean": r.scores_clean, "scores_perturbed": r.scores_perturbed,
                               "recovered": r.recovered} for r in results}
        return {"summary": summary, "results": [r.summary() for r in results], "evidence": evidence, "data": results}

    def present(self, result, context, settings):
        results = result["data"]
        fig = plots.roc({r.attack: (r.roc_fpr, r.roc_tpr, r.auc) for r in results}, context.out_dir / "roc.png")
        rows = []
        for r in results:
            rows.append([r.attack, "curvature detector", r.perturbed, flag_auc(r.auc), r.tpr, r.fpr,
                         r.recovery if r.recovery is not None else "none detected", r.recovery_runner_up])
            rows.append([r.attack, "top-2 logit margin (baseline)", r.perturbed,
                         flag_auc(r.auc_margin_baseline), "-", "-", "-", "-"])
        return {
            "tables": [{"title": "Per attack and detector (evaluation split)",
                        "columns": ["attack", "detector", "perturbed inputs", "AUC", "TPR at threshold",
                                    "FPR at threshold", "recovery (of detected)", "runner-up = original"],
                        "rows": rows}],
            "figures": [{"title": "ROC curves of the curvature score", "file": fig.name}],
        }
