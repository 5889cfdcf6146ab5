"""GeometryMonitor: a 2-epoch fit logs the geometry; the event file read back matches direct computations."""
import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgeom import GeometryModel
from tfgeom.errors import InputError
from tfgeom.keras import GeometryMonitor


def _events(log_dir):
    """`{tag: {step: value or array}}` from the TensorBoard event files under log_dir."""
    found = {}
    for path in glob.glob(str(log_dir / "geometry" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return found


def test_two_epoch_fit_logs_geometry_that_matches_direct_computation(digits, tmp_path):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_probe, y_probe = digits.x[:16], digits.y[:16]
    monitor = GeometryMonitor(x_probe, y_probe, log_dir=tmp_path, x_reference=digits.x_train[:300],
                              y_reference=digits.y_train[:300], curvature_k=3)
    model.fit(digits.x_train, digits.y_train, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    events = _events(tmp_path)
    for tag in ("deepfool_l2_median", "curvature_most_positive", "curvature_most_negative",
                "inside_training_hull", "feature_margin_median", "probe_accuracy", "deepfool_l2", "feature_margin"):
        assert set(events[f"geometry/{tag}"]) == {0, 1}, tag

    # After training the last logged values are those of the final weights: recompute them independently.
    gm = GeometryModel(model)
    norms = gm.deepfool(x_probe).norms
    assert float(events["geometry/deepfool_l2_median"][1]) == pytest.approx(float(np.median(norms)), rel=1e-4)
    # Feature-space margin: brute force over classes with the Keras layers' weights (float64 NumPy).
    hidden = np.maximum(x_probe.reshape(16, -1) @ model.layers[1].kernel.numpy() + model.layers[1].bias.numpy(), 0)
    w, b = model.layers[2].kernel.numpy().astype(np.float64), model.layers[2].bias.numpy().astype(np.float64)
    logits = hidden @ w + b
    direct = []
    for z in logits:
        c = z.argmax()
        direct.append(min((z[c] - z[j]) / np.linalg.norm(w[:, c] - w[:, j]) for j in range(10) if j != c))
    _, histograms = monitor.measure()  # the per-example values it logs as a histogram, final weights
    np.testing.assert_allclose(np.sort(histograms["feature_margin"]), np.sort(direct), rtol=1e-4)
    assert float(events["geometry/feature_margin_median"][1]) == pytest.approx(float(np.median(direct)), rel=1e-4)
    assert 0.0 <= float(events["geometry/inside_training_hull"][1]) <= 1.0
    assert len(monitor.history) == 2


def test_measures_and_every_are_checked():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(InputError, match="measures"):
        GeometryMonitor(x, [0, 1], measures=("deepfool", "speed"))
    with pytest.raises(InputError, match="x_reference"):
        GeometryMonitor(x, [0, 1], measures=("hull",))
    with pytest.raises(InputError, match="every"):
        GeometryMonitor(x, [0, 1], every=0, measures=("deepfool",))
