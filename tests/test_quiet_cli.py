"""The command line as a process: nothing from TensorFlow on stderr, path errors before TensorFlow loads,
custom classes registered with --import."""
import os
import subprocess
import sys
import textwrap

import pytest

ENTRY = "from tfgeom.cli.main import main; main()"
# a user's shell: none of the variables that change TensorFlow's or tfgeom's logging
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFGEOM_VERBOSE")}


def _tfgeom(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", ENTRY, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=CLEAN_ENV)


def test_info_prints_nothing_on_stderr(small_cnn_path):
    """`tfgeom info model.keras` (a real process, so TensorFlow's native log lines would reach fd 2)."""
    result = _tfgeom("info", small_cnn_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "feature_layer" in result.stdout


def test_verbose_lets_tensorflow_speak(small_cnn_path):
    """--verbose restores TensorFlow's own lines (this machine has no GPU: TensorFlow says so)."""
    quiet, loud = _tfgeom("info", small_cnn_path), _tfgeom("--verbose", "info", small_cnn_path)
    assert quiet.stderr == "" and len(loud.stderr) > 0


def test_path_errors_come_before_tensorflow_is_imported(tmp_path):
    """A missing model or data file is answered with exit 2 without importing TensorFlow at all."""
    code = textwrap.dedent(f"""
        import sys
        from tfgeom.cli.main import app
        for args in (["info", "missing.keras"], ["analyze", "missing.keras", "--data", "d.npz"],
                     ["deepfool", "{tmp_path / 'm.keras'}", "--data", "nowhere.npz"]):
            try:
                app(args)
            except SystemExit as exit:
                assert exit.code == 2, (args, exit.code)
        print("tensorflow" in sys.modules)
    """)
    (tmp_path / "m.keras").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty, valid zip archive
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert "does not exist" in result.stderr and "nowhere.npz" in result.stderr


def test_version():
    result = _tfgeom("--version")
    assert result.returncode == 0 and result.stdout.startswith("tfgeom ")


USER_CODE = '''
import keras


@keras.saving.register_keras_serializable(package="user")
class TinyNet(keras.Model):
    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(classes)

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}
'''


@pytest.fixture(scope="module")
def subclassed(tmp_path_factory):
    """A saved subclassed model and the .py file that defines (registers) its class."""
    root = tmp_path_factory.mktemp("user")
    (root / "usernet.py").write_text(USER_CODE)
    save = f"""
import sys, numpy as np
sys.path.insert(0, {str(root)!r})
import usernet
m = usernet.TinyNet()
m(np.zeros((1, 5), np.float32))
m.save({str(root / 'net.keras')!r})
"""
    subprocess.run([sys.executable, "-c", save], check=True, capture_output=True, timeout=300)
    return root


def test_subclassed_model_needs_import_and_loads_with_it(subclassed):
    """Without --import the error names the fix in one line (exit 2); with the file it loads and runs."""
    model = subclassed / "net.keras"
    without = _tfgeom("info", model)
    assert without.returncode == 2
    assert "--import" in without.stderr and len(without.stderr.strip().splitlines()) == 1
    with_file = _tfgeom("--import", subclassed / "usernet.py", "info", model, "--json", cwd=subclassed.parent)
    assert with_file.returncode == 0, with_file.stderr
    assert '"classes": 3' in with_file.stdout
    missing = _tfgeom("--import", subclassed / "nothere.py", "info", model)
    assert missing.returncode == 2 and "nothere.py" in missing.stderr
