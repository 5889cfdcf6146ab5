"""ONNX classifiers as Keras models, in the ONNX model's own layout, checked against ONNX Runtime.

`convert("model.onnx")` reads the graph with the `onnx` package and builds a
Keras functional model of standard layers (`Dense`, `Conv2D`, `ReLU`,
`Flatten`, `Permute`, ...), the layers tfgeom's curvature and bound propagation
read. The Keras model takes inputs in the ONNX model's layout: an NCHW input
`[N, C, H, W]` goes through a `Permute` to the NHWC layout Keras convolutions
use, and back (another `Permute`) wherever ONNX flattens or reshapes a feature
map, so the flattened order is ONNX's and the dense weights are used as they
are. Data, bounds, VNN-LIB variable indices and counterexamples therefore all
stay in the ONNX layout; nobody has to transpose anything.

Why not a converter library: the maintained one, `onnx2tf`, pins an older
TensorFlow and NumPy and emits `tf_keras` graphs of TensorFlow-op layers, which
neither Keras 3 nor bound propagation can read; the others (`onnx2keras`,
`onnx-tf`) are unmaintained. This module covers the operators feed-forward
classifiers are exported with (the VNN-COMP benchmarks' MLPs and CNNs):
`Gemm`, `MatMul`, `Add`/`Sub`/`Mul`/`Div` (with a constant, or two tensors for
`Add`/`Sub`), `Relu`, `LeakyRelu`, `Conv` (2-D), `MaxPool`/`AveragePool`,
`GlobalAveragePool`, `BatchNormalization`, `Flatten`, `Reshape`, `Concat`,
`Identity`, `Dropout`, `Constant`; any other operator is refused in one line
naming it. Every conversion is then checked: the Keras logits must equal ONNX
Runtime's on random and given inputs (`RTOL` relative to the logit scale).

Needs the extra `pip install "tfgeom[onnx]"` (`onnx`, `onnxruntime`).
"""
from typing import NamedTuple

import numpy as np

from tfgeom.errors import ModelError

RTOL = 1e-5  # largest |keras - onnxruntime| / max(1, |logits|) accepted
SUPPORTED = ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Conv", "MaxPool", "AveragePool",
             "GlobalAveragePool", "BatchNormalization", "Flatten", "Reshape", "Concat", "Identity", "Dropout",
             "Constant")


class Converted(NamedTuple):
    """An ONNX model converted to Keras (see the module docstring).

    Fields:
        model: the `keras.Model`; its input is in the ONNX layout (`input_shape`).
        input_shape: the ONNX input's shape without the batch dimension.
        channels_first: the ONNX input is a 4-D NCHW image batch.
        max_difference: the largest `|keras - onnxruntime| / max(1, |logit|)` over the check inputs.
        checked: how many inputs the check compared.
    """

    model: object
    input_shape: tuple
    channels_first: bool
    max_difference: float
    checked: int


def _need():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ModelError(f"ONNX models need the package {err.name!r}: pip install \"tfgeom[onnx]\" "
                         "(onnx and onnxruntime)") from None
    return onnx, onnxruntime


class _Tensor(NamedTuple):
    value: object  # a Keras tensor
    nchw: bool  # a 4-D feature map held as NHWC for ONNX's NCHW


def _attributes(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Builder:
    """Walks the (topologically sorted) ONNX graph, building Keras layers; constants are folded in."""

    def __init__(self, graph, keras):
        import onnx.numpy_helper as nh

        self.keras = keras
        self.constants = {t.name: nh.to_array(t).astype(np.float32) if nh.to_array(t).dtype.kind == "f"
                          else nh.to_array(t) for t in graph.initializer}
        self.tensors = {}
        self.count = 0
        self.consumers = {}  # tensor name -> the nodes reading it
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.skip = set()  # nodes already folded into a layer (the Add after a MatMul)

    def name(self, op):
        self.count += 1
        return f"onnx_{self.count}_{op.lower()}"

    def constant(self, name, node):
        if name not in self.constants:
            raise ModelError(f"ONNX {node.op_type} node {node.name or node.output[0]!r} needs a constant for input "
                             f"{name!r}; tfgeom converts weights given as initializers or Constant nodes")
        return self.constants[name]

    def to_onnx_order(self, t):
        """A flat-able tensor in ONNX's element order: an NHWC-held map permuted back to CHW."""
        if t.nchw:
            return self.keras.layers.Permute((3, 1, 2), name=self.name("Permute"))(t.value)
        return t.value

    def dense(self, x, kernel, bias):
        units = kernel.shape[1]
        layer = self.keras.layers.Dense(units, use_bias=bias is not None, name=self.name("Dense"))
        out = layer(x)
        layer.set_weights([kernel] + ([np.broadcast_to(bias, (units,)).astype(np.float32)] if bias is not None
                                      else []))
        return out

    def elementwise(self, node, t, const, op):
        """`t op const` for a constant: scalars as `Rescaling`, arrays (per channel or per element) as an
        element-wise `Normalization` (`x * s + o = (x - mean) / sqrt(var)`, so positive scales only)."""
        c = np.asarray(const, np.float32)
        if op == "Div" and not np.all(c != 0):
            raise ModelError(f"ONNX Div node {node.name or node.output[0]!r} divides by a constant with zeros; "
                             "tfgeom converts divisions by non-zero constants (normalisation)")
        # only a Div takes the reciprocal (a Sub's all-zero mean, as in ACAS Xu's models, is not a division)
        scale = 1.0 / c if op == "Div" else {"Add": np.float32(1), "Sub": np.float32(1), "Mul": c}[op]
        offset = {"Add": c, "Sub": -c, "Mul": np.float32(0), "Div": np.float32(0)}[op]
        if np.size(scale) == 1 and np.size(offset) == 1:
            return self.keras.layers.Rescaling(float(np.ravel(scale)[0]), float(np.ravel(offset)[0]),
                                               name=self.name("Rescaling"))(t.value)
        shape = tuple(int(d) for d in t.value.shape[1:])
        onnx_shape = (1, shape[2], shape[0], shape[1]) if t.nchw else (1, *shape)
        try:
            s, o = (np.broadcast_to(np.asarray(v, np.float32), onnx_shape) for v in (scale, offset))
        except ValueError:
            raise ModelError(f"ONNX {op} node {node.name or node.output[0]!r}: its constant of shape {c.shape} does "
                             f"not broadcast against the input's {onnx_shape}") from None
        if t.nchw:  # to the NHWC layout the Keras tensor has
            s, o = np.transpose(s, (0, 2, 3, 1)), np.transpose(o, (0, 2, 3, 1))
        if np.any(s <= 0):
            raise ModelError(f"ONNX {op} node {node.name or node.output[0]!r} scales by a non-positive constant; "
                             "tfgeom converts positive scales (normalisation)")
        layer = self.keras.layers.Normalization(axis=tuple(range(1, len(shape) + 1)), mean=(-o / s)[0],
                                                variance=(1.0 / s ** 2)[0], name=self.name("Normalization"))
        return layer(t.value)

    def conv(self, node, t):
        a = _attributes(node)
        w = self.constant(node.input[1], node)
        bias = self.constant(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        if w.ndim != 4 or not t.nchw:
            raise ModelError(f"ONNX Conv node {node.name or node.output[0]!r} is not a 2-D convolution of an NCHW "
                             "feature map; tfgeom converts 2-D convolutions")
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ModelError(f"ONNX Conv node {node.name or node.output[0]!r} has groups or dilations; tfgeom "
                             "converts plain 2-D convolutions")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ModelError(f"ONNX Conv node {node.name or node.output[0]!r} uses auto_pad; export with explicit "
                             "pads")
        top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        x = t.value
        if any((top, left, bottom, right)):
            x = self.keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name=self.name("ZeroPadding2D"))(x)
        layer = self.keras.layers.Conv2D(w.shape[0], w.shape[2:], strides=tuple(a.get("strides", [1, 1])),
                                         use_bias=bias is not None, name=self.name("Conv2D"))
        out = layer(x)
        layer.set_weights([np.transpose(w, (2, 3, 1, 0))] + ([bias] if bias is not None else []))
        return _Tensor(out, True)

    def pool(self, node, t):
        a = _attributes(node)
        if not t.nchw or any(a.get("pads", [0, 0, 0, 0])) or a.get("ceil_mode", 0):
            raise ModelError(f"ONNX {node.op_type} node {node.name or node.output[0]!r} pads or rounds up; tfgeom "
                             "converts unpadded 2-D pooling")
        kind = self.keras.layers.MaxPooling2D if node.op_type == "MaxPool" else self.keras.layers.AveragePooling2D
        size = tuple(a["kernel_shape"])
        return _Tensor(kind(size, strides=tuple(a.get("strides", size)), name=self.name(node.op_type))(t.value), True)

    def batch_norm(self, node, t):
        a = _attributes(node)
        gamma, beta, mean, var = (self.constant(n, node) for n in node.input[1:5])
        layer = self.keras.layers.BatchNormalization(axis=-1, epsilon=float(a.get("epsilon", 1e-5)),
                                                     name=self.name("BatchNormalization"))
        out = layer(t.value)
        layer.set_weights([gamma, beta, mean, var])
        return _Tensor(out, t.nchw)

    def node(self, node):
        op, keras = node.op_type, self.keras
        if node.output[0] in self.skip:
            return
        if op == "Constant":
            import onnx.numpy_helper as nh

            self.constants[node.output[0]] = nh.to_array(_attributes(node)["value"])
            return
        if op not in SUPPORTED:
            raise ModelError(f"ONNX operator {op!r} (node {node.name or node.output[0]!r}) is not supported; tfgeom "
                             f"converts {', '.join(SUPPORTED)}")
        ins = [self.tensors.get(name) for name in node.input]
        t = ins[0]
        if op in ("Identity", "Dropout"):
            out = t
        elif op == "Relu":
            out = _Tensor(keras.layers.ReLU(name=self.name(op))(t.value), t.nchw)
        elif op == "LeakyRelu":
            alpha = float(_attributes(node).get("alpha", 0.01))
            out = _Tensor(keras.layers.ReLU(negative_slope=alpha, name=self.name(op))(t.value), t.nchw)
        elif op == "Conv":
            out = self.conv(node, t)
        elif op in ("MaxPool", "AveragePool"):
            out = self.pool(node, t)
        elif op == "GlobalAveragePool":
            pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=self.name(op))(t.value)
            out = _Tensor(pooled, True)
        elif op == "BatchNormalization":
            out = self.batch_norm(node, t)
        elif op in ("Flatten", "Reshape"):
            out = self.reshape(node, t)
        elif op == "Gemm":
            out = self.gemm(node, t)
        elif op == "MatMul":
            kernel, bias, name = self.constant(node.input[1], node), None, node.output[0]
            following = self.consumers.get(name, [])
            if len(following) == 1 and following[0].op_type == "Add" and len(following[0].input) == 2:
                other = [i for i in following[0].input if i != name]
                if other and other[0] in self.constants and np.size(self.constants[other[0]]) == kernel.shape[1]:
                    bias = self.constants[other[0]].reshape(-1)  # x @ W + b: one Dense layer, as Keras builds it
                    self.skip.add(following[0].output[0])
                    name = following[0].output[0]
            self.tensors[name] = _Tensor(self.dense(self.to_onnx_order(t), kernel, bias), False)
            return
        elif op in ("Add", "Sub") and all(i is not None for i in ins):
            if ins[0].nchw != ins[1].nchw:
                raise ModelError(f"ONNX {op} node {node.name or node.output[0]!r} joins tensors of different layouts")
            layer = keras.layers.Add if op == "Add" else keras.layers.Subtract
            out = _Tensor(layer(name=self.name(op))([ins[0].value, ins[1].value]), ins[0].nchw)
        elif op == "Concat":
            axis = _attributes(node)["axis"]
            nchw = all(i.nchw for i in ins)
            axis = {1: -1, 2: 1, 3: 2}[axis] if nchw else axis
            out = _Tensor(keras.layers.Concatenate(axis=axis, name=self.name(op))([i.value for i in ins]), nchw)
        else:  # Add/Sub/Mul/Div with a constant
            if t is None:
                t, const = ins[1], self.constant(node.input[0], node)
                if op in ("Sub", "Div"):
                    raise ModelError(f"ONNX {op} node {node.name or node.output[0]!r} has its constant first; tfgeom "
                                     "converts x - c and x / c")
            else:
                const = self.constant(node.input[1], node)
            out = _Tensor(self.elementwise(node, t, const, op), t.nchw)
        self.tensors[node.output[0]] = out

    def gemm(self, node, t):
        a = _attributes(node)
        if a.get("transA", 0):
            raise ModelError(f"ONNX Gemm node {node.name or node.output[0]!r} transposes its input (transA); "
                             "tfgeom converts x @ W + b")
        w = self.constant(node.input[1], node)
        kernel = (w.T if a.get("transB", 0) else w) * float(a.get("alpha", 1.0))
        bias = self.constant(node.input[2], node) * float(a.get("beta", 1.0)) if len(node.input) > 2 and \
            node.input[2] else None
        return _Tensor(self.dense(self.to_onnx_order(t), kernel.astype(np.float32), bias), False)

    def reshape(self, node, t):
        x = self.to_onnx_order(t)
        if node.op_type == "Flatten":
            if _attributes(node).get("axis", 1) != 1:
                raise ModelError(f"ONNX Flatten node {node.name or node.output[0]!r} keeps more than the batch axis")
            return _Tensor(self.keras.layers.Flatten(name=self.name("Flatten"))(x), False)
        shape = [int(s) for s in self.constant(node.input[1], node)]
        if shape[0] not in (1, -1, 0):
            raise ModelError(f"ONNX Reshape node {node.name or node.output[0]!r} changes the batch axis")
        target = tuple(shape[1:])
        size = int(np.prod(x.shape[1:]))
        if -1 in target:
            known = int(np.prod([s for s in target if s != -1]))
            target = tuple(size // known if s == -1 else s for s in target)
        out = self.keras.layers.Reshape(target, name=self.name("Reshape"))(x)
        if len(target) == 3:  # an NCHW feature map again: hold it as NHWC for the convolutions
            return _Tensor(self.keras.layers.Permute((2, 3, 1), name=self.name("Permute"))(out), True)
        return _Tensor(out, False)


def _build(model, keras):
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(f"the ONNX model has {len(inputs)} inputs and {len(graph.output)} outputs; tfgeom converts "
                         "classifiers with one input and one output")
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    shape = tuple(dims[1:])
    if not shape or None in shape:
        raise ModelError(f"the ONNX model's input {inputs[0].name!r} has shape {dims}; tfgeom needs fixed sizes "
                         "after the batch axis")
    builder = _Builder(graph, keras)
    x = keras.Input(shape, name="onnx_input")
    if len(shape) == 3:  # NCHW images: Keras convolutions take NHWC
        builder.tensors[inputs[0].name] = _Tensor(keras.layers.Permute((2, 3, 1), name="onnx_nchw_to_nhwc")(x),
                                                  True)
    else:
        builder.tensors[inputs[0].name] = _Tensor(x, False)
    for node in graph.node:
        builder.node(node)
    out = builder.tensors[graph.output[0].name]
    if out.nchw or len(out.value.shape) != 2:
        raise ModelError(f"the ONNX model's output has shape {tuple(out.value.shape)}; tfgeom converts classifiers "
                         "whose output is [N, classes]")
    return keras.Model(x, out.value, name="onnx_model"), shape


def check(keras_model, session, input_name, x):
    """The largest `|keras - onnxruntime| / max(1, |logit|)` on `x` (`[N, ...]`, ONNX layout)."""
    ours = np.asarray(keras_model(x, training=False), np.float64)
    theirs = np.concatenate([session.run(None, {input_name: x[i:i + 1]})[0] for i in range(len(x))]).astype(
        np.float64)
    return float(np.max(np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))))


def convert(path, inputs=None, rtol=RTOL, seed=0):
    """Convert the ONNX classifier at `path` to Keras and check it (module docstring).

    Args:
        path: the `.onnx` file.
        inputs: `[N, ...]` inputs in the ONNX layout to check besides 8 random ones (uniform in [0, 1]).
            Defaults to `None`.
        rtol: the largest relative logit difference accepted. Defaults to `RTOL`.
        seed: seeds the random check inputs. Defaults to `0`.

    Returns:
        A `Converted`.

    Raises:
        ModelError: an unreadable file, an unsupported operator, or logits that differ from ONNX Runtime's.
    """
    import keras

    onnx, onnxruntime = _need()
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # the onnx package's own errors: say which file and why, in one line
        raise ModelError(f"cannot read ONNX model {str(path)!r}: {str(err).strip().splitlines()[0][:300]}") from None
    keras_model, shape = _build(model, keras)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    x = np.random.default_rng(seed).uniform(0, 1, (8, *shape)).astype(np.float32)
    if inputs is not None:
        x = np.concatenate([x, np.asarray(inputs, np.float32).reshape(-1, *shape)])
    worst = check(keras_model, session, input_name, x)
    if not worst <= rtol:
        raise ModelError(f"the Keras conversion of {str(path)!r} differs from ONNX Runtime by {worst:.3g} (relative "
                         f"to the logits; at most {rtol:g} accepted): an operator is converted wrongly, please "
                         "report it with the file")
    return Converted(keras_model, shape, len(shape) == 3, worst, len(x))
