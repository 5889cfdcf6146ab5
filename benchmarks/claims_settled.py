"""Do the reports settle the papers' questions? Issue 23's targets on the demo CNN and a CIFAR-size CNN.

    python benchmarks/claims_settled.py [--out DIR] [--demo DIR] [--before REPORT_JSON] [--skip-cifar]

1. The demo CNN (`tfgeom demo`'s model and data, from `--demo DIR` or trained here as the demo trains it):
   `tfgeom analyze --limit 500` with every section.
2. A CIFAR-size CNN (32x32x3, Rescaling inside so it takes 0..255 pixels, four ReLU convolutions, a 256-unit
   ReLU layer, logits) trained for 3 epochs on colour images made from the built-in MNIST digits
   (`benchmarks/real_models.py`'s `colour_digits`; no CIFAR-10 download on this machine). Then
   `tfgeom analyze --limit 500 --bounds 0 255` with every section (defaults scaled for d = 3,072).

For each it prints the seconds per section, the flatness verdict with the estimated flat fraction and its
interval, the share of connected pairs that are proved, the certification section's time against its budget
and the rest of the report, the bracketed inputs, and every claim's verdict. With `--before REPORT_JSON` (the
demo's report.json from an earlier version) it prints the verdicts side by side.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ENTRY = [sys.executable, "-c", "from tfgeom.cli.main import main; main()"]


def cifar_cnn(keras):
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.Conv2D(filters, 3, activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(h))
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="cifar_cnn")


def analyze(model, data, out, extra=()):
    start = time.perf_counter()
    result = subprocess.run([*ENTRY, "analyze", str(model), "--data", str(data), "--limit", "500", "--out", str(out),
                             *map(str, extra)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"analyze {model} failed:\n{result.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    report["wall_seconds"] = time.perf_counter() - start
    return report


def describe(name, report):
    sections = report["sections"]
    seconds = {k: s.get("seconds", 0.0) for k, s in sections.items()}
    print(f"\n## {name} (wall {report['wall_seconds']:.0f} s)\n")
    print("seconds per section: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    cards = {c["key"]: c for c in report["claims"]}
    flat = cards["boundary_flat"]
    print(f"flatness: {flat['verdict']}, flat fraction {flat['value']:.3f} [{flat['low']:.3f}, {flat['high']:.3f}] "
          f"over {flat['examples']} points")
    conn = sections["connectivity"]["summary"]
    for kind in ("natural", "adversarial"):
        if f"{kind}_connected_pairs" in conn:
            found, proved = conn[f"{kind}_connected_pairs"], conn[f"{kind}_proved_pairs"]
            print(f"{kind} pairs: {conn[f'{kind}_connected']}; proved share {proved / max(found, 1):.2f}, "
                  f"{conn.get(f'{kind}_detoured_pairs', 0)} by a detour")
    cert = sections["certification"]["summary"]
    rest = sum(v for k, v in seconds.items() if k != "certification")
    print(f"certification: {seconds['certification']:.1f} s against a budget of {cert.get('budget_seconds')} s "
          f"({seconds['certification'] / rest:.0%} of the rest of the report, {rest:.0f} s); choices: "
          f"{cert.get('budget_choices')}")
    bracket = sections["certification"].get("distance_bracket", [])
    print(f"bracket: {sum(r['deepfool_norm'] is not None for r in bracket)} of {len(bracket)} covered inputs have "
          f"both ends; median DeepFool / certified radius {cert.get('median_deepfool_over_certified_radius')}")
    print("\n| claim | verdict | estimate [95% interval] | n |\n|---|---|---|---|")
    for c in report["claims"]:
        value = "-" if c["value"] is None else f"{c['value']:.3g} [{c['low']:.3g}, {c['high']:.3g}]"
        print(f"| {c['key']} | {c['verdict']} | {value} | {c['examples']} |")


def _verdict(card):
    return "-" if card is None else card["verdict"] if card["value"] is None else \
        f"{card['verdict']} ({card['value']:.3g})"


def compare(before, after):
    old = {c["key"]: c for c in before["claims"]}
    print("\n| claim | before | after |\n|---|---|---|")
    for c in after["claims"]:
        print(f"| {c['key']} | {_verdict(old.get(c['key']))} | {_verdict(c)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="claims-settled-"))
    parser.add_argument("--demo", help="a `tfgeom demo` folder (model.keras, data.npz) to use instead of training")
    parser.add_argument("--before", help="the demo's report.json from an earlier version, for the verdict table")
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import keras
    import tensorflow as tf

    import tfgeom
    from tfgeom.runtime import zoo

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from real_models import train_on_colour_digits

    digits = tfgeom.data.load("mnist-sample")
    if args.demo:
        demo_model, demo_data = pathlib.Path(args.demo) / "model.keras", pathlib.Path(args.demo) / "data.npz"
    else:
        demo_model, demo_data = out / "demo.keras", out / "demo.npz"
        zoo.train(zoo.demo_cnn(), digits.x_train, digits.y_train, epochs=10, seed=0).save(demo_model)
        np.savez_compressed(demo_data, x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x,
                            y_test=digits.y)
    demo = analyze(demo_model, demo_data, out / "demo-report")
    describe("demo CNN (28x28x1, analyze --limit 500)", demo)
    if args.before:
        compare(json.loads(pathlib.Path(args.before).read_text()), demo)
    if args.skip_cifar:
        return
    keras.utils.set_random_seed(0)
    model = cifar_cnn(keras)
    x_train, x_test = train_on_colour_digits(keras, tf, model, digits, "\ncifar_cnn")
    model.save(out / "cifar.keras")
    np.savez(out / "cifar.npz", x_train=x_train, y_train=digits.y_train, x_test=x_test, y_test=digits.y)
    cifar = analyze(out / "cifar.keras", out / "cifar.npz", out / "cifar-report", ("--bounds", 0, 255))
    describe("CIFAR-size CNN (32x32x3, 0..255, analyze --limit 500)", cifar)


if __name__ == "__main__":
    main()
