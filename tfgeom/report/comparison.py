"""Comparing models on the same inputs: paired differences with bootstrap intervals, and comparison claims.

`compare(models, dataset, out_dir)` analyses every model on the same inputs
with the same seed and settings (`tfgeom.report.runner.run_analyses`, one
report per model under `out_dir/<name>/`), then reads each section's
per-example `evidence` and compares every model with the first (the
reference):

- a **paired** statistic per measure: the ratio of medians (distances,
  radii, curvature magnitudes) or the difference of means (curvatures,
  fractions, energies) of model B against model A over the examples both
  have, with a 95% percentile-bootstrap interval that resamples *examples*,
  the two models' values of an example together (`paired`).
  Examples are matched by input: by the evidence's `index` where it has one
  (curvature points), else by position (every model's section sees the same
  inputs in the same order; the common prefix where counts differ, e.g. a
  certification budget that cut one model's inputs). Connectivity pairs are
  drawn per model (pairs of inputs of one predicted class), so its
  fractions are compared unpaired, each model resampled on its own, and
  say so;
- the detection AUC difference per attack, paired over examples when both
  models' clean and perturbed scores line up, else unpaired;
- the comparison claims (`CLAIMS`), fixed here before any measurement like
  the single-model ones (`tfgeom.report.claims`), each with its source.

A model compared with itself gives ratios of exactly 1 and differences of
exactly 0 (intervals of zero width). `compare.json` (`SCHEMA_VERSION`)
holds the models, each one's claims scorecard, the paired table and the
comparison claims; `compare.html` shows them with overlaid plots.
"""
import json
import pathlib
from typing import NamedTuple

import numpy as np

from tfgeom.errors import InputError
from tfgeom.runtime import statistics

SCHEMA_VERSION = 1
RATIO, DIFFERENCE = "median_ratio", "mean_difference"


class Measure(NamedTuple):
    """One compared quantity, read from a section's evidence.

    Fields:
        key: snake_case key in `compare.json`.
        label: what it is, for people.
        section: the report section holding the evidence.
        path: keys into `section["evidence"]` (or the section itself when `path[0]` is `"@"`).
        statistic: `"median_ratio"` (B's median over A's) or `"mean_difference"` (B's mean minus A's).
        paired: whether its examples are the same inputs in both models (else resampled per model).
    """

    key: str
    label: str
    section: str
    path: tuple
    statistic: str
    paired: bool = True


MEASURES = (
    Measure("deepfool_l2_norm", "DeepFool L2 norm (median ratio)", "deepfool", ("l2_norms",), RATIO),
    Measure("deepfool_linf_norm", "DeepFool Linf norm (median ratio)", "deepfool", ("linf_norms",), RATIO),
    Measure("mean_abs_top_curvature", "mean |kappa| of the top directions (median ratio)", "curvature",
            ("mean_abs_top",), RATIO),
    Measure("most_negative_curvature", "most negative curvature (mean difference)", "curvature",
            ("most_negative",), DIFFERENCE),
    Measure("most_positive_curvature", "most positive curvature (mean difference)", "curvature",
            ("most_positive",), DIFFERENCE),
    Measure("flat_fraction", "flat fraction of the whole spectrum (mean difference)", "curvature",
            ("flat_fraction_all",), DIFFERENCE),
    Measure("curved_subspace_energy", "energy of the DeepFool perturbation in the curved subspace "
            "(mean difference)", "subspace", ("per_input", "energy_curved"), DIFFERENCE),
    Measure("natural_pairs_proved", "natural pairs proved connected (difference of fractions, unpaired)",
            "connectivity", ("natural_proved",), DIFFERENCE, paired=False),
    Measure("natural_pairs_connected", "natural pairs connected (difference of fractions, unpaired)",
            "connectivity", ("natural_connected",), DIFFERENCE, paired=False),
    Measure("feature_boundary_distance", "exact feature-space boundary distance (median ratio)", "feature_space",
            ("feature_boundary_distance",), RATIO),
    Measure("outside_feature_hull", "test inputs outside the training features' hull (mean difference)",
            "feature_space", ("outside_feature_hull",), DIFFERENCE),
    Measure("crown_radius", "CROWN certified Linf radius (median ratio)", "certification",
            ("@", "radii_fraction_of_range", "crown"), RATIO),
    Measure("ibp_radius", "IBP certified Linf radius (median ratio)", "certification",
            ("@", "radii_fraction_of_range", "ibp"), RATIO),
)


class Claim(NamedTuple):
    """A comparison claim: the more robust model (larger median DeepFool L2 norm) differs in `measure`.

    Fields:
        key, statement, source: as in `tfgeom.report.claims.Claim`.
        measure: the `Measure.key` it reads, oriented as robust model against the other.
        criterion: a `statistics.Criterion` on that oriented statistic.
    """

    key: str
    statement: str
    source: str
    measure: str
    criterion: statistics.Criterion


CURE = ("Moosavi-Dezfooli, Fawzi, Uesato, Frossard, \"Robustness via curvature regularization, and vice versa\", "
        "CVPR 2019")
CLAIMS = (
    Claim("robust_is_less_curved", "the more robust model's boundary is less curved near data: its mean |kappa| "
          "of the top directions is smaller", f"{CURE}, Sec. 3 (adversarial training flattens the boundary)",
          "mean_abs_top_curvature", statistics.Criterion("<", 1.0)),
    Claim("robust_is_flatter", "the more robust model has a larger flat fraction of the curvature spectrum",
          f"{CURE}, Sec. 3 (fewer, weaker curved directions after adversarial training)", "flat_fraction",
          statistics.Criterion(">", 0.0)),
    Claim("robust_less_curved_energy", "the more robust model concentrates less of the DeepFool perturbation in "
          "its shared curved subspace", f"{CURE}, Sec. 3, with the curved subspace of Fawzi, Moosavi-Dezfooli, "
          "Frossard, Soatto, CVPR 2018 (docs/science.md)", "curved_subspace_energy",
          statistics.Criterion("<", 0.0)),
)


def _evidence(section, path):
    node = section if path[0] == "@" else section.get("evidence")
    for key in path[1:] if path[0] == "@" else path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _floats(values):
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def _matched(a_section, b_section, measure):
    """`(a [M], b [M])` of the examples both sections have (NaN where one failed), or None."""
    a, b = _evidence(a_section, measure.path), _evidence(b_section, measure.path)
    if a is None or b is None:
        return None
    a, b = _floats(a), _floats(b)
    ia, ib = (s.get("evidence", {}).get("index") for s in (a_section, b_section))
    if measure.paired and ia is not None and ib is not None and len(ia) == len(a) and len(ib) == len(b):
        common = sorted(set(ia) & set(ib))
        pos_a, pos_b = {v: i for i, v in enumerate(ia)}, {v: i for i, v in enumerate(ib)}
        return a[[pos_a[v] for v in common]], b[[pos_b[v] for v in common]]
    if measure.paired:
        n = min(len(a), len(b))
        return a[:n], b[:n]
    return a, b


def _ratio(a, b):
    """B's median over A's (NaN when A's median is 0)."""
    return float(np.median(b) / np.median(a)) if np.median(a) != 0 else np.nan


def _difference(a, b):
    return float(np.mean(b) - np.mean(a))


def paired(a, b, statistic, seed=0):
    """`Estimate` of `statistic(a, b)` (`_ratio` or `_difference`) over the pairs `(a[i], b[i])` (pairs with a NaN
    dropped): percentile bootstrap, `statistics.RESAMPLES` resamples of the examples, each example's two values
    together; resamples where the statistic is undefined (a median of 0 under a ratio) are left out. Exact (zero
    width) when the two samples are equal."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return statistics.Estimate(None, None, None, len(a))
    value = float(statistic(a, b))
    if np.array_equal(a, b):
        return statistics.Estimate(value, value, value, len(a))
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(a[i], b[i]) for i in rng.integers(0, len(a), (statistics.RESAMPLES, len(a)))])
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(value) or len(draws) < statistics.RESAMPLES // 2:
        return statistics.Estimate(value if np.isfinite(value) else None, None, None, len(a))
    low, high = np.percentile(draws, [100 * (1 - statistics.LEVEL) / 2, 100 * (1 + statistics.LEVEL) / 2])
    return statistics.Estimate(value, min(float(low), value), max(float(high), value), len(a))


def unpaired(a, b, statistic, seed=0):
    """`Estimate` of `statistic(a, b)` with each sample resampled on its own (different examples per model)."""
    a, b = (np.asarray(v, np.float64) for v in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n = len(a) + len(b)
    if len(a) < 3 or len(b) < 3:
        return statistics.Estimate(None, None, None, n)
    value = float(statistic(a, b))
    if np.array_equal(np.sort(a), np.sort(b)):
        return statistics.Estimate(value, value, value, n)
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.choice(a, len(a)), rng.choice(b, len(b))) for _ in range(statistics.RESAMPLES)]
    low, high = np.nanpercentile(draws, [100 * (1 - statistics.LEVEL) / 2, 100 * (1 + statistics.LEVEL) / 2])
    return statistics.Estimate(value, min(float(low), value), max(float(high), value), n)


def auc_difference(a, b, seed=0):
    """`Estimate` of B's detection AUC minus A's for one attack (`{"scores_clean", "scores_perturbed"}` each):
    examples resampled together when both groups line up, else each model on its own. Returns
    `(estimate, paired)`."""
    ac, ap, bc, bp = (_floats(e[k]) for e in (a, b) for k in ("scores_clean", "scores_perturbed"))
    value = statistics.auc(bc, bp) - statistics.auc(ac, ap)
    lined_up = len(ac) == len(bc) and len(ap) == len(bp)
    if min(len(ac), len(ap), len(bc), len(bp)) < 2:
        return statistics.Estimate(value, None, None, len(ac) + len(ap)), lined_up
    if lined_up and np.array_equal(ac, bc) and np.array_equal(ap, bp):
        return statistics.Estimate(0.0, 0.0, 0.0, len(ac) + len(ap)), True
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(statistics.RESAMPLES):
        i, j = rng.integers(0, len(ac), len(ac)), rng.integers(0, len(ap), len(ap))
        if lined_up:
            draws.append(statistics.auc(bc[i], bp[j]) - statistics.auc(ac[i], ap[j]))
        else:
            k, m = rng.integers(0, len(bc), len(bc)), rng.integers(0, len(bp), len(bp))
            draws.append(statistics.auc(bc[k], bp[m]) - statistics.auc(ac[i], ap[j]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return statistics.Estimate(value, min(float(low), value), max(float(high), value), len(ac) + len(ap)), lined_up


def compare_sections(a_sections, b_sections, seed=0):
    """`{measure key: row}` comparing model B's report sections with model A's (JSON-ready rows: `label`,
    `statistic`, `paired`, `value`, `low`, `high`, `n`, `a`, `b` (each model's own median or mean))."""
    rows = {}
    for m in MEASURES:
        if m.section not in a_sections or m.section not in b_sections:
            continue
        pair = _matched(a_sections[m.section], b_sections[m.section], m)
        if pair is None:
            continue
        a, b = pair
        fn = _ratio if m.statistic == RATIO else _difference
        est = paired(a, b, fn, seed) if m.paired else unpaired(a, b, fn, seed)
        own = np.nanmedian if m.statistic == RATIO else np.nanmean
        rows[m.key] = dict(est.as_dict(), label=m.label, statistic=m.statistic, paired=m.paired,
                           a=_finite(own, a), b=_finite(own, b))
    a_det, b_det = a_sections.get("detection", {}).get("evidence"), b_sections.get("detection", {}).get("evidence")
    for attack in sorted(set(a_det or {}) & set(b_det or {})):
        est, lined_up = auc_difference(a_det[attack], b_det[attack], seed)
        rows[f"detection_auc_{attack.replace('-', '_')}"] = dict(
            est.as_dict(), label=f"curvature detector AUC against {attack} (difference)", statistic="auc_difference",
            paired=lined_up, a=None, b=None)
    return rows


def _finite(fn, values):
    values = values[np.isfinite(values)]
    return float(fn(values)) if len(values) else None


def _oriented(row, robust_is_b):
    """The row's estimate as the robust model against the other (a ratio inverted, a difference negated)."""
    est = statistics.Estimate(row["value"], row["low"], row["high"], row["n"])
    if robust_is_b or est.value is None:
        return est
    if row["statistic"] == RATIO:
        inv = [None if v in (None, 0) else 1.0 / v for v in (est.value, est.high, est.low)]
        return statistics.Estimate(*inv, est.n)
    return statistics.Estimate(-est.value, -est.high, -est.low, est.n)


def comparison_claims(rows):
    """The `CLAIMS` as cards (`key`, `statement`, `source`, `criterion`, `robust_model`, `estimate`, `low`,
    `high`, `examples`, `verdict`, `note`) for one pair: the robust model is the one whose median DeepFool L2
    norm is larger by its paired interval (none: every claim inconclusive)."""
    df = rows.get("deepfool_l2_norm")
    robust = None
    if df is not None and df["low"] is not None:
        robust = "b" if df["low"] > 1 else "a" if df["high"] < 1 else None
    cards = []
    for claim in CLAIMS:
        card = {"key": claim.key, "statement": claim.statement, "source": claim.source,
                "criterion": claim.criterion.describe(f"{claim.measure} (robust vs other)"), "robust_model": robust,
                "estimate": None, "low": None, "high": None, "examples": 0, "verdict": statistics.INCONCLUSIVE,
                "note": ""}
        row = rows.get(claim.measure)
        if robust is None:
            card["note"] = "neither model is more robust by the DeepFool L2 interval"
        elif row is None:
            card["note"] = "its section did not run on both models"
        else:
            est = _oriented(row, robust == "b")
            card.update(estimate=est.value, low=est.low, high=est.high, examples=est.n,
                        verdict=statistics.verdict(est, claim.criterion))
        cards.append(card)
    return cards


def check_compatible(models, names):
    """Raise `InputError` (one line) unless the models share input shape and classes, with distinct names."""
    if len(models) < 2:
        raise InputError("compare needs at least two models")
    if len(set(names)) != len(names) or len(names) != len(models):
        raise InputError(f"--names must give one distinct name per model ({len(models)}), got {list(names)}")
    first = models[0]
    for name, gm in zip(names[1:], models[1:]):
        if tuple(gm.input_shape) != tuple(first.input_shape):
            raise InputError(f"model {name!r} takes inputs of shape {tuple(gm.input_shape)}, model {names[0]!r} "
                             f"{tuple(first.input_shape)}: compare models of the same input shape")
        if gm.num_classes != first.num_classes:
            raise InputError(f"model {name!r} has {gm.num_classes} classes, model {names[0]!r} "
                             f"{first.num_classes}: compare models of the same classes")


class Comparison(NamedTuple):
    """What `compare` returns.

    Fields:
        names: the models' names, the reference first.
        reports: `{name: report dict}` (each model's `report.json`).
        pairs: `{name: {"rows": {measure: row}, "claims": [card]}}` for every model but the reference.
    """

    names: list
    reports: dict
    pairs: dict

    def as_dict(self):
        return {"schema_version": SCHEMA_VERSION, "reference": self.names[0], "models": self.names,
                "scorecards": {n: r.get("claims", []) for n, r in self.reports.items()},
                "summaries": {n: {s: sec.get("summary", {}) for s, sec in r["sections"].items()}
                              for n, r in self.reports.items()},
                "comparisons": self.pairs}


def compare(models, dataset, out_dir, names=None, seed=0, only=None, settings=None, run=None):
    """Analyse `models` on the same `dataset` and compare each with the first.

    Args:
        models: two or more `GeometryModel`s (or Keras models, wrapped with the default input bounds) of the
            same input shape and classes.
        dataset: a `tfgeom.runtime.data.Dataset` (`tfgeom.data.load(...)`): the same inputs for every model.
        out_dir: folder for `compare.json`, `compare.html` and one report folder per model.
        names: the models' names (default `model_0`, `model_1`, ...).
        seed: the seed of every analysis and bootstrap.
        only: the analyses to run (default: all), as `run_analyses`.
        settings: `{analysis: {key: value}}` overrides, the same for every model.
        run: `run(gm, dataset, out)` -> report dict, in place of `run_analyses` (the CLI passes one with its
            progress bar, resume and executor).

    Returns:
        A `Comparison` (also written to `compare.json` and `compare.html`).
    """
    from tfgeom.execution.store import jsonable, write_atomic
    from tfgeom.report.comparison_page import render
    from tfgeom.report.runner import run_analyses

    from tfgeom.model import GeometryModel

    models = [m if isinstance(m, GeometryModel) else GeometryModel(m) for m in models]
    names = list(names or [f"model_{i}" for i in range(len(models))])
    check_compatible(models, names)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = run or (lambda gm, data, folder: run_analyses(gm, data, folder, only=only, seed=seed, settings=settings))
    reports = {name: run(gm, dataset, out / name) for name, gm in zip(names, models)}
    reference = reports[names[0]]["sections"]
    pairs = {}
    for name in names[1:]:
        rows = compare_sections(reference, reports[name]["sections"], seed)
        pairs[name] = {"rows": rows, "claims": comparison_claims(rows)}
    result = Comparison(names, reports, pairs)
    write_atomic(out / "compare.json", json.dumps(jsonable(result.as_dict(), finite=True), indent=2))
    write_atomic(out / "compare.html", render(result, out))
    return result
