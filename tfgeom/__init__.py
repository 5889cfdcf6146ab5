"""tfgeom: measure the geometry of trained Keras classifiers.

Decision-boundary distances (DeepFool), and, built on them, curvature,
connectivity, feature-space regions and certificates.
"""
from tfgeom import backend  # noqa: F401  (must run before keras is imported)
from tfgeom import data, zoo
from tfgeom.deepfool import AttackResult, DeepFoolResult
from tfgeom.errors import BackendError, InputError, ModelError, TfgeomError
from tfgeom.model import GeometryModel

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "BackendError",
    "DeepFoolResult",
    "GeometryModel",
    "InputError",
    "ModelError",
    "TfgeomError",
    "data",
    "zoo",
]
