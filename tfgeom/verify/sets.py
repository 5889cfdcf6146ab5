"""Input sets: the regions bound propagation bounds a network over.

One class per kind, batched over examples; each concretises linear bounds
over itself (`concretize`), gives the basis of forward linear bounds
(`base`, `forward_lower`) and its constraints in the exact MILP
(`milp_constraints`, cvxpy imported there only):

- `LinfBall`: the box `{x : ||x - x0||_inf <= eps} ∩ [low, high]`;
- `L2Ball`: the ball `{x : ||x - x0||_2 <= eps}` (its intersection with the
  bounds is bounded by the ball itself; interval bounds use the ball's box ∩ bounds);
- `Segment`: the line `{x_a + t (x_b - x_a) : t in [0, 1]}`.

The linear function `a^T x + c` is minimised over each set in closed form
(box: `a^T m - |a|^T r`; ball: `a^T x0 - eps ||a||`; segment:
`a^T x_a + min(0, a^T d)`).
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom.errors import InputError


def _expand(v, like):
    return tf.reshape(v, [-1] + [1] * (like.shape.rank - 1))


def _dot(a, v):
    """`[N, S]` dot products of coefficient rows `a [N, S, *shape]` with `v [N, *shape]`."""
    n, s = tf.shape(a)[0], tf.shape(a)[1]
    return tf.einsum("nsd,nd->ns", tf.reshape(a, [n, s, -1]), tf.reshape(v, [n, -1]))


class LinfBall(NamedTuple):
    """L-inf balls of radius `eps [N]` around `center [N, *shape]`, intersected with the bounds (`low`, `high`)."""

    center: tf.Tensor
    eps: tf.Tensor
    low: tf.Tensor
    high: tf.Tensor
    kind = "linf"

    def concretize(self, a):
        """Lower bound of `a^T x` over each set: `a^T m - |a|^T r` (box centre `m`, radius `r`)."""
        return self.concretize_with(a, _dot)

    def concretize_with(self, a, dot):
        """`concretize` for coefficients in another layout: `dot(a, v [N, *shape]) -> [N, S]` (e.g. patches)."""
        mid, rad = (self.low + self.high) / 2, (self.high - self.low) / 2
        return dot(a, mid) - dot(tf.abs(a), rad)

    def base(self):
        """The set as `x = c + A e` with `e` in the unit box: `(A [N, d, *shape], c [N, *shape])`."""
        n, shape = int(self.center.shape[0]), self.center.shape[1:]
        mid, rad = (self.low + self.high) / 2, (self.high - self.low) / 2
        return tf.reshape(tf.linalg.diag(tf.reshape(rad, [n, -1])), [n, -1, *shape]), mid

    def forward_lower(self, a, c):
        """Element-wise lower bound of `a^T e + c` over the unit box; `a` is `[N, m, *shape]`."""
        return c - tf.reduce_sum(tf.abs(a), 1)

    def milp_constraints(self, x, i):
        """cvxpy constraints of example `i` on the flat input variable `x`."""
        return [x >= self.low[i].numpy().reshape(-1).astype(np.float64),
                x <= self.high[i].numpy().reshape(-1).astype(np.float64)]

    def take(self, rows):
        """The sets of examples `rows`."""
        return type(self)(*[t[rows] for t in self])


class L2Ball(LinfBall):
    """L2 balls of radius `eps [N]` around `center`; `low`, `high` is the ball's box within the bounds."""

    kind = "l2"

    def concretize_with(self, a, dot):
        """`a^T x0 - eps ||a||_2`."""
        n, s = tf.shape(a)[0], tf.shape(a)[1]
        return dot(a, self.center) - self.eps[:, None] * tf.norm(tf.reshape(a, [n, s, -1]), axis=2)

    def base(self):
        """`x = x0 + eps I e` with `e` in the unit ball."""
        n, shape = int(self.center.shape[0]), self.center.shape[1:]
        d = int(np.prod(shape))
        eye = tf.eye(d, batch_shape=[n]) * self.eps[:, None, None]
        return tf.reshape(eye, [n, d, *shape]), self.center

    def forward_lower(self, a, c):
        return c - tf.norm(a, axis=1)

    def milp_constraints(self, x, i):
        raise InputError(
            "method='milp' supports norm='linf' and segments; an L2 ball needs a mixed-integer SOCP "
            "solver: use method='crown' for L2"
        )


class Segment(NamedTuple):
    """Segments `center + t direction`, `t in [0, 1]`; `low`, `high` their interval hulls."""

    center: tf.Tensor
    direction: tf.Tensor
    low: tf.Tensor
    high: tf.Tensor
    kind = "segment"

    @property
    def eps(self):
        return tf.zeros([tf.shape(self.center)[0]])

    def concretize(self, a):
        """`a^T x_a + min(0, a^T d)`."""
        return self.concretize_with(a, _dot)

    def concretize_with(self, a, dot):
        return dot(a, self.center) + tf.minimum(0.0, dot(a, self.direction))

    def base(self):
        """`x = x_a + d e` with `e` in `[0, 1]`."""
        return self.direction[:, None], self.center

    def forward_lower(self, a, c):
        return c + tf.minimum(0.0, a[:, 0])

    def milp_constraints(self, x, i):
        import cvxpy as cp  # only the exact MILP needs it

        t = cp.Variable()
        centre = self.center[i].numpy().reshape(-1).astype(np.float64)
        direction = self.direction[i].numpy().reshape(-1).astype(np.float64)
        return [t >= 0, t <= 1, x == centre + t * direction]

    def take(self, rows):
        """The sets of examples `rows`."""
        return type(self)(*[t[rows] for t in self])


def ball(x, eps, norm, bounds):
    """`LinfBall` or `L2Ball` (`norm` `"linf"`/`"l2"`) of radius `eps` (`[N]`) around `x` clipped into `bounds`."""
    x = tf.clip_by_value(tf.convert_to_tensor(x, tf.float32), *bounds)
    eps = tf.convert_to_tensor(eps, tf.float32)
    e = _expand(eps, x)
    low = tf.maximum(x - e, bounds[0])
    high = tf.minimum(x + e, bounds[1])
    return (LinfBall if norm == "linf" else L2Ball)(x, eps, low, high)


def segment(x_a, x_b, bounds):
    """`Segment`s `[x_a, x_b]` (both ends clipped into `bounds`)."""
    x_a = tf.clip_by_value(tf.convert_to_tensor(x_a, tf.float32), *bounds)
    x_b = tf.clip_by_value(tf.convert_to_tensor(x_b, tf.float32), *bounds)
    return Segment(x_a, x_b - x_a, tf.minimum(x_a, x_b), tf.maximum(x_a, x_b))
