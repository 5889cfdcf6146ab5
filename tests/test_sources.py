"""Data as users have it: image folders, Keras datasets (mocked: tests never download), tf.data, splits."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from tfgeom.runtime import data
from tfgeom.cli.main import app
from tfgeom.errors import InputError


def _write_folder(root, images, labels, names):
    """Write images (uint8 [N, H, W, C]) as PNGs in root/<class name>/ with keras' own encoder."""
    for k, (img, y) in enumerate(zip(images, labels)):
        folder = root / names[y]
        folder.mkdir(parents=True, exist_ok=True)
        keras.utils.save_img(folder / f"img{k:03d}.png", img, scale=False)


def test_image_folder_reads_pixels_and_labels_in_sorted_class_order(tmp_path):
    """PNG files in class folders come back with their exact pixel values (0..255, lossless) and the label
    of their folder's position in sorted order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(9, 6, 5, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2] * 3)
    names = ["bird", "cat", "dog"]
    _write_folder(tmp_path, images, labels, names)
    loaded = data.load(tmp_path, image_size=(6, 5), channels=3)
    assert loaded.x.shape == (9, 6, 5, 3) and loaded.x.dtype == np.float32
    # files are read folder by folder in sorted name order: match each loaded image to its source
    for x, y in zip(loaded.x, loaded.y):
        match = [k for k in range(9) if np.array_equal(images[k].astype(np.float32), x)]
        assert len(match) == 1 and labels[match[0]] == y
    assert "bird, cat, dog" in loaded.note


def test_folder_errors_are_one_line(tmp_path):
    """No class folders, no images, and a folder without a size are refused with what to do."""
    with pytest.raises(InputError, match="no class subfolders"):
        data.load(tmp_path, image_size=(4, 4))
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="no images"):
        data.load(tmp_path, image_size=(4, 4))
    with pytest.raises(InputError, match="image_size"):
        data.load(tmp_path)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28)), ("cifar10", (32, 32, 3))])
def test_keras_datasets_are_read_through_keras_loader(monkeypatch, name, shape):
    """keras:NAME calls keras.datasets.NAME.load_data (mocked here), adds a channel axis to 2-D images and
    flattens [N, 1] labels."""
    calls = []

    def fake_load_data():
        calls.append(name)
        rng = np.random.default_rng(0)
        y_shape = (-1,) if name == "mnist" else (-1, 1)
        make = (lambda n: (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                           rng.integers(0, 10, n).reshape(y_shape)))
        return make(20), make(10)

    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", fake_load_data)
    loaded = data.load(f"keras:{name}")
    assert calls == [name]
    channels = shape[2] if len(shape) == 3 else 1
    assert loaded.x.shape == (10, shape[0], shape[1], channels) and loaded.x_train.shape[0] == 20
    assert loaded.y.shape == (10,) and loaded.y_train.shape == (20,) and loaded.x.max() <= 255
    with pytest.raises(InputError, match="keras:cifar10"):
        data.load("keras:imagenet")


@pytest.mark.parametrize("batched", [False, True])
def test_tf_data_datasets_batched_or_not(batched):
    """A tf.data.Dataset of (x, y) gives back the same arrays whether it is batched or not."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(13, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, 13)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if batched:
        ds = ds.batch(5)
    loaded = data.load(ds)
    np.testing.assert_array_equal(loaded.x, x)
    np.testing.assert_array_equal(loaded.y, y)


def test_single_set_is_split_stratified_and_seeded():
    """with_training splits each class in half with a fixed seed, the two parts are disjoint and cover the
    set, the note says so, and split=False keeps one set."""
    rng = np.random.default_rng(0)
    x = np.arange(60, dtype=np.float32).reshape(60, 1)
    y = rng.integers(0, 3, 60)
    one = data.Dataset(x, y, name="one.npz")
    a, b = data.with_training(one, seed=3), data.with_training(one, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    assert sorted(np.concatenate([a.x, a.x_train])[:, 0].tolist()) == list(range(60))
    for c in range(3):
        assert abs(int((a.y_train == c).sum()) - int((a.y == c).sum())) <= 1
    assert "stratified" in a.note and "seed 3" in a.note
    assert data.with_training(one, split=False).x_train is None


def test_cli_info_reads_an_image_folder_and_reports_agreement(small_cnn_path, digits, tmp_path):
    """`info --data FOLDER` reads grayscale images at the model's input size (8x8x1) and reports how often
    the analysed scores agree with the model's own prediction (1.0: the scores are its logits)."""
    images = np.round(digits[0][:12] * 255).astype(np.uint8)
    _write_folder(tmp_path / "imgs", images, digits[1][:12], [str(c) for c in range(10)])
    result = CliRunner().invoke(app, ["info", str(small_cnn_path), "--data", str(tmp_path / "imgs"),
                                      "--bounds", "0", "255", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["scores_agree_with_model_prediction"] == 1.0 and info["agreement_examples"] == 12


def test_geometry_model_methods_take_a_tf_data_dataset(small_cnn, digits):
    """gm.deepfool(dataset) equals gm.deepfool(arrays) for a batched dataset of (x, y)."""
    from tfgeom import GeometryModel

    gm = GeometryModel(small_cnn)
    x = digits.x[:10]
    ds = tf.data.Dataset.from_tensor_slices((x, digits.y[:10])).batch(4)
    np.testing.assert_array_equal(gm.predict(ds), gm.predict(x))
    np.testing.assert_allclose(gm.deepfool(ds).norms, gm.deepfool(x).norms, rtol=1e-6)
