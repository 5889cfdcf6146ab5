"""Exceptions raised by tfgeom.

Every error tfgeom raises on bad input derives from `TfgeomError`; the CLI
turns these into a one-line message and exit code 2.
"""


class TfgeomError(Exception):
    """Base class: a problem the user can fix, with the fix in the message."""


class InputError(TfgeomError, ValueError):
    """Data or an argument is malformed (shape, NaN/Inf, bounds, labels, files)."""


class ModelError(TfgeomError, ValueError):
    """The model cannot be analysed as given (not a classifier, unsafe, unsupported)."""


class BackendError(TfgeomError, ImportError):
    """Keras is configured for a backend other than TensorFlow."""
