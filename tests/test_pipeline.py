"""The analysis pipeline: shared work done once, typed settings, stable keys, resumable sections."""
import collections
import json
import pathlib

import pytest
from typer.testing import CliRunner

import tfgeom
from tfgeom.analyses import settings as settings_lib
from tfgeom.analyses import REGISTRY
from tfgeom.cli.main import app
from tfgeom.errors import InputError
from tfgeom.report.labels import all_labels, label
from tfgeom.report.runner import configure, run_analyses

runner = CliRunner()
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_one_analyze_runs_deepfool_once_per_norm_on_the_inputs(small_cnn, digits, tmp_path, monkeypatch):
    """Every analysis takes rows of one DeepFool L2 and one Linf run: the compiled program sees the inputs once each."""
    gm = tfgeom.GeometryModel(small_cnn)
    data = tfgeom.data.validate(tfgeom.data.load("digits"), gm)
    data = data._replace(x=data.x[:24], y=data.y[:24])
    rows = {row.tobytes() for row in data.x}
    calls = []
    build = gm.runtime.program

    def counting(key, make, signature):
        program = build(key, make, signature)
        if not (isinstance(key, tuple) and key[0] == "deepfool"):
            return program

        def counted(x, *rest):
            calls.append((key[1], key[3], all(r.tobytes() in rows for r in x.numpy())))
            return program(x, *rest)

        return counted

    monkeypatch.setattr(gm.runtime, "program", counting)
    settings = {"curvature": {"points": 8, "sections": 2}, "subspace": {"fit": 8, "evaluate": 8},
                "connectivity": {"pairs": 3, "adversarial_pairs": 2}, "detection": {"calibration": 8, "evaluation": 8,
                                                                                  "attacks": "deepfool-l2,fgsm"},
                "certification": {"points": 2, "milp_points": 1, "segments": 1, "feature_points": 8}}
    report = run_analyses(gm, data, tmp_path, settings=settings)
    assert all(s["status"] == "done" for s in report["sections"].values())
    # untargeted DeepFool of the analysed inputs: once per norm (targeted pushes into a class are other attacks)
    on_inputs = collections.Counter(norm for norm, targeted, ours in calls if ours and not targeted)
    assert on_inputs == {"l2": 1, "linf": 1}
    assert any(not ours for _, _, ours in calls)  # other input sets (S_c removed, anchors) are attacked apart


def test_cli_and_report_print_the_same_summary(small_cnn_path, digits_npz, tmp_path):
    """`tfgeom deepfool --json` and the report's deepfool section come from one summary function."""
    cli = _run("deepfool", small_cnn_path, "--data", digits_npz, "--limit", 12, "--json")
    assert cli.exit_code == 0, cli.output
    out = tmp_path / "r"
    result = _run("analyze", small_cnn_path, "--data", digits_npz, "--limit", 12, "--out", out, "--only", "deepfool")
    assert result.exit_code == 0, result.output
    section = json.loads((out / "report.json").read_text())["sections"]["deepfool"]
    printed = json.loads(cli.stdout)
    assert set(section["l2"]) <= set(printed)
    assert printed["median_norm"] == pytest.approx(section["l2"]["median_norm"], rel=1e-4)
    assert section["summary"]["l2_median_norm"] == section["l2"]["median_norm"]


def test_settings_from_set_and_toml_are_applied_and_recorded(small_cnn_path, digits_npz, tmp_path):
    """--config then --set (which wins) change settings; report.json records them; --only takes comma lists."""
    config = tmp_path / "analyze.toml"
    config.write_text("[curvature]\npoints = 9\nk = 2\nsections = 1\n")
    out = tmp_path / "r"
    result = _run("analyze", small_cnn_path, "--data", digits_npz, "--limit", 12, "--out", out,
                  "--only", "deepfool,curvature", "--config", config, "--set", "curvature.points=6")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["sections"]) == ["deepfool", "curvature"]
    assert report["settings"]["curvature"] == {"points": 6, "k": 2, "sections": 1, "resolution": 81,
                                               "spectrum_probes": 4, "spectrum_steps": 40}
    assert report["sections"]["curvature"]["summary"]["points"] <= 6
    assert len(report["sections"]["curvature"]["profile"]["mean_negative"]) == 2


def test_resume_recomputes_only_sections_whose_settings_changed(small_cnn_path, digits_npz, tmp_path):
    """A resumed run keeps finished sections with unchanged settings and redoes the ones whose settings changed."""
    out = tmp_path / "r"
    args = ["analyze", small_cnn_path, "--data", digits_npz, "--limit", 10, "--out", out,
            "--only", "deepfool", "--only", "curvature", "--set", "curvature.points=4", "--set", "curvature.sections=1"]
    assert _run(*args).exit_code == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("deepfool", "curvature"):
        report["sections"][name]["marker"] = "kept"
    (out / "report.json").write_text(json.dumps(report))
    again = _run(*args[:-4], "--set", "curvature.points=5", "--set", "curvature.sections=1", "--resume")
    assert again.exit_code == 0, again.output
    sections = json.loads((out / "report.json").read_text())["sections"]
    assert sections["deepfool"].get("marker") == "kept" and "marker" not in sections["curvature"]


@pytest.mark.parametrize("args, message", [
    (["--set", "curvature.bogus=1"], "unknown setting curvature.bogus; curvature settings are: points, k, sections"),
    (["--set", "curvature.points=many"], "curvature.points must be an integer >= 0; got 'many'"),
    (["--set", "nosuch.points=1"], "unknown analysis 'nosuch'"),
    (["--set", "points=1"], "must look like ANALYSIS.KEY=VALUE"),
    (["--set", "certification.intermediate=sideways"], "certification.intermediate must be one of"),
    (["--set", "detection.attacks=deepfool-l2,cw"], "attack 'cw' is not one of"),
    (["--only", "deepfool,bogus"], "unknown analysis ['bogus']"),
])
def test_bad_settings_are_refused_with_one_line_before_work(small_cnn_path, digits_npz, tmp_path, args, message):
    """Unknown keys and bad values exit 2 with one line naming the key and what is allowed."""
    result = _run("analyze", small_cnn_path, "--data", digits_npz, "--out", tmp_path / "r", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work


def test_settings_types_follow_the_defaults():
    """Text values are parsed to the default's type; TOML values of the wrong type are refused."""
    resolved = configure({"subspace": {"dims": "3, 6"}, "detection": {"fpr": "0.1"}, "curvature": {"k": 7}})
    assert resolved["subspace"].dims == (3, 6) and resolved["detection"].fpr == 0.1 and resolved["curvature"].k == 7
    with pytest.raises(InputError, match="curvature.k must be an integer"):
        configure({"curvature": {"k": 2.5}})
    assert settings_lib.merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}}


def test_label_table_keys_are_snake_case():
    """The label tables (shared and each analysis') map snake_case keys to display labels (prefixed keys get
    composed labels)."""
    for key in all_labels():
        assert key == key.lower() and " " not in key
    assert label("auc_deepfool_l2").startswith("AUC of the curvature detector")
    assert label("natural_connected_pairs") == "natural pairs: pairs connected"


def test_schema_page_documents_every_summary_key():
    """docs/report_schema.md lists every key of the label tables (the shared one and those the analyses declare)."""
    page = (ROOT / "docs" / "report_schema.md").read_text()
    missing = [key for key in all_labels() if f"`{key}`" not in page]
    assert not missing, missing


def test_analysis_modules_are_named_after_their_registry_names():
    """Each analysis lives in tfgeom/analyses/<name>.py."""
    for name, analysis in REGISTRY.items():
        assert type(analysis).__module__ == f"tfgeom.analyses.{name}"
        assert analysis.intro and analysis.title


# NamedTuple methods and Keras' graph history are public by convention; everything else starting with _ is private.
_ALLOWED = {"_replace", "_asdict", "_fields", "_make", "_keras_history", "_inbound_nodes", "_build_shapes_dict"}


def test_no_module_reaches_into_another_objects_private_names():
    """Outside `self._x`, no library or CLI code reads a private name, and nothing imports one from tfgeom."""
    import re

    offenders = []
    for path in list((ROOT / "tfgeom").rglob("*.py")) + list((ROOT / "cli").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            for name in re.findall(r"(?<!self)(?<!cls)\.(_[a-z]\w*)", code):
                if name not in _ALLOWED and not code.lstrip().startswith(("from", "import")):
                    offenders.append(f"{path.name}:{number}: {name}")
            if re.search(r"from tfgeom[\w.]* import .*\b_[a-z]", code):
                offenders.append(f"{path.name}:{number}: imports a private name")
    assert not offenders, offenders


def test_cli_docs_list_every_setting_with_its_default():
    """docs/cli.md's settings table names every analysis setting and its default."""
    page = (ROOT / "docs" / "cli.md").read_text()
    for name, analysis in REGISTRY.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        for key, default in analysis.Settings()._asdict().items():
            shown = ", ".join(map(str, default)) if isinstance(default, tuple) else (
                f'"{default}"' if isinstance(default, str) else str(default))
            assert f"`{key}` ({shown})" in row, (name, key)


def test_present_draws_from_computed_results_only(small_cnn, digits, tmp_path, monkeypatch):
    """compute() measures (no tables or figures); present() draws them without running the model again."""
    from tfgeom.analyses import Context

    gm = tfgeom.GeometryModel(small_cnn)
    data = tfgeom.data.validate(tfgeom.data.load("digits"), gm)
    context = Context(gm, data._replace(x=data.x[:10], y=data.y[:10]), tmp_path)
    analysis = REGISTRY["deepfool"]
    settings = analysis.Settings()
    result = analysis.compute(context, settings)
    assert "tables" not in result and "figures" not in result and result["summary"]["examples"] == 10

    def refuse(*args, **kwargs):
        raise AssertionError("present() must not compute")

    monkeypatch.setattr(gm.runtime, "program", refuse)
    shown = analysis.present(result, context, settings)
    assert [f["file"] for f in shown["figures"]][:2] == ["deepfool_l2_hist.png", "deepfool_linf_hist.png"]
    assert all((tmp_path / f["file"]).exists() for f in shown["figures"])


def test_unset_sizes_scale_with_the_input_dimension_and_set_ones_do_not():
    """At d = 3072 (32x32x3) an unset curvature.points default of 100 becomes round(100 sqrt(784/3072)) = 51,
    a value the user set is kept, small inputs keep every default, and the change is described."""
    from tfgeom.analyses import settings as settings_lib
    from tfgeom.report.runner import configure

    overrides = {"subspace": {"fit": 30}}
    effective, changed = settings_lib.scale_defaults(configure(overrides), overrides, 3072)
    assert effective["curvature"].points == 51 and "100 -> 51" in changed["curvature.points"]
    assert effective["subspace"].fit == 30 and "subspace.fit" not in changed
    assert effective["deepfool"] == configure()["deepfool"]
    same, none = settings_lib.scale_defaults(configure(), {}, 64)
    assert none == {} and same["curvature"].points == 100


def test_certification_keeps_within_its_budget_and_says_how(small_cnn, digits, tmp_path):
    """With no time to spare the section still answers: IBP radii on one input, the MILP at 1 s per solve, each
    choice stated, and the distance bracket's ends in order (the certified radius never exceeds the DeepFool
    norm)."""
    gm = tfgeom.GeometryModel(small_cnn)
    data = tfgeom.data.validate(tfgeom.data.load("digits"), gm)
    data = data._replace(x=data.x[:12], y=data.y[:12])
    settings = {"certification": {"points": 4, "milp_points": 1, "segments": 1, "feature_points": 8, "seconds": 0.0}}
    report = run_analyses(gm, data, tmp_path, only=["certification"], settings=settings)
    section = report["sections"]["certification"]
    summary = section["summary"]
    assert summary["radius_inputs"] == 1 and summary["crown_intermediate"] == "not run"
    assert set(section["radii_fraction_of_range"]) == {"ibp"}
    assert "IBP only" in summary["budget_choices"] and "MILP time limit 1 s per solve" in summary["budget_choices"]
    assert summary["milp_inputs"] == 1  # the exact check still runs, at its floor of 1 s per solve
    assert all(r["deepfool_norm"] is None or r["certified_radius"] <= r["deepfool_norm"]
               for r in section["distance_bracket"])
    roomy = run_analyses(gm, data, tmp_path / "roomy", only=["certification"],
                         settings={"certification": dict(settings["certification"], seconds=600.0)})
    summary = roomy["sections"]["certification"]["summary"]
    assert summary["radius_inputs"] == 4 and summary["budget_choices"].startswith("none")
    assert summary["crown_intermediate"] == "forward" and summary["milp_solves_optimal"] == 1
