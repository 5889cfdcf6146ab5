"""Kinds of Keras layers: the one table curvature and certification both read.

`PIECEWISE_LINEAR` says, per Keras layer class, whether the layer is piecewise
linear whatever its settings (True/False) or depending on its activation
(None). `hvp="auto"` uses it to pick finite differences for piecewise-linear
networks (`is_piecewise_linear`); certification's graph
(`tfgeom.verify.graph.CONVERTERS`) converts the same layer classes, and a
test checks that this table knows every one of them. `all_layers` walks
nested models.
"""
import keras

IDENTITY = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)
AVERAGE = (
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Permute,
)
MAXPOOL = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
)

# Keras layer class -> piecewise linear whatever its settings (True/False), or None: depends on its activation.
PIECEWISE_LINEAR = {
    keras.layers.Dense: None,
    keras.layers.Conv1D: None,
    keras.layers.Conv2D: None,
    keras.layers.Conv3D: None,
    keras.layers.DepthwiseConv1D: None,
    keras.layers.DepthwiseConv2D: None,
    keras.layers.SeparableConv1D: None,
    keras.layers.SeparableConv2D: None,
    keras.layers.Normalization: True,
    keras.layers.UpSampling1D: True,
    keras.layers.UpSampling2D: True,
    keras.layers.BatchNormalization: True,
    keras.layers.Rescaling: True,
    keras.layers.Flatten: True,
    keras.layers.Reshape: True,
    keras.layers.ReLU: None,
    keras.layers.LeakyReLU: True,
    keras.layers.ELU: False,
    keras.layers.Activation: None,
    **{cls: True for cls in IDENTITY + AVERAGE + MAXPOOL},
}
# Activation names of piecewise-linear functions (a final softmax is stripped before any analysis,
# so it does not make the logits smooth).
PIECEWISE_LINEAR_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "hard_sigmoid", "linear", "identity", "softmax",
                                "log_softmax", None)
# Layers not in the table that are affine, by class name (Keras' structural layers, merges, softmax heads).
_AFFINE_NAMES = (
    "InputLayer", "Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D",
    "Flatten", "Reshape", "Dropout", "SpatialDropout2D", "BatchNormalization", "Add", "Subtract",
    "Concatenate", "AveragePooling2D", "GlobalAveragePooling2D", "ZeroPadding2D", "Cropping2D",
    "Softmax", "Activation", "Rescaling", "Normalization", "Identity",
)
_PIECEWISE_LINEAR_NAMES = ("ReLU", "LeakyReLU", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D")


def all_layers(model):
    """Every layer inside `model`, nested models included (Keras' public `layers`, recursively; depth first)."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from all_layers(layer)


def _kind(layer):
    for cls in type(layer).__mro__:
        if cls in PIECEWISE_LINEAR:
            return cls
    return None


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def layer_piecewise_linear(layer):
    """Whether a Keras layer is piecewise linear by the table: True, False, or None when the table
    does not know the layer (the caller decides)."""
    kind = _kind(layer)
    if kind is None:
        return None
    if PIECEWISE_LINEAR[kind] is not None:
        return PIECEWISE_LINEAR[kind]
    if isinstance(layer, keras.layers.ReLU):
        return True
    return _activation_name(layer) in PIECEWISE_LINEAR_ACTIVATIONS


def is_piecewise_linear(model):
    """True when every nonlinearity of the model is piecewise linear (ReLU-type, max-pooling).

    Such networks have a zero Hessian almost everywhere, so `hvp="auto"` uses
    finite differences for them. Unknown layers count as smooth.
    """
    for layer in all_layers(model):
        known = layer_piecewise_linear(layer)
        if known is not None:
            if not known:
                return False
            continue
        name = type(layer).__name__
        if name in _PIECEWISE_LINEAR_NAMES:
            continue
        act = getattr(layer, "activation", None)
        if _activation_name(layer) not in PIECEWISE_LINEAR_ACTIVATIONS:
            return False
        if name == "Lambda" or (act is None and not _is_affine(layer)):
            return False
    return True


def _is_affine(layer):
    name = type(layer).__name__
    return name in _AFFINE_NAMES or name.startswith(("Sequential", "Functional"))
