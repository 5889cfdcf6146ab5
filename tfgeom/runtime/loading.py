"""Load Keras models from disk safely, with errors that say what to do."""
import importlib
import importlib.util
import os
import sys
import zipfile

from tfgeom.errors import ModelError

_EXTENSIONS = (".keras", ".h5", ".hdf5", ".onnx")


def check_path(path):
    """Refuse a missing, misnamed or corrupt model file (file checks only: no TensorFlow import)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"model file {path!r} does not exist; pass the path of a .keras, .h5 or .onnx file")
    if not path.endswith(_EXTENSIONS):
        raise ModelError(
            f"model file {path!r} has an unknown extension; save it with model.save('model.keras')"
        )
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ModelError(f"model file {path!r} is corrupt (not a .keras zip archive); save the model again")
    return path


def import_user_code(sources):
    """Import modules or `.py` files that register custom layers/models before a model is loaded.

    Args:
        sources: module names (`mypackage.layers`) or paths of `.py` files.

    Returns:
        The imported modules' names, in order.

    Raises:
        ModelError: a file that does not exist or a module that cannot be imported (one line).
    """
    names = []
    for source in sources:
        source = os.fspath(source)
        try:
            if source.endswith(".py"):
                if not os.path.isfile(source):
                    raise ModelError(f"--import {source!r}: no such file; pass a .py file or an importable module name")
                name = "tfgeom_user_" + os.path.splitext(os.path.basename(source))[0]
                spec = importlib.util.spec_from_file_location(name, source)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # so Keras can find classes registered from it by module name
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(source)
        except ModelError:
            raise
        except SystemExit as err:  # the user's code ended the process: say so instead of ending silently
            raise ModelError(f"--import {source!r} called sys.exit({err.code!r}) while being imported; "
                             "import a module that only defines and registers classes") from None
        except Exception as err:  # the user's code: any error it raises is reported in one line
            raise ModelError(f"--import {source!r} failed: {type(err).__name__}: {_first_line(str(err))}") from err
        names.append(module.__name__)
    return names


def load_model(path, safe_mode=True):
    """Load a `.keras` or `.h5` classifier without compiling it, or convert an `.onnx` one.

    An ONNX model becomes a Keras model in the ONNX model's own input layout, checked against ONNX Runtime
    (`tfgeom.runtime.onnx_models.convert`; needs `pip install "tfgeom[onnx]"`).

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
    import keras

    path = check_path(path)
    if path.endswith(".onnx"):
        from tfgeom.runtime.onnx_models import convert

        return convert(path).model
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
            f"cannot load model {path!r}: {_first_line(str(err))} (custom layers and subclassed models must "
            "be registered with keras.saving.register_keras_serializable and imported before loading; "
            "CLI: --import your_module or --import your_file.py)"
        ) from err


def _first_line(text):
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line[:300]
