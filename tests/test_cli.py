"""The command line: exit codes, files written, JSON output, one-line errors."""
import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from tfgeom.cli.main import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info_json(small_cnn_path):
    """`info --json` prints parseable JSON with the model's classes and feature layer."""
    result = _run("info", small_cnn_path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["classes"] == 10 and info["input_shape"] == [8, 8, 1] and info["feature_dim"] == 32


def test_deepfool_writes_npz_and_json(small_cnn_path, digits_npz, tmp_path):
    """`deepfool --json --out` succeeds, reports norms and writes the arrays."""
    out = tmp_path / "adv.npz"
    result = _run("deepfool", small_cnn_path, "--data", digits_npz, "--norm", "linf", "--limit", 12, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["examples"] == 12 and summary["norm"] == "linf" and summary["success_rate"] == 1.0
    with np.load(out) as arrays:
        assert arrays["x_adv"].shape == (12, 8, 8, 1)
        np.testing.assert_allclose(np.abs(arrays["x_adv"] - arrays["x"]).reshape(12, -1).max(1), arrays["norms"])


def test_analyze_writes_report_and_resumes(small_cnn_path, digits_npz, tmp_path):
    """`analyze` writes report.json/html and plots; `--resume` keeps finished sections."""
    out = tmp_path / "report"
    result = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 20)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    section = report["sections"]["deepfool"]
    assert section["status"] == "done" and section["l2"]["success_rate"] == 1.0
    assert report["sections"]["curvature"]["status"] == "done"
    assert [r[0] for r in report["sections"]["subspace"]["tables"][0]["rows"]] == [5, 10, 20]  # 2m <= d - 1 = 63
    assert (out / "curvature_profile.png").exists() and (out / "subspace.png").exists()
    assert report["sections"]["feature_space"]["summary"]["training points"] == 1438
    assert (out / "feature_pca.png").exists()
    assert report["sections"]["connectivity"]["status"] == "done" and (out / "roc.png").exists()
    cert = report["sections"]["certification"]["summary"]
    assert cert["crown radius >= ibp radius on every input"] is True
    assert cert["milp at eps=0.01: MILP >= CROWN >= IBP on every margin"] is True
    assert cert["feature space: class hulls certified (LP)"] == "10 of 10"
    assert (out / "certified_accuracy.png").exists()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Per predicted class" in html
    assert (out / "deepfool_l2_hist.png").exists()
    # Mark the finished section; a resumed run must keep it rather than recompute it.
    section["marker"] = "kept"
    (out / "report.json").write_text(json.dumps(report))
    again = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 20, "--resume")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["sections"]["deepfool"]["marker"] == "kept"
    fresh = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 20)
    assert fresh.exit_code == 0 and "marker" not in json.loads((out / "report.json").read_text())["sections"]["deepfool"]
    other = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 21, "--resume")
    assert other.exit_code == 2 and "cannot resume" in other.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "missing.keras"], "does not exist"),
        (["deepfool", "{model}", "--data", "nope.npz"], "neither a file nor a built-in"),
        (["deepfool", "{model}", "--data", "mnist-sample"], "shape"),
        (["analyze", "{model}", "--data", "{data}", "--only", "bogus"], "unknown analysis"),
    ],
    ids=["missing-model", "missing-data", "wrong-shape", "unknown-analysis"],
)
def test_errors_exit_2_with_one_line(small_cnn_path, digits_npz, tmp_path, args, message):
    """Bad input: exit code 2, one line on stderr naming the problem, no traceback."""
    args = [a.format(model=small_cnn_path, data=digits_npz) for a in args]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 3  # one message, wrapped at most by the terminal width


def test_unsafe_flag_is_needed_for_lambda_models(tmp_path, digits_npz):
    """A Lambda model is refused (exit 2) and loads with --unsafe."""
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 1.0), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    path = tmp_path / "lambda.keras"
    model.save(path)
    refused = _run("info", path)
    assert refused.exit_code == 2 and "--unsafe" in refused.output
    assert _run("info", path, "--unsafe").exit_code == 0


def test_debug_shows_traceback():
    """`--debug` lets the exception through instead of the one-line message."""
    result = _run("--debug", "info", "missing.keras")
    assert result.exit_code != 0 and result.exception is not None


def test_demo_runs_end_to_end(tmp_path):
    """`demo` trains on built-in MNIST, saves model and data, and writes the report."""
    result = _run("demo", "--out", tmp_path, "--epochs", 1, "--limit", 10)
    assert result.exit_code == 0, result.output
    for name in ("model.keras", "data.npz", "report.json", "report.html"):
        assert (tmp_path / name).exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sections"]["deepfool"]["summary"]["examples"] == 10


def test_curvature_json(small_cnn_path, digits_npz, tmp_path):
    """`curvature --json` reports the profile with finite differences for the ReLU CNN."""
    out = tmp_path / "curv.npz"
    result = _run("curvature", small_cnn_path, "--data", digits_npz, "--limit", 6, "--k", 3, "--json", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["hvp"] == "finite-difference" and len(summary["mean_negative"]) == 3
    with np.load(out) as arrays:
        assert arrays["values"].shape == (summary["points"], 6)


def test_hull_json_and_missing_training_split(small_cnn_path, digits_npz, tmp_path, digits):
    """`hull --json` reports hull fractions; data without a training split exits 2 naming the fix."""
    result = _run("hull", small_cnn_path, "--data", digits_npz, "--limit", 8, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["test_inputs"] == 8 and 0 <= summary["in_guaranteed_region"] <= 1
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=digits.x[:5], y=digits.y[:5])
    refused = _run("hull", small_cnn_path, "--data", plain)
    assert refused.exit_code == 2 and "x_train" in refused.output


def test_connect_json(small_cnn_path, digits_npz):
    """`connect --json` finds paths between random and adversarial same-class pairs."""
    for extra in ([], ["--adversarial"]):
        result = _run("connect", small_cnn_path, "--data", digits_npz, "--pairs", 4, "--limit", 60, "--json", *extra)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["pairs"] >= 1 and 0 <= summary["connected"] <= 1


def test_detect_json(small_cnn_path, digits_npz):
    """`detect --json` reports AUC and rates on the inputs after the calibration ones."""
    result = _run("detect", small_cnn_path, "--data", digits_npz, "--limit", 60, "--calibration", 30, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["clean"] == 30 and 0 <= summary["auc"] <= 1
    refused = _run("detect", small_cnn_path, "--data", digits_npz, "--limit", 20, "--calibration", 30)
    assert refused.exit_code == 2 and "calibration" in refused.output


def test_certify_json_radius_and_refusals(small_cnn_path, digits_npz, tmp_path):
    """`certify --json` at one eps and with `--radius`; CROWN certifies at least what IBP does; MILP on L2 exits 2."""
    fractions = {}
    for method in ("ibp", "crown"):
        result = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 16, "--eps", 0.01,
                      "--method", method, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["inputs"] == 16 and 0 <= summary["certified accuracy"] <= summary["clean accuracy"]
        fractions[method] = summary["certified accuracy"]
    assert fractions["crown"] >= fractions["ibp"]
    result = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 8, "--radius", "--method", "ibp", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["median certified radius (correct inputs)"] > 0
    refused = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 2, "--norm", "l2", "--method", "milp")
    assert refused.exit_code == 2 and "L2" in refused.output
    lam = tmp_path / "lam.keras"
    inp = keras.Input((8, 8, 1))
    keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Conv2DTranspose(2, 3)(inp)))).save(lam)
    refused = _run("certify", lam, "--data", digits_npz, "--limit", 2)
    assert refused.exit_code == 2 and "Conv2DTranspose" in refused.output
