"""2-D sections of the decision boundary: the plane of the normal and one tangent direction.

Around a boundary point `z` of `F = f_k - f_j` with unit normal `n`, the
section through direction `u` (unit, tangent) is the image of the grid
`z + a n + b u`, `a, b in [-radius, radius]`, coloured by predicted class,
with `F = 0` traced. A flat boundary shows as a straight line, a curved one
bends: the paper's pictures of "flat in most directions, curved in a few".
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom.errors import InputError
from tfgeom import execution
from tfgeom.execution import example_rng
from tfgeom.geometry.curvature import principal_curvatures
from tfgeom.geometry.deepfool import deepfool


class Section(NamedTuple):
    """One 2-D section (NumPy).

    Fields:
        offsets: `[G]` grid coordinates along both axes (`a` along the normal, `b` along `u`).
        labels: `[G, G]` predicted class at `z + a_r n + b_c u` (row `r`, column `c`).
        margin: `[G, G]` `F = f_k - f_j` there (`F = 0` is the boundary between `k` and `j`).
        point: `[...]` the boundary point `z`.
        normal: `[...]` the unit normal `n` (pointing into the region of `k`).
        direction: `[...]` the unit tangent direction `u`.
        curvature: the principal curvature along `u`, or None for a random direction.
        classes: `(k, j)`.
    """

    offsets: np.ndarray
    labels: np.ndarray
    margin: np.ndarray
    point: np.ndarray
    normal: np.ndarray
    direction: np.ndarray
    curvature: object
    classes: tuple


def grid_logits_program(rt):
    """Compiled `(a [B], b [B], point, normal, u) -> logits [B, L]` of the images `point + a normal + b u`."""

    def build():
        def grid_logits(a, b, point, normal, u):
            expand = [-1] + [1] * len(rt.input_shape)
            images = point[None] + tf.reshape(a, expand) * normal[None] + tf.reshape(b, expand) * u[None]
            return rt.logits_fn(images)

        return grid_logits

    spec = tf.TensorSpec(rt.input_shape, tf.float32)
    scalar = tf.TensorSpec([None], tf.float32)
    return rt.program("section_grid", build, [scalar, scalar, spec, spec, spec])


def section(gm, point, k, j, direction, radius, resolution=81, curvature=None):
    """Evaluate the model on the plane of the normal at `point` and `direction`.

    Args:
        gm: a `GeometryModel`.
        point: `[...]` boundary point `z` (one example, no batch axis).
        k: the class whose region `F > 0` marks.
        j: the class across the boundary.
        direction: `[...]` tangent direction (made unit and orthogonal to `n`).
        radius: half-width of the square, in input units.
        resolution: grid points per axis. Defaults to `81`.
        curvature: the curvature along `direction`, recorded in the result.

    Returns:
        A `Section`. Grid points outside `bounds` are evaluated anyway (the
        model is defined there); the picture shows the geometry of `f`.
    """
    coeffs = np.zeros((1, gm.num_classes), np.float32)
    coeffs[0, k], coeffs[0, j] = 1.0, -1.0
    _, grad = gm.runtime.gradient(np.asarray(point[None], np.float32), coeffs)
    normal = grad[0] / max(np.linalg.norm(grad[0]), 1e-30)
    u = np.asarray(direction, np.float32)
    u = u - np.sum(u * normal) * normal
    if np.linalg.norm(u) < 1e-12:
        raise InputError("direction is parallel to the boundary normal; pass a tangent direction")
    u = u / np.linalg.norm(u)
    offsets = np.linspace(-radius, radius, resolution, dtype=np.float32)
    a, b = np.meshgrid(offsets, offsets, indexing="ij")
    # The grid's images are made batch by batch inside the program: all of them at once would be
    # resolution^2 x d floats (3.9 GB at 224x224x3).
    rt = gm.runtime
    plane = [tf.constant(v.astype(np.float32)) for v in (point, normal, u)]
    logits = rt.map(grid_logits_program(rt), [a.ravel(), b.ravel()], constants=plane)
    shape = (resolution, resolution)
    return Section(
        offsets=offsets,
        labels=logits.argmax(axis=1).reshape(shape),
        margin=(logits[:, k] - logits[:, j]).reshape(shape),
        point=point,
        normal=normal,
        direction=u,
        curvature=curvature,
        classes=(int(k), int(j)),
    )


def default_radius(gm, attack):
    """Half-width of sections: the median DeepFool L2 distance of the successful inputs (10% of the range if none)."""
    if not attack.success.any():
        return 0.1 * (gm.bounds[1] - gm.bounds[0])
    return float(np.median(attack.norms_l2[attack.success]))


def boundary_sections(gm, x, direction="curved", radius=None, resolution=81, seed=0, attack=None, curvatures=None,
                      start=0, executor=None, **kwargs):
    """Sections at the DeepFool boundary points of inputs `x`.

    Args:
        gm: a `GeometryModel`.
        x: `[N, ...]` inputs (a few: one section each).
        direction: `"curved"` (the principal direction of largest `|kappa|`)
            or `"random"` (a random tangent direction). Defaults to `"curved"`.
        radius: half-width of each square. Defaults to the median DeepFool
            L2 distance of `x`.
        resolution: grid points per axis. Defaults to `81`.
        seed: seed of the random directions. Defaults to `0`.
        attack: a DeepFool L2 `AttackResult` for `x` to reuse. Defaults to `None`: run DeepFool.
        curvatures: `Curvatures` already computed at the boundary points of
            inputs that start with `x` (rows whose `index` is beyond `x` are
            ignored). Defaults to `None`: compute them (`kwargs`, `k=5`).
        start: the index of `x[0]` among the caller's examples (random
            directions and Lanczos start vectors are drawn per example index).
            Defaults to `0`.
        executor: a `tfgeom.execution` executor to run the inputs in shards on
            (the stage `"boundary_sections"`; DeepFool and the default radius run
            over all inputs first). Defaults to `None`: in this process.
        **kwargs: passed to `principal_curvatures` (`hvp`, `k`, ...).

    Returns:
        A list of `Section`, one per input where DeepFool succeeded.
    """
    if direction not in ("curved", "random"):
        raise InputError(f"direction={direction!r} is not one of ['curved', 'random']")
    if executor is not None:
        x = gm.check(x)
        attack = attack if attack is not None else deepfool(gm, x, executor=executor)
        radius = default_radius(gm, attack) if radius is None else radius  # a median over all inputs, not per shard
        params = dict(kwargs, direction=direction, radius=radius, resolution=resolution, seed=seed)
        inputs = {"x": x, "attack": attack, "curvatures": curvatures}
        return execution.run(gm, "boundary_sections", inputs, params, executor)
    kwargs.setdefault("k", 5)
    df = attack if attack is not None else deepfool(gm, x)
    if direction == "curved" and curvatures is not None:
        curv = curvatures.rows(slice(0, len(x)))
        index = curv.index
    elif direction == "curved":
        curv = principal_curvatures(gm, x, attack=df, seed=seed, start=start, **kwargs)
        index = curv.index
    else:  # a random direction needs no curvature computation
        index = np.flatnonzero(df.success)
    if radius is None:
        radius = default_radius(gm, df)
    out = []
    for row, i in enumerate(index):
        if direction == "curved":
            pick = int(np.argmax(np.abs(curv.values[row])))
            u, kappa = curv.directions[row, pick], float(curv.values[row, pick])
        else:
            u, kappa = example_rng(seed, start + i).normal(size=gm.input_shape).astype(np.float32), None
        point = df.boundary_points[i]
        out.append(
            section(gm, point, int(df.labels[i]), int(df.boundary_classes[i]), u, radius, resolution, kappa)
        )
    return out


@execution.stage("boundary_sections")
def _sections_shard(gm, start, x, attack=None, curvatures=None, **params):
    return boundary_sections(gm, x, attack=attack, curvatures=curvatures, start=start, **params)
