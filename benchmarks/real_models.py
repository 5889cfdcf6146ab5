"""Real-size models through the command line: wall time, time per section, peak memory (issue 11 targets).

    python benchmarks/real_models.py [--out DIR] [--skip-mobilenet]

1. A ResNet-style CIFAR-size model (32x32x3, Rescaling inside so it takes 0..255 pixels, three residual
   stages with BatchNorm, ~0.7 M parameters) trained for 3 epochs on colour images the script makes from
   the built-in MNIST digits (resized to 32x32, tinted per image, 0..255). Then
   `tfgeom analyze --limit 20 --bounds 0 255` with every section but certification.
   Target: within 10 minutes on 2 cores, peak resident memory below 6 GiB.
2. keras.applications MobileNetV2 at 224x224x3 (weights=None, head rescaled to unit-variance,
   class-balanced logits as in tests/test_applications.py; 8 random 0..255 images, their predictions as
   labels, 16 more as training split): `tfgeom analyze --limit 4 --only deepfool,curvature,feature_space`.
   Target: peak memory below 8 GiB; time per section reported.
3. `tfgeom info` on a missing file (target under 1 s) and on a real file (target: nothing on stderr).

Each tfgeom run is a separate process under /usr/bin/time (peak RSS = its maximum resident set size).
Prints a markdown table for docs/benchmarks.md.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ENTRY = [sys.executable, "-c", "from tfgeom.cli.main import main; main()"]


def resnet_cifar(keras):
    """Three stages of two residual blocks (32, 64, 128 filters), BatchNorm, global pooling, linear head."""
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(h))
    for filters, stride in ((32, 1), (64, 2), (128, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            shortcut = h
            y = keras.layers.Conv2D(filters, 3, strides=s, padding="same", use_bias=False)(h)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(y))
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = keras.layers.BatchNormalization(momentum=0.9)(y)
            if s != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.BatchNormalization(momentum=0.9)(
                    keras.layers.Conv2D(filters, 1, strides=s, use_bias=False)(shortcut))
            h = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="resnet_cifar")


def colour_digits(tf, x, seed):
    """MNIST digits as 32x32 RGB images in 0..255 with a random tint per image and a dim random background."""
    rng = np.random.default_rng(seed)
    big = tf.image.resize(x, (32, 32)).numpy()
    tint = rng.uniform(0.3, 1.0, size=(len(x), 1, 1, 3))
    background = rng.uniform(0.0, 0.3, size=(len(x), 1, 1, 3))
    return (255 * np.clip(background + big * tint, 0, 1)).astype(np.float32)


def train_on_colour_digits(keras, tf, model, digits, name):
    """Train `model` for 3 epochs on `colour_digits` of the built-in digits; print its size, time and accuracy.
    Returns `(x_train, x_test)`, the colour images it was trained and tested on."""
    x_train, x_test = colour_digits(tf, digits.x_train, 0), colour_digits(tf, digits.x, 1)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == digits.y).mean())
    print(f"{name}: {model.count_params():,} parameters, trained in {time.perf_counter() - start:.0f} s, "
          f"test accuracy {accuracy:.3f}", flush=True)
    return x_train, x_test


def run(args, log):
    """Run tfgeom in a process under /usr/bin/time; return (seconds, peak MiB, stderr)."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *ENTRY, *map(str, args)], capture_output=True,
                            text=True)
    seconds = time.perf_counter() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"tfgeom {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    lines = result.stderr.strip().splitlines()
    peak = int(lines[-1].split()[1]) / 1024
    return seconds, peak, "\n".join(lines[:-1])


def sections(report):
    data = json.loads(pathlib.Path(report).read_text())
    return {name: s.get("seconds") for name, s in data["sections"].items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="real-models-"))
    parser.add_argument("--skip-mobilenet", action="store_true")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    import tfgeom

    rows = []
    # 1. ResNet-style CIFAR-size model
    digits = tfgeom.data.load("mnist-sample")
    keras.utils.set_random_seed(0)
    model = resnet_cifar(keras)
    x_train, x_test = train_on_colour_digits(keras, tf, model, digits, "resnet_cifar")
    model.save(out / "resnet.keras")
    np.savez(out / "cifarish.npz", x_train=x_train, y_train=digits.y_train, x_test=x_test, y_test=digits.y)
    seconds, peak, _ = run(["analyze", out / "resnet.keras", "--data", out / "cifarish.npz", "--bounds", 0, 255,
                            "--limit", 20, "--out", out / "resnet-report", "--only",
                            "deepfool,curvature,subspace,connectivity,detection,feature_space"], out / "resnet.log")
    rows.append(("ResNet-style CIFAR (32x32x3, %d params), analyze --limit 20, all but certification"
                 % model.count_params(), seconds, peak, sections(out / "resnet-report" / "report.json"),
                 "10 min, 6 GiB"))
    print(rows[-1], flush=True)

    # 2. MobileNetV2 at 224x224x3
    if not args.skip_mobilenet:
        keras.utils.set_random_seed(0)
        net = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
        pixels = np.random.default_rng(0).uniform(0, 255, (24, 224, 224, 3)).astype(np.float32)
        head = net.layers[-1]
        z = keras.Model(net.inputs, head.input).predict(pixels, verbose=0) @ head.kernel.numpy()
        head.kernel.assign(head.kernel.numpy() / z.std())
        head.bias.assign(-np.median(z, axis=0) / z.std())
        labels = net.predict(pixels, verbose=0).argmax(1)
        net.save(out / "mobilenet.keras")
        np.savez(out / "pixels.npz", x_test=pixels[:8], y_test=labels[:8], x_train=pixels[8:], y_train=labels[8:])
        del net
        seconds, peak, _ = run(["analyze", out / "mobilenet.keras", "--data", out / "pixels.npz", "--bounds", 0, 255,
                                "--limit", 4, "--batch-size", 4, "--out", out / "mobilenet-report", "--only",
                                "deepfool,curvature,feature_space"], out / "mobilenet.log")
        rows.append(("MobileNetV2 224x224x3 (weights=None), analyze --limit 4 --only deepfool,curvature,feature_space",
                     seconds, peak, sections(out / "mobilenet-report" / "report.json"), "8 GiB"))
        print(rows[-1], flush=True)

    # 3. info
    start = time.perf_counter()
    missing = subprocess.run([*ENTRY, "info", out / "missing.keras"], capture_output=True, text=True)
    missing_s = time.perf_counter() - start
    real = subprocess.run([*ENTRY, "info", out / "resnet.keras"], capture_output=True, text=True)
    print("\n| run | wall time | peak memory | seconds per section | target |\n|---|---|---|---|---|")
    for name, seconds, peak, per, target in rows:
        per_text = ", ".join(f"{k} {v:.0f} s" for k, v in per.items())
        print(f"| {name} | {seconds:.0f} s | {peak / 1024:.2f} GiB | {per_text} | {target} |")
    print(f"| `tfgeom info missing.keras` | {missing_s:.2f} s (exit {missing.returncode}) | | | under 1 s |")
    print(f"| `tfgeom info resnet.keras` | stderr: {len(real.stderr)} characters | | | nothing on stderr |")


if __name__ == "__main__":
    main()
