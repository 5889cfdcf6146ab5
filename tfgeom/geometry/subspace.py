"""The curved subspace `S_c` and whether it explains vulnerability (Fawzi et al., CVPR 2018, "Empirical study of the topology and geometry of deep networks").

`S_c` is spanned by the top eigenvectors (largest `|eigenvalue|`) of the
projected Hessian operator averaged over many boundary points,
`v -> mean_i P_i H_i P_i v / ||grad F_i||`, found by Lanczos on that operator
(each product is a batch of HVPs, chunked by `batch_size`; no `d x d` matrix).

`vulnerability` then measures, on inputs not used to find `S_c`:
(a) the fraction of each DeepFool perturbation's norm inside `S_c` vs inside a
random subspace of the same dimension (about `sqrt(m / d)`); (b) the fooling
rate of random perturbations of a fixed norm drawn inside `S_c` vs inside a
random subspace; (c) accuracy and median DeepFool norm after removing the
`S_c` component of the inputs.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom import execution
from tfgeom.geometry import curvature
from tfgeom.geometry.deepfool import deepfool
from tfgeom.errors import InputError
from tfgeom.geometry.lanczos import lanczos_extremes
from tfgeom.runtime.statistics import listed
from tfgeom.runtime.validation import check_positive_int


class CurvedSubspace(NamedTuple):
    """The curved subspace (NumPy).

    Fields:
        basis: `[m, d]` orthonormal rows, most curved first.
        values: `[m]` eigenvalues of the averaged operator (signed curvatures).
        points: number of boundary points averaged.
        hvp: `"exact"` or `"finite-difference"`.
        step: finite-difference step, or None.
    """

    basis: np.ndarray
    values: np.ndarray
    points: int
    hvp: str
    step: object


def averaged_operator(logits_fn, hvp, step, chunk):
    """`op(z, coeffs, normals, gnorms, v [1, d]) -> [1, d]`: mean of `P_i H_i P_i v / ||grad F_i||`."""
    total = summed_operator(logits_fn, hvp, step, chunk)

    def op(z, coeffs, normals, gnorms, v):
        return total(z, coeffs, normals, gnorms, v) / tf.cast(tf.shape(z)[0], v.dtype)

    return op


def summed_products(gm, z, coeffs, normals, gnorms, v, hvp, step, chunk):
    """`[1, d]` sum over the points of `P_i H_i P_i v / ||grad F_i||` (NumPy; one shard's part of the mean)."""
    d = int(np.prod(gm.input_shape))
    program = gm.runtime.program(
        ("subspace-sum", hvp, step, chunk),
        lambda: summed_operator(gm.runtime.logits_fn, hvp, step, chunk),
        [gm.runtime.spec(), tf.TensorSpec([None, gm.num_classes], tf.float32), tf.TensorSpec([None, d], tf.float32),
         tf.TensorSpec([None], tf.float32), tf.TensorSpec([1, d], tf.float32)],
    )
    return program(z, coeffs, normals, gnorms, np.asarray(v, np.float32)).numpy()


def summed_operator(logits_fn, hvp, step, chunk):
    """`op(z, coeffs, normals, gnorms, v [1, d]) -> [1, d]`: sum of `P_i H_i P_i v / ||grad F_i||`, in chunks."""
    point_op = curvature.projected_operator(logits_fn, hvp, step)

    def op(z, coeffs, normals, gnorms, v):
        count = tf.shape(z)[0]

        def body(start, total):
            end = tf.minimum(start + chunk, count)
            part = point_op(
                z[start:end], coeffs[start:end], normals[start:end], gnorms[start:end], tf.tile(v, [end - start, 1])
            )
            return end, total + tf.reduce_sum(part, axis=0, keepdims=True)

        _, total = tf.while_loop(lambda s, t: s < count, body, (tf.constant(0), tf.zeros_like(v)))
        return total

    return op


def curved_subspace(gm, x, dim=20, hvp="auto", steps=None, step=None, seed=0, batch_size=None, attack=None,
                    executor=None):
    """Find `S_c` from the DeepFool boundary points of `x`.

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs whose boundary points are averaged.
        dim: dimension `m` of `S_c`. Defaults to `20`.
        hvp: `"exact"`, `"finite-difference"` or `"auto"`. Defaults to `"auto"`.
        steps: Lanczos steps. Defaults to `min(d - 1, 2 dim + 40)`.
        step: finite-difference step. Defaults to `hvp.default_step`.
        seed: seed of the start vector. Defaults to `0`.
        batch_size: points per chunk of HVPs. Defaults to the model's.
        attack: a `DeepFoolResult` for `x` to reuse. Defaults to `None`.
        executor: a `tfgeom.execution.executor` executor: each Lanczos product, a sum over
            the points, is computed per shard on the workers and summed on the
            driver (the Lanczos iteration itself runs on the driver). Defaults
            to `None`: one compiled program in this process.

    Returns:
        A `CurvedSubspace`.
    """
    dim = check_positive_int("dim", dim)
    d = int(np.prod(gm.input_shape))
    if 2 * dim > d - 1:
        raise InputError(f"dim={dim} is too large for inputs of dimension {d}; use dim <= {(d - 1) // 2}")
    hvp, step = curvature.choose_hvp(gm, hvp, step)
    attack = attack if attack is not None else deepfool(gm, x, batch_size=batch_size, executor=executor)
    index = np.flatnonzero(attack.success)
    if len(index) == 0:
        raise InputError("DeepFool found no boundary point for these inputs; cannot average curvature")
    z = attack.boundary_points[index]
    coeffs = curvature.margin_coefficients(attack.labels[index], attack.boundary_classes[index], gm.num_classes)
    _, grads = gm.runtime.gradient(z, coeffs, batch_size)
    grads = grads.reshape(len(z), -1)
    gnorms = np.linalg.norm(grads, axis=1)
    normals = grads / np.maximum(gnorms, 1e-30)[:, None]
    steps = check_positive_int("steps", steps) if steps is not None else min(d - 1, 2 * dim + 40)
    chunk = check_positive_int("batch_size", batch_size or gm.batch_size)
    v0 = np.random.default_rng(seed).normal(size=(1, d)).astype(np.float32)
    normals, gnorms = normals.astype(np.float32), gnorms.astype(np.float32)
    if executor is not None:
        values, vectors = _distributed_lanczos(gm, executor, (z, coeffs, normals, gnorms), v0, steps, dim,
                                               dict(hvp=hvp, step=step, chunk=chunk))
    else:
        values, vectors = _lanczos(gm, (z, coeffs, normals, gnorms), v0, steps, dim, hvp, step, chunk)
    order = np.argsort(-np.abs(values))[:dim]
    basis, _ = np.linalg.qr(vectors[order].T)  # re-orthonormalise, keep the order
    basis = basis.T * np.sign(np.sum(basis.T * vectors[order], axis=1, keepdims=True))
    return CurvedSubspace(basis.astype(np.float32), values[order], len(z), hvp, step)


def _distributed_lanczos(gm, executor, points, v0, steps, dim, params):
    """Lanczos on the driver (eager), each product summed over the points' shards on the executor's workers."""
    z, coeffs, normals, gnorms = points
    inputs = {"z": z, "coeffs": coeffs, "normals": normals, "gnorms": gnorms}

    def op(v):
        total = executor.map(gm, "subspace_products", inputs, dict(params, v=v.numpy()), keep=False)
        return tf.constant(total / len(z), tf.float32)

    values, vectors = lanczos_extremes(op, tf.constant(v0), steps, dim)
    return values.numpy()[0], vectors.numpy()[0]


def _lanczos(gm, points, v0, steps, dim, hvp, step, chunk):
    """Lanczos on the averaged operator in one compiled program."""
    d = v0.shape[1]
    op = averaged_operator(gm.runtime.logits_fn, hvp, step, chunk)

    def build():
        def program(z, coeffs, normals, gnorms, v0):
            return lanczos_extremes(lambda v: op(z, coeffs, normals, gnorms, v), v0, steps, dim)

        return program

    program = gm.runtime.program(
        ("subspace", steps, dim, hvp, step, chunk),
        build,
        [
            gm.runtime.spec(),
            tf.TensorSpec([None, gm.num_classes], tf.float32),
            tf.TensorSpec([None, d], tf.float32),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([1, d], tf.float32),
        ],
    )
    values, vectors = (t.numpy()[0] for t in program(*points, v0))
    return values, vectors


def random_subspace(d, m, rng):
    """`[m, d]` orthonormal rows spanning a uniformly random `m`-dimensional subspace."""
    q, _ = np.linalg.qr(rng.normal(size=(d, m)))
    return q.T.astype(np.float32)


def _energy(basis, r):
    return np.linalg.norm(r @ basis.T, axis=1) / np.maximum(np.linalg.norm(r, axis=1), 1e-30)


def _fooled(gm, x, labels, basis, eps, draws, rng):
    """`[N]` fraction of `draws` random perturbations of norm `eps` inside `basis` that change each label."""
    n, d = len(x), x[0].size
    fooled = np.zeros(n)
    for _ in range(draws):
        v = rng.normal(size=(n, basis.shape[0])).astype(np.float32) @ basis
        v *= eps / np.linalg.norm(v, axis=1, keepdims=True)
        xp = np.clip(x.reshape(n, d) + v, *gm.bounds).reshape(x.shape)
        fooled += gm.runtime.predict(xp) != labels
    return fooled / draws


class Vulnerability(NamedTuple):
    """Experiments (a), (b), (c) on evaluation inputs.

    Fields:
        eps: L2 norm of the random perturbations of (b), input units.
        accuracy: accuracy (or agreement with the clean predictions) of the original inputs.
        median_norm: median DeepFool L2 norm of the original inputs.
        rows: one dict per `m`: `dim`, `energy_curved`, `energy_random`,
            `sqrt_m_over_d`, `fooling_curved`, `fooling_random`,
            `accuracy_removed`, `median_norm_removed`.
        noise_sweep: for the largest `m`, one dict per noise scale: `scale`,
            `eps`, `fooling_curved`, `fooling_random`.
        half_fooling_norm: for the largest `m`, the noise norm at which the
            fooling rate first reaches 50% (linear interpolation on the sweep),
            `{"curved": norm or None, "random": norm or None}` (None: not reached).
        per_input: for the largest `m`, `[N]` lists for intervals: `energy_curved`,
            `energy_random` (None where DeepFool failed), `fooled_curved`,
            `fooled_random` (fraction of draws at `eps`), `correct`,
            `correct_removed`, `norm`, `norm_removed` (None where DeepFool failed).
    """

    eps: float
    accuracy: float
    median_norm: float
    rows: list
    noise_sweep: list
    half_fooling_norm: dict = {}
    per_input: dict = {}


def _half_norm(sweep, key):
    """Noise norm where `sweep[key]` first reaches 0.5, linearly interpolated (None if never)."""
    norms, rates = [0.0] + [r["eps"] for r in sweep], [0.0] + [r[key] for r in sweep]
    for i in range(1, len(rates)):
        if rates[i] >= 0.5:
            a, b = rates[i - 1], rates[i]
            return float(norms[i - 1] + (0.5 - a) / max(b - a, 1e-12) * (norms[i] - norms[i - 1]))
    return None


def vulnerability(gm, x, y, subspace, dims=(5, 10, 20), eps=None, draws=5, seed=0,
                  noise_scales=(0.5, 1.0, 2.0, 4.0, 8.0), attack=None, executor=None):
    """Experiments (a), (b), (c) of the module docstring for each `m` in `dims`.

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` evaluation inputs (not those used to find `subspace`).
        y: `[N]` true labels, or None to measure agreement with the clean predictions.
        subspace: a `CurvedSubspace` with at least `max(dims)` directions.
        dims: subspace dimensions to sweep. Defaults to `(5, 10, 20)`.
        eps: L2 norm of the random perturbations in (b). Defaults to the
            median DeepFool L2 norm on `x`.
        draws: random perturbations per input in (b). Defaults to `5`.
        seed: seed. Defaults to `0`.
        noise_scales: for the largest `m`, (b) is repeated at these multiples
            of `eps` (the fooling-rate curve). Defaults to `(0.5, 1, 2, 4, 8)`.
        attack: a DeepFool L2 `AttackResult` of `x` to reuse. Defaults to `None`: run DeepFool.
        executor: where the DeepFool runs on the projected inputs go (`tfgeom.execution.executor`). Defaults to `None`.

    Returns:
        A `Vulnerability`.
    """
    rng = np.random.default_rng(seed)
    dims = [m for m in dims if m <= len(subspace.basis)]
    if not dims:
        raise InputError(f"dims must not exceed the subspace dimension {len(subspace.basis)}")
    n, d = len(x), int(np.prod(gm.input_shape))
    clean = attack if attack is not None else deepfool(gm, x, executor=executor)
    labels = clean.labels
    truth = labels if y is None else np.asarray(y)
    ok = clean.success
    r = clean.perturbation.reshape(n, d)
    eps = float(np.median(clean.norms_l2[ok])) if eps is None else float(eps)
    rows, per_input = [], {}
    for m in dims:
        basis = subspace.basis[:m]
        rand = random_subspace(d, m, rng)
        flat = x.reshape(n, d)
        removed = np.clip(flat - (flat @ basis.T) @ basis, *gm.bounds).reshape(x.shape)
        adv = deepfool(gm, removed, executor=executor)
        energy_curved, energy_random = _energy(basis, r), _energy(rand, r)
        fooled_curved = _fooled(gm, x, labels, basis, eps, draws, rng)
        fooled_random = _fooled(gm, x, labels, rand, eps, draws, rng)
        rows.append(
            {
                "dim": m,
                "energy_curved": float(np.mean(energy_curved[ok])),
                "energy_random": float(np.mean(energy_random[ok])),
                "sqrt_m_over_d": float(np.sqrt(m / d)),
                "fooling_curved": float(np.mean(fooled_curved)),
                "fooling_random": float(np.mean(fooled_random)),
                "accuracy_removed": float(np.mean(adv.labels == truth)),
                "median_norm_removed": float(np.median(adv.norms_l2[adv.success])) if adv.success.any() else None,
            }
        )
        per_input = {"energy_curved": listed(energy_curved, ok), "energy_random": listed(energy_random, ok),
                     "fooled_curved": fooled_curved.tolist(), "fooled_random": fooled_random.tolist(),
                     "correct": (labels == truth).tolist(), "correct_removed": (adv.labels == truth).tolist(),
                     "norm": listed(clean.norms_l2, ok), "norm_removed": listed(adv.norms_l2, adv.success)}
    m = dims[-1]
    rand = random_subspace(d, m, rng)
    sweep = [
        {
            "scale": float(scale),
            "eps": scale * eps,
            "fooling_curved": float(np.mean(_fooled(gm, x, labels, subspace.basis[:m], scale * eps, draws, rng))),
            "fooling_random": float(np.mean(_fooled(gm, x, labels, rand, scale * eps, draws, rng))),
        }
        for scale in noise_scales
    ]
    half = {"curved": _half_norm(sweep, "fooling_curved"), "random": _half_norm(sweep, "fooling_random")}
    return Vulnerability(eps, float(np.mean(labels == truth)), float(np.median(clean.norms_l2[ok])), rows, sweep,
                         half, per_input)


@execution.stage("subspace_products", merge=sum)
def _subspace_products_shard(gm, start, z, coeffs, normals, gnorms, v, hvp, step, chunk):
    return summed_products(gm, z, coeffs, normals, gnorms, v, hvp, step, chunk)
