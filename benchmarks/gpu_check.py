"""Every analysis on the GPU against the CPU result, with times: the one script to run when a GPU is lent.

    python benchmarks/gpu_check.py [--limit N] [--out DIR]

Trains the demo CNN for 2 epochs on the built-in digits (once, on the CPU, saved to OUT), then runs, in two
fresh processes (the CPU one with CUDA_VISIBLE_DEVICES=-1, so no program is traced for the other device):

- `tfgeom analyze` on the first N test digits (every analysis of the report: DeepFool, curvature profile and
  spectrum, curved subspace, connectivity with proved paths, detection, feature space, certification);
- certification of 8 inputs with IBP, CROWN and alpha-CROWN, and branch and bound (beta-CROWN) on an MLP;
- a VNN-LIB property decided by input splitting on a 5-input ReLU MLP (`_small_inputs`);
- a model comparison of the CNN with itself (`tfgeom.compare`, DeepFool and curvature).

Then prints, per section and per check, both times, the GPU speed-up, and the largest relative difference of
every number the two runs share (report summaries, margins, radii, verdicts). Without a GPU the second process
runs on the CPU too and says so.
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

HERE = pathlib.Path(__file__).resolve()


def _prepare(out):
    import keras

    import tfgeom

    data = tfgeom.data.load("mnist-sample")
    cnn = tfgeom.zoo.train(tfgeom.zoo.demo_cnn(), data.x_train, data.y_train, epochs=2, seed=0)
    cnn.save(out / "cnn.keras")
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                            keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    tfgeom.zoo.train(mlp, data.x_train, data.y_train, epochs=3, seed=0).save(out / "mlp.keras")
    np.savez(out / "data.npz", x_train=data.x_train, y_train=data.y_train, x_test=data.x, y_test=data.y)
    _small_inputs(out)


def _small_inputs(out):
    """A 5-input ReLU MLP (2 x 50 units, random weights) and a VNN-LIB property on `[-1, 1]^5` that holds: its
    threshold is a tenth of the output's spread below the least of 20,000 random points (input splitting proves it
    in ~2 s on 2 CPU cores)."""
    import keras

    keras.utils.set_random_seed(1)
    small = keras.Sequential([keras.Input((5,))] + [keras.layers.Dense(50, activation="relu") for _ in range(2)]
                             + [keras.layers.Dense(5)])
    small.save(out / "small_inputs.keras")
    y = small.predict(np.random.default_rng(0).uniform(-1, 1, (20000, 5)).astype(np.float32), verbose=0)[:, 0]
    threshold = float(y.min() - 0.1 * (y.max() - y.min()))
    (out / "property.vnnlib").write_text(" ".join(
        [f"(declare-const X_{i} Real)" for i in range(5)] + [f"(declare-const Y_{j} Real)" for j in range(5)]
        + [f"(assert (<= X_{i} 1.0)) (assert (>= X_{i} -1.0))" for i in range(5)]
        + [f"(assert (<= Y_0 {threshold!r}))"]))


def _side(out, folder, limit):
    """One device's run: every number and time into `folder/side.json`."""
    import tensorflow as tf

    import tfgeom
    from tfgeom.report.runner import run_analyses
    from tfgeom.verify import bab, properties, vnnlib

    result = {"device": [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU only"], "checks": {}}
    gm = tfgeom.GeometryModel(str(out / "cnn.keras"), bounds=(0.0, 1.0))
    data = tfgeom.data.validate(tfgeom.data.load(str(out / "data.npz")), gm)
    cut = data._replace(x=data.x[:limit], y=data.y[:limit])
    start = time.perf_counter()
    report = run_analyses(gm, cut, folder / "report", seed=0)
    result["analyze_seconds"] = time.perf_counter() - start
    result["sections"] = {name: {"seconds": s.get("seconds"), "summary": s.get("summary", {})}
                          for name, s in report["sections"].items()}
    x, y = cut.x[:8], cut.y[:8]
    for method in ("ibp", "crown", "alpha-crown"):
        start = time.perf_counter()
        cert = gm.certify(x, 0.005, norm="linf", method=method, cls=y)
        result["checks"][f"certify_{method}"] = {"seconds": time.perf_counter() - start,
                                                 "values": np.asarray(cert.margins)[np.isfinite(cert.margins)].tolist()}
    mlp = tfgeom.GeometryModel(str(out / "mlp.keras"), bounds=(0.0, 1.0))
    radius = mlp.certified_radius(cut.x[:4], method="crown", cls=cut.y[:4], rtol=0.01).radius
    start = time.perf_counter()
    verdicts = [bab.verify(mlp, cut.x[i], 1.2 * radius[i], cut.y[i], time_limit=60).verdict for i in range(4)]
    result["checks"]["bab_beta_crown"] = {"seconds": time.perf_counter() - start, "verdicts": verdicts}
    small = tfgeom.GeometryModel(str(out / "small_inputs.keras"))
    start = time.perf_counter()
    decision = properties.decide(small, vnnlib.parse(out / "property.vnnlib"), timeout=120)
    result["checks"]["input_splitting"] = {"seconds": time.perf_counter() - start, "verdicts": [decision.verdict]}
    start = time.perf_counter()
    comparison = tfgeom.compare([gm, gm], cut, folder / "compare", names=["a", "b"], only=["deepfool", "curvature"])
    result["checks"]["compare"] = {"seconds": time.perf_counter() - start,
                                   "values": [r["value"] for r in comparison.pairs["b"]["rows"].values()]}
    (folder / "side.json").write_text(json.dumps(result, default=float))


def _numbers(value, prefix=""):
    """`{path: float}` of every number in a nested summary."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{prefix}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{prefix}[{i}]").items()}
    return {}


def _difference(a, b):
    shared = set(a) & set(b)
    worst, where = 0.0, ""
    for key in shared:
        if "seconds" in key or not (np.isfinite(a[key]) and np.isfinite(b[key])):  # times differ by design
            continue
        rel = abs(a[key] - b[key]) / max(1.0, abs(a[key]))
        if rel > worst:
            worst, where = rel, key
    return worst, where, len(shared)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="gpu-check-"))
    parser.add_argument("--side", choices=["cpu", "gpu"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if args.side:
        _side(out, out / args.side, args.limit)
        return
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); "
                    f"import gpu_check, pathlib; gpu_check._prepare(pathlib.Path({str(out)!r}))"],
                   check=True, env=dict(env, CUDA_VISIBLE_DEVICES="-1"))
    runs = {}
    for side, extra in (("cpu", {"CUDA_VISIBLE_DEVICES": "-1"}), ("gpu", {})):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(HERE), "--side", side, "--limit", str(args.limit), "--out", str(out)],
                       check=True, env=dict(env, **extra))
        runs[side] = json.loads((out / side / "side.json").read_text())
        print(f"{side}: {runs[side]['device']}, whole side {time.perf_counter() - start:.1f} s", flush=True)
    cpu, gpu = runs["cpu"], runs["gpu"]
    if gpu["device"] == ["CPU only"]:
        print("no GPU visible: both sides ran on the CPU (the comparison below checks determinism only)")
    print(f"\n| check | CPU s | GPU s | speed-up | largest relative difference (where, of how many numbers) |")
    print("|---|---|---|---|---|")
    for name in cpu["sections"]:
        a, b = cpu["sections"][name], gpu["sections"].get(name, {})
        worst, where, n = _difference(_numbers(a["summary"]), _numbers(b.get("summary", {})))
        print(f"| analyze: {name} | {a['seconds']:.1f} | {b.get('seconds', float('nan')):.1f} | "
              f"{a['seconds'] / max(b.get('seconds') or 1e-9, 1e-9):.2f}x | {worst:.2e} ({where}, {n}) |")
    for name, a in cpu["checks"].items():
        b = gpu["checks"][name]
        if "verdicts" in a:
            same = "verdicts equal" if a["verdicts"] == b["verdicts"] else f"verdicts differ: {a['verdicts']} vs {b['verdicts']}"
        else:
            worst, where, n = _difference(_numbers(a["values"]), _numbers(b["values"]))
            same = f"{worst:.2e} ({where}, {n})"
        print(f"| {name} | {a['seconds']:.1f} | {b['seconds']:.1f} | {a['seconds'] / max(b['seconds'], 1e-9):.2f}x | "
              f"{same} |")
    print(f"| analyze (whole) | {cpu['analyze_seconds']:.1f} | {gpu['analyze_seconds']:.1f} | "
          f"{cpu['analyze_seconds'] / gpu['analyze_seconds']:.2f}x | |")


if __name__ == "__main__":
    main()
