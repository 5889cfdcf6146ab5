"""Analyse mixed-precision models in float32.

Curvatures from finite differences, DeepFool's small steps and bound
propagation all need float32 (float16 has 3 significant digits: a second
difference at step 1e-3 would be noise). A model whose layers compute in
float16/bfloat16 is cloned with every layer in float32 and the same weights
(mixed-precision variables are float32 already, so nothing is rounded); the
report says so. Subclassed models cannot be cloned layer by layer and are refused.
"""
import keras

from tfgeom.errors import ModelError
from tfgeom.runtime.layers import all_layers


def low_precision_layers(model):
    """Names of layers whose compute dtype is not float32."""
    return [layer.name for layer in all_layers(model)
            if getattr(layer, "compute_dtype", "float32") not in ("float32", None)]


def as_float32(model):
    """`(model, note)`: the model itself when it computes in float32, else a float32 clone and a sentence."""
    low = low_precision_layers(model)
    if not low:
        return model, "float32"
    if not (getattr(model, "inputs", None) and getattr(model, "outputs", None)):
        raise ModelError(
            f"model computes in {model.compute_dtype} ({len(low)} layers, e.g. '{low[0]}') and is subclassed, so "
            "tfgeom cannot recast it; build it under keras.mixed_precision.set_global_policy('float32')"
        )

    def float32_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=float32_layer)
    clone.set_weights(model.get_weights())
    return clone, (f"analysed in float32: {len(low)} layers computed in "
                   f"{_dtype_of(model, low[0])} (cast, weights unchanged)")


def _dtype_of(model, name):
    for layer in all_layers(model):
        if layer.name == name:
            return layer.compute_dtype
    return "low precision"
