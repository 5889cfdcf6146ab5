"""keras.applications networks (weights=None, 32x32x3: nothing downloaded) run through tfgeom.

The four families cover depthwise convolutions and ReLU6 (MobileNetV2), residual Add with BatchNorm
(ResNet50), Rescaling + Normalization inside the model and swish (EfficientNetB0) and Concatenate
(DenseNet121). A random network's logits are ~1e-12 and constant across inputs; its head is rescaled to
unit-variance, class-balanced logits so that boundaries are reachable (a trained network has that anyway).
The full report pipeline on all four is `benchmarks/applications.py` (minutes); here MobileNetV2 runs it.
"""
import keras
import numpy as np
import pytest

from tfgeom import GeometryModel
from tfgeom.runtime.data import Dataset
from tfgeom.report.runner import run_analyses

SIZE, CLASSES = 32, 4
FAMILIES = ["MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121"]


def balanced_application(name, x):
    """`keras.applications.<name>` with random weights and a head rescaled on `x` (see the module doc)."""
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    head = model.layers[-1]
    features = keras.Model(model.inputs, head.input)(x).numpy()
    z = features @ head.kernel.numpy()
    scale = z.std()
    head.kernel.assign(head.kernel.numpy() / scale)
    head.bias.assign(-np.median(z, axis=0) / scale)
    return model


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).uniform(0, 255, (24, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("name", FAMILIES)
def test_application_features_head_and_deepfool(name, pixels):
    """Features are the global-pooling output feeding the final Dense; features @ W + b equal the model's
    pre-softmax scores (recomputed with Keras from the softmax output's log); DeepFool moves 3 inputs to a
    point Keras itself classifies differently."""
    model = balanced_application(name, pixels)
    gm = GeometryModel(model, bounds=(0, 255), batch_size=8)
    layer = model.get_layer(gm.feature_layer)
    assert "pool" in type(layer).__name__.lower() or "pool" in layer.name
    w, b = gm.head
    logits = gm.features(pixels[:6]) @ w + b
    log_probs = np.log(model(pixels[:6]).numpy())
    np.testing.assert_allclose(logits - logits.mean(1, keepdims=True), log_probs - log_probs.mean(1, keepdims=True),
                               atol=1e-3)
    attack = gm.deepfool(pixels[:3], max_iter=20)
    assert attack.success.all()
    keras_labels = model(attack.x_adv).numpy().argmax(1)
    assert (keras_labels != model(pixels[:3]).numpy().argmax(1)).all()
    assert attack.x_adv.min() >= 0 and attack.x_adv.max() <= 255


def test_mobilenet_runs_every_analysis_of_the_report(pixels, tmp_path):
    """Every section but certification finishes on MobileNetV2 with tiny settings, none skipped."""
    model = balanced_application("MobileNetV2", pixels)
    gm = GeometryModel(model, bounds=(0, 255), batch_size=16)
    y = gm.predict(pixels)
    data = Dataset(pixels[:8], y[:8], pixels[8:], y[8:], name="random pixels")
    settings = {"curvature": {"points": 2, "k": 2, "sections": 1}, "subspace": {"fit": 2, "evaluate": 2, "dims": (2,)},
                "connectivity": {"pairs": 1, "adversarial_pairs": 1, "max_anchors": 2},
                "detection": {"calibration": 3, "evaluation": 3, "directions": 4, "attacks": "fgsm"},
                "feature_space": {"max_train": 16, "morph_steps": 3}, "deepfool": {"examples_shown": 2}}
    names = ["deepfool", "curvature", "subspace", "connectivity", "detection", "feature_space"]
    report = run_analyses(gm, data, tmp_path, only=names, settings=settings)
    for name in names:
        section = report["sections"][name]
        assert section["status"] == "done" and "skipped" not in section["summary"], (name, section["summary"])
    assert report["sections"]["deepfool"]["summary"]["l2_success_rate"] == 1.0
    assert report["model"]["feature_dim"] == 1280
