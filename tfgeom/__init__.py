"""tfgeom: measure the geometry of trained Keras classifiers.

Decision-boundary distances (DeepFool), and, built on them, curvature,
connectivity, feature-space regions and certificates.

`import tfgeom` is cheap: TensorFlow is imported (quietly, see
`tfgeom.runtime.backend`) the first time a name below is used.
"""
import importlib

from tfgeom.runtime import backend  # noqa: F401  (sets the environment before keras is imported)
from tfgeom.errors import BackendError, InputError, ModelError, TfgeomError

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use, after TensorFlow is loaded quietly)
_LAZY = {
    "AttackResult": "tfgeom.geometry.deepfool",
    "DeepFoolResult": "tfgeom.geometry.deepfool",
    "GeometryModel": "tfgeom.model",
    "compare": "tfgeom.report.comparison",
    "data": "tfgeom.runtime.data",
    "zoo": "tfgeom.runtime.zoo",
    "keras": "tfgeom.keras",
    "train": "tfgeom.train",
    "distributed": "tfgeom.execution.ray",  # `tfgeom.distributed.RayExecutor`, as the docs of 0.1 wrote it
}
_MODULES = {"data", "zoo", "keras", "train", "distributed"}  # names that are modules, not attributes of one

__all__ = ["BackendError", "InputError", "ModelError", "TfgeomError", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'tfgeom' has no attribute {name!r}")
    backend.load()
    module = importlib.import_module(_LAZY[name])
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
