"""Shared fixtures: small models trained in seconds on data that ships with packages."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfgeom  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits, [N, 8, 8, 1] in [0, 1]."""
    return tfgeom.data.load("digits")


@pytest.fixture(scope="session")
def small_cnn(digits):
    """A trained CNN with BatchNorm, Dropout and a softmax Dense output (~97% on digits)."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return tfgeom.zoo.train(model, digits.x_train, digits.y_train, epochs=12, batch_size=32, seed=1)


@pytest.fixture(scope="session")
def small_cnn_path(small_cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "cnn.keras"
    small_cnn.save(path)
    return path


@pytest.fixture(scope="session")
def digits_npz(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x, y_test=digits.y)
    return path


def linear_model(weights, bias):
    """A functional linear classifier `f(x) = x W + b` on flat inputs."""
    d, classes = weights.shape
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(classes)])
    model.layers[-1].set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model
