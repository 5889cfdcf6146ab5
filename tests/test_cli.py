"""The command line: exit codes, files written, JSON output, one-line errors."""
import json
import re

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
    assert report["sections"]["feature_space"]["summary"]["training_points"] == 1438
    assert (out / "feature_pca.png").exists()
    assert report["sections"]["connectivity"]["status"] == "done" and (out / "roc.png").exists()
    tables = {t["title"]: t for t in report["sections"]["detection"]["tables"]}
    detectors = {row[1] for row in tables["Per attack and detector (evaluation split)"]["rows"]}
    assert detectors == {"curvature detector", "top-2 logit margin (baseline)"}
    cert = report["sections"]["certification"]["summary"]
    n = cert["radius_inputs"]
    assert cert["bisection_converged"] == n
    assert cert["milp_ordering_holds"] is True
    radii = report["sections"]["certification"]["radii_fraction_of_range"]
    assert len(radii["ibp"]) == len(radii["crown"]) == n
    assert sum(r > 0 for r in radii["ibp"]) >= 1  # the bisection resolves IBP's small radii (not all 0)
    assert cert["feature_class_hulls_certified"] == "10 of 10"
    assert (out / "certified_accuracy.png").exists()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Per predicted class" in html
    assert "first 20" in html and "seed: <b>0</b>" in html  # how the report was made, at the top
    assert all(section["intro"] for section in report["sections"].values())
    assert "section computed in" in html
    assert re.fullmatch(r"\d+ of \d+ pairs connected \(\d+ proved, \d+ sampled\)",
                        report["sections"]["connectivity"]["summary"]["natural_connected"])
    assert report["schema_version"] == 2 and report["settings"]["curvature"]["points"] == 100

    keys = [k for section in report["sections"].values() for k in section["summary"]]
    assert keys and all(re.fullmatch(r"[a-z0-9_]+", k) for k in keys), keys
    assert (out / "deepfool_l2_hist.png").exists()
    # Mark the finished section; a resumed run must keep it rather than recompute it.
    section["marker"] = "kept"
    (out / "report.json").write_text(json.dumps(report))
    again = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 20, "--resume")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["sections"]["deepfool"]["marker"] == "kept"
    # without --resume the section is computed again (one section suffices to show it: the others cost a minute)
    fresh = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 20, "--only", "deepfool")
    assert fresh.exit_code == 0 and "marker" not in json.loads((out / "report.json").read_text())["sections"]["deepfool"]
    other = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--limit", 21, "--resume")
    assert other.exit_code == 2 and "cannot resume" in other.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "missing.keras"], "does not exist"),
        (["deepfool", "{model}", "--data", "nope.npz"], "nor a built-in dataset"),
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
    nxt = [line for line in result.stdout.splitlines() if line.startswith("next:")]
    assert len(nxt) == 1 and nxt[0].endswith("report")  # the command is printed whole, not wrapped


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
        assert summary["pairs"] >= 1 and 0 <= summary["connected_fraction"] <= 1


def test_detect_json(small_cnn_path, digits_npz):
    """`detect --json` reports AUC and rates on the inputs after the calibration ones."""
    result = _run("detect", small_cnn_path, "--data", digits_npz, "--limit", 60, "--calibration", 30, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["clean"] == 30 and 0 <= summary["auc"] <= 1 and summary["attack"] == "deepfool-l2"
    refused = _run("detect", small_cnn_path, "--data", digits_npz, "--limit", 20, "--calibration", 30)
    assert refused.exit_code == 2 and "calibration" in refused.output


def test_certify_json_radius_and_refusals(small_cnn_path, digits_npz, tmp_path):
    """`certify --json` at one eps and with `--radius`; CROWN certifies at least what IBP does; MILP on L2 exits 2."""
    fractions = {}
    for method in ("ibp", "crown"):
        result = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 16, "--eps", 0.01,
                      "--method", method, "--json", "--out", tmp_path / f"{method}.jsonl")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["inputs"] == 16 and 0 <= summary["certified_accuracy"] <= summary["clean_accuracy"]
        fractions[method] = summary["certified_accuracy"]
    assert fractions["crown"] >= fractions["ibp"]
    result = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 4, "--eps", 0.03, "--method", "bab",
                  "--time-limit", 20, "--json", "--out", tmp_path / "bab.jsonl")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    verdicts = [json.loads(line).get("status") for line in open(tmp_path / "bab.jsonl")][1:]
    assert summary["counterexamples"] == verdicts.count("counterexample") and len(verdicts) == 4
    assert summary["certified_accuracy"] * 4 == sum(v == "certified" for v in verdicts)
    result = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 8, "--radius", "--method", "ibp", "--json",
                  "--out", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["median_radius_fraction_of_range"] > 0
    refused = _run("certify", small_cnn_path, "--data", digits_npz, "--limit", 2, "--norm", "l2", "--method", "milp",
                   "--out", tmp_path / "m.jsonl")
    assert refused.exit_code == 2 and "L2" in refused.output
    lam = tmp_path / "lam.keras"
    inp = keras.Input((8, 8, 1))
    keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Conv2DTranspose(2, 3)(inp)))).save(lam)
    refused = _run("certify", lam, "--data", digits_npz, "--limit", 2, "--out", tmp_path / "c.jsonl")
    assert refused.exit_code == 2 and "Conv2DTranspose" in refused.output


def test_certify_eps_is_a_fraction_of_the_input_range(small_cnn, digits, tmp_path):
    """On 0..255 inputs `--eps 0.01` means 2.55 grey levels: the same certificates as eps 0.01 on 0..1 inputs."""
    inp = keras.Input((8, 8, 1))
    z = keras.layers.Rescaling(1 / 255)(inp)
    for layer in small_cnn.layers:
        z = layer(z)
    scaled = tmp_path / "scaled.keras"
    keras.Model(inp, z).save(scaled)
    unit = tmp_path / "unit.keras"
    small_cnn.save(unit)
    np.savez(tmp_path / "d255.npz", x=digits.x[:12] * 255.0, y=digits.y[:12])
    np.savez(tmp_path / "d1.npz", x=digits.x[:12], y=digits.y[:12])
    runs = {}
    for name, model, data, extra in (("255", scaled, "d255.npz", ["--bounds", 0, 255]), ("1", unit, "d1.npz", [])):
        result = _run("certify", model, "--data", tmp_path / data, "--eps", 0.02, "--method", "ibp", "--json",
                      "--out", tmp_path / f"{name}.jsonl", *extra)
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.stdout)
    assert runs["255"]["eps_input_units"] == pytest.approx(0.02 * 255)
    assert runs["255"]["eps_fraction_of_range"] == pytest.approx(0.02)
    assert runs["255"]["certified_accuracy"] == runs["1"]["certified_accuracy"]
    assert runs["255"]["median_smallest_margin_bound"] == pytest.approx(runs["1"]["median_smallest_margin_bound"],
                                                                        rel=1e-3, abs=1e-4)
    absolute = _run("certify", scaled, "--data", tmp_path / "d255.npz", "--bounds", 0, 255, "--eps", 0.02,
                    "--eps-units", "input", "--method", "ibp", "--json", "--out", tmp_path / "abs.jsonl")
    assert json.loads(absolute.stdout)["eps_input_units"] == pytest.approx(0.02)


def test_certify_writes_each_input_and_resumes_after_ctrl_c(small_cnn_path, digits_npz, tmp_path, monkeypatch):
    """Ctrl-C mid-run exits 130 with the resume hint; finished inputs are on disk and --resume does only the rest."""
    import tfgeom.verify.certification as certification

    original, calls = certification.certify, []

    def interrupted_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(certification, "certify", interrupted_on_third)
    out = tmp_path / "cert.jsonl"
    args = ["certify", small_cnn_path, "--data", digits_npz, "--limit", 5, "--eps", 0.01, "--method", "crown",
            "--out", out, "--json"]
    stopped = _run(*args)
    assert stopped.exit_code == 130
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.output
    assert len(out.read_text().splitlines()) == 1 + 2  # identity line + the two finished inputs
    resumed = _run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 2 of 5" in resumed.stderr and len(calls) == 3 + 3
    assert json.loads(resumed.stdout)["inputs"] == 5
    monkeypatch.setattr(certification, "certify", original)
    other = _run(*[0.02 if a == 0.01 else a for a in args], "--resume")
    assert other.exit_code == 2 and "cannot resume" in other.stderr


def test_option_errors_are_one_line(small_cnn_path, digits_npz):
    """Typer's own option errors come out as one `error:` line with exit code 2."""
    result = _run("certify", small_cnn_path, "--data", digits_npz, "--eps", -1)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--eps" in lines[0]


def test_info_table_shows_shape_and_bounds(small_cnn_path):
    """The table of `info` (not only its JSON) shows the input shape and bounds."""
    result = _run("info", small_cnn_path, "--bounds", 0, 255)
    assert result.exit_code == 0, result.output
    assert "8, 8, 1" in result.stdout and "0, 255" in result.stdout


def test_analyze_help_lists_every_registered_analysis():
    """`analyze --help` names exactly the analyses `--only` accepts."""
    from tfgeom.analyses import REGISTRY
    from tfgeom.cli.main import ANALYSES

    assert ANALYSES.split(", ") == sorted(REGISTRY)
    result = _run("analyze", "--help")
    assert result.exit_code == 0 and "feature_space" in result.stdout


def test_size_options_are_checked_before_work(small_cnn_path, digits_npz, small_cnn, digits, monkeypatch):
    """Too large k names the limit in the user's terms; pairs are capped; a memory estimate refuses huge runs."""
    k = _run("curvature", small_cnn_path, "--data", digits_npz, "--limit", 4, "--k", 40)
    assert k.exit_code == 2 and "k <= 31" in k.stderr and "steps" not in k.stderr
    capped = _run("connect", small_cnn_path, "--data", digits_npz, "--limit", 6, "--pairs", 100000, "--json")
    assert capped.exit_code == 0, capped.output
    assert "capped" in capped.stderr and json.loads(capped.stdout)["pairs"] <= 15  # 6 inputs: at most C(6, 2)
    import tfgeom
    import tfgeom.runtime.resources
    from tfgeom.geometry.connectivity import connect

    monkeypatch.setattr(tfgeom.runtime.resources, "available_memory", lambda: 1 << 16)
    gm = tfgeom.GeometryModel(small_cnn)
    x = digits.x[:2]
    with pytest.raises(tfgeom.InputError, match="memory.*fewer pairs"):
        connect(gm, x[:1].repeat(300, 0), x[:1].repeat(300, 0))
