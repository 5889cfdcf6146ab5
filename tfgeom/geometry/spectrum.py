"""The whole spectrum of principal curvatures at boundary points, by stochastic Lanczos quadrature.

"Flat in most directions" (docs/science.md A.3) is a statement about all
`d - 1` principal curvatures at a boundary point, not the `2k` extremes that
`tfgeom.geometry.curvature` computes. For the operator `A = P H P / ||grad F||`
on the tangent space, the spectral measure `mu = (1 / (d - 1)) sum_i delta(kappa_i)`
is estimated by stochastic Lanczos quadrature (Ubaru, Chen, Saad 2017; the
`density()` of PyHessian does the same for weight-space Hessians): for
Rademacher probes `u` projected onto the tangent space, `m` Lanczos steps from
`u / ||u||` give a tridiagonal whose eigenvalues `theta_j` and squared first
eigenvector components `w_j` are a Gauss quadrature, `sum_j w_j g(theta_j) ~
u^T g(A) u / ||u||^2`, whose mean over probes estimates `integral g dmu`.

With `g` the indicator of `|kappa| <= flat_tol * kappa_max`, that is the
fraction of flat directions. Its error bar adds the probes' standard error
and the quadrature's resolution (half the weight of the nodes next to each
threshold, which a finer quadrature could move to either side). All points
and probes run in lock-step in one compiled program (the same projected
operator as the extremes), a probe per row.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom import execution
from tfgeom.errors import InputError
from tfgeom.geometry.curvature import (choose_hvp, lanczos_batch, margin_coefficients, projected_operator,
                                       unit_normal)
from tfgeom.geometry.deepfool import deepfool
from tfgeom.geometry.lanczos import lanczos_quadrature
from tfgeom.runtime.validation import check_choice, check_positive_int

PROBE_STREAM = 1  # probes' random numbers: their own stream of (seed, example index), apart from Lanczos starts


class Spectrum(NamedTuple):
    """Estimated densities of principal curvatures at `M` boundary points (NumPy).

    Fields:
        index: `[M]` which of the inputs each row belongs to (inputs where DeepFool failed have no row).
        nodes: `[M, P, m]` Ritz values of each of the `P` probes' quadratures (1/input units).
        weights: `[M, P, m]` their quadrature weights (each probe's sum to 1).
        kappa_max: `[M]` the largest `|kappa|` at the point (the flatness threshold's scale).
        flat_fraction: `[M]` estimated fraction of the `d - 1` tangent directions with
            `|kappa| <= flat_tol * kappa_max`.
        flat_error: `[M]` its error bar (probes' standard error and quadrature resolution, combined).
        flat_tol: the relative threshold.
        input_dim: `d`.
        hvp: `"exact"` or `"finite-difference"`.
        step: the finite-difference step, or None.
    """

    index: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    kappa_max: np.ndarray
    flat_fraction: np.ndarray
    flat_error: np.ndarray
    flat_tol: float
    input_dim: int
    hvp: str
    step: object

    def rows(self, rows):
        """The rows of inputs `rows` (a slice of the caller's examples), `index` renumbered from its start."""
        keep = (self.index >= (rows.start or 0)) & (self.index < rows.stop)
        return self._replace(index=self.index[keep] - (rows.start or 0), **{
            f: getattr(self, f)[keep] for f in ("nodes", "weights", "kappa_max", "flat_fraction", "flat_error")})

    @property
    def examples(self):
        """None: rows exist for some inputs only."""
        return None

    def cdf(self, t):
        """`[M, T]` estimated fraction of each point's tangent directions with `kappa <= t` (`t [T]`)."""
        t = np.asarray(t, np.float64)
        mass = (self.nodes[..., None] <= t) * self.weights[..., None]  # [M, P, m, T]
        return mass.sum(axis=2).mean(axis=1)


def quadrature_program(logits_fn, steps, hvp, step):
    """`program(z [N, ...], coeffs [N, L], probes [N, d]) -> (nodes [N, m], weights [N, m])`, one probe per row."""
    op = projected_operator(logits_fn, hvp, step)

    def program(z, coeffs, probes):
        normal, gnorm = unit_normal(logits_fn, z, coeffs)

        def tangent(v):
            return v - tf.reduce_sum(v * normal, 1, keepdims=True) * normal

        return lanczos_quadrature(lambda v: op(z, coeffs, normal, gnorm, v), probes, steps, project=tangent)

    return program


def flat_fraction(nodes, weights, threshold):
    """`(fraction [M], error [M])` of mass with `|kappa| <= threshold [M]`, from `[M, P, m]` quadratures."""
    inside = np.abs(nodes) <= threshold[:, None, None]
    per_probe = (weights * inside).sum(axis=2)  # [M, P]
    probes = per_probe.shape[1]
    spread = per_probe.std(axis=1, ddof=1) / np.sqrt(probes) if probes > 1 else np.zeros(len(nodes))
    # resolution: the node nearest each threshold could fall on either side in a finer quadrature
    near = np.zeros(per_probe.shape)
    for edge in (-threshold, threshold):
        gap = np.abs(nodes - edge[:, None, None])
        nearest = gap.argmin(axis=2)
        near += np.take_along_axis(weights, nearest[..., None], axis=2)[..., 0]
    return per_probe.mean(axis=1), np.sqrt(spread ** 2 + (0.5 * near.mean(axis=1)) ** 2)


def curvature_spectrum(gm, x, probes=4, steps=40, flat_tol=0.1, hvp="auto", step=None, seed=0, batch_size=None,
                       attack=None, curvatures=None, start=0, executor=None):
    """Densities of principal curvatures over all `d - 1` tangent directions at the boundary points of `x`.

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs.
        probes: Rademacher probes per point. Defaults to `4`.
        steps: Lanczos steps per probe (quadrature nodes). Defaults to `40` (at most `d - 1`).
        flat_tol: a direction is flat when `|kappa| <= flat_tol * kappa_max`. Defaults to `0.1`.
        hvp: `"exact"`, `"finite-difference"` or `"auto"`, as in `principal_curvatures`. Defaults to `"auto"`.
        step: finite-difference `h`. Defaults to `hvp.default_step`.
        seed: seed of the probes (drawn per example index). Defaults to `0`.
        batch_size: probe rows per compiled call. Defaults to the model's (lowered to fit memory).
        attack: a DeepFool L2 `AttackResult` of `x` to reuse. Defaults to `None`: run DeepFool.
        curvatures: `Curvatures` of the same points (their largest `|kappa|` sets `kappa_max`).
            Defaults to `None`: the largest `|node|` over the probes.
        start: the index of `x[0]` among the caller's examples. Defaults to `0`.
        executor: a `tfgeom.execution` executor (the stage `"curvature_spectrum"`). Defaults to `None`.

    Returns:
        A `Spectrum`.
    """
    probes, steps = check_positive_int("probes", probes), check_positive_int("steps", steps)
    hvp = check_choice("hvp", hvp, ("exact", "finite-difference", "auto"))
    if not 0 < flat_tol < 1:
        raise InputError(f"flat_tol must be in (0, 1); got {flat_tol!r}")
    if executor is not None:
        params = dict(probes=probes, steps=steps, flat_tol=flat_tol, hvp=hvp, step=step, seed=seed,
                      batch_size=batch_size)
        inputs = {"x": gm.check(x), "attack": attack, "curvatures": curvatures}
        return execution.run(gm, "curvature_spectrum", inputs, params, executor)
    d = gm.runtime.input_dim
    steps = min(steps, d - 1)
    hvp, step = choose_hvp(gm, hvp, step)
    attack = attack if attack is not None else deepfool(gm, x, batch_size=batch_size)
    index = np.flatnonzero(attack.success)
    z = np.repeat(attack.boundary_points[index], probes, axis=0)
    coeffs = np.repeat(margin_coefficients(attack.labels[index], attack.boundary_classes[index], gm.num_classes),
                       probes, axis=0)
    draws = [np.random.default_rng([int(seed), int(start + i), PROBE_STREAM]).choice([-1.0, 1.0], (probes, d))
             for i in index]
    v0 = np.concatenate(draws).astype(np.float32) if draws else np.zeros((0, d), np.float32)
    rt = gm.runtime
    program = rt.program(("spectrum", steps, hvp, step), lambda: quadrature_program(rt.logits_fn, steps, hvp, step),
                         [rt.spec(), tf.TensorSpec([None, gm.num_classes], tf.float32),
                          tf.TensorSpec([None, d], tf.float32)])
    if len(z):
        nodes, weights = rt.map(program, [z, coeffs, v0], lanczos_batch(batch_size or rt.batch_size, steps, d))
    else:
        nodes, weights = np.zeros((0, steps)), np.zeros((0, steps))
    nodes, weights = nodes.reshape(len(index), probes, steps), weights.reshape(len(index), probes, steps)
    if curvatures is not None:
        extremes = curvatures.rows(slice(0, len(attack.success)))
        top = dict(zip(extremes.index.tolist(), np.abs(extremes.values).max(axis=1)))
        kappa_max = np.array([top.get(int(i), np.nan) for i in index])
        fallback = np.abs(nodes).max(axis=(1, 2)) if len(index) else np.zeros(0)
        kappa_max = np.where(np.isfinite(kappa_max), np.maximum(kappa_max, fallback), fallback)
    else:
        kappa_max = np.abs(nodes).max(axis=(1, 2)) if len(index) else np.zeros(0)
    fraction, error = flat_fraction(nodes, weights, flat_tol * kappa_max)
    return Spectrum(index, nodes, weights, kappa_max, fraction, error, float(flat_tol), d, hvp, step)


@execution.stage("curvature_spectrum")
def _spectrum_shard(gm, start, x, attack=None, curvatures=None, **params):
    result = curvature_spectrum(gm, x, attack=attack, curvatures=curvatures, start=start, **params)
    return result._replace(index=result.index + start)
