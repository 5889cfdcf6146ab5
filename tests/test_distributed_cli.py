"""`tfgeom analyze --workers 2`: a local Ray runtime started and stopped by the command, the same report."""
import json

import pytest
from typer.testing import CliRunner

from tfgeom.cli.main import app

pytest.importorskip("ray")
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_analyze_on_two_workers_equals_one_process(small_cnn_path, digits_npz, tmp_path):
    import ray

    common = ["analyze", small_cnn_path, "--data", digits_npz, "--limit", 24, "--batch-size", 4, "--only",
              "deepfool,curvature", "--set", "curvature.points=12", "--set", "curvature.sections=2",
              "--set", "curvature.resolution=5"]
    two = _run(*common, "--out", tmp_path / "two", "--workers", 2)
    assert two.exit_code == 0, two.output
    assert not ray.is_initialized()  # the command shut down the runtime it started
    assert len(list((tmp_path / "two" / "shards").glob("*.npz"))) > 4  # finished shards kept for --resume
    one = _run(*common, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    a, b = (json.loads((tmp_path / name / "report.json").read_text())["sections"] for name in ("one", "two"))
    for name in ("deepfool", "curvature"):
        assert a[name]["summary"].keys() == b[name]["summary"].keys()
        for key, value in a[name]["summary"].items():
            if isinstance(value, float):
                assert b[name]["summary"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
            else:
                assert b[name]["summary"][key] == value, key


def test_second_run_into_a_locked_folder_exits_2(small_cnn_path, digits_npz, tmp_path):
    from tfgeom.execution.lock import folder_lock

    with folder_lock(tmp_path):
        result = _run("analyze", small_cnn_path, "--data", digits_npz, "--limit", 4, "--only", "deepfool",
                      "--out", tmp_path, "--workers", 2)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "in use by another tfgeom run" in lines[0], result.output
