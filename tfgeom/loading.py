"""Load Keras models from disk safely, with errors that say what to do."""
import os
import zipfile

import keras

from tfgeom.errors import ModelError

_EXTENSIONS = (".keras", ".h5", ".hdf5")


def load_model(path, safe_mode=True):
    """Load a `.keras` or `.h5` classifier without compiling it.

    Args:
        path: file path of the saved model.
        safe_mode: refuse models that carry serialized Python code (a `Lambda`
            layer's bytecode). Set to `False` only for files you trust.
            Defaults to `True`.

    Returns:
        The `keras.Model`.

    Raises:
        ModelError: missing, unreadable or unsafe file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"model file {path!r} does not exist; pass the path of a .keras or .h5 file")
    if not path.endswith(_EXTENSIONS):
        raise ModelError(
            f"model file {path!r} has an unknown extension; save it with model.save('model.keras')"
        )
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ModelError(f"model file {path!r} is corrupt (not a .keras zip archive); save the model again")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except ValueError as err:
        text = str(err)
        if "safe_mode" in text or "unsafe" in text:
            raise ModelError(
                f"model file {path!r} contains serialized Python code (e.g. a Lambda layer), which "
                "safe mode refuses; if you trust the file, pass safe_mode=False (CLI: --unsafe)"
            ) from None
        raise ModelError(f"cannot load model {path!r}: {_first_line(text)}") from err
    except (TypeError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise ModelError(
            f"cannot load model {path!r}: {_first_line(str(err))} (custom layers must be registered "
            "with keras.saving.register_keras_serializable and imported before loading)"
        ) from err


def _first_line(text):
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line[:300]
