"""`GeometryModel`: a Keras classifier seen as logits, gradients, features and head."""
import os

import keras
import numpy as np
import tensorflow as tf

from tfgeom.verify import certification
from tfgeom.geometry import connectivity, curvature, deepfool, sections, subspace
from tfgeom import execution
from tfgeom.runtime.data import from_tf_dataset
from tfgeom.errors import InputError, ModelError
from tfgeom.features.feature_space import FeatureSpace
from tfgeom.runtime.heads import input_shape_of, resolve_head
from tfgeom.verify.graph import build as build_layer_graph
from tfgeom.runtime.loading import load_model
from tfgeom.runtime.precision import as_float32
from tfgeom.runtime.programs import Runtime
from tfgeom.runtime.validation import check_bounds, check_inputs, check_labels


class GeometryModel:
    """A Keras classifier prepared for geometric analysis: a thin face over `tfgeom.runtime.programs.Runtime`.

    Wraps a model so that analyses see pre-softmax logits, compiled batched
    logits and gradient functions, and the split into a feature extractor and
    an affine head at the last hidden layer. Layers always run in inference
    mode (`training=False`). The NumPy methods validate their inputs once and
    call the runtime (`gm.runtime`) or the analysis modules.

    Args:
        model: a `keras.Model` or the path of a `.keras`/`.h5` file.
        bounds: `(low, high)` range of valid inputs. Defaults to `(0.0, 1.0)`.
        feature_layer: name of the layer whose output are the features.
            Defaults to `None`: the input of the final Dense layer.
        safe_mode: when loading from a file, refuse serialized Python code
            (Lambda layers). Defaults to `True`.
        input_shape: input shape without batch dimension, needed only for a
            subclassed model that was never called. Defaults to `None`.
        batch_size: examples per compiled call in the NumPy methods.
            Defaults to `128`.
        logits: `"auto"` (the model's output, a final softmax stripped) or
            `"pre-activation"` (the final Dense layer's pre-activation, for
            heads ending in ReLU, sigmoid, tanh...; one sigmoid unit `z` gives
            the scores `[0, z]`). Defaults to `"auto"`, which refuses such
            heads with a message naming this option.

    Example:
        >>> gm = GeometryModel("model.keras")  # doctest: +SKIP
        >>> result = gm.deepfool(x_test[:100])  # doctest: +SKIP
        >>> result.norms.mean()  # doctest: +SKIP
    """

    def __init__(self, model, bounds=(0.0, 1.0), feature_layer=None, *, safe_mode=True, input_shape=None,
                 batch_size=128, logits="auto"):
        self.source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        self.options = {"bounds": tuple(bounds), "feature_layer": feature_layer, "safe_mode": safe_mode,
                        "input_shape": input_shape, "batch_size": batch_size, "logits": logits}
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, safe_mode=safe_mode)
        if not isinstance(model, keras.Model):
            raise ModelError(f"expected a keras.Model or a path to a .keras/.h5/.onnx file; got {type(model).__name__}")
        self.model, self.dtype_note = as_float32(model)
        model = self.model
        self.bounds = check_bounds(bounds)
        self.input_shape = input_shape_of(model, input_shape)
        self.logits_mode = logits
        self.runtime = Runtime(resolve_head(model, feature_layer, logits), self.input_shape, batch_size)
        self.num_classes = self.runtime.num_classes
        self.batch_size = self.runtime.batch_size
        self._layer_graph = None

    # -- description -------------------------------------------------------

    @property
    def logits_source(self):
        """Where the logits come from (a sentence)."""
        return self.runtime.head.source

    @property
    def feature_layer(self):
        """Name of the layer whose output are the features, or None."""
        return self.runtime.head.feature_layer

    @property
    def has_feature_split(self):
        """Whether the model splits into features and an affine head (`split_error` says why not)."""
        return self.runtime.head.dense is not None

    @property
    def split_error(self):
        """Why the model has no feature/head split, or None."""
        return self.runtime.head.split_error

    @property
    def head(self):
        """`(W [D, L], b [L])` of the affine head as NumPy arrays."""
        return self.runtime.head.weights()

    def info(self):
        """A JSON-ready summary of the model."""
        from tfgeom.runtime import backend

        return {"name": self.model.name, "kind": type(self.model).__name__, "input_shape": list(self.input_shape),
                "classes": self.num_classes, "bounds": list(self.bounds), "logits": self.logits_mode,
                **self.runtime.head.describe(), "parameters": int(self.model.count_params()),
                "dtype_policy": self.dtype_note, "device": backend.device()["device"]}

    def recipe(self):
        """`(file_bytes, suffix, options)`: what another process needs to build this `GeometryModel`.

        The model file's bytes when it was loaded from a file (read here, on the
        driver), else the model saved in the native `.keras` format; the options
        are the constructor's (`safe_mode` included: workers honour it).
        """
        import tempfile

        if self.source is not None:
            with open(self.source, "rb") as f:
                return f.read(), os.path.splitext(self.source)[1] or ".keras", dict(self.options)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            self.model.save(path)
            with open(path, "rb") as f:
                return f.read(), ".keras", dict(self.options)

    def _require_split(self):
        if not self.has_feature_split:
            raise ModelError(f"this model has no feature/head split: {self.split_error}")
    # -- NumPy API (validated here, once) -------------------------------------

    def check(self, x, y=None):
        """Validate inputs (and labels) against this model; return them as arrays.

        `x` may be a `tf.data.Dataset` of `(x, y)` pairs or of inputs, batched or not (read whole).
        """
        if isinstance(x, tf.data.Dataset):
            x = from_tf_dataset(x)[0]
        x = check_inputs(x, self.input_shape, self.bounds)
        if y is None:
            return x
        return x, check_labels(y, self.num_classes, len(x))

    def logits(self, x, batch_size=None):
        """Pre-softmax scores `[N, L]` of inputs `x [N, ...]`."""
        return self.runtime.logits(self.check(x), batch_size)

    def predict(self, x, batch_size=None):
        """Predicted labels `[N]`."""
        return self.runtime.predict(self.check(x), batch_size)

    def agreement(self, x, batch_size=None):
        """Fraction of `x` on which the argmax of the analysed scores equals the model's own prediction."""
        return self.runtime.agreement(self.check(x), batch_size)

    def features(self, x, batch_size=None, executor=None):
        """Features `[N, D]` at the split layer (the input of the affine head)."""
        self._require_split()
        if executor is not None:
            return execution.run(self, "features", {"x": self.check(x)}, {}, executor)
        return self.runtime.features(self.check(x), batch_size)

    def gradient(self, x, coeffs, batch_size=None):
        """Logits `[N, L]` and the gradient `[N, ...]` of `sum_l coeffs[n, l] f_l(x_n)`."""
        x = self.check(x)
        coeffs = np.asarray(coeffs, np.float32)
        if coeffs.shape != (len(x), self.num_classes):
            raise InputError(f"coeffs must have shape ({len(x)}, {self.num_classes}); got {coeffs.shape}")
        return self.runtime.gradient(x, coeffs, batch_size)

    # -- analyses (faces over the functional modules) --------------------------
    #
    # Each per-example method takes `executor=`: a `tfgeom.execution.LocalExecutor` or
    # `tfgeom.execution.ray.RayExecutor` to run the inputs in shards on (default: in this
    # process, no shards). The core function does the sharding; these only forward.

    def deepfool(self, x, norm=2, executor=None, **kwargs):
        """Minimal adversarial perturbations; see `tfgeom.geometry.deepfool.deepfool`."""
        return deepfool.deepfool(self, x, norm=norm, executor=executor, **kwargs)

    def principal_curvatures(self, x, k=20, hvp="auto", method="lanczos", executor=None, **kwargs):
        """Principal curvatures near `x`; see `tfgeom.geometry.curvature.principal_curvatures`."""
        return curvature.principal_curvatures(self, x, k=k, hvp=hvp, method=method, executor=executor, **kwargs)

    def curvature_profile(self, x, k=20, **kwargs):
        """Curvature profile near `x`; see `tfgeom.geometry.curvature.curvature_profile`."""
        return curvature.curvature_profile(self, x, k=k, **kwargs)

    def boundary_sections(self, x, direction="curved", executor=None, **kwargs):
        """2-D boundary sections at `x`; see `tfgeom.geometry.sections.boundary_sections`."""
        return sections.boundary_sections(self, x, direction=direction, executor=executor, **kwargs)

    def connect(self, x1, x2, executor=None, **kwargs):
        """Paths inside classification regions between pairs; see `tfgeom.geometry.connectivity.connect`."""
        return connectivity.connect(self, x1, x2, executor=executor, **kwargs)

    def curved_subspace(self, x, dim=20, **kwargs):
        """The curved subspace from `x`; see `tfgeom.geometry.subspace.curved_subspace`."""
        return subspace.curved_subspace(self, x, dim=dim, **kwargs)

    def feature_space(self, x_train, y_train, **kwargs):
        """Training features and the head's exact geometry; see `tfgeom.features.feature_space.FeatureSpace`."""
        return FeatureSpace(self, x_train, y_train, **kwargs)

    @property
    def layer_graph(self):
        """The feature extractor as a `tfgeom.verify.graph.LayerGraph` (built once; for certification)."""
        self._require_split()
        if self._layer_graph is None:
            self._layer_graph = build_layer_graph(self.model)
        return self._layer_graph

    def certify(self, x, eps, norm="linf", method="crown", executor=None, **kwargs):
        """Certify balls around `x`; see `tfgeom.verify.certification.certify`."""
        return certification.certify(self, x, eps, norm=norm, method=method, executor=executor, **kwargs)

    def certify_segment(self, x_a, x_b, method="crown", **kwargs):
        """Certify segments `[x_a, x_b]`; see `tfgeom.verify.certification.certify_segment`."""
        return certification.certify_segment(self, x_a, x_b, method=method, **kwargs)

    def certified_radius(self, x, norm="linf", method="crown", executor=None, **kwargs):
        """Certified radii around `x` by bisection; see `tfgeom.verify.certification.certified_radius`.

        Without `upper` or `attack`, DeepFool in `norm` gives each search its upper end.
        """
        if kwargs.get("upper") is None and kwargs.get("attack") is None:
            x = self.check(x)
            kwargs["attack"] = deepfool.deepfool(self, x, norm=norm, batch_size=kwargs.get("batch_size"),
                                                 executor=executor)
        return certification.certified_radius(self, x, norm=norm, method=method, executor=executor, **kwargs)


@execution.stage("features")
def _features_shard(gm, start, x):
    return gm.runtime.features(x)


@execution.stage("logits")
def _logits_shard(gm, start, x):
    return gm.runtime.logits(x)
