"""Analysis `detection`: perturbed inputs detected by curvature asymmetry, beside a margin baseline."""
from typing import NamedTuple

from tfgeom.geometry import attacks
from tfgeom.analyses import plots
from tfgeom.runtime import statistics
from tfgeom.analyses import Analysis, register
from tfgeom.geometry.detection import RULES, calibrate, evaluate
from tfgeom.errors import InputError, TfgeomError
from tfgeom.runtime.validation import check_choice


def _orientation(det):
    """The score's sign convention, in words."""
    if det.rule == "max-class":
        return ("score = max over classes i of the curvature of f_i - f_k, flagged "
                + ("above" if det.side > 0 else "below") + " the threshold")
    return ("score = +rho (clean inputs have negative rho)" if det.orientation > 0
            else "score = -rho (clean inputs have positive rho)")


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def flag_auc(value):
    """An AUC below chance is flagged, not presented as a result."""
    return f"{value:.3f} (below chance: the score points the wrong way here)" if value < 0.5 else value


@register
class DetectionAnalysis(Analysis):
    """Calibrate the detector on clean inputs; ROC, TPR at the threshold and recovery per attack on others."""

    name = "detection"
    position = 50
    examples = ("calibration", "evaluation")  # counts of its per-example evidence
    labels = {
        "calibration_inputs": "calibration inputs (clean only)",
        "step_h": "finite-difference step h (input units)",
        "chosen_directions": "directions chosen on the calibration split",
        "chosen_rule": "score chosen on the calibration split",
        "chosen_calibration_auc": "its AUC on the calibration split",
        "threshold": "threshold on the score",
        "orientation": "orientation",
    }
    title = "Detection of perturbed inputs by curvature asymmetry"
    intro = """The curvature detector scores each input by the oriented curvature of the boundary towards its runner-up
    class, calibrated on clean inputs only (threshold at the 5% false-positive rate), and is evaluated on other
    inputs and their perturbed versions. AUC 1 separates perfectly, 0.5 is chance; an AUC below 0.5 means the
    score points the wrong way on this model. The top-2 logit margin is shown beside it as a simple baseline."""

    class Settings(NamedTuple):
        calibration: int = 200  # clean inputs that set orientation and threshold (at most half of the inputs)
        evaluation: int = 200  # other inputs, clean and perturbed
        directions: int = 32  # directions of the second differences (random, or the curved subspace's)
        step_scales: tuple = (0.1, 0.3, 1.0, 3.0, 10.0)  # h tried on the calibration split (x default)
        rules: str = "runner-up,max-class"  # scores tried on the calibration split (comma-separated)
        curved_directions: bool = True  # also try the curved subspace's directions (estimated on calibration inputs)
        fpr: float = 0.05  # target false-positive rate of the threshold
        attacks: str = "deepfool-l2,deepfool-linf,fgsm,pgd"  # comma-separated

    def check(self, settings):
        if not 0.0 < settings.fpr < 1.0:
            raise InputError(f"detection.fpr must be a rate in (0, 1); got {settings.fpr!r}")
        for name in settings.attacks.split(","):
            if name.strip():
                attacks.by_name(name.strip())
        for rule in _names(settings.rules):
            check_choice("detection.rules", rule, RULES)

    def compute(self, context, settings):
        gm, x = context.gm, context.data.x
        n_cal = min(settings.calibration, len(x) // 2)
        cal, held = slice(0, n_cal), slice(n_cal, n_cal + settings.evaluation)
        # settings chosen on the calibration split only: its clean inputs and their DeepFool L2 perturbations
        basis = None
        fit = slice(0, min(n_cal, 50))
        if settings.curved_directions and 2 * settings.directions <= gm.runtime.input_dim - 1:
            basis = gm.curved_subspace(x[fit], dim=settings.directions, seed=context.seed,
                                       attack=context.deepfool("l2", fit), executor=context.executor).basis
        det, grid = calibrate(gm, x[cal], context.deepfool("l2", cal), settings.step_scales, (settings.directions,),
                              basis, _names(settings.rules), settings.fpr, context.seed, context.executor)
        chosen = max(grid, key=lambda row: row["calibration_auc"])
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
                   "chosen_directions": f"{chosen['count']} {chosen['directions']}",
                   "chosen_rule": f"{det.rule} ({chosen['side']})",
                   "chosen_calibration_auc": chosen["calibration_auc"], "threshold": det.threshold,
                   "orientation": _orientation(det)}
        for r in results:
            key = r.attack.replace("-", "_")
            summary[f"auc_{key}"] = flag_auc(r.auc)
            est = statistics.auc_interval(r.scores_clean, r.scores_perturbed, seed=context.seed)
            summary[f"auc_interval_{key}"] = [est.low, est.high]
            summary[f"auc_margin_baseline_{key}"] = flag_auc(r.auc_margin_baseline)
            summary[f"tpr_{key}"] = r.tpr
        evidence = {r.attack: {"scores_clean": r.scores_clean, "scores_perturbed": r.scores_perturbed,
                               "recovered": r.recovered} for r in results}
        return {"summary": summary, "results": [r.summary() for r in results], "calibration_grid": grid,
                "evidence": evidence, "data": results}

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
            "tables": [{"title": "Settings tried on the calibration split (clean vs DeepFool L2; the best is used)",
                        "columns": ["directions", "count", "step h", "h / default", "rule", "flag side",
                                    "calibration AUC"],
                        "rows": [[g["directions"], g["count"], g["step"], g["step_scale"], g["rule"],
                                  g["side"], g["calibration_auc"]] for g in result["calibration_grid"]]},
                       {"title": "Per attack and detector (evaluation split)",
                        "columns": ["attack", "detector", "perturbed inputs", "AUC", "TPR at threshold",
                                    "FPR at threshold", "recovery (of detected)", "runner-up = original"],
                        "rows": rows}],
            "figures": [{"title": "ROC curves of the curvature score", "file": fig.name}],
        }
