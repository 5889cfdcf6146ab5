"""Detect adversarially perturbed inputs by curvature asymmetry, and recover their label (Fawzi et al., CVPR 2018, the detection section; our score: docs/choices.md).

Runner-up score (ours, `rule="runner-up"`). For an input `x` with predicted class `k` and a candidate class
`j`, with `F_j = f_k - f_j`,

    rho_j(x) = mean_v [F_j(x + h v) + F_j(x - h v) - 2 F_j(x)] / h^2,

over `R` fixed random unit directions `v` (one batched forward pass over
`x` and its `2R` neighbours; no Hessian). A natural input near the boundary
with class `j` sees `F_j` curved with some typical sign; an input pushed just
across that boundary from `j` sees the same boundary from the other side, where
`F` changes sign, so its `rho` has the opposite sign. The detector uses the
runner-up class `j*` (the class across the nearest boundary, and for a small
perturbation almost always the original class):

    score(x) = s * rho_{j*}(x),

with the orientation `s = -sign(median rho_{j*})` over *clean* calibration
inputs, so that clean scores are mostly negative and crossings show as large
positive scores. `fit` sets the threshold at the `1 - fpr` quantile of clean
calibration scores (TFP's `percentile`); `detect` flags `score > threshold`.

Recovery (ours): among the `candidates` classes with the highest logits after
`k`, the recovered label is the one with the largest oriented curvature
`s * rho_j(x)`: the class whose boundary is seen from the wrong side.

The authors' rule as recalled (`rule="max-class"`): with `F_i = f_i - f_k`
for every class `i != k`, flag the input when the largest curvature
`max_i -rho_i(x)` exceeds a threshold set on clean data; the recovered label
is that `argmax_i`. On the demo CNN the perturbed inputs fall on the *low*
side of that score, so `calibrate` tries both flag sides (`side=1`: above,
the authors'; `side=-1`: below) and keeps the one the calibration split supports.

`calibrate` chooses the step `h`, the directions (random, or the curved
subspace estimated on calibration inputs) and the rule on the calibration
split only (clean inputs and their DeepFool L2 perturbations); evaluation
inputs are never seen there.

Points `x +- h v` may fall outside the input bounds; the model is evaluated
there as it is.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfgeom import execution
from tfgeom.geometry import hvp as hvp_lib
from tfgeom.runtime import statistics
from tfgeom.errors import InputError
from tfgeom.runtime.resources import FLOAT32, check_memory
from tfgeom.runtime.validation import check_choice, check_positive_int

RULES = ("runner-up", "max-class")


def second_difference_program(logits_fn):
    """`program(x [B, ...], v [R, ...], h) -> (logits [B, L], second [B, L])`.

    `second[b, l] = mean_r (f_l(x_b + h v_r) + f_l(x_b - h v_r) - 2 f_l(x_b)) / h^2`.
    """

    def program(x, v, h):
        b, r = tf.shape(x)[0], tf.shape(v)[0]
        plus = x[:, None] + h * v[None]
        minus = x[:, None] - h * v[None]
        shape = tf.concat([[-1], tf.shape(x)[1:]], 0)
        z = logits_fn(tf.concat([x, tf.reshape(plus, shape), tf.reshape(minus, shape)], 0))
        z0 = z[:b]
        zp = tf.reshape(z[b : b + b * r], [b, r, -1])
        zm = tf.reshape(z[b + b * r :], [b, r, -1])
        return z0, tf.reduce_mean(zp + zm - 2.0 * z0[:, None], axis=1) / (h * h)

    return program


class Scores(NamedTuple):
    """Second differences towards the top candidate classes (NumPy).

    Fields:
        labels: `[N]` predicted classes `k`.
        candidates: `[N, C]` the classes after `k` with the highest logits.
        rho: `[N, C]` `rho_j` of `F_j = f_k - f_j` for each candidate `j` (not oriented).
    """

    labels: np.ndarray
    candidates: np.ndarray
    rho: np.ndarray


class Evaluation(NamedTuple):
    """A fitted detector on clean inputs (negatives) and their successful perturbations (positives).

    Fields:
        attack: the attack's name (or None).
        clean: number of clean inputs.
        perturbed: number of successfully perturbed inputs.
        auc: area under the ROC curve of the curvature score.
        tpr: fraction of perturbed inputs above the calibrated threshold.
        fpr: fraction of clean inputs above it.
        tpr_at_5_fpr: TPR at 5% FPR with the threshold re-read on this evaluation set (reference).
        recovery: fraction of detected perturbed inputs whose recovered label is the original (None if none detected).
        recovery_runner_up: fraction of perturbed inputs whose runner-up class is the original.
        auc_margin_baseline: AUC of the top-2 logit margin as the score (not curvature: a reference).
        roc_fpr: the ROC curve's false-positive rates.
        roc_tpr: its true-positive rates.
        scores_clean: `[clean]` the clean inputs' scores (for intervals).
        scores_perturbed: `[perturbed]` the perturbed inputs' scores.
        recovered: `[detected]` whether each detected input's recovered label is the original.
    """

    attack: object
    clean: int
    perturbed: int
    auc: float
    tpr: float
    fpr: float
    tpr_at_5_fpr: float
    recovery: object
    recovery_runner_up: float
    auc_margin_baseline: float
    roc_fpr: list
    roc_tpr: list
    scores_clean: list = ()
    scores_perturbed: list = ()
    recovered: list = ()

    def summary(self):
        """The JSON-ready record without the ROC curve and the per-input arrays."""
        return {k: v for k, v in self._asdict().items()
                if not k.startswith(("roc", "scores")) and k != "recovered"}


class CurvatureDetector:
    """Flags inputs whose boundary curvature has the wrong sign; recovers their label.

    Args:
        gm: a `GeometryModel`.
        directions: random unit directions `R`. Defaults to `32`.
        step: `h`. Defaults to `tfgeom.geometry.hvp.default_step` (the curvature scale).
        candidates: classes after the top one considered for recovery. Defaults to `3`.
        fpr: target false-positive rate of `fit`. Defaults to `0.05`.
        seed: seed of the directions. Defaults to `0`.
        batch_size: inputs per compiled call (each expands to `2R + 1`).
            Defaults to `32`.
        executor: a `tfgeom.execution.executor` executor to score inputs in shards on
            (workers rebuild the same directions from the seed). Defaults to
            `None`: in this process.

    Example:
        >>> det = CurvatureDetector(gm).fit(x_calibration)  # doctest: +SKIP
        >>> det.detect(x_suspect), det.recover(x_suspect)  # doctest: +SKIP
    """

    def __init__(self, gm, directions=32, step=None, candidates=3, fpr=0.05, seed=0, batch_size=32, executor=None,
                 rule="runner-up", side=1.0, recover_side=1.0):
        self.gm = gm
        self.side = float(np.sign(side)) or 1.0
        self.recover_side = float(np.sign(recover_side)) or 1.0
        self.executor = executor
        d = int(np.prod(gm.input_shape))
        self.rule = check_choice("rule", rule, RULES)
        if self.rule == "max-class":
            candidates = gm.num_classes - 1  # every other class
        self.candidates = min(check_positive_int("candidates", candidates), gm.num_classes - 1)
        if not 0 < fpr < 1:
            raise InputError(f"fpr must be in (0, 1); got {fpr}")
        self.fpr = float(fpr)
        self.step = float(step) if step is not None else hvp_lib.default_step(d, gm.bounds)
        if isinstance(directions, (int, np.integer)):
            v = np.random.default_rng(seed).normal(size=(check_positive_int("directions", directions), d))
        else:  # given directions, e.g. the curved subspace's basis
            v = np.asarray(directions, np.float64).reshape(len(directions), -1)
            if v.shape[1] != d or len(v) == 0 or not np.all(np.isfinite(v)):
                raise InputError(f"directions must be a count or a finite [R >= 1, {d}] array; got {v.shape}")
        directions = len(v)
        self.directions = (v / np.linalg.norm(v, axis=1, keepdims=True)).reshape(directions, *gm.input_shape)
        self.directions = self.directions.astype(np.float32)
        self.batch_size = check_positive_int("batch_size", batch_size)
        check_memory(f"the detector with {directions} directions and batch_size={batch_size}",
                     (2 * directions + 1) * self.batch_size * d * FLOAT32 * 3,
                     "lower directions or batch_size (CLI: --batch-size)")
        self.orientation = None
        self.threshold = None
        # what a worker needs to compute the same curvatures
        self.config = {"directions": self.directions, "step": self.step, "candidates": self.candidates,
                       "batch_size": self.batch_size, "rule": self.rule}

    def curvatures(self, x):
        """`Scores`: `rho_j` (not oriented) towards the top candidate classes of inputs `x [N, ...]`."""
        x = self.gm.check(x)
        if self.executor is not None:
            return execution.run(self.gm, "detection_scores", {"x": x}, {"detector": self.config}, self.executor)
        rt = self.gm.runtime
        program = rt.program(
            ("second-difference",),
            lambda: second_difference_program(rt.logits_fn),
            [rt.spec(), rt.spec(), tf.TensorSpec([], tf.float32)],
        )
        v, h = tf.constant(self.directions), tf.constant(self.step, tf.float32)
        z, second = rt.map(program, [x], self.batch_size, (v, h))
        order = np.argsort(-z, axis=1)
        labels, cands = order[:, 0], order[:, 1 : 1 + self.candidates]
        rows = np.arange(len(x))[:, None]
        rho = second[rows, labels[:, None]] - second[rows, cands]
        return Scores(labels, cands, rho)

    def require_fit(self):
        """Raise `InputError` unless `fit` has set the orientation and threshold."""
        if self.threshold is None:
            raise InputError("the detector is not calibrated; call fit(x_clean) first")

    def fit(self, x_clean):
        """Orientation and threshold from clean calibration inputs `[N, ...]`; returns `self`."""
        return self.fit_from(self.curvatures(x_clean).rho)

    def fit_from(self, rho):
        """`fit` from the clean inputs' curvatures `rho [N, C]` (`curvatures(x_clean).rho`); returns `self`."""
        if self.rule == "max-class":
            self.orientation = -1.0  # the authors' sign: the curvature of F_i = f_i - f_k, i.e. -rho_i
        else:
            self.orientation = -1.0 if float(np.median(rho[:, 0])) > 0 else 1.0
        scores = tf.constant(self.score_from(rho), tf.float64)
        self.threshold = float(tfp.stats.percentile(scores, 100.0 * (1.0 - self.fpr), interpolation="linear"))
        return self

    def score_from(self, rho):
        """`[N]` scores from the curvatures `rho [N, C]` of `curvatures()`: the oriented runner-up curvature
        (`rule="runner-up"`) or the largest curvature of `f_i - f_k` over every class `i` (`"max-class"`),
        times `side` (+1: flag above the threshold, the authors' side; -1: below)."""
        oriented = self.orientation * rho
        return oriented[:, 0] if self.rule == "runner-up" else self.side * oriented.max(axis=1)

    def score(self, x):
        """`[N]` the detector's score (higher = more suspicious)."""
        self.require_fit()
        return self.score_from(self.curvatures(x).rho)

    def detect(self, x):
        """`[N]` bool: the score exceeds the calibrated threshold."""
        return self.score(x) > self.threshold

    def recover(self, x):
        """`[N]` the most likely label before perturbation (largest oriented `rho_j`)."""
        self.require_fit()
        return self.recover_from(*self.curvatures(x)[1:])

    def recover_from(self, cands, rho):
        """`[N]` recovered labels from candidate classes `[N, C]` and their curvatures `rho [N, C]`."""
        return cands[np.arange(len(cands)), np.argmax(self.recover_side * self.orientation * rho, axis=1)]


def evaluate(detector, x_eval, perturbed, name=None, clean=None):
    """ROC of a fitted detector: clean `x_eval` (negatives) vs their successful perturbations (positives).

    Args:
        detector: a fitted `CurvatureDetector`.
        x_eval: `[N, ...]` clean inputs.
        perturbed: an `AttackResult` of any attack on `x_eval` (see `tfgeom.geometry.attacks.by_name`).
        name: the attack's name for the result. Defaults to `None`.
        clean: `detector.curvatures(x_eval)` when several attacks are
            evaluated on the same inputs (computed once). Defaults to `None`.

    Returns:
        An `Evaluation`.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    gm = detector.gm
    x_eval = gm.check(x_eval)
    if len(perturbed.x_adv) != len(x_eval):
        raise InputError(f"perturbed has {len(perturbed.x_adv)} inputs but x_eval has {len(x_eval)}; "
                         "attack x_eval itself")
    ok = perturbed.success
    xa, labels = perturbed.x_adv[ok], perturbed.labels[ok]
    if len(xa) == 0:
        raise InputError(f"{name or 'the attack'} produced no successful perturbation; nothing to detect")
    detector.require_fit()
    _, cands, rho = detector.curvatures(xa)  # once: scores and recovery both come from it
    clean = detector.score_from((detector.curvatures(x_eval) if clean is None else clean).rho)
    dirty = detector.score_from(rho)
    y = np.r_[np.zeros(len(clean)), np.ones(len(dirty))]
    s = np.r_[clean, dirty]
    fpr, tpr, _ = roc_curve(y, s)
    logits_dirty = gm.runtime.logits(gm.check(xa))
    z_clean, z_dirty = np.sort(gm.runtime.logits(x_eval), 1), np.sort(logits_dirty, 1)
    margin = np.r_[z_clean[:, -1] - z_clean[:, -2], z_dirty[:, -1] - z_dirty[:, -2]]
    flagged = dirty > detector.threshold
    recovered = detector.recover_from(cands[flagged], rho[flagged])
    return Evaluation(
        attack=name,
        clean=int(len(clean)),
        perturbed=int(len(dirty)),
        auc=float(roc_auc_score(y, s)),
        tpr=float(np.mean(flagged)),
        fpr=float(np.mean(clean > detector.threshold)),
        tpr_at_5_fpr=float(np.interp(0.05, fpr, tpr)),
        recovery=float(np.mean(recovered == labels[flagged])) if flagged.any() else None,
        recovery_runner_up=float(np.mean(np.argsort(-logits_dirty, 1)[:, 1] == labels)),
        # Baseline, not curvature: a small top-2 logit margin flags points near the boundary.
        auc_margin_baseline=float(roc_auc_score(y, -margin)),
        roc_fpr=fpr.tolist(),
        roc_tpr=tpr.tolist(),
        scores_clean=clean.tolist(),
        scores_perturbed=dirty.tolist(),
        recovered=(recovered == labels[flagged]).tolist(),
    )


STEP_SCALES = (0.3, 1.0, 3.0)  # multiples of `tfgeom.geometry.hvp.default_step` tried by `calibrate`


def calibrate(gm, x_clean, perturbed, step_scales=STEP_SCALES, counts=(32,), basis=None, rules=RULES, fpr=0.05,
              seed=0, executor=None):
    """Choose the step, the directions and the rule on calibration data only; return the fitted detector.

    Every combination of `step_scales` (times the default step), direction
    counts, direction kinds (random; the rows of `basis`, e.g. a curved
    subspace estimated on calibration inputs, when given) and `rules` is
    fitted on the clean `x_clean` and scored by its AUC between `x_clean` and
    their successful perturbations in `perturbed` (an `AttackResult` of
    `x_clean`). The evaluation inputs are never seen here.

    Returns:
        `(detector, rows)`: the best combination (largest calibration AUC,
        the first on ties) fitted on `x_clean`, and one dict per combination:
        `directions` (`"random"`/`"curved"`), `count`, `step_scale`, `step`, `rule`, `side`
        (max-class: `"above"`, the authors' flag, or `"below"`; runner-up: `"clean median"`, its
        orientation from clean inputs), `calibration_auc`. The max-class score is tried with both
        flag sides: which side perturbed inputs fall on is read from the calibration split, never
        assumed; so is its recovery rule (the class of the largest curvature, the authors', or of the
        smallest: `recover_side`), by the recovered fraction of the calibration perturbations.
    """
    x_clean = gm.check(x_clean)
    xa = perturbed.x_adv[perturbed.success]
    if len(xa) == 0:
        raise InputError("the calibration attack produced no successful perturbation; cannot choose settings")
    d = int(np.prod(gm.input_shape))
    h0 = hvp_lib.default_step(d, gm.bounds)
    kinds = [("random", None)] + ([("curved", np.asarray(basis))] if basis is not None else [])
    rows, best = [], None
    for kind, vectors in kinds:
        for count in counts:
            directions = count if vectors is None else vectors[: min(count, len(vectors))]
            for scale in step_scales:
                # one pass over all classes serves both rules (the runner-up is the first candidate)
                probe = CurvatureDetector(gm, directions, scale * h0, fpr=fpr, seed=seed, executor=executor,
                                          rule="max-class")
                rho_clean, dirty_scores = probe.curvatures(x_clean).rho, probe.curvatures(xa)
                rho_dirty = dirty_scores.rho
                for rule in rules:
                    sides = [("clean median", 1.0)] if rule == "runner-up" else [("above", 1.0), ("below", -1.0)]
                    for side_name, side in sides:
                        det = CurvatureDetector(gm, directions, scale * h0, fpr=fpr, seed=seed, executor=executor,
                                                rule=rule, side=side)
                        det.fit_from(rho_clean[:, : (1 if rule == "runner-up" else None)])
                        value = statistics.auc(det.score_from(rho_clean), det.score_from(rho_dirty))
                        rows.append({"directions": kind, "count": int(len(det.directions)),
                                     "step_scale": float(scale), "step": float(scale * h0), "rule": rule,
                                     "side": side_name, "calibration_auc": value})
                        if best is None or value > best[0]:
                            best = (value, directions, scale * h0, rule, side, dirty_scores)
    _, directions, step, rule, side, dirty = best
    detector = CurvatureDetector(gm, directions, step, fpr=fpr, seed=seed, executor=executor, rule=rule, side=side)
    detector.fit(x_clean)
    if rule == "max-class":  # recovery: the class of the largest or of the smallest curvature, as calibration says
        truth = perturbed.labels[perturbed.success]
        hits = {}
        for recover_side in (1.0, -1.0):
            detector.recover_side = recover_side
            hits[recover_side] = float(np.mean(detector.recover_from(dirty.candidates, dirty.rho) == truth))
        detector.recover_side = max(hits, key=hits.get)
    return detector, rows


@execution.stage("detection_scores")
def _detection_scores_shard(gm, start, x, detector):
    return CurvatureDetector(gm, **detector).curvatures(x)  # directions travel with the configuration
