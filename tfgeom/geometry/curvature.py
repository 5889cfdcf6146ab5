"""Principal curvatures of the decision boundary at points, by batched Lanczos.

At a boundary point `z` of `F = f_k - f_j`, with unit normal
`n = grad F / ||grad F||` and tangent projector `P = I - n n^T`, the principal
curvatures are the eigenvalues of `P H P / ||grad F||` (Fawzi et al., CVPR 2018).

Sign convention (ours): `F` is positive inside the region of `k`. A negative
curvature means the boundary bends towards the region of `k` in that
direction (a ball-shaped region of `k` has all curvatures `-1/R`); a positive
one means it bends away from it.

`lanczos_program` runs Lanczos with full reorthogonalisation for many points
in lock-step (one compiled program); the tridiagonal eigenproblems are
solved in float64. `dense_curvatures` builds the full matrix (reference, small
`d` only).
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom.geometry import hvp as hvp_lib
from tfgeom.errors import InputError
from tfgeom import execution
from tfgeom.execution import example_rng
from tfgeom.geometry.deepfool import deepfool
from tfgeom.geometry.lanczos import lanczos_extremes
from tfgeom.runtime.layers import is_piecewise_linear
from tfgeom.runtime.resources import FLOAT32, memory_budget


class Curvatures(NamedTuple):
    """Principal curvatures at `M` boundary points (NumPy).

    Fields:
        index: `[M]` which of the inputs each row belongs to (inputs where
            DeepFool failed have no boundary point and no row).
        values: `[M, 2k]` curvatures, the `k` most negative then the `k` most
            positive, each block sorted ascending.
        directions: `[M, 2k, ...]` unit principal directions (input shape).
        gradient_norm: `[M]` `||grad F(z)||`.
        hvp: `"exact"` or `"finite-difference"`.
        step: the finite-difference step `h`, or None.
        lanczos_steps: Krylov dimension used (`d` for the dense method).
    """

    index: np.ndarray
    values: np.ndarray
    directions: np.ndarray
    gradient_norm: np.ndarray
    hvp: str
    step: object
    lanczos_steps: int

    def rows(self, rows):
        """The rows of inputs `rows` (a slice of the caller's examples), `index` renumbered from its start."""
        keep = (self.index >= (rows.start or 0)) & (self.index < rows.stop)
        return self._replace(index=self.index[keep] - (rows.start or 0), values=self.values[keep],
                             directions=self.directions[keep], gradient_norm=self.gradient_norm[keep])

    @property
    def examples(self):
        """None: rows exist for some inputs only, so they do not say how many inputs there are."""
        return None


def projected_operator(logits_fn, hvp, step):
    """`op(z, coeffs, n, gnorm, v) -> P H P v / ||grad F||` on flat `[N, d]` vectors."""

    def op(z, coeffs, normal, gnorm, v):
        v = v - tf.reduce_sum(v * normal, 1, keepdims=True) * normal
        v_in = tf.reshape(v, tf.shape(z))
        if hvp == "exact":
            hv = hvp_lib.exact_hvp(logits_fn, z, coeffs, v_in)
        else:
            hv = hvp_lib.finite_difference_hvp(logits_fn, z, coeffs, v_in, step)
        hv = tf.reshape(hv, tf.shape(v))
        hv = hv - tf.reduce_sum(hv * normal, 1, keepdims=True) * normal
        return hv / gnorm[:, None]

    return op


def unit_normal(logits_fn, z, coeffs):
    """`(n [N, d], ||grad F|| [N])`: the unit normal of the boundary of `F = coeffs . f` at `z` and the gradient norm."""
    g, _ = hvp_lib.gradient(logits_fn, z, coeffs)
    g = tf.reshape(g, [tf.shape(z)[0], -1])
    gnorm = tf.norm(g, axis=1)
    return g / tf.maximum(gnorm, 1e-30)[:, None], gnorm


def lanczos_program(logits_fn, steps, k, hvp="exact", step=None):
    """Build `program(z, coeffs, v0) -> (values [N, 2k], directions [N, 2k, d], gnorm [N])`.

    Args:
        logits_fn: `[N, ...] -> [N, L]`.
        steps: Krylov dimension `m` (>= 2k).
        k: how many curvatures at each end.
        hvp: `"exact"` or `"finite-difference"`. Defaults to `"exact"`.
        step: finite-difference `h`. Defaults to `None`.
    """
    op = projected_operator(logits_fn, hvp, step)

    def program(z, coeffs, v0):
        normal, gnorm = unit_normal(logits_fn, z, coeffs)

        def tangent(v):
            return v - tf.reduce_sum(v * normal, 1, keepdims=True) * normal

        values, directions = lanczos_extremes(
            lambda v: op(z, coeffs, normal, gnorm, v), v0, steps, k, project=tangent
        )
        return values, directions, gnorm

    return program


def dense_curvatures(logits_fn, z, coeffs, hvp="exact", step=None):
    """Reference: all eigenpairs of `P H P / ||grad F||` from the full `d x d` matrix.

    Returns `(values [N, d] ascending, vectors [N, d, d] columns, gnorm [N])`.
    Costs `d` HVPs per point: for small inputs and tests only.
    """
    z = tf.convert_to_tensor(z, tf.float32)
    coeffs = tf.convert_to_tensor(coeffs, tf.float32)
    op = projected_operator(logits_fn, hvp, step)
    normal, gnorm = unit_normal(logits_fn, z, coeffs)
    n, d = int(normal.shape[0]), int(normal.shape[1])
    cols = [op(z, coeffs, normal, gnorm, tf.tile(tf.one_hot([i], d), [n, 1])) for i in range(d)]
    mat = tf.cast(tf.stack(cols, axis=2), tf.float64)
    mat = 0.5 * (mat + tf.transpose(mat, [0, 2, 1]))
    values, vectors = np.linalg.eigh(mat.numpy())
    return values, vectors, gnorm.numpy()


def lanczos_batch(batch_size, steps, d):
    """Points per Lanczos call: `batch_size`, lowered so that the float32 Krylov bases `[b, steps, d]`
    (and the copy each basis update makes) fit the memory budget; at 224x224x3 with 80 steps a basis
    is 48 MB per point, so 128 points at once would need 12 GB."""
    per_point = 3 * steps * d * FLOAT32
    return int(max(1, min(batch_size, memory_budget() // per_point)))


def choose_hvp(gm, hvp, step):
    """`(hvp, step)` with `"auto"` resolved (finite differences for piecewise-linear networks, whose Hessian is
    zero almost everywhere; exact products otherwise) and the finite-difference step defaulted."""
    if hvp == "auto":
        hvp = "finite-difference" if is_piecewise_linear(gm.model) else "exact"
    if hvp == "finite-difference" and step is None:
        step = hvp_lib.default_step(gm.runtime.input_dim, gm.bounds)
    return hvp, step


def margin_coefficients(labels, others, num_classes):
    """`[N, L]` rows `e_k - e_j`: the coefficients of the margins `f_k - f_j` (labels `k`, others `j`)."""
    return (np.eye(num_classes, dtype=np.float32)[labels] - np.eye(num_classes, dtype=np.float32)[others])


def principal_curvatures(gm, x, k=20, hvp="auto", method="lanczos", steps=None, step=None, at="boundary",
                         seed=0, batch_size=None, attack=None, start=0, executor=None):
    """Principal curvatures of the decision boundary near inputs `x`.

    Runs DeepFool (L2) on `x`, takes the boundary point `z` on `[x, x_adv]`
    (`at="boundary"`) or `x + 0.8 r` as in the authors' code (`at="0.8"`), and
    returns the `k` most negative and `k` most positive curvatures of
    `F = f_k - f_j` there (`j` the class across the boundary). Points where
    DeepFool failed are dropped (see `Curvatures` and the returned indices).

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs.
        k: curvatures at each end. Defaults to `20`.
        hvp: `"exact"`, `"finite-difference"` or `"auto"` (finite differences
            for piecewise-linear networks). Defaults to `"auto"`.
        method: `"lanczos"` or `"dense"` (full matrix, small inputs only).
            Defaults to `"lanczos"`.
        steps: Lanczos steps. Defaults to `min(d - 1, 2k + 40)`.
        step: finite-difference `h`. Defaults to `hvp.default_step`.
        at: `"boundary"` or `"0.8"`. Defaults to `"boundary"`.
        seed: seed of the Lanczos start vectors. Defaults to `0`.
        batch_size: points per compiled call. Defaults to the model's.
        attack: a `DeepFoolResult` for `x` to reuse. Defaults to `None`: run DeepFool L2.
        start: the index of `x[0]` among the caller's examples: input `i`'s start
            vector is drawn from `(seed, start + i)`, so a shard of the inputs
            gives the rows of the whole. Defaults to `0`.
        executor: a `tfgeom.execution` executor to run the inputs in shards on
            (the stage `"principal_curvatures"`). Defaults to `None`: in this process.

    Returns:
        A `Curvatures`; its `index [M]` says which inputs the `M` rows are.
    """
    if executor is not None:
        params = dict(k=k, hvp=hvp, method=method, steps=steps, step=step, at=at, seed=seed, batch_size=batch_size)
        return execution.run(gm, "principal_curvatures", {"x": gm.check(x), "attack": attack}, params, executor)
    from tfgeom.runtime.validation import check_choice, check_positive_int

    method = check_choice("method", method, ("lanczos", "dense"))
    hvp = check_choice("hvp", hvp, ("exact", "finite-difference", "auto"))
    at = check_choice("at", at, ("boundary", "0.8"))
    d = int(np.prod(gm.input_shape))
    k = check_positive_int("k", k)
    if method != "dense" and 2 * k > d - 1:
        raise InputError(
            f"k={k} curvatures at each end need 2k={2 * k} of the {d - 1} directions tangent to the "
            f"boundary (inputs of dimension {d}); use k <= {(d - 1) // 2}"
        )
    hvp, step = choose_hvp(gm, hvp, step)
    result = attack if attack is not None else deepfool(gm, x, batch_size=batch_size)
    index = np.flatnonzero(result.success)
    z = result.boundary_points[index] if at == "boundary" else (gm.check(x) + 0.8 * result.perturbation)[index]
    coeffs = margin_coefficients(result.labels[index], result.boundary_classes[index], gm.num_classes)
    if method == "dense":
        values, vectors, gnorm = dense_curvatures(gm.runtime.logits_fn, z, coeffs, hvp, step)
        pick = np.r_[0:k, d - k:d] if 2 * k <= d else np.arange(d)
        dirs = np.moveaxis(vectors[:, :, pick], 1, 2).reshape(len(z), len(pick), *gm.input_shape)
        return Curvatures(index, values[:, pick], dirs, gnorm, hvp, step, d)
    steps = check_positive_int("steps", steps) if steps is not None else min(d - 1, 2 * k + 40)
    if steps < 2 * k:
        raise InputError(f"steps={steps} must be at least 2k={2 * k}; raise steps or lower k")
    rt = gm.runtime
    program = rt.program(
        ("lanczos", steps, k, hvp, step),
        lambda: lanczos_program(rt.logits_fn, steps, k, hvp, step),
        [rt.spec(), tf.TensorSpec([None, gm.num_classes], tf.float32), tf.TensorSpec([None, d], tf.float32)],
    )
    v0 = np.array([example_rng(seed, start + i).normal(size=d) for i in index], np.float32).reshape(-1, d)
    batch_size = lanczos_batch(batch_size or rt.batch_size, steps, d)
    values, dirs, gnorm = rt.map(program, [z, coeffs, v0], batch_size) if len(z) else (
        np.zeros((0, 2 * k)), np.zeros((0, 2 * k, d)), np.zeros(0))
    dirs = dirs.reshape(len(z), 2 * k, *gm.input_shape)
    return Curvatures(index, values, dirs, gnorm, hvp, step, steps)


class Profile(NamedTuple):
    """Curvature profile over a set of points (Fawzi et al., CVPR 2018).

    Fields:
        curvatures: the `Curvatures` the profile is made of (with their `index`).
        mean_negative: `[k]` mean over points of the `k` most negative
            curvatures (ascending: most negative first).
        mean_positive: `[k]` mean of the `k` most positive (ascending).
        values: `[M, 2k]` per-point curvatures (as in `Curvatures.values`).
        flat_fraction: `[M]` fraction of the `d - 1` tangent directions with
            `|kappa| <= flat_tol * max |kappa|` at that point. Only the `2k`
            extreme curvatures are computed; the rest are below them in
            magnitude, so the fraction is exact unless `saturated`.
        saturated: `[M]` True where all `k` curvatures at one end exceed the
            threshold (then `flat_fraction` is an upper bound).
        negative_mass: mean over points of `sum |kappa|` over the computed negative curvatures.
        positive_mass: the same for positive curvatures.
        asymmetry: `(negative_mass - positive_mass) / (negative_mass + positive_mass)`.
        flat_tol: the relative threshold used.
        input_dim: `d`.
        hvp: `"exact"` or `"finite-difference"`.
        step: finite-difference step, or None.
    """

    curvatures: Curvatures
    mean_negative: np.ndarray
    mean_positive: np.ndarray
    values: np.ndarray
    flat_fraction: np.ndarray
    saturated: np.ndarray
    negative_mass: float
    positive_mass: float
    asymmetry: float
    flat_tol: float
    input_dim: int
    hvp: str
    step: object


def curvature_profile(gm, x, k=20, flat_tol=0.1, **kwargs):
    """The curvature profile of the boundary near inputs `x`.

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs.
        k: curvatures at each end per point. Defaults to `20`.
        flat_tol: a direction is near-flat when `|kappa| <= flat_tol * max |kappa|`
            at its point. Defaults to `0.1`.
        **kwargs: passed to `principal_curvatures` (`hvp`, `method`, `steps`, `at`, `executor`, ...).

    Returns:
        A `Profile` (its `curvatures` carry the per-point values, directions and `index`).
    """
    curv = principal_curvatures(gm, x, k=k, **kwargs)
    values = curv.values
    d = int(np.prod(gm.input_shape))
    kk = values.shape[1] // 2
    neg, pos = values[:, :kk], values[:, kk:]
    top = np.maximum(np.abs(values).max(axis=1), 1e-30)
    curved = np.abs(values) > flat_tol * top[:, None]
    flat_fraction = 1.0 - curved.sum(axis=1) / max(d - 1, 1)
    saturated = curved[:, :kk].all(axis=1) | curved[:, kk:].all(axis=1)
    neg_mass = float(np.mean(np.sum(np.abs(np.minimum(values, 0)), axis=1))) if len(values) else 0.0
    pos_mass = float(np.mean(np.sum(np.maximum(values, 0), axis=1))) if len(values) else 0.0
    total = neg_mass + pos_mass
    profile = Profile(
        curvatures=curv,
        mean_negative=neg.mean(axis=0) if len(values) else np.zeros(kk),
        mean_positive=pos.mean(axis=0) if len(values) else np.zeros(kk),
        values=values,
        flat_fraction=flat_fraction,
        saturated=saturated,
        negative_mass=neg_mass,
        positive_mass=pos_mass,
        asymmetry=(neg_mass - pos_mass) / total if total > 0 else 0.0,
        flat_tol=float(flat_tol),
        input_dim=d,
        hvp=curv.hvp,
        step=curv.step,
    )
    return profile


def shared_direction_score(curvatures):
    """`[M]` how much each point's most curved direction is shared with the other points'.

    For point `i` with unit most-curved direction `u_i` (largest `|kappa|`),
    the mean of `<u_i, u_j>^2` over the other points `j`, times `d` (the mean
    squared cosine of independent random directions is `1/d`): about 1 when
    directions are unrelated, larger when they are shared. NaN for fewer than 2 points.
    """
    values, dirs = curvatures.values, curvatures.directions
    m = len(values)
    if m < 2:
        return np.full(m, np.nan)
    top = dirs[np.arange(m), np.argmax(np.abs(values), axis=1)].reshape(m, -1).astype(np.float64)
    top /= np.maximum(np.linalg.norm(top, axis=1, keepdims=True), 1e-30)
    cos2 = (top @ top.T) ** 2
    return (cos2.sum(axis=1) - 1.0) / (m - 1) * top.shape[1]


@execution.stage("principal_curvatures")
def _curvatures_shard(gm, start, x, attack=None, **params):
    result = principal_curvatures(gm, x, attack=attack, start=start, **params)
    return result._replace(index=result.index + start)
