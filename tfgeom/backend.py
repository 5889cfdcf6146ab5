"""Make sure Keras runs on the TensorFlow backend before it is imported."""
import os
import sys

from tfgeom.errors import BackendError


def _require_tensorflow_backend():
    requested = os.environ.get("KERAS_BACKEND")
    if requested is None:
        if "keras" in sys.modules:  # imported before tfgeom: ask it.
            import keras

            requested = keras.backend.backend()
        else:
            os.environ["KERAS_BACKEND"] = "tensorflow"
            return
    if requested != "tensorflow":
        raise BackendError(
            f"tfgeom needs Keras on the TensorFlow backend, but KERAS_BACKEND is "
            f"{requested!r}; set KERAS_BACKEND=tensorflow (or unset it) and restart Python."
        )


# TensorFlow's C++ INFO/WARNING lines (CUDA probing, CPU features) drown the
# output of a command-line tool; keep errors. A value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_require_tensorflow_backend()
