"""Find the logits of a Keras classifier and split it into features and head.

A classifier is read as `logits = W^T phi(x) + b`: `phi` is the feature
extractor (everything up to the last hidden layer) and `(W, b)` the final
Dense layer. A trailing softmax (a `Softmax` layer, an `Activation("softmax")`
layer or the final Dense layer's own activation) is stripped so that analyses
see pre-softmax scores.

Other final activations (ReLU, sigmoid, tanh, ...) squash or clip the scores,
so they are refused unless the user asks for `logits="pre-activation"`: then
the final Dense layer's pre-activation is the score vector. A binary model with
one sigmoid (or linear) unit `z` then has the two scores `[0, z]`, whose
difference is `z`: class 1 wins exactly when `sigmoid(z) > 0.5`.
"""
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from tfgeom.errors import ModelError

_PROBABILITY_ACTIVATIONS = ("softmax",)
_LOG_PROBABILITY_ACTIVATIONS = ("log_softmax",)
_LINEAR_ACTIVATIONS = ("linear", None)
LOGITS_CHOICES = ("auto", "pre-activation")


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
        binary: True when the model has one output unit `z`, read as the scores `[0, z]`.
        model_prediction: `[N, ...] -> [N]` the model's own predicted class
            (argmax of its output; `output > 0.5` for a sigmoid unit), to check
            that the scores agree with it.
    """

    logits_fn: Callable[[tf.Tensor], tf.Tensor]
    features_fn: Optional[Callable[[tf.Tensor], tf.Tensor]]
    dense: Optional[keras.layers.Dense]
    source: str
    feature_layer: Optional[str]
    split_error: Optional[str]
    binary: bool = False
    model_prediction: Optional[Callable[[tf.Tensor], tf.Tensor]] = None

    def weights(self):
        """`(W [D, L], b [L])` of the affine head as NumPy arrays (raises `ModelError` without a split)."""
        if self.dense is None:
            raise ModelError(f"this model has no feature/head split: {self.split_error}")
        w = keras.ops.convert_to_numpy(self.dense.kernel)
        b = keras.ops.convert_to_numpy(self.dense.bias) if self.dense.use_bias else np.zeros(w.shape[1], w.dtype)
        if self.binary:  # scores [0, z]: a zero column first
            w = np.concatenate([np.zeros_like(w), w], axis=1)
            b = np.concatenate([np.zeros_like(b), b])
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


def _check_outputs(model, logits):
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
    if shape[1] == 1 and logits != "pre-activation":
        raise ModelError(
            "model has one output unit (a binary classifier); pass logits=\"pre-activation\" "
            "(CLI: --logits pre-activation) to analyse the two scores [0, z] of its pre-activation z"
        )
    if shape[1] is None or shape[1] < 1:
        raise ModelError(f"model output has {shape[1]} units; tfgeom needs a classifier")


def strip_softmax(model, pre_activation=False):
    """Walk back from the output past softmax layers (any activation layer when `pre_activation`);
    return (tensor, layer, inputs, note)."""
    tensor = model.outputs[0]
    layer, inputs = producer(tensor)
    note = ""
    while isinstance(layer, (keras.layers.Softmax, keras.layers.Activation, keras.layers.ReLU)):
        act = _activation_name(layer) if not isinstance(layer, keras.layers.ReLU) else "relu"
        if act not in _PROBABILITY_ACTIVATIONS + _LOG_PROBABILITY_ACTIVATIONS + ("linear",) and not pre_activation:
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


def _refuse_activation(layer, act):
    return ModelError(
        f"the final layer '{layer.name}' has activation {act!r}, which squashes or clips the class scores; "
        "pass logits=\"pre-activation\" (CLI: --logits pre-activation) to analyse the final Dense layer's "
        "pre-activation instead"
    )


def _model_prediction(model, binary):
    """The model's own predicted class: argmax of its output, or `output > 0.5` for one sigmoid unit."""
    def predict(x):
        out = model(x, training=False)
        if binary:
            return tf.cast(out[:, 0] > 0.5, tf.int32)
        return tf.argmax(out, axis=1, output_type=tf.int32)

    return predict


def _functional_head(model, feature_layer, logits):
    _check_outputs(model, logits)
    pre = logits == "pre-activation"
    stripped = strip_softmax(model)
    tensor, layer, inputs, note = strip_softmax(model, pre_activation=pre)
    if stripped[1] is not layer:
        last = stripped[1]
        note = f" (pre-activation: input of {type(last).__name__} layer '{last.name}', by logits=\"pre-activation\")"
    elif not isinstance(stripped[1], keras.layers.Dense) and isinstance(
            stripped[1], (keras.layers.Activation, keras.layers.ReLU)):
        raise _refuse_activation(stripped[1], _activation_name(stripped[1]) or "relu")
    act = _activation_name(layer)
    if isinstance(layer, keras.layers.Dense) and act not in _LINEAR_ACTIVATIONS:
        if act not in _PROBABILITY_ACTIVATIONS + _LOG_PROBABILITY_ACTIVATIONS:
            if not pre:
                raise _refuse_activation(layer, act)
            note = f" (pre-{act} output of Dense layer '{layer.name}', by logits=\"pre-activation\")"
        else:
            note = f" (pre-{act} output of Dense layer '{layer.name}')"
    binary = int(model.outputs[0].shape[1]) == 1
    if binary and not isinstance(layer, keras.layers.Dense):
        raise ModelError(
            f"binary model: its single output comes from '{layer.name}' ({type(layer).__name__}), not a Dense "
            "layer; tfgeom reads [0, z] from a final Dense layer's pre-activation z"
        )

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
            False,
            _model_prediction(model, False),
        )

    features = inputs[0]
    if feature_layer is not None:
        wanted = _find_layer(model, feature_layer)
        made_by, _ = producer(features)
        if made_by is not wanted and _named_feature_layer(features) != wanted.name:
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
    feature_name = _named_feature_layer(features)

    def features_fn(x):
        return feature_model(x, training=False)

    def logits_fn(x):
        z = tf.matmul(features_fn(x), layer.kernel)
        z = z + layer.bias if layer.use_bias else z
        return tf.concat([tf.zeros_like(z), z], axis=1) if binary else z

    source = f"model output{note}" if note else "model output (linear final Dense layer)"
    if binary:
        source += "; one unit z read as the two scores [0, z]"
    return Head(logits_fn, features_fn, layer, source, feature_name, None, binary, _model_prediction(model, binary))


_INFERENCE_IDENTITY = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                       keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _named_feature_layer(features):
    """The layer that computes the features, looking past layers that are the identity at inference
    (EfficientNet's `top_dropout` follows `avg_pool`: the features are the pooled vector)."""
    layer, inputs = producer(features)
    while isinstance(layer, _INFERENCE_IDENTITY) and len(inputs) == 1:
        layer, inputs = producer(inputs[0])
    return layer.name


def _subclassed_head(model, feature_layer, logits):
    if logits == "pre-activation":
        raise ModelError(
            "logits=\"pre-activation\" needs a Sequential or functional model (a layer graph to find the final "
            "Dense layer's input); this is a subclassed model: return the pre-activation scores from call()"
        )
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
        return Head(logits_fn, None, None, source, None, why, False, _model_prediction(model, False))
    return Head(
        lambda x: model(x, training=False), None, None, "model output (subclassed model)", None, why,
        False, _model_prediction(model, False),
    )


def resolve_head(model, feature_layer=None, logits="auto"):
    """Find a model's logits and its feature/head split.

    Args:
        model: a built `keras.Model` (Sequential, functional or subclassed).
        feature_layer: name of the layer whose output are the features. Defaults
            to `None`: the input of the final Dense layer.
        logits: `"auto"` (model output, softmax stripped; other final
            activations refused) or `"pre-activation"` (the final Dense layer's
            pre-activation, past any final activation; one unit `z` becomes
            `[0, z]`). Defaults to `"auto"`.

    Returns:
        A `Head`.

    Raises:
        ModelError: several inputs/outputs, outputs that are not `[N, classes]`,
            fewer than two classes, or a final activation that is not softmax.
    """
    if logits not in LOGITS_CHOICES:
        raise ModelError(f"logits={logits!r} is not one of {list(LOGITS_CHOICES)}")
    if is_functional(model):
        return _functional_head(model, feature_layer, logits)
    return _subclassed_head(model, feature_layer, logits)


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
