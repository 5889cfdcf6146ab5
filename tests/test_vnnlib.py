"""VNN-LIB properties: parsing, deciding on ONNX networks (checked against the exact MILP), the vnncomp command."""
import csv
import logging
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tfgeom  # noqa: E402
from tfgeom.cli.main import app  # noqa: E402
from tfgeom.errors import InputError  # noqa: E402
from tfgeom.verify import properties, vnnlib  # noqa: E402
from test_onnx import mlp_onnx  # noqa: E402


def _property(low, high, cls, classes):
    """The robustness property of the competition's classification benchmarks: some other output >= Y_cls."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(low))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i, (a, b) in enumerate(zip(low, high)):
        lines += [f"(assert (<= X_{i} {float(b)!r}))", f"(assert (>= X_{i} {float(a)!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{cls}))" for j in range(classes) if j != cls) + "))")
    return "\n".join(lines) + "\n"


def test_parse_reads_boxes_and_linear_output_forms():
    """Bounds on either side, sums, products by constants and numbers become the box and rows `a^T y - b > 0`."""
    text = """; comment
    (declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
    (declare-const Y_2 Real)
    (assert (<= X_0 0.5)) (assert (>= X_0 -0.5)) (assert (>= 1.0 X_1)) (assert (<= 0.25 X_1))
    (assert (or (and (>= Y_1 Y_0)) (and (<= (+ Y_2 (* 2.0 Y_0)) 3.0))))"""
    prop = vnnlib.parse(text=text)
    np.testing.assert_array_equal(prop.lower, [-0.5, 0.25])
    np.testing.assert_array_equal(prop.upper, [0.5, 1.0])
    a, b = prop.rows
    np.testing.assert_array_equal(a, [[1, -1, 0], [2, 0, 1]])  # safe: Y_0 - Y_1 > 0 and 2 Y_0 + Y_2 - 3 > 0
    np.testing.assert_array_equal(b, [0, 3])
    y = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [2.0, 1.0, -1.5]])
    np.testing.assert_array_equal(vnnlib.violated(prop, y), [True, False, True])
    both = vnnlib.parse(text=text.replace("(or (and (>= Y_1 Y_0)) (and", "(or (and (>= Y_1 Y_0)"))
    assert both.rows is None and len(both.disjuncts) == 1 and both.disjuncts[0][0].shape == (2, 3)


def test_parse_reads_a_disjunction_of_input_boxes():
    """ACAS Xu property 6's form: `(or (and <bounds>) (and <bounds>))` over inputs, cut from the plain bounds,
    becomes one box per disjunct; `lower`/`upper` hold both, `pieces` gives one single-box property each."""
    text = """(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
    (assert (<= X_1 1.0)) (assert (>= X_1 0.0))
    (assert (or (and (<= X_0 -0.5) (>= X_0 -1.0)) (and (>= X_0 0.5) (<= X_0 1.0) (<= X_1 0.5))))
    (assert (or (and (>= Y_1 Y_0))))"""
    prop = vnnlib.parse(text=text)
    boxes = [(list(lo), list(hi)) for lo, hi in prop.boxes]
    assert boxes == [([-1.0, 0.0], [-0.5, 1.0]), ([0.5, 0.0], [1.0, 0.5])]
    np.testing.assert_array_equal(prop.lower, [-1.0, 0.0])
    np.testing.assert_array_equal(prop.upper, [1.0, 1.0])
    pieces = vnnlib.pieces(prop)
    assert [(list(p.lower), list(p.upper)) for p in pieces] == boxes and all(len(p.boxes) == 1 for p in pieces)
    assert all(p.rows is not None for p in pieces)
    with pytest.raises(InputError, match="mixes input bounds with output constraints"):
        vnnlib.parse(text=text.replace("(<= X_1 0.5)", "(<= Y_1 0.5)"))


@pytest.mark.parametrize("text, message", [
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1.0)) (assert (>= Y_0 0.0))",
     "X_0 has no lower or no upper bound"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1.0)) (assert (>= X_0 2.0)) "
     "(assert (>= Y_0 0.0))", "the box is empty"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1.0)) (assert (>= X_0 0.0)) "
     "(assert (>= (* Y_0 Y_0) 0.0))", "not linear"),
    ("(declare-const X_0 Real) (assert (<= X_0 1.0)", "unbalanced parentheses"),
])
def test_parse_refuses_what_it_cannot_read_in_one_line(text, message):
    with pytest.raises(InputError, match=message):
        vnnlib.parse(text=text)


def test_decisions_agree_with_the_exact_milp(tmp_path):
    """On a converted ONNX MLP, every decided property agrees with the MILP's exact minimum margin over the box
    (unsat iff it is positive); a sat answer's counterexample lies in the box and violates the property."""
    path = mlp_onnx(tmp_path / "m.onnx", seed=3)
    gm = tfgeom.GeometryModel(str(path))
    g = np.random.default_rng(0)
    decided = {"sat": 0, "unsat": 0}
    for k, eps in enumerate((0.01, 0.05, 0.1, 0.2, 0.3, 0.5)):
        x0 = g.uniform(0.2, 0.8, (1, 12, 1)).astype(np.float32)
        cls = int(gm.predict(x0)[0])
        exact = gm.certify(x0, eps, method="milp", cls=[cls])
        low, high = np.clip(x0 - eps, 0, 1).ravel(), np.clip(x0 + eps, 0, 1).ravel()
        prop = vnnlib.parse(text=_property(low, high, cls, gm.num_classes))
        decision = properties.decide(gm, prop, timeout=30)
        assert decision.verdict in ("sat", "unsat"), (eps, decision)
        decided[decision.verdict] += 1
        truth = exact.margins.min()
        assert (decision.verdict == "unsat") == (truth > 0), (eps, truth, decision.verdict)
        if decision.verdict == "sat":
            x = decision.counterexample.ravel()
            assert np.all(x >= low - 1e-7) and np.all(x <= high + 1e-7)
            assert vnnlib.violated(prop, gm.logits(decision.counterexample[None]))[0]
    assert decided["sat"] and decided["unsat"]  # both answers were exercised


def test_output_diversified_starts_reach_a_counterexample_behind_an_inactive_unit():
    """The unsafe corner sits behind a unit inactive everywhere the attack starts (the margin's gradient is 0
    there, so margin descent never moves): margin descent alone finds nothing, the output-diversified starts
    (a random output direction also ascends the third output, a unit on the same inputs) reach it; the
    counterexample is checked by a NumPy forward pass."""
    import keras

    d = 32
    w1 = np.ones((d, 2), np.float32)
    b1 = np.array([-0.9 * d, 0.0], np.float32)  # unit 0 is active only where sum(x) > 0.9 d
    w2 = np.array([[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    b2 = np.array([1.0, 0.0, 0.0], np.float32)  # Y_0 = 1, Y_1 = 3 relu(sum(x) - 0.9 d), Y_2 = sum(x)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(2, activation="relu"), keras.layers.Dense(3)])
    model.layers[0].set_weights([w1, b1])
    model.layers[1].set_weights([w2, b2])
    gm = tfgeom.GeometryModel(model, bounds=(0.0, 1.0))
    text = "\n".join([f"(declare-const X_{i} Real)" for i in range(d)]
                     + [f"(declare-const Y_{j} Real)" for j in range(3)]
                     + [f"(assert (<= X_{i} 1.0)) (assert (>= X_{i} 0.0))" for i in range(d)]
                     + ["(assert (or (and (>= Y_1 Y_0))))"])
    prop = vnnlib.parse(text=text)
    assert properties.attack(gm, prop, restarts=4) is None  # no diversified start among the first four
    x, _ = properties.attack(gm, prop, restarts=8)  # restarts 4-7 start from diversified points
    y = np.maximum(x.reshape(-1) @ w1 + b1, 0) @ w2 + b2
    assert np.all((x >= 0) & (x <= 1)) and y[1] >= y[0], y
    assert properties.decide(gm, prop, timeout=30).verdict == "sat"


def test_the_attack_meets_every_constraint_of_a_conjunction():
    """The unsafe outputs are a conjunction (ACAS Xu's property 2 form): all 16 outputs `Y_i = X_i` at most
    0.05, a corner holding 0.05^16 of the box. Descending the row closest to unsafe moves one input and leaves
    the others where they started; the attack descends each disjunct's largest row and reaches the corner. The
    counterexample is checked by a NumPy forward pass."""
    import keras

    d = 16
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(d, activation="relu"), keras.layers.Dense(d)])
    for layer in model.layers:
        layer.set_weights([np.eye(d, dtype=np.float32), np.zeros(d, np.float32)])
    gm = tfgeom.GeometryModel(model, bounds=(0.0, 1.0))
    text = "\n".join([f"(declare-const X_{i} Real)" for i in range(d)]
                     + [f"(declare-const Y_{j} Real)" for j in range(d)]
                     + [f"(assert (<= X_{i} 1.0)) (assert (>= X_{i} 0.0))" for i in range(d)]
                     + [f"(assert (<= Y_{j} 0.05))" for j in range(d)])
    prop = vnnlib.parse(text=text)
    assert prop.rows is None and len(prop.disjuncts) == 1
    x, _ = properties.attack(gm, prop, restarts=8)
    y = np.maximum(x.reshape(-1), 0)
    assert np.all((x >= 0) & (x <= 1)) and np.all(y <= 0.05), y


def _benchmark_folder(tmp_path):
    """`onnx/` and `vnnlib/` folders under `tmp_path` with one MLP: `(path, gm, x0, cls)`, `cls` its class at `x0`."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "vnnlib").mkdir()
    path = mlp_onnx(tmp_path / "onnx" / "m.onnx", seed=3)
    gm = tfgeom.GeometryModel(str(path))
    x0 = np.full((1, 12, 1), 0.5, np.float32)
    return path, gm, x0, int(gm.predict(x0)[0])


def test_vnncomp_command_writes_results_and_resumes(tmp_path):
    """`tfgeom vnncomp instances.csv`: one row per instance in the competition's format, counterexamples in its
    format, checked by ONNX Runtime; --resume skips what is there; a missing file is one line."""
    import onnxruntime as ort

    path, gm, x0, cls = _benchmark_folder(tmp_path)
    rows = []
    for name, eps in (("small", 0.001), ("large", 0.5)):
        low, high = np.clip(x0 - eps, 0, 1).ravel(), np.clip(x0 + eps, 0, 1).ravel()
        (tmp_path / "vnnlib" / f"{name}.vnnlib").write_text(_property(low, high, cls, gm.num_classes))
        rows.append(f"onnx/m.onnx,vnnlib/{name}.vnnlib,30")
    (tmp_path / "instances.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(app, ["vnncomp", str(tmp_path / "instances.csv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(open(out)))
    assert [r["result"] for r in table] == ["unsat", "sat"]
    assert list(table[0]) == ["benchmark", "onnx", "vnnlib", "prepare_time", "result", "run_time"]
    text = (tmp_path / "m_large.counterexample").read_text().splitlines()
    assert text[0] == "sat"
    values = dict(line.strip(" ()").split() for line in text[1:])
    x = np.array([float(values[f"X_{i}"]) for i in range(12)], np.float32).reshape(1, 12, 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(y[0], [float(values[f"Y_{j}"]) for j in range(3)], rtol=1e-5, atol=1e-6)
    assert y[0].argmax() != cls or np.sort(y[0])[-2] >= y[0][cls]
    again = CliRunner().invoke(app, ["vnncomp", str(tmp_path / "instances.csv"), "--out", str(out), "--resume"])
    assert again.exit_code == 0 and len(list(csv.DictReader(open(out)))) == 2
    refused = CliRunner().invoke(app, ["vnncomp", str(tmp_path / "instances.csv"), "--out", str(out)])
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    (tmp_path / "vnnlib" / "small.vnnlib").unlink()
    missing = CliRunner().invoke(app, ["vnncomp", str(tmp_path / "instances.csv"), "--out", str(tmp_path / "o.csv")])
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_branch_and_bound_neither_retraces_nor_prints_a_solver_banner(tmp_path, caplog):
    """A branch-and-bound run logs no TensorFlow retracing warning, and a MILP solve prints no HiGHS banner."""
    path = mlp_onnx(tmp_path / "m.onnx", seed=3)
    gm = tfgeom.GeometryModel(str(path))
    x0 = np.full((1, 12, 1), 0.5, np.float32)
    cls = int(gm.predict(x0)[0])
    from tfgeom.verify import bab

    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for eps in (0.05, 0.1, 0.15, 0.2):
            bab.verify(gm, x0[0], eps, cls, time_limit=20)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    script = ("import numpy as np, tfgeom; gm = tfgeom.GeometryModel(%r); "
              "gm.certify(np.full((1, 12, 1), 0.5, np.float32), 0.1, method='milp')" % str(path))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "HiGHS" not in run.stdout and "HiGHS" not in run.stderr


def test_vnncomp_run_goes_on_past_a_property_it_cannot_read(tmp_path):
    """An instance whose property tfgeom does not read (here an input bounded by an output; ACAS Xu's property 6,
    a disjunction of input boxes, is another) gets the result `error` with the reason on the console; the next
    instance is still decided."""
    _, gm, x0, cls = _benchmark_folder(tmp_path)
    low, high = np.clip(x0 - 0.001, 0, 1).ravel(), np.clip(x0 + 0.001, 0, 1).ravel()
    good = _property(low, high, cls, gm.num_classes)
    (tmp_path / "vnnlib" / "good.vnnlib").write_text(good)
    (tmp_path / "vnnlib" / "odd.vnnlib").write_text(good + "\n(assert (<= Y_0 X_0))\n")
    (tmp_path / "instances.csv").write_text("onnx/m.onnx,vnnlib/odd.vnnlib,30\nonnx/m.onnx,vnnlib/good.vnnlib,30\n")
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(app, ["vnncomp", str(tmp_path / "instances.csv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["result"] for r in csv.DictReader(open(out))] == ["error", "unsat"]
    assert "odd.vnnlib: error" in result.stderr and "input X_0 is bounded by Y_0" in result.stderr
