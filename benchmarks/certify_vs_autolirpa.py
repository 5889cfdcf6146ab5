"""tfgeom's IBP / CROWN / alpha-CROWN against auto_LiRPA (the reference PyTorch verifier), side by side.

Networks (trained here on the MNIST sample, seeded): an MLP 784-64-32-10, a
CNN conv(8,4x4,s2)-conv(16,4x4,s2)-fc100, the same CNN with BatchNorm after
each convolution, and the demo CNN (conv32-pool-conv64-pool-128). Each is
rebuilt in PyTorch with the Keras weights; the logits must agree to 1e-5
before anything is compared.

For the same inputs and the same L-inf balls clipped to [0, 1] both
libraries bound the margins `f_c - f_j` (c the label): the report gives the
largest difference of the bounds, the fraction of margins where tfgeom is
tighter / looser by more than 1e-4, the certified fraction and the warm time
per input for a batch of `--batch` inputs and for one input per call, and the
time of certified radii by the same bisection (8 steps on every input,
CROWN) on both sides. auto_LiRPA runs in a worker process of its own.

Needs the `bench` extra (PyTorch CPU and auto_LiRPA; see ../shared/wheels).

    python benchmarks/certify_vs_autolirpa.py [--batch 50] [--eps 0.01] [--networks mlp,cnn,cnn_bn,demo]
"""
import argparse
import multiprocessing
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm  # noqa: E402

import tfgeom  # noqa: E402

torch.set_num_threads(os.cpu_count())


def keras_networks():
    """`(name, model, eps)`: the four networks, trained a few epochs on the MNIST sample."""
    data = tfgeom.data.load("mnist-sample")
    keras.utils.set_random_seed(0)
    L = keras.layers
    mlp = keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Dense(64, activation="relu"),
                            L.Dense(32, activation="relu"), L.Dense(10)], name="mlp")
    cnn = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(8, 4, strides=2, activation="relu"),
                            L.Conv2D(16, 4, strides=2, activation="relu"), L.Flatten(),
                            L.Dense(100, activation="relu"), L.Dense(10)], name="cnn")
    cnn_bn = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(8, 4, strides=2), L.BatchNormalization(),
                               L.ReLU(), L.Conv2D(16, 4, strides=2), L.BatchNormalization(), L.ReLU(),
                               L.Flatten(), L.Dense(100, activation="relu"), L.Dense(10)], name="cnn_bn")
    demo = tfgeom.zoo.demo_cnn()
    for name, model, eps, epochs in (("mlp", mlp, 0.01, 8), ("cnn", cnn, 0.01, 8), ("cnn_bn", cnn_bn, 0.01, 8),
                                     ("demo", demo, 0.005, 5)):
        yield name, tfgeom.zoo.train(model, data.x_train, data.y_train, epochs=epochs), eps, data


class Flatten(torch.nn.Module):
    """Keras' Flatten (channels last): NCHW -> NHWC -> rows."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if x.dim() == 4 else x.reshape(x.shape[0], -1)


def torch_twin(model):
    """A PyTorch `Sequential` with the Keras model's weights (NCHW inputs, logits out)."""
    L = keras.layers
    mods = []
    for layer in model.layers:
        if isinstance(layer, L.Conv2D):
            k, b = layer.get_weights()
            conv = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], stride=layer.strides, padding=0)
            conv.weight.data = torch.tensor(k.transpose(3, 2, 0, 1))
            conv.bias.data = torch.tensor(b)
            mods.append(conv)
        elif isinstance(layer, L.Dense):
            w, b = layer.get_weights()
            dense = torch.nn.Linear(*w.shape)
            dense.weight.data, dense.bias.data = torch.tensor(w.T), torch.tensor(b)
            mods.append(dense)
        elif isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            bn = torch.nn.BatchNorm2d(len(gamma), eps=layer.epsilon)
            for name, value in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var)):
                getattr(bn, name).data = torch.tensor(value)
            mods.append(bn)
        elif isinstance(layer, L.MaxPooling2D):
            mods.append(torch.nn.MaxPool2d(layer.pool_size, layer.strides))
        elif isinstance(layer, L.Flatten):
            mods.append(Flatten())
        elif isinstance(layer, (L.ReLU, L.Dropout)):
            pass
        else:
            raise ValueError(f"no twin for {layer}")
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        if isinstance(layer, L.ReLU) or act == "relu":
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def spec(labels, classes=10):
    """auto_LiRPA's specification `C [N, classes-1, classes]`: rows `e_c - e_j`, j != c."""
    c = np.zeros((len(labels), classes - 1, classes), np.float32)
    for i, y in enumerate(labels):
        others = [j for j in range(classes) if j != y]
        c[i, np.arange(classes - 1), y] = 1
        c[i, np.arange(classes - 1), others] = -1
    return torch.tensor(c)


def ours_as_reference(margins, labels):
    """tfgeom's `[N, classes]` margins (inf at c) in auto_LiRPA's order `[N, classes-1]`."""
    keep = np.ones(margins.shape, bool)
    keep[np.arange(len(labels)), labels] = False
    return margins[keep].reshape(len(labels), -1)


def timed(fn, repeat=5):
    """`(result, seconds)`: the fastest of `repeat` calls after one warm-up call (caches, compilers).

    The fastest, not the mean, and each after a pause (the other library's thread pools go idle)."""
    out = fn()
    times = []
    for _ in range(repeat):
        time.sleep(0.3)
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def reference(net, x, labels, eps, method, repeat=5):
    """auto_LiRPA's `(lower bounds, seconds)`, computed in the worker process (no TensorFlow threads)."""
    return WORKER.apply(reference_here, (net, x, labels, eps, method, repeat))


def reference_here(net, x, labels, eps, method, repeat=5):
    x_t = torch.tensor(x.transpose(0, 3, 1, 2))
    lo, hi = torch.clamp(x_t - eps, 0, 1), torch.clamp(x_t + eps, 0, 1)
    bounded = BoundedModule(net, torch.zeros_like(x_t[:1]), device="cpu", verbose=False)
    c = spec(labels)

    def run():
        inp = BoundedTensor(x_t, PerturbationLpNorm(norm=np.inf, eps=eps, x_L=lo, x_U=hi))
        with torch.no_grad() if method != "alpha-CROWN" else torch.enable_grad():
            lb, _ = bounded.compute_bounds(x=(inp,), C=c, method=method, bound_upper=False)
        return lb.detach().numpy()

    return timed(run, repeat)


def reference_radius(net, x, labels, upper, steps):
    """The reference's certified radii by the same bisection as tfgeom's (`_midpoint`), all inputs every step."""
    return WORKER.apply(reference_radius_here, (net, x, labels, upper, steps))


def reference_radius_here(net, x, labels, upper, steps):
    from tfgeom.verify.certification import _midpoint

    x_t = torch.tensor(x.transpose(0, 3, 1, 2))
    bounded = BoundedModule(net, torch.zeros_like(x_t[:1]), device="cpu", verbose=False)
    c = spec(labels)
    with torch.no_grad():  # warm-up, as on tfgeom's side
        bounded.compute_bounds(x=(BoundedTensor(x_t, PerturbationLpNorm(norm=np.inf, eps=0.01)),), C=c,
                               method="CROWN", bound_upper=False)
    start = time.perf_counter()
    lo, hi = np.zeros(len(x)), np.full(len(x), upper)
    for _ in range(steps):
        mid = _midpoint(lo, hi)
        e = torch.tensor(mid, dtype=torch.float32)[:, None, None, None]
        inp = BoundedTensor(x_t, PerturbationLpNorm(norm=np.inf, eps=e, x_L=torch.clamp(x_t - e, 0, 1),
                                                    x_U=torch.clamp(x_t + e, 0, 1)))
        with torch.no_grad():
            lb, _ = bounded.compute_bounds(x=(inp,), C=c, method="CROWN", bound_upper=False)
        ok = lb.min(dim=1).values.numpy() > 0
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return lo, time.perf_counter() - start


def radius_comparison(name, gm, net, x, labels, upper=0.1, steps=8):
    """Certified radii by CROWN and bisection, `steps` steps on every input (tiny rtol: no early stop)."""
    gm.certified_radius(x, method="crown", cls=labels, upper=upper, steps=steps, rtol=1e-6)  # warm-up: compiles
    start = time.perf_counter()
    ours = gm.certified_radius(x, method="crown", cls=labels, upper=upper, steps=steps, rtol=1e-6).radius
    t_ours = time.perf_counter() - start
    time.sleep(0.3)
    ref, t_ref = reference_radius(net, x, labels, upper, steps)
    agree = np.mean(np.isclose(ours, ref, rtol=1e-3, atol=1e-7))
    print(f"{name} | CROWN radius, {steps} bisection steps | {len(x)} | radii equal on {agree:.2f} | | | "
          f"median {np.median(ours):.4f} / {np.median(ref):.4f} | {1e3 * t_ours / len(x):.1f} | "
          f"{1e3 * t_ref / len(x):.1f} | {t_ref / t_ours:.2f}x", flush=True)


def compare(name, ours, ref, t_ours, t_ref, n, method, tol=1e-4):
    diff = ours - ref
    print(f"{name} | {method} | {n} | {np.abs(diff).max():.2e} (median {np.median(diff):+.1e}) | "
          f"{np.mean(diff > tol):.3f} | "
          f"{np.mean(diff < -tol):.3f} | {np.mean(ours.min(1) > 0):.2f} / {np.mean(ref.min(1) > 0):.2f} | "
          f"{1e3 * t_ours / n:.1f} | {1e3 * t_ref / n:.1f} | {t_ref / t_ours:.2f}x", flush=True)


WORKER = None


def main():
    global WORKER
    # auto_LiRPA runs in its own process: TensorFlow's thread pools spin after work and made the
    # reference's times vary 2-30 fold when both libraries shared one process
    WORKER = multiprocessing.get_context("spawn").Pool(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--single", type=int, default=5, help="inputs timed one per call")
    parser.add_argument("--networks", default="mlp,cnn,cnn_bn,demo")
    parser.add_argument("--methods", default="IBP,CROWN,alpha-CROWN")
    parser.add_argument("--radius", action=argparse.BooleanOptionalAction, default=True,
                        help="also time certified radii by bisection")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
          f"tfgeom {tfgeom.__version__}, torch {torch.__version__}, TF threads default")
    print("network | method | inputs | max abs diff (median of tfgeom - ref) | tfgeom tighter | tfgeom looser | "
          "certified (tfgeom / ref) | "
          "ms/input tfgeom | ms/input ref | throughput ratio")
    ours_method = {"IBP": "ibp", "CROWN": "crown", "alpha-CROWN": "alpha-crown"}
    for name, model, eps, data in keras_networks():
        if name not in args.networks.split(","):
            continue
        gm = tfgeom.GeometryModel(model)
        net = torch_twin(model)
        x, labels = data.x[:args.batch], data.y[:args.batch]
        with torch.no_grad():
            twin = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
        gap = np.abs(twin - gm.logits(x)).max()
        assert gap < 1e-5 * max(1.0, np.abs(twin).max()), f"{name}: PyTorch twin differs from Keras by {gap}"
        for method in [m for m in args.methods.split(",") if m]:
            repeat = 1 if method == "alpha-CROWN" else 5  # seconds per call: one timed call after the warm-up
            cert, t_ours = timed(lambda: gm.certify(x, eps, method=ours_method[method], cls=labels), repeat)
            ours = ours_as_reference(cert.margins, labels)
            ref, t_ref = reference(net, x, labels, eps, method, repeat)
            compare(name, ours, ref, t_ours, t_ref, len(x), method)
            k = args.single
            _, t1 = timed(lambda: [gm.certify(x[i:i + 1], eps, method=ours_method[method], cls=labels[i:i + 1])
                                   for i in range(k)], repeat)
            t1_ref = sum(reference(net, x[i:i + 1], labels[i:i + 1], eps, method, repeat)[1] for i in range(k))
            print(f"{name} | {method} one per call | {k} | | | | | {1e3 * t1 / k:.1f} | {1e3 * t1_ref / k:.1f} | "
                  f"{t1_ref / t1:.2f}x", flush=True)
        if args.radius:
            radius_comparison(name, gm, net, x, labels)


if __name__ == "__main__":
    main()
