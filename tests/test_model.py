"""GeometryModel: logits, softmax stripping, feature split, compilation, loading."""
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfgeom
from tfgeom import GeometryModel, ModelError

from conftest import linear_model


def _pair(final):
    """Two models with the same weights: one ending in `final`, one in plain logits."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="tanh")(inputs)
    logits = keras.layers.Dense(4, name="head")(hidden)
    plain = keras.Model(inputs, logits)
    if final == "dense_softmax":
        out = keras.layers.Dense(4, activation="softmax", name="head2")(hidden)
        wrapped = keras.Model(inputs, out)
        wrapped.get_layer("head2").set_weights(plain.get_layer("head").get_weights())
    elif final == "softmax_layer":
        wrapped = keras.Model(inputs, keras.layers.Softmax()(logits))
    else:
        wrapped = keras.Model(inputs, keras.layers.Activation("softmax")(logits))
    return plain, wrapped


@pytest.mark.parametrize("final", ["dense_softmax", "softmax_layer", "activation_softmax"])
def test_softmax_is_stripped_to_the_logits_of_the_same_model_without_softmax(final):
    """Analyses see pre-softmax scores equal to a model built without softmax."""
    plain, wrapped = _pair(final)
    x = np.random.default_rng(0).uniform(size=(9, 6)).astype(np.float32)
    gm = GeometryModel(wrapped)
    np.testing.assert_allclose(gm.logits(x), plain.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert "softmax" in gm.logits_source


def test_subclassed_softmax_model_keeps_logit_differences():
    """A subclassed softmax model yields log-probabilities whose differences equal the logits'."""

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="tanh")
            self.out = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.out(self.hidden(x))

    net = Net()
    x = np.random.default_rng(1).uniform(size=(5, 4)).astype(np.float32)
    net(x)
    gm = GeometryModel(net)
    w, b = net.out.get_weights()
    z = np.tanh(x @ net.hidden.get_weights()[0] + net.hidden.get_weights()[1]) @ w + b
    got = gm.logits(x)
    np.testing.assert_allclose(got - got[:, :1], z - z[:, :1], atol=1e-4)
    with pytest.raises(ModelError, match="subclassed"):
        gm.features(x)


def test_features_times_head_equals_logits(small_cnn, digits):
    """The feature/head split reproduces the logits: features @ W + b."""
    gm = GeometryModel(small_cnn)
    w, b = gm.head
    feats = gm.features(digits.x[:20])
    assert feats.shape == (20, 32)
    np.testing.assert_allclose(feats @ w + b, gm.logits(digits.x[:20]), rtol=1e-4, atol=1e-4)
    assert gm.info()["feature_dim"] == 32


def test_inference_mode_is_used(small_cnn, digits):
    """Dropout and BatchNorm run in inference mode: logits are deterministic and match predict()."""
    gm = GeometryModel(small_cnn)
    x = digits.x[:16]
    a, b = gm.logits(x), gm.logits(x)
    np.testing.assert_array_equal(a, b)
    probs = small_cnn.predict(x, verbose=0)
    np.testing.assert_allclose(tf.nn.softmax(a).numpy(), probs, atol=1e-5)


def test_compiled_functions_do_not_retrace_for_new_batch_sizes(small_cnn, digits):
    """Batch sizes 1, 7 and 64 reuse one trace of logits, gradient and DeepFool."""
    gm = GeometryModel(small_cnn)
    for n in (1, 7, 64):
        gm.runtime.logits_program()(tf.constant(digits.x[:n]))
        gm.runtime.gradient_program()(tf.constant(digits.x[:n]), tf.ones([n, 10]))
        gm.deepfool(digits.x[:n], max_iter=3)
    assert gm.runtime.logits_program().experimental_get_tracing_count() == 1
    assert gm.runtime.gradient_program().experimental_get_tracing_count() == 1
    for program in gm.runtime.programs.values():
        assert program.experimental_get_tracing_count() == 1


def test_gradient_matches_closed_form_on_linear_model():
    """The gradient of sum_l c_l f_l for f = xW + b is W c."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    gm = GeometryModel(linear_model(w, b), bounds=(-10, 10))
    x = rng.uniform(-1, 1, size=(4, 5)).astype(np.float32)
    c = rng.normal(size=(4, 3)).astype(np.float32)
    z, g = gm.gradient(x, c)
    np.testing.assert_allclose(z, x @ w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, c @ w.T, rtol=1e-5, atol=1e-5)


def test_safe_mode_refuses_lambda_model_and_unsafe_loads_it(tmp_path):
    """A .keras file with a Lambda layer is refused unless safe_mode=False."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelError, match="safe_mode=False"):
        GeometryModel(path)
    assert GeometryModel(path, safe_mode=False).num_classes == 2


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda i: keras.Model(i, [keras.layers.Dense(3)(i), keras.layers.Dense(3)(i)]), "outputs"),
        (lambda i: keras.Model(i, keras.layers.Reshape((2, 2))(keras.layers.Dense(4)(i))), r"\[batch, classes\]"),
        (lambda i: keras.Model(i, keras.layers.Dense(1)(i)), 'one output unit.*logits="pre-activation"'),
        (lambda i: keras.Model(i, keras.layers.Dense(3, activation="sigmoid")(i)), 'sigmoid.*logits="pre-activation"'),
        (lambda i: keras.Model(i, keras.layers.Activation("tanh")(keras.layers.Dense(3)(i))),
         'tanh.*--logits pre-activation'),
    ],
    ids=["two-outputs", "rank-3-output", "one-unit", "sigmoid", "trailing-tanh"],
)
def test_non_classifier_models_are_refused_with_the_problem_named(build, message):
    """Several outputs, non-[N, L] outputs, one unit and squashing activations are refused, naming the fix."""
    with pytest.raises(ModelError, match=message):
        GeometryModel(build(keras.Input((4,))))


def test_feature_layer_override_and_bad_names(small_cnn):
    """feature_layer must name the layer feeding the final Dense; others are refused."""
    names = [layer.name for layer in small_cnn.layers]
    dense_hidden = [n for n in names if n.startswith("dense")][0]
    assert GeometryModel(small_cnn, feature_layer=dense_hidden).feature_layer == dense_hidden
    with pytest.raises(ModelError, match="not a layer"):
        GeometryModel(small_cnn, feature_layer="nope")
    conv = [n for n in names if n.startswith("conv")][0]
    with pytest.raises(ModelError, match="does not feed"):
        GeometryModel(small_cnn, feature_layer=conv)


def test_missing_and_corrupt_model_files(tmp_path):
    """Missing, mis-named and corrupt files get a ModelError naming the file."""
    with pytest.raises(ModelError, match="does not exist"):
        GeometryModel(tmp_path / "none.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="corrupt"):
        GeometryModel(bad)
    other = tmp_path / "model.txt"
    other.write_text("x")
    with pytest.raises(ModelError, match="extension"):
        GeometryModel(other)


def test_other_keras_backend_is_refused():
    """Importing tfgeom with KERAS_BACKEND=jax stops with a message naming the variable."""
    proc = subprocess.run(
        [sys.executable, "-c", "import tfgeom"],
        env={"KERAS_BACKEND": "jax", "PATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "KERAS_BACKEND" in proc.stderr and "BackendError" in proc.stderr


def test_backend_is_tensorflow():
    """tfgeom runs Keras on TensorFlow."""
    assert keras.backend.backend() == "tensorflow"
    assert tfgeom.__version__


def test_residual_functional_model_without_dense_head():
    """A functional model with Conv, BatchNorm, residual Add and pooled logits: DeepFool works, no feature split."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Add()([h, keras.layers.Conv2D(4, 3, padding="same")(h)])
    h = keras.layers.Conv2D(3, 1)(h)
    logits = keras.layers.GlobalAveragePooling2D()(h)
    gm = GeometryModel(keras.Model(inputs, keras.layers.Softmax()(logits)), bounds=(-5.0, 5.0))
    x = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    r = gm.deepfool(x)
    assert r.success.all()
    assert (gm.predict(r.x_adv) != gm.predict(x)).all()
    with pytest.raises(ModelError, match="not Dense"):
        gm.features(x)


def _mlp_with_head(head, units=4):
    """An MLP 6-16-units whose head is given by `head(dense_output_tensor)`; returns (model, pre-activation model)."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    dense = keras.layers.Dense(units)
    z = dense(hidden)
    return keras.Model(inputs, head(z, dense)), keras.Model(inputs, z)


@pytest.mark.parametrize("kind", ["relu-dense", "trailing-sigmoid", "binary-sigmoid", "binary-dense-sigmoid"])
def test_pre_activation_logits_are_the_final_dense_pre_activation(kind):
    """With logits="pre-activation" the scores equal the final Dense layer's output before its activation
    (computed by a separate Keras model); one unit z gives [0, z]; the head weights reproduce the scores."""
    keras.utils.set_random_seed(kind.__len__())
    units = 1 if kind.startswith("binary") else 4
    if kind == "relu-dense" or kind == "binary-dense-sigmoid":
        act = "relu" if kind == "relu-dense" else "sigmoid"
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        dense = keras.layers.Dense(units, activation=act)
        model = keras.Model(inputs, dense(hidden))
        pre = keras.Model(inputs, keras.ops.matmul(hidden, dense.kernel) + dense.bias)
    else:
        model, pre = _mlp_with_head(lambda z, d: keras.layers.Activation("sigmoid")(z), units)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    gm = GeometryModel(model, bounds=(-10, 10), logits="pre-activation")
    z = pre(x).numpy()
    expected = np.concatenate([np.zeros_like(z), z], axis=1) if units == 1 else z
    np.testing.assert_allclose(gm.logits(x), expected, rtol=1e-5, atol=1e-5)
    w, b = gm.head
    np.testing.assert_allclose(gm.features(x) @ w + b, expected, rtol=1e-4, atol=1e-4)
    own = (model(x).numpy()[:, 0] > 0.5).astype(int) if units == 1 else model(x).numpy().argmax(1)
    assert gm.agreement(x) == pytest.approx(float(np.mean(own == expected.argmax(1))))
    assert "pre-activation" in gm.logits_source
    if units == 1:  # sigmoid(z) > 0.5 exactly when z > 0: the two scores always agree with the model
        assert gm.agreement(x) == 1.0


def test_relu_head_agreement_counts_ties_of_clipped_scores():
    """A final ReLU that clips every score of an input to 0 makes the model's argmax 0 there; the agreement
    reported equals the fraction computed directly from the two outputs."""
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(3, activation="relu", kernel_initializer="ones", bias_initializer="zeros")
    model = keras.Model(inputs, dense(inputs))
    dense.kernel.assign(np.array([[1.0, -1.0, 0.5], [0.0, 1.0, -1.0], [1.0, 0.0, 0.0]], np.float32))
    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)
    gm = GeometryModel(model, bounds=(-10, 10), logits="pre-activation")
    z = x @ dense.kernel.numpy()
    direct = float(np.mean(np.maximum(z, 0).argmax(1) == z.argmax(1)))
    assert direct < 1.0  # the data has inputs whose scores are all negative
    assert gm.agreement(x) == pytest.approx(direct)


def test_mixed_precision_model_is_analysed_in_float32():
    """A model built under mixed_float16 is cloned in float32 with the same weights: its logits equal a
    float64 NumPy forward pass of the weights (tighter than float16 allows), and info() says so."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((5,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(hidden))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    gm = GeometryModel(model, bounds=(-10, 10))
    x = np.random.default_rng(2).normal(size=(32, 5)).astype(np.float32)
    (w1, b1), (w2, b2) = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in model.layers[1:]]
    exact = np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(gm.logits(x), exact, rtol=1e-5, atol=1e-5)
    assert "float32" in gm.info()["dtype_policy"] and "float16" in gm.info()["dtype_policy"]
