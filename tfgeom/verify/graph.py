"""The feature extractor of a Keras model as a graph of operators (`tfgeom.verify.operators`).

Bound propagation (`tfgeom.verify.ibp`, `crown`, `forward`) and the exact MILP (`tfgeom.verify.milp`) do not
run Keras layers; each Keras layer becomes operators by a lookup table from
layer class to converter (`CONVERTERS`):

- `Affine`: `y = L(x) + c` with `L` linear (Dense, Conv1D/2D/3D,
  DepthwiseConv1D/2D, SeparableConv1D/2D (two nodes: depthwise, pointwise),
  BatchNormalization in inference mode, Normalization, average pooling,
  Flatten, Reshape, Permute, ZeroPadding, Cropping, nearest UpSampling,
  Rescaling), with `L`, `|L|`, `L^T` and the bias `c`;
- `ReLU` (also leaky) and `SShaped` (tanh, sigmoid): element-wise monotone
  activations, standalone or a layer's own `activation`; a ReLU with
  `max_value` m (ReLU6) is the exact identity `relu(x) - relu(x - m)` in four
  nodes; a ReLU with a `threshold` (or `max_value` with `negative_slope`) is
  one `ThresholdReLU`;
- `MaxPool`: a maximum over windows (MaxPooling1D/2D, GlobalMaxPooling1D/2D);
- `Add`: the sum of several nodes (residual `Add`).

Dropout-like layers are the identity in inference mode and produce no node.
Node 0 is the input; nodes are in topological order; the last node is the
feature tensor (the input of the model's final Dense layer). Which layers are
piecewise linear is `tfgeom.runtime.layers`' table, shared with curvature.
"""
from typing import NamedTuple, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfgeom.verify import patches
from tfgeom.errors import ModelError
from tfgeom.runtime.heads import is_functional, producer, strip_softmax
from tfgeom.runtime.layers import AVERAGE, IDENTITY, MAXPOOL
from tfgeom.runtime.programs import ProgramCache, ProgramFunction
from tfgeom.verify.operators import Add, Affine, Concatenate, Input, MaxPool, ReLU, Smooth, SShaped, ThresholdReLU

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "tanh", "sigmoid", "hard_sigmoid", "softplus", "silu", "swish", "elu",
               "gelu")
SUPPORTED = (
    "Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D, BatchNormalization, Normalization, "
    "Average/Max pooling (1D/2D, global), Flatten, Reshape, Permute, ZeroPadding, Cropping, UpSampling "
    "(nearest), Rescaling, Dropout-like layers, Add, Concatenate, ReLU (negative_slope, max_value, threshold), "
    "LeakyReLU, ELU (alpha=1), and the activations relu, relu6, leaky_relu, tanh, sigmoid, hard_sigmoid, "
    "softplus, silu/swish, elu, gelu, linear"
)


class LayerGraph(NamedTuple):
    """Operators in topological order (node 0 the input, the last one the features).

    Fields:
        nodes: the operators (`tfgeom.verify.operators`).
        programs: compiled bound programs of this graph (a `tfgeom.runtime.programs.ProgramCache`, freed with it).
    """

    nodes: Tuple
    programs: dict

    @property
    def input_shape(self):
        return self.nodes[0].shape

    def program(self, key, fn, jit=False, reduce_retracing=False):
        """`fn` compiled once as a TensorFlow graph (XLA with `jit`) and cached under `key` in `programs`."""
        return self.programs.get_or_build(
            key, lambda: tf.function(ProgramFunction(fn), jit_compile=jit, autograph=False,
                                     reduce_retracing=reduce_retracing))

    def counts(self):
        """`{activation or "maxpool": number of units}` over activation and max-pool nodes."""
        out = {}
        for node in self.nodes:
            if node.units:
                key = getattr(node, "activation", None) or "maxpool"
                out[key] = out.get(key, 0) + node.size
        return out

    def piecewise_linear(self):
        """Whether every operator is piecewise linear (ReLU-type, max-pooling, affine)."""
        return all(node.piecewise_linear for node in self.nodes)


def _vjp_transpose(linear, in_shape):
    """`L^T` of a linear map by reverse-mode autodiff (its value does not depend on the point)."""

    def transpose(a):
        z = tf.zeros([tf.shape(a)[0], *in_shape], a.dtype)
        with tf.GradientTape() as tape:
            tape.watch(z)
            y = linear(z)
        return tape.gradient(y, z, output_gradients=a)

    return transpose


def _affine(name, inputs, in_shape, linear, abs_linear, bias=None, transpose=None, diagonal=False):
    zero = tf.zeros([1, *in_shape])
    out_shape = tuple(int(d) for d in linear(zero).shape[1:])
    bias_map = tf.zeros(out_shape) if bias is None else tf.broadcast_to(bias, out_shape)
    return Affine(name, inputs, out_shape, linear, abs_linear, transpose or _vjp_transpose(linear, in_shape),
                  tf.cast(bias_map, tf.float32), diagonal)


def _activation(name, inputs, shape, spec):
    """The activation operator for `(activation, slope)`, or None for linear."""
    kind, slope = spec
    if kind is None:
        return None
    if kind in ("relu", "leaky_relu"):
        return ReLU(name, inputs, shape, slope)
    if kind in Smooth.FUNCTIONS:
        return Smooth(name, inputs, shape, kind)
    return SShaped(name, inputs, shape, kind)


def _activation_spec(layer, fn):
    """`(name, slope)` of a Keras activation function, or raise naming the layer."""
    name = getattr(fn, "__name__", str(fn))
    if name in ("linear", "identity"):
        return None, 0.0
    if name == "relu":
        return "relu", 0.0
    if name == "relu6":
        return "relu6", 0.0
    if name == "leaky_relu":
        return "leaky_relu", 0.2  # keras.activations.leaky_relu's default
    if name in ("tanh", "sigmoid", "hard_sigmoid", "softplus", "silu"):
        return name, 0.0
    if name in ("elu", "gelu"):  # keras.activations' defaults: alpha = 1, the exact (erf) GELU
        return name, 0.0
    raise ModelError(
        f"layer '{layer.name}' uses activation {name!r}, which bound propagation does not support; "
        f"supported: {', '.join(ACTIVATIONS)}, linear"
    )


def _standalone_activation(layer):
    if isinstance(layer, keras.layers.ELU):
        if float(layer.alpha) != 1.0:
            raise ModelError(f"ELU layer '{layer.name}' has alpha={float(layer.alpha):g}; bound propagation "
                             "supports alpha=1 (the smooth ELU)")
        return "elu", 0.0
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu", float(layer.negative_slope)
    if isinstance(layer, keras.layers.ReLU):
        slope = float(layer.negative_slope)
        return ("leaky_relu", slope) if slope else ("relu", 0.0)
    return _activation_spec(layer, layer.activation)


def _window_table(in_shape, pool, strides, padding):
    """`[outputs, k]` indices of each max-pooling window into the flattened channels-last input."""
    spatial, channels = in_shape[:-1], in_shape[-1]
    starts = []
    for size, p, s in zip(spatial, pool, strides):
        if padding == "valid":
            out = (size - p) // s + 1
            before = 0
        else:
            out = -(-size // s)
            before = max((out - 1) * s + p - size, 0) // 2
        starts.append([o * s - before for o in range(out)])
    grids = np.stack(np.meshgrid(*[np.array(st) for st in starts], indexing="ij"), -1).reshape(-1, len(spatial))
    offsets = np.stack(np.meshgrid(*[np.arange(p) for p in pool], indexing="ij"), -1).reshape(-1, len(spatial))
    pos = grids[:, None, :] + offsets[None, :, :]  # [windows, k, dims]
    valid = np.all((pos >= 0) & (pos < np.array(spatial)), axis=-1)
    flat_spatial = np.ravel_multi_index(tuple(np.clip(pos, 0, np.array(spatial) - 1).transpose(2, 0, 1)), spatial)
    size = int(np.prod(in_shape))
    table = flat_spatial[:, None, :] * channels + np.arange(channels)[None, :, None]  # [windows, C, k]
    table = np.where(valid[:, None, :], table, size)
    out_shape = tuple(len(st) for st in starts) + (channels,)
    return table.reshape(-1, pos.shape[1]).astype(np.int32), out_shape


def _maxpool(layer, inputs, in_shape):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ModelError(f"max pooling layer '{layer.name}' uses channels_first; certification needs channels_last")
    dims = len(in_shape) - 1
    if isinstance(layer, (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D)):
        table, out_shape = _window_table(in_shape, in_shape[:-1], in_shape[:-1], "valid")
        if layer.keepdims:
            out_shape = (1,) * dims + (in_shape[-1],)
        else:
            out_shape = (in_shape[-1],)
    else:
        pool = tuple(int(p) for p in np.broadcast_to(layer.pool_size, dims))
        strides = tuple(int(s) for s in np.broadcast_to(layer.strides, dims))
        table, out_shape = _window_table(in_shape, pool, strides, layer.padding)
        if dims == 2:  # CROWN's patch form treats it like a convolution with this geometry
            node = MaxPool(layer.name, inputs, out_shape, tf.constant(table))
            node.conv = patches.PoolGeometry(pool, strides, patches.same_pads(in_shape, pool, strides, layer.padding),
                                             in_shape[-1])
            return node
    return MaxPool(layer.name, inputs, out_shape, tf.constant(table))


def _dense(layer, inputs, in_shape):
    kernel = tf.convert_to_tensor(layer.kernel)
    bias = tf.convert_to_tensor(layer.bias) if layer.use_bias else None
    last = len(in_shape)
    node = _affine(layer.name, inputs, in_shape,
                   lambda x: tf.tensordot(x, kernel, [[last], [0]]),
                   lambda r: tf.tensordot(r, tf.abs(kernel), [[last], [0]]),
                   bias,
                   lambda a: tf.tensordot(a, kernel, [[last], [1]]))
    return [node] + _activation_nodes(layer, (-1,), node.shape, _activation_spec(layer, layer.activation))


def _conv(layer, inputs, in_shape):
    if layer.data_format != "channels_last":
        raise ModelError(f"Conv layer '{layer.name}' uses channels_first; certification needs channels_last")
    kernel = tf.convert_to_tensor(layer.kernel)
    bias = tf.convert_to_tensor(layer.bias) if layer.use_bias else None
    node = _affine(layer.name, inputs, in_shape,
                   lambda x: layer.convolution_op(x, kernel),
                   lambda r: layer.convolution_op(r, tf.abs(kernel)),
                   bias)
    if len(in_shape) == 3 and tuple(layer.dilation_rate) == (1, 1) and getattr(layer, "groups", 1) == 1:
        strides = tuple(int(s) for s in layer.strides)
        node.conv = patches.ConvGeometry(kernel, strides,
                                         patches.same_pads(in_shape, kernel.shape[:2], strides, layer.padding))
    return [node] + _activation_nodes(layer, (-1,), node.shape, _activation_spec(layer, layer.activation))


def _batch_norm(layer, inputs, in_shape):
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    shape = [1] * (len(in_shape) + 1)
    for ax in axes:
        shape[ax] = in_shape[ax - 1 if ax > 0 else ax]
    var = tf.convert_to_tensor(layer.moving_variance)
    scale = tf.math.rsqrt(var + layer.epsilon)
    if layer.scale:
        scale = scale * tf.convert_to_tensor(layer.gamma)
    shift = -tf.convert_to_tensor(layer.moving_mean) * scale
    if layer.center:
        shift = shift + tf.convert_to_tensor(layer.beta)
    scale, shift = tf.reshape(scale, shape), tf.reshape(shift, shape)
    return [_affine(layer.name, inputs, in_shape, lambda x: x * scale, lambda r: r * tf.abs(scale),
                    shift[0], lambda a: a * scale, diagonal=True)]


def _rescaling(layer, inputs, in_shape):
    scale = tf.cast(layer.scale, tf.float32)
    offset = tf.cast(layer.offset, tf.float32)
    return [_affine(layer.name, inputs, in_shape, lambda x: x * scale, lambda r: r * tf.abs(scale),
                    offset, lambda a: a * scale, diagonal=True)]


def _reshape(layer, inputs, in_shape):
    out_shape = tuple(int(d) for d in layer.compute_output_shape((None, *in_shape))[1:])

    def reshape(x, shape=out_shape):
        return tf.reshape(x, [-1, *shape])

    return [_affine(layer.name, inputs, in_shape, reshape, reshape, None,
                    lambda a: tf.reshape(a, [-1, *in_shape]), diagonal=True)]


def _average(layer, inputs, in_shape):
    call = lambda x: layer(x)  # noqa: E731  (linear, non-negative weights)
    return [_affine(layer.name, inputs, in_shape, call, call)]


def _clipped_relu(name, inputs, shape, top):
    """`min(max(x, 0), top) = relu(x) - relu(x - top)`: four operators, exact; `inputs` the parent id.

    Operator inputs < 0 are relative to the node's own position (see `build`)."""
    # the second node reads the same parent: a relative input (< 0) counts one node further back
    shift = _affine(f"{name}/shift", tuple(i - 1 if i < 0 else i for i in inputs), shape, lambda x: x, lambda r: r,
                    tf.constant(-float(top)), lambda a: a, diagonal=True)
    negate = _affine(f"{name}/negate", (-1,), shape, lambda x: -x, lambda r: r, None, lambda a: -a, diagonal=True)
    return [ReLU(f"{name}/low", inputs, shape, 0.0), shift, ReLU(f"{name}/high", (-1,), shape, 0.0), negate,
            Add(name, (-4, -1), shape)]


def _hard_sigmoid(name, inputs, shape):
    """Keras' `hard_sigmoid(x) = relu6(x + 3) / 6`, exact: shift, clipped ReLU, scale."""
    plus = _affine(f"{name}/plus3", inputs, shape, lambda x: x, lambda r: r, tf.constant(3.0), lambda a: a,
                   diagonal=True)
    scale = _affine(f"{name}/scale", (-1,), shape, lambda x: x / 6.0, lambda r: r / 6.0, None, lambda a: a / 6.0,
                    diagonal=True)
    return [plus] + _clipped_relu(f"{name}/relu6", (-1,), shape, 6.0) + [scale]


def _activation_nodes(layer, inputs, shape, spec):
    """Operators of an activation `spec` applied to `inputs` (relu6 needs five, hard_sigmoid seven)."""
    if spec[0] == "relu6":
        return _clipped_relu(layer.name, inputs, shape, 6.0)
    if spec[0] == "hard_sigmoid":
        return _hard_sigmoid(layer.name, inputs, shape)
    return [_activation(layer.name, inputs, shape, spec)]


def _depthwise(layer, inputs, in_shape, kernel=None, with_bias=True, activation=True, name=None):
    """A depthwise convolution (`kernel` defaults to the layer's) as an affine node, then its activation."""
    if layer.data_format != "channels_last":
        raise ModelError(f"layer '{layer.name}' uses channels_first; certification needs channels_last")
    kernel = tf.convert_to_tensor(layer.kernel if kernel is None else kernel)

    def conv(x, k):  # keras.ops.depthwise_conv takes 1-D and 2-D inputs alike
        return keras.ops.depthwise_conv(x, k, layer.strides, layer.padding, layer.data_format, layer.dilation_rate)

    bias = tf.convert_to_tensor(layer.bias) if with_bias and layer.use_bias else None
    node = _affine(name or layer.name, inputs, in_shape, lambda x: conv(x, kernel), lambda r: conv(r, tf.abs(kernel)),
                   bias)
    if not activation:
        return [node]
    return [node] + _activation_nodes(layer, (-1,), node.shape, _activation_spec(layer, layer.activation))


def _separable(layer, inputs, in_shape):
    """SeparableConv: depthwise (no bias) then a 1x1 pointwise convolution with the bias and activation."""
    if layer.data_format != "channels_last":
        raise ModelError(f"layer '{layer.name}' uses channels_first; certification needs channels_last")
    depthwise = _depthwise(layer, inputs, in_shape, kernel=layer.depthwise_kernel, with_bias=False, activation=False,
                           name=f"{layer.name}/depthwise")[0]
    pointwise = tf.convert_to_tensor(layer.pointwise_kernel)
    bias = tf.convert_to_tensor(layer.bias) if layer.use_bias else None

    def point(x, k):
        return keras.ops.conv(x, k, 1, "valid", layer.data_format)

    node = _affine(layer.name, (-1,), depthwise.shape, lambda x: point(x, pointwise),
                   lambda r: point(r, tf.abs(pointwise)), bias)
    return [depthwise, node] + _activation_nodes(layer, (-1,), node.shape, _activation_spec(layer, layer.activation))


def _normalization(layer, inputs, in_shape):
    """Keras `Normalization` in inference: element-wise `(x - mean) / max(sqrt(var), eps)`, read off the layer."""
    if getattr(layer, "invert", False):
        raise ModelError(f"Normalization layer '{layer.name}' has invert=True; certification supports the forward map")
    zero = layer(tf.zeros([1, *in_shape]))[0]
    scale = layer(tf.ones([1, *in_shape]))[0] - zero
    return [_affine(layer.name, inputs, in_shape, lambda x: x * scale, lambda r: r * tf.abs(scale), zero,
                    lambda a: a * scale, diagonal=True)]


def _upsampling(layer, inputs, in_shape):
    if getattr(layer, "interpolation", "nearest") != "nearest":
        raise ModelError(f"UpSampling layer '{layer.name}' interpolates {layer.interpolation!r}; certification "
                         "supports nearest")
    return _average(layer, inputs, in_shape)


def _standalone(layer, inputs, in_shape):
    if isinstance(layer, keras.layers.ReLU):
        threshold, slope, top = float(layer.threshold), float(layer.negative_slope), layer.max_value
        if threshold or (top is not None and slope):  # a jump, or a clipped leaky ReLU: one general operator
            return [ThresholdReLU(layer.name, inputs, in_shape, threshold, slope, None if top is None else float(top))]
        if top is not None:
            return _clipped_relu(layer.name, inputs, in_shape, float(top))
    spec = _standalone_activation(layer)
    return [("alias", inputs[0])] if spec[0] is None else _activation_nodes(layer, inputs, in_shape, spec)


# Keras layer class -> converter `(layer, inputs, in_shape) -> [operators]` (the last one is the output).
# Whether a layer is piecewise linear is a fact about Keras layers, shared with curvature:
# `tfgeom.runtime.layers.PIECEWISE_LINEAR` (a test checks that it knows every layer here).
CONVERTERS = {
    keras.layers.Dense: _dense,
    keras.layers.Conv1D: _conv,
    keras.layers.Conv2D: _conv,
    keras.layers.Conv3D: _conv,
    keras.layers.DepthwiseConv1D: _depthwise,
    keras.layers.DepthwiseConv2D: _depthwise,
    keras.layers.SeparableConv1D: _separable,
    keras.layers.SeparableConv2D: _separable,
    keras.layers.Normalization: _normalization,
    keras.layers.UpSampling1D: _average,
    keras.layers.UpSampling2D: _upsampling,
    keras.layers.BatchNormalization: _batch_norm,
    keras.layers.Rescaling: _rescaling,
    keras.layers.Flatten: _reshape,
    keras.layers.Reshape: _reshape,
    **{cls: _average for cls in AVERAGE},
    **{cls: (lambda layer, inputs, in_shape: [_maxpool(layer, inputs, in_shape)]) for cls in MAXPOOL},
    keras.layers.ReLU: _standalone,
    keras.layers.LeakyReLU: _standalone,
    keras.layers.ELU: _standalone,
    keras.layers.Activation: _standalone,
}


def _converter(layer):
    for cls in type(layer).__mro__:
        if cls in CONVERTERS:
            return CONVERTERS[cls]
    return None


def _layer_nodes(layer, inputs, in_shapes):
    """Operators for one Keras layer reading nodes `inputs`; returns a list (the last one is its output)."""
    name = layer.name
    if type(layer).__name__ == "Add" and len(inputs) >= 2:
        if any(s != in_shapes[0] for s in in_shapes):
            raise ModelError(f"Add '{name}' broadcasts inputs of shapes {in_shapes}; certification needs equal shapes")
        return [Add(name, tuple(inputs), in_shapes[0])]
    if type(layer).__name__ == "Concatenate" and len(inputs) >= 2:
        return [_concatenate(layer, inputs, in_shapes)]
    if len(inputs) != 1:
        raise ModelError(
            f"layer '{name}' ({type(layer).__name__}) has {len(inputs)} tensor inputs; "
            f"bound propagation supports {SUPPORTED}"
        )
    entry = _converter(layer)
    if entry is None:
        raise ModelError(
            f"layer '{name}' ({type(layer).__name__}) is not supported by certification; supported: {SUPPORTED}"
        )
    return [node for node in entry(layer, tuple(inputs), in_shapes[0]) if node is not None]


def _concatenate(layer, inputs, in_shapes):
    rank = len(in_shapes[0])
    axis = layer.axis % (rank + 1) - 1  # Keras counts the batch axis
    others = {tuple(d for k, d in enumerate(shape) if k != axis) for shape in in_shapes}
    if axis < 0 or len(others) != 1 or any(len(shape) != rank for shape in in_shapes):
        raise ModelError(f"Concatenate '{layer.name}' joins shapes {in_shapes} on axis {layer.axis}; certification "
                         "needs inputs of one rank that differ only along a non-batch axis")
    sizes = [shape[axis] for shape in in_shapes]
    shape = list(in_shapes[0])
    shape[axis] = sum(sizes)
    return Concatenate(layer.name, tuple(inputs), shape, axis, sizes)


def build(model):
    """The `LayerGraph` of a functional or Sequential model's feature extractor.

    Raises:
        ModelError: subclassed models, unsupported layers (the message names
            the layer and lists what is supported).
    """
    if not is_functional(model):
        raise ModelError(
            "certification needs a Sequential or functional model (a layer graph); this is a subclassed "
            "model: rebuild it with keras.Input"
        )
    # pre_activation: a final activation is never part of the features (GeometryModel refused it unless asked)
    _, head, inputs, _ = strip_softmax(model, pre_activation=True)
    if not isinstance(head, keras.layers.Dense):
        raise ModelError(
            f"the logits come from '{head.name}' ({type(head).__name__}), not a Dense layer; certification "
            "needs an affine final layer"
        )
    nodes = []
    index = {}

    def shape_of(tensor):
        return tuple(int(d) for d in tensor.shape[1:])

    def visit(tensor, bindings):
        key = id(tensor)
        if key in bindings:
            return bindings[key]
        if key in index:
            return index[key]
        layer, parents = producer(tensor)
        if isinstance(layer, keras.layers.InputLayer):
            if nodes:
                raise ModelError("certification needs a model with a single input")
            nodes.append(Input(layer.name, (), shape_of(tensor)))
            index[key] = 0
            return 0
        if isinstance(layer, keras.Model) and is_functional(layer):
            inner_inputs = [visit(p, bindings) for p in parents]
            inner = dict(zip([id(t) for t in layer.inputs], inner_inputs))
            if len(layer.outputs) != 1:
                raise ModelError(f"nested model '{layer.name}' has several outputs; certification needs one")
            index[key] = visit(layer.outputs[0], inner)
            return index[key]
        parent_ids = [visit(p, bindings) for p in parents]
        if isinstance(layer, IDENTITY):
            index[key] = parent_ids[0]
            return parent_ids[0]
        made = _layer_nodes(layer, parent_ids, [nodes[i].shape for i in parent_ids])
        for item in made:
            if isinstance(item, tuple) and item and item[0] == "alias":
                index[key] = item[1]
                return item[1]
            # inputs < 0 count back from this node: -1 is the node made just before it (a layer's own
            # activation reads the layer's affine node; multi-node converters chain this way)
            item.inputs = tuple(len(nodes) + i if i < 0 else i for i in item.inputs)
            nodes.append(item)
        index[key] = len(nodes) - 1
        return index[key]

    last = visit(inputs[0], {})
    if last != len(nodes) - 1 or not nodes or not isinstance(nodes[0], Input):
        raise ModelError("could not order the feature extractor's layers; certification needs a plain layer graph")
    if len(nodes[-1].shape) != 1:
        raise ModelError(f"features have shape {nodes[-1].shape}; certification needs flat features")
    return LayerGraph(tuple(nodes), ProgramCache())


def run(graph, x):
    """Evaluate the graph on `x` (a check that it matches the Keras model)."""
    values = [tf.convert_to_tensor(x, tf.float32)]
    for node in graph.nodes[1:]:
        values.append(node.evaluate([values[i] for i in node.inputs]))
    return values[-1]
