"""TensorFlow set up once, before Keras or TensorFlow is first imported.

`import tfgeom` sets the environment only (Keras' backend, TensorFlow's C++
log level) and does not import TensorFlow, so the command line can check its
arguments in milliseconds. `load()` imports TensorFlow and Keras the first time
it is called: quietly (TensorFlow's native code writes absl/CUDA lines straight
to the process's stderr while it loads, below Python, so they are silenced at
the file-descriptor level for the import only), then turns on memory growth for
every visible GPU. Set `TFGEOM_VERBOSE=1` to see TensorFlow's own lines, and
`TFGEOM_GPU_MEMORY_GROWTH=0` to let TensorFlow reserve all GPU memory.
"""
import contextlib
import os
import sys

from tfgeom.errors import BackendError

_state = {"loaded": False, "gpus": [], "memory_growth": None, "verbose": False}


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


def verbose():
    """True when the user asked for TensorFlow's own log lines (`TFGEOM_VERBOSE=1`, CLI `--verbose`)."""
    return _state["verbose"] or os.environ.get("TFGEOM_VERBOSE", "0") not in ("", "0", "false", "no")


def set_verbose(on=True):
    """Let TensorFlow's own log lines through (call before TensorFlow is imported to see its C++ lines)."""
    _state["verbose"] = bool(on)
    if on and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # read by TensorFlow's C++ runtime when it loads


@contextlib.contextmanager
def _native_silenced(fd):
    """Send file descriptor `fd` to /dev/null (C++ writes bypass `sys.stdout`/`sys.stderr`); restore it afterwards."""
    try:
        (sys.stdout if fd == 1 else sys.stderr).flush()
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no real stream (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _native_stderr_silenced():
    return _native_silenced(2)


def solver_output_silenced():
    """A context in which a native solver's prints to stdout go nowhere (HiGHS writes its copyright banner from
    C++ on the first call of every solver object, whatever its options); `--verbose` lets them through."""
    return contextlib.nullcontext() if verbose() else _native_silenced(1)


def _memory_growth_wanted():
    return os.environ.get("TFGEOM_GPU_MEMORY_GROWTH", "1") not in ("0", "false", "no")


def load():
    """Import TensorFlow and Keras (quietly unless verbose), set up GPUs; return the `tensorflow` module."""
    quiet = not verbose() and "tensorflow" not in sys.modules
    with _native_stderr_silenced() if quiet else contextlib.nullcontext():
        import keras  # noqa: F401  (keras imports tensorflow: both inside the silenced window)
        import tensorflow as tf

        if not _state["loaded"]:
            # Listing devices initialises CUDA (its failure lines come here, not at import).
            _state["gpus"] = tf.config.list_physical_devices("GPU")
    if not _state["loaded"]:
        _state["loaded"] = True
        if quiet:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
            tf.get_logger().setLevel("ERROR")  # e.g. "triggered tf.function retracing": not for users' eyes
        if _memory_growth_wanted():
            _state["memory_growth"] = _grow_gpu_memory(tf, _state["gpus"])
    return tf


def _grow_gpu_memory(tf, gpus):
    """Memory growth on every GPU, so analyses share a device with other work (impossible once it is in use)."""
    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # the device was initialised before tfgeom was loaded: leave it as the user set it
        return False
    return bool(gpus)


def device():
    """JSON-ready description of where analyses run: `{"device": ..., "gpus": n, "gpu_memory_growth": ...}`."""
    tf = load()
    gpus = _state["gpus"]
    name = "GPU:0" if gpus else "CPU:0"
    return {"device": f"/{name}", "gpus": len(gpus), "gpu_memory_growth": _state["memory_growth"],
            "tensorflow": tf.__version__}


# TensorFlow's C++ INFO/WARNING lines (CUDA probing, CPU features) drown the
# output of a command-line tool; keep errors. A value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_require_tensorflow_backend()
