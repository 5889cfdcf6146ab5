"""Find the logits of a Keras classifier and split it into features and head.

A classifier is read as `logits = W^T phi(x) + b`: `phi` is the feature
extractor (everything up to the last hidden layer) and `(W, b)` the final
Dense layer. A trailing softmax (a `Softmax` layer, an `Activation("softmax")`
layer or the final Dense layer's own activation) is stripped so that analyses
see pre-softmax scores.
"""
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from tfgeom.errors import ModelError

_PROBABILITY_ACTIVATIONS = ("softmax",)
_LOG_PROBABILITY_ACTIVATIONS = ("log_softmax",)
_LINEAR_ACTIVATIONS = ("linear", None)


class Head(NamedTuple):
    """How a model's logits are computed.

    Fields:
        logits_fn: `[N, *input_shape] -> [N, L]` pre-softmax scores (a
            TensorFlow function of a tensor, not compiled).
        features_fn: `[N, *input_shape] -> [N, D]` features at the split layer,
            or None when the model cannot be split.
        dense: the final Dense layer (the affine head), or None.
        source: a sentence saying where the logits come from.
        feature_layer: name of the layer whose output are the features, or None.
        split_error: why there is no feature split (when `features_fn` is None).
    """

    logits_fn: Callable[[tf.Tensor], tf.Tensor]
    features_fn: Optional[Callable[[tf.Tensor], tf.Tensor]]
    dense: Optional[keras.layers.Dense]
    source: str
    feature_layer: Optional[str]
    split_error: Optional[str]

    def weights(self):
        """`(W [D, L], b [L])` of the affine head as NumPy arrays (raises `ModelError` without a split)."""
        if self.dense is None:
            raise ModelError(f"this model has no feature/head split: {self.split_error}")
        w = keras.ops.convert_to_numpy(self.dense.kernel)
        b = keras.ops.convert_to_numpy(self.dense.bias) if self.dense.use_bias else np.zeros(w.shape[1], w.dtype)
        return w, b

    def describe(self):
        """JSON-ready facts about the logits and the feature split."""
        return {
            "logits_source": self.source,
            "feature_layer": self.feature_layer,
            "feature_dim": int(self.dense.kernel.shape[0]) if self.dense is not None else None,
            "feature_split": self.split_error or "input of the final Dense layer",
        }


def _activation_name(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))


def producer(tensor):
    """The layer that made a symbolic tensor and that call's input tensors."""
    layer, node_index, _ = tensor._keras_history
    node = layer._inbound_nodes[node_index]
    return layer, list(node.input_tensors)


def is_functional(model):
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _check_outputs(model):
    outputs = model.outputs
    if len(outputs) != 1 or len(model.inputs) != 1:
        raise ModelError(
            f"model has {len(model.inputs)} inputs and {len(outputs)} outputs; tfgeom analyses "
            "single-input classifiers with one [batch, classes] output: wrap the model so it has one of each"
        )
    shape = tuple(outputs[0].shape)
    if len(shape) != 2:
        raise ModelError(
            f"model output has shape {shape}; a classifier must output [batch, classes] "
            "(add a Flatten/Dense head or pass the classifier sub-model)"
        )
    if shape[1] is None or shape[1] < 2:
        raise ModelError(
            f"model output has {shape[1]} class(es); tfgeom needs a classifier with at least 2 classes "
            "(for a binary model with one sigmoid unit, output two logits [0, z] instead)"
        )


def strip_softmax(model):
    """Walk back from the output past softmax layers; return (tensor, layer, inputs, note)."""
    tensor = model.outputs[0]
    layer, inputs = producer(tensor)
    note = ""
    while isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
        act = _activation_name(layer)
        if act not in _PROBABILITY_ACTIVATIONS + _LOG_PROBABILITY_ACTIVATIONS + ("linear",):
            break
        if act != "linear":
            note = f" ({act} stripped: input of {type(layer).__name__} layer '{layer.name}')"
        tensor = inputs[0]
        layer, inputs = producer(tensor)
    return tensor, layer, inputs, note


def _find_layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ModelError(
            f"feature_layer={name!r} is not a layer of the model; layers are {names}"
        ) from None


def _functional_head(model, feature_layer):
    _check_outputs(model)
    tensor, layer, inputs, note = strip_softmax(model)
    act = _activation_name(layer)
    if isinstance(layer, keras.layers.Dense) and act not in _LINEAR_ACTIVATIONS:
        if act not in _PROBABILITY_ACTIVATIONS + _LOG_PROBABILITY_ACTIVATIONS:
            raise ModelError(
                f"final Dense layer '{layer.name}' has activation {act!r}; tfgeom needs logits or "
                "softmax probabilities (use activation=None or 'softmax')"
            )
        note = f" (pre-{act} output of Dense layer '{layer.name}')"

    if not isinstance(layer, keras.layers.Dense):
        logits_model = keras.Model(model.inputs, tensor)
        why = (
            f"the layer producing the logits, '{layer.name}' ({type(layer).__name__}), is not Dense; "
            "tfgeom splits features from an affine head at the input of the final Dense layer"
        )
        if feature_layer is not None:
            raise ModelError(f"cannot split at feature_layer={feature_layer!r}: {why}")
        return Head(
            lambda x: logits_model(x, training=False),
            None,
            None,
            f"model output{note}",
            None,
            why,
        )

    features = inputs[0]
    if feature_layer is not None:
        wanted = _find_layer(model, feature_layer)
        made_by, _ = producer(features)
        if made_by is not wanted:
            raise ModelError(
                f"feature_layer={feature_layer!r} does not feed the final Dense layer '{layer.name}' "
                f"directly (its input comes from '{made_by.name}'); the part after the feature layer "
                "must be a single Dense layer"
            )
    if len(features.shape) != 2:
        raise ModelError(
            f"final Dense layer '{layer.name}' gets input of shape {tuple(features.shape)}; "
            "tfgeom needs a flat [batch, features] input to the head (add Flatten or pooling)"
        )
    feature_model = keras.Model(model.inputs, features)
    feature_name = producer(features)[0].name

    def features_fn(x):
        return feature_model(x, training=False)

    def logits_fn(x):
        z = tf.matmul(features_fn(x), layer.kernel)
        return z + layer.bias if layer.use_bias else z

    source = f"model output{note}" if note else "model output (linear final Dense layer)"
    return Head(logits_fn, features_fn, layer, source, feature_name, None)


def _subclassed_head(model, feature_layer):
    if feature_layer is not None:
        raise ModelError(
            "feature_layer needs a Sequential or functional model; this is a subclassed model "
            "(rebuild it with keras.Input, or pass the functional equivalent)"
        )
    last = model.layers[-1] if model.layers else None
    act = _activation_name(last) if last is not None else None
    why = "subclassed models have no layer graph to split; rebuild the model as functional"
    if act in _PROBABILITY_ACTIVATIONS:
        tiny = 1e-37

        def logits_fn(x):
            # log p = z - logsumexp(z): equal to the logits up to a per-example
            # constant, so every difference f_i - f_j is preserved.
            return tf.math.log(tf.maximum(model(x, training=False), tiny))

        source = (
            f"log of the softmax output (subclassed model, last layer '{last.name}'); "
            "differences f_i - f_j equal the logits'"
        )
        return Head(logits_fn, None, None, source, None, why)
    return Head(
        lambda x: model(x, training=False), None, None, "model output (subclassed model)", None, why
    )


def resolve_head(model, feature_layer=None):
    """Find a model's logits and its feature/head split.

    Args:
        model: a built `keras.Model` (Sequential, functional or subclassed).
        feature_layer: name of the layer whose output are the features. Defaults
            to `None`: the input of the final Dense layer.

    Returns:
        A `Head`.

    Raises:
        ModelError: several inputs/outputs, outputs that are not `[N, classes]`,
            fewer than two classes, or a final activation that is not softmax.
    """
    if is_functional(model):
        return _functional_head(model, feature_layer)
    return _subclassed_head(model, feature_layer)


def input_shape_of(model, input_shape=None):
    """The input shape without the batch axis: `input_shape` if given, else the model's (refused if unknown)."""
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    try:
        shape = tuple(model.inputs[0].shape[1:])
    except (AttributeError, ValueError, IndexError, TypeError):
        shapes = getattr(model, "_build_shapes_dict", None) or {}
        if len(shapes) != 1:
            raise ModelError(
                "cannot tell the model's input shape (subclassed model that was never called); "
                "pass input_shape=(H, W, C) or call the model on a batch first"
            ) from None
        shape = tuple(next(iter(shapes.values()))[1:])
    if any(d is None for d in shape):
        raise ModelError(
            f"model input shape {shape} has unknown dimensions; pass input_shape=... with the size you analyse"
        )
    return tuple(int(d) for d in shape)
