"""Principal curvatures of the decision boundary at points, by batched Lanczos.

At a boundary point `z` of `F = f_k - f_j`, with unit normal
`n = grad F / ||grad F||` and tangent projector `P = I - n n^T`, the principal
curvatures are the eigenvalues of `P H P / ||grad F||` (PAPERS.md A.3).

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

from tfgeom import hvp as hvp_lib
from tfgeom.errors import InputError


class Curvatures(NamedTuple):
    """Principal curvatures at `N` points (NumPy).

    Fields:
        values: `[N, 2k]` curvatures, the `k` most negative then the `k` most
            positive, each block sorted ascending.
        directions: `[N, 2k, ...]` unit principal directions (input shape).
        gradient_norm: `[N]` `||grad F(z)||`.
        hvp: `"exact"` or `"finite-difference"`.
        step: the finite-difference step `h`, or None.
        lanczos_steps: Krylov dimension used (`d` for the dense method).
    """

    values: np.ndarray
    directions: np.ndarray
    gradient_norm: np.ndarray
    hvp: str
    step: object
    lanczos_steps: int


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


def _normal(logits_fn, z, coeffs):
    g, _ = hvp_lib.gradient(logits_fn, z, coeffs)
    g = tf.reshape(g, [tf.shape(z)[0], -1])
    gnorm = tf.norm(g, axis=1)
    return g / tf.maximum(gnorm, 1e-30)[:, None], gnorm


def _orthogonalise(w, basis):
    """Remove the components of `w [N, d]` along the rows of `basis [N, m, d]` (twice, for stability)."""
    for _ in range(2):
        w = w - tf.einsum("nmd,nm->nd", basis, tf.einsum("nmd,nd->nm", basis, w))
    return w


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
        normal, gnorm = _normal(logits_fn, z, coeffs)
        n, d = tf.shape(normal)[0], tf.shape(normal)[1]
        q = v0 - tf.reduce_sum(v0 * normal, 1, keepdims=True) * normal
        q = q / tf.norm(q, axis=1, keepdims=True)
        basis = tf.zeros([n, steps, d], z.dtype)
        alphas = tf.TensorArray(z.dtype, size=steps)
        betas = tf.TensorArray(z.dtype, size=steps)

        def body(j, q, basis, alphas, betas):
            basis = basis + tf.one_hot(j, steps, dtype=z.dtype)[None, :, None] * q[:, None, :]
            w = op(z, coeffs, normal, gnorm, q)
            alpha = tf.reduce_sum(w * q, axis=1)
            size = tf.norm(w, axis=1)
            w = _orthogonalise(w, basis)
            beta = tf.norm(w, axis=1)
            # Breakdown (invariant subspace found, e.g. a flat or spherical
            # boundary): restart from a random tangent vector, with beta = 0.
            broke = beta <= 1e-4 * size + 1e-30
            fresh = tf.random.stateless_normal(tf.shape(w), seed=[j, 7], dtype=w.dtype)
            fresh = _orthogonalise(fresh - tf.reduce_sum(fresh * normal, 1, keepdims=True) * normal, basis)
            q_next = tf.where(
                broke[:, None],
                fresh / tf.norm(fresh, axis=1, keepdims=True),
                w / tf.maximum(beta, 1e-30)[:, None],
            )
            beta = tf.where(broke, tf.zeros_like(beta), beta)
            return j + 1, q_next, basis, alphas.write(j, alpha), betas.write(j, beta)

        _, _, basis, alphas, betas = tf.while_loop(
            lambda j, *_: j < steps, body, (tf.constant(0), q, basis, alphas, betas)
        )
        a = tf.cast(tf.transpose(alphas.stack()), tf.float64)
        b = tf.cast(tf.transpose(betas.stack())[:, :-1], tf.float64)
        tri = tf.linalg.diag(a) + tf.linalg.diag(b, k=1) + tf.linalg.diag(b, k=-1)
        evals, evecs = tf.linalg.eigh(tri)
        pick = tf.concat([tf.range(k), tf.range(steps - k, steps)], 0)
        values = tf.gather(evals, pick, axis=1)
        vecs = tf.gather(tf.cast(evecs, z.dtype), pick, axis=2)
        directions = tf.einsum("nmd,nmk->nkd", basis, vecs)
        return tf.cast(values, z.dtype), directions, gnorm

    return program


def dense_curvatures(logits_fn, z, coeffs, hvp="exact", step=None):
    """Reference: all eigenpairs of `P H P / ||grad F||` from the full `d x d` matrix.

    Returns `(values [N, d] ascending, vectors [N, d, d] columns, gnorm [N])`.
    Costs `d` HVPs per point: for small inputs and tests only.
    """
    z = tf.convert_to_tensor(z, tf.float32)
    coeffs = tf.convert_to_tensor(coeffs, tf.float32)
    op = projected_operator(logits_fn, hvp, step)
    normal, gnorm = _normal(logits_fn, z, coeffs)
    n, d = int(normal.shape[0]), int(normal.shape[1])
    cols = [op(z, coeffs, normal, gnorm, tf.tile(tf.one_hot([i], d), [n, 1])) for i in range(d)]
    mat = tf.cast(tf.stack(cols, axis=2), tf.float64)
    mat = 0.5 * (mat + tf.transpose(mat, [0, 2, 1]))
    values, vectors = np.linalg.eigh(mat.numpy())
    return values, vectors, gnorm.numpy()


_PIECEWISE_LINEAR = {"relu", "relu6", "leaky_relu", "linear", "softmax", "log_softmax", None}
_PL_LAYERS = ("ReLU", "LeakyReLU", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D")


def is_piecewise_linear(model):
    """True when every nonlinearity of the model is piecewise linear (ReLU-type, max-pooling).

    Such networks have a zero Hessian almost everywhere, so `hvp="auto"` uses
    finite differences for them. Unknown layers count as smooth.
    """
    for layer in model._flatten_layers(include_self=False, recursive=True):
        name = type(layer).__name__
        if name in _PL_LAYERS:
            continue
        act = getattr(layer, "activation", None)
        act_name = getattr(act, "__name__", None) if act is not None else None
        if act_name not in _PIECEWISE_LINEAR:
            return False
        if name == "Lambda" or (act is None and not _is_affine(layer)):
            return False
    return True


def _is_affine(layer):
    affine = (
        "InputLayer", "Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D",
        "Flatten", "Reshape", "Dropout", "SpatialDropout2D", "BatchNormalization", "Add", "Subtract",
        "Concatenate", "AveragePooling2D", "GlobalAveragePooling2D", "ZeroPadding2D", "Cropping2D",
        "Softmax", "Activation", "Rescaling", "Normalization", "Identity",
    )
    return type(layer).__name__ in affine or type(layer).__name__.startswith(("Sequential", "Functional"))


def _coeffs(labels, others, num_classes):
    return (np.eye(num_classes, dtype=np.float32)[labels] - np.eye(num_classes, dtype=np.float32)[others])


def principal_curvatures(gm, x, k=20, hvp="auto", method="lanczos", steps=None, step=None, at="boundary",
                         seed=0, batch_size=None):
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

    Returns:
        `(Curvatures, index)`: `index [M]` says which inputs the `M` rows are.
    """
    from tfgeom.validation import check_choice, check_positive_int

    method = check_choice("method", method, ("lanczos", "dense"))
    hvp = check_choice("hvp", hvp, ("exact", "finite-difference", "auto"))
    at = check_choice("at", at, ("boundary", "0.8"))
    d = int(np.prod(gm.input_shape))
    k = check_positive_int("k", k)
    if hvp == "auto":
        hvp = "finite-difference" if is_piecewise_linear(gm.model) else "exact"
    if hvp == "finite-difference" and step is None:
        step = hvp_lib.default_step(d, gm.bounds)
    result = gm.deepfool(x, batch_size=batch_size)
    index = np.flatnonzero(result.success)
    z = result.boundary_points[index] if at == "boundary" else (gm.check(x) + 0.8 * result.perturbation)[index]
    coeffs = _coeffs(result.labels[index], result.boundary_classes[index], gm.num_classes)
    if method == "dense":
        values, vectors, gnorm = dense_curvatures(gm._head.logits_fn, z, coeffs, hvp, step)
        pick = np.r_[0:k, d - k:d] if 2 * k <= d else np.arange(d)
        dirs = np.moveaxis(vectors[:, :, pick], 1, 2).reshape(len(z), len(pick), *gm.input_shape)
        return Curvatures(values[:, pick], dirs, gnorm, hvp, step, d), index
    steps = check_positive_int("steps", steps) if steps is not None else min(d - 1, 2 * k + 40)
    if steps < 2 * k:
        raise InputError(f"steps={steps} must be at least 2k={2 * k}; raise steps or lower k")
    program = gm.program(
        ("lanczos", steps, k, hvp, step),
        lambda: lanczos_program(gm._head.logits_fn, steps, k, hvp, step),
        [gm._spec(), tf.TensorSpec([None, gm.num_classes], tf.float32), tf.TensorSpec([None, d], tf.float32)],
    )
    v0 = np.random.default_rng(seed).normal(size=(len(z), d)).astype(np.float32)
    parts = []
    for s in gm._batches(len(z), batch_size):
        parts.append([t.numpy() for t in program(tf.constant(z[s]), tf.constant(coeffs[s]), tf.constant(v0[s]))])
    values, dirs, gnorm = (np.concatenate(p) for p in zip(*parts)) if parts else (
        np.zeros((0, 2 * k)), np.zeros((0, 2 * k, d)), np.zeros(0))
    dirs = dirs.reshape(len(z), 2 * k, *gm.input_shape)
    return Curvatures(values, dirs, gnorm, hvp, step, steps), index
