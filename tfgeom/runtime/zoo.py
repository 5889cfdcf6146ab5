"""Small reference classifiers: the demo CNN and an MLP, with a seeded trainer.

Used by `tfgeom demo`, the benchmarks and the examples, so that all of them
measure the same models.
"""
import keras


def demo_cnn(input_shape=(28, 28, 1), classes=10, activation="relu"):
    """The demo CNN: two conv/pool blocks, a 128-unit hidden layer, softmax output.

    `activation="softplus"` gives a smooth twin (non-zero exact Hessians).
    """
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, activation=activation),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation=activation),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation=activation),
            keras.layers.Dense(classes, activation="softmax"),
        ],
        name="demo_cnn",
    )


def mlp(input_shape=(28, 28, 1), classes=10, hidden=(256, 256)):
    """A ReLU MLP with the given hidden widths and a logits output."""
    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers, name="mlp")


def train(model, x, y, epochs=8, batch_size=64, seed=0, verbose=0):
    """Train with Adam and sparse cross-entropy (from logits or probabilities); returns `model`."""
    keras.utils.set_random_seed(seed)
    classifier = getattr(model, "classifier", model)  # a tfgeom.train wrapper trains the classifier it wraps
    from_logits = classifier.layers[-1].get_config().get("activation") != "softmax"
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose, shuffle=True)
    return model
