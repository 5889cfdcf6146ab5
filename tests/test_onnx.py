"""ONNX models in: graphs built with the onnx package's helpers, converted to Keras and checked against ONNX Runtime."""
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tfgeom  # noqa: E402
from tfgeom.cli.main import app  # noqa: E402
from tfgeom.errors import ModelError  # noqa: E402
from tfgeom.runtime.onnx_models import convert  # noqa: E402


def _save(path, nodes, inputs, outputs, constants, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                                                  else np.int64), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cnn_onnx(path, seed=0, extra=None):
    """NCHW [N, 2, 6, 6]: (x - mean) / std per channel, Conv 3x3 pad 1, Relu, MaxPool 2, Flatten, Gemm, Relu, Gemm."""
    g = np.random.default_rng(seed)
    c = {"mean": g.uniform(0.2, 0.4, (1, 2, 1, 1)), "std": g.uniform(0.5, 2.0, (1, 2, 1, 1)),
         "w1": g.normal(0, 0.5, (3, 2, 3, 3)), "b1": g.normal(0, 0.1, 3),
         "w2": g.normal(0, 0.3, (8, 27)), "b2": g.normal(0, 0.1, 8),
         "w3": g.normal(0, 0.5, (8, 4)), "b3": g.normal(0, 0.1, 4)}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
             helper.make_node("Conv", ["n", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2],
                                                                      strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "w3"], ["m"]), helper.make_node("Add", ["m", "b3"], ["y"])]
    nodes += extra or []
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])
    out = nodes[-1].output[0]
    return _save(path, nodes, [x], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])], c)


def mlp_onnx(path, seed=0):
    """[N, 784, 1]-shaped input as in VNN-COMP's mnist_fc: Flatten, Gemm, Relu, Gemm (weights [out, in], transB)."""
    g = np.random.default_rng(seed)
    c = {"w1": g.normal(0, 0.1, (16, 12)), "b1": g.normal(0, 0.1, 16), "w2": g.normal(0, 0.3, (3, 16)),
         "b2": g.normal(0, 0.1, 3)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 1])
    return _save(path, nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], c)


def _onnxruntime(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in x])


@pytest.mark.parametrize("make", [cnn_onnx, mlp_onnx])
def test_converted_logits_equal_onnx_runtime_in_the_onnx_layout(make, tmp_path):
    """The Keras model takes the ONNX layout (NCHW here) and its logits equal ONNX Runtime's on new inputs."""
    path = make(tmp_path / "m.onnx")
    converted = convert(path)
    assert converted.max_difference <= 1e-5 and converted.checked == 8
    shape = converted.input_shape
    assert converted.model.input_shape[1:] == shape
    x = np.random.default_rng(5).uniform(0, 1, (6, *shape)).astype(np.float32)
    theirs = _onnxruntime(path, x)
    ours = converted.model.predict(x, verbose=0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_onnx_models_certify_soundly_and_match_the_milp(tmp_path):
    """tfgeom.GeometryModel("model.onnx") runs bound propagation on the converted graph: CROWN's margins are below
    the exact MILP's, which no sampled point of the ball beats."""
    gm = tfgeom.GeometryModel(str(cnn_onnx(tmp_path / "m.onnx")))
    x = np.random.default_rng(1).uniform(0.2, 0.8, (3, 2, 6, 6)).astype(np.float32)
    eps = 0.02
    crown = gm.certify(x, eps, method="crown")
    exact = gm.certify(x, eps, method="milp")
    finite = np.isfinite(exact.margins) & np.isfinite(crown.margins)
    assert finite.any() and np.all(exact.margins[finite] >= crown.margins[finite] - 1e-4)
    g = np.random.default_rng(2)
    for i in range(len(x)):
        pts = np.clip(x[i] + g.uniform(-eps, eps, (400, *x.shape[1:])), 0, 1).astype(np.float32)
        z = gm.logits(pts)
        c = exact.cls[i]
        sampled = (z[:, [c]] - z).min(axis=0)
        keep = np.isfinite(exact.margins[i])
        assert np.all(sampled[keep] >= exact.margins[i][keep] - 1e-4)


def test_unsupported_operators_and_bad_files_are_one_line(tmp_path):
    """An operator the converter lacks is named; a non-ONNX file is refused; the CLI exits 2 with one line."""
    path = cnn_onnx(tmp_path / "tanh.onnx", extra=[helper.make_node("Tanh", ["y"], ["t"])])
    with pytest.raises(ModelError, match="ONNX operator 'Tanh'.*not supported"):
        convert(path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Tanh" in lines[0] and "Traceback" not in result.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        convert(junk)


def test_a_conversion_that_differs_is_refused(tmp_path, monkeypatch):
    """The check is real: a converter bug (here: one weight changed after building) is caught before any use."""
    from tfgeom.runtime import onnx_models

    build = onnx_models._build

    def broken(model, keras):
        keras_model, shape = build(model, keras)
        dense = [layer for layer in keras_model.layers if layer.__class__.__name__ == "Dense"][0]
        w = dense.get_weights()
        w[0][0, 0] += 0.01
        dense.set_weights(w)
        return keras_model, shape

    monkeypatch.setattr(onnx_models, "_build", broken)
    with pytest.raises(ModelError, match="differs from ONNX Runtime"):
        convert(cnn_onnx(tmp_path / "m.onnx"))



def test_zero_constants_in_elementwise_nodes(tmp_path):
    """ACAS Xu's models subtract an all-zero mean: converted without warnings and equal to ONNX Runtime; a
    division by a constant with zeros is refused in one line (it would put infinite scales into the Keras model)."""
    g = np.random.default_rng(3)
    c = {"mean": np.zeros((1, 1, 1, 5)), "w": g.normal(0, 0.5, (5, 4)), "b": g.normal(0, 0.1, 4)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])

    def model(name, op):
        nodes = [helper.make_node(op, ["x", "mean"], ["s"]), helper.make_node("Flatten", ["s"], ["f"], axis=1),
                 helper.make_node("MatMul", ["f", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
        return _save(tmp_path / name, nodes, [x], [y], c)

    path = model("sub.onnx", "Sub")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        converted = convert(path)
    points = g.uniform(-1, 1, (6, 1, 1, 5)).astype(np.float32)
    theirs = _onnxruntime(path, points)
    np.testing.assert_allclose(converted.model.predict(points, verbose=0), theirs, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="divides by a constant with zeros"):
        convert(model("div.onnx", "Div"))
