"""Batched Lanczos with full reorthogonalisation, for symmetric operators given as products.

`N` independent symmetric operators `A_n` on `R^d` run in lock-step: each
step applies `op` once to a `[N, d]` block, so a caller can batch the `N`
matrix-vector products (Hessian-vector products of `N` points) into one
compiled call. The tridiagonal eigenproblems are solved in float64.
"""
import tensorflow as tf


def orthogonalise(w, basis):
    """Remove from `w [N, d]` its components along the rows of `basis [N, m, d]` (twice, for stability)."""
    for _ in range(2):
        w = w - tf.einsum("nmd,nm->nd", basis, tf.einsum("nmd,nd->nm", basis, w))
    return w


def lanczos_extremes(op, v0, steps, k, project=None):
    """The `k` smallest and `k` largest eigenpairs of each operator, by Lanczos.

    Args:
        op: `[N, d] -> [N, d]`, row `n` is `A_n v_n` (a TensorFlow function).
        v0: `[N, d]` start vectors (need not be normalised).
        steps: Krylov dimension `m` (static int, `2k <= m <= d`).
        k: eigenpairs at each end (static int).
        project: optional `[N, d] -> [N, d]` projection onto the space the
            operators act on (e.g. the tangent space); applied to the start
            vector and to restart vectors. Defaults to `None`.

    Returns:
        `values [N, 2k]` (the `k` smallest ascending, then the `k` largest
        ascending) and unit Ritz vectors `[N, 2k, d]`. When the Krylov space
        is exhausted (an invariant subspace, e.g. `A_n = c P`), the iteration
        restarts from a random vector orthogonal to the basis with a zero
        off-diagonal, so degenerate spectra come out right.
    """
    basis, a, b = _iterate(op, v0, steps, project)
    evals, evecs = tf.linalg.eigh(_tridiagonal(a, b))
    pick = tf.concat([tf.range(k), tf.range(steps - k, steps)], 0)
    values = tf.cast(tf.gather(evals, pick, axis=1), v0.dtype)
    vectors = tf.einsum("nmd,nmk->nkd", basis, tf.gather(tf.cast(evecs, v0.dtype), pick, axis=2))
    return values, vectors


def lanczos_quadrature(op, v0, steps, project=None):
    """Gauss quadrature of each operator's spectral measure seen from its start vector (stochastic Lanczos
    quadrature's building block): `sum_i w_i g(theta_i) ~ u^T g(A) u` for the unit start vector `u`.

    Args:
        op: `[N, d] -> [N, d]`, as in `lanczos_extremes`.
        v0: `[N, d]` start vectors (the probes; need not be normalised).
        steps: Krylov dimension `m` (quadrature nodes).
        project: optional projection onto the space the operators act on. Defaults to `None`.

    Returns:
        `nodes [N, m]` (the Ritz values, ascending, float64) and `weights [N, m]` (the squared first
        components of the tridiagonal's eigenvectors; each row sums to 1). After a breakdown (an
        invariant subspace) the later nodes get weight 0: the quadrature of the first Krylov space is exact.
    """
    _, a, b = _iterate(op, v0, steps, project)
    nodes, vectors = tf.linalg.eigh(_tridiagonal(a, b))
    return nodes, tf.square(vectors[:, 0, :])


def _tridiagonal(a, b):
    """`[N, m, m]` symmetric tridiagonal matrices (float64) from diagonals `a [N, m]` and `b [N, m - 1]`."""
    return tf.linalg.diag(a) + tf.linalg.diag(b, k=1) + tf.linalg.diag(b, k=-1)


def _iterate(op, v0, steps, project=None):
    """Lanczos with full reorthogonalisation: `(basis [N, m, d], alphas [N, m], betas [N, m - 1])` (float64
    diagonals); see `lanczos_extremes` for the restart on breakdown."""
    project = project or (lambda v: v)
    n, d = tf.shape(v0)[0], tf.shape(v0)[1]
    dtype = v0.dtype
    q = project(v0)
    q = q / tf.norm(q, axis=1, keepdims=True)
    basis = tf.zeros([n, steps, d], dtype)
    alphas = tf.TensorArray(dtype, size=steps)
    betas = tf.TensorArray(dtype, size=steps)

    def body(j, q, basis, alphas, betas):
        basis = basis + tf.one_hot(j, steps, dtype=dtype)[None, :, None] * q[:, None, :]
        w = op(q)
        alpha = tf.reduce_sum(w * q, axis=1)
        size = tf.norm(w, axis=1)
        w = orthogonalise(w, basis)
        beta = tf.norm(w, axis=1)
        broke = beta <= 1e-4 * size + 1e-30
        q_next = w / tf.maximum(beta, 1e-30)[:, None]

        def restart():
            # a function of the row's own start vector and the step only (not of the row's place in the
            # batch), so a point gets the same result whichever batch or worker computes it
            noise = tf.random.stateless_normal([d], seed=[j, 7], dtype=dtype)
            fresh = orthogonalise(project(tf.roll(v0, j + 1, axis=1) * noise[None, :]), basis)
            fresh = fresh / tf.maximum(tf.norm(fresh, axis=1, keepdims=True), 1e-30)
            return tf.where(broke[:, None], fresh, q_next)

        q_next = tf.cond(tf.reduce_any(broke), restart, lambda: q_next)
        beta = tf.where(broke, tf.zeros_like(beta), beta)
        return j + 1, tf.ensure_shape(q_next, q.shape), basis, alphas.write(j, alpha), betas.write(j, beta)

    _, _, basis, alphas, betas = tf.while_loop(
        lambda j, *_: j < steps, body, (tf.constant(0), q, basis, alphas, betas)
    )
    a = tf.cast(tf.transpose(alphas.stack()), tf.float64)
    b = tf.cast(tf.transpose(betas.stack())[:, :-1], tf.float64)
    return basis, a, b
