"""Model comparison: paired intervals against SciPy's paired bootstrap, a model against itself, the claims'
orientation, and refusals."""
import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

import tfgeom
from tfgeom.cli.main import app
from tfgeom.report import comparison
from tfgeom.runtime import statistics


@pytest.mark.parametrize("statistic", ["ratio", "difference"])
def test_paired_interval_matches_scipys_paired_bootstrap(statistic):
    """The same percentile interval as `scipy.stats.bootstrap(paired=True)` up to Monte-Carlo error."""
    from scipy import stats

    rng = np.random.default_rng(0)
    a = rng.lognormal(0.0, 0.5, 80)
    b = a * rng.lognormal(0.2, 0.3, 80)  # correlated with a: pairing narrows the interval
    fn = comparison._ratio if statistic == "ratio" else comparison._difference
    ours = comparison.paired(a, b, fn, seed=1)
    ref = stats.bootstrap((a, b), fn, n_resamples=20000, confidence_level=0.95, method="percentile",
                          vectorized=False, paired=True, random_state=np.random.default_rng(2)).confidence_interval
    assert ours.value == pytest.approx(fn(a, b)) and ours.n == 80
    width = ref.high - ref.low
    assert abs(ours.low - ref.low) < 0.08 * width and abs(ours.high - ref.high) < 0.08 * width
    independent = comparison.unpaired(a, b, fn, seed=1)  # ignoring the pairing: a wider interval
    assert independent.high - independent.low > 1.2 * (ours.high - ours.low)


def test_auc_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    e = {"scores_clean": rng.normal(size=30).tolist(), "scores_perturbed": (rng.normal(size=30) + 1).tolist()}
    est, lined_up = comparison.auc_difference(e, e)
    assert (est.value, est.low, est.high, lined_up) == (0.0, 0.0, 0.0, True)


def _rows(df, **measures):
    rows = {"deepfool_l2_norm": dict(zip(("value", "low", "high"), df), n=50, statistic="median_ratio")}
    for key, (stat, values) in measures.items():
        rows[key] = dict(zip(("value", "low", "high"), values), n=50, statistic=stat)
    return rows


def test_comparison_claims_read_the_robust_model_first():
    """The claims orient each measure as robust model against the other: inverted ratios and negated
    differences when the reference is the more robust one."""
    flatter = {"mean_abs_top_curvature": ("median_ratio", (0.5, 0.4, 0.7)),
               "flat_fraction": ("mean_difference", (0.1, 0.05, 0.2)),
               "curved_subspace_energy": ("mean_difference", (-0.1, -0.2, -0.05))}
    b_robust = {c["key"]: c for c in comparison.comparison_claims(_rows((1.5, 1.2, 1.8), **flatter))}
    assert all(c["verdict"] == "holds" and c["robust_model"] == "b" for c in b_robust.values())
    # the same numbers with the reference (a) robust: the robust model is the *more* curved one
    a_robust = {c["key"]: c for c in comparison.comparison_claims(_rows((0.6, 0.5, 0.8), **flatter))}
    assert all(c["verdict"] == "does not hold" and c["robust_model"] == "a" for c in a_robust.values())
    assert a_robust["robust_is_less_curved"]["estimate"] == pytest.approx(2.0)
    assert a_robust["robust_is_less_curved"]["low"] == pytest.approx(1 / 0.7)
    neither = comparison.comparison_claims(_rows((1.1, 0.9, 1.3), **flatter))
    assert {c["verdict"] for c in neither} == {"inconclusive"} and "neither model" in neither[0]["note"]


@pytest.fixture(scope="module")
def cnn_and_data(small_cnn, digits):
    return small_cnn, digits._replace(x=digits.x[:24], y=digits.y[:24])


def test_a_model_compared_with_itself_differs_by_nothing(cnn_and_data, tmp_path):
    model, data = cnn_and_data
    settings = {"curvature": {"points": 12, "sections": 1, "resolution": 9, "spectrum_probes": 1,
                              "spectrum_steps": 10}}
    result = tfgeom.compare([model, model], data, tmp_path, names=["a", "b"], only=["deepfool", "curvature"],
                            settings=settings)
    rows = result.pairs["b"]["rows"]
    assert {"deepfool_l2_norm", "deepfool_linf_norm", "mean_abs_top_curvature", "flat_fraction"} <= set(rows)
    for row in rows.values():
        exact = 1.0 if row["statistic"] == "median_ratio" else 0.0
        assert row["value"] == row["low"] == row["high"] == pytest.approx(exact, abs=0), row
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["schema_version"] == comparison.SCHEMA_VERSION and saved["models"] == ["a", "b"]
    assert {c["verdict"] for c in saved["comparisons"]["b"]["claims"]} == {statistics.INCONCLUSIVE}
    html = (tmp_path / "compare.html").read_text()
    assert "Curvature profiles" in html and "Curvature spectra" in html and "data:image/png;base64" in html


def test_mismatched_models_are_refused_in_one_line(small_cnn_path, digits_npz, tmp_path):
    other = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "other.keras"
    other.save(path)
    result = CliRunner().invoke(app, ["compare", str(small_cnn_path), str(path), "--data", str(digits_npz),
                                      "--out", str(tmp_path / "out"), "--limit", "20"])
    assert result.exit_code == 2 and "same input shape" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    names = CliRunner().invoke(app, ["compare", str(small_cnn_path), str(small_cnn_path), "--data",
                                     str(digits_npz), "--names", "one"])
    assert names.exit_code == 2 and "distinct names" in names.output
